"""The manifest's schema: the type and range of every field the runtime reads.

An engine folder is untrusted data (copied from elsewhere, edited, truncated, crafted), so
`check_manifest_data` checks it completely before anything else reads a field: a value of
the wrong type, out of range or missing is an `EngineFolderError` that names the field, and
not a TypeError, KeyError or a huge allocation later on. Fields the runtime never reads
(timings, build facts) may be anything: they are still covered by the manifest's digest.

The schema is data (the `Spec` classes below) so that one reading of it says what a folder
may contain; the limits are far above any real model and far below what would exhaust memory.
Numpy only: it runs in the runtime and in the Triton Python model with nothing else.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from .io_spec import PRECISIONS, STEP_COEF_ORDER, io_spec
from .options import WINOGRAD_MODES, BuildOptions
from .scheduler_config import SCHEDULER_CLASS, MAX_TRAIN_TIMESTEPS, check_scheduler_config
from .unet_config import MAX_SAMPLE_SIZE
from .winograd import LEGACY_TILE, PER_CALL_CHOICES, TILES, per_call_inputs

# Limits on what a manifest may describe (the UNet's and the scheduler's are the build's own:
# unet_config and scheduler_config, so a folder that builds is a folder that loads).
MAX_CHANNELS = 4  # images: 1 (grey), 3 (RGB), 4
MAX_CLASSES = 1_000_000  # labels are drawn below it; nothing of this size is allocated
MAX_BATCH = 4096
MAX_FILE_BYTES = 1 << 44  # 16 TiB
MAX_FILES = 64
MAX_FILTERS = 10_000  # Winograd filters (LSUN-256 has 70)
MAX_FILTER_DIM = 1 << 16
MAX_TEXT = 4096

# A file of the folder: a plain name in the folder itself (the build writes nothing else),
# so `..`, absolute paths and subfolders cannot be expressed at all.
FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,254}")
SHA256 = re.compile(r"[0-9a-f]{64}")


class SchemaError(Exception):
    """A field does not match the schema: `where` is its dotted path, `problem` what is wrong."""

    def __init__(self, where: str, problem: str):
        super().__init__(f"{where}: {problem}")
        self.where = where
        self.problem = problem


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _type_name(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__
    )


class Spec:
    def check(self, value: Any, where: str) -> None:  # pragma: no cover - interface
        raise NotImplementedError


@dataclass(frozen=True)
class Int(Spec):
    lo: int
    hi: int

    def check(self, value, where):
        if isinstance(value, bool) or not isinstance(value, int):
            raise SchemaError(where, f"must be an integer, got {_type_name(value)} {_show(value)}")
        if not self.lo <= value <= self.hi:
            raise SchemaError(where, f"must be in {self.lo}..{self.hi}, got {_show(value)}")


@dataclass(frozen=True)
class Num(Spec):
    """A finite number; `positive` excludes 0 (and everything below it)."""

    lo: float = 0.0
    hi: float = 1e30
    positive: bool = False

    def check(self, value, where):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SchemaError(where, f"must be a number, got {_type_name(value)} {_show(value)}")
        if not math.isfinite(value):
            raise SchemaError(where, f"must be finite, got {_show(value)}")
        if value < self.lo or value > self.hi or (self.positive and value <= 0):
            low = f"> {self.lo}" if self.positive else f">= {self.lo}"
            raise SchemaError(where, f"must be {low} and <= {self.hi:g}, got {_show(value)}")


@dataclass(frozen=True)
class Str(Spec):
    choices: tuple[str, ...] | None = None
    pattern: re.Pattern | None = None
    max_len: int = MAX_TEXT

    def check(self, value, where):
        if not isinstance(value, str):
            raise SchemaError(where, f"must be a string, got {_type_name(value)} {_show(value)}")
        if self.choices is not None and value not in self.choices:
            raise SchemaError(where, f"must be one of {list(self.choices)}, got {_show(value)}")
        if len(value) > self.max_len:
            raise SchemaError(where, f"is longer than {self.max_len} characters")
        if self.pattern is not None and not self.pattern.fullmatch(value):
            raise SchemaError(where, f"has the wrong form, got {_show(value)}")


@dataclass(frozen=True)
class Bool(Spec):
    def check(self, value, where):
        if not isinstance(value, bool):
            raise SchemaError(where, f"must be true or false, got {_type_name(value)} {_show(value)}")


@dataclass(frozen=True)
class Nullable(Spec):
    inner: Spec

    def check(self, value, where):
        if value is not None:
            self.inner.check(value, where)


@dataclass(frozen=True)
class Either(Spec):
    options: tuple[Spec, ...]
    what: str

    def check(self, value, where):
        for spec in self.options:
            try:
                spec.check(value, where)
                return
            except SchemaError:
                pass
        raise SchemaError(where, f"must be {self.what}, got {_show(value)}")


def _check_container(value, where: str, kind: type, min_len: int, max_len: int) -> None:
    if not isinstance(value, kind):
        raise SchemaError(where, f"must be {_type_name(kind())}, got {_type_name(value)} {_show(value)}")
    if not min_len <= len(value) <= max_len:
        raise SchemaError(where, f"must have {min_len}..{max_len} entries, got {len(value)}")


@dataclass(frozen=True)
class ListOf(Spec):
    item: Spec
    min_len: int = 0
    max_len: int = 64

    def check(self, value, where):
        _check_container(value, where, list, self.min_len, self.max_len)
        for i, v in enumerate(value):
            self.item.check(v, f"{where}[{i}]")


@dataclass(frozen=True)
class Obj(Spec):
    """An object with these fields; `optional` ones may be absent; other keys are allowed (and unread)."""

    required: Mapping[str, Spec]
    optional: Mapping[str, Spec] = field(default_factory=dict)

    def check(self, value, where):
        if not isinstance(value, dict):
            raise SchemaError(where, f"must be an object, got {_type_name(value)} {_show(value)}")
        for key, spec in self.required.items():
            if key not in value:
                raise SchemaError(_join(where, key), "is missing")
            spec.check(value[key], _join(where, key))
        for key, spec in self.optional.items():
            if key in value:
                spec.check(value[key], _join(where, key))


@dataclass(frozen=True)
class MapOf(Spec):
    key: Str
    value: Spec
    min_len: int = 0
    max_len: int = 64

    def check(self, value, where):
        _check_container(value, where, dict, self.min_len, self.max_len)
        for k, v in value.items():
            self.key.check(k, f"{where} key {_show(k)}")
            self.value.check(v, _join(where, k))


FileName = Str(pattern=FILE_NAME, max_len=255)
Digest = Str(pattern=SHA256, max_len=64)
Precision = Str(choices=PRECISIONS)
Text = Str()
Finite = Num(lo=-1e30)
Error = Num(lo=0.0)
BatchSize = Int(1, MAX_BATCH)

IO_TENSOR = Obj({
    "name": Text,
    "dtype": Str(choices=("float32", "float16", "int64")),
    "shape": ListOf(Either((Str(choices=("batch",)), Int(1, MAX_SAMPLE_SIZE)), "'batch' or a positive integer"), 1, 8),
})
VALIDATION = Obj({"max_abs_error": Error}, {"tolerance": Num(positive=True)})
WINOGRAD_FILTER = Obj(
    {
        "input": Text,
        "offset": Int(0, MAX_FILE_BYTES),
        "length": Int(0, MAX_FILE_BYTES),
        "shape": ListOf(Int(1, MAX_FILTER_DIM), 4, 4),
    },
    {
        "u_offset": Int(0, MAX_FILE_BYTES),  # where its transformed filter starts in the stored filters file
        "tile": Int(2, 4),  # m of the F(m x m, 3x3) it was rewritten with; absent: 4 (cmrt/engine/winograd.py)
        # transformed per call: the [k0, k1) output-channel parts the graph reads its 3x3 weights in
        "chunks": ListOf(ListOf(Int(0, MAX_FILTER_DIM), 2, 2), 1, MAX_FILTER_DIM),
    },
)
# A graph's step graph (cmrt/build/step_graph.py): the graph with one consistency step around it.
STEP = Obj({
    "file": FileName,
    "from": FileName,
    "coefs": ListOf(Str(choices=STEP_COEF_ORDER), len(STEP_COEF_ORDER), len(STEP_COEF_ORDER)),
    "inputs": ListOf(IO_TENSOR, 1, 8),
    "outputs": ListOf(IO_TENSOR, 1, 2),
    "validation": VALIDATION,
})
# The batch per ONNX Runtime CPU call the build measured (cmrt/build/cpu_batching.py); its timings are unread.
BATCHING = Obj({"graph": FileName, "chunk": Nullable(BatchSize)})
WINOGRAD = Obj(
    {
        "used": Bool(),
        "reason": Text,
        "file": FileName,
        "rewrite": Obj({"rewritten": Int(0, MAX_FILTERS), "kept": Int(0, MAX_FILTERS)}, {"added_filter_bytes": Int(0, MAX_FILE_BYTES)}),
    },
    {
        "weights_file": FileName,
        "filters": ListOf(WINOGRAD_FILTER, 0, MAX_FILTERS),
        "filters_file": FileName,  # the transformed filters, stored at build time and memory-mapped
        "validation": VALIDATION,
        "step": STEP,
    },
)
ONNX_ENTRY = Obj(
    {
        "file": FileName,
        "external_data": Nullable(FileName),
        "opset": Int(1, 100),
        "inputs": ListOf(IO_TENSOR, 1, 8),
        "outputs": ListOf(IO_TENSOR, 1, 1),
        "validation": VALIDATION,
    },
    {"precision": Precision, "winograd": Nullable(WINOGRAD), "step": STEP, "batching": BATCHING},
)
TENSORRT = Obj(
    {
        "format": Int(0, 1000),
        "file": FileName,
        "precision": Precision,
        "tensorrt_version": Text,
        "onnx_sha256": Nullable(Str(max_len=200)),
        "gpu": Obj({"name": Text, "compute_capability": Text}),
        "profile": Obj({"min": BatchSize, "opt": BatchSize, "max": BatchSize}),
        "options": Obj({"optimization_level": Int(0, 5)}),
        "validation": Obj({"max_abs_error": Error, "tolerance": Num(positive=True)}),
    },
    # entry format 2 (latency profiles); a format-1 entry has none and is rebuilt (cmrt.engine.tensorrt)
    {"profiles": ListOf(Obj({"min": BatchSize, "opt": BatchSize, "max": BatchSize}), 1, 8)},
)
SCHEDULER = Obj(
    {
        "num_train_timesteps": Int(2, MAX_TRAIN_TIMESTEPS),
        "sigma_min": Num(positive=True),
        "sigma_max": Num(positive=True),
        "sigma_data": Num(positive=True),
        "s_noise": Num(lo=0.0),
        "rho": Num(positive=True),
        "clip_denoised": Bool(),
    },
    {"_class_name": Str(choices=(SCHEDULER_CLASS,))},
)
MANIFEST = Obj(
    {
        "build_key": Digest,
        "source": Obj({"model": Text, "kind": Str(choices=("openai", "hub", "local", "builtin"))}, {"revision": Nullable(Text)}),
        "unet": Obj({
            "sample_size": Int(1, MAX_SAMPLE_SIZE),
            "in_channels": Int(1, MAX_CHANNELS),
            "out_channels": Int(1, MAX_CHANNELS),
            "num_class_embeds": Nullable(Int(1, MAX_CLASSES)),
            "parameters": Int(0, 1 << 50),
        }),
        "scheduler": SCHEDULER,
        "build_options": Obj({
            "precisions": ListOf(Precision, 1, len(PRECISIONS)),
            "opset": Int(1, 100),
            "min_batch": BatchSize,
            "opt_batch": BatchSize,
            "max_batch": BatchSize,
            "winograd": Str(choices=WINOGRAD_MODES),
        }, {  # absent in folders built before they were options: the defaults they were built with
            "winograd_min_size": Int(1, 1 << 16),
            "winograd_f4_min_size": Int(1, 1 << 16),
            "winograd_per_call": Str(choices=tuple(PER_CALL_CHOICES)),
            "winograd_band_mib": Int(0, 1 << 20),
        }),
        "onnx": MapOf(Precision, ONNX_ENTRY, 1, len(PRECISIONS)),
        "files": MapOf(FileName, Obj({"sha256": Digest, "bytes": Int(0, MAX_FILE_BYTES)}, {"blake3": Digest}), 1, MAX_FILES),
        "tools": MapOf(Str(max_len=200), Text, 0, 64),
    },
    {"tensorrt": Nullable(TENSORRT), "created_unix": Int(0, 1 << 40)},
)


def opened_files(data: Mapping[str, Any]) -> dict[str, str]:
    """Every file of the folder the runtime may open, by the field that names it (schema-checked data)."""
    out: dict[str, str] = {}
    for precision, entry in data["onnx"].items():
        out[f"onnx.{precision}.file"] = entry["file"]
        if entry["external_data"] is not None:
            out[f"onnx.{precision}.external_data"] = entry["external_data"]
        if entry.get("step"):
            out[f"onnx.{precision}.step.file"] = entry["step"]["file"]
        wino = entry.get("winograd")
        if wino:
            if wino["used"]:
                out[f"onnx.{precision}.winograd.file"] = wino["file"]
                if wino.get("step"):
                    out[f"onnx.{precision}.winograd.step.file"] = wino["step"]["file"]
                if wino.get("filters_file"):
                    out[f"onnx.{precision}.winograd.filters_file"] = wino["filters_file"]
            if wino.get("filters"):
                out[f"onnx.{precision}.winograd.weights_file"] = wino["weights_file"]
    if data.get("tensorrt"):
        out["tensorrt.file"] = data["tensorrt"]["file"]
    return out


def _check_relations(data: Mapping[str, Any]) -> None:
    """What no single field can say: ranges between fields, I/O against the UNet, files listed."""
    u = data["unet"]
    if u["out_channels"] != u["in_channels"]:
        raise SchemaError("unet.out_channels", f"must equal in_channels ({u['in_channels']}): the model denoises its input")
    try:  # the rules `cmrt build` applied to the checkpoint's scheduler config
        check_scheduler_config(data["scheduler"], where="the manifest's scheduler")
    except ValueError as e:
        raise SchemaError("scheduler", str(e).split(": ", 1)[-1]) from None
    b = data["build_options"]
    try:
        known = {f.name for f in fields(BuildOptions)}
        BuildOptions(**{k: (tuple(v) if k == "precisions" else v) for k, v in b.items() if k in known})
    except (TypeError, ValueError) as e:
        raise SchemaError("build_options", str(e)) from None
    if sorted(data["onnx"]) != sorted(b["precisions"]):
        raise SchemaError("onnx", f"has graphs {sorted(data['onnx'])}, build_options.precisions says {sorted(b['precisions'])}")
    want = io_spec(data["unet"])
    for precision, entry in data["onnx"].items():
        for side in ("inputs", "outputs"):
            if entry[side] != want[side]:
                raise SchemaError(f"onnx.{precision}.{side}", "differ from the I/O of the UNet described in `unet`")
        wino = entry.get("winograd")
        measured = [(f"onnx.{precision}.batching", entry.get("batching"), entry["file"])]
        if wino:
            measured.append((f"onnx.{precision}.winograd.batching", wino.get("batching"), wino["file"] if wino["used"] else None))
        for where, rec, graph in measured:  # each graph's record of its own batching, fp32 only
            if rec and (precision != "fp32" or rec["graph"] != graph):
                raise SchemaError(f"{where}.graph", f"must name its own graph, {graph}" if precision == "fp32" and graph
                                  else "only the fp32 graphs the CPU runs have a measured batching")
        if not wino:
            continue
        if precision != "fp32":
            raise SchemaError(f"onnx.{precision}.winograd", "only the fp32 graph has a Winograd variant")
        if wino.get("filters"):
            if "weights_file" not in wino or wino["weights_file"] != entry["external_data"]:
                raise SchemaError(f"onnx.{precision}.winograd.weights_file", "must be the fp32 graph's external_data")
            names = [name for f in wino["filters"] for name in ([n for n, _, _ in per_call_inputs(f)] if "chunks" in f else [f["input"]])]
            if len(set(names)) != len(names):
                raise SchemaError(f"onnx.{precision}.winograd.filters", "feed the same input twice")
            for i, f in enumerate(wino["filters"]):
                k, c, kh, kw = f["shape"]
                if f.get("tile", LEGACY_TILE) not in TILES:
                    raise SchemaError(f"onnx.{precision}.winograd.filters[{i}].tile", f"must be one of {sorted(TILES)}, got {f['tile']}")
                if "chunks" in f:
                    starts, ends = [a for a, _ in f["chunks"]], [b for _, b in f["chunks"]]
                    if starts != [0] + ends[:-1] or ends[-1] != k or any(a >= b for a, b in f["chunks"]):
                        raise SchemaError(f"onnx.{precision}.winograd.filters[{i}].chunks",
                                          f"must split the {k} output channels into consecutive non-empty parts, got {f['chunks']}")
                if (kh, kw) != (3, 3) or f["length"] != k * c * kh * kw * 4:
                    raise SchemaError(
                        f"onnx.{precision}.winograd.filters[{i}]", f"must be float32 [K, C, 3, 3] of length 4*K*C*9, got "
                        f"shape {f['shape']} and length {f['length']}"
                    )
    trt = data.get("tensorrt")
    if trt:
        p = trt["profile"]
        if trt["precision"] not in data["onnx"]:
            raise SchemaError("tensorrt.precision", f"names a graph the folder does not have ({trt['precision']})")
        if not b["min_batch"] <= p["min"] <= p["opt"] <= p["max"] <= b["max_batch"]:
            raise SchemaError("tensorrt.profile", f"must lie in the folder's batch range {b['min_batch']}..{b['max_batch']}")
    for where, name in opened_files(data).items():
        if name not in data["files"]:
            raise SchemaError(where, f"names {name}, which has no checksum in `files`")


def check_manifest_data(data: Any) -> None:
    """Raise SchemaError for the first field of `data` that the runtime could not safely read."""
    MANIFEST.check(data, "")
    _check_relations(data)
