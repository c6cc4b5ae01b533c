"""Fused kernels (Triton), installed as ``ofa_sdk.kernels``.

Nothing is implemented here yet: the reference paths in ``ofa_sdk.models`` (MoKConv mixing,
``log_spectrum``) are what the kernels will replace and be tested against. ``available()`` is
the one guard that decides whether Triton is usable; it never touches a GPU at import time.
"""
from __future__ import annotations

import importlib.util
import os


def available() -> bool:
    """True when Triton is installed and either TRITON_INTERPRET=1 is set or a CUDA device
    exists. Only called on demand (queries CUDA lazily)."""
    if importlib.util.find_spec("triton") is None:
        return False
    if os.environ.get("TRITON_INTERPRET") == "1":
        return True
    import torch
    return torch.cuda.is_available()
