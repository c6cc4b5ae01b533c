"""ofa_sdk.kernels.dispatch: the reference stays the CPU default (bit-identical model results),
the switches force or prefer backends, exporting/compiling always gets the reference, and
nothing is imported or queried at import time."""
import importlib
import importlib.machinery
import importlib.util
import os
import subprocess
import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F


from ofa_sdk.kernels import dispatch  # noqa: E402
from ofa_sdk.models.mokconv import MoKConv, mokconv_weight_mixing  # noqa: E402
from ofa_sdk.models.spectrum import log_spectrum, log_spectrum_torch  # noqa: E402

HAS_TRITON = importlib.util.find_spec("triton") is not None
INTERPRET = HAS_TRITON and os.environ.get("TRITON_INTERPRET") == "1"
needs_interpreter = pytest.mark.skipif(not INTERPRET, reason="needs triton + TRITON_INTERPRET=1")
CUDA = pytest.mark.skipif(not (torch.cuda.is_available() and HAS_TRITON), reason="needs CUDA + triton")

TOL = {torch.float32: dict(rtol=1e-5, atol=2e-5)}   # kernel vs reference, float32 inputs
LAP = [[0., -1., 0.], [-1., 4., -1.], [0., -1., 0.]]


@pytest.fixture(autouse=True)
def clean_switches(monkeypatch):
    monkeypatch.delenv("OFA_SDK_REFERENCE", raising=False)
    monkeypatch.delenv("OFA_SDK_PREFER", raising=False)
    dispatch.set_reference(False)
    dispatch.set_prefer()
    yield
    dispatch.set_reference(False)
    dispatch.set_prefer()
    dispatch.refresh()


def small_head(hd=8, h2=6):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(hd, h2), torch.nn.ReLU(), torch.nn.Linear(h2, 1))


def mok_inputs():
    g = torch.Generator().manual_seed(0)
    return (torch.randn(2, 3, 6, 5, generator=g), torch.randn(2, 2, 4, generator=g),
            torch.randn(2, 4, 3, 3, 3, generator=g), torch.randn(2, 4, generator=g))


def test_cpu_defaults():
    """On CPU the spectrum runs in the C++ module when it is built (measured faster), every
    other op on the reference; preferring "reference" restores bit-identity."""
    r = torch.randn(2, 3, 9, 8)
    assert dispatch.which("log_spectrum", r) == ("cpp" if dispatch.cpp_available() else "reference")
    torch.testing.assert_close(log_spectrum(r), log_spectrum_torch(r), rtol=1e-5, atol=1e-5)
    with dispatch.prefer("reference"):
        assert dispatch.which("log_spectrum", r) == "reference"
        assert torch.equal(log_spectrum(r), log_spectrum_torch(r))
        assert torch.equal(dispatch.log_spectrum(r, 3.0), log_spectrum_torch(r * 3.0))
    h, coef, w, b = mok_inputs()
    assert dispatch.which("mokconv", h, coef, w, b) == "reference"
    assert torch.equal(dispatch.mokconv(h, coef, w, b), mokconv_weight_mixing(h, coef, w, b))
    torch.manual_seed(0)
    m = MoKConv(3, 4, num_kernels=2, router_hidden=4)
    assert torch.equal(m(h), mokconv_weight_mixing(h, m.router(h), m.weight, m.bias))
    q, s = torch.randn(3, 8), torch.randn(2, 4, 8)
    assert dispatch.which("pair_gallery_scores", q, s, rest=small_head()) == "reference"


def test_highpass_reference_is_the_model_formula():
    x = torch.rand(2, 3, 12, 11)
    k = x.new_tensor(LAP).expand(3, 1, 3, 3)
    from ofa_sdk.kernels.reference import highpass
    with dispatch.reference():
        want = log_spectrum(highpass(x) * 255.0)                   # OFAModel.spectrum, highpass
        assert torch.equal(dispatch.highpass_log_spectrum(x, 255.0), want)
        # the exact Laplacian is the convolution with LAPLACIAN, up to float32 rounding
        torch.testing.assert_close(highpass(x), F.conv2d(x, k, groups=3), rtol=0, atol=1e-6)


@needs_interpreter
def test_prefer_triton_on_cpu_under_interpreter():
    r = torch.randn(1, 2, 7, 9)
    with dispatch.prefer("triton"):
        assert dispatch.which("log_spectrum", r) == "triton"
        torch.testing.assert_close(dispatch.log_spectrum(r, 2.0), log_spectrum_torch(r * 2.0), **TOL[torch.float32])
        x = torch.rand(1, 3, 9, 8)
        assert dispatch.which("highpass_log_spectrum", x) == "triton"
        with dispatch.reference():
            want = dispatch.highpass_log_spectrum(x, 10.0)
        torch.testing.assert_close(dispatch.highpass_log_spectrum(x, 10.0), want, rtol=1e-5, atol=5e-5)
        h, coef, w, b = mok_inputs()
        assert dispatch.which("mokconv", h, coef, w, b) == "triton"
        torch.testing.assert_close(dispatch.mokconv(h, coef, w, b), mokconv_weight_mixing(h, coef, w, b),
                                   rtol=1e-4, atol=1e-4)
        q, s, counts, rest = torch.randn(3, 8), torch.randn(2, 4, 8), torch.tensor([4, 2]), small_head()
        with torch.no_grad():
            assert dispatch.which("pair_gallery_scores", q, s, rest=rest) == "triton"
            got = dispatch.pair_gallery_scores(q, s, counts, rest)
            with dispatch.reference():
                want = dispatch.pair_gallery_scores(q, s, counts, rest)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@needs_interpreter
def test_inputs_the_kernels_do_not_cover_get_the_reference():
    with dispatch.prefer("triton"):
        r = torch.randn(2, 7, 9)
        assert dispatch.which("log_spectrum", r.double()) == "reference"              # dtype
        assert dispatch.which("log_spectrum", r.requires_grad_()) == "reference"      # forward-only
        with torch.no_grad():
            assert dispatch.which("log_spectrum", r) == "triton"
        big = torch.zeros(1, dispatch.MAX_DFT_SIZE + 1, 4)
        assert dispatch.which("log_spectrum", big) == "reference"
        h, coef, w, b = mok_inputs()
        assert dispatch.which("mokconv", h.requires_grad_(), coef, w, b) == "triton"   # has backward
        assert dispatch.which("mokconv", h, coef, w[..., :1], b) == "reference"       # not 3x3
        assert dispatch.which("mokconv", h.double(), coef.double(), w.double(), b.double()) == "reference"
        deep = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8),
                                   torch.nn.ReLU(), torch.nn.Linear(8, 1))
        q, s = torch.randn(3, 8), torch.randn(2, 4, 8)
        with torch.no_grad():
            assert dispatch.which("pair_gallery_scores", q, s, rest=deep) == "reference"
        assert dispatch.which("pair_gallery_scores", q, s, rest=small_head()) == "reference"  # grads on


def test_forcing_the_reference(monkeypatch):
    r = torch.randn(1, 7, 9)
    with dispatch.prefer("triton"):
        dispatch.set_reference(True)
        assert dispatch.decide("log_spectrum", r) == ("reference", "reference forced")
        dispatch.set_reference(False)
        with dispatch.reference():
            assert dispatch.which("log_spectrum", r) == "reference"
        assert not dispatch.reference_forced()
        monkeypatch.setenv("OFA_SDK_REFERENCE", "1")
        assert dispatch.which("log_spectrum", r) == "reference"


def test_preferences_from_env(monkeypatch):
    monkeypatch.setenv("OFA_SDK_PREFER", "cpp, triton")
    assert dispatch.preferred() == {"cpp", "triton"}
    with pytest.raises(ValueError, match="unknown backend"):
        dispatch.set_prefer("cudnn")
    with pytest.raises(ValueError, match="unknown op"):
        dispatch.which("conv", torch.zeros(1))


@pytest.mark.filterwarnings("ignore:`torch.jit.trace` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("how", ["compiling", "onnx", "jit"])
def test_exporting_always_gets_the_reference(monkeypatch, how):
    r = torch.randn(1, 6, 5)
    dispatch.set_prefer("triton", "cpp")
    if how == "compiling":
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    elif how == "onnx":
        onnx = importlib.import_module("torch.onnx")
        monkeypatch.setattr(onnx, "is_in_onnx_export", lambda: True)
    if how == "jit":
        seen = []

        def f(x):
            seen.append(dispatch.which("log_spectrum", x))
            return dispatch.log_spectrum(x)
        torch.jit.trace(f, r, check_trace=False)
        assert seen == ["reference"]
    else:
        assert dispatch.decide("log_spectrum", r) == ("reference", "exporting/compiling/tracing")


def test_torch_export_traces_the_reference_without_graph_breaks():
    """torch.export (dynamo, full graph) through MoKConv and the spectrum with Triton preferred:
    the exported graph holds the reference's aten ops, no kernel."""
    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = MoKConv(3, 4, num_kernels=2, router_hidden=4)

        def forward(self, x):
            return dispatch.log_spectrum(self.m(x), 2.0)
    from ofa_sdk.kernels import reference as spectrum
    torch.manual_seed(0)
    dispatch.set_prefer("triton")
    model, x = M(), torch.randn(1, 3, 8, 8)
    # reference._mirror_index bypasses its cache while exporting: eager calls stay correct after
    before = spectrum._mirror_index_cached.cache_info().currsize
    ep = torch.export.export(model, (x,))
    assert spectrum._mirror_index_cached.cache_info().currsize == before
    ops = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert "aten.fft_rfft2.default" in ops and "aten.conv2d.default" in ops
    with dispatch.reference():
        torch.testing.assert_close(ep.module()(x), model(x))


def _stub_cpp(monkeypatch, calls):
    """A stand-in for ofa_sdk._spectrum_cpu (the C++ helper's module) to test the plumbing:
    numpy float32 (B,C,H,W) and a scale in, numpy out."""
    import numpy as np
    mod = types.ModuleType("ofa_sdk._spectrum_cpu")
    mod.__spec__ = importlib.machinery.ModuleSpec("ofa_sdk._spectrum_cpu", None)

    def log_spectrum(a, scale, threads=2):
        calls.append(("log_spectrum", a.dtype, a.shape, scale))
        assert isinstance(a, np.ndarray) and a.ndim == 4 and a.flags.c_contiguous
        return log_spectrum_torch(torch.from_numpy(a) * scale).numpy()

    def highpass_log_spectrum(a, scale, threads=2):
        calls.append(("highpass", a.dtype, a.shape, scale))
        with dispatch.reference():
            return dispatch.highpass_log_spectrum(torch.from_numpy(a), scale).numpy()
    mod.log_spectrum, mod.highpass_log_spectrum = log_spectrum, highpass_log_spectrum
    monkeypatch.setitem(sys.modules, "ofa_sdk._spectrum_cpu", mod)
    dispatch.refresh()


def test_cpp_module_used_when_built_unless_reference_preferred(monkeypatch):
    calls = []
    r = torch.randn(2, 3, 7, 6)
    _stub_cpp(monkeypatch, calls)
    assert dispatch.cpp_available()
    with dispatch.prefer("reference"):
        assert dispatch.which("log_spectrum", r) == "reference"
        log_spectrum(r)
    assert calls == []
    with dispatch.prefer("cpp"):
        assert dispatch.which("log_spectrum", r) == "cpp"
        out = dispatch.log_spectrum(r, 2.0)
        assert calls[-1][2:] == ((6, 1, 7, 6), 2.0) and str(calls[-1][1]) == "float32"
        assert out.shape == r.shape
        torch.testing.assert_close(out, log_spectrum_torch(r * 2.0))
        assert dispatch.log_spectrum(r[0, 0], 1.0).shape == (7, 6)
        x = torch.rand(1, 2, 9, 9)
        with dispatch.reference():
            want = dispatch.highpass_log_spectrum(x, 3.0)
        assert dispatch.which("highpass_log_spectrum", x) == "cpp"
        torch.testing.assert_close(dispatch.highpass_log_spectrum(x, 3.0), want)
        assert calls[-1][0] == "highpass"


@pytest.mark.skipif(importlib.util.find_spec("ofa_sdk._spectrum_cpu") is None,
                    reason="C++ spectrum module not built")
def test_real_cpp_module_matches_reference():
    r, x = torch.randn(2, 3, 11, 10), torch.rand(1, 3, 12, 9)
    with dispatch.reference():
        want = dispatch.highpass_log_spectrum(x, 255.0)
    with dispatch.prefer("cpp"):
        assert dispatch.which("log_spectrum", r) == "cpp"
        torch.testing.assert_close(dispatch.log_spectrum(r, -2.0), log_spectrum_torch(r * 2.0),
                                   rtol=1e-5, atol=5e-5)
        torch.testing.assert_close(dispatch.highpass_log_spectrum(x, 255.0), want, rtol=1e-5, atol=5e-5)


def test_nothing_imported_or_queried_at_import():
    code = ("import sys, torch, ofa_sdk.models, ofa_sdk.kernels.dispatch as d\n"
            "assert 'triton' not in sys.modules, 'triton imported'\n"
            "assert not torch.cuda.is_initialized(), 'cuda initialised'\n"
            "assert not any(m.startswith('ofa_sdk.kernels.') and m not in"
            " ('ofa_sdk.kernels.dispatch', 'ofa_sdk.kernels.reference')"
            " for m in sys.modules), 'kernel module imported'\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]


@CUDA
def test_cuda_routes_to_triton_and_autocast_to_reference():
    r = torch.randn(2, 3, 20, 20, device="cuda")
    assert dispatch.which("log_spectrum", r) == "triton"
    torch.testing.assert_close(log_spectrum(r), log_spectrum_torch(r), rtol=1e-5, atol=5e-5)
    h, coef, w, b = (t.cuda() for t in mok_inputs())
    assert dispatch.which("mokconv", h, coef, w, b) == "triton"
    with torch.autocast("cuda", dtype=torch.float16):
        assert dispatch.which("mokconv", h, coef, w, b) == "reference"
    with dispatch.reference():
        assert dispatch.which("log_spectrum", r) == "reference"


@pytest.mark.skipif(importlib.util.find_spec("ofa_sdk._spectrum_cpu") is None,
                    reason="C++ spectrum module not built")
def test_numpy_arrays_take_the_cpp_kernel_and_numpy_comes_back():
    """The spectrum ops on float32 numpy arrays (what the ONNX Runtime engine passes): the C++
    kernel, numpy out, equal to the tensor path; the reference when forced, numpy out too."""
    x = np.random.default_rng(0).random((2, 3, 12, 9), dtype=np.float32)
    want = dispatch.highpass_log_spectrum(torch.from_numpy(x), 255.0).numpy()
    assert dispatch.which("highpass_log_spectrum", x) == "cpp"
    got = dispatch.highpass_log_spectrum(x, 255.0)
    assert isinstance(got, np.ndarray) and got.dtype == np.float32 and got.shape == (2, 3, 10, 7)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    with dispatch.reference():
        assert dispatch.which("highpass_log_spectrum", x) == "reference"
        ref = dispatch.highpass_log_spectrum(x, 255.0)
    assert isinstance(ref, np.ndarray)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=5e-5)
    np.testing.assert_allclose(dispatch.log_spectrum(x, 1.0), log_spectrum_torch(torch.from_numpy(x)).numpy(),
                               rtol=1e-5, atol=5e-5)
    assert dispatch.which("log_spectrum", x.astype(np.float64)) == "reference"   # dtype not covered
