"""``ofa-sdk serve``: an HTTP service over one Attributor and its gallery (the ``serve`` extra:
FastAPI, uvicorn, python-multipart, prometheus-client).

    ofa-sdk serve --gallery g.db --token-file token.txt --review-root found/

:mod:`ofa_sdk.serve.app` holds the app and its routes, :mod:`~ofa_sdk.serve.batcher` the dynamic
batching, :mod:`~ofa_sdk.serve.uploads` the reading of uploads with their limits,
:mod:`~ofa_sdk.serve.review` the review page's folders, :mod:`~ofa_sdk.serve.metrics` the
Prometheus metrics. This module only adds the command's options and starts the server; it
imports nothing of the extra until the command runs. Endpoints and settings: docs/serving.md.
"""
from __future__ import annotations

import argparse
import os
import sys

DEFAULT_HOST = "127.0.0.1"    # loopback only unless told otherwise
DEFAULT_PORT = 8080
TOKEN_ENV = "OFA_SDK_SERVE_TOKEN"
LOOPBACK = {"127.0.0.1", "::1", "localhost"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``serve`` subcommand's own options (the defaults are the app's)."""
    from .batcher import DEFAULT_MAX_BATCH, DEFAULT_MAX_DELAY, DEFAULT_QUEUE_IMAGES
    p.add_argument("--host", default=DEFAULT_HOST,
                   help="address to bind (default %(default)s: this machine only; 0.0.0.0 opens "
                        "reads to other hosts, writes still need the token)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--token-file", default=None, metavar="FILE",
                   help=f"file holding the bearer token that gallery writes need (else ${TOKEN_ENV}; "
                        f"with neither, writes are refused)")
    p.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH,
                   help="images per engine batch (default %(default)s)")
    p.add_argument("--max-delay-ms", type=float, default=DEFAULT_MAX_DELAY * 1000,
                   help="how long a batch waits to fill, in ms (default %(default)s)")
    p.add_argument("--queue-images", type=int, default=DEFAULT_QUEUE_IMAGES,
                   help="images waiting at most; past it, 503 with Retry-After (default %(default)s)")
    p.add_argument("--max-inflight", type=int, default=None,
                   help="requests admitted at once, bodies being read included; past it, 503 "
                        "before the body is read (default 64)")
    p.add_argument("--read-timeout", type=float, default=None,
                   help="seconds for a request body to arrive, else 408 (default 30)")
    p.add_argument("--review-root", action="append", default=[], metavar="DIR",
                   help="a folder whose discover outputs the review page may open (repeatable)")


def _token(a) -> str | None:
    if a.token_file:
        with open(a.token_file, encoding="utf-8") as f:
            tok = f.read().strip()
        if not tok:
            raise ValueError(f"--token-file {a.token_file} is empty")
        return tok
    return os.environ.get(TOKEN_ENV) or None


def settings_from(a):
    from .app import Settings
    s = Settings(max_batch=a.max_batch, max_delay=a.max_delay_ms / 1000,
                 queue_images=a.queue_images, token=_token(a), review_roots=a.review_root)
    if a.max_inflight is not None:
        s.max_inflight = a.max_inflight
    if a.read_timeout is not None:
        s.read_timeout = a.read_timeout
    return s


def serve(a, load) -> int:
    """Run the server until interrupted; ``load()`` makes the Attributor (in the background:
    /healthz answers at once, /readyz once it is loaded)."""
    try:
        import uvicorn

        from .app import create_app
    except ImportError as e:
        raise RuntimeError(f"ofa-sdk serve needs the serve extra: pip install 'ofa-sdk[serve]' "
                           f"({e})") from None
    settings = settings_from(a)
    if not settings.token:
        print("ofa-sdk serve: no token configured: gallery writes are refused", file=sys.stderr)
    app = create_app(load, settings)
    if a.host in LOOPBACK:      # a page elsewhere that rebinds its name to 127.0.0.1 is refused
        from starlette.middleware.trustedhost import TrustedHostMiddleware
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=sorted(LOOPBACK | {"localhost"}))
    uvicorn.run(app, host=a.host, port=a.port, log_level="warning",
                limit_concurrency=max(256, 4 * settings.max_inflight), timeout_keep_alive=5)
    return 0


class Running:
    """A server of :func:`ofa_sdk.serve.app.create_app` running in a thread of this process on
    127.0.0.1 (a free port unless ``port`` is given): for tests, benchmarks and embedding.

        with Running(att, settings) as srv:
            urllib.request.urlopen(srv.url + "/readyz")
    """

    def __init__(self, attributor, settings=None, port: int = 0, ready_timeout: float = 120.0):
        import socket
        import threading

        import uvicorn

        from .app import create_app
        self.app = create_app(attributor, settings)
        self.service = self.app.state.service
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((DEFAULT_HOST, port))
        self.port = self._sock.getsockname()[1]
        self.url = f"http://{DEFAULT_HOST}:{self.port}"
        cfg = uvicorn.Config(self.app, log_level="error", timeout_keep_alive=5,
                             limit_concurrency=max(256, 4 * self.service.settings.max_inflight))
        self.server = uvicorn.Server(cfg)
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self._sock]},
                                        name="ofa-serve", daemon=True)
        self._ready_timeout = ready_timeout

    def __enter__(self) -> "Running":
        import time
        self._thread.start()
        t = time.monotonic()
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() - t > self._ready_timeout:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        if not self.service.wait_ready(self._ready_timeout):
            raise RuntimeError(f"the server did not get ready: {self.service.failed}")
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self._thread.join(30)
        self._sock.close()
