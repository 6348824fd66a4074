"""`cmrt serve` stopping: SIGTERM drains requests in flight; SIGKILL leaves no server behind; the next
start removes what a killed server left, and never what a live server uses.

Scenarios run like test_serve's (a child process, a private loopback-only network, the machine-wide
server lock); by hand: `python -m tests.serve.test_lifecycle SCENARIO ENGINE OUT_PREFIX`.
"""
from __future__ import annotations

import concurrent.futures as cf
import http.client
import json
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tests.serve.test_serve import (
    ServeProcess,
    assert_images_match,
    needs_pytriton,
    pid_alive,
    post_or_get,
    process_kind,
    run_scenario,
    scenario_main,
    server_lock,
)

# about 6 s of work for the small model on 2 cores, batched by 8: longer than the 3 s that tritonserver
# used to be given (--exit-timeout-secs=3) and the 6 s after which cmrt used to SIGKILL it
ROWS, STEPS, N_REQUESTS = 4, 40, 16


def drain_specs() -> list[tuple[list[int], int]]:
    """(seeds, label) of each in-flight request: 4 rows, 40 steps each."""
    return [([1000 + 10 * i + k for k in range(ROWS)], i % 10) for i in range(N_REQUESTS)]


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _connect_refused(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(2)
        try:
            s.connect(("127.0.0.1", port))
        except ConnectionRefusedError:
            return True
        except OSError:
            return False
    return False


def _wait(cond, timeout: float) -> float | None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if cond():
            return time.monotonic() - t0
        time.sleep(0.05)
    return None


def scenario_drain(engine: Path, tmp: Path, record: dict, arrays: dict) -> None:
    """16 multi-step requests in flight, then SIGTERM to `cmrt serve`: every one must be answered."""
    from cmrt.serve.client import Client

    # a 100 ms queue delay: all 16 arrive within it, and batches are full (8 rows: two requests)
    server = ServeProcess(engine, ["--max-batch", "8", "--threads", "1", "--max-queue-delay-us", "100000"], tmp)
    record["_servers"].append(server)
    server.wait_ready()
    client = Client(server.url, timeout=120)
    client.config()
    specs = drain_specs()
    done = [None] * len(specs)
    finished_at = [None] * len(specs)
    started = threading.Barrier(len(specs) + 1)
    sent = threading.Semaphore(0)
    getresponse = http.client.HTTPConnection.getresponse

    def sent_then_getresponse(conn, *a, **kw):  # urllib asks for the response once the request is written
        sent.release()
        return getresponse(conn, *a, **kw)

    http.client.HTTPConnection.getresponse = sent_then_getresponse

    def one(i):
        seeds, label = specs[i]
        started.wait()
        try:
            done[i] = client.generate(seeds, class_labels=[label], num_inference_steps=[STEPS])
        except Exception as e:  # recorded, judged by the test
            done[i] = repr(e)
        finished_at[i] = time.monotonic()

    with cf.ThreadPoolExecutor(len(specs)) as ex:
        futures = [ex.submit(one, i) for i in range(len(specs))]
        started.wait()
        record["all_sent"] = all(sent.acquire(timeout=30) for _ in specs)  # the first batch is answered after ~0.9 s
        time.sleep(0.05)
        t_signal = time.monotonic()
        record["finished_before_signal"] = sum(f is not None for f in finished_at)
        server.proc.send_signal(signal.SIGTERM)
        record["refused_after"] = _wait(lambda: _connect_refused(server.http), 5)
        cf.wait(futures, timeout=120)
    http.client.HTTPConnection.getresponse = getresponse
    record["shutdown"] = server.stop_with_wait(timeout=120, t0=t_signal)
    record["errors"] = [d for d in done if not isinstance(d, np.ndarray)]
    record["answered_seconds"] = [None if t is None else t - t_signal for t in finished_at]
    if not record["errors"]:
        arrays["served"] = np.concatenate(done)


def scenario_kill(engine: Path, tmp: Path, record: dict, arrays: dict) -> None:
    """A live server; one killed hard (all its processes at once); a new start; kill -9 of its cmrt process."""
    from cmrt.serve.client import Client

    shared = tmp / "shared-tmp"  # one TMPDIR for all: where workspaces are found
    extra = ["--max-batch", "8", "--threads", "1"]
    live = ServeProcess(engine, extra, tmp, tmpdir=shared, name="live")
    record["_servers"].append(live)
    live.wait_ready()
    live_files = {"workspaces": live.workspaces(), "shm": live.shm_left()}

    # a server whose processes all die at once (what the supervisor cannot clean up after)
    hard = ServeProcess(engine, extra, tmp, tmpdir=shared, name="hard")
    record["_servers"].append(hard)
    hard.wait_ready()
    hard_files = {"workspaces": [w for w in hard.workspaces() if w not in live_files["workspaces"]], "shm": hard.shm_left()}
    pids = hard.pids()
    everyone = [p for v in pids.values() for p in v]
    for pid in everyone:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    hard.proc.wait(10)
    _wait(lambda: not any(pid_alive(p) for p in everyone), 10)
    record["hard"] = {
        "files": hard_files,
        "left_after_kill": {"workspaces": [w for w in hard_files["workspaces"] if Path(w).exists()],
                            "shm": [f for f in hard_files["shm"] if os.path.exists(f"/dev/shm/{f}")]},
    }

    # a new start: removes the dead server's files, keeps the live one's
    new = ServeProcess(engine, extra, tmp, tmpdir=shared, name="new")
    record["_servers"].append(new)
    new.wait_ready()
    record["after_new_start"] = {
        "hard_workspaces_left": [w for w in hard_files["workspaces"] if Path(w).exists()],
        "hard_shm_left": [f for f in hard_files["shm"] if os.path.exists(f"/dev/shm/{f}")],
        "live_workspaces_left": [w for w in live_files["workspaces"] if Path(w).exists()],
        "live_shm_left": [f for f in live_files["shm"] if os.path.exists(f"/dev/shm/{f}")],
        "live_files": live_files,
    }
    arrays["live_after"] = Client(live.url).generate([5], class_labels=[5])

    # kill -9 of the new server's cmrt process: everything of it must go, and its ports be free
    pids = new.pids()
    record["kill9"] = {"pids": pids, "workspaces": [w for w in new.workspaces() if w not in live_files["workspaces"]],
                       "shm": new.shm_left()}
    t0 = time.monotonic()
    new.proc.send_signal(signal.SIGKILL)
    new.proc.wait(10)
    ports = [new.http, new.grpc, new.metrics]
    server_pids = [p for kind, v in pids.items() if kind != "cmrt" for p in v]
    gone = _wait(lambda: not any(pid_alive(p) for p in server_pids) and all(_port_free(p) for p in ports), 10)
    k = record["kill9"]
    k["seconds_until_gone"] = gone
    k["processes_left"] = [f"{p} ({process_kind(p)})" for p in server_pids if pid_alive(p)]
    k["ports_busy"] = [p for p in ports if not _port_free(p)]
    k["answers_after"] = post_or_get_safe(f"http://127.0.0.1:{new.http}/v2/health/ready")
    k["grpc_port_connectable"] = not _connect_refused(new.grpc)
    _wait(lambda: not [w for w in k["workspaces"] if Path(w).exists()], 5)
    k["workspaces_left"] = [w for w in k["workspaces"] if Path(w).exists()]
    k["shm_left"] = [f for f in k["shm"] if os.path.exists(f"/dev/shm/{f}")]
    k["total_seconds"] = time.monotonic() - t0

    record["live_shutdown"] = live.stop_with(signal.SIGTERM)


def post_or_get_safe(url: str):
    try:
        return post_or_get(url)
    except OSError as e:
        return type(e).__name__


SCENARIOS = {"drain": scenario_drain, "kill": scenario_kill}


def scenario(name: str, engine: Path, out_prefix: Path) -> None:
    record: dict = {"scenario": name, "_servers": []}
    arrays: dict[str, np.ndarray] = {}
    tmp = Path(tempfile.mkdtemp(prefix="cmrt-serve-test-"))
    try:
        with server_lock():
            SCENARIOS[name](engine, tmp, record, arrays)
    except BaseException:  # recorded for the test to show
        import traceback

        record["crash"] = traceback.format_exc()[-4000:]
        record["server_logs"] = {s.log.name: s.log.read_text(errors="replace")[-3000:] for s in record["_servers"]}
    finally:
        for s in record.pop("_servers"):
            s.kill()
        np.savez(out_prefix.with_suffix(".npz"), **arrays)
        out_prefix.with_suffix(".json").write_text(json.dumps(record, default=str))
        shutil.rmtree(tmp, ignore_errors=True)


# --- the tests ----------------------------------------------------------------------------
def drain_expected(engine: Path) -> np.ndarray:
    """In-process images of `drain_specs`, 8 rows a call (as the server batches them)."""
    import cmrt
    from cmrt.serve.handler import to_uint8

    pipe = cmrt.load(engine, device="cpu")
    rows = [(s, label) for seeds, label in drain_specs() for s in seeds]
    out = []
    for i in range(0, len(rows), 8):
        part = rows[i : i + 8]
        out.append(pipe(batch_size=len(part), seed=[s for s, _ in part], class_labels=[lab for _, lab in part],
                        num_inference_steps=STEPS, output_type="np").images)
    return to_uint8(np.concatenate(out))


@pytest.mark.serve
@needs_pytriton
def test_sigterm_finishes_every_request_in_flight(small_models, tmp_path):
    engine = small_models["cond"][1]
    rec = run_scenario("drain", engine, tmp_path / "record", module="tests.serve.test_lifecycle")
    assert rec["all_sent"] and rec["finished_before_signal"] == 0, rec  # all 16 were in flight
    assert rec["errors"] == [], (rec["errors"][:3], rec["shutdown"])
    sd = rec["shutdown"]
    assert sd["exit_code"] == 0, sd
    assert sd["processes_left"] == [] and sd["files_left"] == [] and sd["shm_left"] == [], sd
    assert rec["refused_after"] is not None, rec  # it stopped accepting while it drained
    assert max(rec["answered_seconds"]) > rec["refused_after"], rec
    served = np.load(tmp_path / "record.npz")["served"]
    assert_images_match(served, drain_expected(engine))


@pytest.fixture(scope="module")
def kill_run(small_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("serve-kill") / "record"
    return run_scenario("kill", small_models["cond"][1], out, module="tests.serve.test_lifecycle"), np.load(out.with_suffix(".npz"))


@pytest.mark.serve
@needs_pytriton
def test_kill_9_leaves_no_server(kill_run):
    rec, _ = kill_run
    k = rec["kill9"]
    assert k["pids"]["tritonserver"] and k["pids"]["stub"], k["pids"]  # there was a server to leave behind
    assert k["processes_left"] == [], k
    assert k["ports_busy"] == [] and k["seconds_until_gone"] is not None and k["seconds_until_gone"] < 10, k
    assert k["answers_after"] != 200 and not k["grpc_port_connectable"], k
    assert k["workspaces_left"] == [] and k["shm_left"] == [], k  # the supervisor removed them


@pytest.mark.serve
@needs_pytriton
def test_next_start_removes_what_a_killed_server_left_and_keeps_a_live_ones(small_models, kill_run):
    rec, arrays = kill_run
    left = rec["hard"]["left_after_kill"]
    assert left["workspaces"] and left["shm"], rec["hard"]  # all processes killed at once: leftovers
    after = rec["after_new_start"]
    assert after["hard_workspaces_left"] == [] and after["hard_shm_left"] == [], after
    assert after["live_files"]["workspaces"] and after["live_files"]["shm"], after
    assert after["live_workspaces_left"] == after["live_files"]["workspaces"], after
    assert after["live_shm_left"] == after["live_files"]["shm"], after
    from tests.serve.test_serve import expected_images

    assert_images_match(arrays["live_after"], expected_images(small_models["cond"][1], [(5, 5, None)]))
    sd = rec["live_shutdown"]
    assert sd["exit_code"] == 0 and sd["processes_left"] == [] and sd["shm_left"] == [], sd


if __name__ == "__main__":
    scenario_main(scenario)
