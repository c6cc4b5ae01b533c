"""The review page's file side: discover output folders under configured roots, read-only,
and the decision recorded beside each cluster.

A folder is named to the page as ``<root index>/<path inside that root>``; every name is
resolved (links followed) and must stay inside its root, so ``..``, absolute paths and links
pointing out are refused. Only what :func:`ofa_sdk.discovery.write_report` writes is served:
``summary.json``, a cluster's ``members.json`` (through :func:`ofa_sdk.discovery.read_cluster`)
and its two pictures. The decision on a cluster is written to ``cluster-<id>/decision.json``.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path, PurePosixPath
from typing import Dict, List, Optional, Sequence

from ..backends.base import atomic_write
from .uploads import ServeError

PICTURES = ("contact.png", "spectrum.png")
DECISION_FILE = "decision.json"
ACTIONS = ("enroll", "add", "dismiss")
SEARCH_DEPTH = 3          # folder levels below a root searched for summary.json
MAX_FOLDERS = 500         # folders listed at most


class Review:
    def __init__(self, roots: Sequence):
        self.roots = [Path(r).resolve() for r in roots]
        for r in self.roots:
            if not r.is_dir():
                raise ValueError(f"review root {r} is not a folder")

    def folders(self) -> List[Dict]:
        """The discover output folders (holding summary.json) under every root."""
        out: List[Dict] = []
        for i, root in enumerate(self.roots):
            for here, dirs, files in os.walk(root):
                depth = len(Path(here).relative_to(root).parts)
                dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if depth < SEARCH_DEPTH else []
                if "summary.json" in files:
                    rel = Path(here).relative_to(root).as_posix()
                    out.append({"folder": f"{i}/{rel}" if rel != "." else f"{i}/.",
                                "root": str(root), "path": rel})
                    dirs[:] = [d for d in dirs if not d.startswith("cluster-")]
                if len(out) >= MAX_FOLDERS:
                    return out
        return out

    def resolve(self, folder: str) -> Path:
        """The discover output folder named ``folder``, inside its root, or a 404/400."""
        head, _, rel = (folder or "").partition("/")
        try:
            root = self.roots[int(head)]
        except (ValueError, IndexError):
            raise ServeError(404, "not_found", f"no review folder {folder!r}") from None
        parts = PurePosixPath(rel or ".").parts
        if PurePosixPath(rel).is_absolute() or ".." in parts or "\\" in rel or "\0" in rel:
            raise ServeError(400, "bad_request", f"review folder {folder!r}: a path inside "
                                                 f"its root, without '..', is expected")
        p = (root / rel).resolve()
        if not p.is_relative_to(root):
            raise ServeError(400, "bad_request", f"review folder {folder!r} is outside its root")
        if not _inside(p / "summary.json", p):
            raise ServeError(404, "not_found", f"review folder {folder!r} is not a discover "
                                               f"output (no summary.json)")
        return p

    def cluster_dir(self, folder: str, cluster: int) -> Path:
        base = self.resolve(folder)
        d = (base / f"cluster-{int(cluster)}").resolve()
        if not d.is_relative_to(base) or not _inside(d / "members.json", d):
            raise ServeError(404, "not_found", f"no cluster {cluster} in review folder {folder!r}")
        return d

    def clusters(self, folder: str) -> Dict:
        """The folder's summary: each cluster's size, cohesion, nearest profile, outliers, the
        pictures it has and the decision recorded on it (None when none)."""
        base = self.resolve(folder)
        try:
            summary = json.loads((base / "summary.json").read_text())
            rows = summary["cluster_list"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ServeError(422, "bad_request", f"{folder}/summary.json is not a discover "
                                                 f"summary: {e}") from None
        out = []
        for row in rows:
            c = dict(row)
            c["decision"] = self.decision(base, c.get("id"))
            d = base / f"cluster-{c.get('id')}"
            c["pictures"] = [n for n in PICTURES if (d / n).is_file()]
            out.append(c)
        return {"folder": folder, "images": summary.get("images"), "method": summary.get("method"),
                "noise": summary.get("noise"), "clusters": out}

    def picture(self, folder: str, cluster: int, name: str) -> Path:
        if name not in PICTURES:
            raise ServeError(404, "not_found", f"picture {name!r}: one of {PICTURES} expected")
        d = self.cluster_dir(folder, cluster)
        p = d / name
        if not _inside(p, d):
            raise ServeError(404, "not_found", f"cluster {cluster} of {folder!r} has no {name}")
        return p

    @staticmethod
    def decision(base: Path, cluster) -> Optional[Dict]:
        f = base / f"cluster-{cluster}" / DECISION_FILE
        try:
            return json.loads(f.read_text()) if f.is_file() else None
        except (OSError, ValueError):
            return {"action": "unreadable", "file": str(f)}

    @staticmethod
    def record(cluster_dir: Path, decision: Dict) -> Dict:
        """Write ``decision`` (with the time) beside the cluster, atomically."""
        decision = {**decision, "at": time.time()}
        try:
            atomic_write(cluster_dir / DECISION_FILE, json.dumps(decision, indent=1).encode())
        except OSError as e:
            raise ServeError(409, "conflict", f"the decision could not be recorded in "
                                              f"{cluster_dir}: {e.strerror or e}") from None
        return decision


def _inside(p: Path, folder: Path) -> bool:
    """``p`` is a regular file whose real path (links followed) lies inside ``folder``."""
    return p.is_file() and p.resolve().is_relative_to(folder)
