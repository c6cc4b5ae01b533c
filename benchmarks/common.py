"""Shared plumbing of the scoring benchmarks (scoring.py, thresholds.py)."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ofa_sdk.evaluation.protocol import split_support_query
from ofa_sdk.evaluation.runner import embed_items


def set_parser(doc: str, crops=(1, 4)) -> argparse.ArgumentParser:
    """--set (class-per-folder), --model, --crops, --out; the script adds its own."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", required=True)
    ap.add_argument("--model", default=None)
    ap.add_argument("--crops", type=int, nargs="+", default=list(crops))
    ap.add_argument("--out", default=None)
    return ap


def embed_split(att, classes, jpeg, support, queries, spectra=True):
    """Every class embedded once (fingerprints, spectra, high-pass spectra), and the fixed
    support/query split with the same content indices in every class."""
    emb = {c: embed_items(att, items, jpeg, spectra, highpass=True) for c, items in classes.items()}
    split = split_support_query({c: len(e.z) for c, e in emb.items()}, support, queries,
                                seed=0, aligned=True)
    return emb, split


def record(report: dict, key: str, row: dict, t0: float) -> None:
    report["runs"][key] = row
    print(f"{key}: " + "  ".join(f"{n} {100 * v:.2f}" for n, v in row.items())
          + f"  [{time.time() - t0:.0f}s]", flush=True)


def record_rules(report: dict, key: str, classes, split, rules: dict, t0: float, pairs=()) -> None:
    """Mean 1-vs-1 AUC of every score rule into ``report["runs"][key]``, and the per-pair AUCs
    (target -> other -> AUC) of the rules named in ``pairs`` into ``report["pairs"][key]``, so a
    mean that hides a lost pair can be checked later."""
    from ofa_sdk.evaluation.protocol import image_to_model
    res = {name: image_to_model(sorted(classes), split, fn) for name, fn in rules.items()}
    record(report, key, {name: r.mean_1v1 for name, r in res.items()}, t0)
    if pairs:
        report.setdefault("pairs", {})[key] = {name: res[name].matrix for name in pairs if name in res}


def write(report: dict, out) -> None:
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(report, indent=1))
