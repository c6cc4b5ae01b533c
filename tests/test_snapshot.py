"""Gallery snapshots (ofa_sdk.snapshot): what scoring needs of a gallery as one picklable value,
made by the Attributor or, from a gallery and a loaded model alone, by ``make_snapshot``."""
import pickle
import shutil

import numpy as np
import pytest

from conftest import make_images
from ofa_sdk import Attributor


def test_snapshot_pickles_and_scores_like_the_facade(tiny_model, tmp_path):
    att = Attributor(model=tiny_model)
    a = make_images(tmp_path / "a", 5, 2, kind="noise")
    b = make_images(tmp_path / "b", 5, 3, kind="blocky")
    att.enroll("gen-a", a[:3])
    att.enroll("gen-b", b[:3])
    snap = pickle.loads(pickle.dumps(att.snapshot()))
    assert snap.names == ("gen-a", "gen-b") and snap.model_id == att.model_id
    zs = [e.z for e in att.embed_stream(a[3:] + b[3:])]
    np.testing.assert_allclose(snap.scores(zs), att.scores(a[3:] + b[3:]), atol=1e-6)
    np.testing.assert_allclose(snap.thresholds, [att.profile_threshold(n) for n in snap.names])
    one = snap.select(["gen-b"])
    np.testing.assert_allclose(one.scores(zs)[:, 0], att.verify(a[3:] + b[3:], "gen-b"), atol=1e-6)


def test_scores_raw_matrix_and_decisions_on_top(tiny_model, tmp_path):
    att = Attributor(model=tiny_model)
    a = make_images(tmp_path / "a", 4, 2)
    att.enroll("gen-a", a[:3])
    (tmp_path / "bad.png").write_bytes(b"x")
    s = att.scores([a[3], tmp_path / "bad.png"], errors="nan")
    assert s.shape == (2, 1) and np.isfinite(s[0]).all() and np.isnan(s[1]).all()
    r = att.attribute([a[3]], threshold=0.0)[0]
    assert r.profile == "gen-a" and r.threshold == 0.0 and r.score == pytest.approx(s[0, 0], abs=1e-6)


@pytest.mark.parametrize("rule, whiten", [("pair", None), ("gaussian", None),
                                          ("gaussian", "gallery")])
def test_make_snapshot_from_a_gallery_and_a_model_equals_the_attributors(tiny_model, tmp_path,
                                                                          rule, whiten):
    """The distributed scan's driver makes its snapshot without an Attributor (no engine):
    names, thresholds (the whitened rule's from the snapshot's own state), own scores and
    scores must be the Attributor's, for every threshold setting and subset of profiles."""
    from ofa_sdk.snapshot import make_snapshot
    from ofa_sdk.weights import load_model, update_meta
    model = tmp_path / "gauss.safetensors"
    shutil.copy(tiny_model, model)
    update_meta(model, {"calibration": {"prototype": {"a": 8.0, "b": -4.0},
                                        "gaussian": {"a": -3.0, "b": 1.0, "prior_var": 0.01}}})
    g = tmp_path / "g.db"
    att = Attributor(model=model, gallery=str(g), rule=rule, whiten=whiten,
                     profile_quantile=0.2)
    att.enroll("gen-a", make_images(tmp_path / "a", 5, 2, kind="noise"))
    att.enroll("gen-b", make_images(tmp_path / "b", 4, 3, kind="blocky"))
    att.enroll("gen-c", make_images(tmp_path / "c", 2, 4, kind="noise"))   # fallback threshold
    queries = make_images(tmp_path / "q", 3, 5)
    zs = [e.z for e in att.embed_stream(queries)]
    bundle = load_model(model)
    for profiles, threshold in ((None, None), (["gen-b", "gen-a"], "profile"), (None, 0.3)):
        want = att.snapshot(profiles, threshold)
        got = make_snapshot(bundle, str(g), rule, threshold, profiles, quantile=0.2,
                            whiten=whiten)
        assert got.names == want.names and got.model_id == want.model_id
        np.testing.assert_allclose(got.thresholds, want.thresholds, rtol=0, atol=1e-12)
        np.testing.assert_allclose(got.scores(zs), want.scores(zs), rtol=0, atol=1e-9)
        assert [o is None for o in got.own] == [o is None for o in want.own]
    assert att.snapshot(threshold=0.3).thresholds == (0.3, 0.3, 0.3)
    with pytest.raises(ValueError, match="whiten"):
        make_snapshot(bundle, str(g), att.rule, whiten="gallery")
