"""What of the TensorRT engine can be checked without TensorRT: cache keys, the batch profile,
the stale-engine rule, the build lock, the exported graphs' operator set, and the refusal or
fallback when TensorRT is absent. The build and run paths need TensorRT and a GPU and are not
exercised here (README: "What was verified where")."""
import json
import threading
import time

import pytest

from ofa_sdk.backends.tensorrt import (TRT_PARSER_OPS, BatchProfile, atomic_write, cache_key,
                                       file_lock, record_matches)


def test_cache_key_covers_everything_an_engine_depends_on():
    base = dict(model_id="abc", gpu_name="NVIDIA H200", capability=(9, 0), trt_version="10.9.0",
                profile=BatchProfile(1, 32, 256), precision="fp16", graph="residual",
                source="0123456789ab")
    k = cache_key(**base)
    assert k == "abc-residual-0123456789ab-nvidia-h200-sm90-trt10.9.0-b1_32_256-fp16"
    for field, other in (("model_id", "abd"), ("gpu_name", "NVIDIA A100"), ("capability", (8, 0)),
                         ("trt_version", "10.10.0"), ("profile", BatchProfile(1, 16, 256)),
                         ("precision", "fp32"), ("precision", "int8"), ("graph", "extractor"),
                         ("source", "0123456789ac")):
        assert cache_key(**{**base, field: other}) != k, field
    with pytest.raises(ValueError, match="precision"):
        cache_key(**{**base, "precision": "int4"})


def test_batch_profile():
    with pytest.raises(ValueError):
        BatchProfile(4, 2, 8)
    p = BatchProfile(1, 8, 16)
    assert list(p.chunks(40)) == [(0, 16), (16, 32), (32, 40)] and list(p.chunks(0)) == []


def test_stale_or_foreign_engine_records_are_rejected(tmp_path):
    j = tmp_path / "e.json"
    assert not record_matches(j, "k1")                   # missing
    j.write_text("{not json")
    assert not record_matches(j, "k1")                   # torn
    j.write_text(json.dumps({"key": "k0"}))
    assert not record_matches(j, "k1")                   # another engine's record
    atomic_write(j, json.dumps({"key": "k1"}).encode())
    assert record_matches(j, "k1") and not list(tmp_path.glob("*.tmp"))


def test_build_lock_serialises_builders(tmp_path):
    order = []

    def builder(tag):
        with file_lock(tmp_path / "x.lock"):
            order.append(f"{tag}+")
            time.sleep(0.05)
            order.append(f"{tag}-")
    ts = [threading.Thread(target=builder, args=(i,)) for i in range(3)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert all(order[i][:-1] == order[i + 1][:-1] for i in range(0, 6, 2))


def test_exported_graphs_use_only_ops_the_tensorrt_parser_takes(tiny_model, tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    from ofa_sdk.backends.graphs import ensure_graphs
    from ofa_sdk.weights import load_default_model, load_model
    for bundle in (load_model(tiny_model), load_default_model()):
        for g, path in ensure_graphs(bundle, tmp_path).items():
            m = onnx.load(str(path))
            ops = {n.op_type for n in m.graph.node}
            assert "DFT" not in ops
            assert ops <= TRT_PARSER_OPS, (g, sorted(ops - TRT_PARSER_OPS))
            dims = m.graph.input[0].type.tensor_type.shape.dim
            assert dims[0].dim_param, "the batch axis must be dynamic"


def test_without_tensorrt_the_engine_refuses_and_the_facade_falls_back(tiny_model):
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed here: the refusal path does not apply")
    except ImportError:
        pass
    from ofa_sdk import Attributor
    from ofa_sdk.backends import EngineUnavailable
    with pytest.raises(EngineUnavailable, match="TensorRT is not installed"):
        Attributor(model=tiny_model, backend="tensorrt", strict=True)
    with pytest.warns(RuntimeWarning, match="falling back"):
        att = Attributor(model=tiny_model, backend="tensorrt")
    assert att.backend == "torch" and "TensorRT" in att.backend_note
