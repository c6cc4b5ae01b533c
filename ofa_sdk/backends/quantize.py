"""Int8 versions of the two inference graphs: static post-training quantisation, calibrated on
crops of real photos, written as ONNX QDQ graphs (explicit quantisation).

One home for the quantiser, used by two paths:

* TensorRT (``precision="int8"``): TensorRT builds an explicitly quantised engine from QDQ
  graphs. What it needs of them (its "explicit quantization" documentation): Q/DQ pairs, int8
  *symmetric* scales (zero points 0) for activations and weights, weights per output channel.
  :func:`quantize_graphs` with ``for_tensorrt=True`` writes exactly that.
* ONNX Runtime: ``benchmarks/ort_int8.py`` measured int8 there (uint8 activations,
  ``for_tensorrt=False``) and it is not offered: it did not hold quality at a speed-up that paid
  (benchmarks/RESULTS.md, section 6.2b).

Only convolutions and matrix products are quantised; by default the first and last of each graph
stay in float (``keep_ends``), where quantisation error costs most. The graphs keep the float
graphs' metadata (model id, configuration) plus ``ofa_sdk.precision = int8`` and a record of the
calibration, so a cached int8 graph is only reused for the model it was made from.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np

from .graphs import (GRAPHS, INPUTS, check_graph, default_cache_dir, ensure_graphs,
                     read_graphs, read_metadata)

QUANTIZED_OPS = ("Conv", "Gemm", "MatMul")
CALIBRATION_CROPS = 256       # crops per calibration (MinMax ranges settle well before this)
CALIBRATION_BATCH = 32


def calibration_crops(photos: Iterable, crop: int, n: int = CALIBRATION_CROPS) -> np.ndarray:
    """(m <= n, crop, crop, 3) uint8 crops of real photos: ``photos`` is a folder (its images,
    sorted) or a sequence of image inputs; each image gives its default ("auto") crops. Images
    that do not decode are skipped; none at all raises ValueError naming the input."""
    from ..images import list_images, make_crops, to_rgb
    items = list_images(photos) if isinstance(photos, (str, os.PathLike)) else list(photos)
    out: List[np.ndarray] = []
    total = 0
    for item in items:
        try:
            arr = to_rgb(item)
        except (OSError, ValueError, TypeError):
            continue
        if min(arr.shape[:2]) < crop:
            continue
        c = make_crops(arr, crop, "auto")
        out.append(c[: n - total])
        total += len(out[-1])
        if total >= n:
            break
    if not out:
        raise ValueError(f"calibration photos {photos!r}: no image of at least {crop}x{crop} px decoded")
    return np.concatenate(out)


class _Reader:
    """onnxruntime.quantization's calibration reader over a list of input batches."""

    def __init__(self, name: str, batches: Sequence[np.ndarray]):
        self.name, self.it = name, iter(batches)

    def get_next(self):
        b = next(self.it, None)
        return None if b is None else {self.name: b}


def quantized_names(path) -> List[str]:
    """The names of the nodes :func:`quantize_graphs` quantises in a float graph, in order."""
    import onnx
    return [n.name for n in onnx.load(str(path)).graph.node if n.op_type in QUANTIZED_OPS]


def quantize_graphs(float_graphs: Dict[str, Path], crops: np.ndarray, dest, *,
                    for_tensorrt: bool = True, keep_ends: bool = True,
                    suffix: Optional[str] = None) -> Dict[str, Path]:
    """QDQ int8 graphs of ``float_graphs`` (``graphs.ensure_graphs``), calibrated (MinMax) on
    ``crops`` (uint8 (n, c, c, 3): the residual graph on them, the extractor graph on their
    log-spectra), written atomically to ``dest/<graph><suffix>.onnx``. ``for_tensorrt``: int8
    symmetric activations (TensorRT's scheme), else uint8 (ONNX Runtime's default)."""
    import onnx
    import onnxruntime as ort
    import torch
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from ..models.spectrum import log_spectrum
    crops = np.ascontiguousarray(crops, np.uint8)
    if crops.ndim != 4 or len(crops) == 0:
        raise ValueError(f"calibration crops must be a non-empty (n, c, c, 3) uint8 array, got {crops.shape}")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    suffix = suffix if suffix is not None else (".int8" if for_tensorrt else ".int8-ort")
    batches = [crops[i:i + CALIBRATION_BATCH] for i in range(0, len(crops), CALIBRATION_BATCH)]
    sess = ort.InferenceSession(str(float_graphs["residual"]), providers=["CPUExecutionProvider"])
    spectra = [log_spectrum(torch.from_numpy(sess.run(None, {INPUTS["residual"]: b})[0])).numpy()
               for b in batches]
    inputs = {"residual": batches, "extractor": spectra}
    act = QuantType.QInt8 if for_tensorrt else QuantType.QUInt8
    # TensorRT: int8 Q/DQ only (no int32 bias dequantisation: biases stay in float)
    extra = ({"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False}
             if for_tensorrt else {})
    paths = {}
    for g in GRAPHS:
        src = Path(float_graphs[g])
        names = quantized_names(src)
        # with keep_ends the first and last stay float even when that is all there is (the
        # high-pass residual graph is one fixed 3x3 stencil: quantising it would cut the very
        # high frequencies the fingerprint reads)
        keep = sorted({names[0], names[-1]}) if keep_ends and names else []
        path = dest / f"{g}{suffix}.onnx"
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
        quantize_static(str(src), str(tmp), _Reader(INPUTS[g], inputs[g]),
                        quant_format=QuantFormat.QDQ, per_channel=True, weight_type=QuantType.QInt8,
                        activation_type=act, calibrate_method=CalibrationMethod.MinMax,
                        op_types_to_quantize=list(QUANTIZED_OPS), nodes_to_exclude=keep,
                        extra_options=extra)
        proto = onnx.load(str(tmp))
        md = read_metadata(src)
        md.update({"ofa_sdk.precision": "int8",
                   "ofa_sdk.int8": json.dumps({"crops": int(len(crops)), "method": "minmax",
                                               "activations": "int8 symmetric" if for_tensorrt else "uint8",
                                               "float_nodes": keep})})
        del proto.metadata_props[:]
        for k, v in md.items():
            proto.metadata_props.add(key=k, value=v)
        onnx.save(proto, str(tmp))
        os.replace(tmp, path)
        paths[g] = path
    return paths


def check_int8_graph(path, model_id: str, graph: str) -> Optional[str]:
    """None when ``path`` is an int8 graph of model ``model_id``, else why not."""
    why = check_graph(path, model_id, graph)
    if why:
        return why
    if read_metadata(path).get("ofa_sdk.precision") != "int8":
        return f"{path} is not an int8 graph"
    return None


def int8_paths(folder) -> Dict[str, Path]:
    return {g: Path(folder) / f"{g}.int8.onnx" for g in GRAPHS}


def ensure_int8_graphs(bundle, calibration=None, cache_dir=None,
                       graphs_dir=None) -> Dict[str, Path]:
    """The TensorRT int8 graphs of ``bundle``: made from its float graphs and ``calibration`` (a
    folder of real photos, or image inputs) into ``cache_dir/<model id>/`` when given
    (replacing any there); else those in ``graphs_dir`` when given (as ``ofa-sdk export --format
    onnx --int8 PHOTOS -o DIR`` writes them; checked, never written); else the ones made before,
    beside the model file (``engines/<model id>/``, where that command writes them without
    ``-o``) or in the cache. Raises ValueError when there are none and no photos were given."""
    if calibration is not None and graphs_dir is not None:
        raise ValueError("give calibration (photos to make int8 graphs from) or graphs_dir (a "
                         "folder of int8 graphs made before), not both")
    if graphs_dir is not None:
        return read_graphs(graphs_dir, bundle.model_id, ".int8", check_int8_graph)
    cache = Path(cache_dir or default_cache_dir()) / bundle.model_id
    if calibration is not None:
        crops = calibration_crops(calibration, bundle.config.crop)
        quantize_graphs(ensure_graphs(bundle, cache_dir), crops, cache, for_tensorrt=True)
        folders = [cache]
    else:
        folders = [Path(bundle.path).parent / "engines" / bundle.model_id, cache]
    whys = []
    for folder in folders:
        paths = int8_paths(folder)
        whys = [w for g, p in paths.items() if (w := check_int8_graph(p, bundle.model_id, g))]
        if not whys:
            return paths
    raise ValueError("int8 needs calibration on real photos: pass calibration=<folder of photos> "
                     "(engine option) or run `ofa-sdk export --format onnx --int8 PHOTOS`; "
                     f"{whys[0]}")
