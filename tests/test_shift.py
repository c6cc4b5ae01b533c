"""The shift check (ofa_sdk.shift): a batch of images a profile accepted, tested against its
support; on constructed fingerprints whose answer is known, and through the facade."""
import numpy as np
import pytest

from conftest import make_images
from ofa_sdk import Attributor, shift


def _cloud(rng, n, d=24, at=0.0):
    """Rows with a large spread in the first dimensions and a small one in dimension 5 (where a
    relative differs: ``at`` in units of that dimension's spread)."""
    sd = np.r_[np.full(4, 3.0), np.ones(d - 4)]
    sd[5] = 0.2
    x = rng.normal(size=(n, d)) * sd
    x[:, 5] += at * 0.2
    return x


def test_logistic_matches_scikit_learn_in_float64():
    lm = pytest.importorskip("sklearn.linear_model")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(150, 12))
    y = (rng.random(150) < 0.3).astype(int)
    x[y == 1, 2] += 0.8
    for c in (0.1, 1.0):
        beta = shift._logistic(x, y, c)
        ref = lm.LogisticRegression(C=c, class_weight="balanced", tol=1e-12, max_iter=10000).fit(x, y)
        np.testing.assert_allclose(beta[:-1], ref.coef_[0], atol=1e-6)
        assert beta[-1] == pytest.approx(ref.intercept_[0], abs=1e-6)


def test_a_relative_along_a_quiet_direction_is_named_and_own_images_are_not():
    rng = np.random.default_rng(1)
    support, own, rel = _cloud(rng, 100), _cloud(rng, 40), _cloud(rng, 40, at=4.0)
    r = shift.check(support, np.vstack([own, rel]))
    assert r.tested and r.p_value <= shift.ALPHA and r.shifted
    named = set(r.unlike.tolist())
    assert len(named & set(range(40, 80))) >= 20            # most of the relative's images
    assert len(named & set(range(40))) <= 2                  # hardly any of the generator's own
    assert r.scores[40:].mean() > r.scores[:40].mean()


def test_the_generators_own_images_alone_pass():
    fired = 0
    for seed in range(10):
        rng = np.random.default_rng(100 + seed)
        r = shift.check(_cloud(rng, 100), _cloud(rng, 60), permutations=99, seed=seed)
        assert r.tested and 0.0 < r.p_value <= 1.0
        fired += r.shifted
        assert r.shifted or not len(r.unlike)
    assert fired <= 2                                        # alpha = 0.01: about none in ten


def test_too_few_accepted_images_are_not_tested_and_bad_shapes_are_named():
    rng = np.random.default_rng(2)
    r = shift.check(_cloud(rng, 50), _cloud(rng, shift.MIN_ACCEPTED - 1, at=10.0))
    assert not r.tested and r.p_value == 1.0 and not r.shifted
    with pytest.raises(ValueError, match=r"support \(50, 24\) and accepted \(3, 7\)"):
        shift.check(_cloud(rng, 50), np.zeros((3, 7)))
    with pytest.raises(ValueError, match="fraction and alpha"):
        shift.check(_cloud(rng, 50), _cloud(rng, 20), fraction=1.5)


def test_check_shift_refuses_what_it_names_and_keeps_every_other_verdict(tiny_model, tmp_path):
    """Through the facade: every image keeps one result; the images a check named lose their
    label with a note naming the profile (and the variant a JPEG query was checked against);
    the rest are attribute()'s verdicts unchanged."""
    from ofa_sdk.images import jpeg, to_rgb
    att = Attributor(model=tiny_model, crops=1)
    a = make_images(tmp_path / "a", 30, 2, kind="noise")
    att.enroll("gen-a", a[:14])
    batch = a[14:] + [jpeg(to_rgb(p), 90) for p in a[14:]] + [tmp_path / "missing.png"]
    plain = att.attribute(batch)
    rep = att.check_shift(batch, min_accepted=2, alpha=0.999, fraction=0.5)
    assert len(rep.attributions) == len(batch) and rep.attributions[-1].error
    assert set(rep.checks) <= {"gen-a", "gen-a @ q90"} and rep.checks
    named = {i for v in rep.unlike.values() for i in v}
    assert named                                    # alpha 0.999, the support's median: some
    for i, (before, after) in enumerate(zip(plain, rep.attributions)):
        if i in named:
            assert before.profile == "gen-a" and after.profile is None
            assert "shift check" in after.note and "gen-a" in after.note
        else:
            assert after.profile == before.profile and after.error == before.error
            assert after.score == before.score or before.error
