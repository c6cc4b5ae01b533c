"""Compiled engines against the reference torch engine.

ONNX Runtime runs here: parity on real photos (scikit-learn's sample images) and odd inputs,
for the shipped model and a tiny random one; dynamic batch; thread safety; the graph cache
(a graph exported from another model is never reused). TensorRT cannot be installed on these
machines: tests/test_tensorrt.py covers what does not need it.
"""
import importlib.util
import threading

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from ofa_sdk.backends import select_engine  # noqa: E402
from ofa_sdk.backends.graphs import check_graph, ensure_graphs, read_metadata  # noqa: E402
from ofa_sdk.weights import load_default_model, load_model  # noqa: E402


@pytest.fixture(scope="module")
def shipped():
    return load_default_model()


def engines(bundle, cache):
    return (select_engine("torch", bundle).engine,
            select_engine("onnxruntime", bundle, strict=True,
                          options={"onnxruntime": {"cache_dir": cache}}).engine)


def real_and_odd_crops(c):
    rng = np.random.default_rng(0)
    crops = [np.zeros((c, c, 3), np.uint8), np.full((c, c, 3), 255, np.uint8),
             rng.integers(0, 256, (c, c, 3), dtype=np.uint8),
             np.tile(np.arange(c, dtype=np.uint8)[:, None, None] * 2, (1, c, 3))]
    try:
        from sklearn.datasets import load_sample_images
        for p in load_sample_images().images:
            crops += [p[t:t + c, l:l + c] for t in (0, 150) for l in (0, 200, 400)]
    except ImportError:
        pass
    return np.ascontiguousarray(np.stack(crops))


@pytest.fixture(scope="module")
def tiny_highpass(tmp_path_factory):
    """A small random model with the fixed high-pass residual (the ONNX Runtime engine runs its
    stencil fused into the spectrum kernel instead of the residual graph)."""
    from ofa_sdk.testing import write_tiny_model
    return write_tiny_model(tmp_path_factory.mktemp("hp") / "tiny-highpass.safetensors", seed=1,
                            **{"spectrum.residual": "highpass"})


@pytest.mark.parametrize("which", ["shipped", "tiny", "tiny-highpass"])
def test_onnxruntime_matches_torch(which, shipped, tiny_model, tiny_highpass, tmp_path):
    bundle = shipped if which == "shipped" else load_model(
        {"tiny": tiny_model, "tiny-highpass": tiny_highpass}[which])
    ref, ort = engines(bundle, tmp_path)
    assert ort.name == "onnxruntime" and ort.model_id == bundle.model_id
    # a high-pass model runs its stencil in the spectrum kernel: no session for residual.onnx
    highpass = bundle.config.spectrum.residual == "highpass"
    assert sorted(ort.sessions) == (["extractor"] if highpass else ["extractor", "residual"])
    x = real_and_odd_crops(bundle.config.crop)
    zr, sr = ref.embed_spectra(x)
    zo, so = ort.embed_spectra(x)
    assert zo.dtype == np.float32 and zo.shape == zr.shape
    np.testing.assert_allclose(zo, zr, atol=1e-4, rtol=0)
    assert (1 - (zo * zr).sum(1)).max() < 1e-5
    # spectra (for show and the baselines), compared as magnitudes: float32 FFTs of the same
    # residual (in grey levels: about 255 at most) differ by about eps32 * H * W * 255 in
    # absolute terms (a ramp's Laplacian is exactly 0, so both give rounding noise there, far
    # apart in log1p)
    h, w = sr.shape[-2:]
    bound = 16 * np.finfo(np.float32).eps * h * w * 255
    err = np.abs(np.expm1(so.astype(np.float64)) - np.expm1(sr.astype(np.float64)))
    assert (err <= bound + 1e-3 * np.expm1(sr)).all(), (err / bound).max()
    for b in (1, 3):   # dynamic batch: a row never depends on the others
        np.testing.assert_allclose(ort.embed(x[:b]), zo[:b], atol=1e-5, rtol=0)


def test_onnxruntime_is_thread_safe(tiny_model, tmp_path):
    _, ort = engines(load_model(tiny_model), tmp_path)
    rng = np.random.default_rng(1)
    xs = [rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8) for _ in range(6)]
    want = [ort.embed(x) for x in xs]
    got = [None] * len(xs)

    def work(i):
        for _ in range(3):
            got[i] = ort.embed(xs[i])
    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


def test_graph_cache_is_keyed_on_the_model(shipped, tiny_model, tmp_path):
    tiny = load_model(tiny_model)
    paths = ensure_graphs(tiny, tmp_path)
    md = read_metadata(paths["residual"])
    assert md["ofa_sdk.model_id"] == tiny.model_id and md["ofa_sdk.graph"] == "residual"
    assert "config" in md["ofa_sdk.config"] or md["ofa_sdk.config"].startswith("{")
    assert check_graph(paths["extractor"], tiny.model_id, "extractor") is None
    assert "not " in check_graph(paths["extractor"], shipped.model_id, "extractor")
    # a foreign graph in this model's slot is rebuilt, never reused
    foreign = ensure_graphs(shipped, tmp_path)
    target = paths["extractor"]
    target.write_bytes(foreign["extractor"].read_bytes())
    assert check_graph(target, tiny.model_id, "extractor") is not None
    ensure_graphs(tiny, tmp_path)
    assert check_graph(target, tiny.model_id, "extractor") is None
    target.write_bytes(b"truncated")
    assert "not a readable ONNX" in check_graph(target, tiny.model_id, "extractor")
    ensure_graphs(tiny, tmp_path)
    assert check_graph(target, tiny.model_id, "extractor") is None


def test_onnxruntime_opens_graphs_exported_to_a_folder(shipped, tiny_model, tmp_path):
    """`ofa-sdk export --format onnx -o DIR` then graphs_dir=DIR: those files are opened (not
    re-exported into the cache), and a folder of another model's graphs is refused by name."""
    from ofa_sdk.backends.onnxruntime import OnnxRuntimeEngine
    from ofa_sdk.backends.torch import TorchEngine
    from ofa_sdk.cli import main
    tiny = load_model(tiny_model)
    out = tmp_path / "graphs"
    assert main(["export", "--model", str(tiny_model), "-o", str(out)]) == 0
    stamp = {p: p.stat().st_mtime_ns for p in out.glob("*.onnx")}
    eng = OnnxRuntimeEngine(tiny, graphs_dir=out, cache_dir=tmp_path / "cache")
    assert eng.paths == {g: out / f"{g}.onnx" for g in ("residual", "extractor")}
    assert not (tmp_path / "cache").exists()
    assert {p: p.stat().st_mtime_ns for p in out.glob("*.onnx")} == stamp
    crops = np.random.default_rng(0).integers(0, 256, (3, tiny.config.crop, tiny.config.crop, 3),
                                              dtype=np.uint8)
    want = TorchEngine(tiny).embed(crops)
    np.testing.assert_allclose(eng.embed(crops), want, atol=1e-4)
    with pytest.raises(ValueError, match=r"graphs_dir .*graphs.* does not hold this model's"):
        OnnxRuntimeEngine(shipped, graphs_dir=out)
    # the same from the command line: --graphs DIR
    common = ["--graphs", str(out), "--backend", "onnxruntime", "--strict",
              "--gallery", str(tmp_path / "g.db"), "--json"]
    assert main(["info", "--model", str(tiny_model), *common]) == 0
    assert main(["info", *common]) == 2                # the shipped model: not its graphs


def test_auto_picks_onnxruntime_on_cpu_and_strict_refuses(tiny_model, tmp_path, monkeypatch):
    from ofa_sdk import Attributor
    from ofa_sdk.backends import EngineUnavailable
    monkeypatch.setenv("OFA_SDK_CACHE", str(tmp_path))
    att = Attributor(model=tiny_model)
    assert att.backend == "onnxruntime" and "auto chose onnxruntime" in att.backend_note
    assert att.info()["backend"] == "onnxruntime"
    with pytest.raises(EngineUnavailable):
        Attributor(model=tiny_model, backend="onnxruntime", device="cuda", strict=True)


def test_graph_metadata_is_read_without_onnx_as_onnx_reads_it(shipped, tiny_model, tmp_path):
    onnx = pytest.importorskip("onnx")
    paths = list(ensure_graphs(shipped).values()) + list(ensure_graphs(load_model(tiny_model), tmp_path).values())
    for p in paths:
        want = {e.key: e.value for e in onnx.load(str(p), load_external_data=False).metadata_props}
        assert read_metadata(p) == want and want["ofa_sdk.model_id"]
    bad = tmp_path / "cut.onnx"
    bad.write_bytes(paths[0].read_bytes()[:1000])
    assert "not a readable ONNX" in check_graph(bad, shipped.model_id, "residual")


@pytest.mark.skipif(importlib.util.find_spec("ofa_sdk._spectrum_cpu") is None,
                    reason="C++ spectrum module not built (the engine's spectrum then runs in torch)")
def test_a_cli_call_on_onnxruntime_never_imports_torch(tmp_path, monkeypatch):
    """The shipped model with its shipped graphs on ONNX Runtime: once the parity check is
    recorded on this host, a whole `ofa-sdk attribute` call (model, gallery, engine, decision)
    runs without loading PyTorch, and its verdict is the in-process one."""
    pytest.importorskip("onnxruntime")
    import json
    import subprocess
    import sys

    from conftest import make_images

    from ofa_sdk import Attributor
    monkeypatch.setenv("OFA_SDK_CACHE", str(tmp_path / "cache"))   # the parity record goes there
    att = Attributor(gallery=tmp_path / "g.db", device="cpu")
    assert att.backend == "onnxruntime", att.backend_note
    att.enroll("gen", make_images(tmp_path / "s", 4, 0, size=128))
    (q,) = make_images(tmp_path / "q", 1, 1, size=128)
    want = att.attribute([q])[0]
    code = ("import sys; from ofa_sdk.cli import main\n"
            f"rc = main(['attribute', {str(q)!r}, '--gallery', {str(tmp_path / 'g.db')!r}, '--json'])\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n"
            "sys.exit(rc)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    (got,) = json.loads(res.stdout)
    assert got["label"] == want.label and got["score"] == pytest.approx(want.score, abs=1e-6)
