"""Triton pair-rule gallery scoring vs float64 references (the PyTorch reference beside the kernel
and the model's own ``PairHead.pair_logits``). Without CUDA: the Triton interpreter on CPU
tensors; with CUDA: compiled, plus the TF32 test.
"""

import pytest
import torch
import torch.nn as nn

pytest.importorskip("triton")

from ofa_sdk.kernels import gallery as kg  # noqa: E402
from ofa_sdk.models import PairHead  # noqa: E402

from conftest import CUDA, DEVICE  # noqa: E402  (conftest also sets TRITON_INTERPRET)

# scores are probabilities in [0, 1]; kernel float32 vs float64 reference, by input dtype
TOL = {
    torch.float32: dict(rtol=1e-5, atol=1e-6),
    torch.float16: dict(rtol=1e-5, atol=1e-6),   # vs the reference on the same fp16 values
}
GPU_TOL = {"ieee": dict(rtol=1e-5, atol=1e-6), "tf32x3": dict(rtol=1e-5, atol=1e-6),
           "tf32": dict(rtol=1e-3, atol=1e-3)}
SMALL = dict(BLOCK_Q=16, BLOCK_S=2, BLOCK_K=16, BLOCK_H2=16)


def make(Q, P, S, hd, h2, counts, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(Q, hd, generator=g)
    s = torch.randn(P, S, hd, generator=g)
    counts = torch.tensor(counts)
    for p, c in enumerate(counts.tolist()):
        s[p, c:] = float("nan")                  # padding must never be read
    torch.manual_seed(seed)
    rest = nn.Sequential(nn.Linear(hd, h2), nn.ReLU(), nn.Linear(h2, 1))
    return q.to(DEVICE), s.to(DEVICE), counts.to(DEVICE), rest.to(DEVICE)


def ref64(q, s, counts, rest):
    r64 = [p.detach().double().cpu() for p in kg.head_layers(rest)]
    return kg.pair_gallery_scores_reference(q.double().cpu(), s.double().cpu(), counts.cpu(), r64)


@pytest.mark.parametrize("dims", [(5, 3, 6, 12, 10, [6, 2, 1]), (17, 2, 3, 7, 9, [3, 3]),
                                  (1, 4, 5, 16, 16, [5, 1, 4, 2])])
def test_matches_reference(dims):
    q, s, counts, rest = make(*dims)
    with torch.no_grad():
        out = kg.pair_gallery_scores(q, s, counts, rest)
    assert out.shape == (dims[0], dims[1]) and out.dtype == torch.float32
    torch.testing.assert_close(out.double().cpu(), ref64(q, s, counts, rest), **TOL[torch.float32])


def test_multi_chunk_tiles():
    """h=40, h2=35 with 16-wide chunks, 2 supports per step: every loop runs partial tiles."""
    q, s, counts, rest = make(19, 3, 7, 40, 35, [7, 4, 5], seed=1)
    with torch.no_grad():
        out = kg.pair_gallery_scores(q, s, counts, rest, config=SMALL)
    torch.testing.assert_close(out.double().cpu(), ref64(q, s, counts, rest), **TOL[torch.float32])


def test_equals_pair_head_mean_probability():
    """The model's own pair rule: mean over a profile's supports of sigmoid(pair_logits)."""
    torch.manual_seed(0)
    head = PairHead(16, (12, 10)).double()
    zq, zs = torch.randn(4, 16, dtype=torch.double), torch.randn(2, 5, 16, dtype=torch.double)
    counts = [5, 3]
    with torch.no_grad():
        qp, sp = head.query_part(zq), head.support_part(zs)
        want = torch.stack([torch.sigmoid(head.pair_logits(qp, sp[p, :counts[p]])).mean(1)
                            for p in range(2)], dim=1)
        out = kg.pair_gallery_scores(qp.float().to(DEVICE), sp.float().to(DEVICE),
                                     torch.tensor(counts, device=DEVICE), head.rest.float().to(DEVICE))
    torch.testing.assert_close(out.double().cpu(), want, **TOL[torch.float32])


def test_half_inputs_and_tuple_head():
    q, s, counts, rest = make(3, 2, 4, 8, 6, [4, 2], seed=2)
    q, s = q.half(), s.half()
    w1, b1, w2, b2 = kg.head_layers(rest)
    with torch.no_grad():
        out = kg.pair_gallery_scores(q, s, counts, (w1, b1, w2, b2))
    torch.testing.assert_close(out.double().cpu(), ref64(q, s, counts, rest), **TOL[torch.float16])


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # interpreter 0/0
def test_empty_profile_is_nan():
    q, s, counts, rest = make(2, 2, 3, 8, 8, [0, 3], seed=3)
    with torch.no_grad():
        out = kg.pair_gallery_scores(q, s, counts, rest).cpu()
    assert torch.isnan(out[:, 0]).all() and torch.isfinite(out[:, 1]).all()
    assert torch.isnan(ref64(q, s, counts, rest)[:, 0]).all()


def test_rejects_other_heads():
    rest = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 1))
    with pytest.raises(ValueError, match="Linear"):
        kg.head_layers(rest)


@CUDA
@pytest.mark.parametrize("precision", ["ieee", "tf32x3", "tf32"])
def test_gpu_precisions(precision):
    q, s, counts, rest = make(300, 7, 40, 128, 128, [40, 1, 17, 33, 40, 2, 9], seed=4)
    with torch.no_grad():
        out = kg.pair_gallery_scores(q, s, counts, rest, input_precision=precision)
    torch.testing.assert_close(out.double().cpu(), ref64(q, s, counts, rest), **GPU_TOL[precision])
