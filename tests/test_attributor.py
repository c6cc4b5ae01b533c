import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import make_images
from ofa_sdk import Attributor
from ofa_sdk.attributor import RESCALE_VARIANTS, InputError
from ofa_sdk.backends import EngineUnavailable
from ofa_sdk.decision import DEFAULT_MARGIN
from ofa_sdk.gallery import Gallery, GalleryError, ModelMismatch, ProfileNotFound


@pytest.fixture
def att(tiny_model):
    return Attributor(model=tiny_model, batch_size=5, crops=1)


def test_fingerprint_shapes_types_and_inputs(att, tmp_path):
    paths = make_images(tmp_path / "a", 7, 0)
    z = att.fingerprint(paths)
    assert z.shape == (7, 16) and z.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1, rtol=1e-5)
    from PIL import Image
    arr = np.asarray(Image.open(paths[0]))
    z1 = att.fingerprint(arr)
    z2 = att.fingerprint(Image.open(paths[0]))
    z3 = att.fingerprint(str(paths[0]))
    assert z1.shape == (1, 16)
    np.testing.assert_allclose(z1, z[:1], atol=1e-5)
    np.testing.assert_allclose(z2, z1, atol=1e-6)
    np.testing.assert_allclose(z3, z1, atol=1e-6)
    # batching does not change results
    np.testing.assert_allclose(Attributor(model=att.bundle, batch_size=1, crops=1).fingerprint(paths), z, atol=1e-5)
    assert att.fingerprint([]).shape == (0, 16)
    np.testing.assert_allclose(att.fingerprint(tmp_path / "a"), z, atol=1e-5)  # a folder = its images


def test_bad_inputs_never_lose_the_batch(att, tmp_path):
    good = make_images(tmp_path, 3, 1)
    (tmp_path / "bad.png").write_bytes(b"garbage")
    items = [good[0], tmp_path / "bad.png", good[1], tmp_path / "missing.jpg", good[2]]
    with pytest.raises(InputError) as ei:
        att.fingerprint(items)
    e = ei.value
    assert [i for i, _, _ in e.errors] == [1, 3] and "bad.png" in str(e) and "missing.jpg" in str(e)
    assert np.isnan(e.partial[[1, 3]]).all() and np.isfinite(e.partial[[0, 2, 4]]).all()
    z = att.fingerprint(items, errors="nan")
    np.testing.assert_allclose(z[[0, 2, 4]], att.fingerprint(good), atol=1e-5)
    res = att.attribute(items)
    assert [r.ok for r in res] == [True, False, True, False, True]
    stream = list(att.embed_stream(items, spectra=True))  # the public embedding seam
    assert [e.z is None for e in stream] == [False, True, False, True, False]
    assert "unreadable" in stream[1].error and stream[0].error == ""
    assert stream[0].z.shape == (1, 16) and stream[0].spectrum.ndim == 3
    np.testing.assert_allclose(att.engine.embed(np.zeros((2, 32, 32, 3), np.uint8)).shape, (2, 16))
    assert "not found" in res[3].error and res[3].source.endswith("missing.jpg")


def test_enroll_verify_attribute_round_trip(att, tmp_path):
    a = make_images(tmp_path / "a", 6, 2, kind="noise")
    b = make_images(tmp_path / "b", 6, 3, kind="blocky")
    pa = att.enroll("gen-a", a[:4])
    att.enroll("gen-b", b[:4], metadata={"source": "test"})
    assert pa.n_support == 4 and pa.support_part.shape == (4, 16)
    s = att.verify(a[4:], "gen-a")
    assert s.shape == (2,) and ((s >= 0) & (s <= 1)).all()
    # the score is the paper's: mean pair-head probability over the support set
    import torch
    head = att.bundle.model.pair_head
    zs = torch.from_numpy(att.fingerprint(a[:4]))
    zq = torch.from_numpy(att.fingerprint(a[4:5]))
    ref = torch.sigmoid(head(zs, zq.expand(4, -1))).mean().item()
    assert s[0] == pytest.approx(ref, abs=1e-5)
    res = att.attribute(a[4:] + b[4:])
    assert all(set(r.scores) == {"gen-a", "gen-b"} for r in res)
    for r in res:
        assert att.threshold == "profile"  # the default: each profile's own threshold
        k = 1                              # the query's crops (the fixture's)
        accepting = {n for n, v in r.scores.items() if v >= att.profile_threshold(n, crops=k)}
        assert (r.profile is None) == (not accepting) and (r.profile is None or r.profile in accepting)
        assert r.score == r.scores[r.profile or max(r.scores, key=r.scores.get)]
    fixed = att.attribute(a[4:] + b[4:], threshold=0.5)
    assert all(r.profile == (max(r.scores, key=r.scores.get) if r.score >= 0.5 else None) for r in fixed)
    none = att.attribute(a[4:], threshold=1.01)
    assert all(r.profile is None and r.label == "unknown" for r in none)
    with pytest.raises(GalleryError, match="exists"):
        att.enroll("gen-a", a[:2])
    att.enroll("gen-a", a[:2], overwrite=True)
    assert att.gallery.get("gen-a").n_support == 2
    with pytest.raises(ProfileNotFound):
        att.verify(a[4:], "nope")
    p = att.same_source(a[0], b[0])
    assert 0 <= p <= 1
    assert att.same_source(a[0], b[0]) == pytest.approx(att.same_source(b[0], a[0]), abs=1e-6)


def test_multi_crop_and_small_policy(tiny_model, tmp_path):
    big = make_images(tmp_path / "big", 2, 4, size=80)
    tiny = make_images(tmp_path / "tiny", 1, 5, size=20)
    att = Attributor(model=tiny_model, crops=4)
    prof = att.enroll("g", big)
    assert prof.n_support == 8  # 4 crops per support image
    assert att.verify(big[:1], "g").shape == (1,)
    r = att.attribute(tiny)[0]
    assert not r.ok and "smaller" in r.error
    r = Attributor(model=tiny_model, small="pad", gallery=att.gallery).attribute(tiny)[0]
    assert r.ok and "padded" in r.note


def test_auto_crops_cover_the_image_up_to_the_cap(tiny_model, tmp_path):
    from ofa_sdk.images import MAX_AUTO_CROPS, crop_count, make_crops
    assert crop_count(32, 32, 32, "auto") == 1 and crop_count(64, 32, 32, "auto") == 2
    assert crop_count(256, 256, 32, "auto") == MAX_AUTO_CROPS and crop_count(40, 40, 32, 3) == 3
    rng = np.random.default_rng(0)
    sizes = [(32, 32), (32, 64), (96, 96), (96, 96), (64, 64)]
    ims = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]
    assert [len(make_crops(a, 32, "auto")) for a in ims] == [1, 2, 4, 4, 4]
    att = Attributor(model=tiny_model)                    # crops="auto" is the default
    assert att.crops == "auto"
    prof = att.enroll("mixed", ims)
    assert prof.metadata["crop_counts"] == [1, 2, 4, 4, 4] and prof.n_support == 15
    thr = att.profile_threshold("mixed")                   # leave-one-out over unequal images
    assert 0 < thr < 1 and thr != 0.5
    with pytest.raises(ValueError, match="crops"):
        Attributor(model=tiny_model, crops=0)


def test_calibrate_threshold(att, tmp_path):
    a = make_images(tmp_path / "a", 4, 6)
    att.enroll("g", a)
    neg = make_images(tmp_path / "n", 10, 7, kind="blocky")
    thr = att.calibrate_threshold(neg, fpr=0.2)
    accepted = sum(r.profile is not None for r in att.attribute(neg))
    assert accepted <= 3 and att.threshold == thr


def test_backends_report_and_strict(tiny_model):
    from ofa_sdk.backends import ENGINES, register
    att = Attributor(model=tiny_model, backend="torch")
    assert att.backend == "torch" and att.backend_note == ""
    register("absent", "ofa_sdk_no_such_module:Engine")   # an engine that cannot import here
    try:
        with pytest.warns(RuntimeWarning, match="falling back"):
            fb = Attributor(model=tiny_model, backend="absent")
        assert fb.backend == "torch" and "cannot be imported" in fb.backend_note
        with pytest.raises(EngineUnavailable):
            Attributor(model=tiny_model, backend="absent", strict=True)
    finally:
        ENGINES.pop("absent")
    with pytest.raises(ValueError, match="backend"):
        Attributor(model=tiny_model, backend="cuda-magic")


def test_gallery_persists_across_processes_and_refuses_other_models(tiny_model, tmp_path):
    db = tmp_path / "g.db"
    imgs = make_images(tmp_path / "a", 3, 8)
    code = (f"from ofa_sdk import Attributor; a = Attributor(model={str(tiny_model)!r}, gallery={str(db)!r}); "
            f"a.enroll('gen', {[str(p) for p in imgs]!r}); print(a.verify({str(imgs[0])!r}, 'gen')[0])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    att = Attributor(model=tiny_model, gallery=str(db))
    assert att.gallery.names() == ["gen"]
    assert att.verify(imgs[0], "gen")[0] == pytest.approx(float(out.stdout), abs=1e-5)
    g = Gallery(db)
    prof = g.get("gen")
    prof.model_id = "someothermodel"
    g.put(prof, overwrite=True)
    with pytest.raises(ModelMismatch, match="re-enroll"):
        Attributor(model=tiny_model, gallery=str(db)).verify(imgs[0], "gen")
    (tmp_path / "bad.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(GalleryError, match="not a usable SQLite"):
        Gallery(tmp_path / "bad.db")


def test_closed_open_set_head_round_trip(tiny_model, tmp_path):
    db = tmp_path / "g.db"
    att = Attributor(model=tiny_model, gallery=str(db), crops=1)
    a = make_images(tmp_path / "a", 6, 30, kind="noise")
    b = make_images(tmp_path / "b", 6, 31, kind="blocky")
    real = make_images(tmp_path / "real", 4, 32, size=48)
    att.enroll("gen-a", a)
    att.enroll("gen-b", b)
    from ofa_sdk.closed_set import fit_closed_set, open_set
    stats = fit_closed_set(att, real, epochs=200)
    assert stats["counts"] == {"gen-a": 6, "gen-b": 6, "__reconstructed_real__": 8}
    assert stats["train_acc"] > 0.5
    res = open_set(Attributor(model=tiny_model, gallery=str(db)), a[:2] + b[:2] + [tmp_path / "nope.png"])
    assert [r.ok for r in res] == [True] * 4 + [False]
    for r in res[:4]:
        assert r.predicted in ("gen-a", "gen-b") and 0 <= r.known_prob <= 1
        assert abs(sum(r.probs.values()) - 1) < 1e-5
        assert r.label in (None, r.predicted)
    strict = open_set(att, a[:2], threshold=1.01)
    assert all(r.label is None for r in strict)
    with pytest.raises(ProfileNotFound):
        open_set(att, a[:1], name="other")


def test_shipped_model_tells_two_upscalers_apart():
    """Real attribution with the shipped model on photos that scikit-learn ships: images made
    by nearest-neighbour x2 vs bicubic x2 upscaling of the same content (128 px, 8 support and 8
    query images per class). The bar is "clearly better than chance", not a quality target
    (those are in benchmarks/RESULTS.md): the high-pass default (docs/experiment-log.md 9.3) scores 0.70 and
    0.78 here (the denoiser model before it: 1.0), a trade-off recorded there (on the 256 px
    wild set the same pair stays at 0.98-0.99)."""
    datasets = pytest.importorskip("sklearn.datasets")
    from PIL import Image
    from ofa_sdk.evaluation.metrics import roc_auc
    photos = datasets.load_sample_images().images  # two 427x640 photos
    crops = [p[t:t + 128, l:l + 128] for p in photos for t in range(0, 256, 128) for l in range(0, 640 - 128, 128)]

    def up(a, mode):
        small = Image.fromarray(a).resize((64, 64), Image.BOX)
        return np.asarray(small.resize((128, 128), mode))
    near = [up(c, Image.NEAREST) for c in crops]
    bic = [up(c, Image.BICUBIC) for c in crops]
    att = Attributor()
    half = len(crops) // 2
    att.enroll("nearest", near[:half])
    att.enroll("bicubic", bic[:half])
    for name, own, other in (("nearest", near, bic), ("bicubic", bic, near)):
        auc = roc_auc(att.verify(own[half:], name), att.verify(other[half:], name))
        assert auc > 0.65, (name, auc)


def test_conventions_exports_score_names_and_verbose(tiny_model, tmp_path, capsys):
    import ofa_sdk
    from ofa_sdk.decision import Attribution as A
    from ofa_sdk.gallery import GalleryError as G
    from ofa_sdk.pipeline import InputError as I
    assert (ofa_sdk.Attribution, ofa_sdk.InputError, ofa_sdk.GalleryError) == (A, I, G)
    assert {"Attribution", "InputError", "GalleryError"} <= set(ofa_sdk.__all__)
    att = Attributor(model=tiny_model, crops=1)
    a = make_images(tmp_path / "a", 4, 0)
    att.enroll("gen-b", a[:3])
    att.enroll("gen-a", a[:3])
    s, names = att.scores(a[3:], names=True)
    assert names == ("gen-a", "gen-b") and s.shape == (1, 2)
    np.testing.assert_array_equal(s, att.scores(a[3:]))
    capsys.readouterr()
    list(att.scan(tmp_path / "a"))                     # the library is quiet by default
    assert "scan" not in capsys.readouterr().err
    loud = Attributor(model=att.bundle, crops=1, gallery=att.gallery, verbose=True)
    list(loud.scan(tmp_path / "a"))
    assert "scan" in capsys.readouterr().err
    list(loud.scan(tmp_path / "a", progress=False))
    assert "scan" not in capsys.readouterr().err


def test_enroll_stores_each_images_centre_crop(tiny_model, tmp_path):
    """Enrollment embeds each image's centre crop beside the policy's crops and stores it with
    the profile (Profile.centre), for the 1-crop level of its own scores; an add extends it, a
    profile rewritten without it (as an older SDK writes) has none, a removal forgets it."""
    import sqlite3

    from ofa_sdk import decision
    from ofa_sdk.images import make_crops
    from ofa_sdk.scoring import Calibration, GaussianRule, held_out_stats
    from ofa_sdk.snapshot import crop_counts
    ims = [np.random.default_rng(i).integers(0, 256, (80, 96, 3), dtype=np.uint8) for i in range(7)]
    db = tmp_path / "g.db"
    att = Attributor(model=tiny_model, crops=4, gallery=db, backend="torch")
    prof = att.enroll("g", ims[:5])
    centre = att.fingerprint([make_crops(a, 32, 1)[0] for a in ims], errors="raise")
    assert prof.centre.shape == (5, 16) and prof.n_support == 20
    np.testing.assert_allclose(prof.centre, centre[:5], atol=1e-5)
    back = Gallery(db).get("g")                            # read back by another handle
    np.testing.assert_array_equal(back.centre, prof.centre)
    rule = GaussianRule(Calibration(1.0, 0.0))    # the tiny model is calibrated for no rule
    own = decision.own_scores(rule, back.support, crop_counts(back), centre=back.centre)
    ms = lambda o: np.array([[x.mean, x.sd] for x in o.levels])  # noqa: E731
    np.testing.assert_allclose(ms(own), ms(held_out_stats(rule, back.support, 4, centre=centre[:5])),
                               rtol=1e-4)
    grid = held_out_stats(rule, back.support, 4)
    assert not np.allclose(ms(own)[0], ms(grid)[0], rtol=1e-3)     # the 1-crop level moved
    assert own.levels[1:] == grid.levels[1:]
    added = att.enroll("g", ims[5:], add=True)
    np.testing.assert_allclose(added.centre, centre, atol=1e-5)
    one = Attributor(model=tiny_model, crops=1, gallery=db, backend="torch").enroll("one", ims[:3])
    np.testing.assert_allclose(one.centre, one.support, atol=1e-6)  # the only crop is the centre
    with sqlite3.connect(db) as c:                          # rewritten by a writer that stores none
        c.execute("UPDATE profiles SET created = created + 1 WHERE name='g'")
    assert Gallery(db).get("g").centre is None
    att.gallery.remove("one")
    with sqlite3.connect(db) as c:
        assert c.execute("SELECT count(*) FROM profile_centre WHERE name='one'").fetchone()[0] == 0


def test_a_head_chooses_among_accepting_profiles_and_the_open_set_stays_the_profiles(tiny_model, tmp_path):
    import numpy as np
    from ofa_sdk.closed_set import fit_closed_set, open_set
    from ofa_sdk.gallery import GalleryError
    db = tmp_path / "g.db"
    att = Attributor(model=tiny_model, gallery=str(db), crops=1, threshold=0.0)   # every profile accepts
    a = make_images(tmp_path / "a", 6, 30, kind="noise")
    b = make_images(tmp_path / "b", 6, 31, kind="blocky")
    att.enroll("gen-a", a)
    att.enroll("gen-b", b)
    fit_closed_set(att, make_images(tmp_path / "real", 4, 32, size=48), epochs=200)
    queries = make_images(tmp_path / "q", 3, 33, kind="noise") + make_images(tmp_path / "r", 3, 34, kind="blocky")
    chosen = Attributor(model=tiny_model, gallery=str(db), crops=1, threshold=0.0, choose_head="default")
    head = {r.source: r.predicted for r in open_set(chosen, queries)}
    got = chosen.attribute(queries)
    assert [r.label for r in got] == [head[str(q)] for q in queries]      # the head's choice
    # a threshold none meets: unknown whatever the head says, as without it
    strict = Attributor(model=tiny_model, gallery=str(db), crops=1, threshold=1.01, choose_head="default")
    assert all(r.label == "unknown" for r in strict.attribute(queries))
    assert chosen.info()["choose_head"] == "default"
    # the head chooses, so no typicality tie is called (decision.margin_for)
    assert chosen.info()["ambiguity_margin"] == chosen.snapshot().margin == 0.0
    plain = Attributor(model=tiny_model, gallery=str(db), crops=1)     # per-profile thresholds
    assert plain.info()["ambiguity_margin"] == plain.snapshot().margin == DEFAULT_MARGIN
    assert plain.margin(0.5) == plain.snapshot(threshold=0.5).margin == 0.0   # chosen by score
    att.enroll("gen-c", make_images(tmp_path / "c", 4, 35, kind="noise"))  # not in the head
    with pytest.raises(GalleryError, match="gen-c"):
        chosen.attribute(queries[:1])
    assert np.isfinite(chosen.verify(queries[:1], "gen-c")).all()           # scores need no head


def test_enroll_can_resize_and_reencode_the_support_as_a_platform_delivers_queries(tiny_model, tmp_path):
    from ofa_sdk.images import jpeg, resize, to_rgb
    att = Attributor(model=tiny_model, crops=1)
    imgs = make_images(tmp_path / "a", 4, 40, size=64)
    prof = att.enroll("q90", imgs, jpeg_quality=90)
    ref = att.enroll("pre", [jpeg(to_rgb(p), 90) for p in imgs])      # re-encoded beforehand
    np.testing.assert_allclose(prof.support, ref.support, atol=1e-6)
    both = att.enroll("r75q90", imgs, rescale=0.75, jpeg_quality=90)  # resized, then re-encoded
    ref = att.enroll("pre2", [jpeg(resize(to_rgb(p), 0.75), 90) for p in imgs])
    np.testing.assert_allclose(both.support, ref.support, atol=1e-6)
    plain = att.enroll("plain", imgs)
    assert np.abs(plain.support - prof.support).max() > 1e-3
    assert np.abs(both.support - prof.support).max() > 1e-3
    assert (prof.metadata["jpeg_quality"], prof.metadata["rescale"]) == (90, None)
    assert (both.metadata["jpeg_quality"], both.metadata["rescale"]) == (90, 0.75)
    assert plain.metadata["jpeg_quality"] is None and plain.metadata["rescale"] is None
    with pytest.raises(GalleryError, match="holds images jpeg_quality=90; these would be as given"):
        att.enroll("q90", imgs[:1], add=True)           # images as given into a re-encoded profile
    held = r"holds images jpeg_variants=\(95, 90, 75\), " + \
        re.escape(f"rescale_variants={RESCALE_VARIANTS!r}; these would be ")
    with pytest.raises(GalleryError, match=held + r"jpeg_quality=75, jpeg_variants"):
        att.enroll("plain", imgs[:1], add=True, jpeg_quality=75)
    with pytest.raises(GalleryError, match="rescale=0.75"):
        att.enroll("r75q90", imgs[:1], add=True, jpeg_quality=90)
    att.enroll("q90", imgs[:1], add=True, jpeg_quality=90)
    assert len(att.gallery.get("q90").support) == len(prof.support) + 1
    for bad in (0, 101, 9.5, "90", True):
        with pytest.raises(ValueError, match="JPEG quality"):
            att.enroll("bad", imgs, jpeg_quality=bad)
    for bad in (0, -1, 5, "0.5", float("nan")):
        with pytest.raises(ValueError, match="rescale factor"):
            att.enroll("bad", imgs, rescale=bad)


def test_jpeg_variants_score_a_reencoded_query_as_a_support_reencoded_alike(tiny_model, tmp_path):
    """By default a profile also holds its support re-encoded at each of JPEG_VARIANTS: the
    fingerprints of images re-encoded beforehand. A query that arrives as a JPEG scores as it
    would against a profile enrolled at the nearest variant's quality; a PNG as against the
    support as generated. The variants persist, grow with an add, and must match on an add."""
    import io
    from PIL import Image
    from ofa_sdk.attributor import JPEG_VARIANTS, RESCALE_VARIANTS
    from ofa_sdk.images import jpeg, to_rgb
    g = tmp_path / "g.db"
    att = Attributor(model=tiny_model, crops=1, gallery=g)
    imgs = make_images(tmp_path / "a", 5, 41, size=64)
    prof = att.enroll("gen", imgs)
    keys = {(sc, q) for sc in (1.0, *RESCALE_VARIANTS) for q in (None, *JPEG_VARIANTS)} - {(1.0, None)}
    assert set(prof.variants) == keys
    assert prof.metadata["jpeg_variants"] == sorted(JPEG_VARIANTS, reverse=True)
    assert prof.metadata["support_size"] == [64, 64]
    alike = Attributor(model=tiny_model, crops=1)
    ref = alike.enroll("gen", [jpeg(to_rgb(p), 90) for p in imgs], jpeg_variants=())
    np.testing.assert_allclose(prof.variants[(1.0, 90)].support, ref.support, atol=1e-6)
    plain = Attributor(model=tiny_model, crops=1)
    plain.enroll("gen", imgs, jpeg_variants=(), rescale_variants=())
    assert plain.gallery.get("gen").variants == {}

    def encoded(p, **kw):
        buf = io.BytesIO()
        Image.open(p).convert("RGB").save(buf, **kw)
        return buf.getvalue()
    queries = make_images(tmp_path / "q", 2, 42, size=64)
    q88 = [encoded(p, format="JPEG", quality=88) for p in queries]      # nearest variant: 90

    def png_of(paths):
        return [encoded(p, format="PNG") for p in paths]
    png = png_of(queries)
    reopened = Attributor(model=tiny_model, crops=1, gallery=g)         # read back from the file
    stored = reopened.gallery.get("gen").variants

    def read():             # the variants whose fingerprints the gallery has read
        return {k[2] for k in reopened.gallery._variants._got}
    assert set(stored) == keys and read() == set()         # their fingerprints not read yet
    reopened.attribute(png_of(queries))
    assert read() == set()                                 # as generated: never needed
    np.testing.assert_allclose(reopened.scores(q88), alike.scores(q88), rtol=1e-5)
    assert read() == {(1.0, 90)}                           # the one a JPEG query needed
    np.testing.assert_allclose(reopened.scores(png), plain.scores(png), rtol=1e-5)
    assert np.abs(reopened.scores(q88) - plain.scores(q88)).max() > 1e-4
    notes = [r.note for r in reopened.attribute(q88 + png)]
    assert notes == ["JPEG q88: scored against the q90 variants"] * 2 + ["", ""]
    # prepared on first use; pickled as every variant's state, which a worker, without the
    # gallery, assembles a route from when a query first needs it
    import pickle
    snap = reopened.snapshot()
    assert snap.deliveries[0][:2] == (None, (64, 64)) and set(snap.deliveries[0].variants) == keys
    assert snap._routes == {}
    z = [e.z for e in reopened.embed_stream(q88)]
    assert all(e.quality == 88 for e in reopened.embed_stream(q88))
    assert snap.route(88).variant_of == ((1.0, 90),) and snap.route(None) is snap
    moved = pickle.loads(pickle.dumps(snap))
    assert moved._routes == {} and set(moved._prepare.states) == keys | {None}
    np.testing.assert_allclose(moved.route(88).scores(z), snap.route(88).scores(z), rtol=1e-9)
    np.testing.assert_allclose(snap.select(["gen"]).route(88).scores(z),
                               alike.snapshot().scores(z), rtol=1e-5)
    reopened.enroll("gen", imgs[:2], add=True)
    grown = Attributor(model=tiny_model, crops=1, gallery=g).gallery.get("gen")
    assert {k: len(v.support) for k, v in grown.variants.items()} == {k: 7 for k in keys}
    assert grown.variants[(1.0, 75)].metadata["crop_counts"] == [1] * 7
    held = r"holds images jpeg_variants=\(95, 90, 75\), " + \
        re.escape(f"rescale_variants={RESCALE_VARIANTS!r}; these would be ")
    with pytest.raises(GalleryError, match=held + r"jpeg_variants=\(80,\)"):
        att.enroll("gen", imgs[:1], add=True, jpeg_variants=[80])
    with pytest.raises(ValueError, match="jpeg_quality=90 fixes the support's one delivery"):
        att.enroll("other", imgs, jpeg_quality=90, jpeg_variants=[75])
    for bad in (90, "90", [0], [90.5]):
        with pytest.raises(ValueError, match="jpeg_variants must be|JPEG quality"):
            att.enroll("other", imgs, jpeg_variants=bad)


def test_a_jpeg_support_counts_as_the_quality_it_arrived_at(tiny_model, tmp_path):
    """A generator whose images are JPEGs: its profile records the quality its support arrived
    at, and a query of that quality meets the support itself, not a variant re-encoded twice;
    in a gallery with a lossless profile too, each profile routes by its own."""
    import io
    from PIL import Image
    def as_jpeg(paths, q):
        out = []
        for p in paths:
            buf = io.BytesIO()
            Image.open(p).convert("RGB").save(buf, format="JPEG", quality=q)
            out.append(buf.getvalue())
        return out
    att = Attributor(model=tiny_model, crops=1)
    jpg = att.enroll("jpg", as_jpeg(make_images(tmp_path / "a", 5, 43, size=64), 85))
    png = att.enroll("png", make_images(tmp_path / "b", 5, 44, size=64, kind="blocky"))
    assert jpg.metadata["support_jpeg_quality"] == 85 and png.metadata["support_jpeg_quality"] is None
    att.enroll("jpg", as_jpeg(make_images(tmp_path / "c", 2, 45, size=64), 60), add=True)
    assert att.gallery.get("jpg").metadata["support_jpeg_quality"] == 85      # the first's
    snap = att.snapshot()
    assert [d.quality for d in snap.deliveries] == [85, None]
    assert snap.route(85).variant_of == (None, (1.0, 90))   # jpg: itself; png: its q90 variant
    assert snap.route(88).variant_of == ((1.0, 90), (1.0, 90))
    assert snap.route(80).variant_of == (None, (1.0, 75))
    q = as_jpeg(make_images(tmp_path / "q", 1, 46, size=64), 85)
    assert att.attribute(q)[0].note == "JPEG q85: scored against the q90 variants"
    alone = att.snapshot(["jpg"])
    assert alone.route(85) is alone and alone.route(75).variant_of == ((1.0, 75),)


def test_resize_kernel_resizes_the_support_and_its_variants_as_the_platform_does(tiny_model, tmp_path):
    """``resize_kernel`` resizes ``rescale``'s support and the resize variants with that kernel:
    the fingerprints of images resized so beforehand. It is recorded, an add keeps it (and
    refuses another), bicubic is the default, and a kernel with nothing to resize, or one not
    in KERNELS, is refused by name."""
    from ofa_sdk.images import KERNELS, resize, to_rgb
    att = Attributor(model=tiny_model, crops=1)
    imgs = make_images(tmp_path / "a", 4, 53, size=64)
    box = att.enroll("box", imgs, rescale=0.75, resize_kernel="box")
    ref = att.enroll("pre", [resize(to_rgb(p), 0.75, "box") for p in imgs])
    np.testing.assert_allclose(box.support, ref.support, atol=1e-6)
    bicubic = att.enroll("bicubic", imgs, rescale=0.75)
    assert np.abs(box.support - bicubic.support).max() > 1e-3
    assert (box.metadata["resize_kernel"], bicubic.metadata["resize_kernel"]) == ("box", None)
    np.testing.assert_allclose(att.enroll("named", imgs, rescale=0.75, resize_kernel="bicubic")
                               .support, bicubic.support, atol=1e-6)
    var = att.enroll("var", imgs, rescale_variants=(0.75,), jpeg_variants=(), resize_kernel="box")
    np.testing.assert_allclose(var.variants[(0.75, None)].support, ref.support, atol=1e-6)
    att.enroll("var", imgs[:1], add=True)                     # an add keeps the profile's kernel
    grown = att.gallery.get("var")
    np.testing.assert_allclose(grown.variants[(0.75, None)].support[-1],
                               att.enroll("one", [resize(to_rgb(imgs[0]), 0.75, "box")]).support[0],
                               atol=1e-6)
    with pytest.raises(GalleryError, match="resize_kernel='box'; these would be "):
        att.enroll("var", imgs[:1], add=True, resize_kernel="bilinear")
    with pytest.raises(ValueError, match="resize_kernel='box' with nothing to resize"):
        att.enroll("none", imgs, rescale_variants=(), resize_kernel="box")
    for bad in ("nearest", "BOX", 3):
        with pytest.raises(ValueError, match=re.escape(f"one of {KERNELS}")):
            att.enroll("bad", imgs, rescale=0.75, resize_kernel=bad)


def test_rescale_variants_score_a_resized_query_as_a_support_resized_alike(tiny_model, tmp_path):
    """A query whose size is the support's times a factor (both sides alike) is scored against
    the variant resized by the nearest factor, and at its JPEG quality when it is a JPEG: as
    against a profile enrolled resized (and re-encoded) alike. A query of another aspect (a
    crop) or of the support's size meets the unscaled profile."""
    import io
    from PIL import Image
    from ofa_sdk.images import resize, to_rgb
    att = Attributor(model=tiny_model, crops=1)
    imgs = make_images(tmp_path / "a", 5, 47, size=64)
    prof = att.enroll("gen", imgs)
    assert prof.metadata["support_size"] == [64, 64]
    small = Attributor(model=tiny_model, crops=1)
    small.enroll("gen", imgs, rescale=0.75)
    assert small.gallery.get("gen").metadata["support_size"] == [48, 48]
    q = [to_rgb(p) for p in make_images(tmp_path / "q", 2, 48, size=64)]
    resized = [resize(a, 0.75) for a in q]                              # 48 x 48
    np.testing.assert_allclose(att.scores(resized), small.scores(resized), rtol=1e-5)
    assert att.attribute(resized)[0].note == "scored against the 0.75x variants"
    both = Attributor(model=tiny_model, crops=1)
    both.enroll("gen", imgs, rescale=0.75, jpeg_quality=90)
    buf = io.BytesIO()
    Image.fromarray(resized[0]).save(buf, format="JPEG", quality=90)
    np.testing.assert_allclose(att.scores(buf.getvalue()), both.scores(buf.getvalue()), rtol=1e-5)
    assert att.attribute(buf.getvalue())[0].note == "JPEG q90: scored against the 0.75x q90 variants"
    snap = att.snapshot()
    assert snap.route(None, (64, 64)) is snap                       # as generated
    assert snap.route(None, (48, 64)) is snap                       # another aspect: a crop
    assert snap.route(None, (50, 50)).variant_of == ((0.75, None),)
    assert snap.route(None, (40, 40)).variant_of == ((0.6, None),)      # 0.625: nearest 0.6
    assert snap.route(None, (56, 56)).variant_of == ((0.9, None),)      # 0.875: nearest 0.9
    assert snap.route(None, (68, 68)) is snap                       # 1.06: nearer 1 than 1.2
    assert snap.route(None, (72, 72)).variant_of == ((1.2, None),)      # 1.125: nearest 1.2
    assert snap.route(None, (96, 96)).variant_of == ((1.2, None),)      # 1.5: the largest
    mixed = make_images(tmp_path / "m1", 3, 49, size=64) + make_images(tmp_path / "m2", 3, 50, size=80)
    varied = att.enroll("varied", mixed)          # no shared size: no resized variant to choose
    assert varied.metadata["support_size"] is None
    assert {sc for sc, _ in varied.variants} == {1.0}
    with pytest.raises(ValueError, match="a factor of 1 is the support itself"):
        att.enroll("x", imgs, rescale_variants=[1.0])
    with pytest.raises(ValueError, match="rescale=0.75 fixes the support's one delivery"):
        att.enroll("x", imgs, rescale=0.75, rescale_variants=[0.5])
