"""JPEG (APP1 EXIF and XMP, APP13 IPTC-IIM, APP11 C2PA, COM) and WebP (RIFF EXIF and XMP
chunks) containers, and the sniffing of a file's format from its first bytes."""
from __future__ import annotations

import struct

from .common import MAX_CHUNKS, MAX_METADATA_BYTES, _Collector, _PNG_SIG, _XMP_JPEG_PREFIX, _mib
from .exif import _parse_tiff
from .xmp import _iptc_iim, _parse_xmp


def _jpeg(c: _Collector, data: bytes) -> None:
    pos, n, app11, reached_image = 2, 0, 0, False
    while pos < len(data):
        n += 1
        if n > MAX_CHUNKS:
            c.error("jpeg: too many segments; stopped")
            return
        if data[pos] != 0xFF:
            c.error(f"jpeg: lost marker sync at offset {pos}; stopped")
            return
        if pos + 1 >= len(data):
            break
        marker = data[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        if marker == 0xD9:
            reached_image = True
            break
        if pos + 4 > len(data):
            break
        (seglen,) = struct.unpack_from(">H", data, pos + 2)
        end = pos + 2 + seglen
        if seglen < 2 or end > len(data):
            c.error(f"jpeg: segment 0x{marker:02X} truncated at offset {pos}")
            break
        payload = data[pos + 4:end]
        if marker == 0xDA:
            reached_image = True
            break                               # start of scan: the metadata precedes it
        if marker == 0xE1 and payload.startswith(b"Exif\x00"):
            _parse_tiff(c, payload, "jpeg:APP1 Exif")
        elif marker == 0xE1 and payload.startswith(_XMP_JPEG_PREFIX):
            _parse_xmp(c, payload[len(_XMP_JPEG_PREFIX):])
        elif marker == 0xED and payload.startswith(b"Photoshop 3.0\x00"):
            _iptc_iim(c, payload[14:])
        elif marker == 0xEB and payload[:2] == b"JP":
            if app11 == 0 and b"c2pa" in payload[:128]:
                c.c2pa_presence.append("jpeg:APP11 JUMBF")
            app11 += len(payload)
        elif marker == 0xFE:
            c.fact("Comment", payload.decode("utf-8", "replace"), "jpeg:COM")
        pos = end
    if not reached_image and not any(e.startswith("jpeg:") for e in c.errors):
        c.error("jpeg: file ends before the image data (truncated?)")
    if app11 and c.c2pa_presence:
        c.fact("c2pa_manifest", f"embedded ({app11} bytes)", "jpeg:APP11 JUMBF")
    if not c.c2pa_presence and app11:
        c.error("jpeg: APP11 JUMBF data without a c2pa label")


def _webp(c: _Collector, data: bytes) -> None:
    pos, n = 12, 0
    end_riff = min(len(data), 8 + struct.unpack_from("<I", data, 4)[0])
    while pos + 8 <= end_riff:
        n += 1
        if n > MAX_CHUNKS:
            c.error("webp: too many chunks; stopped")
            return
        fourcc, size = struct.unpack_from("<4sI", data, pos)
        body = data[pos + 8:pos + 8 + size]
        if len(body) < size:
            c.error(f"webp: {fourcc.decode('latin-1')!r} chunk truncated at offset {pos}")
            return
        pos += 8 + size + (size & 1)
        if fourcc in (b"EXIF", b"XMP ") and size > MAX_METADATA_BYTES:
            c.error(f"webp:{fourcc.decode().strip()}: chunk of {_mib(size)} exceeds the cap; not parsed")
        elif fourcc == b"EXIF":
            _parse_tiff(c, body, "webp:EXIF")
        elif fourcc == b"XMP ":
            _parse_xmp(c, body)
        elif fourcc == b"C2PA":
            c.c2pa_presence.append("webp:C2PA")
            c.fact("c2pa_manifest", f"embedded ({size} bytes)", "webp:C2PA")
    if end_riff < 8 + struct.unpack_from("<I", data, 4)[0]:
        c.error("webp: file shorter than its RIFF header declares (truncated?)")


def _sniff(data: bytes, source: str) -> str | None:
    if data.startswith(_PNG_SIG):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP" and len(data) >= 12:
        return "image/webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "image/tiff"
    if data[4:8] == b"ftyp":
        brand = data[8:12]
        if brand in (b"avif", b"avis"):
            return "image/avif"
        if brand in (b"heic", b"heix", b"mif1", b"msf1", b"heim", b"heis"):
            return "image/heic"
    ext = source.rsplit(".", 1)[-1].lower() if "." in source else ""
    return {"c2pa": "application/c2pa"}.get(ext)
