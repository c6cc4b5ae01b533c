"""Triton MoKConv: implicit-GEMM 3x3 convolution (padding 1, stride 1) with the mixture of K base
kernels done inside the weight load, per sample, forward and backward.

    out[b, o] = sum_{c, tap} Wmix[b, o, c, tap] * h[b, c, shifted by tap] + bmix[b, o]
    Wmix[b] = sum_k coef[b, k, o] W[k],   bmix[b] = sum_k coef[b, k, o] bias[k]

GEMM view per sample b: M = H*W output pixels, N = output channels, reduction = 9 taps x C
input channels. A program owns one sample b, a BLOCK_M tile of pixels (never spanning two
samples) and a BLOCK_N tile of output channels; for each tap (static loop: the padding masks are
computed once per tap) and each BLOCK_R chunk of input channels it gathers the shifted input
tile (BLOCK_M, BLOCK_R) with zero padding from the masks, loads the K base-kernel tiles
(BLOCK_R, BLOCK_N) and mixes them with this sample's coefficients in registers, and accumulates
one ``tl.dot``. The mixed per-sample kernel never exists in memory (the grouped-conv reference
writes B x O x C x 9 of it).

Backward (:class:`MoKConvFunction`), all exact decompositions, float32 accumulation:

* grad input: the same forward kernel on grad_out with the kernels transposed and flipped
  (dh = conv(g, flip(Wmix)^T)); the coefficients now index the *reduction* channels, so the
  kernel mixes along R instead of N (``MIX_ON_R``).
* per-sample weight gradient dWmix[b, o, c, tap] = sum_p g[b, o, p] h[b, c, p + tap]: a second
  Triton kernel (one program per sample, tap, (o, c) tile; reduction over pixels).
* grad weight, grad coef, grad bias from dWmix and sum_p g with K-way contractions in PyTorch
  (einsum; tiny next to the convolutions: B x K x O x C x 9):
  dW[k] = sum_b coef[b, k] * dWmix[b],  dcoef[b, k, o] = <W[k, o], dWmix[b, o]> + bias[k, o] gsum[b, o],
  dbias[k] = sum_b coef[b, k] gsum[b].

References (:mod:`.reference`): :func:`mokconv_reference` (``mokconv_weight_mixing``: weight
mixing + grouped conv) and ``mokconv_output_mixing``.

``input_precision`` for the dots: "ieee", "tf32x3" or "tf32"; default ``None`` follows
``torch.backends.cudnn.allow_tf32`` (what the reference's cuDNN convolution does: "tf32" when
True, PyTorch's default, else "ieee"). The interpreter computes exact float32 regardless.
Inputs may be float32, float16 or bfloat16 (loads in that dtype, dots in float32, output in the
input dtype).
"""
from __future__ import annotations

import torch

from ._triton import PRECISIONS, _cdiv, _jit, _need_triton, _pow2, on_device, tl  # noqa: F401
from .reference import mokconv_output_mixing  # noqa: F401
from .reference import mokconv_weight_mixing as mokconv_reference


# ------------------------------------------------------------------------------------- kernels
@_jit
def _mok_conv_kernel(
    x_ptr, coef_ptr, w_ptr, bias_ptr, out_ptr,
    R, N, H, W, K, CM,
    HAS_BIAS: tl.constexpr, MIX_ON_R: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
):
    """x (B, R, H, W); coef (B, K, CM) with CM = N (mix on outputs) or R (mix on reductions);
    w (K, 9, R, N) contiguous; bias (K, N); out (B, N, H, W)."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    HW = H * W
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = offs_m < HW
    n_ok = offs_n < N
    py = offs_m // W
    px = offs_m % W
    x_base = x_ptr + b * R * HW
    c_base = coef_ptr + b * K * CM

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for t in tl.static_range(9):
        yy = py + (t // 3 - 1)
        xx = px + (t % 3 - 1)
        p_ok = m_ok & (yy >= 0) & (yy < H) & (xx >= 0) & (xx < W)
        p_off = yy * W + xx
        for r0 in range(0, R, BLOCK_R):
            offs_r = r0 + tl.arange(0, BLOCK_R)
            r_ok = offs_r < R
            a = tl.load(x_base + offs_r[None, :] * HW + p_off[:, None],
                        mask=p_ok[:, None] & r_ok[None, :], other=0.0).to(tl.float32)
            wmask = r_ok[:, None] & n_ok[None, :]
            woff = (t * R + offs_r[:, None]) * N + offs_n[None, :]
            wmix = tl.zeros((BLOCK_R, BLOCK_N), dtype=tl.float32)
            for k in range(K):
                wk = tl.load(w_ptr + k * 9 * R * N + woff, mask=wmask, other=0.0).to(tl.float32)
                if MIX_ON_R:
                    ck = tl.load(c_base + k * CM + offs_r, mask=r_ok, other=0.0).to(tl.float32)
                    wmix += wk * ck[:, None]
                else:
                    ck = tl.load(c_base + k * CM + offs_n, mask=n_ok, other=0.0).to(tl.float32)
                    wmix += wk * ck[None, :]
            acc = tl.dot(a, wmix, acc, input_precision=INPUT_PRECISION)

    if HAS_BIAS:  # bias mixing (only with coefficients on the output channels)
        bm = tl.zeros((BLOCK_N,), dtype=tl.float32)
        for k in range(K):
            ck = tl.load(c_base + k * CM + offs_n, mask=n_ok, other=0.0).to(tl.float32)
            bk = tl.load(bias_ptr + k * N + offs_n, mask=n_ok, other=0.0).to(tl.float32)
            bm += ck * bk
        acc += bm[None, :]
    o_ptr = out_ptr + b * N * HW + offs_n[None, :] * HW + offs_m[:, None]
    tl.store(o_ptr, acc.to(out_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


@_jit
def _mok_wgrad_kernel(
    g_ptr, x_ptr, out_ptr, O, C, H, W,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_O: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """dWmix[b, tap, o, c] = sum_p g[b, o, p] x[b, c, p shifted by tap] -> out (B, 9, O, C) f32."""
    pid = tl.program_id(0)
    t = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    n_c = tl.cdiv(C, BLOCK_C)
    pid_o = pid // n_c
    pid_c = pid % n_c
    HW = H * W
    dy = t // 3 - 1
    dx = t % 3 - 1
    offs_o = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    o_ok = offs_o < O
    c_ok = offs_c < C
    acc = tl.zeros((BLOCK_O, BLOCK_C), dtype=tl.float32)
    for p0 in range(0, HW, BLOCK_P):
        offs_p = p0 + tl.arange(0, BLOCK_P)
        p_in = offs_p < HW
        yy = offs_p // W + dy
        xx = offs_p % W + dx
        p_ok = p_in & (yy >= 0) & (yy < H) & (xx >= 0) & (xx < W)
        gt = tl.load(g_ptr + b * O * HW + offs_o[:, None] * HW + offs_p[None, :],
                     mask=o_ok[:, None] & p_in[None, :], other=0.0).to(tl.float32)
        xt = tl.load(x_ptr + b * C * HW + offs_c[None, :] * HW + (yy * W + xx)[:, None],
                     mask=p_ok[:, None] & c_ok[None, :], other=0.0).to(tl.float32)
        acc = tl.dot(gt, xt, acc, input_precision=INPUT_PRECISION)
    dst = out_ptr + ((b * 9 + t) * O + offs_o[:, None]) * C + offs_c[None, :]
    tl.store(dst, acc, mask=o_ok[:, None] & c_ok[None, :])


# ------------------------------------------------------------------------------------ launchers
def resolve_precision(input_precision):
    if input_precision is None:
        return "tf32" if torch.backends.cudnn.allow_tf32 else "ieee"
    if input_precision not in PRECISIONS:
        raise ValueError(f"input_precision must be one of {PRECISIONS}, got {input_precision!r}")
    return input_precision


def _conv(x, coef, wt, bias, mix_on_r: bool, precision: str, config=None):
    """x (B,R,H,W), coef (B,K,CM), wt (K,9,R,N) contiguous, bias (K,N) or None -> (B,N,H,W)."""
    B, R, H, W = x.shape
    K, _, _, N = wt.shape
    cfg = dict(BLOCK_M=_pow2(H * W, hi=64), BLOCK_N=_pow2(N), BLOCK_R=_pow2(R, hi=32), num_warps=4)
    cfg.update(config or {})
    out = torch.empty((B, N, H, W), device=x.device, dtype=x.dtype)
    if out.numel() == 0:
        return out
    grid = (_cdiv(H * W, cfg["BLOCK_M"]), _cdiv(N, cfg["BLOCK_N"]), B)
    with on_device(x):
        _mok_conv_kernel[grid](
            x, coef, wt, bias if bias is not None else wt, out,
            R, N, H, W, K, coef.shape[2],
            HAS_BIAS=bias is not None, MIX_ON_R=mix_on_r, INPUT_PRECISION=precision,
            BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_R=cfg["BLOCK_R"],
            num_warps=cfg["num_warps"], num_stages=cfg.get("num_stages", 2))
    return out


def _wgrad(g, x, precision: str, config=None):
    """Per-sample weight gradient (B, 9, O, C) float32."""
    B, O, H, W = g.shape
    C = x.shape[1]
    cfg = dict(BLOCK_O=_pow2(O), BLOCK_C=_pow2(C), BLOCK_P=_pow2(H * W, hi=64), num_warps=4)
    cfg.update(config or {})
    out = torch.empty((B, 9, O, C), device=g.device, dtype=torch.float32)
    grid = (_cdiv(O, cfg["BLOCK_O"]) * _cdiv(C, cfg["BLOCK_C"]), 9, B)
    with on_device(g):
        _mok_wgrad_kernel[grid](g, x, out, O, C, H, W, INPUT_PRECISION=precision,
                                BLOCK_O=cfg["BLOCK_O"], BLOCK_C=cfg["BLOCK_C"], BLOCK_P=cfg["BLOCK_P"],
                                num_warps=cfg["num_warps"], num_stages=cfg.get("num_stages", 2))
    return out


def _weights_fwd(weight):
    """(K, O, C, 3, 3) -> (K, 9, C, O): reduction C, outputs O."""
    K, O, C = weight.shape[:3]
    return weight.permute(0, 3, 4, 2, 1).reshape(K, 9, C, O).contiguous()


def _weights_dgrad(weight):
    """(K, O, C, 3, 3) -> (K, 9, O, C) flipped: reduction O, outputs C (tap t <- 8 - t)."""
    K, O, C = weight.shape[:3]
    return weight.flip(-2, -1).permute(0, 3, 4, 1, 2).reshape(K, 9, O, C).contiguous()


def _check(h, coef, weight, bias):
    if h.dim() != 4 or weight.dim() != 5 or tuple(weight.shape[-2:]) != (3, 3):
        raise ValueError("mokconv kernel: h (B,C,H,W), weight (K,O,C,3,3)")
    B, C = h.shape[:2]
    K, O = weight.shape[:2]
    if weight.shape[2] != C or tuple(coef.shape) != (B, K, O):
        raise ValueError(f"mokconv kernel: shapes h {tuple(h.shape)}, coef {tuple(coef.shape)}, "
                         f"weight {tuple(weight.shape)} do not agree")
    if bias is not None and tuple(bias.shape) != (K, O):
        raise ValueError(f"mokconv kernel: bias must be (K, O) = {(K, O)}")


class MoKConvFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, coef, weight, bias, precision, config):
        h, coef = h.contiguous(), coef.contiguous()
        bias_c = bias.contiguous() if bias is not None else None
        config = config or {}
        out = _conv(h, coef, _weights_fwd(weight), bias_c, False, precision, config.get("fwd"))
        ctx.save_for_backward(h, coef, weight, bias)
        ctx.precision, ctx.config = precision, config
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        h, coef, weight, bias = ctx.saved_tensors
        need_h, need_c, need_w, need_b = ctx.needs_input_grad[:4]
        g = g.contiguous()
        dh = dcoef = dw = db = None
        if need_h:
            dh = _conv(g, coef, _weights_dgrad(weight), None, True, ctx.precision,
                       ctx.config.get("dgrad"))
        if need_c or need_w or need_b:
            gsum = g.float().sum(dim=(2, 3))                                   # (B, O)
            c32 = coef.float()
            if need_c or need_w:
                K, O, C = weight.shape[:3]
                dwm = _wgrad(g, h, ctx.precision, ctx.config.get("wgrad"))     # (B, 9, O, C)
                if need_w:
                    dw = torch.einsum("bko,btoc->koct", c32, dwm).reshape(K, O, C, 3, 3)
                    dw = dw.to(weight.dtype)
                if need_c:
                    w9 = weight.float().reshape(K, O, C, 9)
                    dcoef = torch.einsum("koct,btoc->bko", w9, dwm)
                    if bias is not None:
                        dcoef = dcoef + bias.float()[None] * gsum[:, None, :]
                    dcoef = dcoef.to(coef.dtype)
            if need_b and bias is not None:
                db = torch.einsum("bko,bo->ko", c32, gsum).to(bias.dtype)
        return dh, dcoef, dw, db, None, None


def mokconv(h, coef, weight, bias=None, *, input_precision=None, config: dict | None = None):
    """h (B,C,H,W), coef (B,K,O), weight (K,O,C,3,3), bias (K,O) -> (B,O,H,W); differentiable in
    all four. ``config``: optional tile overrides {"fwd": {...}, "dgrad": {...}, "wgrad": {...}}."""
    _need_triton()
    _check(h, coef, weight, bias)
    return MoKConvFunction.apply(h, coef, weight, bias, resolve_precision(input_precision), config)


def mokconv_cost(B, C, O, H, W, K, in_bytes=4) -> dict:
    """Useful forward FLOPs (the GEMM plus the in-load mixing per tile is extra) and the minimum
    bytes (input, output, base kernels, coefficients)."""
    return {"flops_fwd": 2 * B * O * C * 9 * H * W,
            "bytes_min_fwd": in_bytes * (B * C * H * W + B * O * H * W + K * O * C * 9 + B * K * O)}
