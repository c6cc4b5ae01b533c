"""The GPU path's first-run defects (issue 33), each shown without a GPU.

What is mocked, and only where no GPU or TensorRT can exist here: ``torch.cuda``'s device
queries (to pretend to a host with two GPUs) and a stand-in ``tensorrt`` module whose runtime
only records which device was current. No test here claims that a GPU engine computes the right
fingerprints: that needs a GPU (``benchmarks/gpu_check.sh``).
"""
import contextlib
import importlib.machinery
import sys
import types

import numpy as np
import pytest
import torch

from ofa_sdk.backends import EngineUnavailable, resolve_device, select_engine
from ofa_sdk.weights import load_default_model, load_model


# ------------------------------------------------------------------------------ mocked GPUs
class FakeCuda:
    """``torch.cuda`` of a host with ``n`` GPUs: device queries answer, ``torch.cuda.device``
    records which index was made current while its block ran."""

    def __init__(self, monkeypatch, n=2, current=0):
        self.current, self.entered = current, []
        mp = monkeypatch
        mp.setattr(torch.cuda, "is_available", lambda: True)
        mp.setattr(torch.cuda, "device_count", lambda: n)
        mp.setattr(torch.cuda, "current_device", lambda: self.current)
        mp.setattr(torch.cuda, "get_device_properties",
                   lambda d: types.SimpleNamespace(name="Fake GPU", major=9, minor=0))
        mp.setattr(torch.cuda, "device", self.device)

    @contextlib.contextmanager
    def device(self, dev):
        index = torch.device(dev).index if not isinstance(dev, int) else dev
        prev, self.current = self.current, index
        self.entered.append(index)
        try:
            yield
        finally:
            self.current = prev


def test_device_takes_what_pytorch_takes():
    assert resolve_device(None) is None
    assert resolve_device(0) == "cuda:0" and resolve_device("1") == "cuda:1"
    assert resolve_device("cuda:1") == "cuda:1" and resolve_device("CUDA") == "cuda"
    assert resolve_device(torch.device("cuda", 2)) == "cuda:2"
    assert resolve_device(torch.device("cpu")) == "cpu" and resolve_device("cpu") == "cpu"
    for bad in ("gpu", "cuda:x", -1, True, "mps"):
        with pytest.raises(ValueError, match="device"):
            resolve_device(bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the no-GPU message is checked on a CPU host")
def test_a_device_that_cannot_be_used_is_named_with_the_reasons(tiny_model):
    from ofa_sdk import Attributor
    with pytest.raises(EngineUnavailable) as e:
        Attributor(model=tiny_model, device=0)
    msg = str(e.value)
    assert "'cuda:0' (device=0)" in msg and "CUDA is not available" in msg
    assert "tensorrt on cuda" in msg and "torch on cuda" in msg
    with pytest.raises(EngineUnavailable, match=r"cannot run on device 'cuda:1'.*nor can the 'torch'"):
        Attributor(model=tiny_model, backend="onnxruntime", device="cuda:1")
    att = Attributor(model=tiny_model, backend="torch", device=torch.device("cpu"))
    assert att.engine.device == "cpu"


def test_cuda_device_index_is_fixed_and_checked(monkeypatch):
    from ofa_sdk.backends.torch import cuda_device, device_guard
    cuda = FakeCuda(monkeypatch, n=2, current=1)
    assert cuda_device("cuda") == torch.device("cuda", 1)       # the current one, fixed now
    assert cuda_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(EngineUnavailable, match=r"'cuda:2'.*2 CUDA device\(s\): cuda:0..cuda:1"):
        cuda_device("cuda:2")
    with device_guard(torch.device("cuda", 0)):
        assert cuda.current == 0
    assert cuda.current == 1 and cuda.entered == [0]
    with device_guard(torch.device("cpu")):
        pass
    assert cuda.entered == [0]


def test_a_triton_launch_guard_makes_the_tensors_device_current(monkeypatch):
    from ofa_sdk.kernels import _triton
    cuda = FakeCuda(monkeypatch)
    with _triton.on_device(types.SimpleNamespace(device=torch.device("cuda", 1))):
        assert cuda.current == 1
    assert cuda.entered == [1] and cuda.current == 0
    with _triton.on_device(torch.zeros(1)):
        pass
    assert cuda.entered == [1]


def test_every_triton_launch_enters_the_guard_with_its_tensor(monkeypatch):
    """Each launcher calls the guard with the tensor it launches on (on the CPU here, the
    interpreter; on a GPU host the compiled kernels)."""
    pytest.importorskip("triton")
    from ofa_sdk.kernels import gallery, mokconv, spectrum
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    seen = []

    def recorder(t):
        seen.append(t.device)
        return contextlib.nullcontext()
    for mod in (spectrum, gallery, mokconv):
        monkeypatch.setattr(mod, "on_device", recorder)
    g = torch.Generator().manual_seed(0)
    spectrum.log_spectrum(torch.randn(1, 6, 6, generator=g).to(dev))
    rest = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1)).to(dev)
    gallery.pair_gallery_scores(torch.randn(2, 4, device=dev), torch.randn(1, 2, 4, device=dev),
                                torch.tensor([2], device=dev), rest)
    h = torch.randn(1, 2, 4, 4, device=dev, requires_grad=True)
    w = torch.randn(2, 2, 2, 3, 3, device=dev, requires_grad=True)
    out = mokconv.mokconv(h, torch.randn(1, 2, 2, device=dev), w, torch.randn(2, 2, device=dev))
    out.sum().backward()                              # forward, dgrad and wgrad launches
    assert len(seen) == 5 and all(d.type == dev.type for d in seen)


@pytest.fixture
def fake_tensorrt(monkeypatch, tmp_path):
    """A stand-in ``tensorrt`` (no TensorRT can be installed here) recording the current device
    at each build and deserialisation, on a mocked host with two GPUs (device 0 current)."""
    from ofa_sdk.backends import tensorrt as trt_engine
    cuda = FakeCuda(monkeypatch, n=2, current=0)
    events = []

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, plan):
            events.append(("deserialise", cuda.current))
            return types.SimpleNamespace(plan=plan)

    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.0.fake"
    trt.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)   # torch.export looks
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level=None: None})
    trt.Runtime = Runtime
    monkeypatch.setitem(sys.modules, "tensorrt", trt)

    def build(trt_, onnx_path, *a, **k):
        events.append(("build", cuda.current))
        return b"plan"
    monkeypatch.setattr(trt_engine, "_build", build)
    return types.SimpleNamespace(cuda=cuda, events=events, cache=tmp_path / "trt")


@pytest.fixture(scope="module")
def tiny_graphs(tiny_model):
    """The tiny model's graphs, exported before any CUDA is mocked (the exporter asks torch)."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    from ofa_sdk.backends.graphs import ensure_graphs
    return ensure_graphs(load_model(tiny_model))


def test_tensorrt_builds_and_deserialises_on_the_requested_gpu(tiny_graphs, fake_tensorrt,
                                                               tiny_model):
    from ofa_sdk.backends.tensorrt import TensorRTEngine
    eng = TensorRTEngine(load_model(tiny_model), "cuda:1", cache_dir=fake_tensorrt.cache)
    assert eng.device == "cuda:1" and set(eng.engines) == {"residual", "extractor"}
    assert fake_tensorrt.events == [("build", 1), ("deserialise", 1)] * 2
    assert fake_tensorrt.cuda.current == 0              # the caller's device is restored


def test_tensorrt_skips_the_residual_engine_of_a_highpass_model(fake_tensorrt):
    from ofa_sdk.backends.tensorrt import TensorRTEngine
    eng = TensorRTEngine(load_default_model(), "cuda", cache_dir=fake_tensorrt.cache)
    assert set(eng.engines) == {"extractor"} and eng.device == "cuda:0"


def test_missing_onnx_beside_tensorrt_falls_back_with_a_warning(fake_tensorrt, tiny_model,
                                                                 monkeypatch, tmp_path):
    import ofa_sdk.backends as backends
    from ofa_sdk import Attributor
    monkeypatch.setenv("OFA_SDK_CACHE", str(tmp_path))          # no graphs exported yet
    monkeypatch.setitem(sys.modules, "onnx", None)              # import onnx -> ImportError
    from ofa_sdk.backends.tensorrt import TensorRTEngine
    with pytest.raises(EngineUnavailable, match="cannot export the ONNX graphs.*onnx"):
        TensorRTEngine(load_model(tiny_model), "cuda:0")
    monkeypatch.setattr(backends, "AUTO_ORDER", (("tensorrt", "cuda"), ("torch", "cpu")))
    att = Attributor(model=tiny_model)
    assert att.backend == "torch" and "tensorrt on cuda: cannot export" in att.backend_note
    with pytest.warns(RuntimeWarning, match="falling back"):
        att = Attributor(model=tiny_model, backend="tensorrt")
    assert att.backend == "torch" and "cannot export the ONNX graphs" in att.backend_note


class BrokenInstallEngine:
    """An engine whose optional dependency is installed incompletely: it fails to import."""
    name = "broken"

    def __init__(self, bundle, device=None):
        import ofa_sdk_no_such_module  # noqa: F401


def test_a_failing_import_inside_an_engine_is_unavailability_not_a_crash(tiny_model, monkeypatch):
    import ofa_sdk.backends as backends
    backends.register("broken", f"{__name__}:BrokenInstallEngine")
    try:
        bundle = load_model(tiny_model)
        with pytest.raises(EngineUnavailable, match="failed to import.*ofa_sdk_no_such_module"):
            select_engine("broken", bundle, strict=True)
        with pytest.warns(RuntimeWarning, match="falling back"):
            assert select_engine("broken", bundle).engine.name == "torch"
        monkeypatch.setattr(backends, "AUTO_ORDER", (("broken", "cpu"), ("torch", "cpu")))
        with pytest.warns(RuntimeWarning, match="auto goes on to the next engine"):
            sel = select_engine("auto", bundle)
        assert sel.engine.name == "torch" and "broken on cpu" in sel.note
    finally:
        backends.ENGINES.pop("broken")


# --------------------------------------------------------------------------- the graphs
def _first_consumers(path):
    import onnx
    m = onnx.load(str(path))
    name = m.graph.input[0].name
    return name, [n.op_type for n in m.graph.node if name in n.input]


def test_residual_graph_casts_the_uint8_input_first(tiny_model, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    from ofa_sdk.backends.graphs import ensure_graphs
    for bundle in (load_default_model(), load_model(tiny_model)):   # shipped file, fresh export
        path = ensure_graphs(bundle, tmp_path)["residual"]
        name, ops = _first_consumers(path)
        assert name == "crops" and ops == ["Cast"], (bundle.model_id, ops)


# ------------------------------------------------------------------------ TensorRT embed
def test_tensorrt_embed_does_not_copy_spectra_to_the_host(monkeypatch):
    from ofa_sdk.backends.tensorrt import BatchProfile, TensorRTEngine

    class DeviceOnly:
        """A spectrum that must stay on the device: copying it to the host fails the test."""
        def __init__(self, n):
            self.n = n

        def __len__(self):
            return self.n

        def cpu(self):
            raise AssertionError("embed() copied the spectra to the host")

    eng = object.__new__(TensorRTEngine)
    eng._torch, eng._dev, eng.crop, eng.profile = torch, torch.device("cpu"), 8, BatchProfile(1, 2, 2)
    eng._guard = lambda dev: contextlib.nullcontext()
    eng._stream = lambda: types.SimpleNamespace(synchronize=lambda: None)
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    spectra = []
    eng._spectrum = lambda xd, stream: spectra.append(len(xd)) or DeviceOnly(len(xd))
    eng._run = lambda g, spec, stream: torch.ones(len(spec), 3)
    z = eng.embed(np.zeros((4, 8, 8, 3), np.uint8))
    assert z.shape == (4, 3) and spectra == [2, 2]
    eng._spectrum = lambda xd, stream: torch.zeros(len(xd), 3, 6, 6)
    z, s = eng.embed_spectra(np.zeros((3, 8, 8, 3), np.uint8))
    assert z.shape == (3, 3) and s.shape == (3, 3, 6, 6)


# ------------------------------------------------------------------------- the Laplacian
def test_laplacian_is_exact_and_no_convolution(monkeypatch):
    from ofa_sdk.kernels import reference
    rng = np.random.default_rng(0)
    k = rng.integers(0, 256, (2, 3, 19, 23))
    k[0, 0] = 255 * (np.indices((19, 23)).sum(0) % 2)            # the largest |Laplacian|
    x = torch.from_numpy(k).float() / 255
    # no convolution: cuDNN's TF32 (on by default for convolutions on CUDA) cannot apply
    monkeypatch.setattr(reference.F, "conv2d", lambda *a, **kw: pytest.fail("conv2d used"))
    got = reference.highpass(x)
    d = x.double()
    exact = (4 * d[..., 1:-1, 1:-1] - d[..., :-2, 1:-1] - d[..., 2:, 1:-1]
             - d[..., 1:-1, :-2] - d[..., 1:-1, 2:])
    assert torch.equal(got, exact.float())                      # one rounding of the exact sum
    lap = (4 * k[..., 1:-1, 1:-1] - k[..., :-2, 1:-1] - k[..., 2:, 1:-1]
           - k[..., 1:-1, :-2] - k[..., 1:-1, 2:])
    assert np.abs(got.double().numpy() * 255 - lap).max() < 1e-3     # grey levels, in integers
    assert np.abs(lap).max() == 1020
    assert reference.highpass(x.half()).dtype == torch.float16


def test_torch_engine_turns_tf32_off_on_cuda_and_restores_it():
    from ofa_sdk.backends.torch import exact_fp32
    before = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    try:
        with exact_fp32(torch.device("cuda", 0), allow_tf32=False):
            assert not torch.backends.cudnn.allow_tf32
            assert not torch.backends.cuda.matmul.allow_tf32
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
        with exact_fp32(torch.device("cuda", 0), allow_tf32=True):
            assert torch.backends.cudnn.allow_tf32
        with exact_fp32(torch.device("cpu"), allow_tf32=False):
            assert torch.backends.cudnn.allow_tf32
        # overlapping blocks (two engines, two threads): off until the last one leaves
        outer = exact_fp32(torch.device("cuda", 0), allow_tf32=False)
        inner = exact_fp32(torch.device("cuda", 1), allow_tf32=False)
        outer.__enter__()
        inner.__enter__()
        outer.__exit__(None, None, None)
        assert not torch.backends.cudnn.allow_tf32
        inner.__exit__(None, None, None)
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


# ------------------------------------------------------- auto takes only verified engines
def _records(cache):
    import json
    return [json.loads(p.read_text()) for p in sorted((cache / "verified").glob("*.json"))]


def test_auto_takes_onnxruntime_after_its_parity_check_passed_here(tiny_model, tmp_path,
                                                                   monkeypatch):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from ofa_sdk import Attributor
    from ofa_sdk.backends import verify
    monkeypatch.setenv("OFA_SDK_CACHE", str(tmp_path))
    att = Attributor(model=tiny_model, device="cpu")
    assert att.backend == "onnxruntime" and "parity verified on this host" in att.backend_note
    (rec,) = _records(tmp_path)
    assert rec["passed"] and rec["engine"] == "onnxruntime" and rec["device"] == "cpu"
    assert rec["max_abs"] < 1e-4 and rec["model_id"] == att.model_id and rec["host"]
    # recorded: the next Attributor reads the record instead of checking again
    monkeypatch.setattr(verify, "check", lambda *a: pytest.fail("checked again"))
    assert Attributor(model=tiny_model, device="cpu").backend == "onnxruntime"
    # the key covers the versions: another torch is checked again
    eng = att.engine
    k = verify.record_key(verify.host_fields(eng, att.model_id))
    version = verify._version
    monkeypatch.setattr(verify, "_version", lambda m: "0.0-other" if m == "torch" else version(m))
    assert verify.record_key(verify.host_fields(eng, att.model_id)) != k


@pytest.mark.parametrize("fault", ["drift", "raises"])
def test_auto_skips_an_engine_that_fails_its_parity_check(fault, tiny_model, tmp_path,
                                                          monkeypatch):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from ofa_sdk import Attributor
    from ofa_sdk.backends import verify
    from ofa_sdk.backends.onnxruntime import OnnxRuntimeEngine
    monkeypatch.setenv("OFA_SDK_CACHE", str(tmp_path))
    good = OnnxRuntimeEngine.embed

    def bad(self, crops):
        if fault == "raises":
            raise RuntimeError("kernel launch failed")
        z = good(self, crops)
        return z + 0.01 * np.sign(z)
    monkeypatch.setattr(OnnxRuntimeEngine, "embed", bad)
    att = Attributor(model=tiny_model, device="cpu")
    assert att.backend == "torch"
    why = "parity check raised RuntimeError: kernel launch failed" if fault == "raises" \
        else "parity check failed: max |diff| 0.01"
    assert f"onnxruntime on cpu: {why}" in att.backend_note
    if fault == "raises":
        # a crash (out of memory, a compile error) may not recur: it holds for this process only
        assert _records(tmp_path) == []
    else:
        (rec,) = _records(tmp_path)
        assert rec["passed"] is False
    # a failure is not retried in this process, nor a recorded one on this host until
    # something in its key changes
    monkeypatch.setattr(verify, "check", lambda *a: pytest.fail("checked again"))
    assert Attributor(model=tiny_model, device="cpu").backend == "torch"
    # an explicit backend is the caller's choice: not held to the record
    assert Attributor(model=tiny_model, backend="onnxruntime").backend == "onnxruntime"


def test_probe_crops_are_fixed():
    from ofa_sdk.backends.verify import probe_crops
    a, b = probe_crops(32), probe_crops(32)
    assert a.dtype == np.uint8 and a.shape == (8, 32, 32, 3) and np.array_equal(a, b)
    assert a.min() == 0 and a.max() == 255 and len({x.tobytes() for x in a}) == 8


# ---------------------------------------------------------------- on a GPU host (gpu_check)
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("spectrum", ["triton", "cuda_ext", "reference"])
def test_torch_engine_on_cuda_matches_the_cpu(spectrum):
    from ofa_sdk.backends.verify import TOLERANCES, probe_crops
    from ofa_sdk.kernels import dispatch
    if spectrum == "cuda_ext" and not dispatch.cuda_ext_available():
        pytest.skip("the CUDA extension is not built")
    bundle = load_default_model()
    crops = probe_crops(bundle.config.crop)
    want = select_engine("torch", bundle, "cpu").engine.embed(crops)
    ctx = dispatch.reference() if spectrum == "reference" else dispatch.prefer(spectrum)
    with ctx:
        got = select_engine("torch", bundle, "cuda", strict=True).engine.embed(crops)
    assert np.abs(got - want).max() <= TOLERANCES["fp32"][0]
