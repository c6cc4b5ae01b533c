"""The main job, end to end with the shipped default model:

1. build three small generator sets from held-out real photos with generators written in
   ``benchmarks/wild.py`` (none is in the simulator's space): a transposed-conv autoencoder,
   Lanczos x3 upscaling, and a pixel-shuffle autoencoder;
2. enroll the first two through the CLI (``ofa-sdk enroll``) from folders of their images;
3. attribute held-out images of all three (``ofa-sdk attribute``); the third was never
   enrolled, so the right answer for it is "unknown";
4. print the per-image table and a summary (true generator x answer) with the default
   per-profile thresholds, then the summary again with a fixed threshold of 0.5 and with one
   calibrated on real photos (``Attributor.calibrate_threshold``).

    python benchmarks/demo.py --photos ../shared/data/real-photos
"""
from __future__ import annotations

import argparse
import collections
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

ENROLLED = ["tconv4-ae-s0", "lanczos-x3"]
NEVER_ENROLLED = "ps4-ae"


def build(photos: str, out: Path, n: int, steps: int):
    import torch
    from wild import build_generators, content_crops, write_set
    from ofa_sdk.training.common import PhotoSet
    torch.set_num_threads(2)
    held = PhotoSet(photos, split="holdout")
    train = PhotoSet(photos, split="train")
    content = list(content_crops(held, 256, 2))[:n]
    gens = build_generators(ENROLLED + [NEVER_ENROLLED], train, steps)
    write_set(gens, content, out / "all")
    # split each class: first half -> enroll/, second half -> queries/
    half = len(content) // 2
    for name in gens:
        files = sorted((out / "all" / name).iterdir())
        for sub, part in (("enroll", files[:half]), ("queries", files[half:])):
            d = out / sub / name
            d.mkdir(parents=True, exist_ok=True)
            for f in part:
                shutil.move(str(f), d / f.name)
    shutil.rmtree(out / "all")
    (out / "READY").write_text(json.dumps({"content": len(content), "steps": steps}))


def cli(*args):
    out = subprocess.run([sys.executable, "-m", "ofa_sdk.cli", *args], capture_output=True, text=True)
    if out.returncode not in (0, 1):
        sys.exit(f"ofa-sdk {' '.join(args)} failed:\n{out.stderr}")
    return out.stdout


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", required=True, help="folder of real photos (held-out split is used)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "data" / "demo"))
    ap.add_argument("--images", type=int, default=80, help="content crops per generator")
    ap.add_argument("--steps", type=int, default=300, help="brief training of the learned generators")
    ap.add_argument("--crops", type=int, default=4, help="crops per 256x256 image (scores averaged)")
    ap.add_argument("--model", default=None, help="a model file or shipped model name (default: the default)")
    a = ap.parse_args(argv)
    out = Path(a.out)
    if not (out / "READY").exists():
        print(f"building the demo generators' images in {out} ...", flush=True)
        build(a.photos, out, a.images, a.steps)
    gallery = out / "gallery.db"
    for suffix in ("", "-wal", "-shm"):
        Path(str(gallery) + suffix).unlink(missing_ok=True)
    common = ["--gallery", str(gallery), "--crops", str(a.crops)] + (["--model", a.model] if a.model else [])
    for name in ENROLLED:
        print(cli("enroll", name, str(out / "enroll" / name), *common).strip())
    print(cli("info", *common))
    queries = [str(out / "queries" / n) for n in ENROLLED + [NEVER_ENROLLED]]
    print(cli("attribute", *queries, *common))
    rows = json.loads(cli("attribute", *queries, *common, "--json"))
    summary = collections.defaultdict(collections.Counter)
    for r in rows:
        truth = Path(r["source"]).parent.name
        summary[truth][r["label"]] += 1
    labels = ENROLLED + ["unknown", "error"]
    print("summary (rows: true generator; columns: answer)")
    print(f"{'':16s}" + "".join(f"{c:>14s}" for c in labels))
    for truth in ENROLLED + [NEVER_ENROLLED]:
        tag = truth + ("" if truth in ENROLLED else "*")
        print(f"{tag:16s}" + "".join(f"{summary[truth][c]:14d}" for c in labels))
    print("* never enrolled: the right answer is 'unknown'")
    correct = sum(summary[t][t] for t in ENROLLED) + summary[NEVER_ENROLLED]["unknown"]
    print(f"correct: {correct}/{len(rows)}")

    from ofa_sdk import Attributor
    from ofa_sdk.training.common import PhotoSet
    att = Attributor(a.model, gallery=str(gallery), crops=a.crops)
    print("per-profile thresholds (the default, threshold='profile'): " +
          ", ".join(f"{n} {att.profile_threshold(n):.3f}" for n in ENROLLED))

    def table(threshold):
        for truth in ENROLLED + [NEVER_ENROLLED]:
            c = collections.Counter(r.label for r in att.attribute(out / "queries" / truth,
                                                                   threshold=threshold))
            print(f"{truth:16s}" + "".join(f"{c[x]:14d}" for x in labels))

    # The same queries with one fixed threshold for every profile: 0.5, the score's own
    # decision point, then one calibrated on real photos (a source known not to be any enrolled
    # generator) at 5% false positives: Attributor.calibrate_threshold.
    print("\nfixed threshold 0.5:")
    table(0.5)
    held = PhotoSet(a.photos, split="holdout")
    thr = att.calibrate_threshold(held.photos[:60], fpr=0.05)
    print(f"\nthreshold calibrated on 60 held-out real photos at 5% FPR: {thr:.3f}")
    table(thr)

if __name__ == "__main__":
    main()
