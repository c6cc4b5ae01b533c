"""ONNX Runtime int8 static quantisation (issue 13): measured, not shipped unless it pays.

    python benchmarks/ort_int8.py --photos ../shared/data/real-photos --wild benchmarks/data/wild \
        [--out benchmarks/results/ort_int8.json]

Both graphs of the shipped model are quantised by the SDK's quantiser
(``ofa_sdk.backends.quantize.quantize_graphs``: QDQ, per-channel int8 weights, convolutions and
matrix products), calibrated on crops of *training* photos (the residual graph on the crops, the
extractor graph on their log-spectra). Variants: uint8 activations (ONNX Runtime's scheme) with
every layer quantised or the first and last layer of each graph kept in float; and the scheme
TensorRT's int8 engines are built from (symmetric int8 activations, biases in float, ends in
float), run here by ONNX Runtime as a proxy of its accuracy (not of TensorRT's speed or
kernels). Each variant runs
as an engine against the Protocol (one class below, registered under a benchmark-only name) and
is compared with the float32 ONNX Runtime engine in the same run: crops/s at batch 64, and the
mean 1-vs-1 AUC of the prototype rule on the wild set (1 crop; support 75, queries 100). The
issue's bar for an option or a default: measured faster *and* AUC within 0.005.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


from ofa_sdk.backends.onnxruntime import OnnxRuntimeEngine  # noqa: E402


class Int8Engine(OnnxRuntimeEngine):
    """The ONNX Runtime engine itself (same session options, same spectrum path: for a
    high-pass model the stencil fused into the C++ spectrum, no residual graph) opening the
    quantised graphs instead of the float ones (set by the benchmark before use)."""
    name = "ort-int8"
    graphs = {}

    def _graph_paths(self, bundle, cache_dir, graphs_dir) -> dict:
        return self.graphs


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", required=True)
    ap.add_argument("--wild", default="benchmarks/data/wild")
    ap.add_argument("--calib", type=int, default=256, help="calibration crops")
    ap.add_argument("--out", default="benchmarks/results/ort_int8.json")
    a = ap.parse_args(argv)
    torch.set_num_threads(2)
    from eval_wild import load_classes
    from ofa_sdk import Attributor
    from ofa_sdk.backends import ENGINES, register
    from ofa_sdk.backends.graphs import ensure_graphs
    from ofa_sdk.backends.quantize import quantize_graphs
    from ofa_sdk.evaluation.runner import evaluate
    from ofa_sdk.images import from_tensor
    from ofa_sdk.training.common import PhotoSet
    from ofa_sdk.weights import load_default_model
    bundle = load_default_model()
    graphs = ensure_graphs(bundle)
    g = torch.Generator().manual_seed(0)
    train = PhotoSet(a.photos, split="train")
    crops = from_tensor(train.batch(a.calib, bundle.config.crop, g))
    classes = load_classes(Path(a.wild))
    x = np.random.default_rng(0).integers(0, 256, (64, bundle.config.crop, bundle.config.crop, 3), dtype=np.uint8)
    report = {"calibration_crops": a.calib, "variants": {}}
    register("ort-int8", f"{__name__}:Int8Engine")
    with tempfile.TemporaryDirectory() as tmp:
        variants = {"float32": None,
                    "int8-all": quantize_graphs(graphs, crops, tmp, for_tensorrt=False,
                                                keep_ends=False, suffix=".all"),
                    "int8-ends-float": quantize_graphs(graphs, crops, tmp, for_tensorrt=False,
                                                       keep_ends=True, suffix=".ends"),
                    "int8-tensorrt-scheme": quantize_graphs(graphs, crops, tmp, for_tensorrt=True)}
        for name, qpaths in variants.items():
            if qpaths is None:
                att = Attributor(model=bundle, backend="onnxruntime", crops=1, batch_size=64, strict=True)
            else:
                Int8Engine.graphs = qpaths
                att = Attributor(model=bundle, backend="ort-int8", crops=1, batch_size=64, strict=True)
            att.engine.embed(x)
            ts = []
            for _ in range(5):
                t0 = time.perf_counter()
                att.engine.embed(x)
                ts.append(time.perf_counter() - t0)
            res = evaluate(att, classes, 75, 100, 0, None, baseline=False)
            report["variants"][name] = {"crops_per_s": len(x) / float(np.median(ts)),
                                        "wild_mean_1v1_auc": res["ours"].mean_1v1}
            print(name, json.dumps(report["variants"][name]), flush=True)
    ENGINES.pop("ort-int8", None)
    f32 = report["variants"]["float32"]
    for v in report["variants"].values():
        v["speed_ratio_to_float32"] = v["crops_per_s"] / f32["crops_per_s"]
        v["auc_change"] = v["wild_mean_1v1_auc"] - f32["wild_mean_1v1_auc"]
    Path(a.out).write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
