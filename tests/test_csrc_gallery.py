"""csrc/gallery_cpu.cpp: the fused pair-rule gallery scoring ``ofa_sdk._gallery_cpu`` against a
float64 numpy reference, and its place behind ``PairRule`` (through ``kernels.dispatch``).

Reference: ``mean_j sigmoid(w2 . relu(W1 relu(q + s_j) + b1) + b2)`` in float64. Tolerance: the
kernel accumulates 128-term float32 dot products, so |p - p_ref| <= 2e-6 (measured when written:
about 5e-8; the numpy float32 path: about 1e-7).
"""
from __future__ import annotations

import importlib

import numpy as np
import pytest

from ofa_sdk.kernels import dispatch
from ofa_sdk.scoring import PairHeadWeights, PairRule

try:
    G = importlib.import_module("ofa_sdk._gallery_cpu")
except ImportError as e:      # the install builds it; a skip here names the failed build
    G, _WHY = None, f"ofa_sdk._gallery_cpu is not built ({e})"
else:
    _WHY = ""
needs_ext = pytest.mark.skipif(G is None, reason=_WHY)
TOL = 2e-6


def head(d=32, h=40, h2=24, seed=0) -> PairHeadWeights:
    r = np.random.default_rng(seed)
    f = lambda *s, sd=0.2: r.normal(0, sd, s).astype(np.float32)   # noqa: E731
    return PairHeadWeights(f(h, d), f(h, d), f(h), ((f(h2, h), f(h2)), (f(1, h2, sd=0.5), f(1))))


def ref64(hd: PairHeadWeights, q: np.ndarray, parts) -> np.ndarray:
    (w1, b1), (w2, b2) = [(np.float64(w), np.float64(b)) for w, b in hd.rest]
    out = np.zeros((len(q), len(parts)))
    for p, s in enumerate(parts):
        x = np.maximum(q[:, None, :].astype(np.float64) + s[None].astype(np.float64), 0)
        logit = np.maximum(x @ w1.T + b1, 0) @ w2[0] + b2[0]
        out[:, p] = (1 / (1 + np.exp(-logit))).mean(1) if s.shape[0] else np.nan
    return out


def call(hd, q, parts, threads=2):
    (w1, b1), (w2, b2) = hd.rest
    return G.pair_scores(q, parts, w1, b1, w2.reshape(-1), float(b2[0]), threads)


@needs_ext
@pytest.mark.parametrize("d,h,h2", [(32, 40, 24), (16, 7, 5), (128, 128, 128), (8, 1, 17)])
@pytest.mark.parametrize("counts", [[1], [5, 6, 7, 13], [100, 2]])
def test_matches_float64(d, h, h2, counts):
    hd = head(d, h, h2)
    r = np.random.default_rng(1)
    q = hd.query_part(r.normal(size=(3, d)))
    parts = [hd.support_part(r.normal(size=(n, d))) for n in counts]
    got = call(hd, q, parts)
    assert got.shape == (3, len(counts)) and got.dtype == np.float32
    np.testing.assert_allclose(got, ref64(hd, q, parts), atol=TOL, rtol=0)


@needs_ext
def test_threads_agree_and_inputs_are_cast():
    hd = head()
    r = np.random.default_rng(2)
    q = hd.query_part(r.normal(size=(9, 32)))
    parts = [hd.support_part(r.normal(size=(n, 32))) for n in (3, 11, 6, 1, 20)]
    one = call(hd, q, parts, threads=1)
    for t in (2, 3, 0):
        np.testing.assert_array_equal(call(hd, q, parts, threads=t), one)
    # float64 and non-contiguous inputs are converted, not misread
    q64 = np.asfortranarray(q.astype(np.float64))
    np.testing.assert_allclose(call(hd, q64, [p.astype(np.float64) for p in parts]), one, atol=1e-7)


@needs_ext
def test_edges_and_errors():
    hd = head()
    r = np.random.default_rng(3)
    q = hd.query_part(r.normal(size=(2, 32)))
    assert call(hd, q, []).shape == (2, 0)
    assert call(hd, q[:0], [hd.support_part(r.normal(size=(4, 32)))]).shape == (0, 1)
    assert np.isnan(call(hd, q, [np.zeros((0, 40), np.float32)])).all()    # empty mean
    (w1, b1), (w2, b2) = hd.rest
    with pytest.raises(ValueError, match=r"parts\[1\] has 39 columns, expected 40"):
        G.pair_scores(q, [np.zeros((2, 40), np.float32), np.zeros((2, 39), np.float32)],
                      w1, b1, w2.reshape(-1), 0.0)
    with pytest.raises(ValueError, match="w1 has"):
        G.pair_scores(q, [], w1[:, :5], b1, w2.reshape(-1), 0.0)
    with pytest.raises(ValueError, match="b1 must have shape"):
        G.pair_scores(q, [], w1, b1[:3], w2.reshape(-1), 0.0)
    with pytest.raises(ValueError, match="query_part must be 2-D"):
        G.pair_scores(q[0], [], w1, b1, w2.reshape(-1), 0.0)
    with pytest.raises(ValueError, match="w2 must have 24 values"):
        G.pair_scores(q, [], w1, b1, w2.reshape(-1)[:5], 0.0)
    with pytest.raises(ValueError, match="b2 must be finite"):
        G.pair_scores(q, [], w1, b1, w2.reshape(-1), float("nan"))
    # a NaN fingerprint scores NaN, as in the numpy reference (never a finite probability)
    bad = q.copy()
    bad[0, 3] = np.nan
    part = hd.support_part(r.normal(size=(7, 32)))
    got = call(hd, bad, [part])
    assert np.isnan(got[0, 0]) and np.isfinite(got[1, 0])
    assert np.isnan(hd.mean_probs(bad, part)[0])


@needs_ext
def test_pair_rule_routes_through_the_switch():
    """PairRule scores with the kernel equal those with the reference forced, exhaustive and
    prefiltered; a head of another shape stays on the reference."""
    hd = head(d=16, h=24, h2=12)
    r = np.random.default_rng(4)
    supports = [r.normal(size=(n, 16)).astype(np.float32) for n in (8, 5, 12, 3)]
    queries = [r.normal(size=(k, 16)).astype(np.float32) for k in (1, 4, 2)]
    q = hd.query_part(queries[0])
    assert dispatch.which("pair_gallery_scores", q, rest=hd) == "cpp"
    for rule in (PairRule(hd), PairRule(hd, prefilter=2)):
        state = rule.prepare(supports)
        fast = rule.scores(state, queries)
        with dispatch.reference():
            assert dispatch.which("pair_gallery_scores", q, rest=hd) == "reference"
            slow = rule.scores(state, queries)
        np.testing.assert_allclose(fast, slow, atol=TOL, rtol=0)
        assert (fast > 0).sum(1).tolist() == ([4] * 3 if rule.prefilter == 0 else [2] * 3)
    # leave-one-out (per-profile thresholds) runs through the same kernel, images as profiles
    z = np.concatenate(supports)
    crops = [4] * 5 + [1] * 8
    img = np.repeat(np.arange(13), crops)
    p = ref64(hd, hd.query_part(z), [hd.support_part(z[j:j + 1]) for j in range(len(z))])
    other = img[:, None] != img[None, :]
    want = np.bincount(img, (p * other).sum(1) / other.sum(1)) / np.bincount(img)
    np.testing.assert_allclose(PairRule(hd).leave_one_out(z, crops), want, atol=TOL, rtol=0)
    with dispatch.reference():
        np.testing.assert_allclose(PairRule(hd).leave_one_out(z, crops), want, atol=TOL, rtol=0)
    deep = PairHeadWeights(hd.w_support, hd.w_query, hd.bias,
                           hd.rest[:1] + ((np.eye(12, dtype=np.float32), np.zeros(12, np.float32)),)
                           + hd.rest[1:])
    assert not deep.fusable
    assert dispatch.decide("pair_gallery_scores", q, rest=deep) == (
        "reference", "pair head is not Linear-ReLU-Linear")
    assert PairRule(deep).scores(PairRule(deep).prepare(supports), queries).shape == (3, 4)


def test_pair_leave_one_out_reference_matches_direct_formula():
    """The numpy fallback of the leave-one-out rewrite (no extension needed)."""
    hd = head(d=16, h=24, h2=12, seed=5)
    r = np.random.default_rng(6)
    z = r.normal(size=(14, 16)).astype(np.float32)
    crops = [3, 3, 3, 1, 1, 1, 2]
    img = np.repeat(np.arange(len(crops)), crops)
    p = ref64(hd, hd.query_part(z), [hd.support_part(z[j:j + 1]) for j in range(len(z))])
    other = img[:, None] != img[None, :]
    want = np.bincount(img, (p * other).sum(1) / other.sum(1)) / np.bincount(img)
    with dispatch.reference():
        np.testing.assert_allclose(PairRule(hd).leave_one_out(z, crops), want, atol=TOL, rtol=0)
    with pytest.raises(ValueError, match="support part has 13 rows for 14 fingerprints"):
        PairRule(hd).leave_one_out(z, crops, part=hd.support_part(z[:13]))
