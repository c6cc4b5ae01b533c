"""Generators' own text formats, as PNG text chunks and EXIF UserComments carry them: the
Stable Diffusion WebUI's ``parameters`` and ComfyUI's ``prompt``/``workflow`` JSON."""
from __future__ import annotations

import json

from .common import (MAX_METADATA_BYTES, _Collector, _PNG_XMP_KEYWORD, _P_SOFTWARE, _P_TOOL,
                     _WEBUI_PARAM, _WEBUI_STEPS_LINE, _clean, _normalise_generator)
from .xmp import _parse_xmp


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
