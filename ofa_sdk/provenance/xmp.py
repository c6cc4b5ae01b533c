"""XMP packets (IPTC DigitalSourceType, xmp:CreatorTool, the IPTC 2025 AI-system fields),
parsed with DTDs and entity declarations refused, and IPTC-IIM records (JPEG APP13)."""
from __future__ import annotations

import pyexpat
import re
import struct
import xml.etree.ElementTree as ET

from .common import (MAX_METADATA_BYTES, _Collector, _NS_PREFIX, _P_CREATOR_TOOL, _P_IPTC_AI,
                     _P_SOFTWARE, _RDF, _XMP_WANTED, _clean, _mib, _normalise_generator)


def _parse_xmp(c: _Collector, raw: bytes) -> None:
    if len(raw) > MAX_METADATA_BYTES:
        c.error(f"xmp: packet of {_mib(len(raw))} exceeds the {_mib(MAX_METADATA_BYTES)} cap; not parsed")
        return
    if not raw.startswith((b"\xff\xfe", b"\xfe\xff")):     # UTF-16 keeps its NUL bytes
        raw = raw.strip(b"\x00 \t\r\n")
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    if re.search(rb"<!\s*(DOCTYPE|ENTITY)", raw, re.I) or _declares_dtd(raw):
        c.error("xmp: DTD/entity declarations refused (possible entity-expansion attack); not parsed")
        return
    try:
        root = ET.fromstring(raw)
    except RecursionError:
        c.error("xmp: XML nested too deeply; not parsed")
        return
    except (ET.ParseError, ValueError) as e:
        c.error(f"xmp: malformed XML ({_clean(e, 80)})")
        return
    for n, el in enumerate(root.iter()):
        if n > 100_000:
            c.error("xmp: too many elements; rest ignored")
            break
        for qname, value in el.attrib.items():
            _xmp_property(c, qname, value)
        if isinstance(el.tag, str) and not el.tag.startswith("{" + _RDF):
            value = _xmp_element_value(el)
            if value is not None:
                _xmp_property(c, el.tag, value)


class _DTDRefused(Exception):
    pass


def _declares_dtd(raw: bytes) -> bool:
    """A non-building expat pass that stops at the first DOCTYPE or ENTITY declaration.

    The byte regex above misses declarations in UTF-16 (or other encodings expat decodes);
    this pass sees them whatever the encoding, and aborts before any entity is declared, so
    nothing is expanded. Malformed XML is left for the real parse to report.
    """
    parser = pyexpat.ParserCreate()

    def refuse(*_):
        raise _DTDRefused()

    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse
    try:
        parser.Parse(raw, True)
    except _DTDRefused:
        return True
    except (pyexpat.ExpatError, ValueError, RecursionError):
        return False
    return False


def _xmp_element_value(el) -> str | None:
    resource = el.attrib.get(f"{{{_RDF}}}resource")
    if resource:
        return resource
    if el.text and el.text.strip():
        return el.text
    items = [li.text.strip() for li in el.iter(f"{{{_RDF}}}li") if li.text and li.text.strip()]
    return "; ".join(items[:20]) if items else None


def _xmp_property(c: _Collector, qname: str, value: str) -> None:
    if not qname.startswith("{"):
        return
    ns, _, local = qname[1:].partition("}")
    prefix = _NS_PREFIX.get(ns)
    if (prefix, local) not in _XMP_WANTED and local != "DigitalSourceType":
        return
    where = f"xmp:{prefix or 'ns?'}:{local}"
    c.fact(local, value, where)
    if local == "DigitalSourceType":
        c.source_type(30, value)
    elif local == "AISystemUsed":
        c.generator(_P_IPTC_AI, _normalise_generator(value))
    elif local == "CreatorTool":
        c.generator(_P_CREATOR_TOOL, _normalise_generator(value))
    elif (prefix, local) == ("tiff", "Software"):
        c.generator(_P_SOFTWARE, _normalise_generator(value))
    elif (prefix, local) == ("dcterms", "provenance"):
        c.remote_manifest = _clean(value, 300)


def _scan_xmp(c: _Collector, data: bytes) -> None:
    """XMP in a container this module does not walk (GIF, HEIF, AVIF, unknown): a byte scan."""
    start = data.find(b"<x:xmpmeta")
    if start < 0:
        return
    end = data.find(b"</x:xmpmeta>", start, start + MAX_METADATA_BYTES + 64)
    if end < 0:
        c.error("xmp: packet unterminated or above the cap; not parsed")
        return
    _parse_xmp(c, data[start:end + len(b"</x:xmpmeta>")])


# IPTC-IIM, as Photoshop image resources carry it in a JPEG APP13 segment
_IIM = {65: "OriginatingProgram", 70: "ProgramVersion", 110: "Credit", 115: "Source",
        120: "Caption"}


def _iptc_iim(c: _Collector, buf: bytes) -> None:
    """IPTC-IIM inside Photoshop image resources (JPEG APP13): a few fields as facts."""
    pos = 0
    while pos + 12 <= len(buf) and buf[pos:pos + 4] == b"8BIM":
        rid = struct.unpack_from(">H", buf, pos + 4)[0]
        name_len = buf[pos + 6]
        pos += 6 + ((name_len + 2) & ~1)
        if pos + 4 > len(buf):
            break
        (size,) = struct.unpack_from(">I", buf, pos)
        block = buf[pos + 4:pos + 4 + size]
        pos += 4 + size + (size & 1)
        if rid != 0x0404:
            continue
        i = 0
        while i + 5 <= len(block) and block[i] == 0x1C:
            record, dataset, dlen = block[i + 1], block[i + 2], struct.unpack_from(">H", block, i + 3)[0]
            if dlen & 0x8000:
                break                               # extended length: not used by these fields
            value = block[i + 5:i + 5 + dlen]
            i += 5 + dlen
            if record == 2 and dataset in _IIM:
                text = value.decode("utf-8", "replace")
                c.fact(_IIM[dataset], text, f"iptc:{_IIM[dataset]}")
                if dataset == 65:
                    c.generator(_P_SOFTWARE, _normalise_generator(text))
