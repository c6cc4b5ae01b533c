"""Throughput of the Ray Data scan (ofa_sdk.distributed.scan_dataset) against the
single-process scan (Attributor.scan) on the same folder, shipped model.

The script makes its own folder: ``--n`` query images of ``--size`` px (two kinds: noise and
2x-blocky noise) and ``--support`` images of each kind, enrolled as two profiles. Then it
times, alternating, ``--repeats`` single-process scans and ``--repeats`` Ray scans (each to a
fresh output folder, so nothing is skipped) and reports images/s (best and median) and the
ratio Ray / single-process (> 1: Ray faster). A Ray scan's time is the whole call: the driver's
snapshot, the actors' start and model load, the read, decode, engine and write. Starting the
local Ray cluster is timed apart (``ray_init_s``). Both scans must agree on every label.

    python benchmarks/ray_scan.py --n 300 --out benchmarks/results/ray_scan.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=300, help="query images (half of each kind)")
    ap.add_argument("--size", type=int, default=96, help="image side (the compact crop is 96)")
    ap.add_argument("--support", type=int, default=20, help="support images per profile")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--concurrency", type=int, default=1, help="engine actors")
    ap.add_argument("--num-gpus", type=float, default=0, help="GPUs per actor")
    ap.add_argument("--cpus", type=int, default=None, help="num_cpus of the local Ray cluster "
                                                           "(default: all)")
    ap.add_argument("--address", default=None, help="an existing Ray cluster instead")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--workdir", default=None, help="default: a temporary folder, removed")
    ap.add_argument("--out", default=None, help="JSON report")
    a = ap.parse_args(argv)

    import ray
    import ray.data
    from ofa_sdk import Attributor
    from ofa_sdk.distributed import scan_dataset
    from ofa_sdk.evaluation.synthetic import write_images

    work = Path(a.workdir or tempfile.mkdtemp(prefix="ofa-ray-bench-"))
    try:
        queries = work / "queries"
        if queries.exists():
            shutil.rmtree(queries)
        write_images(queries, a.n // 2, 1, a.size, "noise")
        write_images(queries, a.n - a.n // 2, 2, a.size, "blocky")
        gallery = work / "gallery.db"
        if gallery.exists():
            gallery.unlink()
        att = Attributor(backend=a.backend, gallery=str(gallery), batch_size=a.batch_size)
        att.enroll("noise", write_images(work / "sup-noise", a.support, 3, a.size, "noise"))
        att.enroll("blocky", write_images(work / "sup-blocky", a.support, 4, a.size, "blocky"))

        t = time.perf_counter()
        if a.address:
            ray.init(address=a.address)
        else:
            ray.init(num_cpus=a.cpus, include_dashboard=False, log_to_driver=False)
        ray_init_s = time.perf_counter() - t
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False

        single, dist, ref, summaries = [], [], None, []
        for r in range(a.repeats):
            t = time.perf_counter()
            res = {x.source: x.label for x in att.scan(str(queries), progress=False)}
            single.append(time.perf_counter() - t)
            ref = ref or res
            out = work / f"out-{r}.parquet"
            if out.exists():
                shutil.rmtree(out)
            t = time.perf_counter()
            s = scan_dataset(str(queries), str(out), gallery=str(gallery), backend=a.backend,
                             batch_size=a.batch_size, concurrency=a.concurrency,
                             num_gpus=a.num_gpus)
            dist.append(time.perf_counter() - t)
            summaries.append(s)
            import pyarrow.parquet as pq
            got = dict(zip(*pq.read_table(str(out), columns=["source", "label"]).to_pydict().values()))
            if got != res or s["written"] != a.n:
                raise SystemExit(f"the Ray scan disagrees with the single-process scan "
                                 f"({s['written']} rows, {sum(got.get(k) != v for k, v in res.items())} "
                                 f"labels differ)")
            print(f"repeat {r}: single {a.n / single[-1]:.1f} img/s, ray {a.n / dist[-1]:.1f} img/s",
                  flush=True)
        res = {
            "n": a.n, "size": a.size, "batch_size": a.batch_size, "concurrency": a.concurrency,
            "num_gpus": a.num_gpus, "repeats": a.repeats, "backend_single": att.backend,
            "ray_cluster_cpus": ray.cluster_resources().get("CPU"),
            "ray_init_s": round(ray_init_s, 2),
            "single_s": [round(x, 3) for x in single], "ray_s": [round(x, 3) for x in dist],
            "single_ips_best": round(a.n / min(single), 1),
            "single_ips_median": round(a.n / statistics.median(single), 1),
            "ray_ips_best": round(a.n / min(dist), 1),
            "ray_ips_median": round(a.n / statistics.median(dist), 1),
            "ratio_best": round(min(single) / min(dist), 3),
            "ratio_median": round(statistics.median(single) / statistics.median(dist), 3),
            "labels_agree": True,
            "machine": {"cpus": os.cpu_count(), "load_average": os.getloadavg(),
                        "python": platform.python_version(), "ray": ray.__version__},
            "command": "python benchmarks/ray_scan.py " + " ".join(argv or sys.argv[1:]),
        }
        ray.shutdown()
        print(json.dumps(res, indent=1))
        if a.out:
            Path(a.out).parent.mkdir(parents=True, exist_ok=True)
            Path(a.out).write_text(json.dumps(res, indent=1) + "\n")
    finally:
        if not a.workdir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
