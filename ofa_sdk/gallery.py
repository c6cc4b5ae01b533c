"""Gallery: a persistent store of generator profiles (embedded SQLite; in memory when None).

A profile holds the support fingerprints z_s (S x d, float32), their precomputed pair-head
support part W_s z_s + b (S x h, float32; see ``PairHead.support_part``), metadata, and the id
of the model that made them. A profile made with another model is refused with a clear error:
fingerprints of different model versions live in different spaces.
"""
from __future__ import annotations

import functools
import json
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Union

import numpy as np

SCHEMA_VERSION = 1


class GalleryError(Exception):
    pass


class ProfileNotFound(GalleryError, KeyError):
    def __str__(self):
        return self.args[0] if self.args else "profile not found"


class ModelMismatch(GalleryError):
    pass


@dataclass
class Profile:
    name: str
    model_id: str
    support: np.ndarray          # (S, d) float32, L2-normalised fingerprints
    support_part: np.ndarray     # (S, h) float32, pair-head first layer on the support
    metadata: Dict = field(default_factory=dict)
    created: float = 0.0
    spectrum: Optional[np.ndarray] = None   # (3, h, w) mean residual log-spectrum of the support

    @functools.cached_property
    def prototype(self) -> np.ndarray:
        """(d,) unit mean of the support fingerprints (the ``prototype`` score's reference)."""
        from .scoring import prototype
        return prototype(self.support)

    @property
    def n_support(self) -> int:
        return len(self.support)


def _blob(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a, dtype=np.float32).tobytes()


def _unblob(b: bytes, cols: int) -> np.ndarray:
    return np.frombuffer(b, dtype=np.float32).reshape(-1, cols).copy()


class Gallery:
    """Thread-safe SQLite store. ``Gallery(None)`` is in memory; ``Gallery("g.db")`` persists."""

    def __init__(self, path: Union[str, Path, None] = None):
        self.path = None if path in (None, ":memory:") else Path(path)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        try:
            self._db = sqlite3.connect(str(self.path) if self.path else ":memory:",
                                       check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL" if self.path else "PRAGMA journal_mode=MEMORY")
            self._db.executescript("""
                CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
                CREATE TABLE IF NOT EXISTS profiles (
                    name TEXT PRIMARY KEY, model_id TEXT NOT NULL, created REAL NOT NULL,
                    dim INTEGER NOT NULL, hidden INTEGER NOT NULL, n_support INTEGER NOT NULL,
                    support BLOB NOT NULL, support_part BLOB NOT NULL, metadata TEXT NOT NULL,
                    spectrum BLOB, spectrum_shape TEXT);
                CREATE TABLE IF NOT EXISTS heads (
                    name TEXT PRIMARY KEY, model_id TEXT NOT NULL, created REAL NOT NULL,
                    classes TEXT NOT NULL, dim INTEGER NOT NULL, hidden INTEGER NOT NULL,
                    weights BLOB NOT NULL, metadata TEXT NOT NULL);
            """)
            row = self._db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        except sqlite3.DatabaseError as e:
            raise GalleryError(f"gallery {str(self.path)!r} is not a usable SQLite file: {e}") from None
        if row is None:
            self._db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        elif int(row[0]) != SCHEMA_VERSION:
            raise GalleryError(f"gallery {self.path} has schema {row[0]}, this SDK reads {SCHEMA_VERSION}")
        self._cache: Dict[str, Profile] = {}

    def __repr__(self):
        return f"Gallery({str(self.path) if self.path else 'memory'!s}, {len(self)} profiles)"

    def __len__(self):
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM profiles").fetchone()[0]

    def __contains__(self, name: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM profiles WHERE name=?", (name,)).fetchone() is not None

    def names(self) -> List[str]:
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT name FROM profiles ORDER BY name")]

    def put(self, profile: Profile, overwrite: bool = False) -> None:
        if not profile.name or not isinstance(profile.name, str):
            raise ValueError("a profile needs a non-empty name")
        with self._lock:
            if not overwrite and profile.name in self:
                raise GalleryError(f"profile {profile.name!r} exists; pass overwrite=True to replace it")
            self._db.execute(
                "INSERT OR REPLACE INTO profiles VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (profile.name, profile.model_id, profile.created or time.time(),
                 profile.support.shape[1], profile.support_part.shape[1], profile.n_support,
                 _blob(profile.support), _blob(profile.support_part),
                 json.dumps(profile.metadata, default=str),
                 None if profile.spectrum is None else _blob(profile.spectrum),
                 None if profile.spectrum is None else json.dumps(list(profile.spectrum.shape))))
            self._cache.pop(profile.name, None)

    def get(self, name: str, model_id: Optional[str] = None) -> Profile:
        with self._lock:
            row = self._db.execute(
                "SELECT name, model_id, created, dim, hidden, support, support_part, metadata, "
                "spectrum, spectrum_shape "
                "FROM profiles WHERE name=?", (name,)).fetchone()
            if row is None:
                raise ProfileNotFound(f"no profile named {name!r} in {self!r}")
            cached = self._cache.get(name)
            if cached is None or cached.created != row[2]:
                spec = None if row[8] is None else \
                    np.frombuffer(row[8], np.float32).reshape(json.loads(row[9])).copy()
                cached = Profile(row[0], row[1], _unblob(row[5], row[3]), _unblob(row[6], row[4]),
                                 json.loads(row[7]), row[2], spec)
                self._cache[name] = cached
        if model_id is not None and cached.model_id != model_id:
            raise ModelMismatch(
                f"profile {name!r} was enrolled with model {cached.model_id}, but this Attributor "
                f"uses model {model_id}; fingerprints of different models are not comparable -- "
                f"re-enroll {name!r} with this model")
        return cached

    def remove(self, name: str) -> None:
        with self._lock:
            if self._db.execute("DELETE FROM profiles WHERE name=?", (name,)).rowcount == 0:
                raise ProfileNotFound(f"no profile named {name!r} in {self!r}")
            self._cache.pop(name, None)

    def info(self) -> List[Dict]:
        with self._lock:
            rows = self._db.execute(
                "SELECT name, model_id, n_support, created, metadata FROM profiles ORDER BY name").fetchall()
        return [{"name": r[0], "model_id": r[1], "n_support": r[2], "created": r[3],
                 "metadata": json.loads(r[4])} for r in rows]

    # -- closed/open-set heads (see closed_set.py) --------------------------------------------------
    def put_head(self, name: str, model_id: str, classes: List[str], dim: int, hidden: int,
                 weights: bytes, metadata: Dict) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO heads VALUES (?,?,?,?,?,?,?,?)",
                             (name, model_id, time.time(), json.dumps(classes), dim, hidden,
                              weights, json.dumps(metadata, default=str)))

    def get_head(self, name: str, model_id: Optional[str] = None) -> Dict:
        with self._lock:
            row = self._db.execute("SELECT name, model_id, created, classes, dim, hidden, weights, "
                                   "metadata FROM heads WHERE name=?", (name,)).fetchone()
        if row is None:
            raise ProfileNotFound(f"no closed-set head named {name!r} in {self!r}; fit one with "
                                  f"fit_closed_set / 'ofa-sdk fit-closed-set'")
        if model_id is not None and row[1] != model_id:
            raise ModelMismatch(f"closed-set head {name!r} was fit on model {row[1]}, this "
                                f"Attributor uses model {model_id}; fit it again")
        return {"name": row[0], "model_id": row[1], "created": row[2], "classes": json.loads(row[3]),
                "dim": row[4], "hidden": row[5], "weights": row[6], "metadata": json.loads(row[7])}

    def close(self):
        with self._lock:
            self._db.close()
