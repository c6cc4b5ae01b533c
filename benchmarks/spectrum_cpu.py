"""Log-spectrum on the CPU: the C++ kernel (``ofa_sdk._spectrum_cpu``) against the PyTorch path,
as ratios to the PyTorch path measured in the same run (shared, noisy machine: absolute times
drift, ratios much less; every repeat runs each method once, in turn, and the median is kept).

    (a) torch:  torch.fft.rfft2 + |.| + Hermitian mirror + log1p, as ofa_sdk/kernels/reference.py
                (also with 1 thread: on a loaded machine each parallel torch op waits for both)
    (b) scipy:  scipy.fft.rfft2(workers=T) + the same epilogue in numpy
    (c) csrc:   ofa_sdk._spectrum_cpu.log_spectrum(r, 255, threads=T)   (also threads=1)
    (d) high-pass from the image: torch conv2d (3x3 Laplacian, valid) x 255 + (a), against
        ofa_sdk._spectrum_cpu.highpass_log_spectrum(x, 255, threads=T); the image is 2 pixels
        larger so the FFT has the same size as in (a)-(c).

    python benchmarks/spectrum_cpu.py [--threads 2] [--repeats 15]
        [--out benchmarks/results/spectrum_cpu.json] [--md benchmarks/results/spectrum_cpu.md]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
SHAPES = [(16, 3, 94, 94), (64, 3, 94, 94), (4, 3, 222, 222)]
SCALE = 255.0
from ofa_sdk.kernels.reference import LAPLACIAN  # noqa: E402


def torch_path():
    """The model's PyTorch path (log_spectrum_torch where the tree has it, else a copy of it)."""
    try:
        from ofa_sdk.kernels.reference import log_spectrum_torch
        return log_spectrum_torch, "ofa_sdk.kernels.reference.log_spectrum_torch"
    except ImportError:
        pass

    def log_spectrum_torch(r):  # copy of ofa_sdk/kernels/reference.py (rfft2 + mirror)
        r = r.float()
        h, w = r.shape[-2:]
        half = torch.fft.rfft2(r).abs()
        rows = (-torch.arange(h)) % h
        cols = w - torch.arange(w // 2 + 1, w)
        rest = half.index_select(-1, cols).index_select(-2, rows)
        return torch.log1p(torch.cat([half, rest], dim=-1))
    return log_spectrum_torch, "copy of the rfft2 + mirror path"


def scipy_path(threads):
    import scipy.fft

    def run(r):
        h, w = r.shape[-2:]
        half = np.abs(scipy.fft.rfft2(r, workers=threads))
        rows = (-np.arange(h)) % h
        cols = w - np.arange(w // 2 + 1, w)
        return np.log1p(np.concatenate([half, half[..., rows, :][..., cols]], axis=-1))
    return run


def measure(fns: dict, repeats: int, warmup: int = 2) -> dict:
    """Median wall time (ms) of each zero-argument callable, and its median CPU time (all threads
    of this process: less sensitive to other jobs than wall time); the methods alternate."""
    for f in fns.values():
        for _ in range(warmup):
            f()
    wall = {k: [] for k in fns}
    cpu = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            c0, t0 = time.process_time(), time.perf_counter()
            f()
            wall[k].append(1e3 * (time.perf_counter() - t0))
            cpu[k].append(1e3 * (time.process_time() - c0))
    return {k: {"median_ms": statistics.median(v), "min_ms": min(v), "max_ms": max(v),
                "median_cpu_ms": statistics.median(cpu[k])} for k, v in wall.items()}


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for ln in f:
                if ln.startswith("model name"):
                    return ln.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/spectrum_cpu.json"))
    ap.add_argument("--md", default=str(ROOT / "benchmarks/results/spectrum_cpu.md"))
    args = ap.parse_args()
    try:
        from ofa_sdk import _spectrum_cpu as ext
    except ImportError as e:
        sys.exit(f"ofa_sdk._spectrum_cpu is not built ({e}): pip install -e . --no-build-isolation")
    T = args.threads
    torch.set_num_threads(T)
    tpath, tname = torch_path()
    spath = scipy_path(T)
    import scipy
    report = {
        "command": "python benchmarks/spectrum_cpu.py " + " ".join(sys.argv[1:]),
        "cpu": cpu_name(), "cpu_count": os.cpu_count(), "threads": T, "repeats": args.repeats,
        "load_average_start": os.getloadavg(), "torch": torch.__version__,
        "torch_mkl": torch.backends.mkl.is_available(), "numpy": np.__version__,
        "scipy": scipy.__version__, "csrc_build": ext.build_info(), "torch_path": tname,
        "scale": SCALE, "runs": {},
    }
    print(f"{report['cpu']}, {T} threads, load {report['load_average_start'][0]:.2f}; "
          f"csrc: {report['csrc_build']}", flush=True)
    gen = torch.Generator().manual_seed(0)
    for shape in SHAPES:
        b, c, h, w = shape
        r = torch.randn(shape, generator=gen)
        rs = r * SCALE                                   # the model scales the residual first
        rn, rsn = r.numpy(), rs.numpy()
        x = torch.rand((b, c, h + 2, w + 2), generator=gen)
        xn = x.numpy()
        k = x.new_tensor(LAPLACIAN).expand(c, 1, 3, 3)

        def torch_hp():
            return tpath(F.conv2d(x, k, groups=c) * SCALE)
        def torch_1thread():  # context: torch's parallel ops wait for both threads each time
            torch.set_num_threads(1)
            try:
                return tpath(rs)
            finally:
                torch.set_num_threads(T)
        fns = {
            "a_torch": lambda: tpath(rs),
            "a_torch_1thread": torch_1thread,
            "b_scipy": lambda: spath(rsn),
            "c_csrc": lambda: ext.log_spectrum(rn, SCALE, threads=T),
            "c_csrc_1thread": lambda: ext.log_spectrum(rn, SCALE, threads=1),
            "d_torch_conv_hp": torch_hp,
            "d_csrc_hp": lambda: ext.highpass_log_spectrum(xn, SCALE, threads=T),
        }
        with torch.inference_mode():
            ref = tpath(rs).numpy()
            diff = {
                "b_scipy": float(np.abs(spath(rsn) - ref).max()),
                "c_csrc": float(np.abs(fns["c_csrc"]() - ref).max()),
                "d_csrc_hp": float(np.abs(fns["d_csrc_hp"]() - torch_hp().numpy()).max()),
            }
            res = measure(fns, args.repeats)
        base, base_hp = res["a_torch"]["median_ms"], res["d_torch_conv_hp"]["median_ms"]
        for key, v in res.items():
            v["speedup_vs_a"] = base / v["median_ms"]
            v["cpu_speedup_vs_a"] = res["a_torch"]["median_cpu_ms"] / max(v["median_cpu_ms"], 1e-6)
        res["d_csrc_hp"]["speedup_vs_d_torch"] = base_hp / res["d_csrc_hp"]["median_ms"]
        name = "x".join(map(str, shape))
        report["runs"][name] = {"timings": res, "max_abs_diff_vs_torch": diff}
        print(f"{name}: " + "  ".join(f"{k_} {v['median_ms']:.2f} ms (x{v['speedup_vs_a']:.2f})"
                                      for k_, v in res.items())
              + f"  | hp fused vs conv+torch x{res['d_csrc_hp']['speedup_vs_d_torch']:.2f}"
              + f"  | max |diff| {diff}", flush=True)
    report["load_average_end"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    Path(args.md).write_text(markdown(report))
    print(f"wrote {args.out} and {args.md}")


def markdown(rep: dict) -> str:
    T = rep["threads"]
    lines = [
        "### Log-spectrum on the CPU: C++ kernel vs the PyTorch path",
        "",
        f"`{rep['command']}` — {rep['cpu']}, {rep['cpu_count']} cores shared with other jobs "
        f"(load average {rep['load_average_start'][0]:.1f} at the start, "
        f"{rep['load_average_end'][0]:.1f} at the end), torch {rep['torch']} "
        f"(MKL {'on' if rep['torch_mkl'] else 'off'}), scipy {rep['scipy']}, "
        f"kernel built with {rep['csrc_build']}. Median of {rep['repeats']} repeats, the methods "
        "alternating within each repeat; speed-up = time of (a) / time of the method, same run "
        "(> 1: faster than (a)); the last column compares process CPU time (all threads) instead "
        "of wall time. Scale 255 in every method.",
        "",
        f"| batch (B x C x H x W) | (a) torch rfft2 + mirror, {T} thr | (a) torch, 1 thr | (b) scipy rfft2, {T} workers "
        f"| (c) C++ kernel, {T} thr | (c) C++ kernel, 1 thr | (d) conv2d + (a) | (d) C++ fused high-pass, {T} thr "
        f"| CPU-time speed-up of (c), {T} thr |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, run in rep["runs"].items():
        t = run["timings"]

        def cell(k):
            return f"{t[k]['median_ms']:.2f} ms (x{t[k]['speedup_vs_a']:.2f})"
        lines.append(
            f"| {name} | {t['a_torch']['median_ms']:.2f} ms | {cell('a_torch_1thread')} | {cell('b_scipy')} | {cell('c_csrc')} "
            f"| {cell('c_csrc_1thread')} | {t['d_torch_conv_hp']['median_ms']:.2f} ms "
            f"| {t['d_csrc_hp']['median_ms']:.2f} ms (x{t['d_csrc_hp']['speedup_vs_d_torch']:.2f} vs conv2d + (a)) "
            f"| x{t['c_csrc']['cpu_speedup_vs_a']:.2f} |")
    spread = "; ".join(
        f"{name}: (a) {r['timings']['a_torch']['min_ms']:.1f}-{r['timings']['a_torch']['max_ms']:.1f} ms, "
        f"(c) {r['timings']['c_csrc']['min_ms']:.1f}-{r['timings']['c_csrc']['max_ms']:.1f} ms"
        for name, r in rep["runs"].items())
    worst = max(max(r["max_abs_diff_vs_torch"].values()) for r in rep["runs"].values())
    lines += [
        "",
        f"Spread over the repeats (min-max wall time): {spread}. On a shared machine the 2-thread "
        "rows move most between runs (a parallel op waits for a core the other jobs hold); the "
        "1-thread and CPU-time columns are the steadier comparison.",
        "",
        f"Largest |difference| from (a) over every output element: {worst:.2g} (both are float32; "
        "tests/test_csrc_spectrum.py checks the kernel against a float64 reference). The high-pass "
        "image is (H+2) x (W+2), so its FFT has the size of the row.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
