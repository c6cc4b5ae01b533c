"""The performance harness (issue 14): what users care about, each figure a ratio against a
baseline measured in the same run (these machines are shared and noisy).

    python benchmarks/harness.py [--quick] [--out benchmarks/results/harness.json] \
        [--plot benchmarks/results/throughput.png] [--sections e2e gallery scan mokconv]

Sections:
* ``e2e``: end-to-end images/s (decode -> crops -> residual -> spectrum -> fingerprint ->
  scores against 10 profiles) and peak RSS growth per backend at batch 1, 16, 64, for the
  shipped model with its default crop policy ("auto") and with 1 crop, against the *eager
  baseline*: the same model as a researcher would run it -- fp32 torch, ``fft2`` (no Hermitian
  shortcut, no fused kernel), decoding and inference taking turns in one thread. The fraction of
  the CPU's peak FLOP rate reached uses ``torch.utils.flop_counter`` on the reference model
  and the peak given by ``--peak-gflops``.
* ``paper``: the same for the paper configuration (random weights: its cost, not its accuracy),
  per backend at batch 1, 16, 64 against the eager baseline.
* ``policy``: the default (shipped model, default crops and engine) against the previous
  default as it ran (``--previous`` model file, one crop, torch), same images, same run.
* ``models``: each shipped model and each ``--candidate`` model file at its default settings,
  end to end on the same images, as a ratio to the default model (the ship gate of a model).
* ``gallery``: attribution cost beyond the fingerprint against 10, 100, 1,000, 10,000 profiles
  of 100 supports, for every rule, per query image (batch of 16 queries, synthetic
  fingerprints); for the pair rule the backend that ran (the C++ kernel when built) against the
  numpy composition it replaces (same run, up to 1,000 profiles), the Gaussian rule's snapshot
  preparation, leave-one-out threshold fit and bytes per profile, the prototype prefilter
  (``PairRule(prefilter=K)``), and
  its top-1 agreement with exhaustive scoring on real fingerprints of the development sets.
* ``scan``: a folder scan (files on disk, PNG decode, the SDK's prefetch) against pure
  inference on the same images already in memory (``--scan-size`` px images), and the peak RSS
  growth of a 1,000- and a 20,000-file scan (200 and 1,000 with ``--quick``).
* ``mokconv``: simulator training steps/s per MoKConv implementation (weight mixing, output
  mixing; the Triton kernel only on CUDA).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class PeakRSS:
    """Peak resident memory during a block, sampled every 5 ms (growth over the start)."""

    def __enter__(self):
        self.start, self.peak, self._stop = rss_mb(), rss_mb(), False
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop:
            self.peak = max(self.peak, rss_mb())
            time.sleep(0.005)

    def __exit__(self, *exc):
        self._stop = True
        self._t.join()
        self.growth = self.peak - self.start


def images(n: int, size: int = 256, seed: int = 0):
    """Photo-like test images: smoothed noise with edges (content is irrelevant to speed)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        base = rng.integers(0, 256, (size // 4, size // 4, 3)).astype(np.uint8)
        from PIL import Image
        out.append(np.asarray(Image.fromarray(base).resize((size, size), Image.BICUBIC)))
    return out


def encoded(arrs):
    import io
    from PIL import Image
    bufs = []
    for a in arrs:
        b = io.BytesIO()
        Image.fromarray(a).save(b, format="PNG")
        bufs.append(b.getvalue())
    return bufs


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


# -- the eager baseline ------------------------------------------------------------------------
def eager_baseline(bundle, crops_of):
    """A researcher's pipeline of the same model: decode, crop, torch fp32, full fft2, then the
    ResNet, one image batch at a time with decoding and inference taking turns."""
    import io
    from PIL import Image
    model = bundle.model

    def run(blobs, batch):
        zs = []
        for i in range(0, len(blobs), batch):
            crops = np.concatenate([crops_of(np.asarray(Image.open(io.BytesIO(b)).convert("RGB")))
                                    for b in blobs[i:i + batch]])
            x = torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255
            with torch.no_grad():
                r = model.residual(x)
                spec = torch.log1p(torch.fft.fft2(r).abs())
                zs.append(torch.nn.functional.normalize(model.extract(spec), dim=-1).numpy())
        return np.concatenate(zs)
    return run


def flops_per_crop(bundle) -> float:
    from torch.utils.flop_counter import FlopCounterMode
    x = torch.rand(1, 3, bundle.config.crop, bundle.config.crop)
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        bundle.model(x)
    return fc.get_total_flops()


def section_e2e(a, report):
    from ofa_sdk import Attributor
    from ofa_sdk.images import make_crops
    from ofa_sdk.weights import load_default_model
    bundle = load_default_model()
    n = 32 if a.quick else 64
    blobs = encoded(images(n))
    backends = ["torch", "onnxruntime"]
    rows = {}
    for policy in ("auto", 1):
        k = len(make_crops(images(1)[0], bundle.config.crop, policy))
        base = eager_baseline(bundle, lambda arr: make_crops(arr, bundle.config.crop, policy))
        for batch in (1, 16, 64):
            b_img = max(1, batch // k)             # images per call so a call has ~batch crops
            t_base = median_time(lambda: base(blobs, b_img), a.repeats)
            row = {"crops_per_image": k, "baseline_images_per_s": n / t_base}
            for be in backends:
                att = Attributor(model=bundle, backend=be, crops=policy, batch_size=batch,
                                 strict=True)
                for i in range(10):
                    att.enroll(f"p{i}", images(3, seed=100 + i), overwrite=True)
                with PeakRSS() as pk:
                    t = median_time(lambda: att.attribute(blobs), a.repeats)
                row[be] = {"images_per_s": n / t, "ratio_to_baseline": t_base / t,
                           "peak_rss_growth_mb": pk.growth}
            rows[f"crops={policy} batch={batch}"] = row
            print(f"e2e crops={policy} batch={batch}: " + json.dumps(row), flush=True)
    fl = flops_per_crop(bundle)
    best = max(r["onnxruntime"]["images_per_s"] * r["crops_per_image"] for r in rows.values())
    report["e2e"] = {"images": n, "rows": rows, "flops_per_crop": fl,
                     "best_crops_per_s": best, "gflops_reached": best * fl / 1e9,
                     "peak_gflops": a.peak_gflops,
                     "fraction_of_peak": best * fl / 1e9 / a.peak_gflops}


def section_paper(a, report):
    """The paper configuration (random weights: its cost, not its accuracy) end to end, per
    backend at batch 1, 16, 64 (one call of that many 256 px images, one crop each), against the
    eager baseline in the same run; its ONNX graphs are exported into a temporary cache first
    (the export's time is reported, not counted)."""
    from ofa_sdk import Attributor
    from ofa_sdk.config import paper
    from ofa_sdk.images import make_crops
    from ofa_sdk.models import OFAModel
    from ofa_sdk.weights import load_model, save_model
    torch.manual_seed(0)
    cfg = paper()
    rows = {}
    old_cache = os.environ.get("OFA_SDK_CACHE")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["OFA_SDK_CACHE"] = tmp
        try:
            path = Path(tmp) / "paper.safetensors"
            save_model(path, OFAModel(cfg).eval(), None, {"config": cfg.to_dict()}, dtype="float32")
            bundle = load_model(path)
            base = eager_baseline(bundle, lambda arr: make_crops(arr, cfg.crop, "auto"))
            atts = {}
            for be in ("torch", "onnxruntime"):
                t0 = time.perf_counter()
                atts[be] = Attributor(model=bundle, backend=be, batch_size=64, strict=True)
                for i in range(2):
                    atts[be].enroll(f"p{i}", images(2, seed=100 + i), overwrite=True)
                rows[f"setup_s_{be}"] = time.perf_counter() - t0   # onnxruntime: includes the export
            for batch in ((1, 4) if a.quick else (1, 16, 64)):
                blobs = encoded(images(batch, seed=batch))
                t_base = median_time(lambda: base(blobs, batch), 1)
                row = {"baseline_images_per_s": batch / t_base}
                for be, att in atts.items():
                    att.batch_size = batch
                    with PeakRSS() as pk:
                        t = median_time(lambda: att.attribute(blobs), 1)
                    row[be] = {"images_per_s": batch / t, "ratio_to_baseline": t_base / t,
                               "peak_rss_growth_mb": pk.growth}
                rows[f"batch={batch}"] = row
                print(f"paper batch={batch}: " + json.dumps(row), flush=True)
            rows["flops_per_image"] = flops_per_crop(bundle)
        finally:
            if old_cache is None:
                os.environ.pop("OFA_SDK_CACHE", None)
            else:
                os.environ["OFA_SDK_CACHE"] = old_cache
    report["paper"] = rows


def section_policy(a, report):
    """The SDK's default (shipped model, default crop policy, default engine) against the
    previous default as users ran it (``--previous`` model file, one centre crop, the torch
    engine), end to end on the same 64 images in one run, at batch 16 and 64."""
    from ofa_sdk import Attributor
    if not a.previous:
        report["policy"] = {"skipped": "needs --previous MODEL_FILE"}
        return
    blobs = encoded(images(64))
    rows = {}
    for batch in (16, 64):
        now = Attributor(batch_size=batch)
        old = Attributor(model=a.previous, crops=1, backend="torch", batch_size=batch, strict=True)
        for att in (now, old):
            for i in range(10):
                att.enroll(f"p{i}", images(3, seed=100 + i), overwrite=True)
        t_now = median_time(lambda: now.attribute(blobs), a.repeats)
        t_old = median_time(lambda: old.attribute(blobs), a.repeats)
        rows[f"batch={batch}"] = {"default": {"backend": now.backend, "crops": str(now.crops),
                                              "images_per_s": len(blobs) / t_now},
                                  "previous_single_crop_torch": {"images_per_s": len(blobs) / t_old},
                                  "ratio": t_old / t_now}
        print(f"policy batch={batch}: " + json.dumps(rows[f"batch={batch}"]), flush=True)
    report["policy"] = rows


def section_models(a, report):
    """Each shipped model (``weights.MODELS``) and each ``--candidate`` model file at its
    default settings (crop policy, engine), end to end on the same 64 images against 10
    profiles at batch 64, repeats taking turns (each model first in turn): images/s and the
    ratio to the default model (the ship gate of a new default or a second size)."""
    from ofa_sdk import Attributor
    from ofa_sdk.weights import DEFAULT_NAME, MODELS
    blobs = encoded(images(64))
    atts, tmp = {}, tempfile.TemporaryDirectory()
    for k, name in enumerate([DEFAULT_NAME] + [m for m in MODELS if m != DEFAULT_NAME]
                             + list(a.candidate)):
        att = Attributor(model=name, batch_size=64, gallery=Path(tmp.name) / f"{k}.db")
        for i in range(10):
            att.enroll(f"p{i}", images(3, seed=100 + i))
        att.attribute(blobs)                                  # warm-up (and a candidate's export)
        atts[name] = att
    times = {n: [] for n in atts}
    order = list(atts.items())
    for r in range(a.repeats):                                # each model first in turn
        for n, att in order[r % len(order):] + order[:r % len(order)]:
            t0 = time.perf_counter()
            att.attribute(blobs)
            times[n].append(time.perf_counter() - t0)
    base = float(np.median(times[DEFAULT_NAME]))
    rows = {n: {"backend": att.backend, "crops": str(att.crops),
                "images_per_s": len(blobs) / float(np.median(times[n])),
                "x_default": base / float(np.median(times[n]))} for n, att in atts.items()}
    for n, r in rows.items():
        print(f"models {n}: " + json.dumps(r), flush=True)
    report["models"] = rows
    tmp.cleanup()


def section_gallery(a, report):
    from ofa_sdk.kernels import dispatch
    from ofa_sdk.scoring import Calibration, PairRule, PrototypeRule, make_rule, unit
    from ofa_sdk.weights import load_default_model
    bundle = load_default_model()
    d = bundle.config.extractor.dim
    rng = np.random.default_rng(0)
    head = bundle.pair_head()
    proto = PrototypeRule(Calibration(28.0, -27.0))
    sizes = (10, 100, 1000) if a.quick else (10, 100, 1000, 10000)
    queries = [unit(rng.normal(size=(4, d))).astype(np.float32) for _ in range(16)]
    out = {}
    for P in sizes:
        centres = unit(rng.normal(size=(P, d)))
        supports = [unit(c + 0.3 * rng.normal(size=(100, d))).astype(np.float32) for c in centres]
        row = {}
        st = proto.prepare(supports)
        row["prototype_ms_per_image"] = 1e3 * median_time(lambda: proto.scores(st, queries), a.repeats) / len(queries)
        # the Gaussian rule (the default): scoring, preparing the snapshot (once per set of
        # profiles), one profile's leave-one-out threshold fit, and its state's bytes per profile
        gauss = make_rule("gaussian", bundle)
        t0 = time.perf_counter()
        gs = gauss.prepare(supports)
        row["gaussian_prepare_s"] = time.perf_counter() - t0
        row["gaussian_ms_per_image"] = 1e3 * median_time(lambda: gauss.scores(gs, queries), a.repeats) / len(queries)
        row["gaussian_bytes_per_profile"] = gs.nbytes / P
        row["gaussian_loo_ms_per_profile"] = 1e3 * median_time(
            lambda: gauss.leave_one_out(supports[0], 1), a.repeats)
        if P == sizes[0]:       # one fit on one BLAS thread (as the rule runs it) and on the default
            from ofa_sdk.scoring import fit_gaussian, one_blas_thread
            with one_blas_thread():
                row["gaussian_fit_ms_one_blas_thread"] = 1e3 * median_time(
                    lambda: fit_gaussian(supports[0]), 20)
            row["gaussian_fit_ms_default_blas_threads"] = 1e3 * median_time(
                lambda: fit_gaussian(supports[0]), 20)
        pair = PairRule(head)
        ps = pair.prepare(supports)
        reps = 1 if P >= 1000 else a.repeats
        if P <= (1000 if a.quick else 10000):
            t = median_time(lambda: pair.scores(ps, queries[:4]), reps) / 4
            row["pair_ms_per_image"] = 1e3 * t
            row["pair_backend"] = dispatch.which("pair_gallery_scores", queries[0], rest=head)
            if P <= 1000:       # the numpy composition the C++ kernel replaces, same run
                with dispatch.reference():
                    row["pair_reference_ms_per_image"] = 1e3 * median_time(
                        lambda: pair.scores(ps, queries[:4]), reps) / 4
            for k in (10, 50):
                pre = PairRule(head, prefilter=k)
                pst = pre.prepare(supports)
                row[f"pair_prefilter{k}_ms_per_image"] = 1e3 * median_time(
                    lambda: pre.scores(pst, queries[:4]), reps) / 4
        out[str(P)] = row
        print(f"gallery P={P}: {json.dumps(row)}", flush=True)
    out["agreement_real"] = prefilter_agreement_real(bundle, head, a)
    report["gallery"] = out


def prefilter_agreement_real(bundle, head, a) -> dict:
    """Top-1 agreement of the prefiltered pair rule with exhaustive pair scoring on real
    fingerprints: every class of the development sets (benchmarks/data/dev-sim and wild) is a
    profile of 100 support images; the other images are the queries. (The timing rows above use
    synthetic fingerprints, which are fine for cost but say nothing about agreement.)"""
    from eval_wild import load_classes
    from ofa_sdk import Attributor
    from ofa_sdk.scoring import PairRule
    classes = {}
    for root in a.sets:
        if Path(root).is_dir():
            classes.update({f"{Path(root).name}/{c}": v for c, v in load_classes(Path(root)).items()})
    if len(classes) < 3:
        return {"skipped": f"needs the development sets in {a.sets}"}
    att = Attributor(model=bundle, crops=1, batch_size=64)
    supports, queries = [], []
    for c, files in sorted(classes.items()):
        z = [e.z for e in att.embed_stream(files[:100 + a.queries]) if e.ok]
        supports.append(np.concatenate(z[:100]))
        queries += z[100:]
    exact = PairRule(head)
    best = exact.scores(exact.prepare(supports), queries).argmax(1)
    out = {"profiles": len(supports), "queries": len(queries)}
    for k in (1, 3, 5, 10):
        pre = PairRule(head, prefilter=k)
        out[f"prefilter{k}_top1_agreement"] = float(
            (pre.scores(pre.prepare(supports), queries).argmax(1) == best).mean())
    print("gallery, prefilter agreement on real fingerprints:", json.dumps(out), flush=True)
    return out


def section_scan(a, report):
    from ofa_sdk import Attributor
    from PIL import Image
    n_small, n_large = (200, 1000) if a.quick else (1000, 20000)
    att = Attributor(crops="auto", batch_size=64)
    att.enroll("p", images(3, seed=7))
    arrs = images(64, size=a.scan_size)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for i in range(n_large):
            Image.fromarray(arrs[i % len(arrs)]).save(folder / f"{i:06d}.png")
        files = sorted(folder.iterdir())
        mem = [arrs[i % len(arrs)] for i in range(n_small)]
        t_mem = median_time(lambda: att.attribute(mem), 1)
        t_scan = median_time(lambda: list(att.scan(files[:n_small], progress=False)), 1)
        out["pure_inference_images_per_s"] = n_small / t_mem
        out["scan_images_per_s"] = n_small / t_scan
        out["scan_over_inference"] = t_mem / t_scan
        for n in (n_small, n_large):
            with PeakRSS() as pk:
                k = sum(1 for _ in att.scan(files[:n], progress=False))
            out[f"scan_{n}_files_peak_rss_growth_mb"] = pk.growth
            assert k == n
        print("scan:", json.dumps(out), flush=True)
    report["scan"] = out


def section_mokconv(a, report):
    from ofa_sdk.config import compact
    from ofa_sdk.models import FingerprintSimulator
    cfg = compact().simulator
    x = torch.rand(8, 3, 96, 96)
    out = {}
    for mode in ("weight", "output"):
        sim = FingerprintSimulator(cfg.__class__(**{**cfg.__dict__, "mok_mode": mode}))
        opt = torch.optim.Adam(sim.parameters(), 1e-4)
        g = torch.Generator().manual_seed(0)
        arch = sim.sample(g)

        def step():
            loss = (sim(x, arch) - x).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        out[mode] = 1 / median_time(step, a.repeats)
    out["weight_over_output"] = out["weight"] / out["output"]
    report["mokconv_steps_per_s"] = out
    print("mokconv:", json.dumps(out), flush=True)


def plot(report, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = report["e2e"]["rows"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for policy in ("auto", "1"):
        keys = [k for k in rows if k.startswith(f"crops={policy} ")]
        bs = [int(k.split("batch=")[1]) for k in keys]
        for name, get in (("eager baseline", lambda r: r["baseline_images_per_s"]),
                          ("torch", lambda r: r["torch"]["images_per_s"]),
                          ("onnxruntime", lambda r: r["onnxruntime"]["images_per_s"])):
            ax.plot(bs, [get(rows[k]) for k in keys], marker="o",
                    label=f"{name}, crops={policy}", ls="-" if policy == "auto" else "--")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch (crops per engine call)")
    ax.set_ylabel("images / s (end to end)")
    ax.set_title("shipped model, 256x256 PNG inputs, this 2-core CPU")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--peak-gflops", type=float, default=300.0,
                    help="the CPU's peak fp32 rate (2 AVX-512 cores here: about 300)")
    ap.add_argument("--sections", nargs="+",
                    default=["e2e", "paper", "policy", "gallery", "scan", "mokconv"])
    ap.add_argument("--previous", default=None,
                    help="policy: the previous default model file (e.g. from git history)")
    ap.add_argument("--candidate", nargs="*", default=[],
                    help="models: model files measured beside the shipped models")
    ap.add_argument("--sets", nargs="+", default=["benchmarks/data/dev-sim", "benchmarks/data/wild"],
                    help="class-per-folder sets for the prefilter's agreement on real fingerprints")
    ap.add_argument("--queries", type=int, default=50, help="query images per class (agreement)")
    ap.add_argument("--scan-size", type=int, default=96,
                    help="side of the scan section's images (96: one crop each, so 20,000 files fit)")
    ap.add_argument("--out", default="benchmarks/results/harness.json")
    ap.add_argument("--plot", default="benchmarks/results/throughput.png")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    report = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": platform.processor() or platform.machine(),
              "cpus": os.cpu_count(), "threads": a.threads, "torch": torch.__version__,
              "quick": a.quick, "max_rss_mb_at_start": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    for s in a.sections:
        {"e2e": section_e2e, "paper": section_paper, "policy": section_policy,
         "models": section_models, "gallery": section_gallery,
         "scan": section_scan, "mokconv": section_mokconv}[s](a, report)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(report, indent=1))
    if "e2e" in report and a.plot:
        plot(report, a.plot)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
