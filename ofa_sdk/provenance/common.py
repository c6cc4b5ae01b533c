"""What every reader of :mod:`ofa_sdk.provenance` shares: the caps on what is read, the
:class:`Provenance` result, the collector of facts and errors, and small text helpers."""
from __future__ import annotations

import json
import re
import zlib
from dataclasses import dataclass, field
from typing import Any


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
