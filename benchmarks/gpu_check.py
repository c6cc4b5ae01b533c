"""The steps of ``benchmarks/gpu_check.sh`` that are Python: one subcommand per step, each
writing ``$OUT/<step>.json`` (see the shell script for the order and the time boxes).

    python benchmarks/gpu_check.py env|parity|e2e|train|summary --out DIR [--dry-run]
                                   [--photos DIR]

* ``env``: Python, torch, CUDA, GPU, Triton, ONNX Runtime, TensorRT versions, what
  ``ofa_sdk.kernels.dispatch`` finds importable.
* ``parity``: per engine on this host, fingerprints and scores against the torch engine on the
  CPU on the same photos (``--photos DIR``; else synthetic photo-like images, and the JSON says
  so), with the tolerances of the engine's precision (:data:`ofa_sdk.backends.verify.TOLERANCES`
  for fingerprints, :data:`SCORE_TOLERANCE` for scores, relative to the scores' range); the
  engine's parity record is written beside the engine cache, so ``backend="auto"`` may pick it
  on this host from then on (:mod:`ofa_sdk.backends.verify`). On a GPU: torch on CUDA with the
  Triton kernels, with the CUDA extension's spectrum, and with the PyTorch reference (cuFFT);
  TensorRT fp32 and fp16 where it is installed; ONNX Runtime on the CPU as the control.
* ``e2e``: ``Attributor.fingerprint`` on PNG-encoded images (decode included, 1 crop each) at
  batch 64 and 256, images/s per engine and the ratio against the torch CPU engine measured
  in the same run.
* ``train``: stage-2 training steps/s on the GPU (stage 0/1 weights unpacked from the shipped
  model), bf16 autocast and the prefetching loader as ``ofa-train --device cuda`` runs them,
  and the same on the CPU for the ratio.
* ``summary``: ``gpu_check.json`` (every step's JSON and its exit status) and ``summary.md``.

``--dry-run`` runs every step on the CPU at toy sizes (the Triton interpreter for the kernels):
it checks the script, not the GPU; its times mean nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SCORE_TOLERANCE = {"fp32": 1e-3, "fp16": 3e-2, "int8": 1e-1}   # |score diff| / range of scores


def _write(out: Path, name: str, data: dict, quiet: bool = False) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{name}.json.tmp"
    tmp.write_text(json.dumps(data, indent=1, default=str))
    tmp.replace(out / f"{name}.json")
    if not quiet:
        print(json.dumps(data, default=str)[:2000], flush=True)


class Partial(dict):
    """A step's results, written to its JSON after every row: a step cut off by its time box
    keeps what it finished."""

    def __init__(self, a, name: str, **fields):
        super().__init__(fields, partial=True)
        self.out, self.name = Path(a.out), name

    def save(self) -> None:
        _write(self.out, self.name, self, quiet=True)


def _version(mod: str):
    try:
        m = __import__(mod)
        return getattr(m, "__version__", "?")
    except Exception as e:  # noqa: BLE001 - absent or broken: say which
        return f"absent ({type(e).__name__})"


def photo_arrays(a, n: int, size: int = 160):
    """(arrays, source): the photos of ``--photos`` (at least ``size`` px, centre-cropped to
    ``size``), else synthetic photo-like images (benchmarks/harness.py)."""
    if a.photos:
        from ofa_sdk.images import list_images, to_rgb
        out = []
        for p in list_images(a.photos):
            try:
                arr = to_rgb(p)
            except Exception:  # noqa: BLE001 - an unreadable photo is skipped
                continue
            h, w = arr.shape[:2]
            if min(h, w) >= size:
                t, l = (h - size) // 2, (w - size) // 2
                out.append(np.ascontiguousarray(arr[t:t + size, l:l + size]))
            if len(out) == n:
                break
        if out:
            return out, f"{len(out)} photos of {a.photos}"
    from harness import images
    return images(n, size, seed=1), f"{n} synthetic photo-like images (no --photos)"


def engines_to_check(a):
    """(label, backend, device, engine_options, dispatch context name) of this host."""
    if a.dry_run:
        return [("onnxruntime cpu", "onnxruntime", "cpu", {}, None),
                ("torch cpu (PyTorch reference)", "torch", "cpu", {}, "reference")]
    rows = [("torch cuda (Triton kernels)", "torch", "cuda", {}, None),
            ("torch cuda (CUDA extension spectrum)", "torch", "cuda", {}, "cuda_ext"),
            ("torch cuda (PyTorch reference, cuFFT)", "torch", "cuda", {}, "reference"),
            ("onnxruntime cpu", "onnxruntime", "cpu", {}, None)]
    # last: a first TensorRT build takes tens of seconds (cached in $OFA_SDK_CACHE after)
    rows += [(f"tensorrt {p}", "tensorrt", "cuda", {"tensorrt": {"precision": p}}, None)
             for p in ("fp16", "fp32")]
    return rows


def _dispatch_context(which):
    import contextlib

    from ofa_sdk.kernels import dispatch
    if which == "reference":
        return dispatch.reference()
    if which in ("cuda_ext", "triton"):
        return dispatch.prefer(which)
    return contextlib.nullcontext()


# ------------------------------------------------------------------------------------ steps
def step_env(a) -> dict:
    import torch

    from ofa_sdk.kernels import dispatch
    info = {"python": platform.python_version(), "torch": torch.__version__,
            "cuda_build": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
            "triton": _version("triton"), "onnxruntime": _version("onnxruntime"),
            "onnx": _version("onnx"), "tensorrt": _version("tensorrt"),
            "dispatch": dispatch.report(), "dry_run": a.dry_run, "host": platform.node()}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info["gpu"] = {"name": p.name, "capability": f"{p.major}.{p.minor}",
                       "memory_gib": round(p.total_memory / 2 ** 30, 1),
                       "count": torch.cuda.device_count()}
    try:
        import ofa_sdk._spectrum_cuda as ext
        info["cuda_ext"] = ext.version_info()
    except Exception as e:  # noqa: BLE001
        info["cuda_ext"] = f"not importable: {type(e).__name__}: {e}"[:300]
    return info


def step_parity(a) -> dict:
    from ofa_sdk import Attributor
    from ofa_sdk.backends import EngineUnavailable
    from ofa_sdk.backends.verify import TOLERANCES, ensure_verified
    from ofa_sdk.weights import load_default_model
    bundle = load_default_model()
    ims, source = photo_arrays(a, 6 if a.dry_run else 48)
    support = {"a": ims[0::3], "b": ims[1::3]}
    queries = ims[2::3]
    ref = Attributor(model=bundle, backend="torch", device="cpu", crops=1)
    for name, items in support.items():
        ref.enroll(name, items)
    z_ref, s_ref = ref.fingerprint(ims), np.asarray(ref.scores(queries))
    spread = float(s_ref.max() - s_ref.min()) or 1.0
    res = Partial(a, "parity", inputs=source, reference="torch engine on the CPU",
                  rule=ref.rule.name, engines={})
    from ofa_sdk.kernels import dispatch
    dispatch.refresh()                  # the extensions may have been built since import
    for label, backend, device, opts, ctx in engines_to_check(a):
        row = {}
        if ctx == "cuda_ext" and not dispatch.cuda_ext_available():
            res["engines"][label] = {"unavailable": "ofa_sdk._spectrum_cuda is not built or "
                                     "does not import (install.log says why)"}
            continue
        try:
            with _dispatch_context(ctx):
                att = Attributor(model=bundle, backend=backend, device=device, strict=True,
                                 crops=1, engine_options=opts)
                for name, items in support.items():
                    att.enroll(name, items)
                prec = getattr(att.engine, "precision", "fp32")
                z = att.fingerprint(ims)
                s = np.asarray(att.scores(queries))
                why, rec = ensure_verified(att.engine, bundle, force=True)
            tol_z, tol_cos = TOLERANCES[prec]
            cos = (z * z_ref).sum(1) / np.linalg.norm(z, axis=1) / np.linalg.norm(z_ref, axis=1)
            row = {"precision": prec, "device": att.engine.device,
                   "fingerprint_max_abs": float(np.abs(z - z_ref).max()),
                   "fingerprint_max_one_minus_cos": float((1 - cos).max()),
                   "score_max_abs_over_range": float(np.abs(s - s_ref).max() / spread),
                   "top1_agree": float((s.argmax(1) == s_ref.argmax(1)).mean()),
                   "tolerance": {"fingerprint_max_abs": tol_z, "max_one_minus_cos": tol_cos,
                                 "score_over_range": SCORE_TOLERANCE[prec]},
                   "parity_record": rec.get("path"), "parity_record_passed": why is None}
            row["passed"] = bool(row["fingerprint_max_abs"] <= tol_z
                                 and row["fingerprint_max_one_minus_cos"] <= tol_cos
                                 and row["score_max_abs_over_range"] <= SCORE_TOLERANCE[prec])
        except EngineUnavailable as e:
            row = {"unavailable": str(e)[:500]}
        except Exception as e:  # noqa: BLE001 - a failing engine is a result, not a crash
            row = {"error": f"{type(e).__name__}: {e}"[:800], "passed": False}
        res["engines"][label] = row
        res.save()
        print(label, row, flush=True)
    return res


def step_e2e(a) -> dict:
    from harness import encoded, images, median_time

    from ofa_sdk import Attributor
    from ofa_sdk.backends import EngineUnavailable
    from ofa_sdk.weights import load_default_model
    bundle = load_default_model()
    batches = (2, 4) if a.dry_run else (64, 256)
    blobs = encoded(images(2 * max(batches), 128, seed=2))
    engines = [("torch cpu (baseline)", "torch", "cpu", {})]
    engines += [(l, b, d, o) for l, b, d, o, ctx in engines_to_check(a) if ctx is None]
    res = Partial(a, "e2e", images=f"{len(blobs)} PNG-encoded 128x128 images, 1 crop each, "
                  "decode included", rows={})
    for batch in batches:
        base = None
        for label, backend, device, opts in engines:
            key = f"{label} batch {batch}"
            try:
                att = Attributor(model=bundle, backend=backend, device=device, strict=True,
                                 crops=1, batch_size=batch, engine_options=opts)
                t = median_time(lambda: att.fingerprint(blobs), 1 if a.dry_run else 3)
                row = {"images_per_s": round(len(blobs) / t, 1), "seconds": round(t, 4)}
                if label == "torch cpu (baseline)":
                    base = t
                if base is not None:        # no ratio against another engine's time
                    row["x_vs_torch_cpu"] = round(base / t, 2)
            except EngineUnavailable as e:
                row = {"unavailable": str(e)[:300]}
            except Exception as e:  # noqa: BLE001
                row = {"error": f"{type(e).__name__}: {e}"[:500]}
            res["rows"][key] = row
            res.save()
            print(key, row, flush=True)
    return res


def _train_rate(a, run: Path, data: Path, device: str, steps: int) -> dict:
    sets = {"stage2.steps": steps}
    if a.dry_run:
        sets.update({"stage2.n": 2, "stage2.m": 1, "stage2.crop": 48})
    from ofa_sdk.training.__main__ import main as ofa_train
    argv = ["stage2", "--data", str(data), "--out", str(run), "--device", device, "--quiet",
            "--fresh"]
    for k, v in sets.items():
        argv += ["--set", f"{k}={v}"]
    t0 = time.time()
    try:
        ofa_train(argv)                  # as `ofa-train stage2 ... --device DEVICE` runs it
    except BaseException as e:  # noqa: BLE001 - SystemExit included: record, go on
        return {"error": f"{type(e).__name__}: {e}"[:1500]}
    log = [json.loads(x) for x in (run / "stage2.jsonl").read_text().splitlines() if x.strip()]
    # the first step includes start-up (warm-up, cuDNN autotuning): the rate is over the rest
    dt = log[-1]["time"] - log[0]["time"]
    rate = (len(log) - 1) / dt if dt > 0 else None
    return {"device": device, "steps": len(log), "wall_s": round(time.time() - t0, 1),
            "steps_per_s": round(rate, 3) if rate else None, "settings": sets}


def step_train(a) -> dict:
    import torch
    work = Path(tempfile.mkdtemp(prefix="gpu_check_train_"))
    data = Path(a.photos) if a.photos else work / "photos"
    if not a.photos:
        from PIL import Image

        from harness import images
        data.mkdir()
        for i, arr in enumerate(images(4 if a.dry_run else 16, 160, seed=3)):
            Image.fromarray(arr).save(data / f"p{i}.png")
    res = Partial(a, "train", data=str(data) if a.photos else "synthetic 160x160 images",
                  model="shipped compact configuration, stage 0/1 from the shipped model")
    runs = res["runs"] = {}
    for device, steps in ((("cpu", 2),) if a.dry_run else (("cuda", 30), ("cpu", 3))):
        if device == "cuda" and not torch.cuda.is_available():
            runs[device] = {"unavailable": "CUDA is not available"}
            continue
        run = work / device
        from ofa_sdk.training import export
        from ofa_sdk.weights import DEFAULT_MODEL
        export.unpack(DEFAULT_MODEL, run)     # stage 0/1 checkpoints of the shipped model
        runs[device] = _train_rate(a, run, data, device, steps)
        res.save()
        print(device, runs[device], flush=True)
    if runs.get("cuda", {}).get("steps_per_s") and runs.get("cpu", {}).get("steps_per_s"):
        res["x_cuda_vs_cpu"] = round(runs["cuda"]["steps_per_s"] / runs["cpu"]["steps_per_s"], 1)
    return res


# ---------------------------------------------------------------------------------- summary
def kernel_ratios(kern: dict) -> list:
    """Each kernel row (Triton, CUDA extension) against the fastest torch row of its case."""
    best, rows = {}, []
    for r in kern.get("results", []):
        case, _, impl = r["name"].partition(" | ")
        if "us" in r and not impl.startswith(("triton", "cuda_ext")):
            if r["us"] < best.get(case, (float("inf"),))[0]:
                best[case] = (r["us"], impl)
    for r in kern.get("results", []):
        case, _, impl = r["name"].partition(" | ")
        if impl.startswith(("triton", "cuda_ext")):
            row = {"case": case, "kernel": impl, "us": r.get("us"), "err": r.get("err"),
                   "error": r.get("error")}
            if "us" in r and case in best:
                row.update(best_torch=best[case][1], best_torch_us=best[case][0],
                           speedup=float(f"{best[case][0] / r['us']:.3g}"))  # interpreter: tiny
            rows.append(row)
    return rows


def step_summary(a) -> dict:
    out = Path(a.out)
    steps = [json.loads(x) for x in (out / "steps.jsonl").read_text().splitlines() if x.strip()] \
        if (out / "steps.jsonl").exists() else []
    parts = {}
    for name in ("env", "parity", "e2e", "train", "kernels_gpu"):
        p = out / f"{name}.json"
        parts[name] = json.loads(p.read_text()) if p.exists() else None
    kr = kernel_ratios(parts["kernels_gpu"] or {})
    tests_log = (out / "tests.log").read_text() if (out / "tests.log").exists() else ""
    tests = {k: len(re.findall(rf"(?m) {k}(?: |$)", tests_log))
             for k in ("PASSED", "FAILED", "ERROR", "SKIPPED")}
    m = re.search(r"(\d+) tests? collected", tests_log)
    tests["collected"] = int(m.group(1)) if m else None
    tests["failed"] = re.findall(r"(?m)^(\S+::\S+) (?:FAILED|ERROR)", tests_log)[:50]
    report = {"dry_run": a.dry_run, "steps": steps, "time_boxes_s": sum(s["box_s"] for s in steps),
              "tests": tests, "kernel_vs_best_torch": kr, **parts}
    lines = [f"# GPU check {'(DRY RUN on the CPU: times mean nothing)' if a.dry_run else ''}", "",
             "| step | exit | seconds | box |", "|---|---|---|---|"]
    lines += [f"| {s['step']} | {s['rc']}{' (timed out)' if s['rc'] in (124, 137) else ''} | "
              f"{s['seconds']} | {s['box_s']} |" for s in steps]
    install_log = (out / "install.log").read_text() if (out / "install.log").exists() else ""
    report["extensions_built"] = sorted({l.strip() for l in install_log.splitlines()
                                         if l.strip().startswith("ofa-sdk:")})[:10]
    env = parts["env"] or {}
    lines += ["", f"GPU: {env.get('gpu')}; torch {env.get('torch')} (CUDA {env.get('cuda_build')}); "
              f"triton {env.get('triton')}; tensorrt {env.get('tensorrt')}; "
              f"CUDA extension before install: {env.get('cuda_ext')}; install: "
              f"{'; '.join(report['extensions_built']) or 'setup reported nothing skipped or failed'}", "",
              (f"GPU tests (dry run: collected only): {tests['collected']}" if a.dry_run else
               f"GPU tests: {tests['PASSED']} passed, {tests['FAILED']} failed, {tests['ERROR']} "
              f"errors, {tests['SKIPPED']} skipped" + (f" (failed: {', '.join(tests['failed'][:10])})"
                                                       if tests["failed"] else "")),
              "", "## Parity against torch on the CPU", ""]
    for label, row in ((parts["parity"] or {}).get("engines") or {}).items():
        if "fingerprint_max_abs" in row:
            lines.append(f"- {label}: {'PASS' if row['passed'] else 'FAIL'}: fingerprints max "
                         f"|diff| {row['fingerprint_max_abs']:.2e}, scores max |diff|/range "
                         f"{row['score_max_abs_over_range']:.2e}, top-1 agree {row['top1_agree']:.3f}")
        else:
            lines.append(f"- {label}: {row.get('unavailable') or row.get('error')}"[:300])
    lines += ["", "## Kernels against the best torch composition of the same case", ""]
    lines += [f"- {r['case']} | {r['kernel']}: " + (f"{r['us']} us, x{r['speedup']} vs {r['best_torch']}"
              if r.get("speedup") else f"{r.get('error') or 'no time'}") for r in kr]
    lines += ["", "## End to end", ""]
    lines += [f"- {k}: {v}" for k, v in ((parts["e2e"] or {}).get("rows") or {}).items()]
    lines += ["", "## Stage-2 training", ""]
    lines += [f"- {k}: {v}" for k, v in ((parts["train"] or {}).get("runs") or {}).items()]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return report


STEPS = {"env": step_env, "parity": step_parity, "e2e": step_e2e, "train": step_train,
         "summary": step_summary}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", choices=sorted(STEPS))
    ap.add_argument("--out", default=os.environ.get("OUT", "gpu_check_out"))
    ap.add_argument("--photos", default=os.environ.get("OFA_PHOTOS") or None)
    ap.add_argument("--dry-run", action="store_true")
    a = ap.parse_args(argv)
    if a.dry_run:
        os.environ.setdefault("TRITON_INTERPRET", "1")
    t0 = time.time()
    data = STEPS[a.step](a)
    data["step_seconds"] = round(time.time() - t0, 2)
    data.pop("partial", None)           # finished
    _write(Path(a.out), "gpu_check" if a.step == "summary" else a.step, data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
