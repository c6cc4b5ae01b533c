"""Helpers of the server tests (tests/test_serve*.py): small images made here, HTTP calls with
the standard library, and a discover output folder written by the library's own report."""
from __future__ import annotations

import http.client
import json
import uuid
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple
from urllib.parse import urlsplit

import numpy as np


def png(seed: int, size: int = 40, kind: str = "noise") -> bytes:
    """One small PNG, seeded ("noise": RGB noise; "blocky": noise upsampled 2x)."""
    from ofa_sdk.evaluation.synthetic import png_images
    return png_images(1, seed, size, kind)[0]


def multipart(files: Sequence[Tuple[str, bytes]], fields: Optional[Dict[str, str]] = None,
              field: str = "image") -> Tuple[bytes, str]:
    """A multipart/form-data body of ``files`` (name, bytes) and text ``fields``."""
    b = uuid.uuid4().hex
    parts = []
    for k, v in (fields or {}).items():
        parts.append(f'--{b}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode())
    for name, data in files:
        parts.append(f'--{b}\r\nContent-Disposition: form-data; name="{field}"; '
                     f'filename="{name}"\r\nContent-Type: image/png\r\n\r\n'.encode() + data + b"\r\n")
    parts.append(f"--{b}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={b}"


def call(url: str, method: str, path: str, body: Optional[bytes] = None,
         headers: Optional[Dict[str, str]] = None, timeout: float = 60.0):
    """(status, headers, JSON body or raw bytes) of one request."""
    u = urlsplit(url)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        data = r.read()
        hdrs = {k.lower(): v for k, v in r.getheaders()}
    finally:
        c.close()
    if hdrs.get("content-type", "").startswith("application/json"):
        return r.status, hdrs, json.loads(data)
    return r.status, hdrs, data


def post_images(url: str, path: str, files: Sequence[Tuple[str, bytes]], token: Optional[str] = None):
    body, ctype = multipart(files)
    headers = {"Content-Type": ctype}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return call(url, "POST", path, body, headers)


def discover_output(out: Path, groups: Sequence[List[Path]], att=None) -> Path:
    """A discover output folder (the library's ``write_report``, contact sheets included) with
    one cluster per group of image files: the clustering is the library's, run on fingerprints
    made to fall in one tight group per ``groups`` entry; with ``att``, scored against its
    profiles (nearest profile, cohesion) as ``Attributor.discover`` does."""
    from ofa_sdk import discovery
    rng = np.random.default_rng(0)
    x, src = [], []
    for g, files in enumerate(groups):
        centre = np.zeros(16)
        centre[g] = 1.0
        for f in files:
            x.append(centre + 0.01 * rng.standard_normal(16))
            src.append(str(f))
    setup = att.discovery_setup() if att is not None else {}
    res = discovery.discover(np.array(x), src, method="agglomerative", distance=0.5,
                             min_cluster_size=3, **setup)
    assert len(res.clusters) == len(groups), res.summary()
    return discovery.write_report(res, out)


def metric(text: str, name: str) -> float:
    """The value of one sample line of a Prometheus exposition (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0
