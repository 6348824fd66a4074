"""The supervisor of `cmrt serve`'s tritonserver (stdlib only; run by path, never imported by cmrt).

    python -I supervisor.py WATCH_FD WORKSPACE SHM_PREFIX TRITONSERVER [ARGS...]

Started by `server.TritonServer` in a session of its own. Starts tritonserver in another
session (its Python backend stubs join tritonserver's process group) with
PR_SET_PDEATHSIG=SIGKILL, so that tritonserver dies if this process is killed; writes
tritonserver's pid on stdout. Then reads WATCH_FD, the read end of a pipe whose write end
only the cmrt process holds:

- b"t": stop tritonserver gracefully (SIGTERM: it finishes the inferences in flight);
- EOF: the cmrt process is gone (whatever killed it) or wants a hard stop: tritonserver's
  whole group is killed, then WORKSPACE and the shared memory under SHM_PREFIX are removed.

SIGINT, SIGTERM and SIGHUP are ignored: this process is stopped through the pipe only. It is
a child subreaper, so stubs orphaned by tritonserver's death are reaped here. It exits with
tritonserver's exit code once tritonserver's group is gone (stubs left after tritonserver
exited get 2 s, then SIGKILL).
"""
import ctypes
import os
import select
import shutil
import signal
import subprocess
import sys
import time

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
SHM_DIR = "/dev/shm"


def main(argv: list[str]) -> int:
    watch, workspace, shm_prefix, cmd = int(argv[0]), argv[1], argv[2], argv[3:]
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)  # the stubs come back here when tritonserver dies
    me = os.getpid()
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, signal.SIG_IGN)  # stopped through the pipe only

    def child():  # in tritonserver, before exec
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, signal.SIG_DFL)  # ignored signals would stay ignored across exec
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != me:  # this process died before the prctl
            os._exit(70)

    triton = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=2, stderr=2, start_new_session=True, preexec_fn=child)
    os.write(1, b"%d\n" % triton.pid)
    os.close(1)

    def killpg():
        try:
            os.killpg(triton.pid, signal.SIGKILL)
        except OSError:
            pass

    def group_alive():
        try:
            os.killpg(triton.pid, 0)
        except OSError:
            return False
        return True

    def reap():
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return

    orphaned = False
    while triton.poll() is None:
        ready, _, _ = select.select([watch], [], [], 0.2)
        if ready:
            data = os.read(watch, 64)
            if not data:
                orphaned = True
                break
            if b"t" in data:
                triton.send_signal(signal.SIGTERM)
    if orphaned:
        killpg()
    code = triton.wait()
    deadline = time.monotonic() + (0.0 if orphaned else 2.0)
    while group_alive() and time.monotonic() < deadline + 3.0:  # zombies of another reaper never leave
        if time.monotonic() > deadline:
            killpg()
        reap()
        time.sleep(0.05)
    if orphaned:
        shutil.rmtree(workspace, ignore_errors=True)
        for name in os.listdir(SHM_DIR) if os.path.isdir(SHM_DIR) else []:
            if name.startswith(shm_prefix):
                try:
                    os.unlink(os.path.join(SHM_DIR, name))
                except OSError:
                    pass
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
