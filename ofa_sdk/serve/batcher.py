"""Dynamic batching: concurrent requests queued, run through the engine together.

Each request hands in a :class:`Job` (its already decoded and cropped images and the key of
the decision asked for: which profiles, which threshold). One worker thread takes the first
waiting job, then keeps taking jobs until the batch holds ``max_batch`` images or
``max_delay`` seconds have passed since the first one, whichever comes first, and runs the
whole batch with one call of ``run`` (the server's: one engine pass for every image of the
batch, then the library's scoring and decision per key). Each job's future gets its own
results, or the exception that concerned it. While the engine is busy, requests accumulate,
so the next batch forms at once and fills up: the delay only costs latency on an idle server.

The queue is bounded: :meth:`Batcher.submit` refuses a job with :class:`QueueFull` when
``queue_images`` images already wait, so memory never grows with the load (the HTTP layer
turns that into 503 with Retry-After, and refuses requests before reading their bodies once
its own bound of requests in flight is reached).
"""
from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, List, Optional, Sequence

DEFAULT_MAX_BATCH = 32        # images per batch
DEFAULT_MAX_DELAY = 0.005     # seconds the first request of a batch waits for others
DEFAULT_QUEUE_IMAGES = 256    # images waiting at most; past this, QueueFull (HTTP 503)


class QueueFull(RuntimeError):
    """The batch queue holds its maximum number of images: try again later."""


@dataclass
class Job:
    items: Sequence[Any]          # what ``run`` needs per image (the server: Prepared/ImageError)
    key: Hashable                 # jobs of one key share a decision setting (profiles, threshold)
    future: Future = field(default_factory=Future)
    queued_at: float = field(default_factory=time.monotonic)


class Batcher:
    """A bounded queue of :class:`Job` and the worker thread that runs them in batches.

    ``run(jobs)`` gets the batch (a list of jobs, at most ``max_batch`` images in all unless a
    single job is larger) and returns, per job, its list of results or an exception instance
    (delivered to that job alone). An exception raised by ``run`` itself fails every job of the
    batch and the worker goes on. ``on_batch(n_images, n_jobs, seconds)`` and
    ``on_depth(images_waiting)`` report to the metrics."""

    def __init__(self, run: Callable[[List[Job]], List[Any]], max_batch: int = DEFAULT_MAX_BATCH,
                 max_delay: float = DEFAULT_MAX_DELAY, queue_images: int = DEFAULT_QUEUE_IMAGES,
                 on_batch: Optional[Callable] = None, on_depth: Optional[Callable] = None):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch!r}")
        if max_delay < 0:
            raise ValueError(f"max_delay must be >= 0 seconds, got {max_delay!r}")
        if queue_images < max_batch:
            raise ValueError(f"queue_images ({queue_images}) must be >= max_batch ({max_batch})")
        self.run, self.max_batch, self.max_delay = run, max_batch, max_delay
        self.queue_images = queue_images
        self._on_batch, self._on_depth = on_batch, on_depth
        self._q: "queue.Queue[Optional[Job]]" = queue.Queue()
        self._waiting = 0                     # images in the queue
        self._lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None
        self._stopped = False

    @property
    def waiting(self) -> int:
        """Images queued and not yet taken into a batch."""
        return self._waiting

    def start(self) -> "Batcher":
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="ofa-batcher", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop taking jobs; jobs still queued fail with QueueFull."""
        self._stopped = True
        self._q.put(None)
        if self._thread is not None:
            self._thread.join(timeout)

    def submit(self, items: Sequence[Any], key: Hashable) -> Future:
        """Queue one request's images; its future resolves to the list of their results."""
        n = len(items)
        with self._lock:
            if self._stopped:
                raise QueueFull("the server is shutting down")
            if self._waiting + n > self.queue_images:
                raise QueueFull(f"{self._waiting} images are queued (limit {self.queue_images})")
            self._waiting += n
            depth = self._waiting
        job = Job(items, key)
        self._q.put(job)
        if self._on_depth:
            self._on_depth(depth)
        return job.future

    def _get(self, timeout: Optional[float] = None) -> Optional[Job]:
        """The next queued job (None: stop), counted out of the queue; queue.Empty on timeout."""
        job = self._q.get(timeout=timeout) if timeout is None or timeout > 0 else self._q.get_nowait()
        if job is None:
            return None
        with self._lock:
            self._waiting -= len(job.items)
            depth = self._waiting
        if self._on_depth:
            self._on_depth(depth)
        return job

    def _collect(self, first: Job):
        """(the batch that starts with ``first``, the job that did not fit or None)."""
        batch, n = [first], len(first.items)
        deadline = time.monotonic() + self.max_delay
        while n < self.max_batch:
            try:    # whatever is already queued joins at once; then wait out the delay
                job = self._get(0)
            except queue.Empty:
                try:
                    job = self._get(max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
            if job is None:               # stop() while collecting: run what was collected
                self._q.put(None)
                break
            if n + len(job.items) > self.max_batch:   # keeps its turn: first of the next batch
                return batch, job
            batch.append(job)
            n += len(job.items)
        return batch, None

    def _loop(self) -> None:
        carry: Optional[Job] = None
        while True:
            first, carry = carry or self._get(), None
            if first is None:
                break
            batch, carry = self._collect(first)
            self._run(batch)
        while True:                        # stopped: fail what is left
            try:
                job = self._q.get_nowait()
            except queue.Empty:
                break
            if job is not None and job.future.set_running_or_notify_cancel():
                job.future.set_exception(QueueFull("the server is shutting down"))

    def _run(self, batch: List[Job]) -> None:
        live = [j for j in batch if j.future.set_running_or_notify_cancel()]
        if not live:
            return
        t = time.perf_counter()
        try:
            out = self.run(live)
        except BaseException as e:         # the batch fails; the worker goes on
            out = [e] * len(live)
        for job, res in zip(live, out):
            if isinstance(res, BaseException):
                job.future.set_exception(res)
            else:
                job.future.set_result(res)
        if self._on_batch:
            self._on_batch(sum(len(j.items) for j in live), len(live), time.perf_counter() - t)
