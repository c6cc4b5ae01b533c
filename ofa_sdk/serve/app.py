"""The HTTP app: one :class:`~ofa_sdk.attributor.Attributor` and its gallery behind versioned
JSON endpoints, with dynamic batching, Prometheus metrics and the review page.

    POST /v1/attribute              images -> best profile or unknown, per image
    POST /v1/verify?profile=NAME    images -> score for one profile, per image
    GET  /v1/profiles               the gallery's profiles
    POST /v1/profiles/{name}        enroll images as a new profile            (token)
    POST /v1/profiles/{name}/images add images to an existing profile         (token)
    DELETE /v1/profiles/{name}      remove a profile                          (token)
    GET  /v1/model                  the model, engine, rule and serving settings
    GET  /healthz  /readyz  /metrics  /openapi.json
    GET  /review                    the review page of discover output folders
    GET  /v1/review/...             its data; POST /v1/review/decision       (token)

The data flow is the library's: each upload is decoded and cropped in its own request by the
Attributor's input policy (``att.policy``), the :class:`~ofa_sdk.serve.batcher.Batcher` runs the
crops of concurrent requests through the engine together (``att.embed_prepared``), and the
library's snapshot scores and :func:`ofa_sdk.decision.attribute_stream` decide, so a result is
the one ``Attributor.attribute`` gives for the same image and gallery. The server never fetches
a URL. Details: docs/serving.md.
"""
from __future__ import annotations

import asyncio
import hmac
import os
import sys
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from .. import decision
from ..attributor import delivery_of
from ..gallery import GalleryError, ProfileNotFound
from ..images import KERNELS, check_kernel, check_quality, check_rescale, parse_variants
from ..pipeline import InputError
from .batcher import (DEFAULT_MAX_BATCH, DEFAULT_MAX_DELAY, DEFAULT_QUEUE_IMAGES, Batcher,
                      QueueFull)
from .metrics import CONTENT_TYPE_LATEST, Metrics
from .review import ACTIONS, Review
from .uploads import (DEFAULT_MAX_FILES, DEFAULT_READ_TIMEOUT, ServeError, read_body,
                      read_images)

API = "/v1"
STATIC = Path(__file__).parent / "static"
STATIC_FILES = {"review.js": "text/javascript", "review.css": "text/css"}
DEFAULT_MAX_INFLIGHT = 64     # requests admitted at once (reading, decoding, queued, running)
RETRY_AFTER_S = 1             # what a 503 tells the client to wait
DECISION_BYTES = 65536         # the largest review decision body read
SNAPSHOT_CACHE = 32           # decision settings (profiles, threshold) kept prepared


@dataclass
class Settings:
    """How the server batches and what it admits (``ofa-sdk serve --help`` sets each)."""
    max_batch: int = DEFAULT_MAX_BATCH          # images per engine batch
    max_delay: float = DEFAULT_MAX_DELAY        # seconds a batch waits to fill
    queue_images: int = DEFAULT_QUEUE_IMAGES    # images waiting at most
    max_inflight: int = DEFAULT_MAX_INFLIGHT    # requests admitted at once
    read_timeout: float = DEFAULT_READ_TIMEOUT  # seconds for a request body to arrive
    max_files: int = DEFAULT_MAX_FILES          # images per request
    token: Optional[str] = field(default=None, repr=False)   # bearer token for writes
    review_roots: Sequence[str] = ()            # folders the review page may open

    def __post_init__(self):
        if self.queue_images < self.max_files:     # else a full request is refused forever
            raise ValueError(f"queue_images ({self.queue_images}) must be at least max_files "
                             f"({self.max_files}), the images one request may hold")

    def public(self) -> Dict:
        d = asdict(self)
        d.pop("token")
        d["writes"] = "token" if self.token else "disabled (no token configured)"
        d["review_roots"] = [str(r) for r in self.review_roots]
        return d


class Service:
    """The server's state: the Attributor (loaded in the background: ready once it and the
    gallery's snapshot are), the batcher, the prepared snapshots and the metrics."""

    def __init__(self, attributor: Union[Any, Callable[[], Any]], settings: Settings,
                 metrics: Metrics):
        self._load = attributor if callable(attributor) else (lambda: attributor)
        self.settings, self.metrics = settings, metrics
        self.att = None
        self.failed: Optional[str] = None
        self.review = Review(settings.review_roots) if settings.review_roots else None
        self.batcher = Batcher(self._run_batch, settings.max_batch, settings.max_delay,
                               settings.queue_images, metrics.batch, metrics.queue.set)
        self._snaps: Dict[Tuple, Any] = {}
        self._snap_lock = threading.Lock()
        self._build_lock = threading.Lock()     # one snapshot build at a time (SnapshotCache)
        self._generation = 0            # bumped by this server's own gallery writes
        self._inflight = 0
        self._ready = threading.Event()
        self._settled = threading.Event()       # loading ended, ready or failed

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        threading.Thread(target=self._start, name="ofa-serve-load", daemon=True).start()

    def _start(self) -> None:
        try:
            att = self._load()
            self.att = att
            self.snapshot((None, None))          # the gallery read and prepared once
            self.batcher.start()
            self._ready.set()
        except Exception as e:                   # reported by /readyz; the server stays up
            self.failed = f"{type(e).__name__}: {e}"
            print(f"ofa-sdk serve: the model failed to load: {self.failed}", file=sys.stderr)
        finally:
            self._settled.set()

    def stop(self) -> None:
        self.batcher.stop()

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def wait_ready(self, timeout: float) -> bool:
        """Wait until loading ended (or ``timeout``); whether the service is ready."""
        self._settled.wait(timeout)
        return self.ready

    def require_ready(self):
        if not self.ready:
            raise ServeError(503, "not_ready", "the model is still loading" if not self.failed
                             else f"the model failed to load: {self.failed}",
                             {"Retry-After": str(RETRY_AFTER_S)})
        return self.att

    # -- admission: bounded requests in flight ----------------------------------------------------
    def admit(self) -> "_Admitted":
        if self._inflight >= self.settings.max_inflight:
            raise ServeError(503, "queue_full", f"{self._inflight} requests in flight (limit "
                             f"{self.settings.max_inflight}); retry later",
                             {"Retry-After": str(RETRY_AFTER_S)})
        return _Admitted(self)

    # -- snapshots ----------------------------------------------------------------------------------
    def _stamp(self) -> Tuple:
        """What changes when the gallery does: this server's writes, and the gallery file's
        (and its write-ahead log's) size and modification time for writes by other processes."""
        path = self.att.gallery.path
        files = [] if path is None else [path, Path(str(path) + "-wal")]
        st = []
        for f in files:
            try:
                s = os.stat(f)
                st.append((s.st_mtime_ns, s.st_size))
            except OSError:
                st.append(None)
        return (self._generation, tuple(st))

    def snapshot(self, key: Tuple):
        """The library's snapshot (``Attributor.snapshot``) for ``key`` = (profiles, threshold),
        kept until the gallery changes."""
        profiles, threshold = key
        stamp = self._stamp()
        with self._snap_lock:
            hit = self._snaps.get(key)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        with self._build_lock:      # the library's snapshot cache is not shared across threads
            with self._snap_lock:   # built meanwhile by the thread this one waited for
                hit = self._snaps.get(key)
            if hit is not None and hit[0] == stamp:
                return hit[1]
            snap = self.att.snapshot(list(profiles) if profiles else None, threshold)
            with self._snap_lock:
                if len(self._snaps) >= SNAPSHOT_CACHE:
                    self._snaps.clear()
                self._snaps[key] = (stamp, snap)
        return snap

    def changed(self) -> None:
        with self._snap_lock:
            self._generation += 1
            self._snaps.clear()

    # -- the batch: one engine pass, then the library's decision per key -------------------------
    def _run_batch(self, jobs) -> List[Any]:
        items = [p for j in jobs for p in j.items]
        embedded = list(self.att.embed_prepared(items))
        per_job: List[List] = []
        k = 0
        for j in jobs:
            per_job.append(embedded[k:k + len(j.items)])
            k += len(j.items)
        out: List[Any] = [None] * len(jobs)
        for key in dict.fromkeys(j.key for j in jobs):
            idx = [i for i, j in enumerate(jobs) if j.key == key]
            mine = [e for i in idx for e in per_job[i]]
            try:
                res = list(decision.attribute_stream(self.snapshot(key), mine, chunk=len(mine)))
            except Exception as e:               # e.g. a profile removed meanwhile: these jobs only
                for i in idx:
                    out[i] = e
                continue
            r = 0
            for i in idx:
                out[i] = res[r:r + len(jobs[i].items)]
                r += len(jobs[i].items)
        return out

    def prepare(self, images: List[Tuple[str, bytes]]) -> List[Any]:
        """The input policy on each upload (decode, crop), each named by its upload name."""
        out = []
        for name, data in images:
            p = self.att.policy(data)
            p.source = name
            out.append(p)
        return out

    async def decide(self, request: Request, key: Tuple) -> JSONResponse:
        """Read the uploads, decode them here, queue them for a batch, answer the results."""
        with self.admit():
            att = self.require_ready()
            images = await read_images(request, att.policy.max_bytes, self.settings.read_timeout,
                                       self.settings.max_files)
            prepared = await run_in_threadpool(self.prepare, images)
            try:
                fut = self.batcher.submit(prepared, key)
            except QueueFull as e:
                raise ServeError(503, "queue_full", f"{e}; retry later",
                                 {"Retry-After": str(RETRY_AFTER_S)}) from None
            try:
                results = await asyncio.wrap_future(fut)
            except ProfileNotFound as e:
                raise ServeError(404, "not_found", str(e)) from None
        rows = [r.to_dict() for r in results]
        bad = sum(1 for r in results if not r.ok)
        if bad:
            self.metrics.error("bad_image", bad)
        if bad == len(rows):
            return JSONResponse({"results": rows, "error": "no image could be used: "
                                 + "; ".join(f"{r['source']}: {r['error']}" for r in rows[:5])},
                                status_code=422)
        return JSONResponse({"results": rows})

    # -- writes ---------------------------------------------------------------------------------------
    def check_token(self, request: Request) -> None:
        """Writes need ``Authorization: Bearer <token>``, compared in constant time."""
        if not self.settings.token:
            raise ServeError(403, "forbidden", "gallery writes are disabled: start the server "
                             "with a token (--token-file or OFA_SDK_SERVE_TOKEN)")
        got = request.headers.get("authorization", "")
        scheme, _, value = got.partition(" ")
        ok = hmac.compare_digest(value.strip().encode("utf-8", "surrogateescape"),
                                 self.settings.token.encode("utf-8", "surrogateescape"))
        if scheme.lower() != "bearer" or not ok:
            raise ServeError(401, "unauthorized", "this write needs 'Authorization: Bearer "
                             "<token>' with the server's token", {"WWW-Authenticate": "Bearer"})

    def write(self, fn: Callable, *args, **kwargs):
        """Run a gallery write (an Attributor call) in a worker thread; the snapshots follow."""
        async def go():
            try:
                return await run_in_threadpool(fn, *args, **kwargs)
            finally:
                self.changed()
        return go()

    def thresholds(self) -> Dict[str, float]:
        """Each profile's threshold, from the current snapshot of the whole gallery."""
        snap = self.snapshot((None, None))
        return dict(zip(snap.names, snap.thresholds))

    def profile_row(self, prof, added: bool = False,
                    thresholds: Optional[Dict[str, float]] = None) -> Dict:
        """A profile as the API shows it (blocking: call it from a worker thread); ``added``:
        images, used and skipped of the last add (as ``ofa-sdk enroll --add`` reports), the
        support of the whole profile."""
        thr = (self.thresholds() if thresholds is None else thresholds).get(prof.name)
        m = prof.metadata
        if added and m.get("added"):
            m = {**m, **m["added"][-1]}
        return {"name": prof.name, "support": prof.n_support, "images": m.get("images"),
                "used": m.get("used"), "skipped": m.get("skipped"),
                "skipped_examples": m.get("skipped_examples", []), "model_id": prof.model_id,
                "threshold": thr, "delivery": delivery_of(prof.metadata)}


class _Admitted:
    def __init__(self, svc: Service):
        self.svc = svc
        svc._inflight += 1
        svc.metrics.inflight.set(svc._inflight)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.svc._inflight -= 1
        self.svc.metrics.inflight.set(self.svc._inflight)


# -- the OpenAPI description of an upload body (read by hand, so FastAPI cannot infer it) ----------
UPLOAD_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "properties": {
        "image": {"type": "array", "items": {"type": "string", "format": "binary"}}}}},
    "image/*": {"schema": {"type": "string", "format": "binary"}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}


class Result(BaseModel):
    """One image's result: the library's fields (:class:`ofa_sdk.decision.Attribution`)."""
    source: str
    label: str
    profile: Optional[str] = None
    score: Optional[float] = None
    threshold: Optional[float] = None
    typicality: Optional[float] = None
    error: Optional[str] = None
    note: str = ""
    scores: Dict[str, float] = {}
    provenance: Dict[str, Any] = {}


class Results(BaseModel):
    results: List[Result]
    error: Optional[str] = None


class ProfileOut(BaseModel):
    name: str
    support: int
    images: Optional[int] = None
    used: Optional[int] = None
    skipped: Optional[int] = None
    skipped_examples: List[str] = []
    model_id: str
    threshold: Optional[float] = None
    delivery: Dict[str, Any] = {}      # attributor.delivery_of: how the support was delivered


class DecisionIn(BaseModel):
    folder: str
    cluster: int
    action: str            # enroll | add | dismiss
    name: Optional[str] = None


# Attributor.enroll's delivery options, as query parameters of the two enrollment routes
RESCALE_DOC = ("resize each support image by this factor (with resize_kernel) before embedding: "
               "for queries a platform delivers resized about so")
QUALITY_DOC = ("re-encode each support image (after rescale) at this JPEG quality before "
               "embedding: for queries a platform delivers re-encoded at about it")
JPEG_VARIANTS_DOC = ("JPEG qualities, comma-separated, at which the support is also embedded "
                     "('none': no variants; default: the SDK's for a new profile, the profile's "
                     "own for an add)")
RESCALE_VARIANTS_DOC = ("resize factors, comma-separated, at which the support is also embedded "
                        "('none': no variants; default: the SDK's for a new profile, the "
                        "profile's own for an add)")
KERNEL_DOC = ("the kernel rescale and rescale_variants resize with, the platform's when known: "
              "one of " + ", ".join(KERNELS) + " (default: bicubic; the profile's own for an add)")


def _delivery_query(rescale: Optional[float] = Query(None, description=RESCALE_DOC),
                    jpeg_quality: Optional[int] = Query(None, description=QUALITY_DOC),
                    jpeg_variants: Optional[str] = Query(None, description=JPEG_VARIANTS_DOC),
                    rescale_variants: Optional[str] = Query(None, description=RESCALE_VARIANTS_DOC),
                    resize_kernel: Optional[str] = Query(None, description=KERNEL_DOC)) -> Dict:
    """The delivery query parameters as given (checked by :func:`_checked_delivery` once the
    token is)."""
    return {"rescale": rescale, "jpeg_quality": jpeg_quality, "jpeg_variants": jpeg_variants,
            "rescale_variants": rescale_variants, "resize_kernel": resize_kernel}


def _checked_delivery(given: Dict) -> Dict:
    """enroll's delivery options from the query parameters, each value checked and the
    variants' comma-separated lists parsed (400 naming the parameter otherwise), so that a bad
    option is refused before the upload is read; how they combine, the library checks."""
    def listed(v: Optional[str]):
        return None if v is None else [x for x in v.split(",") if x.strip()]
    try:
        return {"rescale": None if given["rescale"] is None else check_rescale(given["rescale"]),
                "jpeg_quality": (None if given["jpeg_quality"] is None
                                 else check_quality(given["jpeg_quality"])),
                "jpeg_variants": parse_variants(listed(given["jpeg_variants"]), "jpeg",
                                                "jpeg_variants"),
                "rescale_variants": parse_variants(listed(given["rescale_variants"]), "rescale",
                                                   "rescale_variants"),
                "resize_kernel": (None if given["resize_kernel"] is None
                                  else check_kernel(given["resize_kernel"]))}
    except ValueError as e:
        raise ServeError(400, "bad_request", str(e)) from None


def _threshold(value: Optional[str]):
    if value is None:
        return None
    try:
        return decision.parse_threshold(value)
    except ValueError as e:
        raise ServeError(400, "bad_request", str(e)) from None


def create_app(attributor, settings: Optional[Settings] = None) -> FastAPI:
    """The ASGI app over ``attributor`` (an Attributor, or a callable making one: loaded in
    the background after start-up, /readyz says when)."""
    settings = settings or Settings()
    metrics = Metrics()
    svc = Service(attributor, settings, metrics)
    decision_lock = asyncio.Lock()

    @asynccontextmanager
    async def lifespan(app):
        svc.start()
        yield
        svc.stop()

    # no /docs page: FastAPI's loads its scripts from a CDN; the schema is at /openapi.json
    app = FastAPI(title="ofa-sdk", version=_version(), docs_url=None, redoc_url=None,
                  description="Attribution of images to the generator that made them. "
                              "See docs/serving.md.", lifespan=lifespan)
    app.state.service = svc
    app.add_middleware(_MetricsMiddleware, metrics=metrics)

    @app.exception_handler(ServeError)
    async def _serve_error(request, e: ServeError):
        metrics.error(e.kind)
        return JSONResponse({"error": e.message, "kind": e.kind}, e.status, e.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, e: RequestValidationError):
        metrics.error("bad_request")
        msg = "; ".join(f"{'.'.join(map(str, x.get('loc', ())))}: {x.get('msg')}" for x in e.errors())
        return JSONResponse({"error": msg, "kind": "bad_request"}, 400)

    @app.exception_handler(Exception)
    async def _internal(request, e: Exception):
        metrics.error("internal")
        return JSONResponse({"error": f"internal error: {type(e).__name__}: {e}",
                             "kind": "internal"}, 500)

    def library_errors(e: Exception) -> ServeError:
        if isinstance(e, ProfileNotFound):
            return ServeError(404, "not_found", str(e))
        if isinstance(e, InputError):
            return ServeError(422, "bad_image", str(e))
        if isinstance(e, GalleryError):         # read-only, locked or damaged galleries too
            return ServeError(409, "conflict", str(e))
        if isinstance(e, ValueError):
            return ServeError(400, "bad_request", str(e))
        raise e

    # -- health ----------------------------------------------------------------------------------
    @app.get("/healthz", tags=["health"])
    async def healthz():
        """The process answers (liveness); 503 once the model has failed to load, a state it
        never leaves, so that an orchestrator restarts it instead of keeping it forever unready."""
        if svc.failed:
            return JSONResponse({"status": "failed", "error": svc.failed}, 503)
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    async def readyz():
        """200 once the model and the gallery's snapshot are loaded, else 503."""
        if svc.ready:
            return {"status": "ready", "model_id": svc.att.model_id}
        return JSONResponse({"status": "failed" if svc.failed else "loading",
                             "error": svc.failed}, 503, {"Retry-After": str(RETRY_AFTER_S)})

    @app.get("/metrics", tags=["health"])
    async def prometheus():
        """Prometheus metrics (text exposition format)."""
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    # -- reads -----------------------------------------------------------------------------------
    @app.post(f"{API}/attribute", response_model=Results, tags=["attribution"],
              openapi_extra=UPLOAD_BODY,
              responses={413: {}, 415: {}, 422: {"model": Results}, 503: {}})
    async def attribute(request: Request,
                        threshold: Optional[str] = Query(None, description="a number or 'profile'")):
        """Per image: the best enrolled profile at or above its threshold, or unknown."""
        return await svc.decide(request, (None, _threshold(threshold)))

    @app.post(f"{API}/verify", response_model=Results, tags=["attribution"],
              openapi_extra=UPLOAD_BODY,
              responses={404: {}, 413: {}, 415: {}, 422: {"model": Results}, 503: {}})
    async def verify(request: Request, profile: str = Query(..., description="profile name"),
                     threshold: Optional[str] = Query(None)):
        """Per image: its score for one profile (``scores[profile]`` and ``score``), labelled
        with the profile at or above its threshold, else unknown."""
        return await svc.decide(request, ((profile,), _threshold(threshold)))

    @app.get(f"{API}/profiles", response_model=List[ProfileOut], tags=["gallery"])
    async def profiles():
        """The gallery's profiles."""
        att = svc.require_ready()

        def rows():
            thr, out = svc.thresholds(), []
            for n in att.gallery.names():
                try:
                    out.append(svc.profile_row(att.gallery.get(n), thresholds=thr))
                except ProfileNotFound:         # removed meanwhile
                    pass
            return out
        return await run_in_threadpool(rows)

    @app.get(f"{API}/model", tags=["gallery"])
    async def model():
        """The model, engine, score rule, thresholds, input limits and serving settings."""
        att = svc.require_ready()
        info = await run_in_threadpool(att.info)      # reads the gallery: off the event loop
        info.update(max_bytes=att.policy.max_bytes, max_pixels=att.policy.max_pixels,
                    serving=settings.public())
        return info

    # -- writes ----------------------------------------------------------------------------------
    async def enroll(request: Request, name: str, add: bool, overwrite: bool, delivery: Dict):
        svc.check_token(request)
        with svc.admit():
            att = svc.require_ready()
            delivery = _checked_delivery(delivery)          # before the body is read
            if add and not await run_in_threadpool(att.gallery.__contains__, name):
                raise ServeError(404, "not_found", f"no profile named {name!r} to add images to")
            images = await read_images(request, att.policy.max_bytes, settings.read_timeout,
                                       settings.max_files)
            try:
                prof = await svc.write(att.enroll, name, [b for _, b in images], add=add,
                                       overwrite=overwrite, **delivery)
            except Exception as e:
                raise library_errors(e) from None
            return await run_in_threadpool(svc.profile_row, prof, add)

    @app.post(f"{API}/profiles/{{name}}", response_model=ProfileOut, status_code=201,
              tags=["gallery"], openapi_extra=UPLOAD_BODY,
              responses={401: {}, 403: {}, 409: {}, 422: {}})
    async def enroll_profile(request: Request, name: str, overwrite: bool = False,
                             delivery: Dict = Depends(_delivery_query)):
        """Enroll the uploaded images as a new profile (``overwrite=true`` replaces one), as
        ``Attributor.enroll`` does with the delivery options given (none: the support as
        uploaded, with the default variants). Needs the bearer token."""
        return await enroll(request, name, False, overwrite, delivery)

    @app.post(f"{API}/profiles/{{name}}/images", response_model=ProfileOut, tags=["gallery"],
              openapi_extra=UPLOAD_BODY, responses={401: {}, 403: {}, 404: {}, 409: {}, 422: {}})
    async def add_images(request: Request, name: str,
                         delivery: Dict = Depends(_delivery_query)):
        """Add the uploaded images to an existing profile's support, delivered as its first
        enrollment was (options not given: the profile's own; others than its own: 409). Needs
        the bearer token."""
        return await enroll(request, name, True, False, delivery)

    @app.delete(f"{API}/profiles/{{name}}", tags=["gallery"],
                responses={401: {}, 403: {}, 404: {}})
    async def remove_profile(request: Request, name: str):
        """Remove a profile. Needs the bearer token."""
        svc.check_token(request)
        att = svc.require_ready()
        try:
            await svc.write(att.gallery.remove, name)
        except Exception as e:
            raise library_errors(e) from None
        return {"removed": name}

    # -- the review page -------------------------------------------------------------------------
    def review() -> Review:
        if svc.review is None:
            raise ServeError(404, "not_found", "no review folders configured: start the "
                             "server with --review-root DIR")
        return svc.review

    @app.get("/review", include_in_schema=False)
    async def review_page():
        return FileResponse(STATIC / "review.html", media_type="text/html")

    @app.get("/review/static/{name}", include_in_schema=False)
    async def review_static(name: str):
        if name not in STATIC_FILES:
            raise ServeError(404, "not_found", f"no file {name!r}")
        return FileResponse(STATIC / name, media_type=STATIC_FILES[name])

    @app.get(f"{API}/review/folders", tags=["review"])
    async def review_folders():
        """The discover output folders under the configured roots."""
        return {"roots": [str(r) for r in review().roots],
                "folders": await run_in_threadpool(review().folders)}

    @app.get(f"{API}/review/clusters", tags=["review"])
    async def review_clusters(folder: str):
        """A folder's clusters: size, cohesion, nearest profile, outliers, recorded decision."""
        return await run_in_threadpool(review().clusters, folder)

    @app.get(f"{API}/review/picture", tags=["review"])
    async def review_picture(folder: str, cluster: int, name: str = "contact.png"):
        """A cluster's contact sheet (or spectrum.png)."""
        return FileResponse(await run_in_threadpool(review().picture, folder, cluster, name),
                            media_type="image/png")

    @app.post(f"{API}/review/decision", tags=["review"], responses={401: {}, 403: {}, 404: {}},
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": DecisionIn.model_json_schema()}}}})
    async def review_decision(request: Request):
        """Enroll a cluster under a new name, add it to an existing profile, or dismiss it; the
        decision is recorded beside the cluster (``decision.json``). Needs the bearer token."""
        svc.check_token(request)
        att = svc.require_ready()
        rv = review()
        raw = await read_body(request, DECISION_BYTES, settings.read_timeout)
        try:
            body = DecisionIn.model_validate_json(raw)
        except ValueError as e:
            raise ServeError(400, "bad_request", f"a decision is JSON {{folder, cluster, action, "
                                                 f"name}}: {e}") from None
        if body.action not in ACTIONS:
            raise ServeError(400, "bad_request", f"action {body.action!r}: one of {ACTIONS}")
        async with decision_lock:      # a double click, or two reviewers: one decision at a time
            return await decide_cluster(att, rv, body)

    async def decide_cluster(att, rv: Review, body: "DecisionIn"):
        d = await run_in_threadpool(rv.cluster_dir, body.folder, body.cluster)
        prior = await run_in_threadpool(rv.decision, d.parent, body.cluster)
        if prior and prior.get("action") in ("enroll", "add") and body.action != "dismiss":
            raise ServeError(409, "conflict", f"cluster {body.cluster} of {body.folder!r} was "
                             f"already used: {prior.get('action')} {prior.get('profile')!r}")
        rec: Dict[str, Any] = {"action": body.action, "cluster": body.cluster, "by": "review page"}
        if body.action != "dismiss":
            name = (body.name or "").strip()
            if not name:
                raise ServeError(400, "bad_request", f"{body.action} needs a profile name")
            if body.action == "add" and not await run_in_threadpool(att.gallery.__contains__, name):
                raise ServeError(404, "not_found", f"no profile named {name!r} to add to")
            try:
                if body.action == "enroll":
                    prof = await svc.write(att.enroll_cluster, name, d)
                else:
                    from ..discovery import read_cluster
                    sources = (await run_in_threadpool(read_cluster, d))["sources"]
                    prof = await svc.write(att.enroll, name, sources, add=True)
            except Exception as e:
                raise library_errors(e) from None
            m = prof.metadata.get("added", [{}])[-1] if body.action == "add" else prof.metadata
            rec.update(profile=name, images=m.get("images"), used=m.get("used"),
                       skipped=m.get("skipped"))
        return await run_in_threadpool(rv.record, d, rec)

    return app


class _MetricsMiddleware:
    """Counts and times every HTTP request by its route template (not its raw path)."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t = time.perf_counter()
        status = [500]

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)
        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            self.metrics.answered(getattr(route, "path", "other"), status[0],
                                  time.perf_counter() - t)


def _version() -> str:
    from .. import __version__
    return __version__
