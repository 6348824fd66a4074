"""OpenVINO backend for CPUs: the same fp32 ONNX graph, in fp32 or in bf16 where the CPU has it.

Why it exists: ONNX Runtime already runs the fp32 UNet's direct convolutions close to a
CPU's float32 GEMM rate (docs/benchmarks.md), so fp32 cannot get much faster. CPUs with
AVX512_BF16 or AMX multiply bf16 at twice the rate or more; OpenVINO uses that when asked
(`precision="bf16"`). bf16 changes the numbers (like fp16 on a GPU): images are no longer
within 1e-4 of diffusers', so it is opt-in and `auto` never picks it. The benchmark reports
its image error next to its speed.
"""
from __future__ import annotations

import logging
import os

import numpy as np

from ...engine.io_spec import feeds

logger = logging.getLogger(__name__)

# cmrt precision -> OpenVINO inference precision hint (bf16 only where the CPU has bf16 instructions)
OPENVINO_PRECISIONS = {"fp32": "f32", "bf16": "bf16"}


def _cpu_has_bf16(core) -> bool:
    return "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def bf16_supported() -> bool:
    try:
        import openvino as ov
    except ImportError:
        return False
    return _cpu_has_bf16(ov.Core())


class OpenVINOBackend:
    """One compiled model and one infer request, created once; dynamic batch."""

    def __init__(self, onnx_path: str | os.PathLike, precision: str = "fp32", threads: int | None = None):
        if precision not in OPENVINO_PRECISIONS:  # checked before the import: a bad argument is a ValueError either way
            raise ValueError(f"precision for the OpenVINO backend must be one of {sorted(OPENVINO_PRECISIONS)}, got {precision!r}")
        from .onnxruntime_backend import check_threads, physical_cores

        threads = check_threads(threads)
        try:
            import openvino as ov
        except ImportError as e:
            raise ImportError("the OpenVINO backend needs openvino: `pip install 'cmrt[openvino]'`") from e
        core = ov.Core()
        if precision == "bf16" and not _cpu_has_bf16(core):
            raise RuntimeError("precision='bf16' needs a CPU with bf16 instructions (AVX512_BF16 or AMX); use 'fp32'")

        config = {
            "INFERENCE_PRECISION_HINT": OPENVINO_PRECISIONS[precision],
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": threads or physical_cores(),
        }
        self.compiled = core.compile_model(core.read_model(str(onnx_path)), "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.input_names = [p.get_any_name() for p in self.compiled.inputs]
        self.name = "openvino"
        self.device = "cpu"
        self.precision = precision
        self.threads = config["INFERENCE_NUM_THREADS"]
        logger.info("OpenVINO %s on CPU (%s, %d threads) for %s", ov.__version__, precision, self.threads, onnx_path)

    def run(self, sample: np.ndarray, timestep: np.ndarray, class_labels: np.ndarray | None = None) -> np.ndarray:
        out = self.request.infer(feeds(sample, timestep, class_labels))
        # the result aliases the request's output buffer, which the next call overwrites
        return np.array(out[0], dtype=np.float32, copy=True)
