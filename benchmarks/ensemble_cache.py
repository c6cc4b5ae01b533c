"""Fingerprint ensembles from embedding caches (issue 31, RESULTS 11.27): several independently
trained models' crop fingerprints of the same images concatenated, each unit and the whole
scaled by 1/sqrt(k), so it is unit again. If the part of a generator's own spread that hides its
relatives were partly each run's own noise, two runs' views together would be tighter relative
to a relative's distance. Writes a cache directory that ``related.py`` and ``rules.py`` read
through ``OFA_BENCH_CACHE``, one file per cache file the members share (the fixed-feature
files are copied from the first member: they do not depend on the model).

    python benchmarks/ensemble_cache.py --out benchmarks/data/cache-ensA \\
        benchmarks/data/cache-v2 benchmarks/data/cache-tauS
    OFA_BENCH_CACHE=benchmarks/data/cache-ensA python benchmarks/related.py pairs --groups choose confirm wild13 --out ...
"""
import argparse
import shutil
from pathlib import Path

import numpy as np


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("members", nargs="+", type=Path, help="cache directories, one per model")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    if len(a.members) < 2:
        raise SystemExit("an ensemble needs at least two cache directories")
    a.out.mkdir(parents=True, exist_ok=True)
    names = set.intersection(*({f.name for f in m.glob("*.npz")} for m in a.members))
    for name in sorted(names):
        if name.endswith("_fixed.npz"):
            shutil.copyfile(a.members[0] / name, a.out / name)
            continue
        files = [np.load(m / name) for m in a.members]
        ref = files[0]
        for m, f in zip(a.members[1:], files[1:]):
            for k in ("cls", "idx", "counts"):
                if not np.array_equal(f[k], ref[k]):
                    raise SystemExit(f"{m / name}: other images than {a.members[0] / name} ({k})")
        zs = [f["z"].astype(np.float64) for f in files]
        z = np.concatenate([x / np.linalg.norm(x, axis=1, keepdims=True) for x in zs], 1)
        z /= np.sqrt(len(zs))
        np.savez(a.out / name, z=z.astype(np.float32), counts=ref["counts"], cls=ref["cls"],
                 idx=ref["idx"], model="+".join(str(f["model"]) for f in files))
        print(f"{name}: {z.shape[0]} crops, {z.shape[1]} dimensions", flush=True)


if __name__ == "__main__":
    main()
