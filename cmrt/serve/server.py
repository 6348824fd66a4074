"""`cmrt serve`: Triton Inference Server (the build nvidia-pytriton ships) serving one engine folder.

The server process is the `tritonserver` binary and Python backend that the
`nvidia-pytriton` wheel carries. It serves a private model repository (see
`triton_repo`) whose Python-backend `model.py` runs cmrt's runtime in process. PyTriton's
own `Triton.bind` is not used for the model: its proxy can only fail a whole dynamic batch,
with HTTP 500 and a traceback, while a bad request here must get a 400 naming the problem
without failing the requests batched with it. The Python backend answers per request.

Processes. `cmrt serve` (this process) starts a small supervisor (`SUPERVISOR`, stdlib
only, its own session) that starts tritonserver in a session of its own; the Python
backend stubs are tritonserver's children, in its process group. The supervisor holds the
read end of a pipe whose write end only this process holds: when this process dies, however
it dies (SIGKILL included), the pipe reads EOF and the supervisor kills tritonserver's whole
group and removes the workspace and shared memory. tritonserver also gets
PR_SET_PDEATHSIG=SIGKILL towards the supervisor, so killing the supervisor ends it too.
What a harder death leaves (all of them killed at once, a power cut) the next start removes
(`leftovers.remove_stale`).

HTTP front: `front.Front` (a small threaded proxy on the public HTTP port, before
tritonserver on a private loopback port): request-size cap and 400s for bad JSON, see there.

Stopping. On SIGTERM/SIGINT the front stops accepting connections, finishes every request
in flight (new requests on kept-alive connections get 503), then tritonserver gets SIGTERM
and finishes what gRPC has in flight: all within `drain_timeout` (tritonserver's
`--exit-timeout-secs` is as long). A second signal stops at once.
"""
from __future__ import annotations

import logging
import math
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ServeError
from .front import Front, suppress_os
from .handler import ServeSettings
from .leftovers import SHM_DIR, WORKSPACE_PREFIX, remove_stale

logger = logging.getLogger(__name__)



def pytriton_paths() -> dict[str, Path]:
    """The tritonserver binary, Python backend, stub and libraries inside the nvidia-pytriton wheel."""
    import importlib.util

    # located, not imported: only the wheel's files are used (and pytriton's Python API pins numpy < 2)
    try:
        spec = importlib.util.find_spec("pytriton")
    except ImportError:
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "cmrt serve needs nvidia-pytriton (the tritonserver it ships): `pip install 'cmrt[serve]'` "
            "(Linux x86-64/aarch64, glibc >= 2.35)"
        )
    import numpy

    if int(numpy.__version__.split(".")[0]) >= 2:
        # Triton 2.51's Python backend stub reads numpy arrays through the numpy 1 ABI: with numpy 2
        # in its environment, output tensors come back empty. nvidia-pytriton pins numpy < 2 for this.
        raise ImportError(
            f"cmrt serve runs Triton 2.51's Python backend (nvidia-pytriton), which needs numpy < 2 in this "
            f"environment, and numpy {numpy.__version__} is installed: `pip install 'numpy<2'` (what "
            "`pip install 'cmrt[serve]'` resolves)"
        )
    root = Path(list(spec.submodule_search_locations)[0]).resolve()
    dist = root / "tritonserver"
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    paths = {
        "tritonserver": dist / "bin" / "tritonserver",
        "python_backend": dist / "backends" / "python",
        "stub": dist / "python_backend_stubs" / version / "triton_python_backend_stub",
        "libs": root.parent / "nvidia_pytriton.libs",
    }
    for name in ("tritonserver", "python_backend", "stub"):
        if not paths[name].exists():
            raise ImportError(f"nvidia-pytriton has no {name} at {paths[name]} (Python {version} unsupported?)")
    return paths


def default_max_request_bytes(max_batch: int) -> int:
    """The default HTTP body cap: 16 KiB of JSON and headers, plus 256 bytes per batch row.

    The largest valid request is `max_batch` rows of three [1]-shaped integer inputs: about 63
    bytes a row as compact JSON (three 20-digit numbers), 24 as binary tensors.
    """
    return 16384 + 256 * max_batch


@dataclass
class ServeOptions:
    """Where and how `cmrt serve` listens. Ports 0 disable gRPC / metrics.

    `max_request_bytes`: cap on an HTTP request body (None: `default_max_request_bytes` of the
    model's max batch; 0: no cap and no front, tritonserver answers HTTP itself).
    `drain_timeout`: on stop, how long requests in flight get to finish (tritonserver's
    --exit-timeout-secs too); `stop_grace`: then, how long model unloading and exit may take
    before the processes are killed.
    """

    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    max_batch: int | None = None  # default: the engine folder's max batch
    max_queue_delay_us: int = 2000
    instances: int = 1
    settings: ServeSettings = field(default_factory=ServeSettings)
    backend: str = "auto"
    device: str = "auto"
    precision: str | None = None
    threads: int | None = None
    warmup: tuple[int, ...] | None = None  # batch sizes warmed up before the model is ready (cmrt.load's `warmup`)
    startup_timeout: float = 120.0
    max_request_bytes: int | None = None
    drain_timeout: float = 300.0
    stop_grace: float = 15.0
    verbose: bool = False

    def __post_init__(self):
        if self.max_request_bytes is not None and self.max_request_bytes < 0:
            raise ValueError(f"max_request_bytes must be >= 0 (0: no cap), got {self.max_request_bytes}")
        if not self.drain_timeout > 0:
            raise ValueError(f"drain_timeout must be > 0 seconds, got {self.drain_timeout}")


# --- the supervisor -----------------------------------------------------------------------
SUPERVISOR = Path(__file__).resolve().with_name("supervisor.py")  # run by path: stdlib only, no cmrt import


# --- the server -----------------------------------------------------------------------------
class TritonServer:
    """One tritonserver on one engine folder. Use as a context manager, or start()/stop()."""

    def __init__(
        self, engine_dir: str | os.PathLike | None, options: ServeOptions | None = None, repository: str | os.PathLike | None = None
    ):
        """Serve `engine_dir` through a private repository, or an existing `repository` as it is."""
        if (engine_dir is None) == (repository is None):
            raise ValueError("give exactly one of engine_dir or repository")
        self.engine_dir = None if engine_dir is None else Path(engine_dir)
        self.repository = None if repository is None else Path(repository).resolve()
        self.options = options or ServeOptions()
        self.workspace: Path | None = None
        self.shm_prefix = f"cmrt-{os.getpid()}-{secrets.token_hex(4)}-"
        self.process: subprocess.Popen | None = None  # the supervisor
        self.triton_pid: int | None = None
        self.triton_http_port: int | None = None
        self.max_request_bytes: int | None = None  # the cap in force (None: no front)
        self.front: Front | None = None
        self._watch: int | None = None  # write end of the supervisor's pipe
        self._log = None
        self._lock = threading.Lock()

    # --- addresses ----------------------------------------------------------------------
    def _hostport(self, port: int) -> str:
        h = self.options.host
        return f"[{h}]:{port}" if ":" in h else f"{h}:{port}"

    @property
    def url(self) -> str:
        return f"http://{self._hostport(self.options.http_port)}"

    @property
    def grpc_url(self) -> str:
        return f"grpc://{self._hostport(self.options.grpc_port)}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self._hostport(self.options.metrics_port)}/metrics"

    @property
    def triton_url(self) -> str:
        """tritonserver's own HTTP endpoint (behind the front, when there is one)."""
        if self.front is None:
            return self.url
        return f"http://127.0.0.1:{self.triton_http_port}"

    @property
    def log_path(self) -> Path | None:
        return None if self.workspace is None else self.workspace / "tritonserver.log"

    # --- life cycle ---------------------------------------------------------------------
    def _command(self, paths, repo: Path, backends: Path) -> list[str]:
        o = self.options
        http_host, http_port = ("127.0.0.1", self.triton_http_port) if self.front is not None else (o.host, o.http_port)
        cmd = [
            str(paths["tritonserver"]),
            f"--model-repository={repo}",
            f"--backend-directory={backends}",
            "--model-control-mode=none",
            "--strict-readiness=true",
            f"--exit-timeout-secs={max(1, math.ceil(o.drain_timeout))}",
            f"--http-address={http_host}",
            f"--http-port={http_port}",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
            "--backend-config=python,shm-default-byte-size=4194304",
            "--backend-config=python,shm-growth-byte-size=4194304",
            f"--log-verbose={1 if o.verbose else 0}",
        ]
        if o.grpc_port:
            cmd += ["--allow-grpc=true", f"--grpc-address={o.host}", f"--grpc-port={o.grpc_port}"]
        else:
            cmd += ["--allow-grpc=false"]
        if o.metrics_port:
            gpu = o.device == "cuda" or (o.device == "auto" and shutil.which("nvidia-smi") is not None)
            cmd += [
                "--allow-metrics=true",
                f"--metrics-address={o.host}",
                f"--metrics-port={o.metrics_port}",
                f"--allow-gpu-metrics={'true' if gpu else 'false'}",
                "--allow-cpu-metrics=true",
            ]
        else:
            cmd += ["--allow-metrics=false"]
        return cmd

    def _env(self, paths) -> dict[str, str]:
        env = dict(os.environ)
        libs = [sysconfig.get_config_var("LIBDIR") or "", str(paths["libs"])]
        env["LD_LIBRARY_PATH"] = ":".join(p for p in libs + [env.get("LD_LIBRARY_PATH", "")] if p)
        # the backend stub embeds Python and finds this environment (a venv) through PATH
        env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
        pkg_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = ":".join(p for p in (pkg_root, env.get("PYTHONPATH", "")) if p)
        # temporary files of the server and its stubs (ONNX Runtime writes $TMPDIR/.ses) go with the workspace
        tmp = self.workspace / "tmp"
        tmp.mkdir(exist_ok=True)
        env["TMPDIR"] = str(tmp)
        return env

    @staticmethod
    def _repo_max_batch(repo: Path) -> int:
        m = re.search(r"^max_batch_size:\s*(\d+)", (repo / "cmrt" / "config.pbtxt").read_text(), re.M)
        return int(m[1]) if m else 256

    def start(self, abort: threading.Event | None = None) -> "TritonServer":
        """Write the workspace, launch tritonserver, and wait until the model is ready."""
        from .local import free_ports
        from .triton_repo import RepoOptions, write_repository

        with self._lock:
            if self.process is not None:
                raise RuntimeError("server already started")
            paths = pytriton_paths()
            o = self.options
            remove_stale()
            self.workspace = Path(tempfile.mkdtemp(prefix=f"{WORKSPACE_PREFIX}{os.getpid()}-"))
            try:
                repo_opts = RepoOptions(
                    unet="inprocess",
                    kind="gpu" if o.device == "cuda" else "cpu",
                    precision=o.precision,
                    max_batch=o.max_batch,
                    max_queue_delay_us=o.max_queue_delay_us,
                    instances=o.instances,
                    settings=o.settings,
                    backend=o.backend,
                    device=o.device,
                    threads=o.threads,
                    warmup=o.warmup,
                )
                if self.repository is not None:
                    repo = self.repository
                else:
                    repo = write_repository(self.engine_dir, self.workspace / "repo", repo_opts, link_engine=True, vendor=False)
                if o.max_request_bytes != 0:
                    self.max_request_bytes = o.max_request_bytes or default_max_request_bytes(self._repo_max_batch(repo))
                    self.triton_http_port = free_ports(1)[0]
                    self.front = Front(o.host, o.http_port, self.triton_http_port, self.max_request_bytes)
                backends = self.workspace / "backends"
                shutil.copytree(paths["python_backend"], backends / "python", ignore=shutil.ignore_patterns("__pycache__"))
                shutil.copy2(paths["stub"], backends / "python" / "triton_python_backend_stub")
                cmd = self._command(paths, repo, backends)
                self._log = open(self.workspace / "tritonserver.log", "wb")
                logger.debug("starting %s", " ".join(cmd))
                r, self._watch = os.pipe()
                try:
                    self.process = subprocess.Popen(
                        [sys.executable, "-I", str(SUPERVISOR), str(r), str(self.workspace), self.shm_prefix, *cmd],
                        env=self._env(paths), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._log,
                        pass_fds=(r,), start_new_session=True,
                    )
                finally:
                    os.close(r)
                line = self.process.stdout.readline()
                self.process.stdout.close()
                if not line.strip().isdigit():
                    raise ServeError(f"the tritonserver supervisor failed (exit code {self.process.wait()}):\n{self.log_tail()}")
                self.triton_pid = int(line)
            except BaseException:
                if self.front is not None:
                    self.front.close()
                self._hard_stop()
                self._cleanup()
                raise
        try:
            self._wait_ready(abort)
        except BaseException:
            self.kill()
            raise
        if self.front is not None:
            self.front.start()
        logger.info("tritonserver %d ready on %s%s", self.triton_pid, self.url,
                    f" (HTTP front: bodies up to {self.max_request_bytes} bytes)" if self.front else "")
        return self

    def _wait_ready(self, abort: threading.Event | None) -> None:
        deadline = time.monotonic() + self.options.startup_timeout
        url = f"{self.triton_url}/v2/models/cmrt/ready"
        while True:
            if abort is not None and abort.is_set():
                raise KeyboardInterrupt("stopped while starting")
            code = self.process.poll()
            if code is not None:
                raise ServeError(f"tritonserver exited with code {code} while starting:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise ServeError(f"tritonserver not ready after {self.options.startup_timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(0.1)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except (OSError, AttributeError):
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait(self, timeout: float | None = None) -> int | None:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, abort: threading.Event | None = None, drain_timeout: float | None = None) -> int | None:
        """Drain, then stop: the front stops accepting and finishes its requests in flight, tritonserver
        gets SIGTERM and finishes the rest (gRPC), all within `drain_timeout` (default: the options');
        then up to `stop_grace` for unloading. Past that, or once `abort` is set, everything is
        killed. Removes the workspace and shared memory; returns tritonserver's exit code."""
        o = self.options
        with self._lock:
            deadline = time.monotonic() + (o.drain_timeout if drain_timeout is None else drain_timeout)
            if self.front is not None:
                if self.alive():
                    n = self.front.in_flight()
                    if n:
                        logger.info("finishing %d HTTP request(s) in flight (up to %.0f s)", n, deadline - time.monotonic())
                    t0 = time.monotonic()
                    cut = self.front.drain(deadline, abort)
                    if cut:
                        logger.warning("stopping with %d HTTP request(s) unfinished", cut)
                    elif n:
                        logger.info("HTTP requests finished in %.1f s", time.monotonic() - t0)
                self.front.close()
            code = None
            p = self.process
            if p is not None:
                if p.poll() is None:
                    t_term = time.monotonic()
                    try:
                        os.write(self._watch, b"t")
                    except OSError:
                        pass
                    end = deadline + o.stop_grace
                    while p.poll() is None and time.monotonic() < end and not (abort is not None and abort.is_set()):
                        try:
                            p.wait(0.1)
                        except subprocess.TimeoutExpired:
                            pass
                    if p.poll() is None:
                        logger.warning("tritonserver did not stop in time; killing it")
                    else:
                        logger.info("tritonserver stopped %.1f s after SIGTERM (exit code %s)", time.monotonic() - t_term, p.returncode)
                code = self._hard_stop()
            self._cleanup()
            return code

    def kill(self) -> int | None:
        """Stop now: kill tritonserver and its stubs, close connections, remove everything."""
        with self._lock:
            if self.front is not None:
                self.front.close()
            code = self._hard_stop()
            self._cleanup()
            return code

    def _hard_stop(self) -> int | None:
        """Close the supervisor's pipe (it kills tritonserver's group and exits); make sure of it."""
        if self._watch is not None:
            with suppress_os():
                os.close(self._watch)
            self._watch = None
        p = self.process
        if p is None:
            return None
        try:
            p.wait(10.0)
        except subprocess.TimeoutExpired:
            self._killpg(p.pid, signal.SIGKILL)
            p.wait()
        if self.triton_pid is not None and p.returncode < 0:  # the supervisor was killed: end tritonserver's group here
            deadline = time.monotonic() + 3.0
            while self._killpg(self.triton_pid, signal.SIGKILL) and time.monotonic() < deadline:
                time.sleep(0.05)
        code = p.returncode
        self.process = None
        return code

    @staticmethod
    def _killpg(pgid: int, sig: int) -> bool:
        """Signal a process group; False when it has no process left."""
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    def _cleanup(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
        if SHM_DIR.is_dir():
            for f in SHM_DIR.glob(f"{self.shm_prefix}*"):
                try:
                    f.unlink()
                except OSError:
                    pass
        if self.workspace is not None:
            shutil.rmtree(self.workspace, ignore_errors=True)
            self.workspace = None

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def serve(model_or_dir: str | os.PathLike, options: ServeOptions | None = None, ready=None) -> int:
    """Serve until SIGTERM or SIGINT (or the server dies); drain, clean up and return an exit code.

    The first signal drains (requests in flight finish, up to `drain_timeout`); a second one
    stops at once. `ready(server)` is called once the model is ready (the CLI prints the endpoints).
    """
    from ..runtime.loading import find_engine_folder

    engine = find_engine_folder(model_or_dir)
    server = TritonServer(engine, options)
    stop = threading.Event()
    now = threading.Event()
    received: list[int] = []

    def on_signal(signum, frame):
        received.append(signum)
        if stop.is_set():
            now.set()
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            server.start(abort=stop)
        except KeyboardInterrupt:
            return 0
        if ready is not None:
            ready(server)
        while not stop.wait(0.25):
            if not server.alive():
                logger.error("tritonserver exited unexpectedly (code %s):\n%s", server.process.poll(), server.log_tail())
                now.set()
                return 1
        logger.info("signal %s: stopping (requests in flight finish, up to %.0f s; a second signal stops now)",
                    signal.Signals(received[0]).name if received else "?", server.options.drain_timeout)
        return 0
    finally:
        server.stop(abort=now, drain_timeout=0 if now.is_set() else None)
        for s, h in previous.items():
            signal.signal(s, h)
