import shutil

import numpy as np
import pytest

from conftest import make_images
from ofa_sdk import Attributor
from ofa_sdk.evaluation.support import leave_one_out_scores, support_scores
from ofa_sdk.scoring import Calibration, fit_logistic, prototype
from ofa_sdk.weights import load_model, read_meta, update_meta


def test_fit_logistic_recovers_parameters_and_stays_finite():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, 200_000)
    y = rng.random(len(x)) < 1 / (1 + np.exp(-(6 * x - 1.5)))
    # equal-sized classes are not needed: the fit weights them equally, so compare with a
    # balanced subsample's truth by checking the decision point and the slope's sign and size
    a, b = fit_logistic(x[y], x[~y])
    prior = np.log(y.mean() / (1 - y.mean()))
    assert abs(a - 6) < 0.3 and abs(b - (-1.5 - prior)) < 0.1
    a2, b2 = fit_logistic([0.9, 0.95, 1.0], [0.1, 0.2, 0.3])  # separable: finite, right way round
    assert np.isfinite([a2, b2]).all() and a2 > 0 and Calibration(a2, b2)(0.95) > 0.9
    with pytest.raises(ValueError):
        fit_logistic([], [0.1])


def test_prototype_is_unit_mean():
    z = np.array([[1.0, 0, 0], [0, 1.0, 0]])
    np.testing.assert_allclose(prototype(z), [2 ** -0.5, 2 ** -0.5, 0])
    assert Calibration.from_meta({}) is None
    c = Calibration.from_meta({"calibration": {"prototype": {"a": 2.0, "b": -1.0}}})
    assert c == Calibration(2.0, -1.0) and abs(float(c(0.5)) - 0.5) < 1e-12


@pytest.fixture
def calibrated(tiny_model, tmp_path):
    path = tmp_path / "cal.safetensors"
    shutil.copy(tiny_model, path)
    update_meta(path, {"calibration": {"prototype": {"a": 8.0, "b": -4.0}}})
    return path


def test_score_rules_by_hand(tiny_model, calibrated, tmp_path):
    with pytest.raises(ValueError, match="calibrat"):
        Attributor(model=tiny_model, rule="prototype")
    with pytest.raises(ValueError, match="rule must be"):
        Attributor(model=tiny_model, rule="knn")
    assert read_meta(calibrated)["config"] == read_meta(tiny_model)["config"]
    a = make_images(tmp_path / "a", 6, 2, kind="noise")
    b = make_images(tmp_path / "b", 6, 3, kind="blocky")
    att = Attributor(model=calibrated, crops=4)
    assert att.rule.name == "prototype"
    att.enroll("gen-a", a[:3])
    att.enroll("gen-b", b[:3])
    # by hand: calibrated cosine of crop-mean fingerprints against the support's mean
    support = att.fingerprint(a[:3])  # unit crop means; their mean has the same direction as
    crops_a = att.gallery.get("gen-a").support  # the mean over all support crops
    np.testing.assert_allclose(prototype(crops_a), prototype(support), atol=1e-5)
    q = att.fingerprint(a[3:] + b[3:])
    want = 1 / (1 + np.exp(-(8 * (q @ prototype(crops_a)) - 4)))
    np.testing.assert_allclose(att.verify(a[3:] + b[3:], "gen-a"), want, atol=1e-5)
    res = att.attribute(a[3:] + b[3:])
    for r, w in zip(res, want):
        assert abs(r.scores["gen-a"] - w) < 1e-5
    # the runner's batch path agrees with verify, for both rules
    embedded = [e.z for e in att.embed_stream(a[3:] + b[3:])]
    np.testing.assert_allclose(support_scores(att, embedded, crops_a, 4), want, atol=1e-5)
    pair = Attributor(model=load_model(calibrated), crops=4, rule="pair", gallery=att.gallery)
    np.testing.assert_allclose(support_scores(pair, embedded, crops_a, 4),
                               pair.verify(a[3:] + b[3:], "gen-a"), atol=1e-5)
    s = att.same_source(a[3], b[3])
    za, zb = att.fingerprint([a[3], b[3]])
    assert abs(s - 1 / (1 + np.exp(-(8 * float(za @ zb) - 4)))) < 1e-5


def test_leave_one_out_cosines_by_hand():
    from ofa_sdk.scoring import leave_one_out_cosines, unit
    rng = np.random.default_rng(1)
    z = unit(rng.normal(size=(3 * 2, 5)))  # 3 images x 2 crops
    got = leave_one_out_cosines(z, 2)
    for i in range(3):
        mine = unit(z[2 * i:2 * i + 2].mean(0))
        rest = unit(np.delete(z, [2 * i, 2 * i + 1], 0).mean(0))
        assert abs(got[i] - mine @ rest) < 1e-12
    with pytest.raises(ValueError):
        leave_one_out_cosines(z[:5], 2)   # not whole images
    with pytest.raises(ValueError):
        leave_one_out_cosines(z[:2], 2)   # one image


@pytest.mark.parametrize("rule", ["prototype", "pair"])
def test_profile_thresholds(calibrated, tmp_path, rule):
    from ofa_sdk.scoring import leave_one_out_cosines, unit
    a = make_images(tmp_path / "a", 8, 2, kind="noise")
    b = make_images(tmp_path / "b", 8, 3, kind="blocky")
    att = Attributor(model=calibrated, crops=2, rule=rule, profile_quantile=0.25)
    att.enroll("gen-a", a[:5])
    att.enroll("gen-b", b[:5])
    att.enroll("single", b[5:6])
    prof = att.gallery.get("gen-a")
    def held_out(folds):   # by hand: each support image against the images outside its fold
        out = []
        for i in range(5):
            q = prof.support[2 * i:2 * i + 2]
            rest = np.concatenate([prof.support[2 * j:2 * j + 2] for j in range(5) if j % folds != i % folds])
            rpart = np.concatenate([prof.support_part[2 * j:2 * j + 2] for j in range(5) if j % folds != i % folds])
            if rule == "prototype":
                out.append(unit(q.mean(0)) @ unit(rest.astype(np.float64).mean(0)))
            else:
                out.append(att.rule.head.probs(att.rule.head.query_part(q), rpart).mean())
        return np.asarray(out, np.float64)
    own = held_out(5)
    if rule == "prototype":
        assert np.allclose(own, leave_one_out_cosines(prof.support, 2), atol=1e-6)
    assert np.allclose(leave_one_out_scores(att, prof.support, 2), own, atol=1e-6)
    # by hand: the 75% one-sided prediction bound on the distance 1 - s (cube root for the
    # prototype rule, log for the pair rule); 5 images: no fit-size extrapolation (from 8 up)
    from scipy.stats import t
    tr = np.cbrt if rule == "prototype" else np.log
    y1 = tr(1 - own)
    mean, sd = y1.mean(), y1.std(ddof=1)
    bound = mean + t.ppf(0.75, 4) * sd * np.sqrt(1 + 1 / 5)
    raw = 1 - (bound ** 3 if rule == "prototype" else np.exp(bound))
    want = att.rule.to_prob(raw)
    assert abs(att.profile_threshold("gen-a") - want) < 1e-6
    assert att.profile_threshold("single") == 0.5  # fewer than 3 support images: the default
    att.enroll("pair-of-two", b[5:7])
    assert att.profile_threshold("pair-of-two") == 0.5
    res = att.attribute(a[5:] + b[6:], threshold="profile")
    for r in res:
        assert r.ok
        accepting = {n for n, v in r.scores.items() if v >= att.profile_threshold(n, crops=2)}
        assert (r.profile is None) == (not accepting) and (r.profile is None or r.profile in accepting)
    with pytest.raises(ValueError, match="profile"):
        att.attribute(a[5:], threshold="auto")
    with pytest.raises(ValueError):
        Attributor(model=calibrated, profile_quantile=1.5)


def test_student_t_matches_scipy():
    from scipy.stats import t
    from ofa_sdk.scoring import student_t_cdf, student_t_quantile
    xs = np.concatenate([-np.logspace(-4, 4, 33), [0.0], np.logspace(-4, 4, 33)])
    for dof in (1, 2, 3, 4, 5, 9, 10, 49, 99, 500):
        assert max(abs(student_t_cdf(x, dof) - t.cdf(x, dof)) for x in xs) < 1e-12, dof
    for p in (0.05, 0.5, 0.75, 0.95, 0.99, 0.999):
        for dof in (1, 2, 3, 4, 9, 49, 500):
            assert abs(student_t_quantile(p, dof) - t.ppf(p, dof)) < 1e-10 * max(1, abs(t.ppf(p, dof)))
    for bad in ((1.0, 3), (0.9, 0), (0.9, 2.5)):
        with pytest.raises(ValueError):
            student_t_quantile(*bad)
    with pytest.raises(ValueError, match="integer dof"):
        student_t_cdf(0.3, 1.5)


@pytest.mark.parametrize("n", [3, 5, 20])
def test_self_threshold_rejects_the_target_fraction_of_new_images(n):
    """Coverage under its own model (log-normal distances to the prototype): over many support
    draws, the share of new images below the threshold is the target. The empirical quantile
    of the same scores misses it at small n, which is why it was replaced."""
    from ofa_sdk.scoring import self_threshold
    rng = np.random.default_rng(n)
    trials, fraction = 4000, 0.05
    own = 1 - np.exp(rng.normal(-4.0, 0.7, size=(trials, n)))
    new = 1 - np.exp(rng.normal(-4.0, 0.7, size=trials))
    bound = np.array([self_threshold(o, fraction) for o in own])
    assert abs((new < bound).mean() - fraction) < 0.012
    quantile = np.quantile(own, fraction, axis=1)
    if n <= 5:
        assert (new < quantile).mean() > 2 * fraction
    with pytest.raises(ValueError):
        self_threshold(own[0, :2], fraction)
    with pytest.raises(ValueError):
        self_threshold(own[0], 1.0)


def test_pair_rule_prefilter(tiny_model):
    from ofa_sdk.scoring import PairRule, unit
    from ofa_sdk.weights import load_model
    head = load_model(tiny_model).pair_head()
    rng = np.random.default_rng(0)
    centres = unit(rng.normal(size=(12, 16)))
    supports = [unit(c + 0.2 * rng.normal(size=(6, 16))).astype(np.float32) for c in centres]
    queries = [unit(centres[i] + 0.2 * rng.normal(size=(2, 16))).astype(np.float32) for i in range(12)]
    exact = PairRule(head)
    full = exact.scores(exact.prepare(supports), queries)
    wide = PairRule(head, prefilter=12)                      # K >= P: exhaustive
    np.testing.assert_allclose(wide.scores(wide.prepare(supports), queries), full, atol=1e-6)
    pre = PairRule(head, prefilter=3)
    approx = pre.scores(pre.prepare(supports), queries)
    assert ((approx > 0).sum(1) <= 3).all()                  # only K profiles scored per image
    scored = approx > 0
    np.testing.assert_allclose(approx[scored], full[scored], atol=1e-6)
