"""PNG: text chunks (tEXt, zTXt, iTXt: generator parameters, XMP), eXIf, and caBX (C2PA)."""
from __future__ import annotations

import re
import struct
import zlib

from .common import (MAX_CHUNKS, MAX_METADATA_BYTES, MAX_TEXT_CHUNKS, _Collector, _PNG_SIG,
                     _PNG_XMP_KEYWORD, _TooBig, _clean, _inflate, _keyword, _mib)
from .exif import _parse_tiff
from .text import _text_entry
from .xmp import _parse_xmp


def _png(c: _Collector, data: bytes) -> None:
    pos, n_chunks, n_text = len(_PNG_SIG), 0, 0
    while True:
        if pos == len(data):
            c.error("png: no IEND chunk (file truncated?)")
            return
        if pos + 8 > len(data):
            c.error(f"png: truncated chunk header at offset {pos}")
            return
        n_chunks += 1
        if n_chunks > MAX_CHUNKS:
            c.error(f"png: more than {MAX_CHUNKS} chunks; stopped")
            return
        length, ctype = struct.unpack_from(">I4s", data, pos)
        body_start, body_end = pos + 8, pos + 8 + length
        tname = ctype.decode("latin-1")
        if not re.fullmatch(r"[A-Za-z]{4}", tname):
            c.error(f"png: invalid chunk type at offset {pos}; stopped")
            return
        if body_end + 4 > len(data):
            c.error(f"png: {tname} chunk truncated at offset {pos} (declares {length} bytes)")
            return
        pos = body_end + 4
        if ctype == b"IEND":
            return
        if ctype == b"caBX":
            c.c2pa_presence.append("png:caBX")
            c.fact("c2pa_manifest", f"embedded ({length} bytes)", "png:caBX")
            continue
        if ctype not in (b"tEXt", b"zTXt", b"iTXt", b"eXIf"):
            continue
        n_text += 1
        if n_text > MAX_TEXT_CHUNKS:
            if n_text == MAX_TEXT_CHUNKS + 1:
                c.error(f"png: more than {MAX_TEXT_CHUNKS} metadata chunks; the rest ignored")
            continue
        keyword = _keyword(data[body_start:min(body_end, body_start + 80)].split(b"\x00", 1)[0])
        label = f"png:{tname}" + ("" if ctype == b"eXIf" else f" {keyword}")
        if length > MAX_METADATA_BYTES:
            c.error(f"{label}: chunk of {_mib(length)} exceeds the {_mib(MAX_METADATA_BYTES)} cap; not parsed")
            continue
        body = data[body_start:body_end]
        (crc,) = struct.unpack_from(">I", data, body_end)
        if zlib.crc32(ctype + body) & 0xFFFFFFFF != crc:
            c.error(f"{label}: CRC mismatch (corrupt or edited chunk); read anyway")
        try:
            _png_text_chunk(c, ctype, body, label)
        except _TooBig:
            c.error(f"{label}: inflates beyond the {_mib(MAX_METADATA_BYTES)} cap; not parsed")
        except (ValueError, zlib.error, UnicodeError) as exc:
            c.error(f"{label}: malformed ({_clean(exc, 80)})")


def _png_text_chunk(c: _Collector, ctype: bytes, body: bytes, label: str) -> None:
    if ctype == b"eXIf":
        _parse_tiff(c, body, "png:eXIf")
        return
    if b"\x00" not in body:
        raise ValueError("no keyword separator")
    raw_key, rest = body.split(b"\x00", 1)
    if not 1 <= len(raw_key) <= 79:
        raise ValueError("keyword length outside 1..79")
    key = _keyword(raw_key)
    if ctype == b"tEXt":
        text = rest.decode("latin-1")
    elif ctype == b"zTXt":
        if not rest or rest[0] != 0:
            raise ValueError("unknown compression method")
        text = _inflate(rest[1:]).decode("latin-1")
    else:  # iTXt
        if len(rest) < 2:
            raise ValueError("iTXt header truncated")
        flag, method, rest = rest[0], rest[1], rest[2:]
        parts = rest.split(b"\x00", 2)
        if len(parts) != 3:
            raise ValueError("iTXt language/translated keyword missing")
        payload = parts[2]
        if flag == 1:
            if method != 0:
                raise ValueError("unknown compression method")
            payload = _inflate(payload)
        if key == _PNG_XMP_KEYWORD:
            _parse_xmp(c, payload)
            return
        text = payload.decode("utf-8", "replace")
    _text_entry(c, key, text, label)
