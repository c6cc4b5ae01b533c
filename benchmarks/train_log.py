"""Training curves side by side: the mean of one logged field of ``stage2.jsonl`` per window of
steps, for several runs, with the seconds per step from the ``time`` field.

    python benchmarks/train_log.py runs/ft-control runs/ft-both [--field scl] [--window 100]
                                   [--from 4200] [--to 5200]

A run that was resumed logs some steps twice (the steps after its last checkpoint ran again);
the last entry of a step is the one kept, as it is the one the checkpointed model continued
from. Seconds per step are the median gap between consecutive kept steps in the window, so a
pause between two sessions does not count.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def read_log(run) -> dict:
    """{step: entry} of a run folder's (or a file's) stage-2 log, the last entry of each step."""
    path = Path(run)
    path = path / "stage2.jsonl" if path.is_dir() else path
    steps = {}
    with open(path) as f:
        for line in f:
            e = json.loads(line)
            if "step" in e:
                steps[e["step"]] = e
    return steps


def windows(steps: dict, field: str, window: int, lo: int, hi: int):
    """[(first step, last step, mean of field, median s/step)] over [lo, hi]."""
    rows = []
    for start in range(lo, hi + 1, window):
        ks = [k for k in range(start, min(start + window, hi + 1)) if k in steps]
        if not ks:
            continue
        vals = [steps[k][field] for k in ks if field in steps[k]]
        gaps = [steps[k]["time"] - steps[k - 1]["time"] for k in ks if k - 1 in steps]
        rows.append((ks[0], ks[-1], float(np.mean(vals)) if vals else float("nan"),
                     float(np.median(gaps)) if gaps else float("nan")))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="run folders (or stage2.jsonl files)")
    ap.add_argument("--field", default="scl", help="logged field to average (default: scl, the "
                                                    "supervised contrastive loss)")
    ap.add_argument("--window", type=int, default=100)
    ap.add_argument("--from", dest="lo", type=int, default=None, help="first step (default: 1)")
    ap.add_argument("--to", dest="hi", type=int, default=None, help="last step (default: the "
                                                                     "last step any run logged)")
    a = ap.parse_args(argv)
    logs = {r: read_log(r) for r in a.runs}
    lo = a.lo or 1
    hi = a.hi or max(max(s) for s in logs.values())
    table = {r: {w[0]: w for w in windows(s, a.field, a.window, lo, hi)} for r, s in logs.items()}
    starts = sorted({k for t in table.values() for k in t})
    print(f"mean {a.field} per {a.window} steps (seconds per step)")
    print("steps".ljust(12) + "".join(str(r)[-24:].rjust(26) for r in a.runs))
    for k in starts:
        cells = []
        for r in a.runs:
            w = table[r].get(k)
            cells.append(f"{w[2]:.3f} ({w[3]:.2f} s)".rjust(26) if w else "-".rjust(26))
        print(f"{k}-{min(k + a.window - 1, hi)}".ljust(12) + "".join(cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
