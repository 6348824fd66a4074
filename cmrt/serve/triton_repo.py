"""`cmrt triton-repo`: a standard Triton model repository for an engine folder.

    REPO/
      cmrt/                      Python backend: seeds and labels in, uint8 images out
        config.pbtxt             dynamic batching, instance group, cmrt's serving parameters
        1/model.py               cmrt's runtime (scheduler, noise, postprocess) driving the UNet
        1/cmrt/                  a copy of cmrt's torch-free runtime (no pip install needed)
        1/engine/                the engine folder (unet=inprocess) or its manifest (unet=triton)
      cmrt_unet/                 unet=triton only: the UNet on Triton's ONNX Runtime backend
        config.pbtxt             one instance per GPU (KIND_GPU), dynamic batching
        1/model.onnx             the engine folder's ONNX (and its external data file)

`unet="triton"` (the default) needs nothing but what the official
`nvcr.io/nvidia/tritonserver:<yy.mm>-py3` image has (Python backend with numpy, ONNX Runtime
backend). `unet="inprocess"` runs the UNet inside the Python backend through cmrt's own
backends (ONNX Runtime or TensorRT), so that Python needs `onnxruntime` (or cmrt[gpu]);
it is what `cmrt serve` runs on the tritonserver that nvidia-pytriton ships.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ..engine.manifest import MANIFEST_NAME, read_manifest
from .handler import ServeSettings

logger = logging.getLogger(__name__)

MODEL_NAME = "cmrt"
UNET_MODEL_NAME = "cmrt_unet"
TEMPLATE = Path(__file__).parent / "templates" / "model.py"
UNETS = ("triton", "inprocess")
KINDS = ("gpu", "cpu")
# The copied runtime: the package's own modules and whole subpackages (a generation needs nothing
# else), never cmrt.build or cmrt.cli.
VENDORED_MODULES = ("__init__.py", "_version.py")
VENDORED_PACKAGES = ("engine", "runtime", "serve")
TRITON_DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64", "int32": "TYPE_INT32"}


@dataclass
class RepoOptions:
    """How the repository serves. `max_batch` defaults to the engine folder's max batch."""

    unet: str = "triton"
    kind: str = "gpu"
    precision: str | None = None
    max_batch: int | None = None
    max_queue_delay_us: int = 2000
    instances: int | None = None  # cmrt model instances (default: 1 in process, 2 with a Triton UNet)
    settings: ServeSettings = field(default_factory=ServeSettings)
    # in-process UNet: cmrt.load arguments
    backend: str = "auto"
    device: str = "auto"
    threads: int | None = None
    # batch sizes warmed up when the model loads, before it is ready (in process: cmrt.load's
    # `warmup`; with a Triton UNet: Triton's model_warmup of `cmrt_unet`)
    warmup: tuple[int, ...] | None = None

    def __post_init__(self):
        if self.unet not in UNETS:
            raise ValueError(f"unet must be one of {UNETS}, got {self.unet!r}")
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.precision not in (None, "fp32", "fp16"):
            raise ValueError(f"precision must be 'fp32' or 'fp16', got {self.precision!r}")
        if self.max_queue_delay_us < 0:
            raise ValueError(f"max_queue_delay_us must be >= 0, got {self.max_queue_delay_us}")
        if self.instances is not None and self.instances < 1:
            raise ValueError(f"instances must be >= 1, got {self.instances}")
        if self.warmup is not None:
            if isinstance(self.warmup, (str, bytes)) or not all(
                isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in self.warmup
            ):
                raise ValueError(f"warmup must be batch sizes >= 1 such as (1, 4), got {self.warmup!r}")
            self.warmup = tuple(dict.fromkeys(self.warmup))


def _q(s: str) -> str:
    return json.dumps(str(s))


def _parameters(params: dict[str, str]) -> str:
    return "\n".join(
        f"parameters {{ key: {_q(k)} value: {{ string_value: {_q(v)} }} }}" for k, v in sorted(params.items())
    )


def _batching(delay_us: int) -> str:
    # no preferred_batch_size: Triton sends the largest batch that forms within the delay
    return f"dynamic_batching {{ max_queue_delay_microseconds: {delay_us} }}"


def cmrt_config(manifest, opts: RepoOptions, max_batch: int, params: dict[str, str]) -> str:
    """config.pbtxt of the `cmrt` Python-backend model."""
    s = manifest.sample_size
    if opts.unet == "triton":
        instances = opts.instances or 2
        group = f"instance_group [ {{ count: {instances} kind: KIND_CPU }} ]"  # orchestration only
    else:
        instances = opts.instances or 1
        kind = "KIND_GPU" if opts.kind == "gpu" else "KIND_CPU"  # KIND_GPU: `count` instances on every GPU
        group = f"instance_group [ {{ count: {instances} kind: {kind} }} ]"
    return f"""# cmrt {manifest.source.get('model')} ({s}x{s}, {'%d classes' % manifest.num_class_embeds if manifest.num_class_embeds else 'unconditional'})
name: "{MODEL_NAME}"
backend: "python"
max_batch_size: {max_batch}
input [
  {{ name: "seed" data_type: TYPE_INT64 dims: [ 1 ] }},
  {{ name: "class_label" data_type: TYPE_INT64 dims: [ 1 ] optional: true }},
  {{ name: "num_inference_steps" data_type: TYPE_INT32 dims: [ 1 ] optional: true }}
]
output [
  {{ name: "image" data_type: TYPE_UINT8 dims: [ {s}, {s}, 3 ] }}
]
{_batching(opts.max_queue_delay_us)}
{group}
{_parameters(params)}
"""


def _wire_dims(t) -> list[int]:
    """A [B, ...] tensor's per-sample dims as Triton sees them: [1] for a [B] tensor (reshaped to [] for the model)."""
    return [int(d) for d in t["shape"][1:]] or [1]


def model_warmup(io: dict, batch_sizes) -> str:
    """Triton's `model_warmup` for `cmrt_unet`: one zero-filled request per batch size, run when the
    model loads, before it is ready (what the first request would otherwise pay)."""
    if not batch_sizes:
        return ""
    samples = []
    for b in batch_sizes:
        inputs = " ".join(
            f'inputs {{ key: "{t["name"]}" value: {{ data_type: {TRITON_DTYPES[t["dtype"]]} '
            f'dims: [ {", ".join(str(d) for d in _wire_dims(t))} ] zero_data: true }} }}'
            for t in io["inputs"]
        )
        samples.append(f'  {{ name: "batch {b}" batch_size: {b} {inputs} }}')
    return "model_warmup [\n" + ",\n".join(samples) + "\n]\n"


def unet_config(manifest, precision: str, opts: RepoOptions, max_batch: int) -> str:
    """config.pbtxt of `cmrt_unet` on Triton's ONNX Runtime backend: the ONNX's [B, ...] I/O with B as Triton's batch."""
    io = manifest.io_spec(precision)

    def tensor(t):
        dims = _wire_dims(t)
        dtype = TRITON_DTYPES[t["dtype"]]
        if not t["shape"][1:]:  # a [B] tensor: [1] per sample on the wire, [] for the model
            return f'{{ name: "{t["name"]}" data_type: {dtype} dims: [ 1 ] reshape: {{ shape: [ ] }} }}'
        return f'{{ name: "{t["name"]}" data_type: {dtype} dims: [ {", ".join(str(d) for d in dims)} ] }}'

    kind = "KIND_GPU" if opts.kind == "gpu" else "KIND_CPU"
    inputs = ",\n  ".join(tensor(t) for t in io["inputs"])
    outputs = ",\n  ".join(tensor(t) for t in io["outputs"])
    return f"""# the UNet of cmrt {manifest.source.get('model')} ({precision} graph; fp32 inputs and outputs)
name: "{UNET_MODEL_NAME}"
platform: "onnxruntime_onnx"
max_batch_size: {max_batch}
input [
  {inputs}
]
output [
  {outputs}
]
dynamic_batching {{ max_queue_delay_microseconds: 0 }}
# KIND_GPU without a `gpus` list: this many instances on every GPU Triton sees
instance_group [ {{ count: 1 kind: {kind} }} ]
{model_warmup(io, opts.warmup)}"""


def _copy_runtime(dst: Path) -> None:
    """cmrt's torch-free runtime, as whole packages, so that the serving Python needs no cmrt install."""
    src = Path(__file__).resolve().parent.parent
    dst.mkdir(parents=True)
    for name in VENDORED_MODULES:
        shutil.copy2(src / name, dst / name)
    for name in VENDORED_PACKAGES:
        # the repository has its own model.py: the serve package's template is not copied again
        shutil.copytree(src / name, dst / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "templates"))


def write_repository(
    engine_dir: str | os.PathLike,
    out: str | os.PathLike,
    options: RepoOptions | None = None,
    *,
    link_engine: bool = False,
    vendor: bool = True,
    force: bool = False,
) -> Path:
    """Write the repository to `out` (written beside it, then renamed into place).

    `link_engine`: point the model at `engine_dir` by absolute path instead of copying it
    (what `cmrt serve` does with its private repository). `vendor`: copy cmrt's runtime
    into the model folder so that the serving Python needs no cmrt install.
    """
    opts = options or RepoOptions()
    manifest = read_manifest(engine_dir, verify=True)
    engine_dir = Path(engine_dir).resolve()
    out = Path(out)
    max_batch = opts.max_batch or manifest.max_batch
    if not 1 <= max_batch <= manifest.max_batch:
        raise ValueError(
            f"max_batch {max_batch} is outside 1..{manifest.max_batch} (the engine folder's batch range); "
            f"rebuild with `cmrt build ... --max-batch {max_batch}` for more"
        )
    bad = [b for b in opts.warmup or () if not manifest.min_batch <= b <= max_batch]
    if bad:
        raise ValueError(
            f"warmup batch sizes {bad} are outside {manifest.min_batch}..{max_batch} (the batch sizes this repository serves)"
        )
    if out.exists():
        if not force:
            raise FileExistsError(f"{out} exists; pass --force to replace it")
        if not (out / MODEL_NAME / "config.pbtxt").is_file():
            raise ValueError(f"{out} exists and is not a cmrt Triton repository; refusing to replace it")
    precision = opts.precision
    if precision is None:
        precision = "fp16" if opts.kind == "gpu" and "fp16" in manifest.precisions else (
            "fp32" if "fp32" in manifest.precisions else manifest.precisions[0]
        )
    if precision not in manifest.precisions:
        raise ValueError(f"{engine_dir} has no {precision} ONNX (it has {manifest.precisions})")
    # handler checks (default schedule, max_steps) at write time, not at first request
    from ..runtime.pipeline import Pipeline
    from .handler import Handler

    Handler(Pipeline(manifest, backend=None), opts.settings)

    stage = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    try:
        version = stage / MODEL_NAME / "1"
        version.mkdir(parents=True)
        shutil.copy2(TEMPLATE, version / "model.py")
        if vendor:
            _copy_runtime(version / "cmrt")
        params = dict(opts.settings.to_params(), unet=opts.unet, precision=precision)
        if opts.unet == "inprocess":
            params.update(backend=opts.backend, device=opts.device)
            if opts.threads:
                params["threads"] = str(opts.threads)
            if opts.warmup:
                params["warmup"] = ",".join(str(b) for b in opts.warmup)
            if link_engine:
                params["engine_dir"] = str(engine_dir)
            else:
                shutil.copytree(engine_dir, version / "engine", ignore=shutil.ignore_patterns(".*"))
        else:
            params["unet_model"] = UNET_MODEL_NAME
            (version / "engine").mkdir()
            shutil.copy2(engine_dir / MANIFEST_NAME, version / "engine" / MANIFEST_NAME)
            uv = stage / UNET_MODEL_NAME / "1"
            uv.mkdir(parents=True)
            entry = manifest.onnx_entry(precision)
            shutil.copy2(engine_dir / entry["file"], uv / "model.onnx")
            ext = entry.get("external_data")
            for name in ([ext] if isinstance(ext, str) else ext or []):
                shutil.copy2(engine_dir / name, uv / name)
            (stage / UNET_MODEL_NAME / "config.pbtxt").write_text(unet_config(manifest, precision, opts, max_batch))
        (stage / MODEL_NAME / "config.pbtxt").write_text(cmrt_config(manifest, opts, max_batch, params))
        if out.exists():
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    logger.info("wrote Triton model repository %s (unet=%s, %s, max batch %d)", out, opts.unet, precision, max_batch)
    return out
