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

Layout: :mod:`.common` (caps, :class:`Provenance`, the collector), :mod:`.png`,
:mod:`.containers` (JPEG, WebP, format sniffing), :mod:`.exif` (EXIF/TIFF), :mod:`.xmp` (XMP and
IPTC-IIM), :mod:`.text` (generators' own text formats), :mod:`.c2pa`; this module dispatches on
the format and compares a declaration with a verdict (:func:`agreement`).
"""
from __future__ import annotations

import re

from .c2pa import _c2pa
from .common import (MAX_CHUNKS, MAX_ERROR_CHARS, MAX_ERRORS, MAX_FACTS,  # noqa: F401
                                      MAX_IFD_ENTRIES, MAX_INPUT_BYTES, MAX_METADATA_BYTES, MAX_TEXT_CHUNKS,
                                      MAX_VALUE_CHARS, Provenance, _Collector, _clean, _mib)
from .containers import _jpeg, _sniff, _webp
from .exif import _parse_tiff
from .png import _png
from .xmp import _scan_xmp


__all__ = ["Provenance", "read_provenance", "agreement", "MAX_METADATA_BYTES", "MAX_VALUE_CHARS"]


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
