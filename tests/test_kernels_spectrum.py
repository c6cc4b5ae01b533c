"""Triton log-spectrum kernel vs the float64 fft2 definition (and the model's rfft2 path).

Without CUDA the kernels run in the Triton interpreter on CPU tensors (exact float32 dots, so the
"tf32" options are not exercised there); with CUDA they run compiled, and the TF32 tests below run
instead of being skipped.
"""

import pytest
import torch

pytest.importorskip("triton")

from ofa_sdk.kernels import spectrum as ks  # noqa: E402
from ofa_sdk.models.spectrum import log_spectrum_ref, log_spectrum_torch  # noqa: E402

from conftest import CUDA, DEVICE  # noqa: E402  (conftest also sets TRITON_INTERPRET)

# kernel (float32 accumulation, ieee dots) vs float64 reference on the same (rounded) input,
# in the log1p domain; by input dtype. GPU rows: by input_precision at 94 x 94.
TOL = {
    torch.float32: dict(rtol=1e-5, atol=2e-5),
    torch.float16: dict(rtol=1e-5, atol=2e-5),    # input rounded to fp16, then fp32 math
    torch.bfloat16: dict(rtol=1e-5, atol=2e-5),
}
GPU_TOL = {
    "ieee": dict(rtol=1e-5, atol=5e-5),
    "tf32x3": dict(rtol=1e-5, atol=1e-4),
    "tf32": dict(rtol=1e-2, atol=5e-2),           # 10-bit mantissa products; worst near |X| ~ 0
}
SMALL = dict(BLOCK_M=16, BLOCK_N=16, BLOCK_KH=16, BLOCK_KW=16)   # several tiles at small sizes
BIG = dict(BLOCK_M=256, BLOCK_N=128, BLOCK_KH=128, BLOCK_KW=128)


def ref64(r, scale=1.0):
    """The fft2 definition (``log_spectrum_ref``) kept in float64."""
    return torch.log1p(torch.fft.fft2(r.double() * scale).abs())


@pytest.mark.parametrize("shape", [(2, 3, 7, 9), (1, 12, 10), (9, 5), (2, 1, 4), (1, 1, 16, 16)])
@pytest.mark.parametrize("hermitian", [True, False])
def test_matches_fft2_definition(shape, hermitian):
    r = torch.randn(*shape, generator=torch.Generator().manual_seed(0)).to(DEVICE)
    out = ks.log_spectrum(r, hermitian=hermitian)
    assert out.shape == r.shape and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref64(r), **TOL[torch.float32])
    torch.testing.assert_close(out, log_spectrum_torch(r), **TOL[torch.float32])
    torch.testing.assert_close(out, log_spectrum_ref(r), **TOL[torch.float32])


@pytest.mark.parametrize("hw", [(33, 20), (17, 31)])
def test_multi_tile_masks(hw):
    """Several row/column tiles and reduction chunks, all partial."""
    r = torch.randn(2, *hw, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    torch.testing.assert_close(ks.log_spectrum(r, 0.5, config=SMALL).double(), ref64(r, 0.5),
                               **TOL[torch.float32])


@pytest.mark.parametrize("hw", [(94, 94), (84, 96), (222, 222)])
def test_model_sizes(hw):
    """Compact (94) and paper (222) residual sizes, one image each (interpreter time)."""
    r = 10 * torch.randn(1, *hw, generator=torch.Generator().manual_seed(2)).to(DEVICE)
    # interpreter: big tiles at 222 (few numpy calls); default tiles on a GPU and at 84-96
    cfg = BIG if (DEVICE == "cpu" and max(hw) > 128) else None
    torch.testing.assert_close(ks.log_spectrum(r, config=cfg).double(), ref64(r), rtol=1e-5, atol=5e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs(dtype):
    r = torch.randn(2, 11, 6, generator=torch.Generator().manual_seed(3)).to(DEVICE, dtype)
    torch.testing.assert_close(ks.log_spectrum(r).double(), ref64(r), **TOL[dtype])


def test_scale_is_absolute_and_zero():
    r = torch.randn(1, 8, 9, generator=torch.Generator().manual_seed(4)).to(DEVICE)
    torch.testing.assert_close(ks.log_spectrum(r, -3.0).double(), ref64(r, -3.0), **TOL[torch.float32])
    assert torch.equal(ks.log_spectrum(r, 0.0), torch.zeros_like(r))
    torch.testing.assert_close(ks.log_spectrum_reference(r, -3.0).double(), ref64(r, -3.0),
                               **TOL[torch.float32])


def test_non_contiguous_input():
    r = torch.randn(2, 9, 7, generator=torch.Generator().manual_seed(5)).to(DEVICE).transpose(1, 2)
    torch.testing.assert_close(ks.log_spectrum(r).double(), ref64(r), **TOL[torch.float32])


@pytest.mark.parametrize("shape", [(2, 3, 12, 11), (1, 9, 20)])
def test_fused_highpass(shape):
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(6)).to(DEVICE)
    out = ks.highpass_log_spectrum(x, 255.0, config=SMALL)
    assert out.shape == (*shape[:-2], shape[-2] - 2, shape[-1] - 2)
    ref = ref64(ks.highpass_planes(x.double()), 255.0)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=5e-5)
    torch.testing.assert_close(out, ks.highpass_log_spectrum_reference(x, 255.0), rtol=1e-5, atol=5e-5)


def test_rejects_bad_precision():
    with pytest.raises(ValueError, match="input_precision"):
        ks.log_spectrum(torch.zeros(4, 4, device=DEVICE), input_precision="fp8")


def test_cost_model():
    c = ks.spectrum_cost(3, 94, 94)
    assert c["bytes_min"] == 3 * 2 * 94 * 94 * 4 + 8 * (94 * 48 + 94 * 94)
    assert c["flops_issued"] >= c["flops_dft_gemm_exact"] > 0


@CUDA
@pytest.mark.parametrize("precision", ["ieee", "tf32x3", "tf32"])
def test_gpu_precisions(precision):
    r = torch.randn(4, 3, 94, 94, device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    out = ks.log_spectrum(r, 2.0, input_precision=precision)
    torch.testing.assert_close(out.double(), ref64(r, 2.0), **GPU_TOL[precision])


@CUDA
def test_gpu_paper_size_highpass():
    x = torch.rand(2, 3, 224, 224, device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    out = ks.highpass_log_spectrum(x, 255.0)
    torch.testing.assert_close(out.double(), ref64(ks.highpass_planes(x.double()), 255.0),
                               **GPU_TOL["ieee"])
