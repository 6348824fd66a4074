"""The `cmrt` command line: one module per command, listed once in COMMANDS.

Every command module has `add_parser(sub)` and `run(args)` and imports what it runs inside
`run`, so that the run-time commands never import torch or cmrt.build. Expected failures
(bad arguments or input, a bad engine folder or checkpoint, a backend that cannot run, a
missing extra, a file that cannot be read or written: a full disk, a file-size limit, a
permission) print one line and exit 2; only a bug in cmrt shows a traceback.
"""
from __future__ import annotations

import argparse
import errno
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


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage block), like every other cmrt failure; exit 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def make_parser() -> argparse.ArgumentParser:
    # named `ap`: the GPU API check (../shared/tools/gpu_api_check.py) takes any `parser` attribute call for an OnnxParser one
    ap = _Parser(prog="cmrt", description="Fast inference for OpenAI Consistency Models.")
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    ap.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = ap.add_subparsers(dest="command", required=True)
    for module in COMMANDS.values():
        module.add_parser(sub)
    return ap


# What to do about the file-system errors a user can fix.
_OS_HINTS = {
    errno.ENOSPC: "free some space or write somewhere else",
    errno.EDQUOT: "free some space or write somewhere else",
    errno.EFBIG: "a file-size limit (`ulimit -f`, or the file system's) is in the way",
    errno.EACCES: "check the permissions, or choose another path",
    errno.EPERM: "check the permissions, or choose another path",
    errno.EROFS: "the file system is read-only: choose another path",
}


def _os_error(e: BaseException) -> OSError | None:
    """The OSError behind `e`: itself, or one it was raised from (a library may wrap a failed write)."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def _expected(e: BaseException) -> bool:
    """Failures a user can fix from the message alone (no traceback)."""
    from urllib.error import URLError

    from ..engine.errors import BackendUnavailableError, EngineFolderError, EngineValidationError, ModelUnavailableError
    from ..serve.client import ServerError
    from ..serve.errors import ServeError

    if isinstance(e, (ValueError, TypeError, EngineFolderError, OSError, ImportError, BackendUnavailableError,
                      EngineValidationError, ModelUnavailableError, ServeError, ServerError, URLError)):
        return True
    os_error = _os_error(e)
    return os_error is not None and os_error.errno in _OS_HINTS


def error_line(e: BaseException) -> str:
    """`e` as one line: its message with newlines folded, and what to do for a file-system error."""
    text = " ".join(str(e).split()) or type(e).__name__
    os_error = _os_error(e)
    hint = _OS_HINTS.get(os_error.errno) if os_error is not None else None
    if hint and os_error is not e:  # a library's error about a failed write: say which
        text += f" ({' '.join(str(os_error).split())})"
    return f"{text}; {hint}" if hint else text


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
        print(f"cmrt {args.command}: error: {error_line(e)}", file=sys.stderr)
        return 2
