"""Scanning beyond one machine, on Ray Data.

    from ofa_sdk.distributed import scan_dataset
    scan_dataset(["s3://bucket/incoming/", "/data/more/"], "results.parquet",
                 gallery="gallery.db", num_gpus=1, concurrency=4)

The same four stages as :meth:`ofa_sdk.Attributor.scan` (README, "Layout"), spread over a Ray
cluster::

    read        ray.data.read_binary_files(..., include_paths=True)      (read tasks)
      |          local folders, globs and files, and any URI Ray's readers accept
    input policy   map_batches(_decode)    CPU tasks: skip sources already written (resume),
      |             bytes -> images.prepare (InputPolicy: EXIF, modes, crops, small=)
    engine + score rule + decision   map_batches(_ScoreActor)    an actor pool; each actor
      |             builds one engine (select_engine) in __init__ and gets the GallerySnapshot
      |             (made once on the driver, ray.put once) from the object store
    write        Parquet or JSONL part files, the rows of the single-process scan
                 (ofa_sdk.scan_output.arrow_table / jsonl_lines: decision.RESULT_FIELDS,
                 names escaped, JSON_FIELDS as JSON strings in Parquet)

Every input gives exactly one row; an unreadable, empty, corrupt or too-small input gives a row
with its ``error``, as in the single-process scan.

Output and resume. ``output`` is a *folder* of part files (``part-<run>-<task>.parquet`` or
``.jsonl``). A run writes into ``output/_incomplete/<run>/`` and moves its files into ``output/``
when it finishes, so ``output/`` only holds complete files. A rerun skips every source already
in ``output/`` with a broadcast anti-join done in Ray: a Ray dataset reads the ``source`` column
of the existing part files, each source is hashed to 16 bytes (blake2b), one Ray task
concatenates and sorts the hashes, and the sorted array stays in the object store; the decode
tasks read it zero-copy and drop the sources it holds before decoding. The driver only holds
object references and counts, never the finished sources: driver memory does not grow with
the output. The workers pay 16 bytes per finished source, once per node in the object store
(10 million finished sources: 160 MB). ``Dataset.join(..., "left_anti")`` was not used: it
needs ``polars`` and hash-shuffles both sides, here the bytes of every input image. Part files
left in ``_incomplete/`` by an interrupted run are checked at the next run: complete ones are
kept (moved into ``output/``), torn ones deleted, so their sources are scanned again.

Listing rules that differ from the single-process scan: folders are listed by Ray, which skips
names starting with ``.`` or ``_`` (``expand_paths`` does not), and local sources are recorded as
absolute paths. URIs keep their scheme (``s3://bucket/key``). Two scans must not write the same
output at the same time.

Ray is an optional dependency (``pip install 'ofa-sdk[ray]'``); it is imported inside the
functions, so the rest of the SDK never needs it.
"""
from __future__ import annotations

import glob as _glob
import hashlib
import io
import json
import os
import posixpath
import time
import uuid
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import images as imio
# RESULT_FIELDS: the single-process scan's columns
from .decision import DEFAULT_FRACTION, RESULT_FIELDS

FORMATS = ("parquet", "jsonl")
STAGING = "_incomplete"          # Ray's readers skip names starting with "_"
_SUFFIX = {"parquet": ".parquet", "jsonl": ".jsonl"}
_BY_SUFFIX = {".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl",
              ".json": "jsonl"}
_EXTENSIONS = sorted(s.lstrip(".") for s in imio.IMAGE_SUFFIXES)


def _ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise RuntimeError(f"the distributed scan needs Ray Data ({e}): "
                           f"pip install 'ofa-sdk[ray]'") from None
    return ray


# -- the result table: ofa_sdk.scan_output's rows (escaped names, strict JSON, JSON text columns)
def _rows_to_table(rows: List[Dict]):
    """Attribution.to_dict() rows -> an Arrow table of RESULT_FIELDS, as the single-process
    scan writes them (:func:`ofa_sdk.scan_output.arrow_table`)."""
    from .scan_output import arrow_table
    return arrow_table(rows, RESULT_FIELDS)


def _halves(sources: Iterable[str]) -> np.ndarray:
    """(N, 2) uint64: the 16-byte blake2b digest of each source, big-endian halves."""
    raw = b"".join(hashlib.blake2b(s.encode("utf-8", "surrogateescape"), digest_size=16).digest()
                   for s in sources)
    return np.frombuffer(raw, dtype=">u8").reshape(-1, 2).astype(np.uint64)


def _key(sources: Iterable[str]) -> np.ndarray:
    """The resume key of each source: its 16-byte digest as a (N,) 'S16' array. Keys cross
    Ray datasets only as two uint64 columns: Arrow reads numpy 'S' values as C strings and
    cuts them at the first zero byte."""
    return _as_key(_halves(sources))


def _as_key(halves: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(halves, np.uint64).astype(">u8")).view("S16").ravel()


def _is_done(keys: np.ndarray, done: Optional[np.ndarray]) -> np.ndarray:
    if done is None or not len(done) or not len(keys):
        return np.zeros(len(keys), bool)
    idx = np.minimum(np.searchsorted(done, keys), len(done) - 1)
    return done[idx] == keys


# -- stage 1: input policy (CPU tasks) -------------------------------------------------------
def _prepare(data: Optional[bytes], source: str, policy):
    """The input policy on one input given as bytes (``None``: the local path ``source``, which
    does not exist), reported under ``source``."""
    res = policy(source if data is None else bytes(data))
    res.source = source
    return res


def _decode(batch: Dict[str, Any], *, policy, scheme: str = "", missing: bool = False,
            done_ref=None) -> Dict[str, np.ndarray]:
    """{path, bytes} -> {source, crops (B, kmax, c, c, 3) uint8, k (crops used per item), error,
    note, provenance (JSON), quality (the JPEG quality it arrived at, 0: not a JPEG), size
    ((h, w) as it arrived)}, sources already written (``done_ref``) left out."""
    paths = [str(p) for p in batch["path"]]
    if scheme:
        paths = [p if "://" in p else f"{scheme}://{p}" for p in paths]
    datas = [None] * len(paths) if missing else list(batch["bytes"])
    if done_ref is not None:
        ray = _ray()
        keep = ~_is_done(_key(paths), ray.get(done_ref))
        paths = [p for p, k in zip(paths, keep) if k]
        datas = [d for d, k in zip(datas, keep) if k]
    kmax = imio.MAX_AUTO_CROPS if policy.crops == imio.AUTO else policy.crops
    out = np.zeros((len(paths), kmax, policy.crop, policy.crop, 3), np.uint8)
    ks = np.zeros(len(paths), np.int64)
    quality = np.zeros(len(paths), np.int64)
    size = np.zeros((len(paths), 2), np.int64)
    errors, notes, provs = [], [], []
    for i, (p, d) in enumerate(zip(paths, datas)):
        r = _prepare(d, p, policy)
        if isinstance(r, imio.ImageError):
            errors.append(r.reason)
            notes.append("")
            provs.append("{}")
        else:
            ks[i] = len(r.crops)
            out[i, :ks[i]] = r.crops
            quality[i] = r.quality or 0
            size[i] = r.size
            errors.append("")
            notes.append(r.note)
            provs.append(json.dumps(r.provenance or {}))
    return {"source": np.array(paths, dtype=object), "crops": out, "k": ks,
            "error": np.array(errors, dtype=object), "note": np.array(notes, dtype=object),
            "provenance": np.array(provs, dtype=object), "quality": quality, "size": size}


# The decode tasks' resources. ``max_calls=0`` (no limit) is Ray's default for tasks; stating
# it makes the decode tasks' arguments differ from the actors', and Ray Data fuses consecutive
# maps only when they match (a CPU actor's do): decoding stays a stage of CPU tasks that
# spreads over the cluster's free CPUs, apart from the engine actors.
_DECODE_ARGS = {"num_cpus": 1, "max_calls": 0}


# -- stage 2: engine, score rule, decision (an actor pool) -----------------------------------
class _ScoreActor:
    """One engine per actor, built once; the snapshot comes from the object store once. A batch
    of decoded crops goes through the engine, then through the decision stage of the
    single-process scan (:func:`ofa_sdk.decision.attribute_stream`)."""

    def __init__(self, snapshot, model=None, model_ref=None, backend: str = "auto",
                 device: Optional[str] = None, options: Optional[Dict] = None):
        import ray

        from .backends import select_engine
        from .weights import as_bundle
        if isinstance(snapshot, ray.ObjectRef):
            snapshot = ray.get(snapshot)
        self.snapshot = snapshot
        if model is not None and not os.path.isfile(str(model)):
            # not on this node: the driver's copy of the file, from the object store
            import tempfile
            data = ray.get(model_ref)
            folder = tempfile.mkdtemp(prefix="ofa-model-")
            model = os.path.join(folder, os.path.basename(str(model)) or "model.safetensors")
            with open(model, "wb") as f:
                f.write(data)
        bundle = as_bundle(model)
        if snapshot.model_id not in bundle.ids:
            raise RuntimeError(f"the worker's model {bundle.model_id} is not the model the "
                               f"gallery snapshot was made with ({snapshot.model_id})")
        self.engine, self.engine_note = select_engine(backend, bundle, device, options=options)

    def __call__(self, batch: Dict[str, np.ndarray]):
        from .decision import attribute_stream
        from .pipeline import EmbeddedItem
        errors = [str(e) for e in batch["error"]]
        good = [i for i, e in enumerate(errors) if not e]
        zs: Dict[int, np.ndarray] = {}
        if good:
            crops, ks = np.asarray(batch["crops"]), np.asarray(batch["k"])
            flat = np.concatenate([crops[i, :ks[i]] for i in good])   # (sum k, c, c, 3)
            z = np.asarray(self.engine.embed(np.ascontiguousarray(flat)))
            bounds = np.cumsum([0] + [int(ks[i]) for i in good])
            zs = {i: z[a:b] for i, a, b in zip(good, bounds[:-1], bounds[1:])}
        items = [EmbeddedItem(str(src), zs.get(i), errors[i], str(note), None,
                              json.loads(str(prov)), None, int(q) or None,
                              (int(hw[0]), int(hw[1])) if hw[0] else None)
                 for i, (src, note, prov, q, hw) in enumerate(zip(
                     batch["source"], batch["note"], batch["provenance"], batch["quality"],
                     batch["size"]))]
        rows = attribute_stream(self.snapshot, items, chunk=max(1, len(items)))
        return _rows_to_table([r.to_dict() for r in rows])


# -- output folder ---------------------------------------------------------------------------
def _fs(uri: str):
    """(pyarrow filesystem, path) of a local path or URI."""
    from pyarrow import fs
    return fs.FileSystem.from_uri(uri)


def _join(uri: str, *parts: str) -> str:
    return posixpath.join(uri.rstrip("/"), *parts)


def _abs(p: str) -> str:
    return p if "://" in p else os.path.abspath(os.path.expanduser(p))


def _format_of(output: str, format: Optional[str]) -> str:
    if format is not None:
        if format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
        return format
    suffix = posixpath.splitext(output.rstrip("/"))[1].lower()
    if suffix in _BY_SUFFIX:
        return _BY_SUFFIX[suffix]
    raise ValueError(f"cannot tell the output format from {output!r}: name the folder "
                     f"*.parquet or *.jsonl, or pass format='parquet'|'jsonl'")


def _part_files(fs, folder: str, fmt: str) -> List[str]:
    from pyarrow.fs import FileSelector, FileType
    infos = fs.get_file_info(FileSelector(folder, allow_not_found=True, recursive=False))
    return sorted(i.path for i in infos if i.type == FileType.File
                  and i.base_name.endswith(_SUFFIX[fmt]) and not i.base_name.startswith((".", "_")))


def _complete(fs, path: str, fmt: str) -> bool:
    """Whether a part file left by an interrupted run is whole (its rows can be trusted)."""
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq
            with fs.open_input_file(path) as f:
                return pq.ParquetFile(f).metadata.num_rows > 0
        with fs.open_input_stream(path) as f:
            last = b"\n"
            for line in io.TextIOWrapper(f, encoding="utf-8", newline="\n"):
                json.loads(line)["source"]
                last = line[-1:].encode()
            return last == b"\n"
    except Exception:
        return False


def _settle(fs, staging_root: str, folder: str, fmt: str, check: bool = True) -> Tuple[int, int]:
    """Move the whole part files of every run folder under ``staging_root`` into ``folder``,
    delete the rest (``check=False``: a run that finished; its files are whole). Returns
    (files kept, files dropped)."""
    from pyarrow.fs import FileSelector, FileType
    kept = dropped = 0
    for run in fs.get_file_info(FileSelector(staging_root, allow_not_found=True)):
        if run.type != FileType.Directory:
            continue
        for f in fs.get_file_info(FileSelector(run.path, recursive=True)):
            if f.type != FileType.File:
                continue
            if f.base_name.endswith(_SUFFIX[fmt]) and (not check or _complete(fs, f.path, fmt)):
                fs.move(f.path, posixpath.join(folder, f.base_name))
                kept += 1
            else:
                dropped += 1
        fs.delete_dir(run.path)
    return kept, dropped


def _make_sink(path: str, fmt: str, run_id: str):
    """A Ray datasink writing this run's part files: Parquet (``scores`` a JSON string) or the
    single-process scan's JSONL lines (``scores`` an object). Each write task returns its
    (rows, errors) and the driver's copy sums them in ``on_write_complete``, so the summary
    needs no second pass over the output. Defined here because it needs Ray."""
    from ray.data.block import BlockAccessor
    from ray.data.datasource import BlockBasedFileDatasink, FilenameProvider

    class Parts(FilenameProvider):
        def get_filename_for_task(self, write_uuid, task_index):
            return f"part-{run_id}-{write_uuid[:8]}-{task_index:06d}{_SUFFIX[fmt]}"

    class ResultSink(BlockBasedFileDatasink):
        def __init__(self):
            super().__init__(path, filename_provider=Parts())
            self.written = self.errors = 0

        def write(self, blocks, ctx):
            blocks = list(blocks)
            rows = bad = 0
            for b in blocks:
                acc = BlockAccessor.for_block(b)
                rows += acc.num_rows()
                if acc.num_rows():
                    bad += sum(e is not None for e in acc.to_arrow().column("error").to_pylist())
            super().write(blocks, ctx)      # one file per task; nothing when no rows
            return rows, bad

        def write_block_to_file(self, block, file):
            from ofa_sdk.scan_output import jsonl_lines
            table = block.to_arrow().select(list(RESULT_FIELDS))
            if fmt == "parquet":
                import pyarrow.parquet as pq
                pq.write_table(table, file)
                return
            file.write(jsonl_lines(table))

        def on_write_complete(self, write_result):
            super().on_write_complete(write_result)
            for rows, bad in write_result.write_returns:
                self.written += rows
                self.errors += bad

    return ResultSink()


def _read_output(ray, files: List[str], fmt: str, column: str):
    """A Ray dataset of one column of the part files ``files`` (paths of one filesystem)."""
    if fmt == "parquet":
        return ray.data.read_parquet(files).select_columns([column])

    def pick(batch):
        return {column: np.array([json.loads(t)[column] for t in batch["text"]], dtype=object)}
    return ray.data.read_text(files).map_batches(pick, batch_format="numpy")


def _build_done(*blocks) -> Tuple[np.ndarray, int]:
    """One Ray task: the sorted, unique keys of every finished source (and their count)."""
    parts = [np.stack([np.asarray(b["h0"]), np.asarray(b["h1"])], 1) for b in blocks]
    keys = np.unique(_as_key(np.concatenate(parts))) if parts else np.zeros(0, "S16")
    return keys, int(len(keys))


def _hash_sources(batch):
    """The resume key of each written row: its source as written (escaped,
    :func:`ofa_sdk.scan_output.escape_name`) back to the path it names."""
    from .scan_output import unescape_name
    h = _halves(unescape_name(str(s)) for s in batch["source"])
    return {"h0": h[:, 0], "h1": h[:, 1]}


# -- inputs ----------------------------------------------------------------------------------
def _groups(sources) -> Tuple[Dict[str, Dict[str, List[str]]], List[str]]:
    """Sources -> ({scheme: {"dirs": [...], "files": [...]}}, missing local paths). Local
    globs are expanded here; folders are listed by Ray."""
    from pyarrow.fs import FileType
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    groups: Dict[str, Dict[str, List[str]]] = {}
    missing: List[str] = []
    for s in sources:
        s = str(s)
        if "://" in s:
            scheme = s.split("://", 1)[0]
            fs, path = _fs(s)
            t = fs.get_file_info(path).type
            g = groups.setdefault(scheme, {"dirs": [], "files": []})
            if t == FileType.Directory:
                g["dirs"].append(s)
            elif t == FileType.File:
                g["files"].append(s)
            else:
                raise FileNotFoundError(f"{s}: not found")
            continue
        g = groups.setdefault("", {"dirs": [], "files": []})
        p = _abs(s)
        if os.path.isdir(p):
            g["dirs"].append(p)
        elif any(ch in s for ch in "*?["):
            g["files"] += [_abs(f) for f in sorted(_glob.glob(s, recursive=True))
                           if os.path.isfile(f)]
        elif os.path.isfile(p):
            g["files"].append(p)
        else:
            missing.append(p)
    return groups, missing


def _default_concurrency(ray, num_gpus: float) -> int:
    res = ray.cluster_resources()
    if num_gpus:
        return max(1, int(res.get("GPU", 0) // num_gpus))
    return max(1, int(res.get("CPU", 1)) // 2)


# -- the entry point -------------------------------------------------------------------------
def scan_dataset(sources, output: str, *, model=None, gallery=None,
                 profiles: Optional[Sequence[str]] = None,
                 threshold: Union[float, str, None] = None, crops: Union[int, str] = imio.AUTO,
                 small: str = "reject", backend: str = "auto", address: Optional[str] = None,
                 batch_size: int = 32, concurrency: Union[int, Tuple[int, int], None] = None,
                 num_gpus: float = 0, format: Optional[str] = None,
                 rule: Optional[str] = None, whiten: Optional[str] = None,
                 max_bytes: int = imio.MAX_BYTES, engine_options: Optional[Dict] = None,
                 allow_mismatch: bool = False, profile_quantile: float = DEFAULT_FRACTION,
                 ambiguity_margin: Optional[float] = None,
                 choose_head: Optional[str] = None) -> Dict[str, Any]:
    """Attribute every image of ``sources`` on a Ray cluster; write one row per input into the
    folder ``output`` (Parquet or JSONL part files); skip sources already written there.

    ``sources``: local folders, globs or files, or URIs Ray's readers accept (``s3://...``).
    ``model``/``gallery``/``profiles``/``threshold``/``crops``/``small``/``rule``/``whiten``/
    ``profile_quantile``/``ambiguity_margin``/``choose_head``: as for
    :class:`~ofa_sdk.Attributor` and :meth:`~ofa_sdk.Attributor.snapshot`. ``backend``: the
    engine each actor builds. ``address``: the Ray cluster (``ray.init(address)``; default: the
    running one, ``$RAY_ADDRESS``, or a local one). ``batch_size``: images per batch in both
    stages. ``concurrency``: actors (an int or a (min, max) range; default: the cluster's GPUs
    / ``num_gpus``, or half its CPUs). ``num_gpus``: GPUs per actor (fractions share a GPU).
    ``format``: ``"parquet"`` or ``"jsonl"`` (default: from ``output``'s suffix).
    ``max_bytes``: the largest input used (Ray's reader has read the file by then; larger ones
    are error rows); ``engine_options``: per engine, its constructor's keyword arguments (as
    for :class:`~ofa_sdk.Attributor`, e.g. ``{"onnxruntime": {"graphs_dir": DIR}}``).

    What made the rows is recorded beside a local output folder, ``NAME.run.json``
    (:func:`ofa_sdk.scan_output.run_record`, as ``Attributor.scan`` records it): resuming into
    a folder whose rows another model, rule, threshold policy or gallery made raises
    :class:`~ofa_sdk.scan_output.ScanMismatch` unless ``allow_mismatch``. Outputs on remote
    file systems (``s3://``) get no record.

    Returns a summary: output, format, run id, rows written, errors among them, sources
    skipped because already written, and part files salvaged from an interrupted run.
    """
    ray = _ray()
    from .pipeline import InputPolicy
    from .snapshot import make_snapshot
    from .weights import as_bundle

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    fmt = _format_of(str(output), format)
    output = _abs(str(output))
    fs, out_path = _fs(output)
    from pyarrow.fs import FileType
    if fs.get_file_info(out_path).type == FileType.File:
        raise ValueError(f"{output} is a file; the distributed scan writes a folder of part files "
                         f"(the single-process `ofa-sdk scan` writes one file)")
    if not ray.is_initialized():
        ray.init(address=address, **({} if address else {"include_dashboard": False}))

    # the driver: the snapshot (profiles, rule state, thresholds), made once from the gallery
    # and the model (no engine), put once
    from .gallery import Gallery
    from .scan_output import describe_run, run_record
    bundle = as_bundle(model)
    policy = InputPolicy(bundle.config.crop, crops, small, max_bytes=max_bytes)
    gallery = gallery if isinstance(gallery, Gallery) else Gallery(gallery)
    snap = make_snapshot(bundle, gallery, rule, threshold, profiles, profile_quantile,
                         whiten=whiten, margin=ambiguity_margin, chooser=choose_head)
    snap_ref = ray.put(snap)
    model_arg = model_ref = None
    if model is not None:
        model_arg = str(getattr(model, "path", model))
        with open(model_arg, "rb") as f:
            model_ref = ray.put(f.read())

    # resume: settle an interrupted run's files, then the finished sources as a sorted key set
    fs.create_dir(out_path, recursive=True)
    salvaged, torn = _settle(fs, posixpath.join(out_path, STAGING), out_path, fmt)
    existing = _part_files(fs, out_path, fmt)
    if "://" not in output:     # refused before any work when the rows there are another run's
        run_record(output, describe_run(snap.model_id, snap.rule, snap.policy, snap.fraction,
                                        crops, gallery, profiles, snap.margin, choose_head),
                   bool(existing), allow_mismatch)
    done_ref, n_done = None, 0
    if existing:
        files = [_join(output, posixpath.basename(p)) for p in existing]
        keys = _read_output(ray, files, fmt, "source").map_batches(_hash_sources,
                                                                     batch_format="numpy")
        build = ray.remote(num_returns=2)(_build_done)
        done_ref, n_ref = build.remote(*keys.to_numpy_refs())
        n_done = ray.get(n_ref)

    # read + input policy
    groups, missing = _groups(sources)
    kw = dict(policy=policy, done_ref=done_ref)
    parts = []
    for scheme, g in groups.items():
        for what, paths in (("dirs", g["dirs"]), ("files", g["files"])):
            if not paths:
                continue
            ds = ray.data.read_binary_files(paths, include_paths=True,
                                            file_extensions=_EXTENSIONS if what == "dirs" else None)
            parts.append(ds.map_batches(_decode, batch_size=batch_size, batch_format="numpy",
                                        fn_kwargs=dict(kw, scheme=scheme),
                                        **_DECODE_ARGS))
    if missing:
        ds = ray.data.from_items([{"path": p} for p in missing])
        parts.append(ds.map_batches(_decode, batch_size=batch_size, batch_format="numpy",
                                    fn_kwargs=dict(kw, missing=True),
                                    **_DECODE_ARGS))
    if not parts:
        raise ValueError("no sources given")
    ds = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]

    # engine + score rule + decision, one engine per actor
    n_actors = concurrency or _default_concurrency(ray, num_gpus)
    pool = (ray.data.ActorPoolStrategy(min_size=n_actors[0], max_size=n_actors[1])
            if isinstance(n_actors, (tuple, list)) else ray.data.ActorPoolStrategy(size=n_actors))
    ds = ds.map_batches(
        _ScoreActor, batch_size=batch_size, batch_format="numpy", compute=pool,
        num_gpus=num_gpus or None,
        fn_constructor_kwargs=dict(snapshot=snap_ref, model=model_arg, model_ref=model_ref,
                                   backend=backend, options=engine_options,
                                   device="cpu" if (backend == "auto" and not num_gpus) else None))

    # write into the run's staging folder, then move the finished files in
    run_id = time.strftime("%Y%m%d%H%M%S") + "-" + uuid.uuid4().hex[:8]
    staging = _join(output, STAGING, run_id)
    sink = _make_sink(staging, fmt, run_id)
    ds.write_datasink(sink)
    _settle(fs, posixpath.join(out_path, STAGING), out_path, fmt, check=False)
    try:
        fs.delete_dir(posixpath.join(out_path, STAGING))
    except (FileNotFoundError, OSError):
        pass
    new = [p for p in _part_files(fs, out_path, fmt)
           if posixpath.basename(p).startswith(f"part-{run_id}-")]
    return {"output": output, "format": fmt, "run_id": run_id, "written": sink.written,
            "errors": sink.errors, "skipped_already_done": n_done, "files": len(new),
            "salvaged_files": salvaged, "torn_files_dropped": torn, "actors": n_actors}
