"""Triton pair-rule gallery scoring (the paper's score, Sec. 4.1) in one kernel.

For queries' first-layer parts q (Q, h) (``PairHead.query_part``), every profile's padded support
parts s (P, S, h) (``PairHead.support_part``) with ``counts`` (P,) valid rows each, and the rest of
the pair head ``Linear(h, h2) -> ReLU -> Linear(h2, 1)``:

    score[i, p] = 1/counts[p] * sum_{j < counts[p]} sigmoid(w2 . relu(W1 relu(q_i + s_pj) + b1) + b2)

One program owns a BLOCK_Q tile of queries and one profile, and walks that profile's supports in
BLOCK_S chunks: the (BLOCK_Q * BLOCK_S, h) block of ``relu(q + s)`` is formed in registers chunk by
chunk of h and fed straight to ``tl.dot`` with W1^T; the hidden layer's ReLU, the dot with w2,
the sigmoid and the masked sum over supports follow in registers. Nothing of size Q x P x S x h
(or Q x P x S) is written; padded support rows are never read (masked), so they may hold anything.
The loop stops at the profile's count, so scores cost what the real supports cost.

Reference: :func:`pair_gallery_scores_reference` (:mod:`.reference`; PyTorch, chunked over
queries).
A profile with count 0 scores NaN (an empty mean), in both.
"""
from __future__ import annotations

import torch

from ._triton import PRECISIONS, _cdiv, _jit, _need_triton, _pow2, on_device, tl  # noqa: F401
from .reference import head_layers, pair_gallery_scores_reference  # noqa: F401


# ------------------------------------------------------------------------------------- kernel
@_jit
def _pair_gallery_kernel(
    q_ptr, s_ptr, cnt_ptr, w1t_ptr, b1_ptr, w2_ptr, b2_ptr, out_ptr,
    Q, P, S, HD, H2,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_H2: tl.constexpr,
):
    p = tl.program_id(0).to(tl.int64)
    pid_q = tl.program_id(1)
    offs_q = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
    q_ok = offs_q < Q
    cnt = tl.load(cnt_ptr + p).to(tl.int32)
    n_s = tl.minimum(cnt, S)
    b2 = tl.load(b2_ptr).to(tl.float32)
    s_base = s_ptr + p * S * HD
    acc = tl.zeros((BLOCK_Q,), dtype=tl.float32)
    for j0 in range(0, n_s, BLOCK_S):
        offs_s = j0 + tl.arange(0, BLOCK_S)
        s_ok = offs_s < n_s
        logit = tl.zeros((BLOCK_Q * BLOCK_S,), dtype=tl.float32)
        for c0 in range(0, H2, BLOCK_H2):
            offs_h2 = c0 + tl.arange(0, BLOCK_H2)
            h2_ok = offs_h2 < H2
            z = tl.zeros((BLOCK_Q * BLOCK_S, BLOCK_H2), dtype=tl.float32)
            for k0 in range(0, HD, BLOCK_K):
                offs_k = k0 + tl.arange(0, BLOCK_K)
                k_ok = offs_k < HD
                qt = tl.load(q_ptr + offs_q[:, None] * HD + offs_k[None, :],
                             mask=q_ok[:, None] & k_ok[None, :], other=0.0).to(tl.float32)
                st = tl.load(s_base + offs_s[:, None] * HD + offs_k[None, :],
                             mask=s_ok[:, None] & k_ok[None, :], other=0.0).to(tl.float32)
                x = tl.maximum(qt[:, None, :] + st[None, :, :], 0.0)
                x = tl.reshape(x, (BLOCK_Q * BLOCK_S, BLOCK_K))
                w1 = tl.load(w1t_ptr + offs_k[:, None] * H2 + offs_h2[None, :],
                             mask=k_ok[:, None] & h2_ok[None, :], other=0.0).to(tl.float32)
                z = tl.dot(x, w1, z, input_precision=INPUT_PRECISION)
            b1 = tl.load(b1_ptr + offs_h2, mask=h2_ok, other=0.0).to(tl.float32)
            w2 = tl.load(w2_ptr + offs_h2, mask=h2_ok, other=0.0).to(tl.float32)
            z = tl.maximum(z + b1[None, :], 0.0)
            logit += tl.sum(z * w2[None, :], axis=1)
        lg = tl.reshape(logit, (BLOCK_Q, BLOCK_S)) + b2
        prob = tl.sigmoid(lg)
        acc += tl.sum(tl.where(s_ok[None, :], prob, 0.0), axis=1)
    res = acc / cnt.to(tl.float32)
    tl.store(out_ptr + offs_q * P + p, res, mask=q_ok)


def pair_gallery_scores(q, s, counts, rest, *, input_precision: str = "ieee",
                        config: dict | None = None) -> torch.Tensor:
    """(Q,h), (P,S,h), (P,) int, rest -> (Q,P) float32 scores (see module doc). Forward only."""
    _need_triton()
    if input_precision not in PRECISIONS:
        raise ValueError(f"input_precision must be one of {PRECISIONS}, got {input_precision!r}")
    w1, b1, w2, b2 = head_layers(rest)
    if q.dim() != 2 or s.dim() != 3 or s.shape[2] != q.shape[1] or w1.shape[1] != q.shape[1]:
        raise ValueError(f"pair gallery: q {tuple(q.shape)}, s {tuple(s.shape)}, "
                         f"w1 {tuple(w1.shape)} do not agree")
    Q, HD = q.shape
    P, S = s.shape[:2]
    H2 = w1.shape[0]
    if counts.shape != (P,):
        raise ValueError("pair gallery: counts must be (P,)")
    out = torch.empty((Q, P), device=q.device, dtype=torch.float32)
    if Q == 0 or P == 0:
        return out
    # BLOCK_Q * BLOCK_S rows per dot (<= 128 keeps the (rows, BLOCK_H2) accumulator in registers)
    cfg = dict(BLOCK_Q=16, BLOCK_S=_pow2(S, lo=2, hi=8), BLOCK_K=_pow2(HD, hi=32),
               BLOCK_H2=_pow2(H2, hi=64), num_warps=4)
    cfg.update(config or {})
    q, s = q.detach().contiguous(), s.detach().contiguous()
    w1t = w1.detach().t().contiguous()                                      # (h, h2)
    grid = (P, _cdiv(Q, cfg["BLOCK_Q"]))
    with on_device(q):
        _pair_gallery_kernel[grid](
            q, s, counts.to(device=q.device, dtype=torch.int32).contiguous(), w1t,
            b1.detach().contiguous(), w2.detach().contiguous(), b2.detach().contiguous(), out,
            Q, P, S, HD, H2, INPUT_PRECISION=input_precision,
            BLOCK_Q=cfg["BLOCK_Q"], BLOCK_S=cfg["BLOCK_S"], BLOCK_K=cfg["BLOCK_K"],
            BLOCK_H2=cfg["BLOCK_H2"], num_warps=cfg["num_warps"], num_stages=cfg.get("num_stages", 2))
    return out
