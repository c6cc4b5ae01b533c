"""Start-up cost of a snapshot of a large gallery, with and without the per-profile state the
gallery stores (issue 32): what a CLI call pays before its first image.

    python benchmarks/state_cache.py --profiles 1000 --images 20 [--cli] [--variants 95 90 75 [--rescale-variants 0.75 0.5]]
    python benchmarks/state_cache.py --profiles 100 --images 100 --variants 95 90 75 --rescale-variants 1.2 0.9 0.75 0.6 0.5 --sizes 1 --memory

A synthetic gallery of ``--profiles`` profiles (``--images`` images of 4 crops each, d = 128
unit fingerprints around a random direction per profile) under the shipped model's id, in a
temporary folder. Each run makes a snapshot in a fresh cache (as a new process does) with the
model's default rule: the first computes every profile's fit and held-out scores and stores
them (what every call paid before they were stored), the next ones read them back.

``--cli``: then the whole command a user runs, ``ofa-sdk attribute`` of one image, as a new
process against that gallery and against an empty one (interpreter, imports, model and engine
load included): what the gallery adds to a CLI call, and what the call costs in all.

``--variants Q...``: each profile also holds JPEG variants of these qualities, and with
``--rescale-variants F...`` resized ones too, lossless and at each quality (as
``Attributor.enroll`` makes by default; here the support's fingerprints perturbed a little).
A snapshot prepares them when a query first needs one: timed apart (all of them), and with
``--cli`` a JPEG query is timed beside the PNG one.

``--memory``: then what a long-running process holds once queries have met every delivery
(every JPEG variant at every resize variant's size, and as generated), with the gallery's
variant cache bounded at ``--variant-cache-mib`` (default: the SDK's,
``gallery.VARIANT_CACHE_BYTES``) and the snapshot cache's Gaussian fits at ``--fit-cache-mib``
(``snapshot.MAX_FIT_BYTES``): the process's RSS growth, the bytes held of each, and the
time to prepare every route again after a write (the next snapshot's routes are built anew);
three passes, a write between each. Run it once per bound: RSS is the process's.

``--pickle``: then the snapshot pickled, as ``distributed.scan_dataset`` ships it to Ray
workers, and unpickled as a worker does (``--sizes N``: the profiles' images of N sizes, in
turn, which multiplies the routes a query can meet).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ofa_sdk import scoring
from ofa_sdk.gallery import VARIANT_CACHE_BYTES, Gallery, Profile
from ofa_sdk.snapshot import MAX_FIT_BYTES, SnapshotCache, make_snapshot
from ofa_sdk.weights import load_default_model


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profiles", type=int, default=1000)
    ap.add_argument("--images", type=int, default=20)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--cli", action="store_true", help="also time ofa-sdk attribute processes")
    ap.add_argument("--variants", type=int, nargs="+", default=[], help="JPEG variants per profile")
    ap.add_argument("--rescale-variants", type=float, nargs="+", default=[])
    ap.add_argument("--sizes", type=int, default=0, help="support images of this many sizes (0: none recorded)")
    ap.add_argument("--pickle", action="store_true", help="also time pickling the snapshot")
    ap.add_argument("--memory", action="store_true",
                    help="also the memory held once every delivery has been routed")
    ap.add_argument("--variant-cache-mib", type=float, default=VARIANT_CACHE_BYTES / 2 ** 20)
    ap.add_argument("--fit-cache-mib", type=float, default=MAX_FIT_BYTES / 2 ** 20)
    a = ap.parse_args()
    bundle = load_default_model()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "g.db"
        g = Gallery(path)
        for i in range(a.profiles):
            mu = scoring.unit(rng.normal(size=128))
            z = scoring.unit(mu + 0.2 * rng.normal(size=(4 * a.images, 128))).astype(np.float32)
            meta = {"crop_counts": [4] * a.images}
            if a.sizes:
                side = 256 + 64 * (i % a.sizes)
                meta["support_size"] = [side, side]
            keys = [(sc, q) for sc in (1.0, *a.rescale_variants) for q in (None, *a.variants)
                    if (sc, q) != (1.0, None)]
            variants = {k: Profile(f"p{i:05d}", bundle.model_id,
                                   scoring.unit(z + 0.05 * rng.normal(size=z.shape)).astype(np.float32),
                                   np.zeros((len(z), 1), np.float32), meta, variant=k)
                        for k in keys}
            g.put(Profile(f"p{i:05d}", bundle.model_id, z, np.zeros((len(z), 1), np.float32), meta,
                          variants=variants))
        g.close()
        if a.memory:
            memory(bundle, path, a.variants, a.rescale_variants, int(a.variant_cache_mib * 2 ** 20),
                   int(a.fit_cache_mib * 2 ** 20))
            return
        times, vtimes = [], []
        for _ in range(a.runs):
            t = time.perf_counter()
            snap = make_snapshot(bundle, Gallery(path), cache=SnapshotCache())
            times.append(time.perf_counter() - t)
            t = time.perf_counter()
            for q in a.variants:                # each JPEG variant's route (no sizes here,
                snap.route(q)                   # so the resized ones are not routed to)
            vtimes.append(time.perf_counter() - t)
        print(f"rule {snap.rule.name}, {a.profiles} profiles of {a.images} images: first "
              f"snapshot (computes and stores) {times[0]:.2f} s; later ones (read back) "
              f"{min(times[1:]):.2f} s, {times[0] / min(times[1:]):.0f}x faster")
        print(f"gallery file {path.stat().st_size / 2 ** 20:.0f} MiB")
        if a.variants:
            print(f"its JPEG variants {a.variants}, all of them: first {vtimes[0]:.2f} s, later "
                  f"{min(vtimes[1:]):.2f} s")
        if a.pickle:
            pickled(bundle, path)
        if a.cli:
            cli_times(Path(tmp), path, a.runs, bool(a.variants))


def memory(bundle, path: Path, qualities, factors, cap: int, fit_cap: int) -> None:
    """RSS growth, variants and fits held and the time to route every delivery, three passes
    with a write between each, the gallery's variant cache bounded at ``cap`` bytes and the
    snapshot cache's fits at ``fit_cap``."""
    def rss_mib() -> float:
        with open("/proc/self/status") as f:
            return int(f.read().split("VmRSS:")[1].split()[0]) / 1024
    g, cache = Gallery(path, variant_cache_bytes=cap), SnapshotCache(max_fit_bytes=fit_cap)
    first = g.get(g.names()[0])
    side = first.metadata.get("support_size", [256, 256])[0]
    sizes = [None] + [(round(side * f),) * 2 for f in factors]
    start = rss_mib()
    for n in range(3):
        snap = make_snapshot(bundle, g, cache=cache)
        t = time.perf_counter()
        for size in sizes:
            for q in (None, *qualities):
                snap.route(q, size)
        print(f"variant cache {cap / 2 ** 20:.0f} MiB, fit cache {fit_cap / 2 ** 20:.0f} MiB, pass {n}: "
              f"every route {time.perf_counter() - t:.2f} s, RSS +{rss_mib() - start:.0f} MiB, "
              f"variants held {g._variants.bytes / 2 ** 20:.0f} MiB, fits {cache.fit_bytes / 2 ** 20:.0f} MiB")
        p = g.get(first.name)                   # a write (enrolled again): the next routes are built anew
        g.put(Profile(p.name, p.model_id, p.support, p.support_part, p.metadata,
                      variants=dict(p.variants)), overwrite=True)


def pickled(bundle, path: Path) -> None:
    """Time and bytes of pickling a fresh snapshot of the gallery at ``path``: first, when the
    variants no query has needed yet are computed and stored, then again from a fresh
    snapshot, when they are read back; then what a worker pays: unpickling, and the first
    route a JPEG query of the first profile's support size meets (assembled there when the
    snapshot carries its variants' states rather than its routes)."""
    import pickle
    for when in ("first", "later"):
        t = time.perf_counter()
        snap = make_snapshot(bundle, Gallery(path), cache=SnapshotCache())
        t0 = time.perf_counter()
        blob = pickle.dumps(snap)
        t1 = time.perf_counter()
        print(f"pickled snapshot, {when}: {len(snap._routes)} routes prepared, {t1 - t0:.2f} s "
              f"(making the snapshot {t0 - t:.2f} s), {len(blob) / 2 ** 20:.1f} MiB")
    t = time.perf_counter()
    worker = pickle.loads(blob)
    t0 = time.perf_counter()
    worker.route(90, worker.deliveries[0].size if worker.deliveries else None)
    t1 = time.perf_counter()
    print(f"in a worker: unpickling {t0 - t:.2f} s, the first JPEG route {t1 - t0:.3f} s")


def cli_times(tmp: Path, gallery: Path, runs: int, jpeg: bool = False) -> None:
    """Best of ``runs`` wall times of ``ofa-sdk attribute IMAGE`` with ``gallery`` and with an
    empty gallery, alternated so that both see the same machine load; ``jpeg``: a JPEG query
    (q90) too."""
    from PIL import Image
    pixels = Image.fromarray(np.random.default_rng(1).integers(0, 256, (256, 256, 3), np.uint8))
    pixels.save(tmp / "q.png")
    pixels.save(tmp / "q.jpg", quality=90)
    cases = [("empty", tmp / "empty.db", "q.png"), ("gallery", gallery, "q.png")]
    if jpeg:
        cases.append(("gallery, JPEG query", gallery, "q.jpg"))
    best = {k: [] for k, _, _ in cases}
    for _ in range(runs):
        for key, g, img in cases:
            t = time.perf_counter()
            subprocess.run([sys.executable, "-m", "ofa_sdk.cli", "attribute", str(tmp / img),
                            "--json", "--gallery", str(g)], check=True, capture_output=True)
            best[key].append(time.perf_counter() - t)
    e = min(best["empty"])
    print(f"ofa-sdk attribute of one image, best of {runs}: empty gallery {e:.2f} s, " + ", ".join(
        f"{k} {min(v):.2f} s (+{min(v) - e:.2f} s, {min(v) / e:.2f}x)"
        for k, v in best.items() if k != "empty"))


if __name__ == "__main__":
    main()
