import numpy as np
import pytest
from PIL import Image

from ofa_sdk import images as imio


def test_modes_are_converted(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (50, 60, 3), dtype=np.uint8)
    assert imio.to_rgb(rgb).shape == (50, 60, 3)
    assert imio.to_rgb(rgb[..., 0]).shape == (50, 60, 3)
    rgba = np.concatenate([rgb, np.full((50, 60, 1), 7, np.uint8)], axis=2)
    assert np.array_equal(imio.to_rgb(rgba), rgb)
    a16 = (rgb.astype(np.uint16) << 8) | 0xFF
    assert np.array_equal(imio.to_rgb(a16), rgb)
    for mode in ("L", "P", "RGBA", "CMYK", "LA"):
        im = Image.fromarray(rgb).convert(mode)
        out = imio.to_rgb(im)
        assert out.shape == (50, 60, 3) and out.dtype == np.uint8, mode
    g16 = Image.fromarray((rgb[..., 0].astype(np.uint16) * 257))
    g16.save(tmp_path / "g16.png")
    out = imio.to_rgb(tmp_path / "g16.png")
    assert np.array_equal(out[..., 0], rgb[..., 0])
    with pytest.raises(ValueError, match="float64"):
        imio.to_rgb(rgb.astype(float))


def test_exif_orientation_applied(tmp_path):
    a = np.zeros((20, 40, 3), np.uint8)
    a[:, :20] = 255  # left half white
    im = Image.fromarray(a)
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 CW on display
    im.save(tmp_path / "o.jpg", exif=exif, quality=100)
    out = imio.to_rgb(tmp_path / "o.jpg")
    assert out.shape == (40, 20, 3)
    assert out[:20].mean() > 200 and out[20:].mean() < 50  # white moved to the top


def test_crop_policies():
    a = np.arange(100 * 120 * 3, dtype=np.uint32).reshape(100, 120, 3).astype(np.uint8)
    p = imio.prepare(a, 64)
    assert p.crops.shape == (1, 64, 64, 3)
    assert imio.crop_offsets(100, 64, 1) == [16] and imio.crop_offsets(120, 64, 1) == [24]
    p4 = imio.prepare(a, 64, crops=4)
    assert p4.crops.shape == (4, 64, 64, 3)
    small = np.zeros((30, 80, 3), np.uint8)
    err = imio.prepare(small, 64)
    assert isinstance(err, imio.ImageError) and "80x30" in err.reason and "reject" in err.reason
    padded = imio.prepare(small, 64, small="pad")
    assert padded.crops.shape == (1, 64, 64, 3) and "padded" in padded.note
    up = imio.prepare(small, 64, small="upscale")
    assert up.crops.shape == (1, 64, 64, 3) and "upscaled" in up.note


def test_unreadable_inputs_become_errors(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "junk.jpg").write_bytes(b"not an image at all")
    cases = {tmp_path / "empty.png": "empty", tmp_path / "junk.jpg": "unreadable",
             tmp_path / "missing.png": "not found", tmp_path: "directory"}
    for path, word in cases.items():
        r = imio.prepare(path, 16)
        assert isinstance(r, imio.ImageError) and word in r.reason and str(path) == r.source


def test_expand_paths(tmp_path):
    for n in ("b.png", "a.jpg", "c.txt", "sub/d.png"):
        (tmp_path / n).parent.mkdir(exist_ok=True)
        (tmp_path / n).write_bytes(b"x")
    got = [p.name for p in imio.expand_paths(tmp_path)]
    assert got == ["a.jpg", "b.png", "d.png"]
    assert [p.name for p in imio.expand_paths(str(tmp_path / "*.png"))] == ["b.png"]
    assert [p.name for p in imio.expand_paths([tmp_path / "nope.png"])] == ["nope.png"]


def test_a_jpegs_quality_is_read_from_its_quantisation_tables():
    """Every IJG quality is read back exactly (colour and grayscale, 4:4:4 too); anything that
    is not a JPEG has none; prepare reports the quality the input arrived at, none once
    resized, and the one it re-encodes at."""
    import io
    from PIL import Image
    from ofa_sdk import images as imio
    a = (np.random.default_rng(0).random((48, 48, 3)) * 255).astype(np.uint8)

    def encoded(img, fmt="JPEG", **kw):
        buf = io.BytesIO()
        img.save(buf, format=fmt, **kw)
        return buf.getvalue()
    for q in range(1, 101):
        assert imio.decode(encoded(Image.fromarray(a), quality=q)).quality == q
    assert imio.decode(encoded(Image.fromarray(a[..., 0]), quality=77)).quality == 77
    assert imio.decode(encoded(Image.fromarray(a), quality=85, subsampling=0)).quality == 85
    assert imio.decode(encoded(Image.fromarray(a), "PNG")).quality is None
    assert imio.decode(a).quality is None
    opened = Image.open(io.BytesIO(encoded(Image.fromarray(a), quality=60)))
    assert imio.decode(opened).quality == 60                  # a PIL image as opened
    data = encoded(Image.fromarray(a), quality=70)
    assert imio.prepare(data, 32).quality == 70
    assert imio.prepare(data, 32, rescale=0.9).quality is None
    assert imio.prepare(data, 32, jpeg_quality=90).quality == 90
    assert imio.prepare(a, 32).quality is None


def test_a_decoded_jpegs_quality_is_read_from_its_pixels():
    """An input without quantisation tables (an array, a PNG made from a JPEG) has the quality
    it was last encoded at read from its crops' pixels; a lossless image, or one resized since,
    has none; the policy can turn the reading off."""
    import io
    from PIL import Image
    from ofa_sdk import images as imio
    rng = np.random.default_rng(3)
    smooth = np.cumsum(np.cumsum(rng.normal(size=(200, 200, 3)), 0), 1)     # image-like content
    a = ((smooth - smooth.min()) / np.ptp(smooth) * 200 + rng.normal(0, 6, smooth.shape))
    a = a.clip(0, 255).astype(np.uint8)
    assert imio.prepare(a, 96, 4).quality is None                          # lossless
    for q in (95, 90, 85, 75, 60, 40):
        assert imio.prepare(imio.jpeg(a, q), 96, 4).quality == q, q         # a decoded JPEG
    buf = io.BytesIO()
    Image.fromarray(imio.jpeg(a, 80)).save(buf, format="PNG")
    assert imio.prepare(buf.getvalue(), 96, 1).quality == 80                # a PNG made from it
    assert imio.prepare(imio.jpeg(a, 80), 96, 4, rescale=0.9).quality is None
    assert imio.prepare(imio.jpeg(a, 80)[3:, 5:], 96, 4).quality is None    # off the block grid
    assert imio.prepare(imio.jpeg(a, 80), 96, 4, pixel_quality=False).quality is None
    assert imio.prepare(imio.jpeg(a[:60, :60], 80), 96, 1, small="upscale").quality is None
    assert imio.jpeg_quality_of_pixels(np.zeros((1, 4, 4, 3), np.uint8)) is None
