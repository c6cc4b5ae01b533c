"""How well a JPEG's quality is read from its pixels (``images.jpeg_quality_of_pixels``, issue
31's JPEG variants): the first ``--per-class`` images of every class of each set, as generated
and re-encoded at each ``--jpeg`` quality, cropped as the input policy crops them (``--crops``),
the quality read from the crops alone. Per set, true quality and kind of class (real photos
apart: they were JPEGs before they became PNGs): the readings and their counts.

    python benchmarks/quality_reading.py --sets benchmarks/data/wild13 benchmarks/data/related
"""
from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from eval_wild import load_classes
from ofa_sdk import images as imio


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", nargs="+", default=["benchmarks/data/wild13", "benchmarks/data/related"])
    ap.add_argument("--jpeg", type=int, nargs="+", default=[97, 95, 90, 85, 75, 60, 40, 20])
    ap.add_argument("--per-class", type=int, default=6)
    ap.add_argument("--crops", type=int, default=4)
    ap.add_argument("--crop", type=int, default=96)
    a = ap.parse_args(argv)
    print("| set | images | true quality | read (count) |\n|---|---|---|---|")
    for s in a.sets:
        got = {}
        for c, files in load_classes(Path(s)).items():
            kind = "real photos" if c == "real" else "generated"
            for f in files[:a.per_class]:
                rgb = imio.to_rgb(f)
                for q in [None] + a.jpeg:
                    x = rgb if q is None else imio.jpeg(rgb, q)
                    read = imio.jpeg_quality_of_pixels(imio.make_crops(x, a.crop, a.crops))
                    got.setdefault((kind, q), Counter())[read] += 1
        for (kind, q), n in got.items():
            print(f"| {Path(s).name} | {kind} | {'as generated' if q is None else q} | "
                  + ", ".join(f"{'none' if r is None else r} ({k})" for r, k in n.most_common())
                  + " |", flush=True)


if __name__ == "__main__":
    main()
