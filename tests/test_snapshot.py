"""Gallery snapshots (ofa_sdk.snapshot): what scoring needs of a gallery as one picklable value,
made by the Attributor or, from a gallery and a loaded model alone, by ``make_snapshot``."""
import pickle
import shutil

import numpy as np
import pytest

from conftest import make_images
from ofa_sdk import Attributor
from ofa_sdk.attributor import JPEG_VARIANTS, RESCALE_VARIANTS


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


def test_profile_state_persists_in_the_gallery_and_only_changed_profiles_refit(
        gauss_model, tmp_path, monkeypatch):
    """Each profile's fit and held-out scores are stored in the gallery under a key of model
    id, rule, settings and support digest: a second process (a fresh Attributor) prepares the
    snapshot without one refit, and an add refits only the profile it changed."""
    from ofa_sdk import decision, scoring
    g = tmp_path / "g.db"
    att = Attributor(model=gauss_model, gallery=g, crops=1, backend="torch")
    for i, kind in enumerate(("noise", "blocky", "noise")):
        att.enroll(f"gen-{i}", make_images(tmp_path / f"s{i}", 5, i, kind=kind))

    def every_variant(snap):       # the variants are prepared when first needed
        for d in snap.deliveries:
            for sc, q in d.variants:
                snap.route(q, (round(d.size[0] * sc), round(d.size[1] * sc)))
        return snap
    first = every_variant(att.snapshot())
    calls = {"own": [], "fit": []}
    real_own, real_fit = decision.own_scores, scoring.GaussianRule.fit_one
    monkeypatch.setattr(decision, "own_scores", lambda *a, **k: calls["own"].append(1) or real_own(*a, **k))
    monkeypatch.setattr(scoring.GaussianRule, "fit_one",
                        lambda self, *a: calls["fit"].append(1) or real_fit(self, *a))
    fresh = Attributor(model=gauss_model, gallery=g, crops=1, backend="torch")
    again = every_variant(fresh.snapshot())
    assert calls == {"own": [], "fit": []}                 # everything read back, nothing refit
    assert again.thresholds == first.thresholds and again.thresholds_at(1) == first.thresholds_at(1)
    q = [e.z for e in fresh.embed_stream(make_images(tmp_path / "q", 3, 9))]
    np.testing.assert_allclose(again.scores(q), first.scores(q), rtol=1e-6)
    fresh.enroll("gen-1", make_images(tmp_path / "more", 2, 5), add=True)
    every_variant(Attributor(model=gauss_model, gallery=g, crops=1, backend="torch").snapshot())
    # only gen-1: the profile and each of its variants (its JPEG ones, and those of the resize
    # factors that keep its 40 px images at or above the crop)
    scales = [1.0] + [sc for sc in RESCALE_VARIANTS if round(40 * sc) >= fresh.policy.crop]
    n = len(scales) * (1 + len(JPEG_VARIANTS))
    assert len(fresh.gallery.get("gen-1").variants) == n - 1
    assert len(calls["own"]) == n and len(calls["fit"]) == n
    # another rule setting is another key: computed, not confused with the stored state
    every_variant(Attributor(model=gauss_model, gallery=g, crops=1, backend="torch",
                             rule="prototype").snapshot())
    assert len(calls["own"]) == n + 3 * n       # each of the 3 profiles and its variants


def test_a_profile_too_small_for_a_threshold_is_stored_once(gauss_model, tmp_path, monkeypatch):
    """A 2-image profile has no held-out scores (None): that None is stored and read back, not
    recomputed and written again by every new process."""
    from ofa_sdk.gallery import Gallery
    g = tmp_path / "g.db"
    att = Attributor(model=gauss_model, gallery=g, crops=1, backend="torch")
    att.enroll("small", make_images(tmp_path / "s", 2, 0))
    att.enroll("big", make_images(tmp_path / "b", 5, 1, kind="blocky"))
    att.snapshot()
    writes = []
    real = Gallery.put_state
    monkeypatch.setattr(Gallery, "put_state", lambda self, items: writes.append(items) or real(self, items))
    for _ in range(2):
        Attributor(model=gauss_model, gallery=g, crops=1, backend="torch").snapshot()
    assert writes == []


def test_verify_does_not_evict_what_attribute_prepared(tiny_model, tmp_path, monkeypatch):
    att = Attributor(model=tiny_model, crops=1)
    a = make_images(tmp_path / "a", 6, 2)
    for n in ("gen-a", "gen-b", "gen-c"):
        att.enroll(n, a[:3])
    prepared = []
    real = type(att.rule).prepare
    monkeypatch.setattr(type(att.rule), "prepare",
                        lambda self, *x, **k: prepared.append(1) or real(self, *x, **k))
    att.attribute(a[3:])
    att.verify(a[3:], "gen-b")
    att.attribute(a[3:])
    att.verify(a[3:], "gen-b")
    assert len(prepared) == 2                # one set each (PNG queries: no variant), both kept


def test_the_gallerys_tail_is_pooled_over_every_profile_and_read_back(gauss_model, tmp_path,
                                                                      monkeypatch):
    """Enough profiles for a pooled tail (scoring.Tails): every profile's threshold reads the
    t bound through it, the same whichever profiles a snapshot (or ``profile_threshold``)
    asks for, and a fresh process reads each profile's held-out values back from the gallery
    rather than refitting; a fixed threshold reads typicalities through the same tail."""
    from ofa_sdk import decision, scoring
    from ofa_sdk.gallery import Gallery, Profile
    from ofa_sdk.weights import load_model
    bundle = load_model(gauss_model)
    head, d = bundle.pair_head(), bundle.config.extractor.dim
    rng = np.random.default_rng(0)
    g = Gallery(tmp_path / "g.db")
    n = 2 * scoring.MIN_TAIL // 8 + 1                       # 8 profiles pool 2 x MIN_TAIL values
    for i in range(8):
        mu = rng.normal(size=d)
        spread = np.sqrt(2.5 / rng.gamma(2.5, 1.0, size=(n, 1)))          # heavy tails
        z = mu + 0.3 * spread * rng.normal(size=(n, d))
        z = (z / np.linalg.norm(z, axis=1, keepdims=True)).astype(np.float32)
        g.put(Profile(f"gen-{i}", bundle.model_id, z, head.support_part(z),
                      {"crops": 1, "crop_counts": [1] * n}, 1.0 + i))
    att = Attributor(model=gauss_model, gallery=g, crops=1, backend="torch")
    snap = att.snapshot()
    assert snap.tails is not None and snap.tails.of(snap.own[0], 1) is not None
    untailed = [decision.threshold_of(snap.rule, o, snap.fraction) for o in snap.own]
    assert not np.allclose(snap.thresholds, untailed)
    one = att.snapshot(["gen-3"])
    assert one.thresholds[0] == snap.thresholds[3] == att.profile_threshold("gen-3")
    assert one.typicality(0, snap.thresholds[3]) == pytest.approx(snap.fraction, abs=1e-9)
    fixed = att.snapshot(["gen-3"], threshold=0.5)          # a typicality is the profile's own
    assert fixed.typicality(0, snap.thresholds[3]) == one.typicality(0, snap.thresholds[3])
    real = decision.own_scores
    monkeypatch.setattr(decision, "own_scores", lambda *a, **k: pytest.fail("refit") or real(*a, **k))
    again = Attributor(model=gauss_model, gallery=tmp_path / "g.db", crops=1, backend="torch").snapshot()
    assert again.thresholds == snap.thresholds


def test_a_query_is_routed_to_the_variant_delivered_nearest_it():
    from ofa_sdk.snapshot import LOSSLESS, nearest_variant, scale_of
    jpegs = [(1.0, q) for q in (95, 90, 75)]
    want = {None: None, 100: None, 98: None, 97: 95, 95: 95, 93: 95, 92: 90, 85: 90, 83: 90,
            82: 75, 80: 75, 60: 75, 1: 75}
    got = {q: nearest_variant(q, jpegs) for q in want}
    assert got == {q: None if v is None else (1.0, v) for q, v in want.items()}
    assert nearest_variant(90, ()) is None                   # no variants: the profile
    assert nearest_variant(LOSSLESS - 5, [(1.0, 90)]) is None     # a tie: the higher quality
    # a support that arrived as JPEG q85 counts as 85
    want = {85: None, 87: None, 88: 90, 83: None, 80: None, 79: 75, 95: 95, None: None}
    got = {q: nearest_variant(q, jpegs, 85) for q in want}
    assert got == {q: None if v is None else (1.0, v) for q, v in want.items()}
    assert nearest_variant(90, jpegs, 90) is None            # a tie with itself: itself
    # the scale first, then the quality among the deliveries at it
    both = jpegs + [(0.75, q) for q in (None, 95, 90, 75)]
    assert nearest_variant(None, both, None, 0.75) == (0.75, None)
    assert nearest_variant(88, both, None, 0.74) == (0.75, 90)
    assert nearest_variant(88, both, None, 0.9) == (1.0, 90)      # nearer 1 than 0.75
    assert nearest_variant(None, both, None, 1.3) is None
    assert nearest_variant(None, jpegs, None, 0.5) is None        # no scaled variant
    assert scale_of((48, 48), (64, 64)) == 0.75 and scale_of((48, 64), (64, 64)) == 1.0
    assert scale_of(None, (64, 64)) == 1.0 and scale_of((48, 48), None) == 1.0


def test_a_replaced_snapshot_routes_with_its_own_settings(tiny_model, tmp_path):
    """``dataclasses.replace`` on a snapshot (another margin, fraction or threshold policy) gives
    one whose routed variants decide as it does, and leaves the original's routes as they were:
    the caches of thresholds and routes are the snapshot's own, never shared by a copy."""
    import dataclasses
    from ofa_sdk import decision
    att = Attributor(model=tiny_model, crops=1)
    att.enroll("gen-a", make_images(tmp_path / "a", 6, 2, kind="noise"))
    att.enroll("gen-b", make_images(tmp_path / "b", 6, 3, kind="blocky"))
    snap = att.snapshot()
    before = snap.route(90)
    assert before is not snap and before.variant_of       # a JPEG query meets the q90 variants
    thr = snap.thresholds_at(1)
    strict = dataclasses.replace(snap, margin=0.3, fraction=0.3)
    routed = strict.route(90)
    assert (routed.margin, routed.fraction, routed.policy) == (0.3, 0.3, "profile")
    assert routed.thresholds == tuple(decision.threshold_of(routed.rule, o, 0.3, None, routed.tails)
                                      for o in routed.own)
    assert routed.thresholds != before.thresholds
    assert strict.thresholds_at(1) != thr
    fixed = dataclasses.replace(snap, policy=0.4).route(90)
    assert fixed.thresholds == (0.4, 0.4) and fixed.policy == 0.4
    # the original is untouched
    assert snap.route(90) is before and before.margin == snap.margin and snap.thresholds_at(1) == thr
    again = pickle.loads(pickle.dumps(strict)).route(90)
    assert (again.margin, again.fraction) == (0.3, 0.3) and again.thresholds == routed.thresholds


@pytest.mark.parametrize("rule, whiten", [("gaussian", None), ("prototype", None), ("pair", None),
                                          ("gaussian", "gallery")])
def test_a_pickled_snapshot_assembles_every_route_as_the_gallery_does(gauss_model, tmp_path,
                                                                       rule, whiten):
    """A pickled snapshot carries each profile's variants' states and own scores, not its routes
    (those grow with the gallery's support sizes), and assembles a route when a query first
    needs one: the route a query meets, its scores and its thresholds must be those the
    snapshot made from the gallery gives, for profiles of two support sizes with different
    variants, one with none, and every delivery a query can arrive at. A rule that whitens by
    the gallery cannot combine states: every route is prepared before pickling, as before."""
    att = Attributor(model=gauss_model, crops=1, gallery=tmp_path / "g.db", rule=rule,
                     whiten=whiten)
    att.enroll("gen-a", make_images(tmp_path / "a", 5, 2, size=64, kind="noise"))
    att.enroll("gen-b", make_images(tmp_path / "b", 5, 3, size=48, kind="blocky"),
               jpeg_variants=(90,), rescale_variants=(0.5,))
    att.enroll("gen-c", make_images(tmp_path / "c", 4, 4, size=64, kind="noise"),
               jpeg_variants=(), rescale_variants=())
    zs = [e.z for e in att.embed_stream(make_images(tmp_path / "q", 3, 5, size=64))]
    # the whole gallery, and two of its profiles (the third still pooled in the tail at the
    # variant a query would meet)
    for snap in (att.snapshot(), att.snapshot(profiles=["gen-c", "gen-a"])):
        moved = pickle.loads(pickle.dumps(snap))
        assert (moved._routes == {}) == (whiten is None)
        routed = set()
        for q in (None, 98, 95, 90, 85, 75, 40):
            for size in (None, (64, 64), (48, 48), (36, 36), (32, 32), (24, 24), (50, 40)):
                live, got = snap.route(q, size), moved.route(q, size)
                assert got.variant_of == live.variant_of and got.names == live.names
                np.testing.assert_allclose(got.scores(zs), live.scores(zs), rtol=1e-12)
                np.testing.assert_allclose(got.thresholds, live.thresholds, rtol=1e-12)
                np.testing.assert_allclose(got.thresholds_at(1), live.thresholds_at(1),
                                           rtol=1e-12)
                routed.add(live.variant_of)
        assert len(routed) >= 5        # the deliveries above meet several different routes
        again = pickle.loads(pickle.dumps(moved))      # a worker's snapshot pickles alike
        assert (again._routes == {}) == (whiten is None)
        np.testing.assert_allclose(again.route(88, (32, 32)).scores(zs),
                                   snap.route(88, (32, 32)).scores(zs), rtol=1e-12)


def test_the_variants_and_fits_a_process_holds_are_bounded(gauss_model, tmp_path):
    """A gallery keeps the variants it has read up to ``variant_cache_bytes``, and a snapshot
    cache its Gaussian fits up to ``max_fit_bytes`` (the least recently used out first), so a
    server that meets every delivery of a large gallery does not end up holding all of them:
    with bounds of a few variants and two fits, every route of every delivery scores as with
    no bound, before and after a profile is enrolled again (whose variants are then read anew,
    never the old ones), and what is held stays under the bounds."""
    from ofa_sdk.gallery import Gallery
    from ofa_sdk.snapshot import SnapshotCache, make_snapshot
    from ofa_sdk.weights import load_model
    bundle = load_model(gauss_model)
    att = Attributor(model=gauss_model, crops=1, gallery=tmp_path / "g.db")
    for i, kind in enumerate(("noise", "blocky", "noise")):
        att.enroll(f"gen-{i}", make_images(tmp_path / f"s{i}", 4, 10 + i, size=64, kind=kind),
                   jpeg_variants=(90,), rescale_variants=(0.75, 0.5))
    att.gallery.close()
    one = Gallery(tmp_path / "g.db").get("gen-0").variants[(0.75, 90)]
    bound = int(2.5 * (one.support.nbytes + one.support_part.nbytes))
    zs = [e.z for e in att.embed_stream(make_images(tmp_path / "q", 3, 5, size=64))]
    deliveries = [(q, s) for q in (None, 90) for s in (None, (64, 64), (48, 48), (32, 32))]

    def every_route(g, cache):
        snap = make_snapshot(bundle, g, cache=cache)
        return [snap.route(q, s).scores(zs) for q, s in deliveries]
    small = Gallery(tmp_path / "g.db", variant_cache_bytes=bound)
    probe = SnapshotCache()
    make_snapshot(bundle, small, cache=probe)
    fit = next(iter(probe.fits.values()))               # the bound: two fits
    few = SnapshotCache(max_fit_bytes=2 * (fit.mean.nbytes + fit.basis.nbytes + fit.lam.nbytes))
    before = every_route(small, few)
    for step in ("as enrolled", "gen-0 enrolled again"):
        free, all_fits = Gallery(tmp_path / "g.db"), SnapshotCache()
        for got, want in zip(every_route(small, few), every_route(free, all_fits)):
            np.testing.assert_allclose(got, want, rtol=1e-12)
        assert 0 < small._variants.bytes <= bound, step
        assert 0 < len(small._variants._got) < len(free._variants._got) == 3 * 5, step
        assert 0 < few.fit_bytes <= few.max_fit_bytes and len(few.fits) == 2 < len(all_fits.fits)
        # enrolled again from other images by another writer: its variants are read anew
        writer = Attributor(model=gauss_model, crops=1, gallery=tmp_path / "g.db")
        writer.enroll("gen-0", make_images(tmp_path / "t", 4, 20, size=64, kind="blocky"),
                      jpeg_variants=(90,), rescale_variants=(0.75, 0.5), overwrite=True)
        writer.gallery.close()
    assert max(np.abs(a - b).max() for a, b in zip(every_route(small, few), before)) > 1e-3


def test_a_pickled_subset_reads_the_tail_at_the_other_profiles_variants(gauss_model, tmp_path):
    """A snapshot of some profiles pools the gallery's tail over every profile, each at the
    variant a query would meet: a pickled one must assemble the same tail (so the same
    thresholds) for a route of the profiles it holds as the gallery does."""
    from ofa_sdk import scoring
    from ofa_sdk.gallery import Gallery, Profile
    from ofa_sdk.snapshot import make_snapshot
    from ofa_sdk.weights import load_model
    bundle = load_model(gauss_model)
    head, d = bundle.pair_head(), bundle.config.extractor.dim
    rng = np.random.default_rng(1)
    g = Gallery(tmp_path / "g.db")
    n = 2 * scoring.MIN_TAIL // 8 + 1

    def unit_rows(x):
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    for i in range(8):
        z = unit_rows(rng.normal(size=d) + 0.3 * rng.normal(size=(n, d)))
        meta = {"crops": 1, "crop_counts": [1] * n, "support_size": [64 + 16 * (i % 2)] * 2}
        variants = {k: Profile(f"gen-{i}", bundle.model_id, v, head.support_part(v), meta,
                               variant=k)
                    for k in [(1.0, 90), (0.5, None)]
                    for v in [unit_rows(z + (0.4 if k[1] else 0.2) * rng.normal(size=z.shape))]}
        g.put(Profile(f"gen-{i}", bundle.model_id, z, head.support_part(z), meta, 1.0 + i,
                      variants=variants))
    snap = make_snapshot(bundle, g, profiles=["gen-0", "gen-3"])
    moved = pickle.loads(pickle.dumps(snap))
    assert moved._routes == {}
    for q, size in [(90, None), (None, (32, 32)), (None, (40, 40)), (88, (40, 40))]:
        live, got = snap.route(q, size), moved.route(q, size)
        assert live.tails is not None and got.variant_of == live.variant_of
        np.testing.assert_allclose(got.thresholds, live.thresholds, rtol=1e-12)
        assert got.tails.by_level.keys() == live.tails.by_level.keys()
