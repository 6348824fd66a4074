"""What machine the figures come from, and what its matrix units can do (measured, not looked up)."""
from __future__ import annotations

import importlib.metadata as md
import os
import platform
import shutil
import subprocess
import time

import numpy as np


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> list[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = line.split(":", 1)[1].split()
                    return sorted(f for f in flags if f.startswith(("avx", "fma", "amx")))
    except OSError:
        pass
    return []


def gpu_description() -> str | None:
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        return None


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("cmrt", "numpy", "onnxruntime", "onnxruntime-gpu", "torch", "diffusers", "tensorrt", "cuda-python"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return out


def describe() -> dict:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    mem = None
    try:
        with open("/proc/meminfo") as f:
            mem = int(f.readline().split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return {
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cores": cores,
        "memory_bytes": mem,
        "gpu": gpu_description(),
        "platform": platform.platform(),
        "versions": library_versions(),
        "env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OPENBLAS_CORETYPE", "MKL_NUM_THREADS") if k in os.environ},
    }


def gemm_rate(sizes=(512, 1024, 2048), repeats: int = 5) -> dict:
    """The machine's float32 matrix-multiply rate through numpy's BLAS: best FLOP/s over a few sizes.

    This is the 'peak' the UNet's achieved FLOP/s is compared against (nanoGPT's MFU idea,
    measured here instead of read off a datasheet).
    """
    rng = np.random.default_rng(0)
    per_size = {}
    for n in sizes:
        a = rng.standard_normal((n, n), dtype=np.float32)
        b = rng.standard_normal((n, n), dtype=np.float32)
        a @ b  # warm-up: thread pool start, page faults
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t0)
        per_size[n] = 2.0 * n**3 / best
    return {"flops_per_s": max(per_size.values()), "per_size": {str(k): v for k, v in per_size.items()},
            "how": "numpy float32 matmul, best of %d per size" % repeats}
