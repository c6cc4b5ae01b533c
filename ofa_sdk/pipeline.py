"""The input side of the data flow: items -> decoded, cropped uint8 crops -> engine batches.

    items --(prefetch: decode + crop in worker threads)--> Prepared | ImageError
          --(batches of about batch_size crops)--> engine.embed --> EmbeddedItem per item

Decoding runs ahead of the engine through a bounded window of futures: while the engine
embeds one batch, the worker threads decode the next (PIL releases the GIL), and at most
``ahead`` items are in flight, so memory does not grow with the number of items. Order is kept
and every item yields exactly one :class:`EmbeddedItem`; an unusable item carries its reason
and never stops the stream.
"""
from __future__ import annotations

import queue
import threading
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, List, NamedTuple, Optional, Tuple, Union

import numpy as np

from . import images as imio


class EmbeddedItem(NamedTuple):
    source: str
    z: Optional[np.ndarray]          # (k, d) crop fingerprints, None when unusable
    error: str                       # "" when usable
    note: str                        # e.g. the small-image policy applied
    spectrum: Optional[np.ndarray]   # (C, h, w) mean residual log-spectrum (spectra=True)
    provenance: Optional[dict] = None  # what the file declares about its origin (ofa_sdk.provenance)
    centre: Optional[np.ndarray] = None  # (d,) the centre crop's fingerprint (InputPolicy.centre)
    quality: Optional[int] = None    # the JPEG quality it arrived at (images.Prepared.quality)
    size: Optional[tuple] = None     # (h, w) as it arrived (images.Prepared.size)

    @property
    def ok(self) -> bool:
        return self.z is not None


class InputError(ValueError):
    """Some inputs could not be used. Nothing else was lost: ``partial`` holds the result for
    every input (NaN rows where an input failed) and ``errors`` lists (index, source, reason)."""

    def __init__(self, errors: List[Tuple[int, str, str]], partial: Any = None):
        self.errors, self.partial = errors, partial
        lines = "; ".join(f"#{i} {src}: {why}" for i, src, why in errors[:5])
        more = f" (+{len(errors) - 5} more)" if len(errors) > 5 else ""
        super().__init__(f"{len(errors)} input(s) could not be used: {lines}{more}. "
                         f"Pass errors='nan' to get NaN rows instead of this exception.")


ERROR_POLICIES = ("raise", "nan")


def finish(out: np.ndarray, errs: List[Tuple[int, str, str]], errors: str) -> np.ndarray:
    """Apply the ``errors=`` policy to a result with NaN rows for unusable inputs."""
    if errors not in ERROR_POLICIES:
        raise ValueError(f"errors must be one of {ERROR_POLICIES}, got {errors!r}")
    if errs and errors == "raise":
        raise InputError(errs, out)
    return out


@dataclass(frozen=True)
class InputPolicy:
    """How an input becomes crops: the model's crop size, crops per image, small images, the
    decompression-bomb pixel limit, whether encoded inputs' provenance metadata is read, and
    the largest file read (``max_bytes``; larger files are refused before reading)."""
    crop: int
    crops: Union[int, str] = imio.AUTO
    small: str = "reject"
    max_pixels: int = imio.MAX_PIXELS
    provenance: bool = True
    max_bytes: int = imio.MAX_BYTES
    centre: bool = False    # also embed the centre crop (enrollment: Profile.centre)
    jpeg_quality: Optional[int] = None   # re-encode before cropping (enrollment)
    rescale: Optional[float] = None      # resize before re-encoding and cropping (enrollment)
    resize_kernel: str = "bicubic"       # the kernel ``rescale`` resizes with (imio.KERNELS)
    # read the JPEG quality of an input without quantisation tables (an array, a PNG made from a
    # JPEG) from its crops' pixels (images.jpeg_quality_of_pixels; its cost: RESULTS.md 11.10):
    # such a query then meets the profiles' JPEG variants too; off, it meets the support as
    # generated
    pixel_quality: bool = True

    def __post_init__(self):
        if self.small not in imio.SMALL_POLICIES:
            raise ValueError(f"small must be one of {imio.SMALL_POLICIES}, got {self.small!r}")
        if self.crops != imio.AUTO and (not isinstance(self.crops, int) or self.crops < 1):
            raise ValueError(f"crops must be an int >= 1 or {imio.AUTO!r}, got {self.crops!r}")
        if self.max_pixels < 1:
            raise ValueError(f"max_pixels must be >= 1, got {self.max_pixels!r}")
        if not isinstance(self.max_bytes, int) or self.max_bytes < 1:
            raise ValueError(f"max_bytes must be an int >= 1, got {self.max_bytes!r}")
        if self.jpeg_quality is not None:
            imio.check_quality(self.jpeg_quality)
        if self.rescale is not None:
            imio.check_rescale(self.rescale)
        imio.check_kernel(self.resize_kernel)

    def __call__(self, item: Any) -> Union[imio.Prepared, imio.ImageError]:
        return imio.prepare(item, self.crop, self.crops, self.small, self.max_pixels,
                            self.provenance, self.max_bytes, self.centre, self.jpeg_quality,
                            self.rescale, self.pixel_quality, self.resize_kernel)


def _decode_worker(tasks: "queue.SimpleQueue", policy: InputPolicy) -> None:
    """Run ``policy`` on queued (future, item) pairs until the ``None`` that ends the window."""
    while True:
        job = tasks.get()
        if job is None:
            return
        fut, item = job
        if not fut.set_running_or_notify_cancel():
            continue
        try:
            fut.set_result(policy(item))
        except BaseException as e:     # delivered to the consumer by .result()
            fut.set_exception(e)


def prefetch(items: Iterable[Any], policy: InputPolicy, workers: int = 2,
             ahead: int = 64) -> Iterator[Union[imio.Prepared, imio.ImageError]]:
    """``policy(item)`` for each item, in order, computed by ``workers`` threads at most
    ``ahead`` items ahead of the consumer.

    The threads are daemon threads that this generator ends when it is closed: a consumer that
    stops (an exception, Ctrl-C, SIGTERM) never waits for a decode still in progress, neither
    here nor at interpreter exit (a ``ThreadPoolExecutor`` joins its threads in both places)."""
    if workers <= 1:
        yield from map(policy, items)
        return
    window: deque = deque()
    tasks: queue.SimpleQueue = queue.SimpleQueue()
    threads = [threading.Thread(target=_decode_worker, args=(tasks, policy), daemon=True,
                                name=f"ofa-decode-{i}") for i in range(workers)]
    for t in threads:
        t.start()
    try:
        for item in items:
            fut: Future = Future()
            window.append(fut)
            tasks.put((fut, item))
            if len(window) >= ahead:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()
    finally:
        for f in window:
            f.cancel()
        for _ in threads:
            tasks.put(None)


def embed_stream(engine, items: Iterable[Any], policy: InputPolicy, batch_size: int = 32,
                 workers: int = 2, spectra: bool = False) -> Iterator[EmbeddedItem]:
    """One :class:`EmbeddedItem` per item, in order, batching crops across items. With
    ``spectra=True`` each usable item also carries its mean residual log-spectrum over its
    crops, from the same forward pass."""
    return embed_prepared(engine, prefetch(items, policy, workers, ahead=max(2 * batch_size, 8)),
                          batch_size, spectra)


def embed_prepared(engine, prepared: Iterable[Union[imio.Prepared, imio.ImageError]],
                   batch_size: int = 32, spectra: bool = False) -> Iterator[EmbeddedItem]:
    """:func:`embed_stream` after the input policy: items ``policy(item)`` already made (for a
    caller that decodes elsewhere, such as the HTTP server, which decodes each upload in its
    own request and then batches)."""
    pending: List[Union[imio.Prepared, imio.ImageError]] = []
    n_crops = 0

    def flush():
        good = [p for p in pending if isinstance(p, imio.Prepared)]
        z = spec = None
        if good:
            crops = np.concatenate([p.crops for p in good])
            if spectra:
                z, spec = engine.embed_spectra(crops)
            else:
                z = engine.embed(crops)
        k = 0
        for p in pending:
            if isinstance(p, imio.ImageError):
                yield EmbeddedItem(p.source, None, p.reason, "", None)
            else:
                n, own = len(p.crops), len(p.own_crops)
                yield EmbeddedItem(p.source, z[k:k + own], "", p.note,
                                   spec[k:k + own].mean(0) if spectra else None, p.provenance,
                                   None if p.centre is None else z[k + p.centre], p.quality,
                                   p.size)
                k += n

    for p in prepared:
        pending.append(p)
        n_crops += len(p.crops) if isinstance(p, imio.Prepared) else 0
        if n_crops >= batch_size:
            yield from flush()
            pending, n_crops = [], 0
    if pending:
        yield from flush()
