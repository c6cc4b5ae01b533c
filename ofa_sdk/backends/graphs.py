"""The inference graphs compiled engines run, exported to ONNX from the reference model.

Two graphs, with the FFT between them kept outside (ONNX Runtime's DFT op is far slower than a
native real FFT on the CPU): the spectrum runs through
:func:`ofa_sdk.models.spectrum.log_spectrum` (the dispatched kernel or the torch path).

* ``residual``:  (B, c, c, 3) uint8 crops -> (B, C, h, w) float32 residual in grey levels
  (C = 3);
* ``extractor``: (B, C, h, w) float32 log-spectrum -> (B, d) float32 unit fingerprint.

Both have a dynamic batch axis (opset 18). Each file carries the model id, the configuration
and the calibration in its metadata, so a cached graph is only reused for the model it was made
from (:func:`check_graph`). The graphs are exported from the same torch module the reference
engine runs, with the kernels' reference paths forced on while exporting.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Dict, Optional, Tuple

OPSET = 18
GRAPHS = ("residual", "extractor")
INPUTS = {"residual": "crops", "extractor": "spectrum"}
OUTPUTS = {"residual": "residual", "extractor": "fingerprint"}
FORMAT_VERSION = 2                 # bumped when the graphs' contract changes (2: Cast first)


def default_cache_dir() -> Path:
    return Path(os.environ.get("OFA_SDK_CACHE", Path.home() / ".cache" / "ofa-sdk")) / "engines"


def residual_shape(config) -> Tuple[int, int, int]:
    """(channels, h, w) of the residual (and spectrum) for the model's crop."""
    import torch
    from ..models import OFAModel
    with torch.no_grad():
        r = OFAModel(config).eval().residual(torch.zeros(1, 3, config.crop, config.crop))
    return tuple(r.shape[-3:])


def _modules(model):
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, crops):
            # cast first: TensorRT takes a uint8 network input only into a Cast (or Identity)
            # layer, so the graph's first node on ``crops`` must be the Cast, not the Transpose
            return self.model.residual(crops.to(torch.float32).permute(0, 3, 1, 2).div(255.0))

    class Extractor(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, spectrum):
            return F.normalize(self.model.extract(spectrum).float(), dim=-1)

    return {"residual": Residual().eval(), "extractor": Extractor().eval()}


def metadata(bundle, graph: str) -> Dict[str, str]:
    return {"ofa_sdk.model_id": bundle.model_id, "ofa_sdk.graph": graph,
            "ofa_sdk.format": str(FORMAT_VERSION),
            "ofa_sdk.config": json.dumps(bundle.config.to_dict()),
            "ofa_sdk.calibration": json.dumps(bundle.meta.get("calibration", {}))}


def export_graphs(bundle, out_dir, batch: int = 2) -> Dict[str, Path]:
    """Write ``residual.onnx`` and ``extractor.onnx`` for ``bundle`` into ``out_dir``
    (atomically: each file appears complete or not at all). Returns their paths."""
    import onnx
    import torch
    from torch.export import Dim

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    c = bundle.config.crop
    examples = {"residual": torch.zeros(batch, c, c, 3, dtype=torch.uint8),
                "extractor": torch.zeros(batch, *residual_shape(bundle.config))}
    paths = {}
    for name, module in _modules(bundle.model).items():
        with torch.no_grad(), _quiet():
            prog = torch.onnx.export(module, (examples[name],), dynamo=True, opset_version=OPSET,
                                     input_names=[INPUTS[name]], output_names=[OUTPUTS[name]],
                                     dynamic_shapes=({0: Dim("batch", min=1, max=4096)},),
                                     verbose=False)
        proto = prog.model_proto
        for k, v in metadata(bundle, name).items():
            proto.metadata_props.add(key=k, value=v)
        path = out_dir / f"{name}.onnx"
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
        onnx.save(proto, str(tmp))
        os.replace(tmp, path)
        paths[name] = path
    return paths


@contextlib.contextmanager
def _quiet():
    """The exporter's warnings and log lines are about torch internals, not the user's input."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch._dynamo", "torch.export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def _varint(buf: bytes, pos: int) -> Tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("truncated or malformed protobuf varint")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, pos


def _fields(buf: bytes):
    """(field number, value) of a protobuf message's top-level fields; a length-delimited value
    as bytes, a varint as int, fixed-width ones skipped. ValueError on a malformed message."""
    pos = 0
    while pos < len(buf):
        tag, pos = _varint(buf, pos)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 2:
            n, pos = _varint(buf, pos)
            if pos + n > len(buf):
                raise ValueError("truncated protobuf field")
            value, pos = buf[pos:pos + n], pos + n
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
            continue
        else:
            raise ValueError(f"protobuf wire type {wire} is not ONNX")
        yield field, value


METADATA_PROPS = 14        # ModelProto.metadata_props (StringStringEntryProto: key 1, value 2)


def read_metadata(path) -> Dict[str, str]:
    """An ONNX file's ``metadata_props``, read from the protobuf's top-level fields without
    importing ``onnx`` (whose import costs most of a CLI call's start); ValueError when the file
    is not a well-formed protobuf message."""
    out = {}
    for field, value in _fields(Path(path).read_bytes()):
        if field == METADATA_PROPS and isinstance(value, bytes):
            entry = dict(_fields(value))
            out[bytes(entry.get(1, b"")).decode()] = bytes(entry.get(2, b"")).decode()
    return out


def check_graph(path, model_id: str, graph: str) -> Optional[str]:
    """None when ``path`` is a usable graph of model ``model_id``, else why not (its metadata
    names the model, the graph and the format; the runtime that opens it checks the rest)."""
    path = Path(path)
    if not path.is_file():
        return f"{path} does not exist"
    try:
        md = read_metadata(path)
    except (OSError, ValueError, UnicodeDecodeError) as e:  # truncated or not ONNX
        return f"{path} is not a readable ONNX file: {e}"
    if md.get("ofa_sdk.model_id") != model_id:
        return f"{path} was exported from model {md.get('ofa_sdk.model_id')}, not {model_id}"
    if md.get("ofa_sdk.graph") != graph or md.get("ofa_sdk.format") != str(FORMAT_VERSION):
        return f"{path} is not a format-{FORMAT_VERSION} {graph!r} graph"
    return None


def read_graphs(folder, model_id: str, suffix: str = "", check=None) -> Dict[str, Path]:
    """The graphs of model ``model_id`` in ``folder`` (``<graph><suffix>.onnx``, as
    ``ofa-sdk export --format onnx -o FOLDER`` writes them), each checked by ``check`` (default
    :func:`check_graph`); raises ValueError naming the folder and the first graph that does not
    match. Nothing is exported there: a folder the user names is read, never written."""
    check = check or check_graph
    paths = {g: Path(folder) / f"{g}{suffix}.onnx" for g in GRAPHS}
    for g, p in paths.items():
        why = check(p, model_id, g)
        if why:
            raise ValueError(f"graphs_dir {str(folder)!r} does not hold this model's graphs: {why} "
                             f"(write them with `ofa-sdk export --format onnx -o {folder}`)")
    return paths


def ensure_graphs(bundle, cache_dir=None, graphs_dir=None) -> Dict[str, Path]:
    """The graphs of ``bundle``: those in ``graphs_dir`` when given (:func:`read_graphs`), else
    those shipped beside its model file (``<model folder>/engines/<model id>/``, as for the
    default model) when they match it, else ``cache_dir/<model id>/``, exported there first when
    missing, stale or foreign (a graph of another model is never reused)."""
    if graphs_dir is not None:
        return read_graphs(graphs_dir, bundle.model_id)
    shipped = Path(bundle.path).parent / "engines" / bundle.model_id
    paths = {g: shipped / f"{g}.onnx" for g in GRAPHS}
    if not any(check_graph(p, bundle.model_id, g) for g, p in paths.items()):
        return paths
    folder = Path(cache_dir or default_cache_dir()) / bundle.model_id
    paths = {g: folder / f"{g}.onnx" for g in GRAPHS}
    if any(check_graph(p, bundle.model_id, g) for g, p in paths.items()):
        export_graphs(bundle, folder)
    for g, p in paths.items():
        why = check_graph(p, bundle.model_id, g)
        if why:
            raise RuntimeError(f"exported graph unusable: {why}")
    return paths
