"""EXIF / TIFF: Software, Make, Model, ImageDescription and the WebUI's UserComment, read from
bounded IFD walks (a TIFF file, or the EXIF block of a PNG, JPEG or WebP file)."""
from __future__ import annotations

import struct

from .common import (MAX_IFD_ENTRIES, MAX_METADATA_BYTES, _Collector, _P_SOFTWARE, _clean, _mib,
                     _normalise_generator)
from .text import _text_entry, _webui_parameters
from .xmp import _parse_xmp


_TIFF_TYPE_SIZE = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8,
                   13: 4, 16: 8, 17: 8, 18: 8}
_EXIF_ASCII = {0x010F: "Make", 0x0110: "Model", 0x0131: "Software", 0x010E: "ImageDescription",
               0x013B: "Artist"}


def _read_ifd(buf: bytes, offset: int, e: str) -> dict:
    if offset < 8 or offset + 2 > len(buf):
        raise ValueError(f"IFD offset {offset} out of range")
    (count,) = struct.unpack_from(e + "H", buf, offset)
    if count > MAX_IFD_ENTRIES:
        raise ValueError(f"IFD with {count} entries")
    if offset + 2 + 12 * count > len(buf):
        raise ValueError("IFD truncated")
    out = {}
    for i in range(count):
        tag, typ, n, inline = struct.unpack_from(e + "HHI4s", buf, offset + 2 + 12 * i)
        size = _TIFF_TYPE_SIZE.get(typ, 1) * n
        if size <= 4:
            value = inline[:size]
        else:
            (ptr,) = struct.unpack(e + "I", inline)
            if size > MAX_METADATA_BYTES or ptr + size > len(buf):
                continue                 # out-of-range or oversized value: skipped
            value = buf[ptr:ptr + size]
        out.setdefault(tag, (typ, value))
    return out


def _user_comment(raw: bytes, e: str) -> str:
    head, body = raw[:8], raw[8:]
    if head.startswith(b"UNICODE"):
        if body[:2] in (b"\xff\xfe", b"\xfe\xff"):
            return body.decode("utf-16", "replace")
        candidates = [body.decode(enc, "replace") for enc in
                      (("utf-16-be", "utf-16-le") if e == ">" else ("utf-16-le", "utf-16-be"))]
        return max(candidates, key=lambda s: sum(ch.isascii() and ch.isprintable() for ch in s))
    if head.startswith(b"JIS"):
        return body.decode("shift_jis", "replace")
    return body.decode("utf-8", "replace")


def _parse_tiff(c: _Collector, buf: bytes, label: str, is_file: bool = False) -> None:
    """EXIF (a TIFF header and IFDs) or a whole TIFF file: Make/Model/Software/... as facts."""
    if buf.startswith(b"Exif\x00\x00"):
        buf = buf[6:]
    if len(buf) > MAX_METADATA_BYTES and not is_file:
        c.error(f"{label}: block of {_mib(len(buf))} exceeds the cap; not parsed")
        return
    try:
        if buf[:4] == b"II*\x00":
            e = "<"
        elif buf[:4] == b"MM\x00*":
            e = ">"
        else:
            raise ValueError("no TIFF header")
        (ifd0,) = struct.unpack_from(e + "I", buf, 4)
        entries = _read_ifd(buf, ifd0, e)
        for tag, name in _EXIF_ASCII.items():
            if tag in entries:
                text = entries[tag][1].split(b"\x00")[0].decode("utf-8", "replace")
                c.fact(name, text, f"exif:{name}")
                if name == "Software":
                    c.generator(_P_SOFTWARE, _normalise_generator(text))
        if is_file and 0x02BC in entries:
            _parse_xmp(c, entries[0x02BC][1])
        if is_file and 0xCD41 in entries:
            c.c2pa_presence.append("tiff:C2PA tag")
        if 0x8769 in entries and len(entries[0x8769][1]) == 4:
            (sub,) = struct.unpack(e + "I", entries[0x8769][1])
            if sub == ifd0:
                raise ValueError("Exif IFD pointer loops back to IFD0")
            exif_ifd = _read_ifd(buf, sub, e)
            if 0x9286 in exif_ifd:
                text = _user_comment(exif_ifd[0x9286][1], e)
                text = text.replace("\x00", "").strip()
                if text:
                    _text_entry(c, "UserComment", text, "exif:UserComment")
                    _webui_parameters(c, text, "exif:UserComment")
    except (ValueError, struct.error, UnicodeError) as exc:
        c.error(f"{label}: malformed ({_clean(exc, 80)})")
