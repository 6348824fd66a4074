"""`cmrt serve`'s HTTP front and start-up cleanup, without a tritonserver (main env, numpy 2).

The front (`server._Front`) sits on the public HTTP port before tritonserver, whose 2.51 HTTP
server has no body cap and answers bad JSON with 500. Here a stand-in upstream plays tritonserver.
"""
from __future__ import annotations

import gzip
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from cmrt.serve import leftovers
from cmrt.serve import server as srv
from cmrt.serve.front import Front

CAP = 1000


class _Upstream(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list = []

    def log_message(self, *a):
        pass

    def _send(self, status, body: bytes):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self._send(200, b"{}")

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).seen.append((self.path, dict(self.headers), body))
        if self.path == "/slow":
            time.sleep(1.0)
        if self.path == "/parse-error":
            return self._send(500, b'{"error":"Unable to parse \'inputs\': attempt to access JSON non-array as array"}')
        if self.path == "/model-error":
            return self._send(500, b'{"error":"generation failed: boom"}')
        self._send(200, json.dumps({"got": len(body)}).encode())


@pytest.fixture
def front():
    up = ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    up.daemon_threads = True
    threading.Thread(target=up.serve_forever, daemon=True).start()
    _Upstream.seen = []
    f = Front("127.0.0.1", 0, up.server_address[1], CAP)
    f.start()
    yield f
    f.close()
    up.shutdown()
    up.server_close()


def request(front, path, body=b"", headers=None, method="POST", chunked=False):
    c = http.client.HTTPConnection("127.0.0.1", front.port, timeout=10)
    try:
        c.request(method, path, body=body, headers=headers or {}, encode_chunked=chunked)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def padded(n: int) -> bytes:
    """A JSON object of exactly n bytes."""
    base = b'{"inputs": []}'
    return base[:-1] + b" " * (n - len(base)) + b"}"


def test_cap_and_json_checks(front):
    assert request(front, "/v2/models/cmrt/infer", padded(CAP)) == (200, b'{"got": 1000}')
    status, body = request(front, "/v2/models/cmrt/infer", padded(CAP + 1))
    assert status == 413 and b"limit of 1000 bytes" in body and b"--max-request-bytes" in body
    status, _ = request(front, "/x", iter([padded(CAP + 1)]), {"Transfer-Encoding": "chunked"}, chunked=True)
    assert status == 413
    assert request(front, "/x", iter([b'{"a":', b" 1}"]), {"Transfer-Encoding": "chunked"}, chunked=True) == (200, b'{"got": 8}')
    for bad in (b"garbage", b'{"inputs": [', b"[1]", b"\xff\xfe"):
        status, body = request(front, "/v2/models/cmrt/infer", bad)
        assert status == 400 and b"JSON" in body, (bad, body)
    # binary-tensor requests: only the JSON header is parsed
    head = b'{"inputs": []}'
    assert request(front, "/x", head + b"\x00\xff" * 8, {"Inference-Header-Content-Length": str(len(head))})[0] == 200
    assert request(front, "/x", head, {"Inference-Header-Content-Length": "99"})[0] == 400
    assert request(front, "/parse-error", b"{}")[0] == 400  # tritonserver's 500 for malformed request JSON
    assert request(front, "/model-error", b"{}")[0] == 500
    assert request(front, "/v2/health/ready", method="GET") == (200, b"{}")
    assert len(_Upstream.seen) == 5  # nothing refused reached the upstream


def test_compressed_bodies_are_capped_decompressed(front):
    small = json.dumps({"inputs": [], "pad": " " * 100}).encode()
    status, body = request(front, "/x", gzip.compress(small), {"Content-Encoding": "gzip"})
    assert status == 200 and json.loads(body)["got"] == len(small)
    assert "Content-Encoding" not in _Upstream.seen[-1][1] and _Upstream.seen[-1][2] == small
    bomb = gzip.compress(b'{"pad": "' + b" " * 500_000 + b'"}')  # 500 KB in under 1 KB
    assert len(bomb) < CAP
    assert request(front, "/x", bomb, {"Content-Encoding": "gzip"})[0] == 413
    assert request(front, "/x", b"{}", {"Content-Encoding": "br"})[0] == 415


def test_expect_100_continue_is_refused_before_the_body(front):
    with socket.create_connection(("127.0.0.1", front.port), timeout=5) as s:
        s.sendall(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 50000000\r\nExpect: 100-continue\r\n\r\n")
        answer = s.recv(4096)
    assert answer.startswith(b"HTTP/1.1 413"), answer


def test_drain_finishes_requests_in_flight_and_stops_accepting(front):
    results = {}
    t = threading.Thread(target=lambda: results.setdefault("slow", request(front, "/slow", b"{}")))
    t.start()
    idle = http.client.HTTPConnection("127.0.0.1", front.port, timeout=10)  # kept alive between requests
    idle.request("GET", "/v2/health/ready")
    assert idle.getresponse().read() == b"{}"
    time.sleep(0.3)
    assert front.in_flight() == 1
    t0 = time.monotonic()
    cut = front.drain(time.monotonic() + 10)
    assert cut == 0 and 0.3 < time.monotonic() - t0 < 3
    t.join(5)
    assert results["slow"] == (200, b'{"got": 2}')
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", front.port), timeout=2)
    with pytest.raises((http.client.HTTPException, OSError)):  # the idle kept-alive connection was closed
        idle.request("GET", "/v2/health/ready")
        idle.getresponse()


def test_drain_deadline_cuts_off(front):
    results = []

    def slow():
        try:
            results.append(request(front, "/slow", b"{}"))
        except (OSError, http.client.HTTPException) as e:
            results.append(type(e).__name__)

    t = threading.Thread(target=slow)
    t.start()
    time.sleep(0.3)
    assert front.drain(time.monotonic() + 0.2) == 1
    front.close()
    t.join(5)
    assert results and results[0] != (200, b'{"got": 2}'), results


def test_default_cap_fits_the_largest_request():
    from cmrt.serve.client import encode_request
    import numpy as np

    b = 8
    col = np.full((b, 1), np.iinfo(np.int64).min, dtype=np.int64)
    body, _ = encode_request({"seed": col, "class_label": col, "num_inference_steps": col.astype(np.int32)})
    as_json = json.dumps({"inputs": [{"name": n, "datatype": "INT64", "shape": [b, 1], "data": col[:, 0].tolist()}
                                     for n in ("seed", "class_label", "num_inference_steps")],
                          "outputs": [{"name": "image", "parameters": {"binary_data": True}}]}, indent=4).encode()
    cap = srv.default_max_request_bytes(b)
    assert len(body) < len(as_json) < cap < 32 * 1024
    with pytest.raises(ValueError):
        srv.ServeOptions(max_request_bytes=-1)


# --- what killed servers leave ------------------------------------------------------------------
def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _started(argv: list[str]) -> subprocess.Popen:
    """A process whose command line is `argv`, returned once /proc shows that command line.

    Popen returns when the child's exec has closed its close-on-exec pipe, which the kernel does
    before it has set up the new program's arguments: for a moment /proc/<pid>/cmdline is empty.
    """
    p = subprocess.Popen(argv)
    deadline = time.monotonic() + 30
    while argv[-1] not in Path(f"/proc/{p.pid}/cmdline").read_bytes().decode(errors="replace"):
        if p.poll() is not None or time.monotonic() > deadline:
            p.kill()
            raise AssertionError(f"the holder process never showed its command line (exit {p.poll()})")
        time.sleep(0.01)
    return p


def test_owner_alive():
    assert leftovers.owner_alive(os.getpid(), time.time())
    assert not leftovers.owner_alive(os.getpid(), time.time() - 3600)  # a pid that started after the file: reused
    assert not leftovers.owner_alive(_dead_pid(), time.time())


def test_remove_stale_removes_only_the_dead_ones(tmp_path):
    tmp, shm = tmp_path / "tmp", tmp_path / "shm"
    tmp.mkdir()
    shm.mkdir()
    dead, me = _dead_pid(), os.getpid()
    named = tmp / f"cmrt-serve-{dead}-named"
    holder = _started([sys.executable, "-c", "import time; time.sleep(60)", str(named), f"cmrt-{dead}-0000beef-"])
    try:
        for d in (f"cmrt-serve-{dead}-abcd", f"cmrt-serve-{me}-abcd", named.name, "cmrt-serve-oldstyle", "other"):
            (tmp / d).mkdir()
            (tmp / d / "f").write_text("x")
        for f in (f"cmrt-{dead}-deadbeef-seg1", f"cmrt-{me}-deadbeef-seg1", f"cmrt-{dead}-0000beef-seg", "cmrt-x-y", "psm_1"):
            (shm / f).write_text("x")
        removed = leftovers.remove_stale(tmp, shm)
        assert sorted(removed) == sorted([str(tmp / f"cmrt-serve-{dead}-abcd"), str(shm / f"cmrt-{dead}-deadbeef-seg1")])
        assert sorted(p.name for p in tmp.iterdir()) == sorted([f"cmrt-serve-{me}-abcd", named.name, "cmrt-serve-oldstyle", "other"])
        assert sorted(p.name for p in shm.iterdir()) == sorted([f"cmrt-{me}-deadbeef-seg1", f"cmrt-{dead}-0000beef-seg", "cmrt-x-y", "psm_1"])
    finally:
        holder.kill()
        holder.wait()
    # once nothing names them, they go too
    assert sorted(leftovers.remove_stale(tmp, shm)) == sorted([str(named), str(shm / f"cmrt-{dead}-0000beef-seg")])
