"""`cmrt serve` end to end: a real tritonserver (the one nvidia-pytriton ships) on loopback.

Tests that start a tritonserver carry the `serve` marker: they run in the serving venv
(`make test-serve`; nvidia-pytriton needs numpy < 2) and are skipped, naming it, elsewhere.

Each scenario runs in a child process inside a private, loopback-only network namespace
(`unshare -rn`, where the machine allows it; else on 127.0.0.1 with free ports). The child
starts `cmrt serve` as a subprocess, talks to it, stops it with a signal, checks that
nothing is left behind, and writes what it saw to a JSON + npz file; the tests here judge
that record. Servers never run in parallel: the child holds a machine-wide lock
(/tmp/cmrt-tritonserver.lock) for as long as its server lives.

Run a scenario by hand: `python -m tests.serve.test_serve SCENARIO ENGINE OUT_PREFIX`.
"""
from __future__ import annotations

import concurrent.futures as cf
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from cmrt.serve.local import free_ports, server_lock  # noqa: F401  (test_triton_repo imports them from here)

ROOT = Path(__file__).resolve().parents[2]
SCENARIO_TIMEOUT = 150


def _have_pytriton() -> bool:
    import importlib.util

    return importlib.util.find_spec("pytriton") is not None


def _skip_reason() -> str | None:
    if not _have_pytriton():
        return "serving tests need nvidia-pytriton (the tritonserver it ships): `make test-serve` (pip install 'cmrt[serve]')"
    if int(np.__version__.split(".")[0]) >= 2:
        return (f"numpy {np.__version__}: Triton 2.51's Python backend (nvidia-pytriton) needs numpy < 2: `make test-serve` "
                "(pip install 'cmrt[serve]')")
    return None


needs_pytriton = pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def post_raw(url: str, body: bytes, headers: dict | None = None, chunked: bool = False, timeout: float = 30) -> tuple[int | str, str]:
    """POST a body as it is; (status, start of the answer) or (exception name, message) if the connection failed."""
    import http.client
    import urllib.parse

    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        h = dict(headers or {})
        if chunked:
            conn.request("POST", u.path, body=iter([body[i:i + 65536] for i in range(0, len(body), 65536)]), headers=h,
                         encode_chunked=True)
        else:
            conn.request("POST", u.path, body=body, headers=h)
        r = conn.getresponse()
        return r.status, r.read().decode(errors="replace")[:300]
    except OSError as e:
        return type(e).__name__, str(e)[:300]
    finally:
        conn.close()


# --- where servers run ------------------------------------------------------------------
_NETNS: tuple[list[str], str] | None = None


def netns() -> tuple[list[str], str]:
    """(command prefix, description): a private loopback-only network namespace when allowed."""
    global _NETNS
    if _NETNS is None:
        why = "unshare or ip not found"
        if shutil.which("unshare") and shutil.which("ip"):
            try:
                r = subprocess.run(["unshare", "-rn", "sh", "-c", "ip link set lo up"], capture_output=True, text=True, timeout=20)
                why = r.stderr.strip() or f"exit code {r.returncode}"
                if r.returncode == 0:
                    _NETNS = (["unshare", "-rn", "sh", "-c", 'ip link set lo up && exec "$0" "$@"'], "private network namespace (unshare -rn)")
            except (OSError, subprocess.TimeoutExpired) as e:
                why = str(e)
        if _NETNS is None:
            _NETNS = ([], f"host loopback 127.0.0.1 (no private namespace: {why})")
    return _NETNS


def run_scenario(name: str, engine: Path, out_prefix: Path, module: str = "tests.serve.test_serve") -> dict:
    """Run one scenario (`module`'s `scenario`) in its own process, in the private namespace; return its record."""
    prefix, where = netns()
    cmd = prefix + [sys.executable, "-m", module, name, str(engine), str(out_prefix)]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=SCENARIO_TIMEOUT + 30)
    record_path = out_prefix.with_suffix(".json")
    if not record_path.is_file():
        raise AssertionError(f"scenario {name} wrote no record (exit {r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-6000:]}")
    record = json.loads(record_path.read_text())
    record["where"] = where
    record["stderr_tail"] = r.stderr[-4000:]
    if record.get("crash"):
        raise AssertionError(f"scenario {name} failed: {record['crash']}\n{r.stderr[-6000:]}")
    return record


# --- the scenario side (runs in the child process) --------------------------------------
def processes_mentioning(text: str) -> list[str]:
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmd:
                found.append(f"{d.name}: {cmd[:200]}")
    return found


def proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a process, None if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[1])


def pid_alive(pid: int) -> bool:
    st = proc_stat(pid)
    return st is not None and st[0] not in ("Z", "X")


def process_kind(pid: int) -> str:
    try:
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return "other"
    return "tritonserver" if argv0.endswith("/tritonserver") else "stub" if argv0.endswith("_stub") else "other"


class ServeProcess:
    """`python -m cmrt serve ...` in its own session, its temp files under a private TMPDIR
    (`tmpdir`: one shared by several servers)."""

    def __init__(self, engine: Path, extra: list[str], tmp: Path, tmpdir: Path | None = None, name: str = "serve"):
        self.tmp = tmpdir or tmp / f"{name}-tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.http, self.grpc, self.metrics = free_ports(3)
        self.log = tmp / f"{name}.log"
        env = dict(os.environ, TMPDIR=str(self.tmp), PYTHONUNBUFFERED="1")
        cmd = [sys.executable, "-m", "cmrt", "serve", str(engine), "--http-port", str(self.http),
               "--grpc-port", str(self.grpc), "--metrics-port", str(self.metrics)] + extra
        self._logf = open(self.log, "wb")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self._logf, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        self.url = f"http://127.0.0.1:{self.http}"
        self.grpc_url = f"grpc://127.0.0.1:{self.grpc}"
        self.metrics_url = f"http://127.0.0.1:{self.metrics}/metrics"

    def wait_ready(self, timeout: float = 90.0) -> float:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if b"serving model 'cmrt'" in self.log.read_bytes():
                return time.monotonic() - t0
            if self.proc.poll() is not None:
                raise RuntimeError(f"cmrt serve exited with {self.proc.returncode}:\n{self.log.read_text()[-4000:]}")
            time.sleep(0.1)
        raise TimeoutError(f"cmrt serve not ready after {timeout} s:\n{self.log.read_text()[-4000:]}")

    def pids(self) -> dict[str, list[int]]:
        """This server's live processes by kind (descendants of the `cmrt serve` process): cmrt,
        tritonserver, stub, other (the supervisor)."""
        children: dict[int, list[int]] = {}
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                st = proc_stat(int(d.name))
                if st is not None:
                    children.setdefault(st[1], []).append(int(d.name))
        out: dict[str, list[int]] = {"cmrt": [self.proc.pid], "tritonserver": [], "stub": [], "other": []}
        todo = list(children.get(self.proc.pid, []))
        while todo:
            pid = todo.pop()
            todo += children.get(pid, [])
            if pid_alive(pid):
                out[process_kind(pid)].append(pid)
        return out

    def workspaces(self) -> list[str]:
        return sorted(str(p) for p in self.tmp.glob("cmrt-serve-*"))

    def shm_left(self) -> list[str]:
        return sorted(f for f in os.listdir("/dev/shm") if f.startswith(f"cmrt-{self.proc.pid}-")) if os.path.isdir("/dev/shm") else []

    def stop_with(self, sig: int, timeout: float = 20) -> dict:
        """Send `sig`; how long the exit took, its code, and what is left behind."""
        t0 = time.monotonic()
        self.proc.send_signal(sig)
        return self.stop_with_wait(timeout, t0, signal.Signals(sig).name)

    def stop_with_wait(self, timeout: float, t0: float, sig_name: str = "SIGTERM") -> dict:
        """After a signal sent at `t0`: wait for the exit, then what `stop_with` reports."""
        try:
            code = self.proc.wait(timeout=max(0.1, timeout - (time.monotonic() - t0)))
        except subprocess.TimeoutExpired:
            code = None
        seconds = time.monotonic() - t0
        time.sleep(0.2)
        return {
            "signal": sig_name,
            "exit_code": code,
            "seconds": seconds,
            "processes_left": processes_mentioning(str(self.tmp)),
            "files_left": sorted(str(p) for p in self.tmp.rglob("*")),
            "shm_left": self.shm_left(),
            "log_tail": self.log.read_text(errors="replace")[-1500:],
        }

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def kill(self) -> None:
        """Failure path: leave nothing running whatever happened."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        for line in processes_mentioning(str(self.tmp)):
            with contextlib.suppress(ProcessLookupError, PermissionError, ValueError):
                os.kill(int(line.split(":")[0]), signal.SIGKILL)
        for f in self.shm_left():
            with contextlib.suppress(OSError):
                os.unlink(f"/dev/shm/{f}")
        with contextlib.suppress(Exception):
            self.proc.wait(5)
        self._logf.close()


def post_json(url: str, body: dict, timeout: float = 30) -> tuple[int, str]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()[:300]
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")[:600]


def _inp(name, dtype, data, shape=None):
    return {"name": name, "datatype": dtype, "shape": shape or [len(data), 1], "data": data}


BAD_REQUESTS = {
    "wrong dtype": ([_inp("seed", "FP32", [1.0])], "FP32"),
    "wrong shape": ([_inp("seed", "INT64", [1, 2], shape=[1, 2])], "shape"),
    "batch over the limit": ([_inp("seed", "INT64", list(range(9)))], "batch"),
    "missing seed": ([_inp("class_label", "INT64", [1])], "seed"),
    "label out of range": ([_inp("seed", "INT64", [1]), _inp("class_label", "INT64", [10])], "out of range"),
    "negative seed": ([_inp("seed", "INT64", [-1])], "seed"),
    "steps out of range": ([_inp("seed", "INT64", [1]), _inp("num_inference_steps", "INT32", [0])], "num_inference_steps"),
}
UNCOND_BAD = {"label for an unconditional model": ([_inp("seed", "INT64", [1]), _inp("class_label", "INT64", [3])], "unconditional")}

# (seed, label or None, steps or None); sent concurrently so that they share batches
COND_SPECS = [(0, 0, None), (1, 3, None), (2, None, None), (3, 9, 2), (4, None, 2), (5, 5, 3), (6, 1, None), (7, 2, 2)]
UNCOND_SPECS = [(0, None, None), (1, None, None), (2, None, 1), (3, None, 3)]


def _serve_images(client, specs) -> np.ndarray:
    def one(spec):
        seed, label, steps = spec
        return client.generate([seed], class_labels=None if label is None else [label],
                               num_inference_steps=None if steps is None else [steps])[0]

    with cf.ThreadPoolExecutor(len(specs)) as ex:
        return np.stack(list(ex.map(one, specs)))


class ScenarioRun:
    """A scenario child's bookkeeping: its record and arrays, written to OUT_PREFIX.json and .npz
    whatever happens (a crash is recorded with its traceback and the server's log, for the test
    to show), a scratch folder removed at the end, and the server it started, killed at the end."""

    def __init__(self, name: str, out_prefix: Path, tmp_prefix: str, **record):
        self.record: dict = {"scenario": name, **record}
        self.arrays: dict[str, np.ndarray] = {}
        self.tmp = Path(tempfile.mkdtemp(prefix=tmp_prefix))
        self.out_prefix = out_prefix
        self.server = None  # anything with log_tail() and kill()

    def __enter__(self) -> "ScenarioRun":
        return self

    def __exit__(self, kind, error, tb) -> bool:
        import traceback

        if error is not None:
            self.record["crash"] = "".join(traceback.format_exception(kind, error, tb))[-4000:]
            if self.server is not None:
                self.record["server_log"] = self.server.log_tail(60)
        if self.server is not None:
            self.server.kill()
        np.savez(self.out_prefix.with_suffix(".npz"), **self.arrays)
        self.out_prefix.with_suffix(".json").write_text(json.dumps(self.record, default=str))
        shutil.rmtree(self.tmp, ignore_errors=True)
        return True  # the record carries the crash to the test


def scenario(name: str, engine: Path, out_prefix: Path) -> None:
    from cmrt.serve.client import Client, ServerError, model_metric, read_metrics

    cond = name == "cond"
    with ScenarioRun(name, out_prefix, "cmrt-serve-test-") as run, server_lock():
        record, arrays, tmp = run.record, run.arrays, run.tmp
        extra = ["--max-batch", "8", "--threads", "1"] + ([] if cond else ["--timesteps", "17,0"])
        server = run.server = ServeProcess(engine, extra, tmp)
        record["startup_seconds"] = server.wait_ready()
        client = Client(server.url)
        specs = COND_SPECS if cond else UNCOND_SPECS
        record["specs"] = specs
        arrays["served"] = _serve_images(client, specs)
        # several rows with different step counts in one request: split inside one execute
        seeds = [s for s, _, _ in specs]
        if cond:
            arrays["multi_row"] = client.generate(seeds, class_labels=[l if l is not None else 0 for _, l, _ in specs],
                                                  num_inference_steps=[st or 1 for _, _, st in specs])
            arrays["grpc"] = Client(server.grpc_url).generate(seeds[:2], class_labels=[0, 3]) if _have_tritonclient() else np.zeros(0)
            png = tmp / "grid.png"
            r = subprocess.run([sys.executable, "-m", "cmrt", "generate", "--server", server.url, "--batch", "4",
                                "--seed", "10", "--class-labels", "2", "--steps", "2", "--out", str(png)],
                               cwd=ROOT, capture_output=True, text=True, timeout=60)
            record["cli"] = {"code": r.returncode, "stdout": r.stdout, "stderr": r.stderr[-1500:], "png": png.is_file()}
            # bounded load: 64 requests, 8 concurrent, 60 s
            before = read_metrics(server.metrics_url)
            t0 = time.monotonic()
            errors = []

            def one(i):
                try:
                    return client.generate([1000 + i], class_labels=[i % 10]).shape
                except Exception as e:  # recorded, judged by the test
                    errors.append(repr(e))

            with cf.ThreadPoolExecutor(8) as ex:
                futures = [ex.submit(one, i) for i in range(64)]
                done, pending = cf.wait(futures, timeout=60)
            seconds = time.monotonic() - t0
            after = read_metrics(server.metrics_url)
            d = {k: model_metric(after, k) - model_metric(before, k)
                 for k in ("nv_inference_count", "nv_inference_exec_count", "nv_inference_request_success")}
            record["load"] = {"seconds": seconds, "completed": len(done), "pending": len(pending), "errors": errors[:5],
                              "n_errors": len(errors), **d,
                              "batching_ratio": d["nv_inference_count"] / max(1.0, d["nv_inference_exec_count"])}
        bad = dict(BAD_REQUESTS if cond else {}, **({} if cond else UNCOND_BAD))
        record["bad"] = {k: post_json(f"{server.url}/v2/models/cmrt/infer", {"inputs": body}) + (needle,)
                         for k, (body, needle) in bad.items()}
        if cond:
            record["limits"] = _limits(server, tmp)
            record["numpy2"] = _numpy2_client(server, tmp, arrays, seeds[:2], [0, 3])
        try:
            arrays["after_bad"] = client.generate([specs[0][0]], class_labels=None if specs[0][1] is None else [specs[0][1]])
            record["serving_after_bad"] = True
        except ServerError as e:
            record["serving_after_bad"] = repr(e)
        record["health"] = {p: post_or_get(server.url + p) for p in ("/v2/health/live", "/v2/health/ready")}
        record["shutdown"] = server.stop_with(signal.SIGTERM if cond else signal.SIGINT)


SEED_BODY = {"inputs": [_inp("seed", "INT64", [1])]}
BAD_JSON = {
    "not JSON": b"garbage",
    "truncated JSON": b'{"inputs": [',
    "empty object": b"{}",
    "an array": b"[1, 2]",
    "inputs not a list": b'{"inputs": 5}',
    "data not a list": json.dumps({"inputs": [{"name": "seed", "datatype": "INT64", "shape": [1, 1], "data": "x"}]}).encode(),
}


def _limits(server: "ServeProcess", tmp: Path) -> dict:
    """Oversized bodies (memory of every server process before and after), bodies at the cap, bad JSON."""
    url = f"{server.url}/v2/models/cmrt/infer"
    pids = server.pids()
    mem = lambda: {k: sum(rss_mb(p) or 0 for p in pids[k]) for k in ("cmrt", "tritonserver", "stub")}  # noqa: E731
    out: dict = {"pids": pids}
    big = json.dumps(dict(SEED_BODY, pad="x" * 10_000_000)).encode()  # 10 MB, valid JSON
    out["rss_before"] = mem()
    statuses: dict[str, int] = {}
    t0 = time.monotonic()
    with cf.ThreadPoolExecutor(10) as ex:  # 10 at a time, 200 in all: 2 GB of bodies
        for i, (status, text) in enumerate(ex.map(lambda _: post_raw(url, big, {"Content-Type": "application/json"}), range(40))):
            statuses[str(status)] = statuses.get(str(status), 0) + 1
            out.setdefault("oversized_first", [status, text])
        out["rss_after_40"] = mem()
        for status, _ in ex.map(lambda _: post_raw(url, big, {"Content-Type": "application/json"}), range(160)):
            statuses[str(status)] = statuses.get(str(status), 0) + 1
    out["oversized_seconds"] = time.monotonic() - t0
    out["rss_after_200"] = mem()
    out["oversized_statuses"] = statuses
    out["oversized_chunked"] = list(post_raw(url, big, {"Content-Type": "application/json"}, chunked=True))
    # a valid request padded with JSON whitespace to just under / just over 18432 bytes (16 KiB + 256 per row, max batch 8)
    base = json.dumps(SEED_BODY).encode()
    out["at_cap"] = list(post_raw(url, base[:-1] + b" " * (18432 - len(base)) + b"}", {"Content-Type": "application/json"}))
    out["over_cap"] = list(post_raw(url, base[:-1] + b" " * (18433 - len(base)) + b"}", {"Content-Type": "application/json"}))
    out["bad_json"] = {k: list(post_raw(url, body, {"Content-Type": "application/json"})) for k, body in BAD_JSON.items()}
    out["health_after"] = post_or_get(server.url + "/v2/health/ready")
    return out


def _numpy2_client(server: "ServeProcess", tmp: Path, arrays: dict, seeds, labels) -> dict:
    """cmrt.client from the numpy-2 venv (CMRT_CLIENT_PYTHON; `make test-serve` sets it) against this server."""
    py = os.environ.get("CMRT_CLIENT_PYTHON")
    if not py:
        return {"skipped": "CMRT_CLIENT_PYTHON is not set (make test-serve sets it to the main venv's python)"}
    code = (
        "import sys, numpy as np\n"
        "from cmrt.serve.client import Client\n"
        "url, grpc, out = sys.argv[1:4]\n"
        f"seeds, labels = {list(seeds)!r}, {list(labels)!r}\n"
        "np.save(out + '.http.npy', Client(url).generate(seeds, class_labels=labels))\n"
        "try:\n"
        "    import tritonclient.grpc  # noqa: F401\n"
        "except ImportError:\n"
        "    pass\n"
        "else:\n"
        "    np.save(out + '.grpc.npy', Client(grpc).generate(seeds, class_labels=labels))\n"
        "print(np.__version__)\n"
    )
    out = tmp / "numpy2"
    r = subprocess.run([py, "-c", code, server.url, server.grpc_url, str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    rec = {"python": py, "code": r.returncode, "numpy": r.stdout.strip(), "stderr": r.stderr[-2000:]}
    for kind in ("http", "grpc"):
        f = Path(f"{out}.{kind}.npy")
        if f.is_file():
            arrays[f"numpy2_{kind}"] = np.load(f)
    return rec


def post_or_get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def _have_tritonclient() -> bool:
    try:
        import tritonclient.grpc  # noqa: F401
    except ImportError:
        return False
    return True


# --- the tests ----------------------------------------------------------------------------
def expected_images(engine: Path, specs, timesteps=None) -> np.ndarray:
    """In-process images, batch 1 per sample, uint8 as the server rounds them."""
    import cmrt
    from cmrt.serve.handler import to_uint8

    pipe = cmrt.load(engine, device="cpu")
    out = []
    for seed, label, steps in specs:
        kw = {"num_inference_steps": steps} if steps is not None else ({"timesteps": timesteps} if timesteps else {})
        out.append(pipe(seed=seed, class_labels=None if label is None else [label], output_type="np", **kw).images[0])
    return to_uint8(np.stack(out))


def assert_images_match(got: np.ndarray, want: np.ndarray) -> None:
    """uint8 equal, or off by one level on at most 0.1% of values."""
    assert got.dtype == np.uint8 and got.shape == want.shape, (got.dtype, got.shape, want.shape)
    diff = np.abs(got.astype(np.int16) - want.astype(np.int16))
    assert diff.max() <= 1, f"max difference {diff.max()} levels"
    assert (diff > 0).mean() <= 0.001, f"{(diff > 0).mean():.4%} of values differ by one level"


def test_handler_splits_by_steps_and_label_mode_without_a_server(small_models):
    """The batching logic alone (no Triton): mixed steps and drawn/given labels, per-request errors."""
    import cmrt
    from cmrt.serve.handler import Handler, RequestError, ServeSettings

    engine = small_models["cond"][1]
    handler = Handler(cmrt.load(engine, device="cpu"), ServeSettings(steps=1, max_steps=5))
    col = lambda v, dt: np.asarray(v, dtype=dt)[:, None]  # noqa: E731
    requests = [
        {"seed": col([0, 3], np.int64), "class_label": col([0, 9], np.int64), "num_inference_steps": col([1, 2], np.int32)},
        {"seed": col([2], np.int64)},
        {"seed": col([5], np.int64), "class_label": col([10], np.int64)},
        {"class_label": col([1], np.int64)},
        {"seed": col([4], np.int64), "num_inference_steps": col([6], np.int32)},
        {"seed": col([7], np.int64), "class_label": col([2], np.int64), "num_inference_steps": col([2], np.int32)},
    ]
    parsed = []
    for r in requests:
        try:
            parsed.append(handler.parse(r))
        except RequestError as e:
            parsed.append(e)
    assert [str(p) for p in parsed if isinstance(p, Exception)] == [
        "class_label 10 is out of range: this model has classes 0..9",
        "missing required input 'seed' (INT64, shape [1] per sample)",
        "num_inference_steps 6 is out of range: this server allows 1..5",
    ]
    assert handler.groups(parsed) == 3  # (1 step, label), (2 steps, label), (1 step, drawn)
    out = handler.run(parsed)
    assert [o.shape if isinstance(o, np.ndarray) else type(o).__name__ for o in out] == [
        (2, 16, 16, 3), (1, 16, 16, 3), "RequestError", "RequestError", "RequestError", (1, 16, 16, 3)
    ]
    want = expected_images(engine, [(0, 0, 1), (3, 9, 2), (2, None, None), (7, 2, 2)])
    assert_images_match(np.concatenate([out[0], out[1], out[5]]), want)


def test_serve_modules_import_without_pytriton():
    code = (
        "import sys\n"
        "class B:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('pytriton', 'tritonclient', 'torch'):\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, B())\n"
        "import cmrt.serve, cmrt.serve.server, cmrt.serve.triton_repo, cmrt.serve.client, cmrt.cli\n"
        "from cmrt.serve.server import pytriton_paths\n"
        "try:\n"
        "    pytriton_paths()\n"
        "except ImportError as e:\n"
        "    print('ok', 'cmrt[serve]' in str(e))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok True"


@pytest.fixture(scope="module")
def cond_run(small_models, tmp_path_factory):
    engine = small_models["cond"][1]
    out = tmp_path_factory.mktemp("serve-cond") / "record"
    return engine, run_scenario("cond", engine, out), np.load(out.with_suffix(".npz"))


@pytest.fixture(scope="module")
def uncond_run(small_models, tmp_path_factory):
    engine = small_models["uncond"][1]
    out = tmp_path_factory.mktemp("serve-uncond") / "record"
    return engine, run_scenario("uncond", engine, out), np.load(out.with_suffix(".npz"))


@pytest.mark.serve
@needs_pytriton
def test_served_images_equal_in_process(cond_run):
    engine, rec, arrays = cond_run
    specs = [tuple(s) for s in rec["specs"]]
    want = expected_images(engine, specs)
    assert_images_match(arrays["served"], want)
    # one request, rows with steps 1, 2 and 3: split by step count inside one batch
    multi = [(s, l if l is not None else 0, st or 1) for s, l, st in specs]
    assert_images_match(arrays["multi_row"], expected_images(engine, multi))
    if arrays["grpc"].size:
        assert_images_match(arrays["grpc"], want[:2])
    assert_images_match(arrays["after_bad"], want[:1])


@pytest.mark.serve
@needs_pytriton
def test_cli_generate_through_server(cond_run):
    _, rec, _ = cond_run
    cli = rec["cli"]
    assert cli["code"] == 0 and cli["png"], cli
    assert "4 images from http://127.0.0.1" in cli["stdout"]


@pytest.mark.serve
@needs_pytriton
def test_bounded_load_batches(cond_run):
    _, rec, _ = cond_run
    load = rec["load"]
    assert load["completed"] == 64 and load["pending"] == 0, load
    assert load["n_errors"] == 0, load["errors"]
    assert load["seconds"] < 60
    assert load["nv_inference_count"] == 64, load
    assert load["batching_ratio"] > 2, f"no real batching: {load}"


@pytest.mark.serve
@needs_pytriton
def test_bad_requests_get_4xx_naming_the_problem(cond_run, uncond_run):
    for _, rec, _ in (cond_run, uncond_run):
        for what, (status, message, needle) in rec["bad"].items():
            assert 400 <= status < 500, (what, status, message)
            assert needle.lower() in message.lower(), (what, message)
        assert rec["serving_after_bad"] is True, rec["serving_after_bad"]
        assert rec["health"] == {"/v2/health/live": 200, "/v2/health/ready": 200}


@pytest.mark.serve
@needs_pytriton
def test_unconditional_server_with_explicit_timesteps(uncond_run):
    engine, rec, arrays = uncond_run
    specs = [tuple(s) for s in rec["specs"]]
    assert_images_match(arrays["served"], expected_images(engine, specs, timesteps=[17, 0]))


@pytest.mark.serve
@needs_pytriton
@pytest.mark.parametrize("which", ["cond", "uncond"])
def test_signal_exits_cleanly_leaving_nothing(which, cond_run, uncond_run):
    _, rec, _ = cond_run if which == "cond" else uncond_run
    sd = rec["shutdown"]
    assert sd["signal"] == ("SIGTERM" if which == "cond" else "SIGINT")
    assert sd["exit_code"] == 0, sd
    assert sd["seconds"] < 10, sd
    assert sd["processes_left"] == [], sd
    assert sd["files_left"] == [], sd
    assert sd["shm_left"] == [], sd


@pytest.mark.serve
@needs_pytriton
def test_oversized_bodies_get_413_and_memory_stays_flat(cond_run):
    _, rec, _ = cond_run
    lim = rec["limits"]
    assert lim["oversized_statuses"] == {"413": 200}, lim["oversized_statuses"]
    assert "limit of 18432 bytes" in lim["oversized_first"][1], lim["oversized_first"]
    assert lim["oversized_chunked"][0] == 413, lim["oversized_chunked"]
    assert lim["at_cap"][0] == 200 and lim["over_cap"][0] == 413, (lim["at_cap"], lim["over_cap"])
    assert lim["health_after"] == 200
    assert lim["oversized_seconds"] < 30, lim["oversized_seconds"]
    before, mid, after = lim["rss_before"], lim["rss_after_40"], lim["rss_after_200"]
    for kind, limit in (("tritonserver", 8.0), ("stub", 8.0), ("cmrt", 16.0)):
        assert after[kind] - before[kind] < limit, (kind, before, mid, after)  # 2 GB of bodies went by
        assert after[kind] - mid[kind] < limit / 2, (kind, before, mid, after)  # nothing kept per request


@pytest.mark.serve
@needs_pytriton
def test_bad_json_gets_400(cond_run):
    _, rec, _ = cond_run
    got = {k: tuple(v) for k, v in rec["limits"]["bad_json"].items()}
    assert {k: v[0] for k, v in got.items()} == {k: 400 for k in BAD_JSON}, got
    assert "not valid JSON" in got["not JSON"][1] and "not valid JSON" in got["truncated JSON"][1], got


@pytest.mark.serve
@needs_pytriton
def test_numpy2_client_gets_the_same_images(cond_run):
    engine, rec, arrays = cond_run
    n2 = rec["numpy2"]
    if "skipped" in n2:
        pytest.skip(n2["skipped"])
    assert n2["code"] == 0, n2
    assert int(n2["numpy"].split(".")[0]) >= 2, n2
    want = expected_images(engine, [(0, 0, None), (1, 3, None)])
    assert_images_match(arrays["numpy2_http"], want)
    if "numpy2_grpc" in arrays:
        assert_images_match(arrays["numpy2_grpc"], want)


def scenario_main(fn) -> None:
    """The scenario child: `python -m MODULE NAME ENGINE OUT_PREFIX`, bounded in time."""

    def _timeout(signum, frame):
        raise TimeoutError(f"scenario took over {SCENARIO_TIMEOUT} s")

    signal.signal(signal.SIGALRM, _timeout)  # raises in the scenario, whose `finally` stops the server
    signal.alarm(SCENARIO_TIMEOUT)
    fn(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]))


if __name__ == "__main__":
    scenario_main(scenario)
