"""The server's Prometheus metrics, in a registry of its own (one per app, so that two apps in
one process, as in the tests, do not share counters).

    ofa_requests_total{endpoint, status}     requests answered, by route template and status
    ofa_request_seconds{endpoint}            latency histogram, request received -> answered
    ofa_batch_images                         histogram of images per engine batch
    ofa_batch_seconds                        histogram of one batch's run time
    ofa_queue_images                         gauge: images waiting for a batch
    ofa_inflight_requests                    gauge: requests admitted and not yet answered
    ofa_errors_total{kind}                   refused or failed requests and images, by kind
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST  # noqa: F401  (re-exported for the app)

# the kinds of ofa_errors_total (one word per failure the server tells apart)
ERROR_KINDS = ("too_large", "unsupported_media", "malformed", "timeout", "disconnect",
               "queue_full", "unauthorized", "forbidden", "bad_image", "not_found", "bad_request",
               "conflict", "not_ready", "internal")

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    def __init__(self):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("ofa_requests", "Requests answered", ["endpoint", "status"],
                                registry=r)
        self.latency = Histogram("ofa_request_seconds", "Request latency", ["endpoint"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.batch_images = Histogram("ofa_batch_images", "Images per engine batch",
                                      buckets=BATCH_BUCKETS, registry=r)
        self.batch_seconds = Histogram("ofa_batch_seconds", "Run time of one batch",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.queue = Gauge("ofa_queue_images", "Images waiting for a batch", registry=r)
        self.inflight = Gauge("ofa_inflight_requests", "Requests admitted, not yet answered",
                              registry=r)
        self.errors = Counter("ofa_errors", "Refused or failed requests and images", ["kind"],
                              registry=r)
        for k in ERROR_KINDS:          # every kind exported from the start, at 0
            self.errors.labels(k)

    def error(self, kind: str, n: int = 1) -> None:
        self.errors.labels(kind if kind in ERROR_KINDS else "internal").inc(n)

    def batch(self, n_images: int, n_jobs: int, seconds: float) -> None:
        self.batch_images.observe(n_images)
        self.batch_seconds.observe(seconds)

    def answered(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
