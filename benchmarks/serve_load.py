"""Load on ``ofa-sdk serve``: throughput and p50/p99 latency at 1, 8 and 32 concurrent clients,
against the library's batched ``Attributor.attribute`` on the same images in the same run.

    python benchmarks/serve_load.py [--model FILE] [--photos DIR] [--images 64] [--size 256]
                                    [--clients 1 8 32] [--requests 320] [--seconds 120]
                                    [--overload-clients 128] [--overload-seconds 30]
                                    [--out serve_load.json]

The server runs as ``ofa-sdk serve`` in a process of its own on 127.0.0.1 (a free port; never
another host), over a gallery of two profiles enrolled here; the clients are threads of this
process, each with one keep-alive connection, each request one image as raw ``image/png`` (or
the photo's own type) bytes. Each level sends ``--requests`` requests, or stops after
``--seconds``, whichever comes first. The baseline is the library in this process with the
same model, engine and gallery: ``att.attribute(images)`` over the same encoded images, timed
before and after the server levels (the machine may be shared: both figures are reported and
the ratio uses their mean). Images: ``--images`` synthetic PNGs (seeded noise and blocky noise,
``--size`` pixels square) made here, or the first ``--images`` files of ``--photos``.

Then the overload phase: a second server admitting at most 8 requests at once, under
``--overload-clients`` clients for ``--overload-seconds`` (a refused client retries after 50 ms;
at most 100,000 requests): the requests served and refused with 503, and the server's resident
memory, sampled every 0.2 s, after a warm-up at the admitted load and through the phase.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def synthetic(n: int, size: int, seed: int = 0):
    """n PNGs, alternately blocky and noise (ofa_sdk.evaluation.synthetic), as (type, bytes)."""
    from ofa_sdk.evaluation.synthetic import png_images
    blocky, noise = png_images((n + 1) // 2, seed, size, "blocky"), png_images(n // 2, seed + 1, size, "noise")
    return [("image/png", b) for pair in zip(blocky, noise + [None]) for b in pair if b is not None][:n]


def photos(folder: str, n: int):
    from ofa_sdk.images import expand_paths
    kinds = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp"}
    out = []
    for p in expand_paths([folder]):
        out.append((kinds.get(Path(p).suffix.lower(), "application/octet-stream"), Path(p).read_bytes()))
        if len(out) == n:
            break
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def library_rate(att, images, total: int) -> float:
    """Images per second of ``att.attribute`` over ``total`` images (the pool, repeated)."""
    data = [b for _, b in images]
    reps = max(1, total // len(data))
    t = time.perf_counter()
    for _ in range(reps):
        res = att.attribute(data)
        assert all(r.ok for r in res), [r.error for r in res if not r.ok][:3]
    return reps * len(data) / (time.perf_counter() - t)


def load(port: int, images, clients: int, requests: int, seconds: float):
    """``requests`` POSTs from ``clients`` threads (or until ``seconds``): latencies, errors."""
    lat, errors, refused, lock = [], [], [], threading.Lock()
    counter = iter(range(requests))
    deadline = time.monotonic() + seconds

    def client():
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while time.monotonic() < deadline:
            with lock:
                i = next(counter, None)
            if i is None:
                break
            ctype, body = images[i % len(images)]
            t = time.perf_counter()
            try:
                c.request("POST", "/v1/attribute", body=body, headers={"Content-Type": ctype})
                r = c.getresponse()
                payload = r.read()
                ok = r.status == 200 and json.loads(payload)["results"][0]["error"] is None
                if r.status == 503:
                    with lock:
                        refused.append(r.getheader("Retry-After"))
                    time.sleep(0.05)        # a refused client tries again soon, not at once
                    continue
            except (OSError, http.client.HTTPException) as e:
                ok, payload = False, repr(e).encode()
                c.close()
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            dt = time.perf_counter() - t
            with lock:
                (lat.append(dt) if ok else errors.append(payload[:200]))
        c.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t
    return np.array(lat), errors, wall, refused


def metrics_text(port: int) -> str:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request("GET", "/metrics")
    return c.getresponse().read().decode()


def start_server(gallery, model, *extra):
    """``ofa-sdk serve`` in a process of its own on a free port of 127.0.0.1, once ready."""
    port = free_port()
    cmd = [sys.executable, "-m", "ofa_sdk.cli", "serve", "--port", str(port),
           "--gallery", str(gallery), *extra] + (["--model", model] if model else [])
    server = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    t = time.monotonic()
    while True:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", "/readyz")
            if c.getresponse().status == 200:
                return port, server
        except OSError:
            pass
        if server.poll() is not None or time.monotonic() - t > 300:
            stop(server)
            raise RuntimeError("the server did not get ready")
        time.sleep(0.2)


def stop(server) -> None:
    server.send_signal(signal.SIGINT)
    try:
        server.wait(30)
    except subprocess.TimeoutExpired:
        server.kill()


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(x.split()[1]) for x in f if x.startswith("VmRSS")) / 1024


def overload_run(gallery, a, images):
    """Past the admission limit: a server with ``--max-inflight`` 8 under
    ``--overload-clients`` clients; how many were served and refused (503), and the server's
    resident memory at the start, at its peak (sampled every 0.2 s) and at the end."""
    port, server = start_server(gallery, a.model, "--max-inflight", "8")
    try:
        load(port, images, 8, 64, 60)                     # warm-up at the admitted load
        samples, done = [rss_mib(server.pid)], threading.Event()

        def sample():
            while not done.wait(0.2):
                samples.append(rss_mib(server.pid))
        th = threading.Thread(target=sample)
        th.start()
        lat, errors, wall, refused = load(port, images, a.overload_clients, 100_000,
                                          a.overload_seconds)
        done.set()
        th.join()
        row = {"clients": a.overload_clients, "max_inflight": 8, "served": len(lat),
               "refused_503": len(refused), "retry_after": sorted(set(map(str, refused))),
               "errors": len(errors), "served_img_per_s": len(lat) / wall,
               "seconds": wall,
               "rss_mib": {"start": samples[0], "peak": max(samples),
                           "quarters": [samples[int(q * (len(samples) - 1))] for q in (.25, .5, .75, 1)]}}
    finally:
        stop(server)
    print(f"overload, {row['clients']} clients for {wall:.0f} s, max-inflight 8: "
          f"{row['served']} served ({row['served_img_per_s']:.1f} img/s), "
          f"{row['refused_503']} refused (503), {row['errors']} errors; server RSS (MiB) after "
          f"warm-up {samples[0]:.0f}, at 1/4, 1/2, 3/4 and the end of the phase "
          + ", ".join(f"{x:.0f}" for x in row["rss_mib"]["quarters"])
          + f"; peak {row['rss_mib']['peak']:.0f}", flush=True)
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--photos", default=None, help="a folder of photos (default: synthetic PNGs)")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--requests", type=int, default=320, help="requests per level")
    ap.add_argument("--seconds", type=float, default=120, help="time cap per level")
    ap.add_argument("--overload-clients", type=int, default=128,
                    help="clients of the overload phase (0: none)")
    ap.add_argument("--overload-seconds", type=float, default=30, help="length of that phase")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)

    from ofa_sdk import Attributor
    images = photos(a.photos, a.images) if a.photos else synthetic(a.images, a.size)
    tmp = Path(tempfile.mkdtemp(prefix="ofa-serve-load-"))
    gallery = tmp / "gallery.db"
    att = Attributor(model=a.model, gallery=gallery)
    enroll = synthetic(16, a.size, seed=100)         # not the query images
    att.enroll("gen-noise", [b for _, b in enroll[1::2]])
    att.enroll("gen-blocky", [b for _, b in enroll[0::2]])
    info = att.info()
    print(f"model {info['model_id']}, engine {info['backend']}, rule {info['rule']}, "
          f"{len(images)} images, {os.cpu_count()} CPUs", flush=True)
    library_rate(att, images[:8], 8)                     # warm-up
    lib_before = library_rate(att, images, a.requests)
    print(f"library attribute: {lib_before:.1f} img/s", flush=True)

    port, server = start_server(gallery, a.model)
    rows = []
    try:
        load(port, images, 4, 16, 60)                      # warm-up
        for n in a.clients:
            before = metrics_text(port)
            lat, errors, wall, refused = load(port, images, n, a.requests, a.seconds)
            after = metrics_text(port)
            b0 = [float(x.split()[-1]) for x in before.splitlines()
                  if x.startswith(("ofa_batch_images_sum ", "ofa_batch_images_count "))]
            b1 = [float(x.split()[-1]) for x in after.splitlines()
                  if x.startswith(("ofa_batch_images_sum ", "ofa_batch_images_count "))]
            batch = (b1[1] - b0[1]) / max(1.0, b1[0] - b0[0]) if len(b0) == len(b1) == 2 else None
            row = {"clients": n, "requests": len(lat) + len(errors), "errors": len(errors),
                   "refused_503": len(refused),
                   "img_per_s": len(lat) / wall, "p50_ms": 1000 * float(np.percentile(lat, 50)),
                   "p99_ms": 1000 * float(np.percentile(lat, 99)), "mean_batch": batch,
                   "first_errors": [e.decode(errors="replace") for e in errors[:3]]}
            rows.append(row)
            print(f"{n:3d} clients: {row['img_per_s']:.1f} img/s, p50 {row['p50_ms']:.0f} ms, "
                  f"p99 {row['p99_ms']:.0f} ms, mean batch {batch or 0:.1f}, "
                  f"{row['errors']} errors", flush=True)
    finally:
        stop(server)
    overload = overload_run(gallery, a, images) if a.overload_clients else None
    lib_after = library_rate(att, images, a.requests)
    lib = (lib_before + lib_after) / 2
    print(f"library attribute (after): {lib_after:.1f} img/s", flush=True)
    print("\n| clients | server img/s | x library | p50 ms | p99 ms | mean batch | errors |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        r["ratio"] = r["img_per_s"] / lib
        print(f"| {r['clients']} | {r['img_per_s']:.1f} | {r['ratio']:.2f} | {r['p50_ms']:.0f} | "
              f"{r['p99_ms']:.0f} | {r['mean_batch'] or 0:.1f} | {r['errors']} |")
    print(f"| library `attribute` | {lib:.1f} (before {lib_before:.1f}, after {lib_after:.1f}) "
          f"| 1.00 | | | | |")
    report = {"model": info["model_id"], "engine": info["backend"], "rule": info["rule"],
              "images": len(images), "source": a.photos or f"synthetic {a.size}px PNG",
              "cpus": os.cpu_count(), "library_img_per_s": {"before": lib_before, "after": lib_after},
              "levels": rows, "overload": overload}
    if a.out:
        Path(a.out).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
