"""The TensorRT engine (CUDA): engines built from the two ONNX graphs, the FFT between them on
the same CUDA stream.

    crops (uint8, host) -> [residual engine] -> residual -> log_spectrum (CUDA kernel) ->
    [extractor engine] -> fingerprints (host)

(a model with the fixed high-pass residual builds no residual engine: its stencil runs fused in
float32 into the spectrum kernel, as in the ONNX Runtime engine, never in fp16 or TF32.)
``embed()`` copies only the fingerprints to the host; ``embed_spectra()`` the spectra too.
Every CUDA call (deserialising, contexts, streams, kernels, execution) runs with the engine's
device current (:func:`ofa_sdk.backends.torch.device_guard`).

Written to the TensorRT 10 Python API (tensor-name I/O, ``execute_async_v3``). Device buffers
and the stream are torch CUDA tensors and a ``torch.cuda.Stream``: the spectrum between the two
engines is a torch/Triton op (:func:`ofa_sdk.models.spectrum.log_spectrum`, dispatched to the
fused kernel on CUDA), so one CUDA runtime owns all memory and nothing crosses to the host
between the engines. Each thread gets its own execution context (``threading.local``).

Engines are cached in ``$OFA_SDK_CACHE/tensorrt/`` under a key of the model id, the source
graph's digest, the GPU's name and compute capability, the TensorRT version, the batch profile
and the precision (:func:`cache_key`), with a JSON file beside each engine and a shared timing
cache. Builds take a file lock and write atomically; an engine whose JSON does not match its key
(stale or foreign) is rebuilt, never reused.

Precisions: ``fp32`` (TF32 cleared: TensorRT allows it by default); ``fp16`` (the default); ``int8``: explicit quantisation, built from the
QDQ int8 graphs of :mod:`ofa_sdk.backends.quantize` (calibrated on real photos: the engine
option ``calibration=<folder>``, or graphs made earlier with ``ofa-sdk export --format onnx
--int8 PHOTOS``: found beside the model file, or in ``graphs_dir=DIR`` after ``-o DIR``), as a
strongly typed network where the TensorRT version has them (its documented way for Q/DQ graphs;
layers outside Q/DQ pairs then run in fp32), else with the INT8 and FP16 builder flags.
``graphs_dir=DIR`` serves the float precisions the same way.

TensorRT cannot be installed on the machines this project is developed on: the key, profile,
lock and JSON logic and the graphs' operator set are tested there (tests/test_tensorrt.py); the
build and run paths below have not been run. See the README.
"""
from __future__ import annotations

import contextlib
import json
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np

from ..weights import file_id
from .base import EngineUnavailable, atomic_write, check_crops  # noqa: F401 (atomic_write: tests)

PRECISIONS = ("fp32", "fp16", "int8")
# Operators of the exported graphs that TensorRT's ONNX parser supports (its operators.md).
# The graphs are checked against this list in the tests: a new op must be checked by hand.
TRT_PARSER_OPS = frozenset({
    "Add", "AveragePool", "BatchNormalization", "Cast", "Clip", "Concat", "Constant", "Conv",
    "Div", "Expand", "Flatten", "Gemm", "GlobalAveragePool", "Identity", "MatMul", "Max",
    "MaxPool", "Mul", "Pow", "ReduceL2", "ReduceMean", "ReduceSum", "Relu", "Reshape", "Shape",
    "Slice", "Sqrt", "Squeeze", "Sub", "Transpose", "Unsqueeze", "Gather", "Where", "Equal",
    "Sigmoid", "LeakyRelu", "Pad", "ConstantOfShape", "Range", "Less", "Greater", "Min",
    "ReduceMax", "Neg", "Abs", "Exp", "Log", "Softmax", "Tanh", "Erf", "Not", "And", "Or",
    "QuantizeLinear", "DequantizeLinear",
})


@dataclass(frozen=True)
class BatchProfile:
    """The optimisation profile of the dynamic batch axis: min <= opt <= max."""
    min: int = 1
    opt: int = 32
    max: int = 256

    def __post_init__(self):
        if not 1 <= self.min <= self.opt <= self.max:
            raise ValueError(f"batch profile needs 1 <= min <= opt <= max, got {self}")

    def chunks(self, n: int):
        """Split a batch of n into runs the profile admits (the last may be below min only
        when n itself is)."""
        for i in range(0, n, self.max):
            yield i, min(n, i + self.max)


def cache_key(model_id: str, gpu_name: str, capability: Tuple[int, int], trt_version: str,
              profile: BatchProfile, precision: str, graph: str, source: str) -> str:
    """The engine's file stem: everything an engine is only valid for (``source``: the digest of
    the ONNX graph it is built from, so a re-exported or recalibrated graph gets a new engine)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    gpu = "".join(ch if ch.isalnum() else "-" for ch in gpu_name).strip("-").lower()
    return (f"{model_id}-{graph}-{source}-{gpu}-sm{capability[0]}{capability[1]}-trt{trt_version}-"
            f"b{profile.min}_{profile.opt}_{profile.max}-{precision}")


def key_record(key: str, **fields) -> Dict:
    return {"key": key, **fields}


def record_matches(json_path: Path, key: str) -> bool:
    """True when the JSON beside an engine names exactly this key (else: rebuild)."""
    try:
        return json.loads(Path(json_path).read_text()).get("key") == key
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def file_lock(path: Path):
    """An exclusive advisory lock (POSIX flock) held while building one engine."""
    import fcntl
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def default_dir() -> Path:
    from .graphs import default_cache_dir
    return default_cache_dir().parent / "tensorrt"


def _build(trt, onnx_path: Path, input_name: str, input_shape, profile: BatchProfile,
           precision: str, timing_cache: Path) -> bytes:
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    strong = precision == "int8" and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")
    # explicit batch is the only mode in TRT 10; Q/DQ graphs build strongly typed where possible
    network = builder.create_network(
        1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strong else 0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errs}")
    config = builder.create_builder_config()
    if precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)    # TensorRT allows TF32 by default: fp32 means fp32
    if precision == "fp16" or (precision == "int8" and not strong):
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8" and not strong:
        config.set_flag(trt.BuilderFlag.INT8)       # Q/DQ scales come from the graph
    opt = builder.create_optimization_profile()
    rest = tuple(input_shape[1:])
    opt.set_shape(input_name, (profile.min, *rest), (profile.opt, *rest), (profile.max, *rest))
    config.add_optimization_profile(opt)
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.exists() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path}")
    atomic_write(timing_cache, bytes(config.get_timing_cache().serialize()))
    return bytes(plan)


class TensorRTEngine:
    """Every CUDA call (deserialising, contexts, streams, the spectrum kernel, execution) runs
    with this engine's device current, so ``device="cuda:1"`` never touches device 0."""
    name = "tensorrt"

    def __init__(self, bundle, device: Optional[str] = None, *, precision: str = "fp16",
                 profile: BatchProfile = BatchProfile(), cache_dir=None, calibration=None,
                 graphs_dir=None):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        try:
            import tensorrt as trt
        except ImportError:
            raise EngineUnavailable("TensorRT is not installed (pip install 'ofa-sdk[tensorrt]' "
                                    "on a machine with an NVIDIA GPU)") from None
        import torch

        from .torch import cuda_device, device_guard
        if device is not None and torch.device(device).type != "cuda":
            raise EngineUnavailable(f"the tensorrt engine runs on CUDA, not {device!r}")
        dev = cuda_device(device)           # the index fixed now: later calls use this GPU
        from .graphs import INPUTS, OUTPUTS, ensure_graphs, residual_shape
        self._torch, self._trt, self._dev = torch, trt, dev
        self.device, self.model_id, self.crop = str(dev), bundle.model_id, bundle.config.crop
        self.profile, self.precision = profile, precision
        sp = bundle.config.spectrum
        # a fixed high-pass residual runs fused into the spectrum kernel in float32 (as in the
        # ONNX Runtime engine), not as a TensorRT engine that may run it in fp16 or TF32
        self._highpass_scale = sp.residual_scale if sp.residual == "highpass" else None
        props = torch.cuda.get_device_properties(dev)
        folder = Path(cache_dir or default_dir())
        try:
            if precision == "int8":     # before any build: a missing calibration fails fast
                from .quantize import ensure_int8_graphs
                graphs = ensure_int8_graphs(bundle, calibration, graphs_dir=graphs_dir)
            else:
                graphs = ensure_graphs(bundle, graphs_dir=graphs_dir)
        except ImportError as e:       # onnx / onnxscript missing beside tensorrt
            raise EngineUnavailable(f"cannot export the ONNX graphs TensorRT builds from: {e} "
                                    "(pip install 'ofa-sdk[onnx]')") from None
        if self._highpass_scale is not None:
            graphs = {g: p for g, p in graphs.items() if g != "residual"}
        shapes = {"residual": (profile.opt, self.crop, self.crop, 3),
                  "extractor": (profile.opt, *residual_shape(bundle.config))}
        self.engines, self._io, self.paths = {}, {}, {}
        with device_guard(dev):      # engines are deserialised onto the current device
            runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
            for g, onnx_path in graphs.items():
                key = cache_key(self.model_id, props.name, (props.major, props.minor),
                                trt.__version__, profile, precision, g, file_id(onnx_path)[:12])
                plan_path, json_path = folder / f"{key}.engine", folder / f"{key}.json"
                with file_lock(folder / f"{key}.lock"):
                    if not (plan_path.exists() and record_matches(json_path, key)):
                        plan = _build(trt, onnx_path, INPUTS[g], shapes[g], profile, precision,
                                      folder / f"timing-trt{trt.__version__}-sm{props.major}{props.minor}.cache")
                        atomic_write(plan_path, plan)
                        atomic_write(json_path, json.dumps(key_record(
                            key, model_id=self.model_id, graph=g, source=str(onnx_path),
                            gpu=props.name, capability=[props.major, props.minor],
                            tensorrt=trt.__version__, profile=asdict(profile),
                            precision=precision), indent=1).encode())
                self.engines[g] = runtime.deserialize_cuda_engine(plan_path.read_bytes())
                self.paths[g] = plan_path
                self._io[g] = (INPUTS[g], OUTPUTS[g])
        self._guard = device_guard
        self._local = threading.local()

    def _context(self, g: str):
        ctx = getattr(self._local, g, None)
        if ctx is None:
            ctx = self.engines[g].create_execution_context()
            setattr(self._local, g, ctx)
        return ctx

    def _stream(self):
        """This thread's CUDA stream (made once, like its execution contexts)."""
        st = getattr(self._local, "stream", None)
        if st is None:
            st = self._local.stream = self._torch.cuda.Stream(self._dev)
        return st

    def _run(self, g: str, x, stream):
        """One engine on a device tensor; output allocated to the shape TensorRT infers."""
        torch = self._torch
        ctx = self._context(g)
        name_in, name_out = self._io[g]
        ctx.set_input_shape(name_in, tuple(x.shape))
        out_shape = tuple(ctx.get_tensor_shape(name_out))
        out = torch.empty(out_shape, dtype=torch.float32, device=self._dev)
        ctx.set_tensor_address(name_in, x.data_ptr())
        ctx.set_tensor_address(name_out, out.data_ptr())
        if not ctx.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f"TensorRT execution of the {g} engine failed")
        return out

    def _embed(self, crops: np.ndarray, spectra: bool):
        """Fingerprints on the host; the spectra too (copied to the host) only when asked."""
        torch = self._torch
        x = torch.from_numpy(check_crops(crops, self.crop))
        zs, specs = [], []
        with self._guard(self._dev):        # contexts, kernels and engines on this GPU
            stream = self._stream()
            with torch.cuda.stream(stream), torch.inference_mode():
                for a, b in self.profile.chunks(len(x)):
                    xd = x[a:b].to(self._dev, non_blocking=True).contiguous()
                    spec = self._spectrum(xd, stream)
                    zs.append(self._run("extractor", spec, stream).cpu())
                    if spectra:
                        specs.append(spec.cpu())
            stream.synchronize()
        z = torch.cat(zs).numpy()
        return (z, torch.cat(specs).numpy()) if spectra else z

    def _spectrum(self, xd, stream):
        """(b, c, c, 3) uint8 on the device -> (b, C, h, w) float32 log-spectrum."""
        if self._highpass_scale is not None:
            from ..kernels.dispatch import highpass_log_spectrum
            img = xd.permute(0, 3, 1, 2).float().div_(255.0)
            return highpass_log_spectrum(img, self._highpass_scale).contiguous()
        from ..models.spectrum import log_spectrum
        return log_spectrum(self._run("residual", xd, stream)).contiguous()

    def embed_spectra(self, crops: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        return self._embed(crops, spectra=True)

    def embed(self, crops: np.ndarray) -> np.ndarray:
        return self._embed(crops, spectra=False)
