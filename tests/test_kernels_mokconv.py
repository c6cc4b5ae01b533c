"""Triton MoKConv (implicit GEMM, mixing in the weight load) forward and backward vs float64
references: the kernel runs in float32 (float32 accumulation), the reference grads come from
autograd through ``mokconv_weight_mixing`` in float64. Without CUDA: the Triton interpreter on
CPU tensors (exact float32 dots); with CUDA: compiled, plus the TF32 tests.
"""

import pytest
import torch

pytest.importorskip("triton")

from ofa_sdk.kernels import dispatch  # noqa: E402
from ofa_sdk.kernels import mokconv as km  # noqa: E402
from ofa_sdk.models.mokconv import (MoKConv, mokconv_output_mixing,  # noqa: E402
                                    mokconv_weight_mixing)

from conftest import CUDA, DEVICE  # noqa: E402  (conftest also sets TRITON_INTERPRET)

# float32 kernel ("ieee" dots) vs float64 reference; by input dtype (output rounding included).
TOL = {
    torch.float32: dict(rtol=1e-4, atol=1e-4),
    torch.float16: dict(rtol=2e-3, atol=2e-3),
    torch.bfloat16: dict(rtol=2e-2, atol=2e-2),
}
GPU_TOL = {"ieee": dict(rtol=1e-4, atol=1e-4), "tf32x3": dict(rtol=1e-4, atol=1e-4),
           "tf32": dict(rtol=2e-2, atol=2e-2)}
# force several pixel, channel and reduction tiles at small sizes
SMALL = {"fwd": dict(BLOCK_M=16, BLOCK_N=16, BLOCK_R=16), "dgrad": dict(BLOCK_M=16, BLOCK_N=16, BLOCK_R=16),
         "wgrad": dict(BLOCK_O=16, BLOCK_C=16, BLOCK_P=16)}


def make(B, C, O, K, H, W, seed=0, device=DEVICE, dtype=torch.float64, bias=True):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(B, C, H, W, generator=g, dtype=dtype)
    coef = torch.randn(B, K, O, generator=g, dtype=dtype)
    w = torch.randn(K, O, C, 3, 3, generator=g, dtype=dtype) / (3 * C ** 0.5)
    b = torch.randn(K, O, generator=g, dtype=dtype) if bias else None
    return [t.to(device) if t is not None else None for t in (h, coef, w, b)]


def ref_and_grads(h, coef, w, b, gout):
    ins = [t.detach().double().cpu().requires_grad_() if t is not None else None for t in (h, coef, w, b)]
    y = (mokconv_weight_mixing if b is not None else km.mokconv_reference)(*ins)
    grads = torch.autograd.grad(y, [t for t in ins if t is not None], gout.double().cpu())
    return y, grads


def kernel_and_grads(h, coef, w, b, gout, dtype=torch.float32, config=None, precision="ieee"):
    ins = [t.detach().to(dtype).requires_grad_() if t is not None else None for t in (h, coef, w, b)]
    y = km.mokconv(*ins, input_precision=precision, config=config)
    grads = torch.autograd.grad(y, [t for t in ins if t is not None], gout.to(y))
    return y, grads


@pytest.mark.parametrize("dims", [(1, 5, 7, 3, 7, 9), (2, 3, 4, 4, 12, 10), (2, 2, 3, 2, 1, 5)])
def test_forward_backward_vs_float64(dims):
    h, coef, w, b = make(*dims)
    gout = torch.randn(dims[0], dims[2], *dims[4:], generator=torch.Generator().manual_seed(9),
                       dtype=torch.float64)
    y_ref, g_ref = ref_and_grads(h, coef, w, b, gout)
    y, g = kernel_and_grads(h, coef, w, b, gout)
    assert y.dtype == torch.float32 and y.shape == y_ref.shape
    torch.testing.assert_close(y.double().cpu(), y_ref, **TOL[torch.float32])
    for name, a, r in zip(("h", "coef", "weight", "bias"), g, g_ref):
        assert a.shape == r.shape, name
        torch.testing.assert_close(a.double().cpu(), r, **TOL[torch.float32], msg=name)


def test_multi_tile_and_no_bias():
    """20 channels in and out with 16-wide tiles: partial channel, reduction and pixel tiles."""
    dims = (1, 20, 18, 2, 3, 7)
    h, coef, w, _ = make(*dims, seed=1, bias=False)
    gout = torch.randn(1, 18, 3, 7, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    y_ref, g_ref = ref_and_grads(h, coef, w, None, gout)
    y, g = kernel_and_grads(h, coef, w, None, gout, config=SMALL)
    torch.testing.assert_close(y.double().cpu(), y_ref, **TOL[torch.float32])
    for a, r in zip(g, g_ref):
        torch.testing.assert_close(a.double().cpu(), r, **TOL[torch.float32])


def test_tiles_never_span_samples():
    h, coef, w, b = make(3, 4, 5, 3, 4, 5, seed=3, dtype=torch.float32)
    y = km.mokconv(h, coef, w, b, input_precision="ieee")
    for i in range(3):
        yi = km.mokconv(h[i:i + 1], coef[i:i + 1], w, b, input_precision="ieee")
        assert torch.equal(y[i:i + 1], yi)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_forward(dtype):
    h, coef, w, b = make(2, 3, 4, 2, 6, 5, seed=4)
    h, coef, w, b = (t.to(dtype) for t in (h, coef, w, b))
    y = km.mokconv(h, coef, w, b, input_precision="ieee")
    assert y.dtype == dtype
    ref = mokconv_weight_mixing(*(t.double().cpu() for t in (h, coef, w, b)))
    torch.testing.assert_close(y.double().cpu(), ref, **TOL[dtype])


def test_module_through_dispatch_matches_reference():
    """MoKConv (weight mode) on the kernel: output and every gradient, the router's included."""
    torch.manual_seed(0)
    m = MoKConv(5, 6, num_kernels=3, router_hidden=6).to(DEVICE)
    with torch.no_grad():
        m.router.fc2.weight.normal_()
    x = torch.randn(2, 5, 8, 7, device=DEVICE)
    res = {}
    for backend in ("reference", "triton"):
        m.zero_grad()
        xi = x.clone().requires_grad_(True)
        ctx = dispatch.reference() if backend == "reference" else dispatch.prefer("triton")
        with ctx:
            assert dispatch.which("mokconv", xi, m.router(xi), m.weight, m.bias) == backend
            y = m(xi)
        (y * torch.linspace(-1, 1, y.numel(), device=DEVICE).view_as(y)).sum().backward()
        res[backend] = [y.detach(), xi.grad] + [p.grad.clone() for p in m.parameters()]
    for a, b in zip(res["triton"], res["reference"]):
        torch.testing.assert_close(a, b, **TOL[torch.float32])


def test_output_mode_stays_reference():
    torch.manual_seed(0)
    m = MoKConv(3, 4, num_kernels=2, router_hidden=4)
    x = torch.randn(1, 3, 5, 5)
    with dispatch.prefer("triton"):
        y = m(x, mode="output")
    assert torch.equal(y, mokconv_output_mixing(x, m.router(x), m.weight, m.bias))


def test_bad_shapes_raise():
    h, coef, w, b = make(2, 3, 4, 2, 5, 5, dtype=torch.float32)
    with pytest.raises(ValueError, match="agree"):
        km.mokconv(h, coef[:, :, :3], w, b)


@CUDA
@pytest.mark.parametrize("precision", ["ieee", "tf32x3", "tf32"])
def test_gpu_precisions(precision):
    dims = (8, 32, 32, 4, 24, 24)
    h, coef, w, b = make(*dims)
    gout = torch.randn(8, 32, 24, 24, dtype=torch.float64)
    y_ref, g_ref = ref_and_grads(h, coef, w, b, gout)
    y, g = kernel_and_grads(h, coef, w, b, gout, precision=precision)
    torch.testing.assert_close(y.double().cpu(), y_ref, **GPU_TOL[precision])
    for a, r in zip(g, g_ref):
        torch.testing.assert_close(a.double().cpu(), r, **GPU_TOL[precision])
