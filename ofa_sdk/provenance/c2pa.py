"""C2PA manifests: detected in the bytes, and verified with the optional ``c2pa-python``
bindings when installed (``pip install 'ofa-sdk[c2pa]'``)."""
from __future__ import annotations

import io
import json

from .common import (_Collector, _P_C2PA_AGENT, _P_C2PA_CLAIM, _P_INVALID, _clean,
                     _normalise_generator)


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
