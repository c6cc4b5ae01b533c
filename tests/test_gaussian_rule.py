"""The Gaussian score rule against a float64 numpy reference (full covariance matrices, explicit
inverses, refits without each held-out image) and scikit-learn's shrinkage estimators."""
import pickle

import numpy as np
import pytest

from conftest import make_images
from ofa_sdk import Attributor
from ofa_sdk.scoring import (Calibration, GaussianRule, fit_gaussian, image_points, mahalanobis,
                             pooled_whitener, shrinkage, unit)

RAW = Calibration(1.0, 0.0)


def _shrunk_cov(x, alpha):
    xc = x - x.mean(0)
    s = xc.T @ xc / len(x)
    return (1 - alpha) * s + alpha * np.trace(s) / x.shape[1] * np.eye(x.shape[1])


def _ref_d2(x, q, alpha):
    """Squared Mahalanobis distances of q to the rows of x under the shrunk covariance, by an
    explicit inverse (float64)."""
    r = q - x.mean(0)
    return np.einsum("nd,de,ne->n", r, np.linalg.inv(_shrunk_cov(x, alpha)), r)


@pytest.mark.parametrize("n,d", [(2, 8), (5, 16), (40, 16), (100, 128), (300, 20)])
def test_shrinkage_matches_scikit_learn(n, d):
    from sklearn.covariance import OAS, ledoit_wolf_shrinkage
    rng = np.random.default_rng(n + d)
    x = rng.normal(size=(n, d)) * rng.uniform(0.1, 2, size=d) + rng.normal(size=d)
    assert shrinkage(x, "ledoit-wolf") == pytest.approx(ledoit_wolf_shrinkage(x), rel=1e-9, abs=1e-12)
    assert shrinkage(x, "oas") == pytest.approx(OAS().fit(x).shrinkage_, rel=1e-9, abs=1e-12)
    assert shrinkage(x[:1]) == 1.0
    with pytest.raises(ValueError, match="shrinkage must be"):
        shrinkage(x, "fixed")


@pytest.mark.parametrize("n", [3, 4, 12, 33])
def test_low_rank_form_is_exact_up_to_its_rank(n):
    rng = np.random.default_rng(n)
    d = 24
    x = unit(rng.normal(size=(n, d)) + 2 * rng.normal(size=d))
    q = unit(rng.normal(size=(7, d)))
    fit = fit_gaussian(x, rank=n)                # rank >= n - 1: nothing is dropped
    np.testing.assert_allclose(mahalanobis(fit, q), _ref_d2(x, q, shrinkage(x)), rtol=1e-8)


def test_fewer_than_three_points_are_isotropic():
    rng = np.random.default_rng(0)
    x = unit(rng.normal(size=(2, 6)))
    q = unit(rng.normal(size=(3, 6)))
    own = fit_gaussian(x)                       # two points: their own mean variance (unbiased)
    assert len(own.lam) == 0 and own.sigma2 == pytest.approx(((x - x.mean(0)) ** 2).sum() / 6)
    np.testing.assert_allclose(mahalanobis(own, q), ((q - x.mean(0)) ** 2).sum(1) / own.sigma2)
    prior = fit_gaussian(x[:1], prior_var=0.01)  # one point: the prior
    np.testing.assert_allclose(mahalanobis(prior, q), ((q - x[0]) ** 2).sum(1) / 0.01)
    with pytest.raises(ValueError, match="prior variance"):
        fit_gaussian(x[:1])
    # the rule gives one-image profiles its prior; with no prior it refuses them
    rule = GaussianRule(RAW, prior_var=0.01)
    state = rule.prepare([x[:1], x], counts=[1, 1])
    np.testing.assert_allclose(1 - rule.raw_scores(state, [z[None] for z in q])[:, 0],
                               ((q - x[0]) ** 2).sum(1) / 0.01 / 6, rtol=1e-5)
    with pytest.raises(ValueError, match="prior variance"):
        GaussianRule(RAW).prepare([x[:1]])


def test_truncated_rank_keeps_the_trace_and_the_top_directions():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(60, 16)) * np.linspace(3, 0.2, 16)
    fit = fit_gaussian(x, rank=4)
    full = _shrunk_cov(x, fit.alpha)
    ev, v = np.linalg.eigh(full)
    np.testing.assert_allclose(fit.lam, ev[::-1][:4], rtol=1e-8)
    assert fit.lam.sum() + fit.sigma2 * 12 == pytest.approx(np.trace(full), rel=1e-10)
    # the batched float32 form of the rule equals the float64 reference of the same fit
    rule = GaussianRule(RAW, rank=4)
    state = rule.prepare([x], counts=[1])
    q = rng.normal(size=(5, 16))
    got = rule.distances(state, unit(q))[:, 0] * 16
    np.testing.assert_allclose(got, mahalanobis(fit_gaussian(unit(x), rank=4), unit(q)), rtol=2e-4)


def test_rule_scores_profiles_of_different_sizes_and_crops():
    rng = np.random.default_rng(5)
    d = 12
    # profiles of 3 images x 4 crops, 1 image x 4 crops, 9 images of 1-3 crops, 2 images x 2 crops
    counts = [[4, 4, 4], [4], [1, 2, 3, 1, 2, 3, 1, 2, 3], [2, 2]]
    supports = [unit(rng.normal(size=(sum(c), d)) + rng.normal(size=d)) for c in counts]
    queries = [unit(rng.normal(size=(k, d))) for k in (1, 4, 2)]
    rule = GaussianRule(RAW, prior_var=0.02)
    raw = rule.raw_scores(rule.prepare(supports, counts=counts), queries)
    q = np.stack([unit(z.mean(0)) for z in queries])
    for p, (s, c) in enumerate(zip(supports, counts)):
        pts = image_points(s, c)
        np.testing.assert_allclose(pts[0], unit(s[:c[0]].mean(0)), rtol=1e-12)
        # shaped from 4 images (a 3-image profile is isotropic like its refits): the prior here
        want = _ref_d2(pts, q, shrinkage(pts)) if len(pts) > 3 else ((q - pts.mean(0)) ** 2).sum(1) / 0.02
        np.testing.assert_allclose(1 - raw[:, p], want / d, rtol=2e-4)
    assert (raw <= 1).all()                      # 1 - D^2 / d: at most 1, like a cosine
    state = rule.prepare(supports[:1], counts=counts[:1])
    assert rule.raw_scores(state, []).shape == (0, 1)


def test_gallery_whitening_by_hand():
    rng = np.random.default_rng(8)
    d = 10
    supports = [rng.normal(size=(n, d)) * np.linspace(2, 0.5, d) + 3 * rng.normal(size=d)
                for n in (6, 15, 30)]
    w, var = pooled_whitener(supports)
    r = np.concatenate([s - s.mean(0) for s in supports])
    pooled = _shrunk_cov(r + 0, shrinkage(r))   # r is centred per profile: mean ~ 0 overall
    ev, v = np.linalg.eigh(pooled)
    want = v @ np.diag((ev / ev.mean()) ** -0.5) @ v.T
    np.testing.assert_allclose(w, want, rtol=1e-6, atol=1e-9)
    # the whitened pooled covariance is the identity times its mean eigenvalue
    np.testing.assert_allclose(w @ pooled @ w, ev.mean() * np.eye(d), atol=1e-8)
    assert var == pytest.approx(ev.mean())
    rule = GaussianRule(RAW, whiten="gallery")
    units = [unit(s) for s in supports]
    state = rule.prepare(units)
    wq = unit(rng.normal(size=(4, d)))
    pts = [u @ state.whitener for u in units]
    np.testing.assert_allclose(state.whitener, pooled_whitener(units)[0], rtol=1e-9)
    for p, x in enumerate(pts):
        got = 1 - rule.raw_scores(state, [q[None] for q in wq])[:, p]
        np.testing.assert_allclose(got * d, _ref_d2(x, wq @ state.whitener, shrinkage(x)), rtol=2e-4)
    # selecting profiles keeps the whitener of the gallery the snapshot was made from
    sub = rule.select(state, [2, 0])
    assert sub.whitener is state.whitener and len(sub) == 2
    with pytest.raises(ValueError, match="whiten must be"):
        GaussianRule(RAW, whiten="pca")


@pytest.mark.parametrize("n", [3, 7, 25])
def test_leave_one_out_refits_without_each_image(n):
    rng = np.random.default_rng(n)
    d = 8
    s = unit(rng.normal(size=(2 * n, d)) + rng.normal(size=d))       # n images x 2 crops
    rule = GaussianRule(RAW)
    got = rule.leave_one_out(s, 2)
    pts = image_points(s, 2)
    folds = min(n, 10)
    for i in range(n):
        rest = np.delete(pts, np.arange(i % folds, n, folds), 0)
        if len(rest) >= 3:
            d2 = _ref_d2(rest, pts[i:i + 1], shrinkage(rest))[0]
        else:                                   # two points: isotropic, their own variance
            d2 = ((pts[i] - rest.mean(0)) ** 2).sum() / (((rest - rest.mean(0)) ** 2).sum() / d)
        want = 1 - d2 / d
        assert got[i] == pytest.approx(want, rel=1e-6)
    with pytest.raises(ValueError, match="at least 2"):
        rule.leave_one_out(s[:2], 2)


@pytest.mark.parametrize("whiten", [None, "gallery"])
def test_attributor_gaussian_scores_by_hand(gauss_model, tmp_path, whiten):
    a = make_images(tmp_path / "a", 8, 2, kind="noise")
    b = make_images(tmp_path / "b", 8, 3, kind="blocky")
    att = Attributor(model=gauss_model, crops=4, whiten=whiten)
    assert att.rule.name == "gaussian"          # the preferred rule of a model calibrated for it
    att.enroll("gen-a", a[:5])
    att.enroll("gen-b", b[:5])
    snap = att.snapshot()
    pts = [image_points(att.gallery.get(n).support, 4) for n in ("gen-a", "gen-b")]
    w = pooled_whitener(pts)[0] if whiten else np.eye(pts[0].shape[1])
    q = att.fingerprint(a[5:] + b[5:]).astype(np.float64) @ w
    for p, x in enumerate(pts):
        d2 = _ref_d2(x @ w, q, shrinkage(x @ w)) / q.shape[1]
        want = 1 / (1 + np.exp(-(-3.0 * np.log(d2) + 1.0)))
        np.testing.assert_allclose(att.scores(a[5:] + b[5:])[:, p], want, rtol=2e-3, atol=1e-6)
    # thresholds: the prediction bound on the held-out distances, per profile and crop count
    from ofa_sdk.scoring import held_out_stats
    for p, name in enumerate(snap.names):
        prof = att.gallery.get(name)     # the 1-crop level is held out on its centre crops
        own = held_out_stats(att.rule, prof.support, 4, state=snap.state, centre=prof.centre)
        assert snap.thresholds[p] == pytest.approx(att.rule.to_prob(own.threshold(0.05)))
        assert att.profile_threshold(name) == pytest.approx(snap.thresholds[p])
        assert snap.thresholds_at(1)[p] == pytest.approx(att.rule.to_prob(own.threshold(0.05, 1)))
        assert att.profile_threshold(name, crops=1) == pytest.approx(snap.thresholds_at(1)[p])
    # a snapshot pickles (workers, Ray actors) and scores the same afterwards
    queries = [e.z for e in att.embed_stream(a[5:])]
    back = pickle.loads(pickle.dumps(snap))
    np.testing.assert_array_equal(back.scores(queries), snap.scores(queries))
    # typicality reads the score on the profile's own leave-one-out scale
    r = att.attribute(a[5:6])[0]
    assert r.typicality is not None and 0 <= r.typicality <= 1


def test_gaussian_needs_its_calibration_and_whiten_needs_the_rule(tiny_model, gauss_model):
    with pytest.raises(ValueError, match="'gaussian' calibration"):
        Attributor(model=tiny_model, rule="gaussian")
    with pytest.raises(ValueError, match="whiten"):
        Attributor(model=gauss_model, rule="prototype", whiten="gallery")


def test_enrolling_more_images_updates_the_profile(gauss_model, tmp_path):
    a = make_images(tmp_path / "a", 9, 2, kind="noise")
    att = Attributor(model=gauss_model, crops=4)
    att.enroll("gen-a", a[:4])
    before = att.snapshot()
    with pytest.raises(Exception, match="add=True"):
        att.enroll("gen-a", a[4:7])
    with pytest.raises(ValueError, match="pass one"):
        att.enroll("gen-a", a[4:7], add=True, overwrite=True)
    prof = att.enroll("gen-a", a[4:7], add=True)
    # the support is the union, in order, and the rule's state is the refit on it
    want = np.concatenate([e.z for e in att.embed_stream(a[:7])])
    np.testing.assert_allclose(prof.support, want, atol=1e-6)
    assert prof.metadata["used"] == 7 and prof.metadata["crop_counts"] == [4] * 7
    assert prof.metadata["added"][0]["used"] == 3 and prof.metadata["skipped"] == 0
    after = att.snapshot()
    ref = GaussianRule(att.rule.calibration, prior_var=att.rule.prior_var).prepare([want], counts=[4])
    np.testing.assert_allclose(after.state.means, ref.means, atol=1e-6)
    assert not np.allclose(after.state.means, before.state.means)
    assert after.thresholds != before.thresholds        # the threshold follows the support
    # a profile stored by an older SDK (one crop count for all images, no per-image counts)
    # is scored from its stored support exactly as the same profile stored today
    from ofa_sdk.gallery import Profile
    legacy = {k: v for k, v in prof.metadata.items() if k != "crop_counts"}
    att.gallery.put(Profile("legacy", prof.model_id, prof.support, prof.support_part, legacy,
                            prof.created + 1, prof.spectrum))
    s = att.scores(a[7:])
    np.testing.assert_allclose(s[:, att.gallery.names().index("legacy")],
                               s[:, att.gallery.names().index("gen-a")], rtol=1e-9)


def test_whitening_with_one_profile_and_with_too_few_points():
    rng = np.random.default_rng(11)
    d = 6
    x = unit(rng.normal(size=(12, d)) * np.linspace(2, 0.5, d) + 2 * rng.normal(size=d))
    rule = GaussianRule(RAW, whiten="gallery", prior_var=0.03)
    # one profile: the whitener is that profile's own shrunk covariance, and the pooled
    # variance becomes the prior of small profiles
    state = rule.prepare([x])
    w, var = pooled_whitener([x])
    np.testing.assert_allclose(state.whitener, w, rtol=1e-9)
    assert state.prior_var == pytest.approx(var)
    # a one-image profile beside it gets the gallery's pooled variance, in whitened space
    state = rule.prepare([x, x[:1]])
    q = unit(rng.normal(size=(3, d)))
    got = 1 - rule.raw_scores(state, [z[None] for z in q])[:, 1]
    want = (((q - x[0]) @ state.whitener) ** 2).sum(1) / state.prior_var / d
    np.testing.assert_allclose(got, want, rtol=1e-6)
    # profiles with fewer than 3 residuals in all: nothing to whiten by, the model's prior
    state = rule.prepare([x[:1], x[1:3]])
    assert state.whitener is None and state.prior_var == 0.03


def test_evaluation_and_same_source_fit_images_not_crops(gauss_model, tmp_path):
    """The evaluation runner's support scores and same_source fit the Gaussian on images (crop
    means), exactly as an enrolled profile does."""
    from ofa_sdk.evaluation.support import support_scores
    a = make_images(tmp_path / "a", 8, 2, kind="noise")
    b = make_images(tmp_path / "b", 2, 3, kind="blocky")
    att = Attributor(model=gauss_model, crops=4)
    att.enroll("gen-a", a[:6])
    zs = [e.z for e in att.embed_stream(a + b)]
    sup = att.gallery.get("gen-a").support
    np.testing.assert_allclose(support_scores(att, zs[6:], sup, 4), att.verify(a[6:] + b, "gen-a"),
                               rtol=1e-6)
    # same_source: each image a one-image profile (isotropic, the model's prior variance)
    za, zb = zs[6], zs[8]
    d = za.shape[1]
    d2 = ((image_points(zb, 4)[0] - image_points(za, 4)[0]) ** 2).sum() / att.rule.prior_var / d
    want = 1 / (1 + np.exp(-(-3.0 * np.log(d2) + 1.0)))
    assert att.same_source(a[6], b[0]) == pytest.approx(want, rel=1e-6)


def test_whitened_scores_do_not_depend_on_the_profiles_asked_for(gauss_model, tmp_path):
    a = make_images(tmp_path / "a", 7, 2, kind="noise")
    b = make_images(tmp_path / "b", 7, 3, kind="blocky")
    c = make_images(tmp_path / "c", 7, 4, kind="noise")
    att = Attributor(model=gauss_model, crops=4, whiten="gallery")
    for name, ims in (("gen-a", a), ("gen-b", b), ("gen-c", c)):
        att.enroll(name, ims[:5])
    q = a[5:] + b[5:]
    full = att.scores(q)
    np.testing.assert_allclose(att.verify(q, "gen-b"), full[:, 1], rtol=1e-9)
    snap = att.snapshot(["gen-c", "gen-a"])
    whole = att.snapshot()
    np.testing.assert_allclose(snap.state.whitener, whole.state.whitener)
    assert snap.thresholds == (whole.thresholds[2], whole.thresholds[0])
    assert att.profile_threshold("gen-b") == pytest.approx(whole.thresholds[1])

