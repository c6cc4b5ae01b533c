"""Fused kernels (Triton) and the one switch that picks them or the PyTorch reference.

Imports go one way: ``ofa_sdk.models`` -> ``dispatch`` -> one file per op (``spectrum``,
``mokconv``, ``gallery``: Triton, imported on first use) and ``reference`` (the PyTorch
definition of every op, the Laplacian high-pass included). Nothing here imports
``ofa_sdk.models``.

* ``spectrum``: ``log1p(scale * |FFT2(r)|)`` as two DFT GEMMs (Hermitian half + mirror), with an
  optional fused 3x3 Laplacian front end;
* ``mokconv``: implicit-GEMM 3x3 convolution mixing the K base kernels in the weight load,
  forward and backward (``torch.autograd.Function``);
* ``gallery``: the pair-rule gallery score (mean sigmoid of the pair head over each profile's
  supports) without materialising query x support x hidden;
* ``dispatch``: the one switch deciding kernel or PyTorch reference per call (the model code in
  ``ofa_sdk.models`` calls it);
* ``reference``: the PyTorch definitions (each kernel file names its reference from there, so the
  models import them without Triton).

Importing this package (or ``dispatch``) imports no Triton and touches no GPU; the kernel modules
import Triton when first used. ``available()`` answers whether Triton is usable at all.
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
