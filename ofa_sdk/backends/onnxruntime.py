"""The ONNX Runtime engine (CPU): the two exported graphs, with the FFT between them native.

    crops (uint8) --[residual.onnx]--> residual --[log_spectrum]--> spectrum --[extractor.onnx]--> z

(a model with the fixed high-pass residual does not run residual.onnx -- it is still exported,
for TensorRT and the graphs' contract, but no session is made for it -- its 3x3 stencil runs
fused into the spectrum kernel instead.)

The graphs come from :func:`ofa_sdk.backends.graphs.ensure_graphs`: exported once per model id
into the cache folder (``$OFA_SDK_CACHE/engines/<model id>/``, default ``~/.cache/ofa-sdk``) and
reused while their metadata names the same model; ``graphs_dir=DIR`` opens the graphs
``ofa-sdk export --format onnx -o DIR`` wrote there instead (checked, never rewritten).
Sessions are created once per engine and shared by all threads (``InferenceSession.run`` is
thread-safe), with every graph optimisation on, ``threads`` intra-op threads (default:
:func:`~ofa_sdk.backends.base.cpu_threads`), no spinning threads between calls, and ONNX
Runtime's CPU memory arena (``arena=False`` turns it off: lower peak memory for very large
batches, at some speed). Parity with the torch engine is tested (tests/test_engines.py).
The engine imports no PyTorch: the spectrum runs in the C++ kernel on numpy arrays
(:mod:`ofa_sdk.kernels.dispatch`), so with the shipped graphs a process that only runs this
engine never loads PyTorch.
"""
from __future__ import annotations

import os
from typing import Optional, Tuple

import numpy as np

from .base import EngineUnavailable, check_crops, cpu_threads


class OnnxRuntimeEngine:
    name = "onnxruntime"

    def __init__(self, bundle, device: Optional[str] = None, *, threads: Optional[int] = None,
                 cache_dir=None, graphs_dir=None, arena: bool = True):
        if device not in (None, "cpu"):
            raise EngineUnavailable(f"the onnxruntime engine runs on the CPU, not {device!r}")
        try:
            import onnxruntime as ort
        except ImportError:
            raise EngineUnavailable("onnxruntime is not installed (pip install 'ofa-sdk[onnx]')") from None
        try:
            paths = self._graph_paths(bundle, cache_dir, graphs_dir)
        except ImportError as e:   # onnx / onnxscript missing for the export
            raise EngineUnavailable(f"cannot export the ONNX graphs: {e} (pip install 'ofa-sdk[onnx]')") from None
        threads = threads or int(os.environ.get("OFA_SDK_ORT_THREADS", 0)) or cpu_threads()
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.enable_cpu_mem_arena = arena
        sp = bundle.config.spectrum
        # a fixed high-pass residual needs no graph: the stencil runs fused into the spectrum
        # kernel (kernels.dispatch.highpass_log_spectrum), one pass over the crops
        self._highpass_scale = sp.residual_scale if sp.residual == "highpass" else None
        providers = [("CPUExecutionProvider", {})]
        self.sessions = {g: ort.InferenceSession(str(p), so, providers=providers)
                         for g, p in paths.items()
                         if not (g == "residual" and self._highpass_scale is not None)}
        self.paths = paths
        self.threads = threads
        self.device, self.model_id, self.crop = "cpu", bundle.model_id, bundle.config.crop

    def _graph_paths(self, bundle, cache_dir, graphs_dir) -> dict:
        """The graph files this engine opens, by graph name: the model's float graphs (a
        subclass may open other graphs of the same contract, e.g. quantised ones)."""
        from .graphs import ensure_graphs
        return ensure_graphs(bundle, cache_dir, graphs_dir)

    def _spectra(self, crops: np.ndarray) -> np.ndarray:
        crops = check_crops(crops, self.crop)
        from ..kernels import dispatch
        if self._highpass_scale is not None:
            x = crops.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255.0)
            return dispatch.highpass_log_spectrum(x, self._highpass_scale)
        res = self.sessions["residual"].run(None, {"crops": crops})[0]
        return dispatch.log_spectrum(np.ascontiguousarray(res, np.float32), 1.0)

    def embed(self, crops: np.ndarray) -> np.ndarray:
        return self.embed_spectra(crops)[0]

    def embed_spectra(self, crops: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        spec = self._spectra(crops)
        z = self.sessions["extractor"].run(None, {"spectrum": spec})[0]
        return z.astype(np.float32, copy=False), spec
