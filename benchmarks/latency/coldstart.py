"""Cold start in a fresh process: import, load and its parts, first image, and peak resident memory.

Run by the harness as `python -m benchmarks.latency.coldstart SYSTEM FOLDER BATCH T_LAUNCH`;
prints one JSON line. Lives in its own process because a warm interpreter hides imports.

SYSTEM is `cmrt` (`cmrt.load(FOLDER, device="cpu")`, whose `load_seconds` gives the load's
parts), `cmrt-plain` (the same with `winograd=False`: the plain graph, less memory),
`diffusers` (`ConsistencyModelPipeline.from_pretrained(FOLDER)`) or `triton` (the
Triton Python-backend model of `cmrt triton-repo`, cmrt/serve/templates/model.py, whose
`initialize` Triton calls in a new stub process for every model instance; here it is called
the same way, with a stand-in for Triton's `triton_python_backend_utils`, which exists only
inside tritonserver).
"""
from __future__ import annotations

import json
import sys
import time
import types
from pathlib import Path

TEMPLATE = Path(__file__).resolve().parents[2] / "cmrt" / "serve" / "templates" / "model.py"
SYSTEMS = ("cmrt", "cmrt-plain", "diffusers", "triton")


def peak_rss_bytes() -> int:
    """VmHWM of this process. Not getrusage's ru_maxrss: on Linux that keeps the parent's
    high-water mark across fork+exec, so a child of a big benchmark process reports the parent's."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def stand_in_pb_utils() -> types.ModuleType:
    """What model.py's `initialize` uses of Triton's module: a logger and the exception type."""
    pb = types.ModuleType("triton_python_backend_utils")

    class Logger:
        @staticmethod
        def log_info(message):
            print(message, file=sys.stderr)

    class TritonModelException(Exception):
        pass

    pb.Logger, pb.TritonModelException = Logger, TritonModelException
    return pb


def triton_initialize(folder: str):
    """Import the Triton model file and run its `initialize` on `folder`, as a stub process would."""
    import importlib.util

    sys.modules["triton_python_backend_utils"] = stand_in_pb_utils()
    spec = importlib.util.spec_from_file_location("cmrt_triton_model", TEMPLATE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.TritonPythonModel()
    config = {"parameters": {"engine_dir": {"string_value": str(Path(folder).resolve())}, "device": {"string_value": "cpu"}}}
    model.initialize({"model_config": json.dumps(config), "model_instance_kind": "CPU", "model_instance_name": "cmrt_0"})
    return model


def main() -> None:
    system, folder, batch, t_launch = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    if system not in SYSTEMS:
        raise SystemExit(f"system must be one of {', '.join(SYSTEMS)}, got {system!r}")
    out: dict = {}
    t0 = time.time()
    if system.startswith("cmrt"):
        import cmrt
    elif system == "diffusers":
        import diffusers  # noqa: F401
        import torch
    t1 = time.time()
    if system == "triton":
        model = triton_initialize(folder)
        t2 = time.time()
        out["parts_s"] = dict(model.load_seconds)
        pipe = model.handler.pipe
    elif system.startswith("cmrt"):
        pipe = cmrt.load(folder, device="cpu", winograd=False if system == "cmrt-plain" else None)
        t2 = time.time()
        out["parts_s"] = dict(pipe.load_seconds)
        out["graph_cache"] = getattr(pipe.backend, "cache", None)
    else:
        pipe = diffusers.ConsistencyModelPipeline.from_pretrained(folder)
        pipe.set_progress_bar_config(disable=True)
        t2 = time.time()
    if system == "diffusers":
        n = pipe.unet.config.num_class_embeds

        def call(b):
            labels = None if n is None else [i % n for i in range(b)]
            with torch.inference_mode():
                return pipe(batch_size=b, class_labels=labels, generator=torch.manual_seed(0), output_type="np").images
    else:
        n = pipe.num_classes

        def call(b):
            labels = None if n is None else [i % n for i in range(b)]
            return pipe(batch_size=b, class_labels=labels, seed=0, output_type="np").images
    call(1)
    t3 = time.time()
    rss_first = peak_rss_bytes()
    call(batch)
    out.update({
        "interpreter_s": t0 - t_launch,
        "import_s": t1 - t0,
        "load_s": t2 - t1,
        "first_call_s": t3 - t2,
        "process_to_first_image_s": t3 - t_launch,
        "peak_rss_first_image_bytes": rss_first,
        "peak_rss_bytes": peak_rss_bytes(),
        "peak_rss_batch": batch,
    })
    print(json.dumps(out))


if __name__ == "__main__":
    main()
