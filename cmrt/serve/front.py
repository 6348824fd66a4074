"""The HTTP front of `cmrt serve`: a small threaded proxy on the public HTTP port.

HTTP front. Triton 2.51's HTTP front end has no request-size limit (no
`--http-max-input-size`; that option came in later Triton releases: it reads any body
whole, then parses it) and answers a body that is not JSON with HTTP 500. Its Python
backend cannot help: a model sees decoded tensors, never the body, and Triton already
rejects tensors of the wrong shape or batch before the model runs. So `cmrt serve` listens
on the public HTTP port itself (`_Front`, a small threaded proxy in this process) and
forwards to tritonserver on a private loopback port: bodies over `max_request_bytes` get 413
before they are read (decompressed size too, for gzip/deflate bodies), bodies whose JSON
does not parse get 400, and Triton's own 500s for malformed request JSON ("Unable to parse
'...'") become 400. gRPC goes to tritonserver directly and has no cap of cmrt's: Triton
2.51 accepts gRPC messages up to 2 GiB (`--grpc-port 0` turns gRPC off). `max_request_bytes=0`
serves HTTP from tritonserver directly, without the cap or the 400s.
"""
from __future__ import annotations

import errno
import http.client
import json
import logging
import select
import socket
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler

from .errors import ServeError

logger = logging.getLogger(__name__)

_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization", "te",
               "trailer", "transfer-encoding", "upgrade", "content-length", "host"}
# Triton 2.51 answers malformed request JSON with 500 and these messages (http_server.cc)
_TRITON_PARSE_ERRORS = ("failed to parse the request JSON buffer", "Unable to parse '", "Unable to parse request")


class _Conn:
    """One client connection: whether it is inside a request, and its connection to tritonserver."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.busy = False
        self.requests = 0
        self.closing = False
        self.upstream: http.client.HTTPConnection | None = None

    def close_upstream(self) -> None:
        if self.upstream is not None:
            self.upstream.close()
            self.upstream = None


class FrontHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "cmrt"
    timeout = 60.0  # a client that stalls mid-request (or idles on a kept-alive connection) is dropped

    def __init__(self, request, client_address, front: "Front", conn: _Conn):
        self.front = front
        self.conn = conn
        super().__init__(request, client_address, front)

    def log_message(self, format, *args):  # noqa: A002
        logger.debug("front %s: " + format, self.address_string(), *args)

    # --- request boundaries ------------------------------------------------------------
    def parse_request(self):
        with self.front.lock:
            if self.conn.closing:
                self.close_connection = True
                return False
            self.conn.busy = True
        return super().parse_request()

    def handle_one_request(self):
        try:
            super().handle_one_request()
        finally:
            with self.front.lock:
                if self.conn.busy:
                    self.conn.requests += 1
                self.conn.busy = False
                self.front.idle.notify_all()
            if self.front.draining:
                self.close_connection = True

    def handle_expect_100(self):
        length = self._content_length()
        if length is not None and length > self.front.max_bytes:
            self._too_large(length)
            return False
        return super().handle_expect_100()

    # --- replies --------------------------------------------------------------------------
    def _reply(self, status: int, body: bytes, headers: list[tuple[str, str]] = (), close: bool = False) -> None:
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        if close or self.front.draining:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status: int, message: str, close: bool = False) -> None:
        self._reply(status, json.dumps({"error": message}).encode(), [("Content-Type", "application/json")], close)

    def _too_large(self, size: int | None) -> None:
        what = f" ({size} bytes)" if size is not None else ""
        self._error(413, f"request body{what} over this server's limit of {self.front.max_bytes} bytes "
                         "(cmrt serve --max-request-bytes)", close=True)
        self.wfile.flush()
        # read and drop what the client still sends, briefly, so that it sees the 413 and not a reset
        try:
            self.connection.shutdown(socket.SHUT_WR)
            end = time.monotonic() + 2.0
            buf = memoryview(bytearray(65536))
            while time.monotonic() < end:
                self.connection.settimeout(max(0.01, end - time.monotonic()))
                if not self.connection.recv_into(buf):
                    break
        except OSError:
            pass

    # --- bodies ---------------------------------------------------------------------------
    def _content_length(self) -> int | None:
        v = self.headers.get("Content-Length")
        if v is None:
            return None
        try:
            n = int(v)
        except ValueError:
            return -1
        return n if n >= 0 else -1

    def _read_body(self) -> bytes | None:
        """The body, decoded from chunked transfer and gzip/deflate; None once an error was sent."""
        cap = self.front.max_bytes
        te = self.headers.get("Transfer-Encoding", "").strip().lower()
        if te and te != "identity":
            if te != "chunked":
                self._error(501, f"Transfer-Encoding {te!r} is not supported", close=True)
                return None
            body = bytearray()
            while True:
                line = self.rfile.readline(1024)
                try:
                    size = int(line.split(b";")[0].strip(), 16)
                except ValueError:
                    self._error(400, "bad chunked body", close=True)
                    return None
                if size == 0:
                    while self.rfile.readline(65537).strip():  # trailers
                        pass
                    break
                if len(body) + size > cap:
                    self._too_large(None)
                    return None
                chunk = self.rfile.read(size)
                self.rfile.readline(3)
                if len(chunk) < size:
                    self.close_connection = True
                    return None
                body += chunk
            body = bytes(body)
        else:
            n = self._content_length()
            if n == -1:
                self._error(400, "bad Content-Length", close=True)
                return None
            n = n or 0
            if n > cap:
                self._too_large(n)
                return None
            body = self.rfile.read(n) if n else b""
            if len(body) < n:  # the client went away
                self.close_connection = True
                return None
        encoding = self.headers.get("Content-Encoding", "").strip().lower()
        if encoding in ("gzip", "deflate"):
            try:
                d = zlib.decompressobj(31 if encoding == "gzip" else 15)
                body = d.decompress(body, cap + 1)
                if len(body) > cap or d.unconsumed_tail:
                    self._too_large(None)
                    return None
                body += d.flush()
            except zlib.error as e:
                self._error(400, f"bad {encoding} body: {e}")
                return None
        elif encoding not in ("", "identity"):
            self._error(415, f"Content-Encoding {encoding!r} is not supported (gzip, deflate)")
            return None
        return body

    def _json_error(self, body: bytes) -> str | None:
        """Why a POST body's JSON part does not parse, or None."""
        if self.command != "POST" or not body:
            return None
        n = self.headers.get("Inference-Header-Content-Length")
        head = body
        if n is not None:
            try:
                n = int(n)
            except ValueError:
                return f"Inference-Header-Content-Length must be an integer, got {n!r}"
            if not 0 <= n <= len(body):
                return f"Inference-Header-Content-Length {n} is outside the body's {len(body)} bytes"
            if n == 0:
                return None
            head = body[:n]
        try:
            doc = json.loads(head)
        except (ValueError, UnicodeDecodeError) as e:
            return f"request body is not valid JSON: {e}"
        if not isinstance(doc, dict):
            return f"request JSON must be an object, got {type(doc).__name__}"
        return None

    # --- forwarding ---------------------------------------------------------------------
    def _proxy(self) -> None:
        if self.front.draining and self.conn.requests > 0:
            self._error(503, "server is shutting down", close=True)
            return
        body = self._read_body()
        if body is None:
            return
        problem = self._json_error(body)
        if problem:
            self._error(400, problem)
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP and k.lower() != "content-encoding"}
        headers["Content-Length"] = str(len(body))
        try:
            status, reason, rheaders, data = self.front.forward(self.conn, self.command, self.path, body, headers)
        except (OSError, http.client.HTTPException) as e:
            self._error(502, f"tritonserver did not answer: {e!r}")
            return
        if status == 500 and any(m.encode() in data[:500] for m in _TRITON_PARSE_ERRORS):
            status = 400  # Triton's 500 for a malformed request: the client's error
        self._reply(status, data, [(k, v) for k, v in rheaders if k.lower() not in _HOP_BY_HOP])

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _proxy


class Front:
    """The public HTTP port: caps bodies, answers bad JSON with 400, forwards to tritonserver."""

    def __init__(self, host: str, port: int, upstream_port: int, max_bytes: int):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind((host, port))
        except OSError as e:
            self.sock.close()
            raise ServeError(f"cannot listen on {host}:{port}: {e.strerror}") from None
        self.sock.listen(256)
        self.port = self.sock.getsockname()[1]
        self.upstream_port = upstream_port
        self.max_bytes = max_bytes
        self.lock = threading.Lock()
        self.idle = threading.Condition(self.lock)
        self.conns: set[_Conn] = set()
        self.draining = False
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._accept_loop, name="cmrt-front", daemon=True)
        self._thread.start()

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                ready, _, _ = select.select([self.sock], [], [], 0.2)
            except (OSError, ValueError):
                return
            if ready and not self._closed.is_set():
                self._accept()

    def _accept(self) -> bool:
        try:
            sock, addr = self.sock.accept()
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as e:
            if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                time.sleep(0.1)
            return False
        conn = _Conn(sock)
        with self.lock:
            self.conns.add(conn)
        threading.Thread(target=self._serve, args=(conn, addr), name="cmrt-front-conn", daemon=True).start()
        return True

    def _serve(self, conn: _Conn, addr) -> None:
        try:
            FrontHandler(conn.sock, addr, self, conn)
        except OSError:
            pass
        except Exception:
            logger.exception("HTTP front: connection from %s failed", addr)
        finally:
            conn.close_upstream()
            try:
                conn.sock.close()
            except OSError:
                pass
            with self.lock:
                self.conns.discard(conn)
                self.idle.notify_all()

    def forward(self, conn: _Conn, method: str, path: str, body: bytes, headers: dict):
        """One request to tritonserver on this connection's upstream (kept alive; retried once if stale)."""
        for attempt in (0, 1):
            reused = conn.upstream is not None
            if conn.upstream is None:
                conn.upstream = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=None)
            try:
                conn.upstream.request(method, path, body=body, headers=headers)
                r = conn.upstream.getresponse()
                data = r.read()
                if r.will_close:
                    conn.close_upstream()
                return r.status, r.reason, r.getheaders(), data
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                conn.close_upstream()
                if not reused or attempt:
                    raise
            except BaseException:
                conn.close_upstream()
                raise
        raise AssertionError("unreachable")

    def in_flight(self) -> int:
        with self.lock:
            return sum(c.busy for c in self.conns)

    def drain(self, deadline: float, abort: threading.Event | None = None) -> int:
        """Stop accepting, let requests in flight finish (until `deadline`); return how many were cut off."""
        with self.lock:
            self.draining = True
        self._closed.set()
        if self._thread is not None:
            self._thread.join(2.0)
        # connections the kernel already accepted are served: their first request was sent before the stop
        try:
            self.sock.setblocking(False)
            while self._accept():
                pass
        except OSError:
            pass
        self.sock.close()
        fresh_until = time.monotonic() + 2.0  # a connection just accepted gets 2 s to send its request
        with self.lock:
            while True:
                now = time.monotonic()
                for c in self.conns:  # kept-alive connections between requests: close them
                    if not c.busy and not c.closing and (c.requests > 0 or now > fresh_until):
                        c.closing = True
                        with suppress_os():
                            c.sock.shutdown(socket.SHUT_RDWR)
                waiting = [c for c in self.conns if c.busy or (c.requests == 0 and not c.closing)]
                if not waiting or now >= deadline or (abort is not None and abort.is_set()):
                    break
                self.idle.wait(0.1)
            cut = sum(c.busy for c in self.conns)
        return cut

    def close(self) -> None:
        """Close every connection (a hard stop, or after `drain`)."""
        self._closed.set()
        with suppress_os():
            self.sock.close()
        with self.lock:
            conns = list(self.conns)
        for c in conns:
            c.closing = True
            with suppress_os():
                c.sock.shutdown(socket.SHUT_RDWR)
            c.close_upstream()


class suppress_os:
    def __enter__(self):
        return self

    def __exit__(self, typ, value, tb):
        return typ is not None and issubclass(typ, OSError)
