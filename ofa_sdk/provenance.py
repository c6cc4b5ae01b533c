"""What an image file *says* about its own origin: a standalone, defensive metadata reader.

Moderation teams compare an image's declared provenance with what its pixels show. This
module reads the declaration only: PNG text chunks (Stable Diffusion WebUI ``parameters``,
ComfyUI ``prompt``/``workflow``, ``Software``, ``Description``, ...), XMP (IPTC
``Iptc4xmpExt:DigitalSourceType``, ``xmp:CreatorTool``, the IPTC 2025 AI-system fields), EXIF
(``Software``, ``Make``, ``Model``, the WebUI's ``UserComment``), IPTC-IIM in JPEG APP13, and
C2PA manifests (verified with the optional ``c2pa-python`` bindings when installed, otherwise
only detected).

Why metadata never changes the fingerprint's score
---------------------------------------------------
The attribution score comes from the pixels alone, and this module's output never feeds into
it. Metadata is a weak, one-sided signal: most platforms (social networks, messengers, CDNs,
screenshot and re-encode pipelines) strip it, so its absence says nothing; and every field read
here except a *verified* C2PA signature is plain text that anyone can write, copy from another
file or delete in one command, so its presence proves little. Letting it move the score would
hand an adversary a free knob (paste a camera's EXIF onto a generated image, or a generator's
``parameters`` onto a photo) and would make the same pixels score differently before and after
an upload. It is therefore reported *beside* the fingerprint's verdict, for a person to weigh:
a declared "trainedAlgorithmicMedia" that agrees with the fingerprint is corroboration, one that
disagrees is a lead, and neither is evidence on its own. Even a valid C2PA manifest only says
who signed the claim and that the bytes are unchanged since; with a self-issued certificate it
says nothing about who that signer is (``c2pa["trusted"]``).

Contract::

    p = read_provenance(data: bytes, source: str = "")   # never raises for bad/hostile input
    p.to_dict()   # JSON-serialisable; {} when the file declares nothing (and nothing went wrong)
    bool(p)       # False when nothing is declared and there is no error

Everything is read from ``data`` (no file is opened; ``source`` is only a file-name hint used
when the bytes' signature is not recognised). Every metadata block above
:data:`MAX_METADATA_BYTES` (compressed or inflated) is reported as an error, not parsed; XML
with a DTD or entity declaration is refused unparsed (no entity expansion, so billion-laughs
cannot blow up); walks over chunks, segments, IFD entries, facts and errors are all bounded.
"""
from __future__ import annotations

import io
import json
import pyexpat
import re
import struct
import xml.etree.ElementTree as ET
import zlib
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Provenance", "read_provenance", "MAX_METADATA_BYTES", "MAX_VALUE_CHARS"]

MAX_INPUT_BYTES = 256 * 1024 * 1024       # whole files above this are not scanned at all
MAX_METADATA_BYTES = 4 * 1024 * 1024      # one metadata chunk/segment/XMP/JSON, before or after inflating
MAX_VALUE_CHARS = 500                     # a fact's value is cut here
MAX_FACTS = 200
MAX_ERRORS = 40
MAX_ERROR_CHARS = 240
MAX_CHUNKS = 200_000                      # PNG chunks / RIFF chunks / JPEG segments walked
MAX_TEXT_CHUNKS = 1_000                   # metadata chunks actually decoded
MAX_IFD_ENTRIES = 1_000

_PNG_SIG = b"\x89PNG\r\n\x1a\n"
_XMP_JPEG_PREFIX = b"http://ns.adobe.com/xap/1.0/\x00"
_XMP_EXT_PREFIX = b"http://ns.adobe.com/xmp/extension/\x00"
_PNG_XMP_KEYWORD = "XML:com.adobe.xmp"

_NS_PREFIX = {
    "http://iptc.org/std/Iptc4xmpExt/2008-02-29/": "Iptc4xmpExt",
    "http://ns.adobe.com/xap/1.0/": "xmp",
    "http://ns.adobe.com/photoshop/1.0/": "photoshop",
    "http://ns.adobe.com/tiff/1.0/": "tiff",
    "http://purl.org/dc/terms/": "dcterms",
    "http://purl.org/dc/elements/1.1/": "dc",
}
_RDF = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
# (prefix, local name) of the XMP properties reported; DigitalSourceType is also accepted
# under any namespace, since writers get the IPTC namespace URI wrong often enough.
_XMP_WANTED = {
    ("Iptc4xmpExt", "DigitalSourceType"), ("Iptc4xmpExt", "AISystemUsed"),
    ("Iptc4xmpExt", "AISystemVersionUsed"), ("Iptc4xmpExt", "AIPromptInformation"),
    ("xmp", "CreatorTool"), ("photoshop", "Credit"), ("tiff", "Software"),
    ("tiff", "Make"), ("tiff", "Model"), ("dcterms", "provenance"),
}

# Generator-claim priorities: the lowest wins; ties go to the first seen.
_P_C2PA_AGENT = 10       # softwareAgent of a c2pa.created action in a manifest not found invalid
_P_IPTC_AI = 20          # IPTC Iptc4xmpExt:AISystemUsed
_P_TOOL = 30             # a generator's own chunk format (WebUI parameters, ComfyUI prompt, ...)
_P_C2PA_CLAIM = 40       # claim_generator of a manifest not found invalid
_P_CREATOR_TOOL = 50     # xmp:CreatorTool
_P_SOFTWARE = 60         # PNG Software, EXIF Software, IPTC-IIM OriginatingProgram
_P_INVALID = 90          # anything from a manifest whose validation failed

# Well-known generator names, normalised (the raw string stays in the facts).
_KNOWN_GENERATORS = [
    (re.compile(r"dall[\s\-_\u00b7.]*e", re.I), "DALL-E"),
    (re.compile(r"firefly", re.I), "Adobe Firefly"),
    (re.compile(r"midjourney", re.I), "Midjourney"),
    (re.compile(r"comfy\s*ui", re.I), "ComfyUI"),
    (re.compile(r"novel\s*ai", re.I), "NovelAI"),
    (re.compile(r"invoke\s*ai", re.I), "InvokeAI"),
    (re.compile(r"stable[\s\-_]*diffusion[\s\-_]*web[\s\-_]*ui|automatic1111", re.I),
     "Stable Diffusion WebUI"),
]
# The WebUI's own "Steps: 20, Sampler: Euler a, ..., Model: x" line (its infotext regex).
_WEBUI_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_WEBUI_STEPS_LINE = re.compile(r"^Steps: *\d+.*$", re.M)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


class _TooBig(Exception):
    pass


@dataclass
class Provenance:
    """What a file declares about its origin (see the module docstring for what it is worth).

    ``generator``: the claimed generator or tool, normalised where well known; ``source_type``:
    the IPTC digital source type's last URI segment (``"trainedAlgorithmicMedia"``, ...);
    ``c2pa``: None without a manifest, else ``{"present": True, "valid": bool | None,
    "claim_generator", "validation_errors", ...}`` (``valid`` None when the c2pa library is not
    installed or the manifest is remote); ``facts``: ``{"key", "value", "where"}`` for every
    field read; ``errors``: short notes on malformed or hostile metadata.
    """

    generator: str | None = None
    source_type: str | None = None
    c2pa: dict | None = None
    facts: list = field(default_factory=list)
    errors: list = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.generator or self.source_type or self.c2pa or self.facts or self.errors)

    def to_dict(self) -> dict:
        if not self:
            return {}
        return {"generator": self.generator, "source_type": self.source_type,
                "c2pa": None if self.c2pa is None else json.loads(json.dumps(self.c2pa)),
                "facts": [dict(f) for f in self.facts], "errors": list(self.errors)}


# ------------------------------------------------------------------------------------ helpers

def _clean(value: Any, limit: int = MAX_VALUE_CHARS) -> str:
    text = value if isinstance(value, str) else str(value)
    if len(text) > 4 * limit:
        text = text[:4 * limit]
    text = _CONTROL.sub("", text).strip()
    if len(text) > limit:
        text = text[:limit - 1] + "\u2026"
    return text


def _keyword(raw: bytes) -> str:
    return _clean(raw[:79].decode("latin-1"), 79) or "?"


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MiB"


def _normalise_generator(text: str) -> str:
    for pattern, name in _KNOWN_GENERATORS:
        if pattern.search(text):
            return name
    return _clean(text, 200)


def _source_type(value: str) -> str | None:
    text = _clean(value, 400).rstrip("/#")
    text = re.split(r"[/#]", text)[-1].strip()
    return _clean(text, 100) or None


def _inflate(buf: bytes) -> bytes:
    """zlib-inflate at most MAX_METADATA_BYTES (a decompression bomb raises _TooBig)."""
    d = zlib.decompressobj()
    out = d.decompress(buf, MAX_METADATA_BYTES + 1)
    if len(out) > MAX_METADATA_BYTES or d.unconsumed_tail:
        raise _TooBig()
    return out


class _Collector:
    def __init__(self):
        self.facts: list[dict] = []
        self.errors: list[str] = []
        self.generators: list[tuple[int, int, str]] = []
        self.source_types: list[tuple[int, int, str]] = []
        self.c2pa_presence: list[str] = []     # where a manifest was seen by the byte walkers
        self.remote_manifest: str | None = None
        self.c2pa: dict | None = None
        self._seen = set()
        self._n = 0
        self._facts_capped = False
        self._errors_capped = False

    def fact(self, key: str, value: Any, where: str) -> None:
        value = _clean(value)
        if not value:
            return
        ident = (key, value, where)
        if ident in self._seen:
            return
        if len(self.facts) >= MAX_FACTS:
            if not self._facts_capped:
                self._facts_capped = True
                self.error(f"more than {MAX_FACTS} metadata facts; the rest were dropped")
            return
        self._seen.add(ident)
        self.facts.append({"key": _clean(key, 80), "value": value, "where": _clean(where, 120)})

    def error(self, message: str) -> None:
        if len(self.errors) >= MAX_ERRORS:
            if not self._errors_capped:
                self._errors_capped = True
                self.errors.append(f"more than {MAX_ERRORS} metadata errors; the rest were dropped")
            return
        message = _clean(message, MAX_ERROR_CHARS)
        if message not in self.errors:
            self.errors.append(message)

    def generator(self, priority: int, name: str) -> None:
        name = _clean(name, 200)
        if name:
            self._n += 1
            self.generators.append((priority, self._n, name))

    def source_type(self, priority: int, value: str) -> None:
        st = _source_type(value)
        if st:
            self._n += 1
            self.source_types.append((priority, self._n, st))

    def result(self) -> Provenance:
        gen = min(self.generators)[2] if self.generators else None
        st = min(self.source_types)[2] if self.source_types else None
        return Provenance(generator=gen, source_type=st, c2pa=self.c2pa,
                          facts=self.facts, errors=self.errors)


# ------------------------------------------------------------------------------- text chunks

def _text_entry(c: _Collector, key: str, text: str, where: str) -> None:
    """A textual key/value from a PNG text chunk (or an EXIF UserComment)."""
    if key == _PNG_XMP_KEYWORD:
        _parse_xmp(c, text.encode("latin-1", "replace"))     # tEXt/zTXt are Latin-1
        return
    c.fact(key, text, where)
    lower = key.lower()
    if lower == "parameters":
        _webui_parameters(c, text, where)
    elif lower in ("prompt", "workflow"):
        _comfyui_json(c, key, text, where)
    elif lower == "software":
        c.generator(_P_SOFTWARE, _normalise_generator(text))
    elif lower in ("invokeai_metadata", "invokeai_graph", "sd-metadata", "dream"):
        c.generator(_P_TOOL, "InvokeAI")


def _webui_parameters(c: _Collector, text: str, where: str) -> None:
    lines = _WEBUI_STEPS_LINE.findall(text[:MAX_METADATA_BYTES])
    if not lines:
        return
    params = {}
    for k, v in _WEBUI_PARAM.findall(lines[-1][:20_000]):
        v = v.strip()
        if len(v) >= 2 and v[0] == '"' and v[-1] == '"':
            v = v[1:-1]
        params.setdefault(k.strip(), v)
    model = params.get("Model")
    for key, fact_key in (("Model", "model"), ("Model hash", "model_hash"), ("Version", "version")):
        if params.get(key):
            c.fact(fact_key, params[key], where)
    c.generator(_P_TOOL, "Stable Diffusion WebUI" + (f" ({_clean(model, 150)})" if model else ""))


def _comfyui_json(c: _Collector, key: str, text: str, where: str) -> None:
    stripped = text.lstrip()
    if not stripped.startswith(("{", "[")):
        return                      # a plain-text prompt some other tool wrote: a fact, no more
    try:
        doc = json.loads(stripped)
    except RecursionError:
        c.error(f"{where}: JSON nested too deeply; not parsed")
        return
    except ValueError as e:
        c.error(f"{where}: invalid JSON ({_clean(e, 80)})")
        return
    models: list[str] = []
    comfy = False
    if isinstance(doc, dict) and key.lower() == "prompt":
        for node in list(doc.values())[:10_000]:
            if isinstance(node, dict) and isinstance(node.get("class_type"), str):
                comfy = True
                inputs = node.get("inputs")
                if isinstance(inputs, dict):
                    for name in ("ckpt_name", "unet_name", "model_name"):
                        if isinstance(inputs.get(name), str) and inputs[name] not in models:
                            models.append(inputs[name])
    elif isinstance(doc, dict) and key.lower() == "workflow":
        comfy = isinstance(doc.get("nodes"), list)
    if not comfy:
        return
    for m in models[:5]:
        c.fact("model", m, where)
    c.generator(_P_TOOL, "ComfyUI" + (f" ({_clean(models[0], 150)})" if models else ""))


# ------------------------------------------------------------------------------------- XMP

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


# -------------------------------------------------------------------------------- EXIF/TIFF

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


# ------------------------------------------------------------------------------- containers

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


# ------------------------------------------------------------------------------------- C2PA

_C2PA_STATE: dict = {}


def _import_c2pa():
    """(module, None) or (None, reason). Imported lazily, once; a failed import is remembered."""
    if "module" not in _C2PA_STATE:
        try:
            import c2pa  # noqa: PLC0415 (optional extra)
            _C2PA_STATE["module"], _C2PA_STATE["why"] = c2pa, None
        except Exception as exc:  # ImportError, or OSError from the native library
            _C2PA_STATE["module"], _C2PA_STATE["why"] = None, f"{type(exc).__name__}: {exc}"
    return _C2PA_STATE["module"], _C2PA_STATE["why"]


def _c2pa_entry(**kw) -> dict:
    entry = {"present": True, "valid": None, "claim_generator": None, "validation_errors": []}
    entry.update(kw)
    return entry


def _c2pa(c: _Collector, data: bytes, mime: str | None) -> None:
    detected = bool(c.c2pa_presence)
    walked = mime in ("image/png", "image/jpeg", "image/webp")
    if not detected and walked:
        if c.remote_manifest:
            c.c2pa = _c2pa_entry(remote_url=c.remote_manifest,
                                 note="remote manifest referenced (xmp dcterms:provenance); not fetched")
        return
    mod, why = _import_c2pa()
    if mod is None:
        if detected:
            c.c2pa = _c2pa_entry(note=f"c2pa-python not installed ({_clean(why, 120)}); "
                                      "manifest detected but not verified")
        return
    if mime is None:
        return
    try:
        reader = _c2pa_reader(mod, data, mime)
    except Exception as exc:
        msg = _clean(f"{type(exc).__name__.lstrip('_')}: {exc}", 200)
        if "RemoteManifest" in type(exc).__name__:
            c.c2pa = _c2pa_entry(note=f"remote manifest not fetched ({msg})")
        elif detected:
            c.c2pa = _c2pa_entry(valid=False, validation_errors=[msg])
        else:
            c.error(f"c2pa: {msg}")
        return
    if reader is None:
        if detected:
            c.c2pa = _c2pa_entry(valid=False, validation_errors=[
                "manifest.notFound: a C2PA box is present but the c2pa library found no manifest"])
        return
    try:
        with reader:
            store = json.loads(reader.json())
        _c2pa_store(c, store)
    except Exception as exc:
        c.c2pa = _c2pa_entry(valid=False,
                             validation_errors=[_clean(f"{type(exc).__name__}: {exc}", 200)])


def _c2pa_reader(mod, data: bytes, mime: str):
    """A c2pa Reader over the bytes, offline (no remote-manifest or OCSP fetch); None if no manifest."""
    context = None
    if hasattr(mod, "Context"):
        context = mod.Context.from_dict({"verify": {"remote_manifest_fetch": False,
                                                    "ocsp_fetch": False}})
    stream = io.BytesIO(data)
    try:
        if context is not None:
            return mod.Reader.try_create(mime, stream, None, context)
        return mod.Reader.try_create(mime, stream)
    except getattr(mod.C2paError, "ManifestNotFound", ()):
        return None


def _c2pa_store(c: _Collector, store: dict) -> None:
    manifests = store.get("manifests") or {}
    active = manifests.get(store.get("active_manifest")) or {}
    state = store.get("validation_state")
    results = store.get("validation_results") or {}
    failures = (results.get("activeManifest") or {}).get("failure")
    if failures is None:
        failures = store.get("validation_status") or []
    codes = [_clean(f.get("code") or f, 100) for f in failures if isinstance(f, (dict, str))]
    if state in ("Valid", "Trusted"):
        valid = True
    elif state == "Invalid":
        valid = False
    else:  # no validation_state (older library): intact unless a failure other than trust
        valid = not [x for x in codes if x != "signingCredential.untrusted"]
    generator = active.get("claim_generator")
    if not generator:
        infos = active.get("claim_generator_info") or []
        if infos and isinstance(infos[0], dict):
            generator = " ".join(str(infos[0].get(k)) for k in ("name", "version") if infos[0].get(k))
    generator = _clean(generator, 200) if generator else None
    sig = active.get("signature_info") or {}
    signer = sig.get("issuer") or sig.get("common_name")
    c.c2pa = _c2pa_entry(valid=valid, claim_generator=generator, validation_errors=codes[:50],
                         validation_state=state, trusted=state == "Trusted",
                         signer=_clean(signer, 200) if signer else None)
    where_note = "" if valid else " (manifest invalid)"
    if generator:
        c.fact("claim_generator", generator, "c2pa:claim_generator" + where_note)
        c.generator(_P_C2PA_CLAIM if valid else _P_INVALID, _normalise_generator(generator))
    if signer:
        c.fact("signer", signer, "c2pa:signature_info")
    for assertion in (active.get("assertions") or [])[:200]:
        if not isinstance(assertion, dict) or not str(assertion.get("label", "")).startswith("c2pa.actions"):
            continue
        actions = (assertion.get("data") or {}).get("actions") or []
        for action in actions[:200]:
            if not isinstance(action, dict):
                continue
            dst = action.get("digitalSourceType")
            if isinstance(dst, str):
                c.fact("digitalSourceType", dst, "c2pa:actions" + where_note)
                c.source_type(10 if valid else 90, dst)
            agent = action.get("softwareAgent")
            if isinstance(agent, dict):
                agent = " ".join(str(agent[k]) for k in ("name", "version") if agent.get(k))
            if isinstance(agent, str) and agent:
                c.fact("softwareAgent", agent, "c2pa:actions" + where_note)
                if action.get("action") == "c2pa.created":
                    c.generator(_P_C2PA_AGENT if valid else _P_INVALID, _normalise_generator(agent))


# --------------------------------------------------------------------------------- entry point

def read_provenance(data: bytes, source: str = "") -> Provenance:
    """Read what ``data`` (an image file's bytes) declares about its origin. Never raises.

    ``source`` (a file name, optional) is only a format hint for bytes whose signature is not
    recognised; nothing is opened. Problems with the metadata land in ``errors``.
    """
    c = _Collector()
    try:
        if isinstance(data, (bytearray, memoryview)):
            data = bytes(data)
        if not isinstance(data, bytes):
            c.error(f"input is not bytes (got {type(data).__name__})")
            return c.result()
        if not data:
            c.error("empty input")
            return c.result()
        if len(data) > MAX_INPUT_BYTES:
            c.error(f"input of {_mib(len(data))} exceeds the {_mib(MAX_INPUT_BYTES)} cap; not scanned")
            return c.result()
        source = source if isinstance(source, str) else ""
        mime = _sniff(data, source)
        if mime == "image/png":
            _png(c, data)
        elif mime == "image/jpeg":
            _jpeg(c, data)
        elif mime == "image/webp":
            _webp(c, data)
        elif mime == "image/tiff":
            _parse_tiff(c, data, "tiff", is_file=True)
        elif mime in ("image/gif", "image/avif", "image/heic"):
            _scan_xmp(c, data)
        elif mime is None:
            c.error("unrecognised file format (no PNG/JPEG/WebP/GIF/TIFF/HEIF signature)")
        _c2pa(c, data, mime)
    except Exception as exc:  # a reader bug must not take the caller down: note it instead
        c.error(f"internal error while reading metadata: {type(exc).__name__}: {_clean(exc, 120)}")
    return c.result()


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "", name.lower())


def agreement(provenance: dict, profile: "str | None") -> "str | None":
    """Compare what a file declares with what its pixels were attributed to: None when either
    is missing (nothing declared, or no enrolled profile matched), else "agree" when the
    declared generator and the profile name contain one another (case, spaces and punctuation
    ignored), "disagree" otherwise. Used by ``ofa-sdk scan --summary``; it never changes a
    label."""
    declared = (provenance or {}).get("generator")
    if not declared or not profile:
        return None
    a, b = _norm(declared), _norm(profile)
    return "agree" if a and b and (a in b or b in a) else "disagree"
