"""Argument types and option groups shared by the commands; the choices come from the
declarations they name (backends, devices, precisions, random streams), never from literals."""
from __future__ import annotations

import argparse

from ..engine.io_spec import PRECISIONS
from ..engine.models import DEFAULT_MODEL
from ..runtime.backends.selection import BACKENDS, DEVICES
from ..runtime.noise import RNGS


def comma_list(cast, what: str):
    """An argparse type for comma-separated values, e.g. comma_list(int, "integers such as 17,0")."""

    def parse(text: str) -> list:
        try:
            return [cast(v) for v in text.replace(" ", "").split(",") if v != ""]
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r}") from e

    return parse


def positive_int(text: str) -> int:
    """An argparse type for counts and sizes (--batch, --cols, --scale, --patch-size, ...): an integer >= 1,
    so that 0 is an error rather than a silent default."""
    try:
        value = int(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from e
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


int_list = comma_list(int, "integers such as 17,0")
float_list = comma_list(float, "numbers such as 5.38,2.24")


def add_model(p, help_text: str = "engine folder, or a model name (its engine is built if missing)") -> None:
    p.add_argument("model", nargs="?", default=DEFAULT_MODEL, help=f"{help_text} (default {DEFAULT_MODEL})")


def add_runtime(p, precision_help: str | None = None) -> None:
    """--device, --backend, --precision: what `cmrt.load` takes."""
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.add_argument("--backend", default="auto", choices=BACKENDS, help="see `cmrt doctor`")
    p.add_argument("--precision", choices=PRECISIONS + ("bf16",),
                   help=precision_help or "graph precision (default: fp16 on a GPU, else fp32; bf16 with --backend openvino)")


def add_rng(p, help_text: str = "'torch': the images diffusers makes with generator=torch.manual_seed(SEED)") -> None:
    p.add_argument("--rng", choices=RNGS, default="numpy", help=help_text)
