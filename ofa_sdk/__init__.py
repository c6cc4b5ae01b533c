"""ofa-sdk: attribution of synthetic images to their generators (Fei et al., AAAI 2026).

``from ofa_sdk import Attributor``. Importing the package is light: torch and the models load
on first use of the attribute that needs them; nothing queries a GPU, the network or compiles
kernels at import time.
"""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["Attributor", "Attribution", "InputError", "GalleryError", "load_default_model",
           "load_model", "get_config", "__version__"]

_LAZY = {
    "Attributor": ("ofa_sdk.attributor", "Attributor"),
    "Attribution": ("ofa_sdk.decision", "Attribution"),       # a result
    "InputError": ("ofa_sdk.pipeline", "InputError"),         # unusable inputs
    "GalleryError": ("ofa_sdk.gallery", "GalleryError"),      # every gallery failure
    "load_default_model": ("ofa_sdk.weights", "load_default_model"),
    "load_model": ("ofa_sdk.weights", "load_model"),
    "get_config": ("ofa_sdk.config", "get_config"),
}


def __getattr__(name):
    if name in _LAZY:
        import importlib
        mod, attr = _LAZY[name]
        value = getattr(importlib.import_module(mod), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ofa_sdk' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
