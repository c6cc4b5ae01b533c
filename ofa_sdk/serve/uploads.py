"""Reading uploaded images from a request, with every limit checked while reading.

Two ways to send images: a ``multipart/form-data`` body (one or more file parts, any field
name), or the raw encoded bytes of one image with its own content type (``image/*`` or
``application/octet-stream``). Nothing else is accepted (415): in particular no URL, in JSON
or otherwise, is ever fetched. A body over ``max_bytes`` (the library's per-file read cap,
:data:`ofa_sdk.images.MAX_BYTES` unless the Attributor was given another) is refused from its
Content-Length before reading, or as soon as the bytes read pass it (413). The whole body must
arrive within ``read_timeout`` seconds (408), so a slow client cannot hold a slot of the
server; a client that disconnects mid-upload ends its request and nothing else. Pixel limits
are the decoder's (``max_pixels``), applied per image by the input policy.
"""
from __future__ import annotations

import asyncio
import time
from typing import Dict, List, Optional, Tuple

from starlette.requests import ClientDisconnect, Request

DEFAULT_READ_TIMEOUT = 30.0   # seconds for a whole request body to arrive
DEFAULT_MAX_FILES = 64        # file parts per multipart request
RAW_TYPES = ("image/", "application/octet-stream")


class ServeError(Exception):
    """A request the server refuses or could not answer: HTTP ``status``, the metrics' error
    ``kind`` (:data:`ofa_sdk.serve.metrics.ERROR_KINDS`) and a message naming the problem."""

    def __init__(self, status: int, kind: str, message: str,
                 headers: Optional[Dict[str, str]] = None):
        super().__init__(message)
        self.status, self.kind, self.message, self.headers = status, kind, message, headers or {}


async def read_body(request: Request, max_bytes: int, read_timeout: float) -> bytes:
    """The request body, at most ``max_bytes``, received within ``read_timeout`` seconds."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            n = int(declared)
        except ValueError:
            raise ServeError(400, "malformed", f"Content-Length {declared!r} is not a number") from None
        if n > max_bytes:
            raise ServeError(413, "too_large", f"body of {n} bytes is over the {max_bytes} byte "
                                               f"limit (max_bytes): not read")
    deadline = time.monotonic() + read_timeout
    chunks: List[bytes] = []
    got = 0
    stream = request.stream().__aiter__()
    while True:
        left = deadline - time.monotonic()
        try:
            if left <= 0:
                raise asyncio.TimeoutError
            chunk = await asyncio.wait_for(stream.__anext__(), left)
        except StopAsyncIteration:
            break
        except asyncio.TimeoutError:
            raise ServeError(408, "timeout", f"the request body did not arrive within "
                                             f"{read_timeout:g} s ({got} bytes received)") from None
        except ClientDisconnect:
            raise ServeError(499, "disconnect", f"the client disconnected mid-upload after "
                                                f"{got} bytes") from None
        got += len(chunk)
        if got > max_bytes:
            raise ServeError(413, "too_large", f"body is over the {max_bytes} byte limit "
                                               f"(max_bytes): refused after {got} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def read_images(request: Request, max_bytes: int, read_timeout: float,
                      max_files: int = DEFAULT_MAX_FILES) -> List[Tuple[str, bytes]]:
    """The uploaded images as (name, encoded bytes): a multipart body's file parts (named by
    their file name), or a raw body of one image (named ``body``)."""
    kind = media_type(request)
    if kind != "multipart/form-data" and not kind.startswith(RAW_TYPES):
        raise ServeError(415, "unsupported_media",
                         f"content type {kind or '(none)'!r} is not accepted: send "
                         f"multipart/form-data with file parts, or one image's bytes as "
                         f"image/* or application/octet-stream (URLs are never fetched)")
    body = await read_body(request, max_bytes, read_timeout)
    if kind != "multipart/form-data":
        if not body:
            raise ServeError(400, "malformed", "empty body: no image sent")
        return [("body", body)]
    return await _multipart(request, body, max_files)


async def _multipart(request: Request, body: bytes, max_files: int) -> List[Tuple[str, bytes]]:
    from starlette.datastructures import UploadFile
    from starlette.formparsers import MultiPartException

    sent = False

    async def replay():          # the body already read (and checked), once
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=max_files, max_fields=max_files)
    except MultiPartException as e:
        raise ServeError(400, "malformed", f"malformed multipart body: {e.message}") from None
    except Exception as e:       # the parser's own errors on garbage
        raise ServeError(400, "malformed", f"malformed multipart body: "
                                           f"{e or type(e).__name__}") from None
    try:
        out = []
        for field, value in form.multi_items():
            if isinstance(value, UploadFile):
                out.append((value.filename or field, await value.read()))
    finally:
        await form.close()
    if not out:
        raise ServeError(400, "malformed", "the multipart body has no file part: send each "
                                           "image as a file part")
    return out
