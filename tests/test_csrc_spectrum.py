"""csrc/ log-spectrum kernels: the C++ extension ``ofa_sdk._spectrum_cpu`` against float64 numpy
references, and the CUDA source compiled (not run: no GPU in CI) with nvcc.

Reference: ``T_ref = log1p(s * |np.fft.fft2(r)|)`` in float64 (r cast to float64), s = 255; the
high-pass variant applies the 3x3 Laplacian [[0,-1,0],[-1,4,-1],[0,-1,0]] (valid part) in float64
first. Tolerance per element (float32 FFT error grows with the plane's norm, and log1p damps it
by 1 / (1 + s|X|)):

| quantity | bound on abs(T - T_ref) |
|---|---|
| log spectrum, high-pass spectrum | 4 ulp(T_ref) + 16 * s * eps32 * log2(H*W) * ||r||_2 / (1 + s*abs(X_ref)) |
| log1p alone (1x1 planes, x in [1e-18, 1e18]) | 2 ulp |
| results for threads = 1, 2, 3 | bit-identical |

Measured when written (max abs error, s = 255, standard-normal r): 1x3x7x9 1.5e-6, 2x3x94x94 3e-5,
1x3x84x84 6e-6, 1x1x222x222 2e-5, as large as the float32 torch path's (rfft2 + mirror) on the
same inputs. Against the bound the kernel peaks at ~0.4 of it (a constant 97x101 plane: prime
sizes sum longer), the torch float32 path at ~0.2.
"""
from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
import sys
from glob import glob
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
EPS32 = float(np.finfo(np.float32).eps)
S = 255.0


def _load(name):
    try:
        return importlib.import_module(name), None
    except ImportError as e:
        return None, f"{name} is not built ({e}); build it with `pip install -e . --no-build-isolation`"


spc, _SKIP_CPU = _load("ofa_sdk._spectrum_cpu")
needs_cpu = pytest.mark.skipif(spc is None, reason=_SKIP_CPU or "")


def laplacian(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return (4 * x[..., 1:-1, 1:-1] - x[..., :-2, 1:-1] - x[..., 2:, 1:-1]
            - x[..., 1:-1, :-2] - x[..., 1:-1, 2:])


def check_close(out: np.ndarray, r: np.ndarray, s: float = S) -> None:
    """out against log1p(s |fft2(r)|) in float64, with the norm-scaled float32 bound above."""
    rd = np.asarray(r, np.float64)
    h, w = rd.shape[-2:]
    mag = np.abs(np.fft.fft2(rd))
    ref = np.log1p(abs(s) * mag)
    assert out.shape == ref.shape and out.dtype == np.float32
    norm = np.sqrt((rd ** 2).sum(axis=(-2, -1), keepdims=True))
    bound = (4 * np.spacing(ref.astype(np.float32)).astype(np.float64)
             + 16 * abs(s) * EPS32 * max(1.0, np.log2(h * w)) * norm / (1 + abs(s) * mag))
    err = np.abs(out.astype(np.float64) - ref)
    worst = np.unravel_index(np.argmax(err / bound), err.shape)
    assert np.all(err <= bound), (f"max error {err.max():.3g}; worst vs bound at {worst}: "
                                  f"{err[worst]:.3g} > {bound[worst]:.3g}")


SHAPES = [(1, 3, 7, 9), (2, 3, 94, 94), (1, 3, 84, 84), (1, 1, 222, 222), (3, 1, 90, 96),
          (1, 2, 97, 101), (1, 1, 1, 1), (1, 1, 1, 17), (2, 1, 16, 1), (1, 3, 2, 2)]


@needs_cpu
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("kind", ["normal", "offset"])
def test_log_spectrum_matches_float64(shape, kind):
    rng = np.random.default_rng([*shape, kind == "offset"])
    r = rng.standard_normal(shape)
    if kind == "offset":          # a large DC term: the worst case for the small bins
        r = r + 100.0
    r = r.astype(np.float32)
    check_close(spc.log_spectrum(r, S), r)


@needs_cpu
@pytest.mark.parametrize("shape", [(1, 3, 9, 11), (2, 3, 96, 96), (1, 3, 86, 86),
                                   (1, 1, 224, 224), (1, 1, 3, 3), (2, 1, 3, 20)],
                         ids=lambda s: "x".join(map(str, s)))
def test_highpass_matches_float64(shape):
    x = np.random.default_rng(7).random(shape).astype(np.float32)  # an image in [0, 1]
    out = spc.highpass_log_spectrum(x, S)
    assert out.shape == shape[:-2] + (shape[-2] - 2, shape[-1] - 2)
    check_close(out, laplacian(x))


@needs_cpu
def test_highpass_equals_log_spectrum_of_the_residual():
    x = np.random.default_rng(3).random((2, 3, 40, 35)).astype(np.float32)
    r = laplacian(x).astype(np.float32)
    np.testing.assert_allclose(spc.highpass_log_spectrum(x, S), spc.log_spectrum(r, S),
                               rtol=0, atol=2e-4)


@needs_cpu
@pytest.mark.parametrize("planes", [1, 2, 5])
def test_threads_and_odd_plane_counts_are_bit_identical(planes):
    r = np.random.default_rng(planes).standard_normal((planes, 30, 22)).astype(np.float32)
    outs = [spc.log_spectrum(r, S, threads=t) for t in (1, 2, 3, 0)]
    for o in outs[1:]:
        np.testing.assert_array_equal(o, outs[0])
    # planes are independent: each alone gives the same bits as inside the batch
    for i in range(planes):
        np.testing.assert_array_equal(spc.log_spectrum(r[i:i + 1], S)[0], outs[0][i])


@needs_cpu
def test_non_finite_values_stay_in_their_plane():
    r = np.random.default_rng(4).standard_normal((4, 10, 12)).astype(np.float32)
    ref = spc.log_spectrum(r, S)
    r[1, 3, 4] = np.nan
    r[2, 0, 0] = 1e30
    out = spc.log_spectrum(r, S)
    assert np.isnan(out[1]).all()
    np.testing.assert_array_equal(out[[0, 3]], ref[[0, 3]])


@needs_cpu
def test_inputs_are_converted():
    rng = np.random.default_rng(5)
    r64 = rng.standard_normal((2, 3, 12, 10))
    ref = spc.log_spectrum(r64.astype(np.float32), S)
    np.testing.assert_array_equal(spc.log_spectrum(r64, S), ref)                 # float64 cast
    big = np.zeros((2, 3, 12, 20))
    big[..., ::2] = r64
    np.testing.assert_array_equal(spc.log_spectrum(big[..., ::2], S), ref)       # strided
    np.testing.assert_array_equal(spc.log_spectrum(r64[1, 2].astype(np.float32), S), ref[1, 2])
    torch = pytest.importorskip("torch")
    np.testing.assert_array_equal(spc.log_spectrum(torch.from_numpy(r64).float(), S), ref)


@needs_cpu
def test_log1p_accuracy_and_special_values():
    # a 1x1 plane's spectrum is |r|, so the kernel returns log1p(scale * |r|)
    x = np.logspace(-18, 18, 100_001).astype(np.float32)
    y = spc.log_spectrum(x.reshape(-1, 1, 1), 1.0).ravel()
    ref = np.log1p(x.astype(np.float64))
    ulp = np.abs(y - ref) / np.spacing(ref.astype(np.float32))
    assert ulp.max() <= 2.0, ulp.max()
    special = np.array([0.0, -3.0, np.inf, np.nan], np.float32).reshape(-1, 1, 1)
    out = spc.log_spectrum(special, 1.0).ravel()
    assert out[0] == 0.0 and out[2] == np.inf
    assert abs(out[1] - np.log1p(3.0)) <= np.spacing(np.float32(np.log1p(3.0)))
    assert np.isnan(out[3])


@needs_cpu
def test_scale():
    r = np.random.default_rng(9).standard_normal((1, 2, 8, 6)).astype(np.float32)
    assert not spc.log_spectrum(r, 0.0).any()
    np.testing.assert_array_equal(spc.log_spectrum(r, -S), spc.log_spectrum(r, S))
    check_close(spc.log_spectrum(r, 0.01), r, 0.01)


@needs_cpu
def test_errors():
    with pytest.raises(ValueError):
        spc.log_spectrum(np.zeros(5, np.float32), S)
    with pytest.raises(ValueError):
        spc.highpass_log_spectrum(np.zeros((1, 1, 2, 9), np.float32), S)
    with pytest.raises(ValueError):
        spc.log_spectrum(np.zeros((1, 1, 4, 4), np.float32), float("nan"))
    assert spc.log_spectrum(np.zeros((0, 3, 4, 4), np.float32), S).shape == (0, 3, 4, 4)


# ------------------------------------------------------------------------------------- CUDA
def _nvcc():
    home = os.environ.get("CUDA_HOME")
    if home and os.path.isfile(os.path.join(home, "bin", "nvcc")):
        return os.path.join(home, "bin", "nvcc")
    return shutil.which("nvcc")


def _cufft_include(nvcc):
    """A directory holding cufft.h: the toolkit's or a pip wheel's (nvidia-cufft)."""
    cands = [Path(nvcc).resolve().parents[1] / "include", Path("/usr/local/cuda/include")]
    if os.environ.get("CUDA_HOME"):
        cands.insert(0, Path(os.environ["CUDA_HOME"]) / "include")
    for sp in sys.path:
        cands += [Path(p).parent for p in glob(os.path.join(sp, "nvidia", "*", "include", "cufft.h"))]
    return next((c for c in cands if (c / "cufft.h").is_file()), None)


def test_cuda_source_compiles_with_nvcc(tmp_path):
    nvcc = _nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found: the CUDA source is only compiled where a CUDA toolkit is")
    inc = _cufft_include(nvcc)
    if inc is None:
        pytest.skip("nvcc found but no cufft.h (CUDA toolkit without cuFFT; pip install nvidia-cufft)")
    obj = tmp_path / "spectrum_cuda.o"
    cmd = [nvcc, "-c", str(ROOT / "csrc" / "spectrum_cuda.cu"), "-o", str(obj), "-O2",
           "-std=c++17", "-Xcompiler", "-fPIC", "-gencode=arch=compute_90,code=sm_90",
           f"-I{inc}", f"-I{ROOT / 'csrc'}"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert obj.stat().st_size > 0
    nm = shutil.which("nm")
    if nm:
        syms = subprocess.run([nm, "-C", "--defined-only", str(obj)], capture_output=True,
                              text=True).stdout
        for name in ("log_spectrum", "highpass_log_spectrum", "clear_plans", "version_info"):
            assert re.search(rf"\sT ofa_spectrum_cuda::{name}[\[(]", syms), name


spcu, _SKIP_CUDA = _load("ofa_sdk._spectrum_cuda")


@pytest.mark.skipif(spcu is None, reason=_SKIP_CUDA or "")
def test_cuda_extension_imports_and_checks_arguments():
    """Runs without a GPU: the module loads (static cudart, shared cuFFT) and rejects CPU input."""
    assert "static" in spcu.version_info()
    torch = pytest.importorskip("torch")
    with pytest.raises(ValueError):
        spcu.log_spectrum(torch.zeros(1, 1, 4, 4), S)


def _cuda_available():
    try:
        import torch
        return spcu is not None and torch.cuda.is_available()
    except ImportError:
        return False


@pytest.mark.skipif(not _cuda_available(), reason="needs the CUDA extension and a CUDA GPU")
@pytest.mark.parametrize("shape", [(1, 3, 7, 9), (2, 3, 94, 94), (1, 1, 222, 222)],
                         ids=lambda s: "x".join(map(str, s)))
def test_cuda_matches_float64(shape):
    import torch
    r = np.random.default_rng(11).standard_normal(shape).astype(np.float32)
    out = spcu.log_spectrum(torch.from_numpy(r).cuda(), S)
    check_close(out.cpu().numpy(), r)
    x = np.random.default_rng(12).random(shape).astype(np.float32)
    if min(shape[-2:]) >= 3:
        hp = spcu.highpass_log_spectrum(torch.from_numpy(x).cuda(), S)
        check_close(hp.cpu().numpy(), laplacian(x))
