"""The one switch between fused kernels and the PyTorch reference, per op and per call.

Ops: ``log_spectrum``, ``highpass_log_spectrum``, ``mokconv``, ``pair_gallery_scores``.
Backends: ``"reference"`` (the PyTorch definitions in ``ofa_sdk.kernels.reference``; for the
numpy pair rule, ``PairHeadWeights.mean_probs``), ``"triton"``
(``ofa_sdk.kernels.{spectrum,mokconv,gallery}``), ``"cpp"`` (``ofa_sdk._spectrum_cpu``, CPU
spectrum; ``ofa_sdk._gallery_cpu``, CPU pair-rule scoring) and ``"cuda_ext"``
(``ofa_sdk._spectrum_cuda``, CUDA spectrum).

Rules, in order (:func:`decide` returns the backend and the reason; :func:`which` the backend):

1. exporting or compiling (``torch.compiler.is_compiling()``, ``torch.jit`` tracing/scripting,
   ``torch.onnx.is_in_onnx_export()``, FX symbolic tracing) -> reference, always;
2. forced reference: :func:`set_reference`, the :func:`reference` context manager, or the
   environment variable ``OFA_SDK_REFERENCE=1`` -> reference;
3. inputs the kernels do not cover (dtype other than float32/float16/bfloat16, shapes, a gradient
   needed by a forward-only kernel, autocast active for MoKConv, a head other than
   Linear-ReLU-Linear) -> reference;
4. CUDA tensors: the Triton kernel when Triton is importable; for the spectrum the CUDA
   extension instead when it is importable and preferred, or when Triton is not;
5. CPU tensors: the spectrum runs in the C++ module when it is built (it beats
   ``torch.fft.rfft2`` and scipy here: benchmarks/RESULTS.md), unless ``"reference"`` is
   preferred (``OFA_SDK_PREFER=reference``) or the reference is forced; so does the numpy pair
   rule's gallery scoring (numpy arrays in, :func:`pair_crop_means`; it beats the numpy BLAS
   composition: benchmarks/RESULTS.md); every other op runs the reference. ``"triton"`` runs
   the Triton kernels on CPU tensors only when preferred and under the interpreter
   (``TRITON_INTERPRET=1``, for tests).

Nothing here imports Triton, queries a GPU or compiles at import: availability is checked per
call from the tensor's device and ``importlib.util.find_spec`` (cached; :func:`refresh` clears it
after building an extension in-process). The switches are process-global (not thread-local),
like timm's layer config. Nor does it import PyTorch before a tensor needs it: the spectrum ops
also take numpy arrays (CPU, float32; rule 5, then numpy out), so the ONNX Runtime engine and
the numpy pair rule run without PyTorch loaded (a CLI call does not pay its import).
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import sys
from functools import lru_cache

import numpy as np

from ..backends.base import cpu_threads

OPS = ("log_spectrum", "highpass_log_spectrum", "mokconv", "pair_gallery_scores")
BACKENDS = ("reference", "triton", "cpp", "cuda_ext")
KERNEL_DTYPES = ("float32", "float16", "bfloat16")   # torch dtype names the kernels take
MAX_DFT_SIZE = 512      # above this a DFT-as-GEMM loses to an FFT (O(N) vs O(log N) per element)

_STATE = {
    "reference": False,
    "prefer": frozenset(),
    # dot precision per op; None = the kernel's default (mokconv: follows cudnn.allow_tf32)
    "precision": {"log_spectrum": "ieee", "highpass_log_spectrum": "ieee", "mokconv": None,
                  "pair_gallery_scores": "ieee"},
}


def __getattr__(name):
    # ``exporting`` (rule 1) is part of this module's interface, from the PyTorch reference,
    # which is imported only when asked for
    if name == "exporting":
        return _ref().exporting
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _ref():
    from . import reference
    return reference


def _exporting() -> bool:
    """Rule 1; without PyTorch loaded nothing can be exporting."""
    return "torch" in sys.modules and _ref().exporting()


# ------------------------------------------------------------------------------------ switches
def set_reference(flag: bool = True) -> None:
    """Force (True) or stop forcing (False) the reference for every op."""
    _STATE["reference"] = bool(flag)


@contextlib.contextmanager
def reference(flag: bool = True):
    """``with dispatch.reference(): ...`` runs the block on the reference path."""
    old = _STATE["reference"]
    _STATE["reference"] = bool(flag)
    try:
        yield
    finally:
        _STATE["reference"] = old


def set_prefer(*backends: str) -> None:
    """Backends allowed where they are not the default (CPU): ``set_prefer("cpp")``;
    ``set_prefer()`` clears."""
    bad = [b for b in backends if b not in BACKENDS]
    if bad:
        raise ValueError(f"unknown backend(s) {bad}; choose from {BACKENDS}")
    _STATE["prefer"] = frozenset(backends)


@contextlib.contextmanager
def prefer(*backends: str):
    old = _STATE["prefer"]
    set_prefer(*backends)
    try:
        yield
    finally:
        _STATE["prefer"] = old


def set_precision(op: str, input_precision) -> None:
    """Dot precision for an op's Triton kernel: "ieee", "tf32x3", "tf32" (or None for mokconv)."""
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}; choose from {OPS}")
    if input_precision not in ("ieee", "tf32x3", "tf32") and not (op == "mokconv" and input_precision is None):
        raise ValueError(f"bad input_precision {input_precision!r}")
    _STATE["precision"][op] = input_precision


def reference_forced() -> bool:
    return _STATE["reference"] or os.environ.get("OFA_SDK_REFERENCE", "").lower() in ("1", "true", "yes")


def preferred() -> frozenset:
    env = {b.strip() for b in os.environ.get("OFA_SDK_PREFER", "").split(",") if b.strip()}
    return _STATE["prefer"] | frozenset(env)


# -------------------------------------------------------------------------------- availability
@lru_cache(maxsize=None)
def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


@lru_cache(maxsize=None)
def _importable(name: str) -> bool:
    """The extension imports (a built .so can still fail to load: missing CPU features, libs).
    Only called when the extension would be used, so never at import time."""
    if not _has_module(name):
        return False
    try:
        importlib.import_module(name)
        return True
    except Exception:  # noqa: BLE001 - any load failure means "not available"
        return False


def refresh() -> None:
    """Forget cached module availability (e.g. after building the C++ extension)."""
    _has_module.cache_clear()
    _importable.cache_clear()


def triton_available(device) -> bool:
    """Triton importable, and the tensor on CUDA or the interpreter on (CPU tensors)."""
    if not _has_module("triton"):
        return False
    if device.type == "cuda":
        return True
    return device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"


def cpp_available() -> bool:
    return _importable("ofa_sdk._spectrum_cpu")


def gallery_cpu_available() -> bool:
    return _importable("ofa_sdk._gallery_cpu")


def cuda_ext_available() -> bool:
    return _importable("ofa_sdk._spectrum_cuda")


# ------------------------------------------------------------------------------------ decisions
def _needs_grad(*tensors) -> bool:
    import torch
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _device_backend(op: str, device, spectrum: bool):
    pref = preferred()
    if device.type == "cuda":
        if spectrum and "cuda_ext" in pref and cuda_ext_available():
            return "cuda_ext", "CUDA extension preferred"
        if triton_available(device):
            return "triton", "CUDA tensor, Triton importable"
        if spectrum and cuda_ext_available():
            return "cuda_ext", "CUDA tensor, Triton missing, CUDA extension importable"
        return "reference", "CUDA tensor but no Triton" + (" or CUDA extension" if spectrum else "")
    if device.type == "cpu":
        if "triton" in pref and triton_available(device):
            return "triton", "CPU, Triton interpreter preferred (TRITON_INTERPRET=1)"
        if spectrum and cpp_available() and "reference" not in pref:
            return "cpp", "CPU, C++ spectrum module built (faster than rfft2: benchmarks/RESULTS.md)"
        return "reference", "CPU default"
    return "reference", f"no kernel for device {device.type}"


def _spectrum_shape(op: str, shape) -> str:
    """Why the spectrum kernels do not cover an input of this shape ("" when they do)."""
    if len(shape) < 2 or 0 in shape:
        return "shape not covered"
    h, w = shape[-2:]
    if op == "highpass_log_spectrum" and min(h, w) < 3:
        return "image smaller than the 3x3 high-pass"
    if max(h, w) > MAX_DFT_SIZE:
        return f"size above {MAX_DFT_SIZE} (FFT is cheaper)"
    return ""


def decide(op: str, x, *others, rest=None) -> tuple:
    """(backend, reason) for ``op`` on input ``x`` (and the op's other tensors, if given)."""
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}; choose from {OPS}")
    if _exporting():
        return "reference", "exporting/compiling/tracing"
    if reference_forced():
        return "reference", "reference forced"
    if op == "pair_gallery_scores" and isinstance(x, np.ndarray):    # the numpy pair rule
        if rest is not None and not rest.fusable:
            return "reference", "pair head is not Linear-ReLU-Linear"
        if "reference" in preferred():
            return "reference", "reference preferred"
        if gallery_cpu_available():
            return "cpp", "numpy arrays, C++ gallery module built (faster: benchmarks/RESULTS.md)"
        return "reference", "C++ gallery module not built"
    if op in ("log_spectrum", "highpass_log_spectrum") and isinstance(x, np.ndarray):
        why = _spectrum_shape(op, x.shape) or ("" if x.dtype == np.float32 else f"dtype {x.dtype} not covered")
        if why:
            return "reference", why
        if "reference" in preferred():
            return "reference", "reference preferred"
        if cpp_available():
            return "cpp", "numpy array, C++ spectrum module built (faster than rfft2: benchmarks/RESULTS.md)"
        return "reference", "C++ spectrum module not built"
    import torch
    if not isinstance(x, torch.Tensor):
        return "reference", "not a tensor"
    tensors = [x] + [t for t in others if isinstance(t, torch.Tensor)]
    if any(str(t.dtype).removeprefix("torch.") not in KERNEL_DTYPES for t in tensors if t.is_floating_point()):
        return "reference", f"dtype {x.dtype} not covered"
    if any(t.device != x.device for t in tensors):
        return "reference", "tensors on different devices"
    if op in ("log_spectrum", "highpass_log_spectrum"):
        why = _spectrum_shape(op, tuple(x.shape)) or ("" if x.is_floating_point() else "shape not covered")
        if why:
            return "reference", why
        if _needs_grad(x):
            return "reference", "gradient needed (spectrum kernels are forward-only)"
        return _device_backend(op, x.device, spectrum=True)
    if op == "mokconv":
        if len(others) >= 2:
            coef, weight = others[0], others[1]
            if (x.dim() != 4 or weight.dim() != 5 or tuple(weight.shape[-2:]) != (3, 3)
                    or tuple(coef.shape) != (x.shape[0], weight.shape[0], weight.shape[1])
                    or weight.shape[2] != x.shape[1]):
                return "reference", "shape not covered (needs 3x3 kernels)"
        if len({t.dtype for t in tensors}) > 1:
            return "reference", "mixed dtypes"
        if x.device.type == "cuda" and torch.is_autocast_enabled("cuda"):
            return "reference", "autocast active"
        return _device_backend(op, x.device, spectrum=False)
    # pair_gallery_scores
    if rest is not None:
        try:
            _ref().head_layers(rest)
        except ValueError:
            return "reference", "pair head is not Linear-ReLU-Linear"
        if isinstance(rest, torch.nn.Module):
            tensors += list(rest.parameters())
    if _needs_grad(*tensors):
        return "reference", "gradient needed (gallery kernel is forward-only)"
    return _device_backend(op, x.device, spectrum=False)


def which(op: str, tensor, *others, **kw) -> str:
    """The backend :func:`decide` picks: "reference", "triton", "cpp" or "cuda_ext"."""
    return decide(op, tensor, *others, **kw)[0]


def _cuda_available() -> bool:
    import torch
    return torch.cuda.is_available()


def report() -> dict:
    """What is importable and switched (queries CUDA: call it on demand only)."""
    return {"triton": _has_module("triton"), "cpp": cpp_available(),
            "cpp_gallery": gallery_cpu_available(), "cuda_ext": cuda_ext_available(),
            "cuda": _cuda_available(), "interpret": os.environ.get("TRITON_INTERPRET") == "1",
            "reference_forced": reference_forced(), "prefer": sorted(preferred()),
            "precision": dict(_STATE["precision"])}


# ----------------------------------------------------------------------------------------- ops
def _ext_spectrum(name: str, module: str, x, scale: float):
    """Call ``ofa_sdk._spectrum_cpu`` (numpy float32 in and out; a numpy array stays one, a
    tensor comes back a tensor) or ``ofa_sdk._spectrum_cuda`` (float32 CUDA tensors in and out);
    both compute ``log1p(scale * |FFT2|)`` per plane, so the scale is passed as |scale| (the
    reference scales the residual)."""
    mod = importlib.import_module(module)
    lead, (h, w) = x.shape[:-2], x.shape[-2:]
    if isinstance(x, np.ndarray):
        out = getattr(mod, name)(np.ascontiguousarray(x, np.float32).reshape(-1, 1, h, w),
                                 abs(float(scale)), threads=cpu_threads())
        return out.reshape(*lead, *out.shape[-2:])
    import torch
    x4 = x.detach().float().reshape(-1, 1, h, w).contiguous()
    if module.endswith("_cpu"):
        out = torch.from_numpy(np.ascontiguousarray(
            getattr(mod, name)(x4.numpy(), abs(float(scale)), threads=cpu_threads())))
    else:
        out = getattr(mod, name)(x4, abs(float(scale)))
    return out.reshape(*lead, *out.shape[-2:])


def _on_reference(fn, x, *args):
    """A reference op on a numpy array: through PyTorch, numpy back."""
    if not isinstance(x, np.ndarray):
        return fn(x, *args)
    import torch
    with torch.inference_mode():
        return fn(torch.from_numpy(np.ascontiguousarray(x, np.float32)), *args).numpy()


def log_spectrum(residual, scale: float = 1.0):
    """(..., H, W) -> float32 ``log1p(|FFT2(scale * residual)|)``; a tensor, or a float32 numpy
    array (numpy out)."""
    backend = which("log_spectrum", residual)
    if backend == "triton":
        from . import spectrum as k
        return k.log_spectrum(residual, scale, input_precision=_STATE["precision"]["log_spectrum"])
    if backend == "cpp":
        return _ext_spectrum("log_spectrum", "ofa_sdk._spectrum_cpu", residual, scale)
    if backend == "cuda_ext":
        return _ext_spectrum("log_spectrum", "ofa_sdk._spectrum_cuda", residual, scale)
    return _on_reference(_ref().log_spectrum_reference, residual, scale)


def highpass_log_spectrum(x, scale: float = 1.0):
    """(..., H+2, W+2) images -> float32 log-spectrum of ``scale *`` their 3x3 Laplacian residual
    (valid part); a tensor, or a float32 numpy array (numpy out)."""
    backend = which("highpass_log_spectrum", x)
    if backend == "triton":
        from . import spectrum as k
        return k.highpass_log_spectrum(x, scale,
                                       input_precision=_STATE["precision"]["highpass_log_spectrum"])
    if backend == "cpp":
        return _ext_spectrum("highpass_log_spectrum", "ofa_sdk._spectrum_cpu", x, scale)
    if backend == "cuda_ext":
        return _ext_spectrum("highpass_log_spectrum", "ofa_sdk._spectrum_cuda", x, scale)
    # as OFAModel.residual("highpass")
    return _on_reference(_ref().highpass_log_spectrum_reference, x, scale)


def mokconv(h, coef, weight, bias):
    """MoKConv with weight mixing: h (B,C,H,W), coef (B,K,O), weight (K,O,C,3,3), bias (K,O)."""
    backend = which("mokconv", h, coef, weight, bias)
    if backend == "triton":
        from . import mokconv as k
        return k.mokconv(h, coef, weight, bias, input_precision=_STATE["precision"]["mokconv"])
    return _ref().mokconv_weight_mixing(h, coef, weight, bias)


def pair_gallery_scores(query_part, support_parts, counts, rest):
    """(Q,h) query parts, (P,S,h) padded support parts, (P,) counts, ``PairHead.rest`` (or
    (w1, b1, w2, b2)) -> (Q,P) mean pair probability over each profile's supports."""
    backend = which("pair_gallery_scores", query_part, support_parts, rest=rest)
    if backend == "triton":
        from . import gallery as k
        return k.pair_gallery_scores(query_part, support_parts, counts, rest,
                                     input_precision=_STATE["precision"]["pair_gallery_scores"])
    return _ref().pair_gallery_scores_reference(query_part, support_parts, counts, rest)


def pair_crop_means(query_part: np.ndarray, parts, head, chunk: int = 256) -> np.ndarray:
    """The numpy pair rule's hot loop: (n, h) query parts (``PairHeadWeights.query_part``) and P
    profiles' (S_p, h) support parts, ``head`` a ``PairHeadWeights`` -> (n, P) float32 mean pair
    probability of each query row over each profile's supports. The C++ kernel
    (``ofa_sdk._gallery_cpu``, on :func:`~ofa_sdk.backends.base.cpu_threads` threads) or the reference
    ``head.mean_probs`` per profile, ``chunk`` query rows at a time."""
    query_part = np.ascontiguousarray(query_part, np.float32)
    parts = list(parts)
    if decide("pair_gallery_scores", query_part, rest=head)[0] == "cpp":
        mod = importlib.import_module("ofa_sdk._gallery_cpu")
        (w1, b1), (w2, b2) = head.rest
        return mod.pair_scores(query_part, parts, w1, b1, w2.reshape(-1), float(b2.reshape(-1)[0]),
                               threads=cpu_threads())
    if not parts:
        return np.zeros((len(query_part), 0), np.float32)
    return np.stack([head.mean_probs(query_part, p, chunk) for p in parts], 1)
