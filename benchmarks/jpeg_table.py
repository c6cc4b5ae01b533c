"""The issue-11 comparison table from ``benchmarks/jpeg_eval.sh``'s results: mean 1-vs-1 AUC (%)
of the shipped model and candidates, per set, JPEG condition and crop count, with both
non-learned baselines (from the shipped model's runs: the denoiser baseline is the shipped
model's residual; the high-pass one has nothing learned).

    python benchmarks/jpeg_table.py [--tags candidate candidate4200] [--dir benchmarks/results/jpeg]
    python benchmarks/jpeg_table.py --pairs --tags candidate4200 seed1
    python benchmarks/jpeg_table.py --tags candidate4200 crops9 --crops 1 4 9

A condition whose result files are not all there is left out.

``--pairs`` prints what the means hide, from the per-pair AUCs that ``benchmarks/scoring.py``
records (results written before it did are skipped): per model and condition, the mean over the
seed pairs (classes named ``STEM-sN`` with one stem: one architecture, two training seeds), the
mean over the pairs with real photos (class ``real``), the worst ordered pair and how many
ordered pairs are below 0.75, for the prototype rule and the non-learned high-pass baseline.
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

CONDITIONS = ((0, "clean"), (90, "JPEG q90"), (75, "JPEG q75"))
WEAK = 0.75   # an ordered pair below this AUC is counted as weak
REAL = "real"  # the class of real photos (benchmarks/wild.py)


def seed_pairs(classes):
    """Ordered pairs (a, b) of classes named STEM-sN with one STEM: two seeds of one architecture."""
    stem = {c: m.group(1) for c in classes if (m := re.fullmatch(r"(.+)-s\d+", c))}
    return [(a, b) for a in stem for b in stem if a != b and stem[a] == stem[b]]


def _mean(xs):
    return sum(xs) / len(xs) if xs else None


def pair_summary(matrix):
    """(seed-pair mean or None, real-pair mean or None, (worst AUC, target, other), number of
    ordered pairs below WEAK). Real pairs: every ordered pair with the class named ``real``."""
    flat = [(auc, t, o) for t, row in matrix.items() for o, auc in row.items()]
    seeds = [matrix[a][b] for a, b in seed_pairs(list(matrix))]
    real = [auc for auc, t, o in flat if REAL in (t, o)]
    return _mean(seeds), _mean(real), min(flat), sum(a < WEAK for a, _, _ in flat)


def _pct(x, digits: int = 1) -> str:
    """A fraction as a percentage, "-" when there is none."""
    return "-" if x is None else f"{100 * x:.{digits}f}"


def pairs_table(models, d, sets, crops=(1, 4)):
    print("| set | condition | crops | model, rule | seed pairs | real pairs | worst pair | pairs < %.2f |" % WEAK)
    print("|---|---|---|---|---|---|---|---|")
    for s in sets:
        for q, cond in CONDITIONS:
            for k in crops:
                rows = {}   # label -> per-pair matrix; the baseline (nothing learned) once
                for m in models:
                    f = Path(d) / f"{s}_{m}_q{q}.json"
                    pairs = json.loads(f.read_text()).get("pairs", {}).get(f"crops{k}", {}) if f.exists() else {}
                    if "proto-cos" in pairs:
                        rows[m] = pairs["proto-cos"]
                        rows.setdefault("high-pass baseline", pairs["baseline-highpass"])
                for label, matrix in rows.items():
                    sm, rm, (w, t, o), n = pair_summary(matrix)
                    print(f"| {s} | {cond} | {k} | {label} | {_pct(sm)} | {_pct(rm)} | "
                          f"{100 * w:.1f} ({t} vs {o}) | {n} |")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tags", nargs="+", default=["candidate"])
    ap.add_argument("--dir", default="benchmarks/results/jpeg")
    ap.add_argument("--sets", nargs="+", default=["dev", "wild", "wild13"], help="result file prefixes")
    ap.add_argument("--pairs", action="store_true", help="the per-pair summary instead of the means")
    ap.add_argument("--crops", nargs="+", type=int, default=[1, 4],
                    help="crop counts to show; a run without one shows '-'")
    a = ap.parse_args(argv)
    if a.pairs:
        return pairs_table(a.tags, a.dir, a.sets, a.crops)
    models = ["shipped"] + a.tags
    head = ["set", "condition", "crops"]
    head += [f"prototype, {m}" for m in models] + [f"pair, {m}" for m in models]
    head += ["baseline, denoiser", "baseline, high-pass"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for s in a.sets:
        for q, cond in CONDITIONS:
            files = {m: Path(a.dir) / f"{s}_{m}_q{q}.json" for m in models}
            if not all(f.exists() for f in files.values()):
                continue
            runs = {m: json.loads(f.read_text())["runs"] for m, f in files.items()}
            for k in a.crops:
                r = {m: runs[m].get(f"crops{k}") for m in models}
                if not any(r.values()):
                    continue
                # the denoiser baseline is the shipped (denoiser) model's residual; the high-pass
                # one is the same in every run
                hp = next(v["baseline-highpass"] for v in r.values() if v)
                cells = [_pct(r[m] and r[m][rule], 2) for rule in ("proto-cos", "pair-prob") for m in models]
                cells += [_pct(r["shipped"] and r["shipped"]["baseline"], 2), _pct(hp, 2)]
                print(f"| {s} | {cond} | {k} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
