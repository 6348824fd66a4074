"""`cmrt info DIR`: what an engine folder was built from, its validations and its files (checksums verified)."""
from __future__ import annotations

import json
from pathlib import Path

HELP = "describe an engine folder"


def add_parser(sub) -> None:
    p = sub.add_parser("info", help=HELP)
    p.add_argument("folder", type=Path)
    p.add_argument("--json", action="store_true", help="print the whole manifest")


def run(args) -> int:
    from ..engine.manifest import read_manifest

    m = read_manifest(args.folder, verify=True)
    if args.json:
        print(json.dumps(m.data, indent=2, sort_keys=True))
        return 0
    src, unet, s = m.source, m.unet, m.scheduler_config
    print(f"engine folder   {m.folder}")
    print(f"source          {src['model']} ({src['kind']}, revision {src.get('revision')})")
    classes = f"{unet['num_class_embeds']} classes" if unet["num_class_embeds"] else "unconditional"
    print(f"unet            {unet['parameters'] / 1e6:.1f} M parameters, {unet['sample_size']}x{unet['sample_size']}, {classes}")
    print(f"scheduler       N={s['num_train_timesteps']} sigma {s['sigma_min']}..{s['sigma_max']}")
    print(f"batch range     {m.min_batch}..{m.max_batch} (opt {m.opt_batch})")
    for prec in m.precisions:
        e = m.onnx_entry(prec)
        v = e["validation"]
        print(f"onnx {prec:<10} {e['file']}  opset {e['opset']}  max abs error vs PyTorch {v['max_abs_error']:.2e}")
        _print_step(e.get("step"))
        _print_batching(e.get("batching"))
        w = e.get("winograd")
        if w:
            rw = w["rewrite"]
            extra = f", +{rw['added_filter_bytes'] / 1e6:.0f} MB of filters in memory" if "added_filter_bytes" in rw else ""
            per_call = sum("chunks" in f for f in w.get("filters", []))
            extra += f", {per_call} filters transformed per call" if per_call else ""
            extra += f", {rw['in_row_bands']} in bands of rows" if rw.get("in_row_bands") else ""
            tiles = ", ".join(f"{n} {t}" for t, n in rw.get("rewritten_per_tile", {}).items())
            state = (f"{w['file']} ({rw['rewritten']} of {rw['rewritten'] + rw['kept']} convs{': ' + tiles if tiles else ''}{extra})"
                     if w["used"] else "not used")
            err = f", max abs error vs PyTorch {w['validation']['max_abs_error']:.2e}" if "validation" in w and w["used"] else ""
            print(f"cpu winograd    {state}: {w['reason']}{err}")
            _print_step(w.get("step"))
            _print_batching(w.get("batching"))
    t = m.tensorrt
    if t:
        v, g, pr = t["validation"], t["gpu"], t["profile"]
        profiles = " + ".join(f"{p['min']}/{p['opt']}/{p['max']}" for p in t.get("profiles") or [pr])
        level = t.get("options", {}).get("optimization_level")
        print(
            f"tensorrt        {t['file']}  TensorRT {t['tensorrt_version']}, {g['name']} (cc {g['compute_capability']}), "
            f"batch {pr['min']}..{pr['max']} in profiles {profiles} (min/opt/max), optimization level {level}, "
            f"max abs error vs ONNX Runtime {v['max_abs_error']:.2e} (tol {v['tolerance']})"
        )
    for name, rec in sorted(m.files.items()):
        print(f"file            {name}  {rec['bytes'] / 1e6:.1f} MB  sha256 {rec['sha256'][:16]}… (verified)")
    print("tools           " + ", ".join(f"{k} {v}" for k, v in sorted(m.tools.items())))
    return 0


def _print_step(step) -> None:
    """One line for a graph's step graph (cmrt/build/step_graph.py), where it has one."""
    if step:
        print(f"  step graph    {step['file']}  max abs error vs the numpy step {step['validation']['max_abs_error']:.2e}")


def _print_batching(rec) -> None:
    """One line for a CPU graph's measured batch per call (cmrt/build/cpu_batching.py), where it has one."""
    if rec:
        per_image = ", ".join(f"{ms:.1f} ms at {n}" for n, ms in rec.get("per_image_ms", {}).items())
        chunk = f"{rec['chunk']} image{'s' if rec['chunk'] > 1 else ''} per call" if rec["chunk"] else "the whole batch per call"
        print(f"  cpu batching  {chunk}: {rec['reason']}" + (f" (per image: {per_image})" if per_image else ""))
