"""The step graph: an exported UNet graph with one whole consistency step around it.

Why: on a GPU, every step of the numpy loop is a host round trip (copy in, run, synchronize,
copy out, numpy), so the GPU idles between UNet calls. With the step's arithmetic in the
graph, a backend runs a step from device-resident inputs, and a multi-step generation needs
the host only at its start and end. The numpy scheduler still computes every constant and
draws every noise tensor, in diffusers' order: the graph only does the per-step arithmetic.

The graph is the UNet graph, unchanged, plus six nodes, in the numpy path's float32
operations and order (scheduler.before_unet / after_unet):

    sample = x / divisor                 (a division, like numpy's: not x * (1 / divisor))
    skip   = x * c_skip
    F      = UNet(sample, timestep, class_labels)
    x_next = Min(Max(F * c_out + skip, clip_min), clip_max) + noise_term

so generation through it gives the numpy path's images, bit for bit where the backend
computes float32 as IEEE does. It also outputs F, so that one session serves the plain UNet
calls (zero-shot editing) without a second copy of the weights in memory.

It is made by ONNX surgery on the exported graph, loaded without its weights: the
initializers keep pointing into the graph's external data file, so the folder holds the
weights once (like the Winograd CPU graph, which gets a step graph of its own the same way).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..engine.atomic import write_bytes_atomic
from ..engine.io_spec import (
    CLASS_LABELS,
    NOISE_TERM,
    OUTPUT,
    SAMPLE,
    STEP_COEF_ORDER,
    STEP_COEFS,
    STEP_OUTPUT,
    STEP_TOLERANCE,
    STEP_X,
    TIMESTEP,
    sample_inputs,
    step_feeds,
    step_io_spec,
)

logger = logging.getLogger(__name__)

# The schedule the build validates on: the first two steps of a 2-step run (sigma_max, then a
# mid sigma with a real renoising term), at these batch sizes.
VALIDATION_STEPS = 2
VALIDATION_BATCHES = (1, 2)


def step_file_name(graph_file: str) -> str:
    """`unet.fp32.onnx` -> `unet.fp32.step.onnx`; `unet.fp32.winograd.onnx` -> `unet.fp32.winograd.step.onnx`."""
    if not graph_file.endswith(".onnx"):
        raise ValueError(f"expected an .onnx file name, got {graph_file!r}")
    return graph_file[: -len(".onnx")] + ".step.onnx"


def add_step(model) -> None:
    """Turn an exported UNet ModelProto into its step graph, in place (see the module docstring).

    Only graph inputs, outputs and new nodes change; initializers are never read, so `model`
    may be loaded without its external data.
    """
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    by_name = {i.name: i for i in graph.input}
    outputs = {o.name: o for o in graph.output}
    taken = {STEP_X, STEP_COEFS, NOISE_TERM, STEP_OUTPUT} & (set(by_name) | set(outputs))
    if taken:
        raise ValueError(f"the graph already has tensors named {sorted(taken)}: is it a step graph already?")
    if SAMPLE not in by_name or OUTPUT not in outputs:
        raise ValueError(f"not a cmrt UNet graph: needs input {SAMPLE!r} and output {OUTPUT!r}")
    sample = by_name[SAMPLE]
    kept = [i for i in graph.input if i.name != SAMPLE]
    x = helper.make_tensor_value_info(STEP_X, TensorProto.FLOAT, None)
    x.type.CopyFrom(sample.type)
    term = helper.make_tensor_value_info(NOISE_TERM, TensorProto.FLOAT, None)
    term.type.CopyFrom(sample.type)
    coefs = helper.make_tensor_value_info(STEP_COEFS, TensorProto.FLOAT, [len(STEP_COEF_ORDER)])
    graph.ClearField("input")
    graph.input.extend([x, *kept, coefs, term])

    p = "cmrt_step"
    scalar = {}
    pre = []
    for i, name in enumerate(STEP_COEF_ORDER):  # each constant as a 0-d tensor, broadcast by the ops
        index = f"{p}/index_{name}"
        graph.initializer.append(numpy_helper.from_array(np.array(i, dtype=np.int64), index))
        scalar[name] = f"{p}/{name}"
        pre.append(helper.make_node("Gather", [STEP_COEFS, index], [scalar[name]], axis=0))
    pre += [
        helper.make_node("Div", [STEP_X, scalar["divisor"]], [SAMPLE]),
        helper.make_node("Mul", [STEP_X, scalar["c_skip"]], [f"{p}/skip"]),
    ]
    post = [
        helper.make_node("Mul", [OUTPUT, scalar["c_out"]], [f"{p}/scaled_output"]),
        helper.make_node("Add", [f"{p}/scaled_output", f"{p}/skip"], [f"{p}/denoised_raw"]),
        helper.make_node("Max", [f"{p}/denoised_raw", scalar["clip_min"]], [f"{p}/clipped_below"]),
        helper.make_node("Min", [f"{p}/clipped_below", scalar["clip_max"]], [f"{p}/denoised"]),
        helper.make_node("Add", [f"{p}/denoised", NOISE_TERM], [STEP_OUTPUT]),
    ]
    for j, n in enumerate(pre + post):
        n.name = f"{p}/{n.op_type}_{j}"
    nodes = list(graph.node)
    graph.ClearField("node")
    graph.node.extend(pre + nodes + post)  # still topologically sorted: pre feeds the UNet, post reads it
    x_next = helper.make_tensor_value_info(STEP_OUTPUT, TensorProto.FLOAT, None)
    x_next.type.CopyFrom(outputs[OUTPUT].type)
    unet_out = outputs[OUTPUT]
    graph.ClearField("output")
    graph.output.extend([x_next, unet_out])


def write_step_graph(folder: Path, graph_file: str) -> str:
    """Write the step graph of `folder/graph_file` beside it (sharing its weight file); returns its name."""
    import onnx

    model = onnx.load(str(folder / graph_file), load_external_data=False)
    add_step(model)
    model.doc_string = (model.doc_string + "; " if model.doc_string else "") + "with one consistency step (cmrt step graph)"
    name = step_file_name(graph_file)
    write_bytes_atomic(folder / name, model.SerializeToString())
    del model
    onnx.checker.check_model(str(folder / name))
    return name


def validation_cases(unet: Mapping[str, Any], scheduler: Mapping[str, Any], batches: Sequence[int] = VALIDATION_BATCHES):
    """(step index, batch, step constants, step graph feeds) for a validation: the steps of a real
    schedule, samples at each step's sigma, labels, a scaled renoising term, at `batches`
    (a TensorRT engine is validated at its own). Seeded: repeatable."""
    from ..runtime import scheduler as cm

    cfg = cm.SchedulerConfig.from_dict(dict(scheduler))
    schedule = cm.make_schedule(cfg, num_inference_steps=VALIDATION_STEPS)
    plan = cm.step_constants(schedule, cfg)
    for b in batches:
        arrays = cm.step_arrays(plan, b, clip=cfg.clip_denoised)
        for i, k in enumerate(plan):
            base = sample_inputs(unet, scheduler, b, seed=3000 + 10 * b + i)
            rng = np.random.default_rng(4000 + 10 * b + i)
            x = (base[SAMPLE] * np.float32(schedule.sigmas[i])).astype(np.float32)
            z = rng.standard_normal(x.shape, dtype=np.float32)
            term = cm.scale_noise(z, k.noise_coef, cfg)
            yield i, b, k, step_feeds(x, arrays.timesteps[i], base.get(CLASS_LABELS), arrays.coefs[i], term)


def _session(path: Path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort, ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def validate_step_graph(
    folder: Path,
    step_file: str,
    plain_file: str,
    unet: Mapping[str, Any],
    scheduler: Mapping[str, Any],
    extra_feeds: dict[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Run the step graph in ONNX Runtime (CPU) against the numpy step on its plain graph's
    output; raise if `x_next` or its UNet output F is off by more than STEP_TOLERANCE."""
    from ..runtime import scheduler as cm

    cfg = cm.SchedulerConfig.from_dict(dict(scheduler))
    cases = list(validation_cases(unet, scheduler))
    extra = extra_feeds or {}
    # one session at a time: a real-size model's weights are not held twice
    ort, plain = _session(folder / plain_file)
    expected = []
    for _, _, k, f in cases:
        scaled = np.empty_like(f[STEP_X])
        skip = cm.before_unet(f[STEP_X].copy(), k, scaled)
        inputs = {SAMPLE: scaled, TIMESTEP: f[TIMESTEP], **({CLASS_LABELS: f[CLASS_LABELS]} if CLASS_LABELS in f else {})}
        model_output = plain.run([OUTPUT], {**inputs, **extra})[0]
        expected.append((model_output.copy(), cm.after_unet(model_output, skip, k, np.empty_like(skip), f[NOISE_TERM],
                                                            cfg.clip_denoised)))
    del plain
    _, step = _session(folder / step_file)
    errors: dict[str, float] = {}
    unet_errors: dict[str, float] = {}
    for (i, b, _, f), (want_f, want) in zip(cases, expected):
        got, got_f = step.run([STEP_OUTPUT, OUTPUT], {**f, **extra})
        key = f"batch {b}, step {i}"
        if got.shape != want.shape or not np.isfinite(got).all():
            raise RuntimeError(f"{step_file}: output shape {got.shape} or non-finite values at {key}, expected {want.shape}")
        errors[key] = float(np.abs(got.astype(np.float64) - want).max())
        unet_errors[key] = float(np.abs(got_f.astype(np.float64) - want_f).max())
    del step
    worst, worst_f = max(errors.values()), max(unet_errors.values())
    if not (worst <= STEP_TOLERANCE and worst_f <= STEP_TOLERANCE):
        raise RuntimeError(
            f"{step_file}: differs from the numpy step on {plain_file}'s output by {worst:.3g} (max abs), its UNet "
            f"output from {plain_file}'s by {worst_f:.3g} (tolerance {STEP_TOLERANCE}); per case: {errors}"
        )
    logger.info("validated %s against the numpy step on %s: max abs error %.3g", step_file, plain_file, worst)
    return {
        "reference": f"numpy scheduler step on {plain_file}'s output (onnxruntime {ort.__version__} CPUExecutionProvider)",
        "schedule": f"the {VALIDATION_STEPS} steps of num_inference_steps={VALIDATION_STEPS}",
        "batch_sizes": list(VALIDATION_BATCHES),
        "max_abs_error": worst,
        "max_abs_error_per_case": errors,
        "unet_output_max_abs_error": worst_f,
        "tolerance": STEP_TOLERANCE,
    }


def add_step_graph(
    folder: Path,
    graph_file: str,
    unet: Mapping[str, Any],
    scheduler: Mapping[str, Any],
    extra_feeds: dict[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Write and validate the step graph of `graph_file`; returns its manifest record.
    `unet` is the manifest's UNet record; `extra_feeds` a Winograd graph's filters."""
    name = write_step_graph(folder, graph_file)
    record = {
        "file": name,
        "from": graph_file,
        "coefs": list(STEP_COEF_ORDER),
        **step_io_spec(unet),
    }
    record["validation"] = validate_step_graph(folder, name, graph_file, unet, scheduler, extra_feeds)
    return record


def add_winograd_step_graph(
    folder: Path, winograd: dict[str, Any], unet: Mapping[str, Any], scheduler: Mapping[str, Any]
) -> dict[str, Any]:
    """The step graph of the Winograd CPU graph (`winograd` is its manifest record): ONNX Runtime
    on the CPU runs generation through it when asked to run a step graph on a Winograd folder."""
    from ..engine.winograd_filters import filters_from_weight_file

    return add_step_graph(folder, winograd["file"], unet, scheduler, extra_feeds=filters_from_weight_file(folder, winograd))
