"""`cmrt doctor`: what this machine has for cmrt, and which backend `auto` picks and why.

Works everywhere (a CPU-only machine reports 'no GPU' and ONNX Runtime on the CPU); never
imports torch. Optionally describes an engine folder: its TensorRT engine and whether this
machine would reuse, build or rebuild it.
"""
from __future__ import annotations

import json
import platform as _platform
from pathlib import Path
from typing import Any

from .._version import __version__
from ..runtime.backends.selection import BACKENDS, DEVICES

HELP = "show GPU, driver, CUDA, TensorRT, ONNX Runtime, and which backend auto picks and why"


def add_parser(sub) -> None:
    p = sub.add_parser("doctor", help=HELP)
    p.add_argument("folder", nargs="?", type=Path, help="also judge this engine folder's TensorRT engine")
    p.add_argument("--backend", default="auto", choices=BACKENDS)
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args) -> int:
    report = gather(args.folder, backend=args.backend, device=args.device)
    print(json.dumps(report, indent=2, sort_keys=True) if args.json else format_report(report))
    return 0


def gather(folder: str | Path | None = None, backend: str = "auto", device: str = "auto") -> dict[str, Any]:
    """The doctor's report as data (what `cmrt doctor --json` prints)."""
    from ..engine.errors import BackendUnavailableError
    from ..runtime.backends.probe import probe_environment
    from ..runtime.backends.selection import folder_engine_decision, select_backend

    env = probe_environment(tensorrt=True)
    report: dict[str, Any] = {
        "cmrt": __version__,
        "python": _platform.python_version(),
        "platform": _platform.platform(),
        "environment": env.to_dict(),
    }
    data = None
    if folder is not None:
        from ..engine.manifest import read_manifest

        m = read_manifest(folder, verify=False)
        data = m.data
        entry = m.tensorrt
        decision, blocker = folder_engine_decision(data, env)
        report["folder"] = {
            "path": str(m.folder),
            "onnx": m.precisions,
            "batch": [m.min_batch, m.max_batch],
            "tensorrt_engine": None
            if not entry
            else {
                "file": entry.get("file"),
                "gpu": entry.get("gpu"),
                "tensorrt_version": entry.get("tensorrt_version"),
                "profile": entry.get("profile"),
                "profiles": entry.get("profiles"),
                "optimization_level": (entry.get("options") or {}).get("optimization_level"),
                "max_abs_error": (entry.get("validation") or {}).get("max_abs_error"),
            },
            "engine_decision": {"action": decision.action, "reason": decision.reason, "blocked_by": blocker},
        }
    try:
        sel = select_backend(env, backend, device, data)
        report["selection"] = {"request": {"backend": backend, "device": device}, **sel.to_dict()}
    except (BackendUnavailableError, ValueError) as e:
        report["selection"] = {"request": {"backend": backend, "device": device}, "error": str(e)}
    return report


def _mib(n: int | None) -> str:
    return "?" if n is None else f"{n / 2**30:.1f} GiB"


def format_report(r: dict[str, Any]) -> str:
    env = r["environment"]
    lines = [f"cmrt {r['cmrt']}  (Python {r['python']}, {r['platform']})"]

    def row(k: str, v: Any) -> None:
        lines.append(f"  {k:<15} {v}")

    if env["gpus"]:
        for g in env["gpus"]:
            row(f"GPU {g['index']}", f"{g['name']}  compute capability {g['compute_capability']}, {_mib(g['total_memory_bytes'])}"
                f"  (via {env['gpu_source']})")
    else:
        row("GPU", f"none ({env['gpu_error']})")
    row("driver", env["driver_version"] or "-")
    row("CUDA runtime", env["cuda_runtime_version"] or "-")
    row("cuda-python", env["cuda_python_version"] or f"not available ({env['cuda_python_error']})")
    row("TensorRT", env["tensorrt_version"] or f"not available ({env['tensorrt_error']})")
    if env["onnxruntime_version"]:
        row("ONNX Runtime", f"{env['onnxruntime_version']}, providers: {', '.join(env['onnxruntime_providers'])}")
    else:
        row("ONNX Runtime", f"not available ({env['onnxruntime_error']})")
    row("TensorRT path", "usable" if env["tensorrt_usable"] else f"unusable: {env['tensorrt_missing_reason']}")
    row("ORT CUDA path", "usable" if env["ort_cuda_usable"] else f"unusable: {env['ort_cuda_missing_reason']}")
    f = r.get("folder")
    if f:
        row("folder", f"{f['path']}  (ONNX {', '.join(f['onnx'])}; batch {f['batch'][0]}..{f['batch'][1]})")
        e = f["tensorrt_engine"]
        if e:
            gpu = e.get("gpu") or {}
            row("  engine", f"{e['file']}  (TensorRT {e['tensorrt_version']}, {gpu.get('name')} cc {gpu.get('compute_capability')},"
                f" max abs error {e['max_abs_error']})")
        else:
            row("  engine", "no TensorRT engine")
        d = f["engine_decision"]
        row("  on this GPU", f"{d['action']}: {d['reason']}" + (f" — blocked: {d['blocked_by']}" if d["blocked_by"] else ""))
    s = r["selection"]
    req = s["request"]
    label = "auto picks" if req == {"backend": "auto", "device": "auto"} else f"{req['backend']}/{req['device']}"
    if "error" in s:
        row(label, f"error: {s['error']}")
    else:
        row(label, f"{s['backend']} on {s['device']}")
        row("because", s["reason"])
        if s.get("engine_action"):
            row("engine", f"{s['engine_action']}: {s['engine_reason']}")
        for note in ([s["fallback"]] if s.get("fallback") else []) + list(s.get("notes") or []):
            row("note", note)
    return "\n".join(lines)
