"""The PyTorch reference of every op: the definition each kernel and extension must equal.

* high-pass: :data:`LAPLACIAN` and :func:`highpass` (the one definition of the fixed 3x3
  Laplacian residual: the model's ``spectrum.residual="highpass"``, the evaluation's non-learned
  baseline, the fused high-pass spectrum's reference);
* spectrum: :func:`log_spectrum_torch` (rfft2 + Hermitian mirror, the model's path),
  :func:`log_spectrum_ref` (the fft2 definition), and with a scale :func:`log_spectrum_reference`
  and :func:`highpass_log_spectrum_reference`;
* MoKConv: :func:`mokconv_weight_mixing` and :func:`mokconv_output_mixing` (paper Eq. 4);
* pair-rule gallery scoring: :func:`pair_gallery_scores_reference` and :func:`head_layers`.

Imports torch only: no Triton, nothing of ``ofa_sdk.models`` (the models import from here and
from :mod:`.dispatch`), so importing it is as light as importing the models. The Triton op files
(``spectrum``, ``mokconv``, ``gallery``) name their reference from here.
"""
from __future__ import annotations

import sys
from functools import lru_cache

import torch
import torch.nn as nn
import torch.nn.functional as F


def exporting() -> bool:
    """True while torch.compile / torch.export / ONNX export / jit / FX trace the code."""
    compiler = getattr(torch, "compiler", None)
    if compiler is not None and (compiler.is_compiling()
                                 or getattr(compiler, "is_exporting", lambda: False)()):
        return True
    if torch.jit.is_scripting() or torch.jit.is_tracing():
        return True
    onnx = sys.modules.get("torch.onnx")
    if onnx is not None and getattr(onnx, "is_in_onnx_export", lambda: False)():
        return True
    fx = sys.modules.get("torch.fx._symbolic_trace")
    if fx is not None and getattr(fx, "is_fx_symbolic_tracing",
                                  getattr(fx, "is_fx_tracing", lambda: False))():
        return True
    return False


# ------------------------------------------------------------------------------------ high-pass
LAPLACIAN = ((0.0, -1.0, 0.0), (-1.0, 4.0, -1.0), (0.0, -1.0, 0.0))


def highpass(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, H-2, W-2): the Laplacian of each channel, valid part, in the
    input's dtype and units. Nothing learned.

    Computed exactly, then rounded once: the five taps are summed in float64 (for inputs in
    [0, 255] or [0, 1] given as float32, 8-bit grey levels included, every partial sum is exact
    there), and the result is
    rounded to the input's dtype. Shifted differences, not a convolution, so cuDNN's TF32 (on
    by default for convolutions on CUDA: about 0.1 grey level of error in exactly the high
    frequencies the fingerprint reads) never applies, and the CPU and every GPU give the same
    bits. (While exporting or compiling the sums run in float32: TensorRT has no float64.)
    The taps are :data:`LAPLACIAN`'s."""
    if x.dim() != 4:
        raise ValueError(f"highpass needs (B, C, H, W), got shape {tuple(x.shape)}")
    d = x.to(torch.float32 if exporting() else torch.float64)
    c = d[..., 1:-1, 1:-1]
    r = 4.0 * c - d[..., :-2, 1:-1] - d[..., 2:, 1:-1] - d[..., 1:-1, :-2] - d[..., 1:-1, 2:]
    return r.to(x.dtype)


def highpass_planes(x: torch.Tensor) -> torch.Tensor:
    """(..., [C,] H, W) with any leading dimensions -> (..., [C,] H-2, W-2): :func:`highpass` on
    a (-1, C, H, W) view."""
    c = x.shape[-3] if x.dim() >= 3 else 1
    r = highpass(x.reshape(-1, c, *x.shape[-2:]))
    return r.reshape(*x.shape[:-2], *r.shape[-2:])


# ------------------------------------------------------------------------------------- spectrum
def _mirror_index(h: int, w: int):
    """Indices into the rfft2 half-spectrum that fill the missing columns W//2+1 .. W-1.
    Cached for eager calls only: index tensors made while tracing (ONNX or torch.export)
    belong to that trace and must not be reused outside it."""
    if exporting():
        return _mirror_index_uncached(h, w)
    return _mirror_index_cached(h, w)


def _mirror_index_uncached(h: int, w: int):
    rows = (-torch.arange(h)) % h
    cols = w - torch.arange(w // 2 + 1, w)
    return rows, cols


_mirror_index_cached = lru_cache(maxsize=32)(_mirror_index_uncached)


def log_spectrum_torch(r: torch.Tensor) -> torch.Tensor:
    """The PyTorch path: (..., H, W) -> float32 log1p(|FFT2|) via rfft2 + Hermitian mirroring."""
    r = r.float()  # FFT in float32 even under autocast
    h, w = r.shape[-2:]
    half = torch.fft.rfft2(r).abs()                       # (..., H, W//2+1)
    rows, cols = _mirror_index(h, w)
    rest = half.index_select(-1, cols.to(half.device)).index_select(-2, rows.to(half.device))
    return torch.log1p(torch.cat([half, rest], dim=-1))


def log_spectrum_ref(r: torch.Tensor) -> torch.Tensor:
    """The definition, with the full complex fft2."""
    return torch.log1p(torch.fft.fft2(r.double()).abs()).to(torch.float32)


def log_spectrum_reference(residual: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """The model's path (rfft2 + Hermitian mirror, float32) on ``residual * scale``."""
    return log_spectrum_torch(residual if scale == 1.0 else residual * scale)


def highpass_log_spectrum_reference(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """(..., H+2, W+2) images -> float32 log-spectrum of ``scale *`` their Laplacian residual
    (as the model's ``residual("highpass")`` then ``spectrum``)."""
    return log_spectrum_torch(highpass_planes(x) * scale)


# -------------------------------------------------------------------------------------- MoKConv
def mix_weights(coef: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
    """coef (B,K,O), weight (K,O,I,kh,kw), bias (K,O) or None -> per-sample (B,O,I,kh,kw),
    (B,O) or None."""
    w = torch.einsum("bko,koihw->boihw", coef, weight)
    b = torch.einsum("bko,ko->bo", coef, bias) if bias is not None else None
    return w, b


def mokconv_weight_mixing(h, coef, weight, bias, padding: int = 1):
    """Per-sample kernels, one grouped conv with the batch folded into groups."""
    B, C, H, W = h.shape
    w, b = mix_weights(coef, weight, bias)
    O = w.shape[1]
    out = F.conv2d(h.reshape(1, B * C, H, W), w.reshape(B * O, C, *w.shape[-2:]),
                   b.reshape(B * O) if b is not None else None, padding=padding, groups=B)
    return out.view(B, O, out.shape[-2], out.shape[-1])


def mokconv_output_mixing(h, coef, weight, bias, padding: int = 1):
    """K dense convs, outputs summed with per-sample, per-channel coefficients."""
    K = weight.shape[0]
    out = 0
    for k in range(K):
        y = F.conv2d(h, weight[k], bias[k] if bias is not None else None, padding=padding)
        out = out + coef[:, k, :, None, None] * y
    return out


# ---------------------------------------------------------------------------- pair-rule gallery
def head_layers(rest):
    """``PairHead.rest`` (Linear, ReLU, Linear) or a tuple (w1, b1, w2, b2) -> the tuple with
    w1 (h2, h), b1 (h2,), w2 (h2,), b2 (1,). Raises ValueError for any other structure."""
    if isinstance(rest, nn.Module):
        mods = list(rest.children()) if isinstance(rest, nn.Sequential) else [rest]
        if (len(mods) != 3 or not isinstance(mods[0], nn.Linear) or not isinstance(mods[1], nn.ReLU)
                or not isinstance(mods[2], nn.Linear) or mods[2].out_features != 1
                or mods[0].bias is None or mods[2].bias is None):
            raise ValueError("pair gallery kernel supports rest = Linear(h, h2), ReLU, Linear(h2, 1)")
        return mods[0].weight, mods[0].bias, mods[2].weight.reshape(-1), mods[2].bias.reshape(1)
    w1, b1, w2, b2 = rest
    return w1, b1, w2.reshape(-1), torch.as_tensor(b2, device=w1.device, dtype=w1.dtype).reshape(1)


def pair_gallery_scores_reference(q, s, counts, rest, chunk: int = 256) -> torch.Tensor:
    """(Q,h), (P,S,h), (P,), rest -> (Q,P) mean pair probability; materialises at most
    (chunk, P, S, h). A profile with count 0 scores NaN (an empty mean)."""
    w1, b1, w2, b2 = head_layers(rest)
    P, S = s.shape[:2]
    counts = counts.to(device=s.device)
    valid = torch.arange(S, device=s.device)[None, :] < counts[:, None]          # (P, S)
    outs = []
    for i in range(0, q.shape[0], chunk):
        x = F.relu(q[i:i + chunk, None, None, :] + s[None])                     # (q, P, S, h)
        logit = F.linear(F.relu(F.linear(x, w1, b1)), w2[None, :], b2).squeeze(-1)
        prob = torch.where(valid[None], torch.sigmoid(logit), torch.zeros_like(logit))
        outs.append(prob.sum(-1) / counts.to(prob.dtype)[None, :])
    if not outs:
        return q.new_zeros((0, P))
    return torch.cat(outs)
