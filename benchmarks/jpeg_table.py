"""The issue-11 comparison table from ``benchmarks/jpeg_eval.sh``'s results: mean 1-vs-1 AUC (%)
of the shipped model and candidates, per set, JPEG condition and crop count, with both
non-learned baselines (from the shipped model's runs: the denoiser baseline is the shipped
model's residual; the high-pass one has nothing learned).

    python benchmarks/jpeg_table.py [--tags candidate candidate4200] [--dir benchmarks/results/jpeg]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

CONDITIONS = ((0, "clean"), (90, "JPEG q90"), (75, "JPEG q75"))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tags", nargs="+", default=["candidate"])
    ap.add_argument("--dir", default="benchmarks/results/jpeg")
    a = ap.parse_args(argv)
    models = ["shipped"] + a.tags
    head = ["set", "condition", "crops"]
    head += [f"prototype, {m}" for m in models] + [f"pair, {m}" for m in models]
    head += ["baseline, denoiser", "baseline, high-pass"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for s in ("dev", "wild"):
        for q, cond in CONDITIONS:
            runs = {m: json.loads((Path(a.dir) / f"{s}_{m}_q{q}.json").read_text())["runs"] for m in models}
            for k in (1, 4):
                r = {m: runs[m][f"crops{k}"] for m in models}
                cells = [f"{100 * r[m]['proto-cos']:.2f}" for m in models]
                cells += [f"{100 * r[m]['pair-prob']:.2f}" for m in models]
                cells += [f"{100 * r['shipped']['baseline']:.2f}", f"{100 * r['shipped']['baseline-highpass']:.2f}"]
                print(f"| {s} | {cond} | {k} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
