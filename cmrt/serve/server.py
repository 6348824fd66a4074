"""`cmrt serve`: Triton Inference Server (the build nvidia-pytriton ships) serving one engine folder.

The server process is the `tritonserver` binary and Python backend that the
`nvidia-pytriton` wheel carries. It serves a private model repository (see
`triton_repo`) whose Python-backend `model.py` runs cmrt's runtime in process. PyTriton's
own `Triton.bind` is not used for the model: its proxy can only fail a whole dynamic batch,
with HTTP 500 and a traceback, while a bad request here must get a 400 naming the problem
without failing the requests batched with it. The Python backend answers per request.

Everything the server creates lives in one workspace (a temporary folder) and under one
shared-memory prefix; `stop()` ends the server's whole process group and removes both.
"""
from __future__ import annotations

import logging
import os
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

from .handler import ServeSettings

logger = logging.getLogger(__name__)


class ServeError(RuntimeError):
    """The server could not be started (its log's tail is in the message)."""


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


@dataclass
class ServeOptions:
    """Where and how `cmrt serve` listens. Ports 0 disable gRPC / metrics."""

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
    stop_timeout: float = 6.0
    exit_timeout_secs: int = 3  # tritonserver's wait for in-flight requests on shutdown
    verbose: bool = False


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
        self.process: subprocess.Popen | None = None
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
    def log_path(self) -> Path | None:
        return None if self.workspace is None else self.workspace / "tritonserver.log"

    # --- life cycle ---------------------------------------------------------------------
    def _command(self, paths, repo: Path, backends: Path) -> list[str]:
        o = self.options
        cmd = [
            str(paths["tritonserver"]),
            f"--model-repository={repo}",
            f"--backend-directory={backends}",
            "--model-control-mode=none",
            "--strict-readiness=true",
            f"--exit-timeout-secs={o.exit_timeout_secs}",
            f"--http-address={o.host}",
            f"--http-port={o.http_port}",
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

    def start(self, abort: threading.Event | None = None) -> "TritonServer":
        """Write the workspace, launch tritonserver, and wait until the model is ready."""
        from .triton_repo import RepoOptions, write_repository

        with self._lock:
            if self.process is not None:
                raise RuntimeError("server already started")
            paths = pytriton_paths()
            o = self.options
            self.workspace = Path(tempfile.mkdtemp(prefix="cmrt-serve-"))
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
                backends = self.workspace / "backends"
                shutil.copytree(paths["python_backend"], backends / "python", ignore=shutil.ignore_patterns("__pycache__"))
                shutil.copy2(paths["stub"], backends / "python" / "triton_python_backend_stub")
                cmd = self._command(paths, repo, backends)
                self._log = open(self.workspace / "tritonserver.log", "wb")
                logger.debug("starting %s", " ".join(cmd))
                self.process = subprocess.Popen(
                    cmd, env=self._env(paths), stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    start_new_session=True,  # its own process group: stop() ends it and the backend stubs together
                )
            except BaseException:
                self._cleanup()
                raise
        try:
            self._wait_ready(abort)
        except BaseException:
            self.stop()
            raise
        logger.info("tritonserver %d ready on %s", self.process.pid, self.url)
        return self

    def _wait_ready(self, abort: threading.Event | None) -> None:
        deadline = time.monotonic() + self.options.startup_timeout
        url = f"{self.url}/v2/models/cmrt/ready"
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

    def stop(self) -> int | None:
        """SIGTERM (in-flight requests finish), SIGKILL after `stop_timeout`; then remove everything."""
        with self._lock:
            code = None
            p = self.process
            if p is not None:
                pgid = p.pid
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
                    try:
                        p.wait(self.options.stop_timeout)
                    except subprocess.TimeoutExpired:
                        logger.warning("tritonserver did not stop within %.0f s; killing it", self.options.stop_timeout)
                        self._killpg(pgid, signal.SIGKILL)
                        p.wait()
                code = p.returncode
                # backend stubs still in the group (after a crash or a kill) get 2 s, then SIGKILL
                deadline = time.monotonic() + 2.0
                while self._killpg(pgid, 0) and time.monotonic() < deadline + 1.0:  # zombies never leave
                    if time.monotonic() > deadline:
                        self._killpg(pgid, signal.SIGKILL)
                    time.sleep(0.05)
                self.process = None
            self._cleanup()
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
        shm = Path("/dev/shm")
        if shm.is_dir():
            for f in shm.glob(f"{self.shm_prefix}*"):
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
    """Serve until SIGTERM or SIGINT (or the server dies); clean up and return an exit code.

    `ready(server)` is called once the model is ready (the CLI prints the endpoints).
    """
    from ..runtime.loading import find_engine_folder

    engine = find_engine_folder(model_or_dir)
    server = TritonServer(engine, options)
    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum, frame):
        received.append(signum)
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
                return 1
        logger.info("signal %s: stopping", signal.Signals(received[0]).name if received else "?")
        return 0
    finally:
        server.stop()
        for s, h in previous.items():
            signal.signal(s, h)
