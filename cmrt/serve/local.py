"""Helpers for running a tritonserver on this machine: free loopback ports, and a lock.

PyTriton's bundled server runs one instance per machine at a time, so everything that
starts one here (the tests, the serving benchmark) takes the same file lock first.
"""
from __future__ import annotations

import contextlib
import fcntl
import socket
import tempfile
import time
from pathlib import Path
from typing import Iterator

LOCK = Path(tempfile.gettempdir()) / "cmrt-tritonserver.lock"


def free_ports(n: int) -> list[int]:
    """`n` distinct TCP ports free on 127.0.0.1 right now (bound together, then released)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@contextlib.contextmanager
def server_lock(timeout: float = 120.0) -> Iterator[None]:
    """Hold the machine-wide tritonserver lock; TimeoutError after `timeout` seconds."""
    with open(LOCK, "w") as f:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"another tritonserver holds {LOCK}")
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
