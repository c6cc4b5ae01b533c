"""Benchmark folders read as they are published. Every leaf folder (a folder holding image files
directly) is a class named by its path relative to the root:

* DMDetection           ``<root>/<generator>/*``                      -> ``<generator>``
* AIGCDetectBenchmark   ``test/<gen>/[<category>/]{0_real,1_fake}/*`` -> ``<gen>/[<cat>/]1_fake``
* GenImage              ``<Gen>/<subset>/{train,val}/{ai,nature}/*``  -> ``<Gen>/<subset>/val/ai``
* OSMA                  annotation files, one ``path<TAB>label`` per line -> ``<label>``

``exclude_real`` drops leaves named like real-image folders (0_real, nature, real);
``include`` keeps leaves whose relative path matches a regular expression (e.g. ``/val/``).
Empty and corrupt files are not filtered here: the evaluation skips and counts them.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Optional

from ..images import list_images

REAL_NAMES = {"0_real", "nature", "real", "reals"}


def discover(root, exclude_real: bool = False, include: Optional[str] = None) -> Dict[str, List[Path]]:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"benchmark root {str(root)!r} is not a folder")
    classes: Dict[str, List[Path]] = {}
    pat = re.compile(include) if include else None
    for d in sorted([root, *(p for p in root.rglob("*") if p.is_dir())]):
        files = list(list_images(d, recursive=False))
        if not files:
            continue
        name = d.relative_to(root).as_posix() if d != root else root.name
        if exclude_real and d.name.lower() in REAL_NAMES:
            continue
        if pat and not pat.search("/" + name + "/"):
            continue
        classes[name] = files
    if not classes:
        raise ValueError(f"no image folders found under {root}")
    return classes


def read_annotations(path, root=None) -> Dict[str, List[Path]]:
    """OSMA-style ``path<TAB>label`` lines; relative paths resolve against ``root`` (default:
    the annotation file's folder). Blank lines and lines starting with '#' are ignored."""
    path = Path(path)
    base = Path(root) if root else path.parent
    classes: Dict[str, List[Path]] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.rstrip("\n").split("\t")
        if len(parts) < 2:
            raise ValueError(f"{path}:{n}: expected 'path<TAB>label', got {line!r}")
        p = Path(parts[0])
        classes.setdefault(parts[1].strip(), []).append(p if p.is_absolute() else base / p)
    if not classes:
        raise ValueError(f"no annotations in {path}")
    return classes
