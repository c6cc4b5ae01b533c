"""A scan's output file: JSONL, CSV or Parquet rows, read back to resume.

    summary = att.scan("incoming/", output="results.csv")    # Attributor.scan writes through
    summary = write_scan("results.jsonl", lambda done: att.scan("incoming/", skip=done))

    with open_output("results.csv") as out:      # by hand: reads what is there, repairs a torn row
        for r in att.scan("incoming/", skip=out.done):
            out.write(r.to_dict())

The single-process scan (``Attributor.scan(..., output=PATH)`` and ``ofa-sdk scan``) writes
through :func:`write_scan`; the Ray scan (:mod:`ofa_sdk.distributed`) formats its rows with
:func:`arrow_table` and :func:`jsonl_lines`, so every scan writes the same rows.

Rows: the fields of :data:`ofa_sdk.decision.RESULT_FIELDS`, one row per line in JSONL, one
record per row in CSV after a header (``scores`` and ``provenance`` hold JSON text there). Each
row is written whole with one unbuffered write and the file is fsynced when it is closed, so an
interrupted scan (Ctrl-C, SIGTERM, SIGKILL, a full disk) loses no written row and leaves at most
a torn last one.

Parquet (a ``.parquet`` or ``.pq`` file; needs ``pyarrow``): the same columns (``scores`` and
``provenance`` as JSON text), written in row groups to a hidden partial file beside the output
(``.NAME.partial``) that holds the rows already there and the new ones and replaces the output
when the scan ends, interrupted (Ctrl-C, SIGTERM) or not. A Parquet file is only readable once
closed, so a scan killed outright (SIGKILL, power loss) keeps the output of its previous run and
loses its own rows: the next run deletes the partial file (reporting its size as
``torn_bytes_cut``) and scans them again.

What is written, so that every output is valid UTF-8 and strict JSON or CSV:

* **File names** (the ``source`` field) in a reversible escaped form: a byte of the name that
  is not valid UTF-8 (Python's ``surrogateescape`` stands it for ``U+DC80``-``U+DCFF``) is
  written as ``\\xNN`` (two lowercase hex digits), and a backslash as ``\\\\``; every other
  character as it is. :func:`escape_name` / :func:`unescape_name` are the two directions; on
  POSIX ``os.fsencode(unescape_name(s))`` gives the name's bytes back, and resume matches rows
  to files through it.
* Other text (errors, notes, provenance) with any lone surrogate written as ``\\xNN`` (or
  ``\\uXXXX``), and non-finite numbers as ``null``/empty, so strict parsers in any language
  accept the file.
* **CSV cells** that begin with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return get a
  leading single quote ``'`` (OWASP's CSV-injection guidance), so a spreadsheet shows them as
  text instead of running them as a formula; a cell that begins with ``'`` gets one more, so
  the rule is reversible (:func:`neutralise_cell` / :func:`restore_cell`). JSONL keeps the raw
  value.

Resume (:func:`read_output`): the sources of the complete rows already in the file are
skipped. Only a torn last row is cut off: bytes after the last newline, and in CSV a last record
still inside a quoted field at the end of the file (a write cut short inside a field that holds
a newline). A damaged line anywhere else (a stray quote, a line that is not a row) is kept as it
is and reported with its line number; the rows after it are read as usual, and the file whose
row was damaged is scanned again. :attr:`ScanOutput.repaired` says what was done.

What made the rows (:func:`run_record`): a file ``NAME.run.json`` beside the output records the
model id, score rule, threshold policy, crops and a digest of the gallery's profiles of every
run that wrote to it. Resume refuses a run of another model, rule, threshold policy or gallery
(:class:`ScanMismatch`, naming what differs) unless ``allow_mismatch`` (``ofa-sdk scan
--allow-mismatch``) opts in, and the record then lists both runs. Rows name files by absolute
path and resume matches them by resolved path (``Attributor.scan``), so a scan resumed from
another working directory writes no row twice. ``retry_errors`` (``--retry-errors``) drops the
error rows already there (the file is rewritten without them, atomically) and scans their
files again.

Reading rows back (:func:`read_rows`): the one reader of these files, for resume and for
:func:`ofa_sdk.discovery.unknown_sources` alike; it gives every complete row with its source
unescaped and its CSV cells restored, so the names are the paths of the files scanned.
"""
from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import re
import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Set

from .decision import JSON_FIELDS, RESULT_FIELDS

SCAN_FIELDS = list(RESULT_FIELDS)
FLOAT_FIELDS = ("score", "threshold", "typicality")   # numbers; the other columns are text
FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}   # else JSONL
PARQUET_ROW_GROUP = 1024   # rows buffered before a Parquet row group is written
CSV_DANGEROUS = ("=", "+", "-", "@", "\t", "\r")   # a spreadsheet may read these as a formula
MAX_RECORD_LINES = 256   # a CSV record spanning more lines is a damaged line, not a row

_SURROGATE = re.compile("[\ud800-\udfff]")
_ESCAPE = re.compile(r"\\(\\|x[0-9a-f]{2}|u[0-9a-f]{4})")


def _surrogate_repr(m: "re.Match") -> str:
    c = ord(m.group())
    return f"\\x{c - 0xDC00:02x}" if 0xDC80 <= c <= 0xDCFF else f"\\u{c:04x}"


def _has_surrogate(s: str) -> bool:
    return not s.isascii() and _SURROGATE.search(s) is not None


def escape_name(s: str) -> str:
    """A file name as valid UTF-8 text, reversibly: ``\\`` -> ``\\\\``, an undecodable byte
    (surrogate-escaped) -> ``\\xNN``; everything else unchanged."""
    if "\\" not in s and not _has_surrogate(s):
        return s
    return _SURROGATE.sub(_surrogate_repr, s.replace("\\", "\\\\"))


def unescape_name(s: str) -> str:
    """The inverse of :func:`escape_name`: the name as Python holds it (undecodable bytes as
    surrogates, as ``os.fsdecode`` gives them)."""
    if "\\" not in s:
        return s

    def one(m: "re.Match") -> str:
        t = m.group(1)
        if t == "\\":
            return "\\"
        if t[0] == "x":
            return chr(0xDC00 + int(t[1:], 16))
        return chr(int(t[1:], 16))
    return _ESCAPE.sub(one, s)


def clean(value):
    """``value`` with every string made valid UTF-8 (lone surrogates as ``\\xNN``) and every
    non-finite float made None, through dicts and lists: what strict JSON and UTF-8 accept."""
    if isinstance(value, str):
        return _SURROGATE.sub(_surrogate_repr, value) if _has_surrogate(value) else value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {clean(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    return value


def neutralise_cell(cell: str) -> str:
    """A CSV cell a spreadsheet shows as text: ``'`` before a leading ``= + - @``, tab or CR
    (and before a leading ``'``, so that :func:`restore_cell` undoes it exactly)."""
    return "'" + cell if cell[:1] in CSV_DANGEROUS or cell[:1] == "'" else cell


def restore_cell(cell: str) -> str:
    """The value :func:`neutralise_cell` was given."""
    return cell[1:] if cell[:1] == "'" else cell


def output_row(d: Dict, fields: Sequence[str] = SCAN_FIELDS) -> Dict:
    """The values a row of ``fields`` is written with (JSONL), from ``Attribution.to_dict()``:
    the source escaped, the rest cleaned."""
    return {k: escape_name(d[k]) if k == "source" and isinstance(d.get(k), str)
            else clean(d.get(k)) for k in fields}


def jsonl_line(d: Dict, fields: Sequence[str] = SCAN_FIELDS) -> bytes:
    """One JSONL row: strict JSON (no NaN, no lone surrogate), one line."""
    return (json.dumps(output_row(d, fields), allow_nan=False) + "\n").encode("utf-8")


def _csv_cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, str):
        return '"' + v.replace('"', '""') + '"' if any(c in v for c in ',"\r\n') else v
    return str(v)


def csv_line(values: Sequence) -> bytes:
    """One CSV record of ``values`` (text cells as given), ended by a newline: what
    ``csv.writer`` writes, except that a cell holding a carriage return is quoted too (the
    csv module quotes only the characters of its line terminator, and its reader would end the
    record at that carriage return)."""
    return (",".join(_csv_cell(v) for v in values) + "\n").encode("utf-8")


def csv_row(d: Dict, columns: Sequence[str]) -> bytes:
    """One CSV row of ``columns``: JSON fields as JSON text, text cells neutralised."""
    row = output_row(d, columns)
    cells = []
    for k in columns:
        v = row[k]
        if k in JSON_FIELDS:
            v = json.dumps(v, allow_nan=False)
        cells.append(neutralise_cell(v) if isinstance(v, str) else v)
    return csv_line(cells)


def format_of(path) -> str:
    """A scan output's format from its file name: "csv", "parquet" or "jsonl" (any other
    suffix)."""
    return FORMATS.get(Path(path).suffix.lower(), "jsonl")


def _pyarrow():
    """pyarrow (with its Parquet module), or an ImportError that says what needs it."""
    if importlib.util.find_spec("pyarrow") is None:
        raise ImportError("Parquet scan output needs pyarrow: pip install 'ofa-sdk[parquet]', or write "
                          ".jsonl or .csv")
    import pyarrow
    import pyarrow.parquet  # noqa: F401
    return pyarrow


def arrow_schema(fields: Sequence[str] = SCAN_FIELDS):
    """The Arrow schema of a scan's rows: float64 for :data:`FLOAT_FIELDS`, strings for the
    rest (JSON text for :data:`~ofa_sdk.decision.JSON_FIELDS`)."""
    pa = _pyarrow()
    return pa.schema([(k, pa.float64() if k in FLOAT_FIELDS else pa.string()) for k in fields])


def arrow_table(rows: Sequence[Dict], fields: Sequence[str] = SCAN_FIELDS, schema=None):
    """``Attribution.to_dict()`` rows as an Arrow table of ``fields``: the values of
    :func:`output_row` (names escaped, text valid UTF-8, no NaN), JSON fields as JSON text."""
    pa = _pyarrow()
    out = [output_row(d, fields) for d in rows]
    cols = {k: [json.dumps(r[k], allow_nan=False) if k in JSON_FIELDS else r[k] for r in out]
            for k in fields}
    return pa.table(cols, schema=arrow_schema(fields) if schema is None else schema)


def jsonl_lines(table) -> bytes:
    """The JSONL lines of a table :func:`arrow_table` made (its values are already the written
    ones: JSON text fields become objects again, nothing is escaped twice)."""
    lines = []
    for r in table.to_pylist():
        for k in JSON_FIELDS:
            if k in r:
                r[k] = json.loads(r[k]) if r[k] else {}
        lines.append(json.dumps(r, allow_nan=False) + "\n")
    return "".join(lines).encode("utf-8")


@dataclass
class OutputState:
    """What :func:`read_output` found in a scan's output file."""
    done: Set[str] = field(default_factory=set)   # sources of its complete rows (unescaped)
    header: Optional[List[str]] = None            # CSV header, None for JSONL or an empty file
    end: int = 0                                   # byte offset where its last complete row ends
    size: int = 0                                  # the file's size
    rows: int = 0                                  # complete rows read
    damaged: List[int] = field(default_factory=list)   # line numbers (1-based) of damaged lines
    errors: List[tuple] = field(default_factory=list)  # (start, end) bytes of error rows

    @property
    def torn_bytes(self) -> int:
        """Bytes of a torn last row (after :attr:`end`)."""
        return self.size - self.end


def _csv_record(lines: List[str]):
    """Parse ``lines`` as exactly one CSV record: (fields, None), or (None, "open") when the
    record is still inside a quoted field at the end, or (None, "bad")."""
    try:
        recs = list(csv.reader(lines, strict=True))
    except csv.Error as e:
        return None, "open" if "unexpected end of data" in str(e) else "bad"
    return (recs[0], None) if len(recs) == 1 else (None, "bad")


def _lines(f) -> Iterator[tuple]:
    """(line number, byte offset, text, byte length) of each complete line (one ending with a
    newline) of a binary file."""
    off = 0
    for no, raw in enumerate(f, 1):
        if not raw.endswith(b"\n"):
            return                      # torn: no newline at the end
        yield no, off, raw.decode("utf-8", "surrogateescape"), len(raw)
        off += len(raw)


def _read_jsonl(lines: Iterator[tuple], st: OutputState) -> Iterator[Dict]:
    """The complete rows of JSONL ``lines`` (``source`` unescaped), counted into ``st``."""
    for no, off, text, n in lines:
        st.end = off + n
        try:
            row = json.loads(text)
            src = row["source"]
            if not isinstance(src, str):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            st.damaged.append(no)       # not a row: kept as it is, reported
            continue
        st.rows += 1
        row["source"] = unescape_name(src)
        if row.get("error"):
            st.errors.append((off, off + n))
        yield row


def _read_csv(lines: Iterator[tuple], st: OutputState) -> Iterator[Dict]:
    """The rows of CSV ``lines`` (every cell restored, ``source`` unescaped; text as written:
    JSON fields as JSON text, numbers as their text, None as ""), counted into ``st``. A record
    is read line by line: while it is inside a quoted field (a field holding a newline) the next
    line is added, up to :data:`MAX_RECORD_LINES`; a line that starts no valid record is
    damaged, and the lines read after it are read again as the records they are."""
    todo: List[tuple] = []              # lines to read again (after a damaged one), a stack
    pending: List[tuple] = []           # the lines of a record still inside a quoted field

    def damaged(line: tuple) -> None:
        st.damaged.append(line[0])
        st.end = line[1] + line[3]

    while True:
        line = todo.pop() if todo else next(lines, None)
        if line is None:
            if not pending:
                return
            # the end of the file inside a quoted field: a torn last record (cut off: st.end
            # stays before it), unless complete rows follow its first line (then it was damaged)
            rest = OutputState(header=st.header)
            for _ in _read_csv(iter(pending[1:]), rest):
                pass
            if not rest.rows:
                return
            damaged(pending[0])
            todo.extend(reversed(pending[1:]))
            pending = []
            continue
        pending.append(line)
        fields, why = _csv_record([x[2] for x in pending])
        if fields is None and why == "open" and len(pending) < MAX_RECORD_LINES:
            continue                    # a quoted field holding a newline: read on
        if fields is not None and st.header is None:
            st.header = fields
        elif fields is not None and "source" in st.header and len(fields) == len(st.header):
            st.rows += 1
            row = dict(zip(st.header, map(restore_cell, fields)))
            row["source"] = unescape_name(row["source"])
            if row.get("error"):
                st.errors.append((pending[0][1], pending[-1][1] + pending[-1][3]))
            yield row
        else:                           # no row starts here: the first line is damaged, the
            damaged(pending[0])         # others are read again
            todo.extend(reversed(pending[1:]))
            pending = []
            continue
        st.end = pending[-1][1] + pending[-1][3]
        pending = []


def read_output(path, retry_errors: bool = False) -> OutputState:
    """Read a scan's output file in one streaming pass (see the module docstring); with
    ``retry_errors`` the sources of error rows are not counted done."""
    st = OutputState()
    for row in read_rows(path, state=st):
        if not (retry_errors and row.get("error")):
            st.done.add(row["source"])
    return st


def _drop_spans(path: Path, spans: Sequence[tuple], end: int) -> None:
    """Rewrite ``path`` without the byte ranges ``spans`` (sorted) and anything after ``end``,
    atomically (a temporary file beside it, fsynced, then renamed over it)."""
    tmp = path.with_name(f".{path.name}.retry")
    with open(path, "rb") as src, open(tmp, "wb") as dst:
        pos = 0
        for a, b in list(spans) + [(end, end)]:
            src.seek(pos)
            dst.write(src.read(a - pos))
            pos = b
        dst.flush()
        os.fsync(dst.fileno())
    os.replace(tmp, path)


def run_file(output) -> Path:
    """Where the record of what wrote a scan's output lives: ``NAME.run.json`` beside it."""
    output = Path(output)
    return output.with_name(output.name + ".run.json")


# what must match for a resumed scan to append to an output (the rest is recorded only)
RUN_KEYS = ("model_id", "rule", "whiten", "threshold", "profile_quantile", "ambiguity_margin",
            "choose_head", "gallery_digest")
# what a record written before a key existed meant by its absence
RUN_DEFAULTS = {"ambiguity_margin": 0.0, "choose_head": None}


class ScanMismatch(ValueError):
    """A scan would append verdicts of another model, rule, threshold policy or gallery to an
    output that already holds rows."""


def describe_run(model_id: str, rule, threshold, quantile: float, crops, gallery,
                 profiles: Optional[Sequence[str]] = None, margin: float = 0.0,
                 choose_head: Optional[str] = None) -> Dict:
    """What a scan's verdicts depend on (recorded beside its output, :func:`run_record`): model
    id, rule, threshold policy, ambiguity margin, the head that chooses among profiles, crops
    and a digest of the gallery's profiles (of every profile when the rule whitens by the
    gallery)."""
    names = list(profiles) if profiles is not None else None
    whiten = getattr(rule, "whiten", None)
    return {"model_id": model_id, "rule": rule.name, "whiten": whiten, "threshold": threshold,
            "profile_quantile": quantile, "ambiguity_margin": margin,
            "choose_head": choose_head, "crops": crops,
            "gallery": str(gallery.path.resolve()) if gallery.path else "memory",
            "gallery_digest": gallery.digest(None if whiten else names),
            "profiles": len(names) if names is not None else len(gallery)}


def run_record(output, run: Dict, has_rows: bool, allow_mismatch: bool = False) -> Dict:
    """Check ``run`` (what this scan uses: :data:`RUN_KEYS` and more) against the record of
    ``output`` and write the updated record (atomically). An output with rows made by another
    run raises :class:`ScanMismatch` naming what differs, unless ``allow_mismatch``; an output
    with rows and no record (an older SDK's) is taken as it is. Returns the record."""
    path = run_file(output)
    try:
        rec = json.loads(path.read_text()) if path.exists() else {}
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} (the record of what wrote {output}) is unreadable ({e}); "
                         f"move it away to resume without the check") from None
    runs = [r for r in rec.get("runs", []) if isinstance(r, dict)]
    last = runs[-1] if runs and has_rows else None
    there = {} if last is None else {k: last.get(k, RUN_DEFAULTS.get(k)) for k in RUN_KEYS}
    differ = [k for k in RUN_KEYS if last is not None and there[k] != run.get(k)]
    if differ and not allow_mismatch:
        what = "; ".join(f"{k} {there[k]!r} there, {run.get(k)!r} now" for k in differ)
        raise ScanMismatch(f"{output} holds rows of another run ({what}): resuming would mix their "
                           f"verdicts with this run's; write to another file, or pass "
                           f"--allow-mismatch (allow_mismatch=True) to append anyway (the record "
                           f"{path.name} then lists both runs)")
    clean_run = clean(dict(run))
    if not has_rows:
        runs = []
    if not runs or any(runs[-1].get(k) != clean_run.get(k) for k in RUN_KEYS):
        runs.append(clean_run)
    rec = {"output": Path(output).name, "runs": runs, "mixed": len(runs) > 1}
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(rec, indent=1, default=str))
    os.replace(tmp, path)
    return rec


def read_rows(path, columns: Optional[Sequence[str]] = None,
              state: Optional[OutputState] = None) -> Iterator[Dict]:
    """The complete rows of a scan's output file (JSONL, CSV or Parquet by its suffix), in
    order, as dicts with the values that were written: ``source`` unescaped
    (:func:`unescape_name`: the name as ``os.fsdecode`` gives it), CSV cells restored
    (:func:`restore_cell`; a CSV row holds text: JSON fields as JSON text, numbers as their
    text, None as ""). What resume reads (:func:`read_output`, :class:`ParquetScanOutput`) and
    what :func:`ofa_sdk.discovery.unknown_sources` reads.

    A torn last row is left out and a damaged line skipped, as resume does; ``state`` (an
    :class:`OutputState`), when given, is filled with what was found (rows, damaged line
    numbers, the CSV header, where the last complete row ends). ``columns``: the columns the
    file must have (a CSV header or Parquet schema without one of them raises ValueError; a
    JSONL row without one has None there); Parquet reads only these. A file that does not exist
    holds no rows."""
    path = Path(path)
    st = OutputState() if state is None else state
    if not path.exists():
        return
    st.size = path.stat().st_size
    if format_of(path) == "parquet":
        _pyarrow()
        import pyarrow.parquet as pq
        for row in parquet_rows(pq.ParquetFile(path), columns, path):
            st.rows += 1
            yield row
        st.end = st.size
        return

    def check() -> None:                # the CSV header has the columns asked for
        missing = [c for c in columns or () if st.header is not None and c not in st.header]
        if missing:
            raise ValueError(f"{path} has no {', '.join(map(repr, missing))} column: not a "
                             f"scan's output")
    with open(path, "rb") as f:
        for row in (_read_csv if format_of(path) == "csv" else _read_jsonl)(_lines(f), st):
            check()
            yield row if columns is None else {c: row.get(c) for c in columns}
    check()


def parquet_rows(pf, columns: Optional[Sequence[str]] = None, name=None) -> Iterator[Dict]:
    """The rows of an open ``pyarrow.parquet.ParquetFile`` of a scan, one row group at a time
    (``source`` unescaped); ``columns``: the columns to read (ValueError naming ``name`` when
    one is missing)."""
    have = pf.schema_arrow.names
    missing = [c for c in (columns or ()) if c not in have]
    if missing:
        raise ValueError(f"{name or 'the Parquet file'} has no "
                         f"{', '.join(map(repr, missing))} column: not a scan's output")
    for i in range(pf.num_row_groups):
        for row in pf.read_row_group(i, columns=list(columns) if columns else None).to_pylist():
            if isinstance(row.get("source"), str):
                row["source"] = unescape_name(row["source"])
            yield row


class ScanOutput:
    """A scan's output file opened for appending rows, after resume and repair.

    ``done``: the sources (as ``str(path)``) of the rows already there; ``columns``: the CSV
    columns rows are written with (a file of another version keeps its own); ``repaired``:
    what resuming did (``torn_bytes_cut``, ``damaged_lines``, the line numbers of damaged
    lines kept as they are). Raises ValueError for a CSV file that is not a scan's output."""

    def __init__(self, path, fields: Sequence[str] = SCAN_FIELDS, retry_errors: bool = False):
        self.path = Path(path)
        self.is_csv = self.path.suffix.lower() == ".csv"
        st = read_output(self.path, retry_errors)
        if self.is_csv and st.header is not None and "source" not in st.header:
            raise ValueError(f"{self.path} is a CSV file without a 'source' column, not a "
                             f"scan's output; write the scan to another file")
        self.done = st.done
        self.columns = list(st.header or fields)
        self._header = self.is_csv and st.header is None
        self.repaired = {"torn_bytes_cut": st.torn_bytes, "damaged_lines": st.damaged}
        if retry_errors:
            self.repaired["error_rows_retried"] = len(st.errors)
        if retry_errors and st.errors:
            _drop_spans(self.path, st.errors, st.end)
        elif st.torn_bytes:
            with open(self.path, "r+b") as f:
                f.truncate(st.end)
        self._f = None

    def open(self) -> "ScanOutput":
        self._f = open(self.path, "ab", buffering=0)
        if self._header:
            self._append(csv_line(self.columns))
            self._header = False
        return self

    def _append(self, data: bytes) -> None:
        """Append ``data`` with one write call (a raw, unbuffered file: a row is written whole
        or, on a kill in the middle of a short write, cut off and repaired by the next run)."""
        view = memoryview(data)
        while view:
            n = self._f.write(view)
            view = view[n:]

    def write(self, d: Dict) -> None:
        """Append one row, ``Attribution.to_dict()``'s fields."""
        self._append(csv_row(d, self.columns) if self.is_csv else jsonl_line(d))

    def close(self) -> None:
        if self._f is not None:
            try:
                os.fsync(self._f.fileno())
            finally:
                self._f.close()
                self._f = None

    def __enter__(self) -> "ScanOutput":
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()


class ParquetScanOutput:
    """A scan's Parquet output opened for appending rows, after resume (see the module
    docstring): the same interface as :class:`ScanOutput`. ``done``: the sources of the rows
    already there; ``repaired``: ``torn_bytes_cut`` (the size of a partial file a killed run
    left, deleted) and ``damaged_lines`` (always empty: a Parquet file is read whole or not at
    all). Raises ValueError naming the file when it is not a readable Parquet file with a
    ``source`` column."""

    def __init__(self, path, fields: Sequence[str] = SCAN_FIELDS, retry_errors: bool = False):
        _pyarrow()
        import pyarrow.parquet as pq
        self.retry_errors = retry_errors
        self.path = Path(path)
        self.partial = self.path.with_name(f".{self.path.name}.partial")
        torn = 0
        if self.partial.exists():
            torn = self.partial.stat().st_size
            self.partial.unlink()
        self.done: Set[str] = set()
        self._schema = arrow_schema(fields)
        self._old = None
        if self.path.exists():
            try:
                self._old = pq.ParquetFile(self.path)
                self._schema = self._old.schema_arrow
                cols = ["source", "error"] if "error" in self._schema.names else ["source"]
                rows = [r for r in parquet_rows(self._old, cols) if isinstance(r["source"], str)]
                errs = sum(bool(r.get("error")) for r in rows) if retry_errors else 0
                self.done = {r["source"] for r in rows if not (retry_errors and r.get("error"))}
            except Exception as e:
                raise ValueError(f"{self.path} is not a readable Parquet file with a 'source' "
                                 f"column, not a scan's output ({e}); write the scan to another "
                                 f"file") from None
        self.columns = list(self._schema.names)
        self.repaired = {"torn_bytes_cut": torn, "damaged_lines": []}
        if retry_errors:
            self.repaired["error_rows_retried"] = errs
        self._writer = None
        self._rows: List[Dict] = []

    def open(self) -> "ParquetScanOutput":
        import pyarrow.parquet as pq
        self._writer = pq.ParquetWriter(str(self.partial), self._schema)
        if self._old is not None:       # the rows already there, one row group at a time
            import pyarrow.compute as pc
            for i in range(self._old.num_row_groups):
                t = self._old.read_row_group(i)
                if self.retry_errors and "error" in t.column_names:   # error rows: scanned again
                    t = t.filter(pc.fill_null(pc.equal(pc.fill_null(t["error"], ""), ""), True))
                self._writer.write_table(t)
        return self

    def write(self, d: Dict) -> None:
        """Add one row, ``Attribution.to_dict()``'s fields (written with the next row group)."""
        self._rows.append(d)
        if len(self._rows) >= PARQUET_ROW_GROUP:
            self._flush()

    def _flush(self) -> None:
        if self._rows:
            self._writer.write_table(arrow_table(self._rows, self.columns, self._schema))
            self._rows = []

    def close(self) -> None:
        """Write the last rows, close the file and put it in the output's place (atomically)."""
        if self._writer is None:
            return
        try:
            self._flush()
        finally:
            self._writer.close()
            self._writer = None
        with open(self.partial, "rb") as f:
            os.fsync(f.fileno())
        os.replace(self.partial, self.path)

    def __enter__(self) -> "ParquetScanOutput":
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()


def open_output(path, fields: Sequence[str] = SCAN_FIELDS, retry_errors: bool = False):
    """The scan output ``path`` ready to resume, by its suffix: :class:`ParquetScanOutput` for
    ``.parquet``/``.pq``, else :class:`ScanOutput` (CSV for ``.csv``, JSONL otherwise). Open it
    (``with``, or ``.open()``) before writing rows. ``retry_errors``: error rows already there
    are dropped and their sources not counted done."""
    return (ParquetScanOutput if format_of(path) == "parquet" else ScanOutput)(path, fields,
                                                                               retry_errors)


@dataclass
class ScanSummary:
    """What :func:`write_scan` did: the output file, rows written by this run, error rows among
    them, rows already there (kept; their sources were skipped), whether the scan was stopped
    before the end (Ctrl-C, SIGTERM), what resuming repaired (:attr:`ScanOutput.repaired`), and
    how declared provenance compares with the attributed profiles (``declared``: rows whose file
    names a generator; ``agree``/``disagree``: :func:`ofa_sdk.provenance.agreement`)."""
    output: str
    written: int = 0
    errors: int = 0
    skipped_already_done: int = 0
    interrupted: bool = False
    repaired: Dict = field(default_factory=dict)
    provenance: Dict = field(default_factory=lambda: {"declared": 0, "agree": 0, "disagree": 0})

    def to_dict(self, provenance: bool = True) -> Dict:
        """The summary as ``ofa-sdk scan --json`` prints it (``provenance`` only when asked)."""
        d = {"output": self.output, "written": self.written, "errors": self.errors,
             "skipped_already_done": self.skipped_already_done, "interrupted": self.interrupted,
             "repaired": self.repaired}
        if provenance:
            d["provenance"] = dict(self.provenance)
        return d


class ScanInterrupted(KeyboardInterrupt):
    """A scan writing to a file was stopped by Ctrl-C or SIGTERM. Every row it wrote is in the
    file (fsynced) and a rerun resumes after them; ``summary`` is its :class:`ScanSummary`
    (``interrupted`` True). A KeyboardInterrupt, so a program that does not catch it stops as
    on any Ctrl-C."""

    def __init__(self, summary: ScanSummary):
        super().__init__(f"scan to {summary.output} interrupted after {summary.written} rows; "
                         f"run it again to resume")
        self.summary = summary


def write_scan(output, scan, fields: Sequence[str] = SCAN_FIELDS, *, run: Optional[Dict] = None,
               allow_mismatch: bool = False, retry_errors: bool = False) -> ScanSummary:
    """Run a scan into the file ``output`` (JSONL, CSV or Parquet by its suffix), resuming
    what is there: ``scan(done)`` is called with the sources already written (as ``str(path)``)
    and returns an iterator of :class:`~ofa_sdk.decision.Attribution` that leaves them out
    (``Attributor.scan(..., skip=done)``); every result becomes one row.

    SIGINT and SIGTERM stop the scan wherever it is (:class:`StopSignals`, installed from the
    main thread only) but never in the middle of a row; the decode threads are stopped and the
    file is fsynced before :class:`ScanInterrupted` is raised with the summary. Returns the
    :class:`ScanSummary`; raises ValueError for a file that is not a scan's output.

    ``run``: what this scan uses (model id, rule, threshold policy, gallery digest;
    :func:`run_record`), checked against the output's record before anything is written
    (:class:`ScanMismatch` unless ``allow_mismatch``); ``retry_errors``: scan the files of
    error rows again (the rows are dropped first)."""
    from .provenance import agreement
    summary = ScanSummary(str(output))
    out = results = None
    with StopSignals() as stop:
        try:
            if run is not None:         # checked before the output is touched
                has_rows = Path(output).exists() and Path(output).stat().st_size > 0
                run_record(output, run, has_rows, allow_mismatch)
            out = open_output(output, fields, retry_errors)
            summary.skipped_already_done, summary.repaired = len(out.done), out.repaired
            results = scan(out.done)
            out.open()
            for r in results:
                with stop.deferred():           # a signal here waits until the row is written
                    out.write(r.to_dict())
                    summary.written += 1
                    summary.errors += 0 if r.ok else 1
                    verdict = agreement(r.provenance, r.profile)
                    if verdict:
                        summary.provenance[verdict] += 1
                    summary.provenance["declared"] += bool(r.provenance.get("generator"))
                stop.check()
        except KeyboardInterrupt:
            summary.interrupted = True
        finally:
            with stop.deferred():               # stop the decode threads, fsync the rows
                try:
                    if results is not None and hasattr(results, "close"):
                        results.close()
                finally:
                    if out is not None:
                        out.close()
        summary.interrupted = summary.interrupted or stop.requested
    if summary.interrupted:
        raise ScanInterrupted(summary)
    return summary


class StopSignals:
    """SIGINT and SIGTERM stop a scan at any point: the handler raises KeyboardInterrupt
    (which breaks out of a wait on a decode, an engine call or a sleep) and records the request,
    so a KeyboardInterrupt swallowed on its way (one raised inside a finaliser is only printed)
    still stops the scan at the next row (:attr:`requested`). Inside :meth:`deferred` (writing a
    row) the signal is only recorded, so a row is never half written. Installed only from the
    main thread (the only one Python runs signal handlers in); elsewhere it does nothing."""

    def __init__(self):
        self.requested = False
        self._deferring = False
        self._old: Dict[int, object] = {}

    def _handler(self, signum, frame):
        self.requested = True
        if not self._deferring:
            raise KeyboardInterrupt

    @contextmanager
    def deferred(self) -> Iterator[None]:
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False

    def check(self) -> None:
        """Raise KeyboardInterrupt if a stop was requested."""
        if self.requested:
            raise KeyboardInterrupt

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old.clear()
