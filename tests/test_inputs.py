"""Hostile and unusual inputs (issue 16, the input side) and provenance beside the verdict
(issue 17): every input yields a result, an error names the input and the reason, nothing is
lost, and metadata never moves a score."""
import io
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from ofa_sdk import Attributor
from ofa_sdk import images as imio


@pytest.fixture(scope="module")
def att(tiny_model):
    return Attributor(model=tiny_model, backend="torch", crops=1)


def png_bytes(a, **info):
    from PIL import PngImagePlugin
    meta = PngImagePlugin.PngInfo()
    for k, v in info.items():
        meta.add_text(k, v)
    b = io.BytesIO()
    Image.fromarray(a).save(b, format="PNG", pnginfo=meta)
    return b.getvalue()


def bomb_png(w=40000, h=40000) -> bytes:
    """A valid PNG header claiming w x h pixels, with almost no data behind it."""
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def noise(n=48, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, n, 3), dtype=np.uint8)


def test_bytes_in_equal_path_in(att, tmp_path):
    a = noise()
    p = tmp_path / "x.png"
    p.write_bytes(png_bytes(a))
    np.testing.assert_array_equal(att.fingerprint(p.read_bytes()), att.fingerprint(p))
    np.testing.assert_array_equal(att.fingerprint(memoryview(p.read_bytes())), att.fingerprint(a))


def test_every_hostile_file_gets_a_row_with_its_reason(att, tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    (d / "good.png").write_bytes(png_bytes(noise()))
    (d / "empty.png").write_bytes(b"")
    (d / "truncated.png").write_bytes(png_bytes(noise())[:60])
    (d / "text.jpg").write_bytes(b"this is not an image at all")
    (d / "bomb.png").write_bytes(bomb_png())
    os.symlink(d / "nowhere.png", d / "dangling.png")
    os.symlink(d / "loop-b.png", d / "loop-a.png")
    os.symlink(d / "loop-a.png", d / "loop-b.png")
    rows = {os.path.basename(r.source): r for r in att.scan(d, progress=False)}
    assert set(rows) == {"good.png", "empty.png", "truncated.png", "text.jpg", "bomb.png",
                         "dangling.png", "loop-a.png", "loop-b.png"}
    assert rows["good.png"].ok
    assert "empty file" in rows["empty.png"].error
    assert "unreadable" in rows["truncated.png"].error
    assert "not an image" in rows["text.jpg"].error
    assert "pixel limit" in rows["bomb.png"].error
    assert "broken symbolic link" in rows["dangling.png"].error
    assert all(not rows[k].ok for k in ("loop-a.png", "loop-b.png"))


def test_pixel_limit_is_configurable(tiny_model):
    small_limit = Attributor(model=tiny_model, backend="torch", crops=1, max_pixels=48 * 48 - 1)
    r = small_limit.attribute([png_bytes(noise())])[0]
    assert not r.ok and "2304 pixel" not in r.error and "pixel limit" in r.error
    with pytest.raises(ValueError, match="max_pixels"):
        Attributor(model=tiny_model, backend="torch", max_pixels=0)


def test_documented_conversions(att):
    a = noise(40)
    frames = [Image.fromarray(noise(40, s)) for s in range(3)]
    b = io.BytesIO()
    frames[0].save(b, format="GIF", save_all=True, append_images=frames[1:])
    p = imio.prepare(b.getvalue(), 32)
    assert isinstance(p, imio.Prepared) and "animated (3 frames): first frame used" in p.note
    for mode in ("CMYK", "P", "LA", "L", "I;16", "RGBA", "1"):
        im = Image.fromarray(a).convert(mode if mode != "I;16" else "I").convert(mode) \
            if mode != "I;16" else Image.fromarray((a[..., 0].astype(np.uint16) * 257))
        out = io.BytesIO()
        im.save(out, format="TIFF" if mode in ("CMYK", "I;16") else "PNG")
        got = imio.prepare(out.getvalue(), 32)
        assert isinstance(got, imio.Prepared), (mode, getattr(got, "reason", ""))
        assert got.crops.dtype == np.uint8 and got.crops.shape == (1, 32, 32, 3)
    # EXIF orientation 6 (rotate 90): a 40x60 stored image is read as 60x40
    im = Image.fromarray(noise(60)[:, :40])
    exif = Image.Exif()
    exif[0x0112] = 6
    out = io.BytesIO()
    im.save(out, format="JPEG", exif=exif)
    assert imio.to_rgb(out.getvalue()).shape == (40, 60, 3)
    for size, policy in ((4, "pad"), (1, "pad"), (5, "upscale")):
        got = imio.prepare(noise(size), 32, small=policy)
        assert isinstance(got, imio.Prepared) and got.crops.shape == (1, 32, 32, 3), (size, policy)
    assert "smaller than" in imio.prepare(noise(4), 32).reason


@pytest.mark.parametrize("bad", [np.full((40, 40, 3), np.nan, np.float32), np.zeros((40, 40, 5), np.uint8),
                                 np.zeros((40, 40, 3), bool), np.zeros((2, 40, 40, 3), np.uint8),
                                 np.zeros((0, 40, 3), np.uint8), "not a path.png", 3.5, None])
def test_bad_arrays_and_objects_are_per_item_errors(att, bad):
    res = att.attribute([noise(), bad, noise(seed=1)])
    assert [r.ok for r in res] == [True, False, True] and res[1].error


def test_metadata_is_reported_beside_the_score_and_never_moves_it(tiny_model):
    att = Attributor(model=tiny_model, backend="torch", crops=1)
    a = noise()
    att.enroll("g", [noise(seed=s) for s in range(2, 6)])
    plain = png_bytes(a)
    tagged = png_bytes(a, parameters="a cat\nSteps: 20, Sampler: Euler a, Model: sd_xl_base_1.0")
    r_plain, r_tagged = att.attribute([plain, tagged])
    assert r_plain.provenance == {} and r_tagged.provenance
    assert "Stable Diffusion" in (r_tagged.provenance.get("generator") or "")
    assert r_plain.score == r_tagged.score and r_plain.label == r_tagged.label
    assert Attributor(model=tiny_model, backend="torch", crops=1, provenance=False,
                      gallery=att.gallery).attribute([tagged])[0].provenance == {}
    assert "provenance" in r_tagged.to_dict()


def test_typicality_shares_the_threshold_scale(tiny_model):
    from ofa_sdk.decision import DEFAULT_FRACTION
    att = Attributor(model=tiny_model, backend="torch", crops=1)
    att.enroll("g", [noise(seed=s) for s in range(10)])
    snap = att.snapshot()
    thr = att.profile_threshold("g")
    assert abs(snap.typicality(0, thr) - DEFAULT_FRACTION) < 1e-4
    r = att.attribute([noise(seed=3), noise(seed=99)])
    for x in r:
        assert 0 <= x.typicality <= 1 and (x.label == "g") == (x.typicality >= DEFAULT_FRACTION - 1e-6)


hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings, strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=2048))
def test_fuzz_decoding_never_raises(data):
    p = imio.prepare(data, 32, provenance=True)
    assert isinstance(p, (imio.Prepared, imio.ImageError))


@settings(max_examples=40, deadline=None)
@given(st.binary(min_size=8, max_size=512), st.integers(0, 200))
def test_fuzz_corrupted_png_never_raises(noise_bytes, cut):
    good = png_bytes(noise(40))
    data = good[:cut] + noise_bytes + good[cut + len(noise_bytes):]
    p = imio.prepare(data, 32, provenance=True)
    assert isinstance(p, (imio.Prepared, imio.ImageError))


@settings(max_examples=30, deadline=None)
@given(hnp.arrays(st.sampled_from([np.uint8, np.uint16, np.float32, np.int64, np.bool_]),
                  hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=40)))
def test_fuzz_arrays_through_the_public_api(tiny_model, arr):
    att = _fuzz_att(tiny_model)
    res = att.attribute([arr, noise()])
    assert len(res) == 2 and res[1].ok
    z = att.fingerprint([arr], errors="nan")
    assert z.shape == (1, att.dim)


_ATT = {}


def _fuzz_att(tiny_model):
    """One Attributor for every hypothesis example (fixtures are not reset between them)."""
    if tiny_model not in _ATT:
        _ATT[tiny_model] = Attributor(model=tiny_model, backend="torch", crops=1)
    return _ATT[tiny_model]
