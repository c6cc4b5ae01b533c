"""Triton log-magnitude spectrum: ``log1p(scale * |FFT2(r)|)`` over (..., H, W) as two DFT GEMMs.

The 2D DFT of a real image r (H x W) is ``X = F_H r F_W`` with ``F_N[k, n] = exp(-2 pi i k n / N)``.
With the cosine and sine matrices ``C_N``, ``S_N`` (real, precomputed in float64 and rounded to
float32 once per size and device):

    Yc = r C_W,  Ys = r S_W                       (row transform, W -> columns k2)
    Re X = C_H Yc - S_H Ys,  -Im X = S_H Yc + C_H Ys   (column transform, H -> rows k1)

Each program owns one image, a tile of output rows (BLOCK_M) and a tile of output columns
(BLOCK_N); it streams row chunks of r (BLOCK_KH rows, in BLOCK_KW column chunks), forms that
chunk's Yc, Ys with ``tl.dot`` and immediately folds them into the (BLOCK_M, BLOCK_N) Re/Im
accumulators, so no intermediate touches global memory and programs are independent. Row tiles
recompute the row transform (``cdiv(H, BLOCK_M)`` times); with BLOCK_M >= H it is computed once.
Every load is masked, so any H, W works (84, 90, 94, 96, 222, 7 x 9, ...).

Hermitian symmetry (real input): |X[k1, k2]| = |X[-k1 mod H, -k2 mod W]|. With ``hermitian=True``
(default) only the W//2+1 columns k2 = 0..W//2 are computed and each program also stores the
mirrored columns W-k2 (rows -k1 mod H). That halves the FLOPs of both GEMMs and the reads of C_W,
S_W; the bytes written are the same (every output element is still stored exactly once), only
the mirrored half is a reversed-order store. ``hermitian=False`` computes all W columns directly
(kept for measurement: ``benchmarks/kernels_gpu.py`` times both).

Optional fused front end (``highpass=True``): the 3x3 Laplacian [[0,-1,0],[-1,4,-1],[0,-1,0]]
(valid part) is applied inside the load of r, so the input is the image (H+2, W+2) and the
residual never exists in memory.

``input_precision`` is passed to every ``tl.dot``: "ieee" (default, exact float32 products),
"tf32x3" (~fp32 accuracy on tensor cores) or "tf32" (fastest, ~1e-3 relative). The Triton
interpreter (TRITON_INTERPRET=1) computes every dot in exact float32 whatever this says, so the
TF32 error is only visible on a GPU (tests marked cuda).

The reference is :func:`log_spectrum_reference` (the model's rfft2 path with the scale applied to
the residual first; :mod:`.reference`, like the Laplacian :func:`highpass_planes` and
:func:`highpass_log_spectrum_reference`); the kernel's dot products accumulate in float32.
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch

from ._triton import PRECISIONS, _cdiv, _jit, _need_triton, _pow2, on_device, tl  # noqa: F401
from .reference import (LAPLACIAN, highpass_log_spectrum_reference, highpass_planes,  # noqa: F401
                        log_spectrum_reference)


# ------------------------------------------------------------------------------------ constants
@lru_cache(maxsize=64)
def _dft_cpu(n: int, ncols: int):
    k = torch.arange(n, dtype=torch.int64)
    j = torch.arange(ncols, dtype=torch.int64)
    phase = (k[:, None] * j[None, :]) % n                     # exact integer reduction
    ang = phase.double() * (2 * math.pi / n)
    return torch.cos(ang).float().contiguous(), torch.sin(ang).float().contiguous()


_DEVICE_CACHE: dict = {}


def dft_matrices(n: int, ncols: int, device) -> tuple:
    """(n, ncols) float32 cos(2 pi k j / n), sin(2 pi k j / n), cached per size and device."""
    key = (n, ncols, str(torch.device(device)))
    m = _DEVICE_CACHE.get(key)
    if m is None:
        c, s = _dft_cpu(n, ncols)
        m = _DEVICE_CACHE[key] = (c.to(device), s.to(device))
    return m


# -------------------------------------------------------------------------------------- kernel
@_jit
def _log1p_pos(x):
    """Accurate log1p for x >= 0 (Goldberg: log(u) * x / (u - 1), u = 1 + x)."""
    u = 1.0 + x
    d = u - 1.0
    return tl.where(d == 0.0, x, tl.log(u) * (x / tl.where(d == 0.0, 1.0, d)))


@_jit
def _log_spectrum_kernel(
    r_ptr, out_ptr, cw_ptr, sw_ptr, ch_ptr, sh_ptr, scale,
    H, W, NCOLS, stride_img, stride_row, out_stride_img,
    HIGHPASS: tl.constexpr, MIRROR: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_KH: tl.constexpr, BLOCK_KW: tl.constexpr,
):
    img = tl.program_id(0)
    pid_m = tl.program_id(1)
    pid_n = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)        # output rows k1
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)        # output columns k2 < NCOLS
    m_ok = offs_m < H
    n_ok = offs_n < NCOLS
    base = r_ptr + img.to(tl.int64) * stride_img

    acc_re = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_im = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for h0 in range(0, H, BLOCK_KH):
        offs_h = h0 + tl.arange(0, BLOCK_KH)
        h_ok = offs_h < H
        yc = tl.zeros((BLOCK_KH, BLOCK_N), dtype=tl.float32)
        ys = tl.zeros((BLOCK_KH, BLOCK_N), dtype=tl.float32)
        for w0 in range(0, W, BLOCK_KW):
            offs_w = w0 + tl.arange(0, BLOCK_KW)
            w_ok = offs_w < W
            mask = h_ok[:, None] & w_ok[None, :]
            if HIGHPASS:
                # input is (H+2, W+2); residual[h, w] = 4 x[h+1, w+1] - the 4 neighbours
                p = base + (offs_h[:, None] + 1) * stride_row + (offs_w[None, :] + 1)
                ctr = tl.load(p, mask=mask, other=0.0).to(tl.float32)
                up = tl.load(p - stride_row, mask=mask, other=0.0).to(tl.float32)
                dn = tl.load(p + stride_row, mask=mask, other=0.0).to(tl.float32)
                lf = tl.load(p - 1, mask=mask, other=0.0).to(tl.float32)
                rt = tl.load(p + 1, mask=mask, other=0.0).to(tl.float32)
                r = 4.0 * ctr - up - dn - lf - rt
            else:
                p = base + offs_h[:, None] * stride_row + offs_w[None, :]
                r = tl.load(p, mask=mask, other=0.0).to(tl.float32)
            wm = w_ok[:, None] & n_ok[None, :]
            woff = offs_w[:, None] * NCOLS + offs_n[None, :]
            cw = tl.load(cw_ptr + woff, mask=wm, other=0.0)
            sw = tl.load(sw_ptr + woff, mask=wm, other=0.0)
            yc = tl.dot(r, cw, yc, input_precision=INPUT_PRECISION)
            ys = tl.dot(r, sw, ys, input_precision=INPUT_PRECISION)
        hm = m_ok[:, None] & h_ok[None, :]
        hoff = offs_m[:, None] * H + offs_h[None, :]
        chm = tl.load(ch_ptr + hoff, mask=hm, other=0.0)
        shm = tl.load(sh_ptr + hoff, mask=hm, other=0.0)
        acc_re = tl.dot(chm, yc, acc_re, input_precision=INPUT_PRECISION)
        acc_re = tl.dot(-shm, ys, acc_re, input_precision=INPUT_PRECISION)
        acc_im = tl.dot(shm, yc, acc_im, input_precision=INPUT_PRECISION)
        acc_im = tl.dot(chm, ys, acc_im, input_precision=INPUT_PRECISION)

    mag = tl.sqrt_rn(acc_re * acc_re + acc_im * acc_im)
    val = _log1p_pos(scale * mag)
    obase = out_ptr + img.to(tl.int64) * out_stride_img
    tl.store(obase + offs_m[:, None] * W + offs_n[None, :], val, mask=m_ok[:, None] & n_ok[None, :])
    if MIRROR:
        # |X[k1, k2]| = |X[-k1 mod H, W - k2]| fills columns W//2+1 .. W-1 from k2 = 1 .. (W-1)//2
        mrow = tl.where(offs_m == 0, 0, H - offs_m)
        mcol = W - offs_n
        mm = m_ok[:, None] & ((offs_n >= 1) & (mcol > W // 2))[None, :]
        tl.store(obase + mrow[:, None] * W + mcol[None, :], val, mask=mm)


# ------------------------------------------------------------------------------------- launcher
def default_config(h: int, w: int, hermitian: bool = True) -> dict:
    """Tile sizes: one row tile up to 64 rows (the row transform is then recomputed
    cdiv(H, 64) times: 2x at 94, 4x at 222), 32 output columns, 32-wide reduction chunks."""
    ncols = w // 2 + 1 if hermitian else w
    bm = _pow2(h, hi=64)
    return dict(BLOCK_M=bm, BLOCK_N=_pow2(ncols, hi=32), BLOCK_KH=_pow2(h, hi=32),
                BLOCK_KW=_pow2(w, hi=32), num_warps=4 if bm * 32 <= 2048 else 8)


def _launch(x: torch.Tensor, h: int, w: int, scale: float, highpass: bool,
            input_precision: str, hermitian: bool, config) -> torch.Tensor:
    _need_triton()
    if input_precision not in PRECISIONS:
        raise ValueError(f"input_precision must be one of {PRECISIONS}, got {input_precision!r}")
    lead = x.shape[:-2]
    xi = x.reshape(-1, *x.shape[-2:])
    if xi.stride(-1) != 1 or xi.stride(-2) != xi.shape[-1]:
        xi = xi.contiguous()
    n_img = xi.shape[0]
    out = torch.empty((n_img, h, w), device=x.device, dtype=torch.float32)
    if n_img == 0:
        return out.reshape(*lead, h, w)
    ncols = w // 2 + 1 if hermitian else w
    cfg = dict(default_config(h, w, hermitian))
    cfg.update(config or {})
    cw, sw = dft_matrices(w, ncols, x.device)
    ch, sh = dft_matrices(h, h, x.device)
    grid = (n_img, _cdiv(h, cfg["BLOCK_M"]), _cdiv(ncols, cfg["BLOCK_N"]))
    with on_device(xi):
        _log_spectrum_kernel[grid](
            xi, out, cw, sw, ch, sh, float(abs(scale)),
            h, w, ncols, xi.stride(0), xi.stride(1), out.stride(0),
            HIGHPASS=highpass, MIRROR=hermitian, INPUT_PRECISION=input_precision,
            BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_KH=cfg["BLOCK_KH"],
            BLOCK_KW=cfg["BLOCK_KW"], num_warps=cfg.get("num_warps", 4),
            num_stages=cfg.get("num_stages", 2))
    return out.reshape(*lead, h, w)


def log_spectrum(residual: torch.Tensor, scale: float = 1.0, *, input_precision: str = "ieee",
                 hermitian: bool = True, config: dict | None = None) -> torch.Tensor:
    """(..., H, W) real -> (..., H, W) float32 ``log1p(|scale| * |FFT2(residual)|)``.

    No autograd (forward only): :mod:`ofa_sdk.kernels.dispatch` uses the reference when a
    gradient is needed."""
    if residual.dim() < 2:
        raise ValueError("log_spectrum needs (..., H, W)")
    h, w = residual.shape[-2:]
    return _launch(residual.detach(), h, w, scale, False, input_precision, hermitian, config)


def highpass_log_spectrum(x: torch.Tensor, scale: float = 1.0, *, input_precision: str = "ieee",
                          hermitian: bool = True, config: dict | None = None) -> torch.Tensor:
    """(..., H+2, W+2) image -> (..., H, W) log-spectrum of its Laplacian residual (fused)."""
    if x.dim() < 2 or min(x.shape[-2:]) < 3:
        raise ValueError("highpass_log_spectrum needs (..., H+2, W+2) with H, W >= 1")
    h, w = x.shape[-2] - 2, x.shape[-1] - 2
    return _launch(x.detach(), h, w, scale, True, input_precision, hermitian, config)


# ----------------------------------------------------------------------------- cost model
def spectrum_cost(n_img: int, h: int, w: int, config: dict | None = None,
                  hermitian: bool = True, highpass: bool = False, in_bytes: int = 4) -> dict:
    """FLOPs the kernel issues (masked tiles counted as issued) and the minimum bytes it must
    move (input read once, output written once, DFT matrices read once): the memory bound is
    ``bytes / peak_bandwidth``."""
    ncols = w // 2 + 1 if hermitian else w
    cfg = dict(default_config(h, w, hermitian))
    cfg.update(config or {})
    bm, bn, bkh, bkw = cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["BLOCK_KH"], cfg["BLOCK_KW"]
    mt, nt = _cdiv(h, bm), _cdiv(ncols, bn)
    hp, wp = _cdiv(h, bkh) * bkh, _cdiv(w, bkw) * bkw
    row = 2 * 2 * hp * wp * bn              # Yc, Ys per (row tile, column tile)
    col = 4 * 2 * bm * hp * bn              # four dots into Re/Im
    flops = n_img * mt * nt * (row + col)
    hin, win = (h + 2, w + 2) if highpass else (h, w)
    moved = n_img * (hin * win * in_bytes + h * w * 4) + 4 * 2 * (w * ncols + h * h)
    useful = n_img * (8 * h * w * ncols + 8 * h * h * ncols) if hermitian else None
    return {"flops_issued": flops, "bytes_min": moved, "flops_dft_gemm_exact": useful}
