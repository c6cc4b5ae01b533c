"""One decision across profiles (decision.decide/choose): among the profiles whose threshold an
image meets, the one it is most typical of; an image a loose profile accepts is not lost to a
tight profile on which it merely scores higher."""
import numpy as np
import pytest

from ofa_sdk.decision import decide
from ofa_sdk.scoring import Calibration, OwnByCrops, OwnScores, PrototypeRule
from ofa_sdk.snapshot import GallerySnapshot

RULE = PrototypeRule(Calibration(10.0, -5.0))
# own images: "tight" sits at cube-root distance 0.2 +- 0.01, "broad" at 0.5 +- 0.1
OWN = (OwnByCrops((OwnScores(0.2, 0.01, 50, 1 / 3),)), OwnByCrops((OwnScores(0.5, 0.1, 50, 1 / 3),)))
NAMES = ("tight", "broad")


def _snapshot(policy="profile"):
    thr = tuple(float(RULE.to_prob(o.threshold(0.05))) for o in OWN) if policy == "profile" \
        else (float(policy),) * 2
    return GallerySnapshot("m", NAMES, RULE, None, thr, OWN, policy, 0.05)


def _row(*cube_root_distances):
    return np.array([RULE.to_prob(1 - c ** 3) for c in cube_root_distances])


def test_the_most_typical_accepting_profile_wins_over_the_highest_score():
    snap = _snapshot()
    row = _row(0.215, 0.5)          # 1.5 sd out on "tight" (still accepted), typical of "broad"
    assert row[0] > row[1] and (row >= snap.thresholds).all()
    r = decide("x", row, NAMES, None, snapshot=snap)
    assert r.profile == "broad" and r.score == row[1] and r.threshold == snap.thresholds[1]
    assert r.typicality == pytest.approx(OWN[1].typicality(RULE.from_prob(row[1])))
    # a typical image of "tight" still goes to "tight"
    assert decide("x", _row(0.195, 0.5), NAMES, None, snapshot=snap).profile == "tight"


def test_a_loose_profile_keeps_what_a_tight_one_refuses():
    snap = _snapshot()
    row = _row(0.3, 0.6)            # far out on "tight" (refused), within "broad"
    assert row[0] > row[1] and row[0] < snap.thresholds[0] and row[1] >= snap.thresholds[1]
    assert decide("x", row, NAMES, None, snapshot=snap).profile == "broad"   # was unknown
    # without a snapshot: the margin over each threshold decides
    assert decide("x", np.array([0.9, 0.7]), NAMES, [0.95, 0.6]).profile == "broad"
    r = decide("x", np.array([0.9, 0.7]), NAMES, [0.95, 0.95])
    assert r.profile is None and r.score == 0.9 and r.threshold == 0.95   # none accepts


def test_one_threshold_for_all_keeps_the_highest_score():
    snap = _snapshot(0.5)
    row = _row(0.215, 0.5)
    assert decide("x", row, NAMES, None, snapshot=snap).profile == "tight"


def _ambiguous(margin, policy="profile"):
    from dataclasses import replace
    return replace(_snapshot(policy), margin=margin)


def test_an_image_two_profiles_find_about_as_typical_is_unknown_with_a_margin():
    row = _row(0.2, 0.51)           # at the centre of "tight" (typicality 0.5) and of "broad" (0.46)
    t = [OWN[i].typicality(RULE.from_prob(row[i])) for i in (0, 1)]
    assert 0 < t[0] - t[1] < 0.1
    assert decide("x", row, NAMES, None, snapshot=_snapshot()).profile == "tight"   # margin 0
    r = decide("x", row, NAMES, None, snapshot=_ambiguous(0.1), note="small: padded")
    assert r.profile is None and r.label == "unknown"
    assert r.score == row[0] and r.typicality == pytest.approx(t[0])      # the chosen profile's
    assert r.note.startswith("small: padded; ambiguous: tight") and "broad" in r.note
    # a margin below the difference keeps the label
    assert decide("x", row, NAMES, None, snapshot=_ambiguous((t[0] - t[1]) / 2)).profile == "tight"


def test_a_margin_keeps_a_label_the_other_accepting_profile_finds_untypical():
    row = _row(0.2, 0.62)           # typical of "tight", at the edge of "broad" (still accepted)
    snap = _ambiguous(0.3)
    assert (row >= snap.thresholds).all()
    assert decide("x", row, NAMES, None, snapshot=snap).profile == "tight"
    # one accepting profile is never ambiguous, whatever the margin
    assert decide("x", _row(0.2, 0.9), NAMES, None, snapshot=_ambiguous(1.0)).profile == "tight"


def test_with_one_threshold_for_all_a_more_typical_rival_makes_the_image_ambiguous():
    row = _row(0.215, 0.5)          # higher score on "tight", more typical of "broad"
    assert decide("x", row, NAMES, None, snapshot=_ambiguous(0.0, 0.5)).profile == "tight"
    assert decide("x", row, NAMES, None, snapshot=_ambiguous(0.01, 0.5)).profile is None


@pytest.mark.parametrize("bad", [-0.1, 1.5, "x", None, float("nan")])
def test_a_margin_outside_0_1_is_refused(bad):
    from ofa_sdk.decision import check_margin
    with pytest.raises(ValueError, match="ambiguity margin"):
        check_margin(bad)


def test_the_default_margin_is_a_tie_in_typicality_and_only_where_typicality_chooses():
    from ofa_sdk.decision import DEFAULT_MARGIN, margin_for
    assert margin_for(None) == DEFAULT_MARGIN > 0                 # per-profile thresholds
    assert margin_for(None, 0.5) == 0.0                           # one threshold: by score
    assert margin_for(None, "profile", "default") == 0.0          # a head chooses
    assert margin_for(0, "profile") == 0.0 and margin_for(0.2, 0.5) == 0.2   # given: kept
    with pytest.raises(ValueError, match="ambiguity margin"):
        margin_for(2.0)
    row = _row(0.2, 0.5)            # at the centre of both: about equally typical
    t = [OWN[i].typicality(RULE.from_prob(row[i])) for i in (0, 1)]
    assert abs(t[0] - t[1]) < DEFAULT_MARGIN
    assert decide("x", row, NAMES, None, snapshot=_ambiguous(margin_for(None))).profile is None
    assert decide("x", row, NAMES, None, snapshot=_ambiguous(0.0)).label in NAMES
