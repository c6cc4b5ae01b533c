"""The int8 (QDQ) graphs TensorRT's int8 engines are built from: what can be checked without
TensorRT. They are made from the shipped model's graphs, calibrated on real photos (the sample
photos scikit-learn ships); TensorRT's requirements for explicit quantisation are checked on the
graph (symmetric int8 scales, operators its ONNX parser takes), and the graph itself runs in
ONNX Runtime, whose fingerprints must stay close to the float graph's."""
import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
pytest.importorskip("sklearn")

from ofa_sdk.backends.graphs import ensure_graphs, read_metadata  # noqa: E402
from ofa_sdk.backends.quantize import (calibration_crops, ensure_int8_graphs,  # noqa: E402
                                       quantize_graphs, quantized_names)
from ofa_sdk.backends.tensorrt import TRT_PARSER_OPS  # noqa: E402
from ofa_sdk.weights import load_default_model  # noqa: E402


@pytest.fixture(scope="module")
def photos():
    from sklearn.datasets import load_sample_images
    return list(load_sample_images().images)


@pytest.fixture(scope="module")
def shipped():
    return load_default_model()


@pytest.fixture(scope="module")
def int8(shipped, photos, tmp_path_factory):
    crops = calibration_crops(photos, shipped.config.crop)
    folder = tmp_path_factory.mktemp("int8")
    return quantize_graphs(ensure_graphs(shipped), crops, folder), crops


def test_calibration_crops(photos, tmp_path):
    c = calibration_crops(photos, 96, n=6)
    assert c.shape == (6, 96, 96, 3) and c.dtype == np.uint8
    assert calibration_crops(photos, 96, n=1000).shape[0] == 2 * 4      # "auto": 4 crops each
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="no image of at least 96x96 px decoded"):
        calibration_crops(tmp_path, 96)


def test_graphs_meet_tensorrt_explicit_quantization(int8, shipped):
    import onnx
    from onnx import numpy_helper
    paths, crops = int8
    for g, p in paths.items():
        model = onnx.load(str(p))
        md = read_metadata(p)
        assert md["ofa_sdk.model_id"] == shipped.model_id and md["ofa_sdk.precision"] == "int8"
        ops = {n.op_type for n in model.graph.node}
        float_names = quantized_names(ensure_graphs(shipped)[g])
        if len(float_names) > 2:        # else every node is an end, kept in float
            assert {"QuantizeLinear", "DequantizeLinear"} <= ops
        assert ops <= TRT_PARSER_OPS, ops - TRT_PARSER_OPS
        inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        zps = [n.input[2] for n in model.graph.node
               if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2]
        assert zps or len(float_names) <= 2
        assert all(inits[z].dtype == np.int8 and not inits[z].any() for z in zps)  # symmetric int8
        # the first and last convolution/matmul stay in float: no DQ feeds their weights
        dq_out = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
        by_name = {n.name: n for n in model.graph.node}
        for name in float_names[:1] + float_names[-1:]:     # none in a graph without weights
            assert by_name[name].input[1] not in dq_out, name
        assert len(float_names) <= 2 or any(by_name[n].input[1] in dq_out for n in float_names[1:-1])
    assert any(len(quantized_names(ensure_graphs(shipped)[g])) > 2 for g in paths)   # something is int8


def test_int8_graphs_run_close_to_float(int8, shipped, photos):
    """ONNX Runtime runs the QDQ graphs (a check of the graphs, not of TensorRT's kernels)."""
    import onnxruntime as ort
    import torch
    from ofa_sdk.models.spectrum import log_spectrum
    paths, _ = int8
    crops = calibration_crops(photos[::-1], shipped.config.crop, n=8)

    def run(graphs):
        s = {g: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for g, p in graphs.items()}
        r = s["residual"].run(None, {"crops": crops})[0]
        return s["extractor"].run(None, {"spectrum": log_spectrum(torch.from_numpy(r)).numpy()})[0]
    zf, zq = run(ensure_graphs(shipped)), run(paths)
    cos = (zf * zq).sum(1)       # unit fingerprints; a broken graph gives unrelated ones
    assert cos.min() > 0.9 and cos.mean() > 0.97, cos


def test_ensure_int8_graphs_needs_photos_once(shipped, photos, tmp_path):
    import shutil
    from ofa_sdk.weights import load_model
    # a copy of the model in a fresh folder: int8 graphs an earlier export left beside the
    # installed model must not answer for this test
    (tmp_path / "model").mkdir()
    shutil.copy(shipped.path, tmp_path / "model" / "m.safetensors")
    bundle = load_model(tmp_path / "model" / "m.safetensors")
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match="int8 needs calibration on real photos"):
        ensure_int8_graphs(bundle, cache_dir=cache)
    made = ensure_int8_graphs(bundle, photos, cache_dir=cache)
    assert ensure_int8_graphs(bundle, cache_dir=cache) == made      # found again, no photos
    assert all(p.parent == cache / bundle.model_id for p in made.values())


def test_cli_export_writes_int8_graphs(tmp_path, photos):
    import json
    from PIL import Image
    from ofa_sdk.cli import main
    for i, a in enumerate(photos):
        Image.fromarray(a).save(tmp_path / f"p{i}.png")
    out = tmp_path / "graphs"
    assert main(["export", "--format", "onnx", "--int8", str(tmp_path), "-o", str(out)]) == 0
    assert sorted(p.name for p in out.glob("*.onnx")) == [
        "extractor.int8.onnx", "extractor.onnx", "residual.int8.onnx", "residual.onnx"]
    assert json.loads(read_metadata(out / "residual.int8.onnx")["ofa_sdk.int8"])["crops"] == 8
    # what TensorRT's int8 path reads from that folder (graphs_dir=out), with no photos
    bundle = load_default_model()
    got = ensure_int8_graphs(bundle, graphs_dir=out)
    assert got == {g: out / f"{g}.int8.onnx" for g in ("residual", "extractor")}
    with pytest.raises(ValueError, match="not both"):
        ensure_int8_graphs(bundle, tmp_path, graphs_dir=out)
    (out / "extractor.int8.onnx").unlink()
    with pytest.raises(ValueError,
                       match=r"graphs_dir .*graphs.*extractor\.int8\.onnx does not exist"):
        ensure_int8_graphs(bundle, graphs_dir=out)
