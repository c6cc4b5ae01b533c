"""The related-families diagnostics (benchmarks/related.py) on constructed data whose answer is
known: the probe, the spread ratio, the fixed spectra, the rescaled queries and the open-set
decision with given never-enrolled classes."""
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import related  # noqa: E402  (benchmarks/ scripts import their siblings by name)
import rules  # noqa: E402


def test_probe_separates_a_shift_and_not_noise():
    pytest.importorskip("sklearn")
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(120, 30)), rng.normal(size=(120, 30))
    assert 0.35 < related.probe_auc(a, b) < 0.65          # same distribution: chance
    b[:, 3] += 3.0                                         # one low-variance direction apart
    assert related.probe_auc(b, a) > 0.95


def test_spread_ratio_is_within_over_between():
    a = np.array([[1.0, 0.0], [-1.0, 0.0]])                 # mean (0, 0), each point 1 from it
    b = a + [0.0, 4.0]                                      # same spread, means 4 apart
    assert related.spread_ratio(a, b) == pytest.approx(0.25)


def test_shared_spread_is_what_content_moves_alike():
    rng = np.random.default_rng(2)
    content = rng.normal(size=(400, 16))
    a, b = content + 5.0, content.copy()                    # one content effect, means apart
    assert related.shared_spread(a, b) == pytest.approx(1.0)
    c, d = rng.normal(size=(400, 16)), rng.normal(size=(400, 16))
    assert abs(related.shared_spread(c, d)) < 0.1           # independent spreads: nothing shared
    e, f = content + rng.normal(size=(400, 16)), content + rng.normal(size=(400, 16))
    assert related.shared_spread(e, f) == pytest.approx(0.5, abs=0.05)   # half of each spread


def test_fixed_features_see_a_periodic_trace():
    """A period-4 pattern (a transposed-convolution trace) added to smooth content shows at
    its frequency in both spectra, more clearly in the crop-averaged (Welch) one."""
    rng = np.random.default_rng(1)
    base = np.cumsum(np.cumsum(rng.normal(size=(64, 64, 3)), 0), 1)
    base = np.kron((base - base.min()) / np.ptp(base) * 200 + 20, np.ones((4, 4, 1)))  # 256 px
    trace = np.zeros((256, 256, 3))
    trace[::4, ::4] = 12.0
    imgs = [base.astype(np.uint8), np.clip(base + trace, 0, 255).astype(np.uint8)]
    f = related.fixed_features(imgs)
    assert f["laplacian-64"].shape == f["welch-64"].shape == (2, 64 * 64)
    w = f["welch-64"].reshape(2, 64, 64)
    assert w[1, 16, 16] - w[0, 16, 16] > 2.0                # the 1/4-cycle peak of a 64 px segment
    assert abs(w[1, 5, 7] - w[0, 5, 7]) < 1.0               # elsewhere little changes


def test_rescaled_resizes_before_encoding(tmp_path):
    from PIL import Image
    p = tmp_path / "a.png"
    Image.fromarray(np.zeros((256, 200, 3), np.uint8)).save(p)
    assert rules.rescaled([p], 1.0) == [p]
    assert rules.rescaled([p], 0.75)[0].shape == (192, 150, 3)
    assert rules.cache_path("x", 90, 4, 0.5).name == "x_q90_c4_r50.npz"
    assert rules.cache_path("x", 0, 4).name == "x_q0_c4.npz"


def _cache(tmp_path, centres, n=40, k=2, seed=0):
    rng = np.random.default_rng(seed)
    z, counts, cls, idx = [], [], [], []
    for c, m in centres.items():
        for i in range(n):
            x = m + 0.05 * rng.normal(size=(k, len(m)))
            z.append(x / np.linalg.norm(x, axis=1, keepdims=True))
            counts.append(k), cls.append(c), idx.append(i)
    path = tmp_path / "set_q0_c2.npz"
    np.savez(path, z=np.concatenate(z).astype(np.float32), counts=np.array(counts),
             cls=np.array(cls), idx=np.array(idx), model="synthetic")
    return rules.Cached(path)


def test_never_enrolled_twin_is_labelled_and_a_distant_class_is_not(tmp_path):
    """With a near-twin of an enrolled class never enrolled, its images pass that profile's
    threshold; a class far from every profile is refused."""
    d = 16
    e = np.eye(d)
    data = _cache(tmp_path, {"a": e[0], "a-twin": e[0] + 0.01 * e[1], "b": e[2], "far": e[5]})
    rule = rules.rule_objects()[related.RULE]
    twin = rules.open_set(data, rule, 15, None, None, fractions=(0.05,), held_out=[["a-twin"]])
    far = rules.open_set(data, rule, 15, None, None, fractions=(0.05,), held_out=[["far"]])
    assert twin["f0.05"]["unknown_labelled"] > 0.5
    assert far["f0.05"]["unknown_labelled"] < 0.1
    assert far["f0.05"]["right"] > 0.5


def test_acceptance_splits_relatives_enrolled_from_none(tmp_path, monkeypatch):
    """A member of a two-model family held out alone has its relative enrolled and passes its
    profile; the same family held out whole has none and is refused, as is a distant single."""
    import json
    e = np.eye(16)
    _cache(tmp_path, {"a": e[0], "a-twin": e[0] + 0.01 * e[1], "b": e[2], "far": e[5]})
    (tmp_path / "set_q0_c2.npz").rename(tmp_path / "wild13_q0_c4.npz")
    monkeypatch.setattr(rules, "CACHE", tmp_path)
    monkeypatch.setattr(related, "WILD13_FAMILIES", {"A": ["a", "a-twin"], "b": ["b"], "far": ["far"]})
    out = tmp_path / "acc.json"
    related.main(["acceptance", "--set", "wild13", "--out", str(out)])
    rows = json.loads(out.read_text())
    assert rows["a-twin"]["relative enrolled"] and not rows["A"]["relative enrolled"]
    assert rows["a-twin"]["unknown_labelled"] > 0.5
    assert rows["A"]["unknown_labelled"] < 0.1 and rows["far"]["unknown_labelled"] < 0.1


def test_acceptance_at_a_jpeg_quality_reads_that_qualitys_cache(tmp_path, monkeypatch):
    """``--jpeg 90``: support and queries both come from the q90 cache (the SDK scores a JPEG
    query against the support's variant of its quality); here the twin, near its relative as
    generated, lies apart at q90, so only the q90 run refuses it."""
    import json
    e = np.eye(16)
    _cache(tmp_path, {"a": e[0], "a-twin": e[0] + 0.01 * e[1], "b": e[2], "far": e[5]})
    (tmp_path / "set_q0_c2.npz").rename(tmp_path / "wild13_q0_c4.npz")
    _cache(tmp_path, {"a": e[0], "a-twin": e[7], "b": e[2], "far": e[5]}, seed=1)
    (tmp_path / "set_q0_c2.npz").rename(tmp_path / "wild13_q90_c4.npz")
    monkeypatch.setattr(rules, "CACHE", tmp_path)
    monkeypatch.setattr(related, "WILD13_FAMILIES", {"A": ["a", "a-twin"], "b": ["b"], "far": ["far"]})
    rows = {}
    for q in (0, 90):
        out = tmp_path / f"acc{q}.json"
        related.main(["acceptance", "--set", "wild13", "--jpeg", str(q), "--out", str(out)])
        rows[q] = json.loads(out.read_text())
    assert rows[0]["a-twin"]["unknown_labelled"] > 0.5
    assert rows[90]["a-twin"]["unknown_labelled"] < 0.1


def test_a_real_photo_reference_takes_the_real_photos_a_generator_would_get(tmp_path, monkeypatch):
    """benchmarks/real_reference.py: real photos near a generator's profile get its label; a
    reference profile of photos like them, enrolled beside it, takes them, and one built
    without their source group (only photos unlike them) does not."""
    import json
    import real_reference
    e = np.eye(16)
    _cache(tmp_path, {"a": e[0], "b": e[2], "real": e[0] + 0.01 * e[1]})
    (tmp_path / "set_q0_c2.npz").rename(tmp_path / "wild13_q0_c4.npz")
    _cache(tmp_path, {"g1": e[0] + 0.01 * e[1], "g2": e[9]}, seed=1)
    (tmp_path / "set_q0_c2.npz").rename(tmp_path / "real-train_q0_c4.npz")
    src = tmp_path / "sources.json"
    src.write_text(json.dumps(["g1"] * 40))
    monkeypatch.setattr(rules, "CACHE", tmp_path)
    out = tmp_path / "ref.json"
    real_reference.main(["measure", "--set", "wild13", "--sources", str(src), "--out", str(out)])
    runs = json.loads(out.read_text())["runs"]
    assert runs["no reference"]["real: generator label"] > 0.5
    before = runs["no reference"]["real: generator label"]
    assert runs["reference: every group"]["real: generator label"] < before / 2
    assert runs["reference without g1"]["real: generator label, group left out"] > 0.5
    assert runs["reference without g2"]["real: generator label"] < 0.2
    assert runs["no reference"]["refused by reference"] == 0.0


def test_a_real_photo_reference_at_a_jpeg_quality_is_that_qualitys_variant(tmp_path, monkeypatch):
    """``measure --jpeg 90`` reads the set's and the reference's q90 caches: a reference whose
    q90 variant lies far from the real photos takes none of them, where its as-generated one
    takes them."""
    import json
    import real_reference
    e = np.eye(16)
    for q in (0, 90):
        _cache(tmp_path, {"a": e[0], "b": e[2], "real": e[0] + 0.1 * e[1]})
        (tmp_path / "set_q0_c2.npz").rename(tmp_path / f"wild13_q{q}_c4.npz")
    _cache(tmp_path, {"g1": e[0] + 0.1 * e[1], "g2": e[0] + 0.1 * e[1]}, seed=1)
    (tmp_path / "set_q0_c2.npz").rename(tmp_path / "real-train_q0_c4.npz")
    _cache(tmp_path, {"g1": e[9], "g2": e[11]}, seed=1)
    (tmp_path / "set_q0_c2.npz").rename(tmp_path / "real-train_q90_c4.npz")
    src = tmp_path / "sources.json"
    src.write_text(json.dumps(["g1"] * 40))
    monkeypatch.setattr(rules, "CACHE", tmp_path)
    taken = {}
    for q in (0, 90):
        out = tmp_path / f"ref{q}.json"
        real_reference.main(["measure", "--set", "wild13", "--jpeg", str(q), "--sources", str(src), "--out", str(out)])
        taken[q] = json.loads(out.read_text())["runs"]["reference: every group"]["real: generator label"]
    assert taken[0] < 0.2 and taken[90] > 0.5
