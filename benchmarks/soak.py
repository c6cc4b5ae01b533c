"""Soak: resident memory over many ``Attributor.attribute`` calls on small arrays. A leak per call
(a cache that only grows, a thread pool or tensor kept alive) shows as RSS growing after the
warm-up; a healthy SDK stays flat.

    python benchmarks/soak.py [--model tiny|shipped|FILE] [--calls 10000] [--every 500]
                              [--warmup 200] [--batch 1] [--out soak.json]

``tiny`` (the default) is a small random-weight model built on the fly (``ofa_sdk.testing``, the
tests' configuration): it exercises every SDK layer at a fraction of the shipped model's cost, so
the run measures the SDK's own memory behaviour. ``shipped`` is the packaged model. Two profiles
are enrolled from random arrays; each call attributes ``--batch`` arrays (a fixed pool, reused)
against them with the default per-profile thresholds. RSS is read from psutil when installed,
else /proc/self/status (VmRSS); ``gc.collect()`` runs before each sample. Growth is measured from
the sample after ``--warmup`` calls to the last one.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

def rss_mb() -> float:
    """Current resident set size in MiB."""
    try:
        import psutil
        return psutil.Process().memory_info().rss / 2 ** 20
    except ImportError:
        pass
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # peak, the best left


def rss_source() -> str:
    import importlib.util
    if importlib.util.find_spec("psutil") is not None:
        return "psutil"
    return "/proc/self/status" if os.path.exists("/proc/self/status") else "ru_maxrss (peak)"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny", help="tiny | shipped | a model file")
    ap.add_argument("--calls", type=int, default=10000)
    ap.add_argument("--every", type=int, default=500, help="sample RSS every N calls")
    ap.add_argument("--warmup", type=int, default=200, help="calls before the growth baseline")
    ap.add_argument("--batch", type=int, default=1, help="arrays per attribute call")
    ap.add_argument("--size", type=int, default=None, help="array side (default: crop + 16)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="JSON report")
    a = ap.parse_args(argv)
    if a.calls < 1 or a.every < 1 or not 0 <= a.warmup < a.calls:
        ap.error("need calls >= 1, every >= 1 and 0 <= warmup < calls")

    import torch
    torch.set_num_threads(a.threads)
    from ofa_sdk import Attributor
    from ofa_sdk.testing import write_tiny_model

    tmp = tempfile.TemporaryDirectory()
    model = {"tiny": lambda: write_tiny_model(Path(tmp.name) / "tiny.safetensors"),
             "shipped": lambda: None}.get(
        a.model, lambda: Path(a.model))()
    att = Attributor(model=model, backend="torch", gallery=None)
    rng = np.random.default_rng(a.seed)
    side = a.size or att.crop + 16
    for k in range(2):
        att.enroll(f"gen-{k}", [rng.integers(0, 256, (side, side, 3), np.uint8) for _ in range(8)])
    pool = [rng.integers(0, 256, (side, side, 3), np.uint8) for _ in range(64)]

    samples = []

    def sample(calls: int, t0: float):
        gc.collect()
        s = {"calls": calls, "rss_mb": round(rss_mb(), 2), "seconds": round(time.time() - t0, 2),
             "py_objects": len(gc.get_objects())}
        samples.append(s)
        print(f"calls {calls:6d}  rss {s['rss_mb']:8.1f} MiB  objects {s['py_objects']:7d}  "
              f"[{s['seconds']:.0f}s]", flush=True)

    t0 = time.time()
    sample(0, t0)
    base = None
    for i in range(1, a.calls + 1):
        items = [pool[(i * a.batch + j) % len(pool)] for j in range(a.batch)]
        res = att.attribute(items)
        if len(res) != a.batch or not all(r.ok for r in res):
            print(f"call {i}: unexpected result {res}", file=sys.stderr)
            return 1
        if i == a.warmup or i % a.every == 0 or i == a.calls:
            if not samples or samples[-1]["calls"] != i:
                sample(i, t0)
            if i == a.warmup:
                base = samples[-1]
    base = base or samples[0]
    last = samples[-1]
    measured = last["calls"] - base["calls"]
    report = {
        "model": a.model, "model_id": att.model_id, "backend": att.backend, "crop": att.crop,
        "array": [side, side, 3], "batch": a.batch, "calls": a.calls, "warmup": a.warmup,
        "torch_threads": a.threads, "rss_source": rss_source(),
        "rss_start_mb": samples[0]["rss_mb"], "rss_after_warmup_mb": base["rss_mb"],
        "rss_end_mb": last["rss_mb"],
        "growth_after_warmup_mb": round(last["rss_mb"] - base["rss_mb"], 2),
        "growth_per_1000_calls_kb": round(1024 * 1000 * (last["rss_mb"] - base["rss_mb"])
                                          / max(1, measured), 1),
        "py_objects_growth_after_warmup": last["py_objects"] - base["py_objects"],
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 2),
        "seconds": last["seconds"], "calls_per_s": round(a.calls / max(last["seconds"], 1e-9), 1),
        "samples": samples, "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
    }
    print(f"growth after warm-up ({base['calls']} -> {last['calls']} calls): "
          f"{report['growth_after_warmup_mb']:+.2f} MiB "
          f"({report['growth_per_1000_calls_kb']:+.1f} KiB per 1000 calls); python objects "
          f"{report['py_objects_growth_after_warmup']:+d}; {report['calls_per_s']} calls/s")
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(report, indent=2))
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
