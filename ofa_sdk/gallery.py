"""Gallery: a persistent store of generator profiles (embedded SQLite; in memory when None).

A profile holds the support fingerprints z_s (S x d, float32), their precomputed pair-head
support part W_s z_s + b (S x h, float32; see ``PairHead.support_part``), metadata, and the id
of the model that made them. It may hold variants too: the same support images resized
by a factor and/or re-encoded at a JPEG quality (``Profile.variants``), against which queries
delivered about so are scored (:meth:`ofa_sdk.snapshot.GallerySnapshot.route`). A profile made with another model is refused with a clear error:
fingerprints of different model versions live in different spaces.

Several threads and several processes may use one gallery file at once: WAL journal, a busy
timeout instead of "database is locked", and every write one explicit ``BEGIN IMMEDIATE`` ...
``COMMIT`` transaction, so a process killed in the middle of an enroll leaves the previous
profile intact. The schema version lives in the ``meta`` table: a gallery written by a newer
SDK is refused with a clear message, an older one is migrated (``MIGRATIONS``) when opened.

A read-only gallery (a file without write permission, a folder that is not writable, a
read-only file system or mount) is opened read-only: SQLite's ``mode=ro``, or ``immutable=1``
where the folder is not writable (SQLite could not create its lock and WAL files there), and
no journal-mode switch. Every reading method works; a write raises :class:`GalleryReadOnly`
naming the file. A file with no write bit for anyone counts as read-only even for root, who
could write it anyway. Failures are told apart: :class:`GalleryCorrupt` (not a usable SQLite
file), :class:`GalleryReadOnly`, :class:`GalleryLocked` (another process held its lock past the
busy timeout) and :class:`GalleryTooNew` (written by a newer SDK), all :class:`GalleryError`.
"""
from __future__ import annotations

import functools
import json
import os
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from contextlib import contextmanager
from urllib.parse import quote
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

SCHEMA_VERSION = 1   # the layout this SDK writes; galleries of a higher version are refused
BUSY_TIMEOUT_S = 30.0  # how long a statement waits for another process's write lock
# how many bytes of variants' fingerprints a gallery keeps in memory once read (_VariantCache)
VARIANT_CACHE_BYTES = 256 * 2 ** 20

# Migrations of older galleries: MIGRATIONS[v] turns a schema-v gallery into schema v + 1. They
# run in order, inside the one write transaction that opens the gallery (all or nothing), when
# a gallery older than SCHEMA_VERSION is opened. Schema 1 is the first version with a meta
# table, so the list is empty; the next layout change adds MIGRATIONS[1] and bumps
# SCHEMA_VERSION. Columns added to schema 1 after its first release (the spectrum) are repaired
# in place by ``_repair_v1``.
MIGRATIONS: Dict[int, Callable[[sqlite3.Connection], None]] = {}

# What each write transaction does, in the words of a read-only refusal.
_WRITES = {"open": "creating or upgrading it", "put": "enrolling a profile",
           "update": "adding images to a profile", "state": "storing prepared profile state",
           "remove": "removing a profile", "put_head": "fitting a closed-set head"}

# Test hook: called inside every write transaction, after its statements and before COMMIT
# (tests make it block so that a real process can be killed with the transaction open).
_before_commit: Optional[Callable[[str], None]] = None

_TABLES = """
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
"""


# Prepared per-profile state (snapshot.SnapshotCache): each profile's fit and held-out scores,
# under a key of model id, rule, settings and support digest, so a later process reuses them. An
# additive table, created by the first write of state: older SDKs ignore it, and a read-only
# gallery without it simply has no stored state.
_STATE_TABLE = ("CREATE TABLE IF NOT EXISTS profile_state (key TEXT PRIMARY KEY, "
                "name TEXT NOT NULL, value BLOB NOT NULL)")


# Each support image's centre-crop fingerprint (``Profile.centre``), the crop a 1-crop query
# takes, under the profile's enrollment time. An additive table like profile_state: older SDKs
# ignore it, and a profile they rewrite gets a new enrollment time, so its old row no longer
# matches and is not read.
_CENTRE_TABLE = ("CREATE TABLE IF NOT EXISTS profile_centre (name TEXT PRIMARY KEY, "
                 "created REAL NOT NULL, centre BLOB NOT NULL)")


# A profile's variants (``Profile.variants``): per delivery (scale, JPEG quality; 0: lossless),
# the support resized and re-encoded so, under the profile's enrollment time. Additive like
# profile_centre: older SDKs ignore the table and score every query against the profile itself.
_VARIANT_TABLE = ("CREATE TABLE IF NOT EXISTS profile_variants (name TEXT NOT NULL, "
                  "scale REAL NOT NULL, quality INTEGER NOT NULL, created REAL NOT NULL, "
                  "support BLOB NOT NULL, support_part BLOB NOT NULL, centre BLOB, "
                  "metadata TEXT NOT NULL, PRIMARY KEY (name, scale, quality))")


def _has_table(db: sqlite3.Connection, table: str) -> bool:
    return db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?",
                      (table,)).fetchone() is not None


def _drop_state(db: sqlite3.Connection, name: str) -> None:
    """Forget the stored state of profile ``name`` (inside a write transaction)."""
    if _has_table(db, "profile_state"):
        db.execute("DELETE FROM profile_state WHERE name=?", (name,))


def _write_centre(db: sqlite3.Connection, name: str, created: float,
                  centre: Optional[np.ndarray]) -> None:
    """Store (or, for None, forget) profile ``name``'s centre crops (inside a write transaction)."""
    if centre is None:
        if _has_table(db, "profile_centre"):
            db.execute("DELETE FROM profile_centre WHERE name=?", (name,))
        return
    db.execute(_CENTRE_TABLE)
    db.execute("INSERT OR REPLACE INTO profile_centre VALUES (?,?,?)", (name, created, _blob(centre)))


Delivery = Tuple[float, Optional[int]]   # a variant's (scale, JPEG quality; None: lossless)
LOSSLESS = 100     # the quality a lossless delivery counts as when routing compares qualities


def delivery_order(key: Delivery) -> Tuple[float, int]:
    """Sort key of variants: the largest scale first, then the highest quality, lossless first."""
    return (-key[0], -(LOSSLESS + 1 if key[1] is None else key[1]))


def delivery_label(key: Delivery) -> str:
    """A variant's name as notes and progress bars say it: "0.75x q90", "0.5x", "q95"."""
    sc, q = key
    return " ".join(x for x in (f"{sc:g}x" if sc != 1.0 else "", f"q{q}" if q else "") if x)


def _write_variants(db: sqlite3.Connection, name: str, created: float,
                    variants: Dict[Delivery, "Profile"]) -> None:
    """Replace profile ``name``'s variants by ``variants`` (inside a write transaction)."""
    variants = dict(variants)       # a stored profile's are read before its rows go
    if _has_table(db, "profile_variants"):
        db.execute("DELETE FROM profile_variants WHERE name=?", (name,))
    if not variants:
        return
    db.execute(_VARIANT_TABLE)
    db.executemany("INSERT INTO profile_variants VALUES (?,?,?,?,?,?,?,?)", [
        (name, float(sc), int(q or 0), created, _blob(v.support), _blob(v.support_part),
         None if v.centre is None else _blob(v.centre), json.dumps(v.metadata, default=str))
        for (sc, q), v in variants.items()])


class _StoredVariants(Mapping):
    """A stored profile's variants: their deliveries read with the profile, each one's
    fingerprints when looked up (``fetch(delivery)``, through the gallery's
    :class:`_VariantCache`), so that reading a gallery, and a scan that never meets a variant,
    never reads one. Pickles as the plain dict it loads."""

    def __init__(self, keys: Sequence[Delivery], fetch: Callable[[Delivery], "Profile"]):
        self._keys, self._fetch = tuple(keys), fetch

    def __getitem__(self, key: Delivery) -> "Profile":
        if key not in self._keys:
            raise KeyError(key)
        return self._fetch(key)                 # KeyError: enrolled again since

    def __iter__(self):
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key) -> bool:
        return key in self._keys

    def __reduce__(self):
        return dict, (dict(self.items()),)


class _VariantCache:
    """The variants a gallery has read, shared by its profiles, least recently used first out
    past ``max_bytes`` of fingerprints (the newest one is always kept): a server that has met
    every delivery of a large gallery holds this much of its variants, not all of them
    (benchmarks/RESULTS.md 6.6), and reads an evicted one again when a route needs it."""

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self.bytes = 0
        self._got: "OrderedDict[Tuple, Profile]" = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Tuple, load: Callable[[], "Profile"]) -> "Profile":
        """The variant under ``key`` (name, enrollment time, delivery), read by ``load`` when it
        is not held."""
        with self._lock:
            v = self._got.get(key)
            if v is not None:
                self._got.move_to_end(key)
                return v
        v = load()              # not under the lock: a read takes the gallery's lock
        with self._lock:
            if key in self._got:                # read meanwhile by another thread
                self._got.move_to_end(key)
                return self._got[key]
            self._got[key] = v
            self.bytes += _nbytes(v)
            while self.bytes > self.max_bytes and len(self._got) > 1:
                self.bytes -= _nbytes(self._got.popitem(last=False)[1])
            return v

    def drop(self, name: str) -> None:
        """Forget profile ``name``'s variants (it was written or removed)."""
        with self._lock:
            for k in [k for k in self._got if k[0] == name]:
                self.bytes -= _nbytes(self._got.pop(k))


def _nbytes(p: "Profile") -> int:
    return p.support.nbytes + p.support_part.nbytes + (0 if p.centre is None else p.centre.nbytes)


def _stored_deliveries(db: sqlite3.Connection, name: str, created: float) -> List[Delivery]:
    """Profile ``name``'s variants' deliveries as written with it (its enrollment time)."""
    if not _has_table(db, "profile_variants"):
        return []
    return [(float(sc), int(q) or None) for sc, q in db.execute(
        "SELECT scale, quality FROM profile_variants WHERE name=? AND created=? "
        "ORDER BY scale DESC, quality DESC", (name, created))]


def _read_variant(db: sqlite3.Connection, base: "Profile", dim: int, hidden: int,
                  key: Delivery) -> "Profile":
    """Profile ``base``'s variant ``key`` as written with it (its enrollment time); KeyError
    when there is none (the name was enrolled again since)."""
    row = db.execute("SELECT support, support_part, centre, metadata FROM profile_variants "
                     "WHERE name=? AND created=? AND scale=? AND quality=?",
                     (base.name, base.created, float(key[0]), int(key[1] or 0))).fetchone() \
        if _has_table(db, "profile_variants") else None
    if row is None:
        raise KeyError(key)
    support, meta = _unblob(row[0], dim), json.loads(row[3])
    c = None if row[2] is None else _unblob(row[2], dim)
    if c is not None and len(c) != _images_of(meta, len(support)):
        c = None
    return Profile(base.name, base.model_id, support, _unblob(row[1], hidden), meta,
                   base.created, None, c, variant=key)


def _images_of(metadata: Dict, n_support: int) -> int:
    counts = metadata.get("crop_counts")
    return len(counts) if counts is not None else n_support // max(1, int(metadata.get("crops", 1)))


def _repair_v1(db: sqlite3.Connection) -> None:
    """Galleries written by the first 0.1 snapshots carry schema 1 without the spectrum
    columns; add them (NULL: no stored spectrum, which every reader accepts)."""
    cols = {r[1] for r in db.execute("PRAGMA table_info(profiles)")}
    for col, typ in (("spectrum", "BLOB"), ("spectrum_shape", "TEXT")):
        if col not in cols:
            db.execute(f"ALTER TABLE profiles ADD COLUMN {col} {typ}")


class GalleryError(Exception):
    pass


class GalleryCorrupt(GalleryError):
    """The file is not a usable SQLite database (or not a gallery)."""


class GalleryReadOnly(GalleryError):
    """A write to a gallery opened read-only, or a read-only gallery that would need a write
    to open (creating it, migrating it)."""


class GalleryLocked(GalleryError):
    """Another process held the gallery's lock for longer than the busy timeout."""


class GalleryTooNew(GalleryError):
    """The gallery was written by a newer ofa-sdk (a higher schema version)."""


def _writable(p: Path) -> bool:
    """Whether ``p`` may be written: the OS allows it, and its mode has a write bit (root passes
    every permission check; a file nobody may write is read-only for root too)."""
    try:
        return os.access(p, os.W_OK) and bool(os.stat(p).st_mode & 0o222)
    except OSError:
        return False


def _read_only_reason(path: Path) -> Optional[str]:
    """Why an existing gallery file cannot be written, or None when it can."""
    try:
        if os.statvfs(path).f_flag & os.ST_RDONLY:
            return "it is on a read-only file system"
    except (OSError, AttributeError):
        pass
    if not _writable(path):
        return "the file is not writable"
    if not _writable(path.parent):
        return f"its folder {path.parent} is not writable"
    return None


def _translate(e: sqlite3.Error, where: str, what: str = "") -> GalleryError:
    """The GalleryError for an SQLite error: corrupt, read-only or locked."""
    msg = str(e)
    doing = f" ({what})" if what else ""
    if "readonly" in msg or "read-only" in msg:
        return GalleryReadOnly(f"gallery {where} is read-only: {what or 'a write'} needs write "
                               f"access ({msg})")
    if "locked" in msg or "busy" in msg:
        return GalleryLocked(f"gallery {where} is locked by another process{doing}: it held the "
                             f"lock for longer than {BUSY_TIMEOUT_S:g} s; retry when it is done "
                             f"({msg})")
    return GalleryCorrupt(f"gallery {where} is corrupt or not a gallery: not a usable SQLite "
                          f"file ({msg})")


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
    spectrum: Optional[np.ndarray] = None   # (C, h, w) mean residual log-spectrum of the support
    # (images, d) float32: each support image's centre-crop fingerprint, the crop a 1-crop
    # query takes (its own-score level, scoring.held_out_stats); None for profiles enrolled
    # before it was stored
    centre: Optional[np.ndarray] = None
    # variants: (scale, JPEG quality; None: lossless) -> the support images resized by the
    # scale and re-encoded at the quality, embedded as the profile's (a Profile with ``variant``
    # set and no variants of its own); {} when none were made
    variants: Dict[Delivery, "Profile"] = field(default_factory=dict)
    variant: Optional[Delivery] = None     # a variant's delivery; None for the profile itself

    def at(self, delivery: Optional[Delivery]) -> "Profile":
        """The variant of ``delivery`` (None: the profile itself); the profile itself when it
        has no such variant."""
        return self.variants.get(delivery, self) if delivery is not None else self

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


def _ids(model_id: Union[str, Sequence[str], None]) -> tuple:
    return (model_id,) if isinstance(model_id, str) else tuple(model_id or ())


def check_model(prof: Profile, model_id) -> Profile:
    """``prof``, or :class:`ModelMismatch` when it was enrolled with none of the models
    ``model_id`` (an id or several; None: any)."""
    ids = _ids(model_id)
    if ids and prof.model_id not in ids:
        raise ModelMismatch(
            f"profile {prof.name!r} was enrolled with model {prof.model_id}, but this Attributor "
            f"uses model {ids[0]}; fingerprints of different models are not comparable -- "
            f"re-enroll {prof.name!r} with this model")
    return prof


class Gallery:
    """Thread-safe SQLite store. ``Gallery(None)`` is in memory; ``Gallery("g.db")`` persists.
    ``read_only`` says why a gallery was opened read-only (None when it is writable)."""

    def __init__(self, path: Union[str, Path, None] = None, *,
                 variant_cache_bytes: int = VARIANT_CACHE_BYTES):
        self.path = None if path in (None, ":memory:") else Path(path)
        self._lock = threading.RLock()
        self._cache: Dict[str, Profile] = {}
        self._variants = _VariantCache(variant_cache_bytes)
        self.read_only: Optional[str] = None   # why the gallery is read-only; None: writable
        where = str(self.path) if self.path else ":memory:"
        if self.path is not None:
            if self.path.exists():
                self.read_only = _read_only_reason(self.path)
            else:
                try:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                except OSError as e:
                    raise GalleryReadOnly(f"gallery {where} does not exist and cannot be created: "
                                          f"{e.strerror or e}") from None
                if not _writable(self.path.parent):
                    raise GalleryReadOnly(f"gallery {where} does not exist and cannot be created: "
                                          f"its folder {self.path.parent} is not writable")
        try:
            try:
                self._connect(where)
            except sqlite3.OperationalError as e:
                if self.read_only is not None or "readonly" not in str(e):
                    raise
                getattr(self, "_db", sqlite3.connect(":memory:")).close()
                # SQLite found it read-only where the checks above did not
                self.read_only = f"SQLite opens it read-only ({e})"
                self._connect(where)
        except BaseException as e:
            db = getattr(self, "_db", None)
            if db is not None:
                db.close()
            if isinstance(e, sqlite3.Error):
                raise _translate(e, where, "opening it") from None
            raise

    def _connect(self, where: str) -> None:
        """Open the SQLite connection (read-only when :attr:`read_only`) and check the schema."""
        if self.read_only is not None:
            # mode=ro: no writes, no journal-mode switch. immutable=1 where SQLite could not
            # create its lock and WAL files (the folder is not writable): it then reads the file
            # as it is, without locks, unless a WAL file holds commits not yet in the file.
            wal = Path(str(self.path) + "-wal")
            immutable = (not _writable(self.path.parent)
                         and not (wal.exists() and wal.stat().st_size))
            uri = (f"file:{quote(os.fsencode(self.path.resolve()))}?"
                   + ("immutable=1" if immutable else "mode=ro"))
            self._db = sqlite3.connect(uri, uri=True, check_same_thread=False,
                                       isolation_level=None, timeout=BUSY_TIMEOUT_S)
            self._db.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
            self._open_schema()
            return
        # isolation_level=None: no implicit transactions; every write below is an explicit
        # BEGIN IMMEDIATE ... COMMIT (``_write``), so a killed process leaves either the old
        # or the new row, never half of one. timeout= installs SQLite's busy handler: a
        # statement that meets another process's write lock waits up to BUSY_TIMEOUT_S
        # instead of failing with "database is locked".
        self._db = sqlite3.connect(where, check_same_thread=False, isolation_level=None,
                                   timeout=BUSY_TIMEOUT_S)
        self._db.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
        if self.path:
            # WAL: readers never block the writer and the writer never blocks readers, so
            # several processes can enroll and attribute at once.
            self._pragma("PRAGMA journal_mode=WAL")
            # synchronous=FULL, not NORMAL: in WAL mode NORMAL survives a killed process
            # but may roll back the last commits on a power loss or OS crash; FULL syncs
            # the WAL at every commit, so an enroll that returned is on disk. Writes are
            # rare (one per enroll, which costs seconds of model time), so the fsync is
            # free in practice.
            self._db.execute("PRAGMA synchronous=FULL")
        else:
            self._db.execute("PRAGMA journal_mode=MEMORY")
        self._open_schema()

    def _pragma(self, sql: str) -> None:
        """A pragma that may meet a lock that the busy handler does not wait on (switching a
        brand-new file to WAL while another process does the same): retried until the timeout."""
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        while True:
            try:
                self._db.execute(sql).fetchall()
                return
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def _schema(self) -> Optional[int]:
        """The gallery's schema version; None for a new (empty) file."""
        try:
            row = self._db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        except sqlite3.OperationalError as e:
            if "no such table" in str(e):
                return None
            raise
        if row is None:
            return None
        try:
            return int(row[0])
        except (TypeError, ValueError):
            raise GalleryError(f"gallery {self._where} has an unreadable schema version "
                               f"{row[0]!r}") from None

    @property
    def _where(self) -> str:
        return str(self.path) if self.path else "memory"

    def _check_future(self, version: Optional[int]) -> None:
        if version is not None and version > SCHEMA_VERSION:
            raise GalleryTooNew(
                f"gallery {self._where} was written by a newer ofa-sdk (schema {version}); "
                f"this SDK reads up to {SCHEMA_VERSION}; upgrade ofa-sdk")

    def _open_schema(self) -> None:
        """Create a new gallery, refuse one from a newer SDK, migrate an older one. Reads first,
        so opening an up-to-date gallery takes no write lock."""
        version = self._schema()
        self._check_future(version)
        if version == SCHEMA_VERSION and self._complete():
            return
        if self.read_only is not None:
            need = ("creating its tables" if version is None
                    else f"upgrading it from schema {version} to {SCHEMA_VERSION}")
            raise GalleryReadOnly(f"gallery {self._where} is read-only ({self.read_only}) and "
                                  f"needs {need}, which writes; open it once with write access")
        with self._write("open"):
            version = self._schema()        # another process may have created or migrated it
            self._check_future(version)
            for stmt in _TABLES.split(";"):
                if stmt.strip():
                    self._db.execute(stmt)
            if version is None:
                self._db.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)",
                                 (str(SCHEMA_VERSION),))
                version = SCHEMA_VERSION
            if version < 1:
                raise GalleryError(f"gallery {self._where} has schema {version}, which no "
                                   f"ofa-sdk wrote; it cannot be migrated")
            _repair_v1(self._db)
            while version < SCHEMA_VERSION:
                if version not in MIGRATIONS:
                    raise GalleryError(f"gallery {self._where} has schema {version} and this SDK "
                                       f"has no migration from it (reads {SCHEMA_VERSION})")
                MIGRATIONS[version](self._db)
                version += 1
                self._db.execute("UPDATE meta SET value=? WHERE key='schema'", (str(version),))

    def _complete(self) -> bool:
        tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not {"meta", "profiles", "heads"} <= tables:
            return False
        cols = {r[1] for r in self._db.execute("PRAGMA table_info(profiles)")}
        return {"spectrum", "spectrum_shape"} <= cols

    @contextmanager
    def _write(self, what: str) -> Iterator[sqlite3.Connection]:
        """One write transaction: BEGIN IMMEDIATE takes the write lock up front (waiting on the
        busy handler if another process holds it, so no deadlock between two readers that both
        want to write), COMMIT on success, ROLLBACK on any error. A read-only gallery refuses
        it before anything is tried; SQLite's errors become the GalleryError that says why."""
        if self.read_only is not None:
            raise GalleryReadOnly(f"gallery {self._where} is read-only ({self.read_only}): "
                                  f"{_WRITES.get(what, what)} needs write access; reading "
                                  f"(attribute, verify, info) works")
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                    if _before_commit is not None:
                        _before_commit(what)
                    self._db.execute("COMMIT")
                except BaseException:
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as e:
                raise _translate(e, self._where, _WRITES.get(what, what)) from None

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        """The connection for a read, under the lock; SQLite's errors become GalleryErrors."""
        with self._lock:
            try:
                yield self._db
            except sqlite3.Error as e:
                raise _translate(e, self._where, "reading it") from None

    def __repr__(self):
        return f"Gallery({str(self.path) if self.path else 'memory'!s}, {len(self)} profiles)"

    def __len__(self):
        with self._reading() as db:
            return db.execute("SELECT COUNT(*) FROM profiles").fetchone()[0]

    def __contains__(self, name: str) -> bool:
        with self._reading() as db:
            return db.execute("SELECT 1 FROM profiles WHERE name=?", (name,)).fetchone() is not None

    def names(self) -> List[str]:
        with self._reading() as db:
            return [r[0] for r in db.execute("SELECT name FROM profiles ORDER BY name")]

    @staticmethod
    def _row(profile: Profile) -> tuple:
        if not profile.name or not isinstance(profile.name, str):
            raise ValueError("a profile needs a non-empty name")
        return (profile.name, profile.model_id, profile.created or time.time(),
                profile.support.shape[1], profile.support_part.shape[1], profile.n_support,
                _blob(profile.support), _blob(profile.support_part),
                json.dumps(profile.metadata, default=str),
                None if profile.spectrum is None else _blob(profile.spectrum),
                None if profile.spectrum is None else json.dumps(list(profile.spectrum.shape)))

    def update(self, name: str, change: Callable[[Optional[Profile]], Profile], *,
               must_exist: bool) -> Profile:
        """Read profile ``name`` (None when absent), ``change`` it and write the result, all in
        one write transaction: two processes adding images to one profile at once both land
        (the second reads what the first wrote), and a profile removed meanwhile is not brought
        back (``must_exist``: :class:`ProfileNotFound`, nothing written)."""
        with self._write("update"):
            old = self._load(name)
            if old is None and must_exist:
                raise ProfileNotFound(f"profile {name!r} was removed from {self!r} while images "
                                      f"were being added to it; nothing was written")
            new = change(old)
            if new.name != name:
                raise ValueError(f"update of {name!r} returned profile {new.name!r}")
            row = self._row(new)
            self._db.execute("INSERT OR REPLACE INTO profiles VALUES (?,?,?,?,?,?,?,?,?,?,?)", row)
            _write_centre(self._db, name, row[2], new.centre)
            _write_variants(self._db, name, row[2], new.variants)
            _drop_state(self._db, name)
            self._cache.pop(name, None)
        return new

    def put(self, profile: Profile, overwrite: bool = False) -> None:
        row = self._row(profile)
        with self._write("put") as db:
            # checked inside the transaction: another process cannot slip a profile of the same
            # name in between the check and the insert
            if not overwrite and db.execute("SELECT 1 FROM profiles WHERE name=?",
                                            (profile.name,)).fetchone() is not None:
                raise GalleryError(f"profile {profile.name!r} exists; pass overwrite=True to replace it")
            db.execute("INSERT OR REPLACE INTO profiles VALUES (?,?,?,?,?,?,?,?,?,?,?)", row)
            _write_centre(db, profile.name, row[2], profile.centre)
            _write_variants(db, profile.name, row[2], profile.variants)
            _drop_state(db, profile.name)
            self._cache.pop(profile.name, None)

    def get(self, name: str, model_id: Union[str, Sequence[str], None] = None) -> Profile:
        """The profile ``name``; with ``model_id`` (one id or the ids a model answers to, see
        ``ModelBundle.ids``), a profile made with another model raises :class:`ModelMismatch`."""
        with self._reading():
            cached = self._load(name)
        if cached is None:
            raise ProfileNotFound(f"no profile named {name!r} in {self!r}")
        return check_model(cached, model_id)

    def _load(self, name: str) -> Optional[Profile]:
        """Profile ``name`` from the open connection (the caller holds the lock), or None; the
        decoded arrays are cached by enrollment time."""
        row = self._db.execute("SELECT created FROM profiles WHERE name=?", (name,)).fetchone()
        if row is None:
            return None
        cached = self._cache.get(name)
        if cached is None or cached.created != row[0]:
            row = self._db.execute(
                "SELECT name, model_id, created, dim, hidden, support, support_part, metadata, "
                "spectrum, spectrum_shape FROM profiles WHERE name=?", (name,)).fetchone()
            spec = None if row[8] is None else \
                np.frombuffer(row[8], np.float32).reshape(json.loads(row[9])).copy()
            support, meta = _unblob(row[5], row[3]), json.loads(row[7])
            centre = None
            if _has_table(self._db, "profile_centre"):
                c = self._db.execute("SELECT created, centre FROM profile_centre WHERE name=?",
                                     (name,)).fetchone()
                if c is not None and c[0] == row[2]:
                    centre = _unblob(c[1], row[3])
                    if len(centre) != _images_of(meta, len(support)):
                        centre = None      # not this profile's images: held out on grid crops
            cached = Profile(row[0], row[1], support, _unblob(row[6], row[4]), meta, row[2], spec,
                             centre)
            keys = _stored_deliveries(self._db, name, row[2])
            if keys:
                cached.variants = _StoredVariants(keys, functools.partial(
                    self._variant_of, cached, row[3], row[4]))
            self._variants.drop(name)   # an older enrollment's (written here or elsewhere)
            self._cache[name] = cached
        return cached

    def _variant_of(self, base: Profile, dim: int, hidden: int, key: Delivery) -> Profile:
        """Profile ``base``'s variant ``key``, from the variant cache or read (KeyError when the
        profile was enrolled again since: it then stands for itself)."""
        def load():
            with self._reading() as db:
                return _read_variant(db, base, dim, hidden, key)
        return self._variants.get((base.name, base.created, key), load)

    def read(self, names: Optional[Sequence[str]] = None,
             model_id: Union[str, Sequence[str], None] = None) -> List[Profile]:
        """Profiles ``names`` (None: every profile, in :meth:`names` order) read in one
        transaction, so that a concurrent enroll or remove is seen wholly or not at all (a
        snapshot never meets a profile listed and then gone). ``model_id`` as in :meth:`get`."""
        with self._reading() as db:
            db.execute("BEGIN")
            try:
                if names is None:
                    names = [r[0] for r in db.execute("SELECT name FROM profiles ORDER BY name")]
                profs = [self._load(n) for n in names]
            finally:
                db.execute("COMMIT")
        for n, p in zip(names, profs):
            if p is None:
                raise ProfileNotFound(f"no profile named {n!r} in {self!r}")
        return [check_model(p, model_id) for p in profs]

    def remove(self, name: str) -> None:
        with self._write("remove") as db:
            if db.execute("DELETE FROM profiles WHERE name=?", (name,)).rowcount == 0:
                raise ProfileNotFound(f"no profile named {name!r} in {self!r}")
            _write_centre(db, name, 0.0, None)
            _write_variants(db, name, 0.0, {})
            _drop_state(db, name)
            self._cache.pop(name, None)
            self._variants.drop(name)

    def get_state(self, keys: Sequence[str]) -> Dict[str, bytes]:
        """The stored prepared state under ``keys`` (those present)."""
        out: Dict[str, bytes] = {}
        with self._reading() as db:
            if not db.execute("SELECT 1 FROM sqlite_master WHERE type='table' "
                              "AND name='profile_state'").fetchone():
                return out
            keys = list(keys)
            for i in range(0, len(keys), 500):
                chunk = keys[i:i + 500]
                out.update(db.execute(f"SELECT key, value FROM profile_state WHERE key IN "
                                      f"({','.join('?' * len(chunk))})", chunk).fetchall())
        return out

    def put_state(self, items: Dict[str, tuple]) -> bool:
        """Store prepared state: {key: (profile name, bytes)}, in one write transaction, for
        profiles that still exist. A read-only gallery stores nothing (False)."""
        if not items or self.read_only is not None:
            return False
        with self._write("state") as db:
            db.execute(_STATE_TABLE)
            have = {r[0] for r in db.execute("SELECT name FROM profiles")}
            db.executemany("INSERT OR REPLACE INTO profile_state VALUES (?,?,?)",
                           [(k, n, v) for k, (n, v) in items.items() if n in have])
        return True

    def digest(self, names: Optional[Sequence[str]] = None) -> str:
        """A digest of the profiles ``names`` (None: all) as enrolled now: their names, model
        ids, enrollment times and support sizes (re-enrolling or adding images changes it)."""
        import hashlib
        with self._reading() as db:
            rows = db.execute("SELECT name, model_id, created, n_support FROM profiles "
                              "ORDER BY name").fetchall()
        want = None if names is None else set(names)
        h = hashlib.sha256()
        for r in rows:
            if want is None or r[0] in want:
                h.update(json.dumps([r[0], r[1], repr(r[2]), r[3]]).encode())
        return h.hexdigest()[:16]

    def info(self) -> List[Dict]:
        with self._reading() as db:
            rows = db.execute(
                "SELECT name, model_id, n_support, created, metadata FROM profiles ORDER BY name").fetchall()
        return [{"name": r[0], "model_id": r[1], "n_support": r[2], "created": r[3],
                 "metadata": json.loads(r[4])} for r in rows]

    # -- closed/open-set heads (see closed_set.py) --------------------------------------------------
    def put_head(self, name: str, model_id: str, classes: List[str], dim: int, hidden: int,
                 weights: bytes, metadata: Dict) -> None:
        with self._write("put_head") as db:
            db.execute("INSERT OR REPLACE INTO heads VALUES (?,?,?,?,?,?,?,?)",
                       (name, model_id, time.time(), json.dumps(classes), dim, hidden,
                        weights, json.dumps(metadata, default=str)))

    def get_head(self, name: str, model_id: Union[str, Sequence[str], None] = None) -> Dict:
        with self._reading():
            row = self._db.execute("SELECT name, model_id, created, classes, dim, hidden, weights, "
                                   "metadata FROM heads WHERE name=?", (name,)).fetchone()
        if row is None:
            raise ProfileNotFound(f"no closed-set head named {name!r} in {self!r}; fit one with "
                                  f"fit_closed_set / 'ofa-sdk fit-closed-set'")
        ids = _ids(model_id)
        if ids and row[1] not in ids:
            raise ModelMismatch(f"closed-set head {name!r} was fit on model {row[1]}, this "
                                f"Attributor uses model {ids[0]}; fit it again")
        return {"name": row[0], "model_id": row[1], "created": row[2], "classes": json.loads(row[3]),
                "dim": row[4], "hidden": row[5], "weights": row[6], "metadata": json.loads(row[7])}

    def close(self):
        with self._lock:
            self._db.close()
