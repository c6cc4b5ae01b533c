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

* encoded bytes (``bytes``, ``bytearray``, ``memoryview``) are decoded like a file's contents;
  a file is read once and its bytes serve both decoding and the provenance metadata reader
  (:mod:`ofa_sdk.provenance`);
* a decompression bomb is refused from the header's dimensions, before any pixel is decoded:
  images above ``max_pixels`` (default :data:`MAX_PIXELS`, configurable per Attributor) are an
  error; Pillow's own hard limit (2 x ``Image.MAX_IMAGE_PIXELS``) still refuses larger ones
  first, with the same message;
* animated images (GIF, APNG, WebP) use their first frame, and the result's note says so;
* a dangling or looping symbolic link, an unreadable file, an empty file, a non-image with an
  image suffix: each is a per-item error naming the reason;
* only regular files are read (after resolving links): a named pipe, a character or block
  device (``/dev/zero``, ``/dev/urandom``) or a socket is a per-item error, never opened for
  reading, and the folder listing reports it like any other entry with an image suffix; a file
  larger than ``max_bytes`` (default :data:`MAX_BYTES`) is refused from its size before it is
  read. No read can block: the type is checked before opening, the file is opened
  non-blocking, and the type and size are checked again on the open descriptor (a file swapped
  in between is caught).

Decoding failures never raise out of a batch: :func:`prepare` returns an :class:`ImageError`
naming the input and the reason.
"""
from __future__ import annotations

import errno
import functools
import math
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

SMALL_POLICIES = ("reject", "pad", "upscale")
MAX_PIXELS = 100_000_000  # decompression-bomb guard: larger inputs are refused from their header
MAX_BYTES = 256 * 1024 * 1024  # per-file read cap (256 MiB): larger files are refused from their size
ENCODED = (bytes, bytearray, memoryview)


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
    provenance: Optional[dict] = None   # what the file declares about its origin (encoded inputs)
    # prepare(centre=True): the row of ``crops`` holding the centre crop, the crop a 1-crop
    # query takes (0 for a one-crop image; otherwise the last row, appended after the policy's
    # crops, which are then ``crops[:-1]``); None when not asked for
    centre: Optional[int] = None
    # the JPEG quality the input arrived at: read from its quantisation tables
    # (jpeg_quality_of), else from its pixels (jpeg_quality_of_pixels), or the quality
    # prepare(jpeg_quality=...) re-encoded it at; None: not a JPEG, as far as can be told
    quality: Optional[int] = None
    size: Optional[tuple] = None   # (h, w) of the input as decoded, before any policy change

    @property
    def own_crops(self) -> np.ndarray:
        """The crops of the input policy, without an appended centre crop."""
        return self.crops[:-1] if self.centre is not None and self.centre > 0 else self.crops


@dataclass
class Decoded:
    """One decoded input: HxWx3 uint8 pixels, a note on any conversion, and the encoded bytes
    it came from (None for arrays and PIL images)."""
    rgb: np.ndarray
    note: str = ""
    data: Optional[bytes] = None
    quality: Optional[int] = None     # a JPEG's quality (jpeg_quality_of), else None


def describe(item: Any) -> str:
    if isinstance(item, (str, Path)):
        return str(item)
    if isinstance(item, ENCODED):
        return f"<{len(item)} bytes>"
    if isinstance(item, np.ndarray):
        return f"<array {item.shape} {item.dtype}>"
    name = getattr(item, "filename", "") or ""
    return name or f"<{type(item).__name__}>"


def is_single(images: Any) -> bool:
    from PIL import Image
    if isinstance(images, (str, Path, Image.Image, *ENCODED)):
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


def _pil_to_rgb(im, owned: bool = False) -> np.ndarray:
    """HxWx3 uint8 of a PIL image, EXIF orientation applied (in place, without a copy, when
    ``owned``: an image the SDK opened itself, never a caller's)."""
    from PIL import ImageOps
    if owned:
        ImageOps.exif_transpose(im, in_place=True)
    else:
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


def _kind(mode: int) -> str:
    """What a file that is not a regular file is, in words."""
    for test, what in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return what
    return "not a regular file"


def _check_regular(st: os.stat_result, max_bytes: int) -> None:
    """Refuse what :func:`read_file` must not read: anything but a regular file, or a file
    over ``max_bytes``."""
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError("is a directory")
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{_kind(st.st_mode)}, not a regular file: not read")
    if st.st_size > max_bytes:
        raise ValueError(f"{st.st_size} bytes, over the {max_bytes} byte limit (max_bytes): "
                         f"not read")


def read_file(p: Path, max_bytes: int = MAX_BYTES) -> bytes:
    """A regular file's bytes, at most ``max_bytes``, with the reason in the error when it
    cannot be read. Links are resolved first; pipes, devices and sockets are refused without
    being read, and nothing here can block (see the module docstring)."""
    try:
        try:
            st = os.stat(p)                  # follows links; never opens the file
        except FileNotFoundError:
            if os.path.islink(p):
                raise FileNotFoundError("broken symbolic link (its target does not exist)") from None
            raise FileNotFoundError("file not found") from None
        _check_regular(st, max_bytes)
        flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) \
            | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
        fd = os.open(p, flags)
        try:
            _check_regular(os.fstat(fd), max_bytes)   # what was opened, not what was stat'ed
            chunks, left = [], max_bytes + 1
            while left > 0:
                chunk = os.read(fd, min(left, 1 << 20))
                if not chunk:
                    break
                chunks.append(chunk)
                left -= len(chunk)
        finally:
            os.close(fd)
    except PermissionError:
        raise PermissionError("permission denied") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise OSError("symbolic link loop") from None
        raise
    data = b"".join(chunks)
    if len(data) > max_bytes:                       # it grew while being read
        raise ValueError(f"over the {max_bytes} byte limit (max_bytes): not read")
    if not data:
        raise ValueError("empty file")
    return data


def _decode_bytes(data: bytes, max_pixels: int) -> Decoded:
    import io
    import warnings
    from PIL import Image
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError:   # Pillow's own hard limit, above ours
            raise ValueError(f"over the {max_pixels} pixel limit (decompression-bomb guard): "
                             f"refused from its header") from None
        except Image.UnidentifiedImageError:
            raise ValueError("not an image Pillow can decode") from None
        with im:
            if im.width * im.height > max_pixels:
                raise ValueError(f"{im.width}x{im.height} exceeds the {max_pixels} pixel limit "
                                 f"(decompression-bomb guard; set max_pixels to change it)")
            frames = getattr(im, "n_frames", 1)
            note = f"animated ({frames} frames): first frame used" if frames > 1 else ""
            im.seek(0)
            im.load()
            return Decoded(_pil_to_rgb(im, owned=True), note, bytes(data), jpeg_quality_of(im))


def decode(item: Any, max_pixels: int = MAX_PIXELS, max_bytes: int = MAX_BYTES) -> Decoded:
    """Decode one input (a file at most ``max_bytes`` long); raises with the reason on
    failure."""
    from PIL import Image
    if isinstance(item, np.ndarray):
        return Decoded(_array_to_rgb(item))
    if isinstance(item, Image.Image):
        if item.width * item.height > max_pixels:
            raise ValueError(f"{item.width}x{item.height} exceeds the {max_pixels} pixel limit")
        return Decoded(_pil_to_rgb(item), quality=jpeg_quality_of(item))
    if isinstance(item, ENCODED):
        if not len(item):
            raise ValueError("empty bytes")
        if len(item) > max_bytes:
            raise ValueError(f"{len(item)} bytes, over the {max_bytes} byte limit (max_bytes)")
        return _decode_bytes(bytes(item), max_pixels)
    if isinstance(item, (str, Path)):
        return _decode_bytes(read_file(Path(item), max_bytes), max_pixels)
    raise TypeError(f"unsupported input type {type(item).__name__}")


def to_rgb(item: Any, max_pixels: int = MAX_PIXELS, max_bytes: int = MAX_BYTES) -> np.ndarray:
    """Decode one input to HxWx3 uint8; raises with the reason on failure."""
    return decode(item, max_pixels, max_bytes).rgb


def crop_offsets(size: int, crop: int, k: int) -> List[int]:
    """k offsets along one side, evenly spread, snapped to multiples of 8."""
    span = size - crop
    if k == 1:
        return [(span // 2) // 8 * 8]
    return sorted({int(round(span * i / (k - 1))) // 8 * 8 for i in range(k)})


AUTO = "auto"
MAX_AUTO_CROPS = 4   # the "auto" policy's cap on crops per image (its cost: benchmarks/RESULTS.md)


def crop_count(h: int, w: int, crop: int, crops) -> int:
    """How many crops ``crops`` asks of an h x w image: an int as given, or "auto": enough
    crops to tile the image (ceil(h/crop) x ceil(w/crop)), at most :data:`MAX_AUTO_CROPS`."""
    if crops == AUTO:
        return max(1, min(MAX_AUTO_CROPS, math.ceil(h / crop) * math.ceil(w / crop)))
    return int(crops)


def make_crops(a: np.ndarray, crop: int, crops=1) -> np.ndarray:
    """(k, crop, crop, 3): the centre crop, or ``crops`` crops on a grid nearest the centre
    (``crops="auto"``: see :func:`crop_count`). An image too small for distinct grid positions
    gives fewer crops than asked (each position once)."""
    h, w = a.shape[:2]
    crops = crop_count(h, w, crop, crops)
    if crops == 1:
        t, l = crop_offsets(h, crop, 1)[0], crop_offsets(w, crop, 1)[0]
        return a[None, t:t + crop, l:l + crop]
    g = math.ceil(math.sqrt(crops))
    ts, ls = crop_offsets(h, crop, g), crop_offsets(w, crop, g)
    cands = sorted(((t, l) for t in ts for l in ls),
                   key=lambda tl: (tl[0] + crop / 2 - h / 2) ** 2 + (tl[1] + crop / 2 - w / 2) ** 2)
    return np.stack([a[t:t + crop, l:l + crop] for t, l in cands[:crops]])


def prepare(item: Any, crop: int, crops: int = 1, small: str = "reject",
            max_pixels: int = MAX_PIXELS, provenance: bool = False,
            max_bytes: int = MAX_BYTES, centre: bool = False,
            jpeg_quality: Optional[int] = None,
            rescale: Optional[float] = None,
            pixel_quality: bool = True,
            resize_kernel: str = "bicubic") -> Union[Prepared, ImageError]:
    """Decode + crop one input; never raises for a bad input (returns an ImageError). With
    ``provenance``, encoded inputs also get their declared origin read from the same bytes.
    With ``centre`` (enrollment), the centre crop is added after the policy's crops when they
    do not consist of it alone (:attr:`Prepared.centre`). ``rescale``, then ``jpeg_quality``: a
    factor the decoded image is resized by (with ``resize_kernel``) and a JPEG quality it is
    round-tripped through before cropping, in the order a platform applies them (a support
    enrolled as a platform delivers the queries, :meth:`ofa_sdk.Attributor.enroll`). The
    result's quality is the JPEG quality the input arrived at (:attr:`Prepared.quality`); with
    ``pixel_quality``, an input without quantisation tables has it read from its crops'
    pixels."""
    src = describe(item)
    try:
        d = decode(item, max_pixels, max_bytes)
    except Exception as e:  # the reason goes into the per-item error
        reason = str(e) or type(e).__name__
        return ImageError(src, f"unreadable: {reason}")
    a, notes = d.rgb, [d.note] if d.note else []
    resampled = rescale is not None     # then no longer the decoded JPEG's blocks
    if rescale is not None:
        a = resize(a, rescale, resize_kernel)
    h, w = a.shape[:2]
    if h < crop or w < crop:
        if small == "reject":
            was = "" if rescale is None else f" after rescale {rescale:g}"
            return ImageError(src, f"image is {w}x{h}{was}, smaller than the model's {crop}x{crop} "
                                   f"crop (policy small='reject'; use 'pad' or 'upscale')")
        if small == "pad":    # reflect; a 1-pixel side can only repeat its edge
            mode = "reflect" if min(h, w) > 1 else "edge"
            a = np.pad(a, ((0, max(0, crop - h)), (0, max(0, crop - w)), (0, 0)), mode=mode)
            notes.append(f"reflect-padded from {w}x{h}")
        elif small == "upscale":
            from PIL import Image
            s = crop / min(h, w)
            im = Image.fromarray(a).resize((max(crop, round(w * s)), max(crop, round(h * s))),
                                           Image.BICUBIC)
            a, resampled = np.asarray(im), True
            notes.append(f"upscaled from {w}x{h}")
        else:
            raise ValueError(f"small must be one of {SMALL_POLICIES}, got {small!r}")
    quality = None if resampled else d.quality
    if jpeg_quality is not None:
        a, quality = jpeg(a, jpeg_quality), jpeg_quality
    prov = None
    if provenance and d.data is not None:
        from .provenance import read_provenance
        prov = read_provenance(d.data, src).to_dict()
    cs, where = make_crops(a, crop, crops), None
    if quality is None and pixel_quality and not resampled:
        quality = jpeg_quality_of_pixels(cs)     # a JPEG decoded before it reached us
    if centre:
        where = 0 if len(cs) == 1 else len(cs)
        if where:
            cs = np.concatenate([cs, make_crops(a, crop, 1)])
    return Prepared(src, cs, "; ".join(notes), prov, where, quality, tuple(d.rgb.shape[:2]))


def check_rescale(f) -> float:
    """A resize factor: a number in (0, 4]."""
    try:
        v = float(f) if not isinstance(f, (bool, str)) else float("nan")
    except (TypeError, ValueError):
        v = float("nan")
    if not 0 < v <= 4:
        raise ValueError(f"a rescale factor must be a number in (0, 4], got {f!r}")
    return v


# resize kernels a platform may resize with (Pillow's filters, antialiased when downscaling;
# "box" averages areas, as OpenCV's INTER_AREA does). A resized query keeps its labels best
# against a variant resized with its own kernel (benchmarks/RESULTS.md 11.29)
KERNELS = ("bicubic", "bilinear", "lanczos", "box")


def check_kernel(k) -> str:
    """A resize kernel: one of :data:`KERNELS`."""
    if k not in KERNELS:
        raise ValueError(f"a resize kernel must be one of {KERNELS}, got {k!r}")
    return k


def resize(a: np.ndarray, factor: float, kernel: str = "bicubic") -> np.ndarray:
    """An HxWx3 uint8 array resized by ``factor`` with ``kernel`` (:data:`KERNELS`; each side
    rounded, at least 1 px), as a platform resizes before it re-encodes."""
    from PIL import Image
    h, w = a.shape[:2]
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    filt = getattr(Image.Resampling, check_kernel(kernel).upper())
    return np.asarray(Image.fromarray(a).resize(size, filt))


def check_quality(q) -> int:
    """A JPEG quality: an integer in [1, 100]."""
    if isinstance(q, bool) or not isinstance(q, (int, np.integer)) or not 1 <= q <= 100:
        raise ValueError(f"a JPEG quality must be an integer in [1, 100], got {q!r}")
    return int(q)


def parse_variants(given: Optional[Sequence[str]], kind: str, name: str) -> Optional[Tuple]:
    """Variants as a command line or a URL writes them (``--jpeg-variants 95 90``,
    ``?rescale_variants=0.75,0.5``), ``kind`` "jpeg" or "rescale": None when not given (the
    default), () for "none", else the values, each checked (:func:`check_quality`,
    :func:`check_rescale`); a clear error naming ``name`` otherwise."""
    if given is None:
        return None
    given = [str(g).strip() for g in given]
    if [g.lower() for g in given] == ["none"]:
        return ()
    convert, check, what = (
        (int, check_quality, "JPEG qualities (integers in [1, 100])") if kind == "jpeg" else
        (float, check_rescale, "resize factors (numbers in (0, 4])"))
    try:
        if not given:
            raise ValueError(name)
        return tuple(check(convert(g)) for g in given)
    except ValueError:
        raise ValueError(f"{name} takes {what} or 'none', got {' '.join(given) or 'nothing'}"
                         ) from None


def jpeg(a: np.ndarray, quality: int) -> np.ndarray:
    """Round-trip an HxWx3 uint8 array through JPEG at ``quality`` with PIL's default settings
    (robustness tests; a support enrolled re-encoded, :func:`prepare`)."""
    import io
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="JPEG", quality=int(quality))
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


@functools.lru_cache(maxsize=1)
def _ijg_tables() -> np.ndarray:
    """(100, 2, 64) log quantisation tables (luminance, chrominance) of qualities 1..100 as the
    IJG encoder (libjpeg, PIL's) scales them, read back through PIL in the order it reports a
    file's tables."""
    import io
    from PIL import Image
    out = []
    for q in range(1, 101):
        buf = io.BytesIO()
        Image.new("RGB", (8, 8)).save(buf, format="JPEG", quality=q)
        t = Image.open(buf).quantization
        out.append([t[0], t[1]])
    return np.log(np.asarray(out, np.float64))


def jpeg_quality_of(im) -> Optional[int]:
    """The quality of a JPEG (a PIL image as opened): the IJG quality whose quantisation tables
    are nearest its own (mean absolute difference of log step sizes over the luminance table,
    and the chrominance table when present). Encoders with tables of their own get the IJG
    quality of about the same coarseness. A JPEG encoded twice names the last quality only.
    None for anything that is not a JPEG with readable tables."""
    tables = getattr(im, "quantization", None) if getattr(im, "format", None) == "JPEG" else None
    try:
        mine = [np.asarray(tables[k], np.float64) for k in sorted(tables)[:2]]
        if not mine or any(t.shape != (64,) or (t <= 0).any() for t in mine):
            return None
    except (TypeError, KeyError, ValueError):
        return None
    ref = _ijg_tables()[:, :len(mine)]
    dist = np.abs(ref - np.log(np.stack(mine))[None]).mean(axis=(1, 2))
    return int(np.argmin(dist)) + 1


# Reading a JPEG's quality from its pixels (a JPEG decoded before it reached the SDK: an array,
# a PNG made from it). The 8x8 block DCT of a decoded JPEG's luminance sits near multiples of
# its quantisation steps; PIXEL_COEFFICIENTS lowest-frequency AC coefficients are tested against
# every IJG table, and a table is evidence only when its coefficients cluster at least
# PIXEL_QUALITY_GATE of the way from chance to all (lossless images: about 0).
PIXEL_COEFFICIENTS = 20
PIXEL_QUALITY_GATE = 0.5
PIXEL_TOLERANCE = 0.6   # how far from a multiple of its step a coefficient may lie (rounding)
PIXEL_MIN_COEFFICIENTS = 200   # nonzero coefficients below which nothing is concluded
MAX_PIXEL_BLOCKS = 1024        # blocks read (evenly spaced) of a larger input


@functools.lru_cache(maxsize=1)
def _pixel_model():
    """The orthonormal 8-point DCT matrix, the natural-order index of the zigzag's first
    PIXEL_COEFFICIENTS AC coefficients, each IJG quality's (1..99) luminance step there, and
    per coefficient its distinct steps of 2 or more with each quality's index among them (-1:
    a step of 1, which says nothing)."""
    k = np.arange(8)
    dct = np.sqrt(2 / 8) * np.cos((2 * k[None] + 1) * k[:, None] * np.pi / 16)
    dct[0] /= np.sqrt(2)
    zigzag = sorted(((u, v) for u in range(8) for v in range(8)),
                    key=lambda t: (t[0] + t[1], t[1] if (t[0] + t[1]) % 2 == 0 else t[0]))
    pos = np.array([u * 8 + v for u, v in zigzag[1:PIXEL_COEFFICIENTS + 1]])
    steps = np.exp(_ijg_tables()[:99, 0]).round()[:, pos]
    distinct = []
    for p in range(len(pos)):
        s = np.unique(steps[:, p][steps[:, p] >= 2])
        distinct.append((s, np.where(steps[:, p] >= 2, np.searchsorted(s, steps[:, p]), -1)))
    return dct, pos, steps, distinct


def jpeg_quality_of_pixels(crops: np.ndarray) -> Optional[int]:
    """The quality a decoded JPEG was last encoded at, read from its pixels: (k, h, w, 3) uint8
    crops whose offsets are multiples of 8 (:func:`make_crops` keeps JPEG's block grid). The
    IJG quality whose luminance steps gather the most coefficients at their multiples beyond
    chance, when they gather at least :data:`PIXEL_QUALITY_GATE` of them; None for a lossless
    image, one resized or shifted off the block grid, or too flat to tell (how often it reads
    the right quality: benchmarks/RESULTS.md 11.10)."""
    dct, pos, steps, distinct = _pixel_model()
    a = np.asarray(crops, np.float64)
    h, w = a.shape[1] // 8 * 8, a.shape[2] // 8 * 8
    if not h or not w:
        return None
    y = (a[:, :h, :w] @ np.array([0.299, 0.587, 0.114])) - 128.0
    blocks = y.reshape(-1, h // 8, 8, w // 8, 8).transpose(0, 1, 3, 2, 4).reshape(-1, 8, 8)
    if len(blocks) > MAX_PIXEL_BLOCKS:
        blocks = blocks[np.linspace(0, len(blocks) - 1, MAX_PIXEL_BLOCKS).astype(int)]
    x = np.sort(np.abs((dct @ blocks @ dct.T).reshape(len(blocks), 64)[:, pos]), axis=0)
    tol = PIXEL_TOLERANCE
    nz, hit = np.zeros(steps.shape), np.zeros(steps.shape)
    for p, (s, idx) in enumerate(distinct):
        v = x[:, p]
        # per distinct step: coefficients not quantised to zero, and those within tol of a
        # multiple of it (every multiple up to the largest coefficient, from the sorted values)
        n = len(v) - np.searchsorted(v, s / 2, "right")
        reps = np.floor((v[-1] + tol) / s).astype(int)
        if reps.sum():
            first = np.cumsum(reps) - reps
            centres = np.repeat(s, reps) * (np.arange(reps.sum()) - np.repeat(first, reps) + 1)
            inside = np.searchsorted(v, centres + tol, "right") - np.searchsorted(v, centres - tol)
            near = np.add.reduceat(inside, np.minimum(first, len(inside) - 1)) * (reps > 0)
        else:
            near = np.zeros(len(s))
        ok = idx >= 0
        nz[ok, p], hit[ok, p] = n[idx[ok]], near[idx[ok]]
    total = nz.sum(1)
    chance = (nz * np.minimum(1.0, 2 * tol / steps)).sum(1)
    excess = np.where(total >= PIXEL_MIN_COEFFICIENTS, hit.sum(1) - chance, -1.0)
    best = len(excess) - 1 - int(np.argmax(excess[::-1]))     # ties: the higher quality
    if excess[best] <= 0 or excess[best] < PIXEL_QUALITY_GATE * (total[best] - chance[best]):
        return None
    return best + 1


IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"})


def is_image_file(p: Path) -> bool:
    """An image by its suffix: anything with an image suffix that is not a directory (a file, a
    symbolic link even when broken, a pipe, a device, a socket), so that what cannot be read
    becomes an error result instead of vanishing from a scan."""
    return p.suffix.lower() in IMAGE_SUFFIXES and (p.is_symlink() or not p.is_dir())


def list_images(folder: Union[str, Path], recursive: bool = True) -> Iterator[Path]:
    """The image files in a folder (by suffix), sorted, streamed: the one folder listing of
    the SDK, its training and its benchmarks."""
    folder = Path(folder)
    it = folder.rglob("*") if recursive else folder.iterdir()
    return (f for f in sorted(it) if is_image_file(f))


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
            yield from list_images(p, recursive)
        elif any(ch in str(s) for ch in "*?["):
            for f in sorted(glob.glob(str(s), recursive=True)):
                if Path(f).is_symlink() or not Path(f).is_dir():
                    yield Path(f)
        else:
            yield p


# uint8 <-> float: the one home of the conversion between saved 8-bit images (NHWC uint8) and
# the model's input (NCHW float in [0, 1]).
def to_tensor(crops: np.ndarray):
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float32 torch tensor in [0, 1]."""
    import torch
    a = np.require(crops, requirements=["C_CONTIGUOUS", "WRITEABLE"])   # copies only when needed
    return torch.from_numpy(a).permute(0, 3, 1, 2).float().div_(255.0)


def from_tensor(x) -> np.ndarray:
    """(B, 3, H, W) float tensor in [0, 1] -> (B, H, W, 3) uint8, clamped and rounded as a saved
    8-bit image is (how simulator reconstructions become generator outputs)."""
    return (x.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def quantize(x):
    """Float images in [0, 1] rounded to the 8-bit grid, kept as float (``from_tensor`` without
    the layout change)."""
    return (x.clamp(0, 1) * 255).round() / 255
