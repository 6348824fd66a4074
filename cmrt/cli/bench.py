"""`cmrt bench ...`: the latency benchmark against diffusers (benchmarks/latency, in a source checkout).

The harness is not part of the wheel: it lives in the repository's benchmarks/ folder, and
runs in its own process with that checkout on its path.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HELP = "latency benchmark against diffusers (from a source checkout; `cmrt bench --help`)"


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help=HELP, add_help=False)
    p.add_argument("bench_args", nargs="...")


def checkout() -> Path:
    repo = Path(__file__).resolve().parents[2]
    if not (repo / "benchmarks" / "latency" / "run.py").is_file():
        raise FileNotFoundError("cmrt bench runs from a cmrt source checkout (benchmarks/latency not found beside cmrt/)")
    return repo


def run(args) -> int:
    repo = checkout()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(repo), env.get("PYTHONPATH", "")) if p)
    return subprocess.call([sys.executable, "-m", "benchmarks.latency.run", *args.bench_args], env=env)
