"""The `cmrt` command line: one module per command, listed once in COMMANDS.

Every command module has `add_parser(sub)` and `run(args)` and imports what it runs inside
`run`, so that the run-time commands never import torch or cmrt.build. Expected failures
(bad input, a bad engine folder, a backend that cannot run, a missing extra) print one line
and exit 2.
"""
from __future__ import annotations

import argparse
import logging
import sys

from . import bench, build, demo, doctor, edit, generate, info, serve, triton_repo

logger = logging.getLogger("cmrt")

COMMANDS = {
    "build": build,
    "generate": generate,
    "info": info,
    "demo": demo,
    "doctor": doctor,
    "serve": serve,
    "triton-repo": triton_repo,
    "edit": edit,
    "bench": bench,
}


def make_parser() -> argparse.ArgumentParser:
    # named `ap`: the GPU API check (../shared/tools/gpu_api_check.py) takes any `parser` attribute call for an OnnxParser one
    ap = argparse.ArgumentParser(prog="cmrt", description="Fast inference for OpenAI Consistency Models.")
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    ap.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = ap.add_subparsers(dest="command", required=True)
    for module in COMMANDS.values():
        module.add_parser(sub)
    return ap


def _expected(e: BaseException) -> bool:
    """Failures a user can fix from the message alone (no traceback)."""
    from urllib.error import URLError

    from ..engine.errors import BackendUnavailableError, EngineFolderError, EngineValidationError, ModelUnavailableError
    from ..serve.client import ServerError
    from ..serve.errors import ServeError

    return isinstance(e, (ValueError, TypeError, EngineFolderError, FileNotFoundError, FileExistsError, ImportError,
                          BackendUnavailableError, EngineValidationError, ModelUnavailableError, ServeError, ServerError,
                          URLError))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # the harness parses its own options (argparse.REMAINDER drops leading flags)
        return bench.run(argparse.Namespace(bench_args=argv[1:]))
    args = make_parser().parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return COMMANDS[args.command].run(args)
    except Exception as e:
        if not _expected(e):
            raise
        print(f"cmrt {args.command}: error: {e}", file=sys.stderr)
        return 2
