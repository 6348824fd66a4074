"""Which ONNX Runtime CPU settings help the UNet: each variant timed interleaved with the others.

Run: .venv/bin/python -m benchmarks.ort_tuning ENGINE_DIR [--batch 1] [--runs 5]
Prints median seconds per UNet call for each variant and the ratio to cmrt's default, plus
the PyTorch eager UNet from the same model for reference. The conclusions are in the README.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def session(path, level="all", threads=None, arena=True, spin=True):
    import onnxruntime as ort

    from cmrt.runtime.backends.onnxruntime_backend import physical_cores

    so = ort.SessionOptions()
    so.graph_optimization_level = {
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    }[level]
    so.intra_op_num_threads = threads or physical_cores()
    so.inter_op_num_threads = 1
    so.enable_cpu_mem_arena = arena
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    so.log_severity_level = 3
    t0 = time.perf_counter()
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return s, time.perf_counter() - t0


def unet_fusions(path: Path, out: Path) -> Path:
    """ONNX Runtime's transformer optimizer with its 'unet' fusions (attention, GroupNorm where the EP has it)."""
    from onnxruntime.transformers.optimizer import optimize_model

    m = optimize_model(str(path), model_type="unet", opt_level=0, use_gpu=False)
    m.save_model_to_file(str(out))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("engine", type=Path)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--torch", action="store_true", help="also time the PyTorch eager UNet of the source model")
    ap.add_argument("--fusions", action="store_true",
                    help="also try onnxruntime.transformers' 'unet' fusions (slow to apply; they emit NhwcConv, "
                         "which the CPU provider lacks)")
    args = ap.parse_args()
    manifest = json.loads((args.engine / "manifest.json").read_text())
    onnx_path = args.engine / manifest["onnx"]["fp32"]["file"]
    s = manifest["unet"]["sample_size"]
    rng = np.random.default_rng(0)
    feeds = {"sample": rng.standard_normal((args.batch, 3, s, s), dtype=np.float32),
             "timestep": np.full((args.batch,), 500.0, np.float32)}
    if manifest["unet"]["num_class_embeds"]:
        feeds["class_labels"] = np.arange(args.batch, dtype=np.int64)

    variants = {}
    variants["cmrt default (ENABLE_ALL, threads=cores, spinning, arena)"], load_default = session(onnx_path)
    variants["ENABLE_EXTENDED (no NCHWc layout)"], _ = session(onnx_path, level="extended")
    variants["ENABLE_BASIC"], _ = session(onnx_path, level="basic")
    variants["no spinning"], _ = session(onnx_path, spin=False)
    variants["memory arena off"], _ = session(onnx_path, arena=False)
    tmp = Path(tempfile.mkdtemp())
    if args.fusions:
        try:
            fused = unet_fusions(onnx_path, tmp / "fused.onnx")
            variants["transformers optimizer 'unet' fusions"], _ = session(fused)
        except Exception as e:  # report, do not hide
            print(f"'unet' fusions failed: {type(e).__name__}: {e}")
    opt_path = tmp / "pre-optimized.onnx"
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.optimized_model_filepath = str(opt_path)
    so.log_severity_level = 3
    ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    variants["pre-optimized graph file"], load_pre = session(opt_path, level="basic")

    ref_out = variants["cmrt default (ENABLE_ALL, threads=cores, spinning, arena)"].run(None, feeds)[0]
    calls = {k: (lambda sess=v: sess.run(None, feeds)[0]) for k, v in variants.items()}
    # IO binding with a preallocated output (saves the output allocation per call)
    sess = variants["cmrt default (ENABLE_ALL, threads=cores, spinning, arena)"]
    binding = sess.io_binding()
    out_buf = np.empty_like(ref_out)
    for k, v in feeds.items():
        binding.bind_cpu_input(k, v)
    binding.bind_output("model_output", "cpu", 0, np.float32, list(out_buf.shape), out_buf.ctypes.data)

    def bound():
        sess.run_with_iobinding(binding)
        return out_buf

    calls["IO binding, preallocated output"] = bound
    if args.torch:
        import torch
        from diffusers import UNet2DModel

        src = manifest["source"]["model"]
        unet = UNet2DModel.from_pretrained(src, subfolder="unet").eval()
        tfeeds = {k: torch.from_numpy(v) for k, v in feeds.items()}

        def torch_call():
            with torch.inference_mode():
                return unet(tfeeds["sample"], tfeeds["timestep"], class_labels=tfeeds.get("class_labels")).sample.numpy()

        calls["PyTorch eager UNet (reference)"] = torch_call
    times = {k: [] for k in calls}
    errs = {}
    for k, f in calls.items():  # warm-up and correctness
        errs[k] = float(np.abs(f() - ref_out).max())
    for _ in range(args.runs):
        for k, f in calls.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    base = np.median(times["cmrt default (ENABLE_ALL, threads=cores, spinning, arena)"])
    print(f"batch {args.batch}, {args.runs} interleaved runs; session creation: default {load_default:.2f} s, "
          f"pre-optimized {load_pre:.2f} s")
    for k, v in times.items():
        med = np.median(v)
        print(f"{k:<60} median {med:.3f} s  (min {min(v):.3f})  x{base / med:.2f} vs default  max|diff| {errs[k]:.1e}")


if __name__ == "__main__":
    main()
