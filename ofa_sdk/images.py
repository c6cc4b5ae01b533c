"""Image input: decoding, normalisation of modes, and the crop policy.

Accepted inputs: a path (str or Path), a PIL image, or a numpy array (HxWx3 / HxWx4 / HxW,
uint8 or uint16). Everything becomes HxWx3 uint8 RGB:

* EXIF orientation is applied (files and PIL images);
* grayscale, RGBA/LA (alpha dropped, not composited), palette, CMYK and 16-bit are converted
  (16-bit: the top 8 bits, value >> 8);
* an image larger than the model's crop is centre-cropped (``crops=k`` takes k crops on a grid
  and the caller averages their scores). Crop offsets are snapped to multiples of 8 so JPEG's
  8x8 block grid keeps its phase -- JPEG leaves a fingerprint of its own at that period;
* an image smaller than the crop follows ``small``: "reject" (default: a per-item error naming
  the size), "pad" (reflect padding; the result says so) or "upscale" (explicit bicubic
  resampling; the result says so). Nothing is ever resampled silently.

Decoding failures never raise out of a batch: :func:`load` returns an :class:`ImageError`
naming the input and the reason.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, List, Union

import numpy as np

SMALL_POLICIES = ("reject", "pad", "upscale")
MAX_PIXELS = 200_000_000  # decompression-bomb guard: larger inputs are refused


@dataclass
class ImageError:
    source: str
    reason: str

    def __str__(self):
        return f"{self.source}: {self.reason}"


@dataclass
class Prepared:
    source: str
    crops: np.ndarray          # (k, crop, crop, 3) uint8
    note: str = ""             # e.g. "padded from 64x80"


def describe(item: Any) -> str:
    if isinstance(item, (str, Path)):
        return str(item)
    if isinstance(item, np.ndarray):
        return f"<array {item.shape} {item.dtype}>"
    name = getattr(item, "filename", "") or ""
    return name or f"<{type(item).__name__}>"


def is_single(images: Any) -> bool:
    from PIL import Image
    if isinstance(images, (str, Path, Image.Image)):
        return True
    return isinstance(images, np.ndarray) and images.ndim in (2, 3) and images.dtype != object


def iter_items(images: Any) -> Iterator[Any]:
    """One input, or an iterable of inputs; a directory path stands for the images inside."""
    if isinstance(images, (str, Path)) and Path(images).is_dir():
        yield from expand_paths(images)
        return
    if is_single(images):
        yield images
        return
    try:
        it = iter(images)
    except TypeError:
        raise TypeError(f"images must be a path, a PIL image, a numpy array or an iterable of "
                        f"them; got {type(images).__name__}") from None
    yield from it


def _pil_to_rgb(im) -> np.ndarray:
    from PIL import ImageOps
    im = ImageOps.exif_transpose(im)
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(im, dtype=np.uint32)
        a = (a >> 8).clip(0, 255).astype(np.uint8) if a.max() > 255 else a.astype(np.uint8)
        return np.repeat(a[..., None], 3, axis=2)
    if im.mode == "F":
        raise ValueError("floating-point (mode F) images are not supported")
    if im.mode != "RGB":
        im = im.convert("RGBA").convert("RGB") if im.mode == "P" else im.convert("RGB")
    return np.asarray(im)


def _array_to_rgb(a: np.ndarray) -> np.ndarray:
    if a.dtype == np.uint16:
        a = (a >> 8).astype(np.uint8)
    elif a.dtype != np.uint8:
        raise ValueError(f"array dtype {a.dtype} not supported (uint8 or uint16 HxWx3)")
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    elif a.ndim == 3 and a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    elif a.ndim == 3 and a.shape[2] == 4:
        a = a[..., :3]
    elif not (a.ndim == 3 and a.shape[2] == 3):
        raise ValueError(f"array shape {a.shape} is not HxW, HxWx3 or HxWx4")
    return np.ascontiguousarray(a)


def to_rgb(item: Any) -> np.ndarray:
    """Decode one input to HxWx3 uint8; raises with the reason on failure."""
    from PIL import Image
    if isinstance(item, np.ndarray):
        return _array_to_rgb(item)
    if isinstance(item, Image.Image):
        return _pil_to_rgb(item)
    if isinstance(item, (str, Path)):
        p = Path(item)
        if not p.exists():
            raise FileNotFoundError("file not found")
        if p.is_dir():
            raise IsADirectoryError("is a directory")
        if p.stat().st_size == 0:
            raise ValueError("empty file")
        with Image.open(p) as im:
            if im.width * im.height > MAX_PIXELS:
                raise ValueError(f"{im.width}x{im.height} exceeds the {MAX_PIXELS} pixel limit")
            im.load()
            return _pil_to_rgb(im)
    raise TypeError(f"unsupported input type {type(item).__name__}")


def crop_offsets(size: int, crop: int, k: int) -> List[int]:
    """k offsets along one side, evenly spread, snapped to multiples of 8."""
    span = size - crop
    if k == 1:
        return [(span // 2) // 8 * 8]
    return sorted({int(round(span * i / (k - 1))) // 8 * 8 for i in range(k)})


def make_crops(a: np.ndarray, crop: int, crops: int = 1) -> np.ndarray:
    """(k, crop, crop, 3): the centre crop, or ``crops`` crops on a grid nearest the centre."""
    h, w = a.shape[:2]
    if crops == 1:
        t, l = crop_offsets(h, crop, 1)[0], crop_offsets(w, crop, 1)[0]
        return a[None, t:t + crop, l:l + crop]
    g = math.ceil(math.sqrt(crops))
    ts, ls = crop_offsets(h, crop, g), crop_offsets(w, crop, g)
    cands = sorted(((t, l) for t in ts for l in ls),
                   key=lambda tl: (tl[0] + crop / 2 - h / 2) ** 2 + (tl[1] + crop / 2 - w / 2) ** 2)
    return np.stack([a[t:t + crop, l:l + crop] for t, l in cands[:crops]])


def prepare(item: Any, crop: int, crops: int = 1, small: str = "reject") -> Union[Prepared, ImageError]:
    """Decode + crop one input; never raises for a bad input (returns an ImageError)."""
    src = describe(item)
    try:
        a = to_rgb(item)
    except Exception as e:  # the reason goes into the per-item error
        reason = str(e) or type(e).__name__
        return ImageError(src, f"unreadable: {reason}")
    h, w = a.shape[:2]
    note = ""
    if h < crop or w < crop:
        if small == "reject":
            return ImageError(src, f"image is {w}x{h}, smaller than the model's {crop}x{crop} "
                                   f"crop (policy small='reject'; use 'pad' or 'upscale')")
        if small == "pad":
            a = np.pad(a, ((0, max(0, crop - h)), (0, max(0, crop - w)), (0, 0)), mode="reflect")
            note = f"reflect-padded from {w}x{h}"
        elif small == "upscale":
            from PIL import Image
            s = crop / min(h, w)
            im = Image.fromarray(a).resize((max(crop, round(w * s)), max(crop, round(h * s))),
                                           Image.BICUBIC)
            a = np.asarray(im)
            note = f"upscaled from {w}x{h}"
        else:
            raise ValueError(f"small must be one of {SMALL_POLICIES}, got {small!r}")
    return Prepared(src, make_crops(a, crop, crops), note)


def jpeg(a: np.ndarray, quality: int) -> np.ndarray:
    """Round-trip an HxWx3 uint8 array through JPEG at ``quality`` (robustness tests)."""
    import io
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="JPEG", quality=int(quality))
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}


def expand_paths(sources: Union[str, Path, Iterable[Union[str, Path]]],
                 recursive: bool = True) -> Iterator[Path]:
    """Directories (image files inside, sorted), globs, or file paths, in order, streamed.
    A path that names no existing file is still yielded, so it becomes an error result."""
    import glob
    if isinstance(sources, (str, Path)):
        sources = [sources]
    for s in sources:
        p = Path(s)
        if p.is_dir():
            it = p.rglob("*") if recursive else p.iterdir()
            for f in sorted(it):
                if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
                    yield f
        elif any(ch in str(s) for ch in "*?["):
            for f in sorted(glob.glob(str(s), recursive=True)):
                if Path(f).is_file():
                    yield Path(f)
        else:
            yield p


def from_tensor(x) -> np.ndarray:
    """(B, 3, H, W) float tensor in [0, 1] -> (B, H, W, 3) uint8, clamped and rounded as a saved
    8-bit image is (how simulator reconstructions become generator outputs)."""
    return (x.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
