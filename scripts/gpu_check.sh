#!/usr/bin/env bash
# The GPU check: runs, on whatever NVIDIA machine it is given, every GPU part of cmrt it can, and
# writes one JSON report. It never installs anything (a borrowed GPU machine may have no internet):
# it uses the Python environment it is given.
#
#   PYTHON=/path/to/venv/bin/python scripts/gpu_check.sh [REPORT.json]
#
# The report goes to the argument, else $GPU_CHECK_REPORT, else $OUT/gpu_check.json when $OUT is
# set, else ./gpu_check.json; each part's full log goes beside it (gpu_check-logs/). Parts, each
# PASS / FAIL / SKIPPED with the reason:
#   cuda_layer  cmrt's CUDA layer against the real driver (buffers, pinned memory, async copies,
#               capture and replay of a multi-step graph, error paths): where cuda-bindings imports
#   ort_cuda    the ONNX Runtime CUDA tests (tests/gpu/test_ort_cuda.py): where onnxruntime-gpu imports
#   tensorrt    `make test-gpu` on the TensorRT tests (tests/gpu/test_gpu_path.py): where TensorRT imports
#   benchmark   `cmrt bench` on the shipped digits model (ORT CUDA, TensorRT fp16, +/- CUDA graphs)
# The whole run stays under GPU_CHECK_BUDGET_S seconds (default 570); a part that would run past
# it, or past its own limit, is stopped and reported FAIL (timed out). Exit status: 1 if a part
# failed, else 0 (also when every part was skipped, as on a machine without a GPU).
set -u

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
if [ $# -ge 1 ]; then
    REPORT="$1"
elif [ -n "${GPU_CHECK_REPORT:-}" ]; then
    REPORT="$GPU_CHECK_REPORT"
elif [ -n "${OUT:-}" ]; then
    REPORT="$OUT/gpu_check.json"
else
    REPORT="./gpu_check.json"
fi
mkdir -p "$(dirname "$REPORT")"
REPORT="$(cd "$(dirname "$REPORT")" && pwd)/$(basename "$REPORT")"
WORK="$(dirname "$REPORT")/gpu_check-logs"
rm -rf "$WORK"
mkdir -p "$WORK"
PARTS="$WORK/parts.tsv"
: > "$PARTS"
BUDGET="${GPU_CHECK_BUDGET_S:-570}"
START=$(date +%s)

# nothing may reach for the network: no pip index, no hub, no polygraphy auto-install
export PIP_NO_INDEX=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 POLYGRAPHY_AUTOINSTALL_DEPS=0
export CMRT_ENGINE_DIR="$WORK/engines" PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

record() {  # name status seconds reason command
    printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$(printf '%s' "$4" | tr '\t\n' '  ')" "$5" >> "$PARTS"
    printf '%-11s %-8s %s\n' "$1" "$2" "$4"
}

# why a part cannot run here ("" when it can): a Python snippet printing the reason, if any
why_not() {
    timeout 120 "$PYTHON" - "$1" 2>/dev/null <<'PY' || echo "the check itself failed (is PYTHON a working interpreter?)"
import importlib, shutil, sys, os
part = sys.argv[1]
def gpu_visible():
    return shutil.which("nvidia-smi") is not None or os.path.exists("/dev/nvidia0")
def need(module, hint):
    try:
        return importlib.import_module(module), None
    except Exception as e:
        return None, f"{module} does not import ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); {hint}"
reasons = []
if not gpu_visible():
    reasons.append("no NVIDIA GPU on this machine (no nvidia-smi on PATH, no /dev/nvidia0)")
if part == "cuda_layer":
    rt, why = need("cuda.bindings.runtime", "install cuda-bindings (the gpu-ort extra)")
    reasons.append(why)
    if rt is not None and not reasons[0]:
        err, n = rt.cudaGetDeviceCount()
        if int(err) != 0 or n < 1:
            reasons.append(f"cuda-bindings imports but cudaGetDeviceCount fails ({err}): no usable driver")
elif part == "ort_cuda":
    ort, why = need("onnxruntime", "install onnxruntime-gpu (the gpu-ort extra)")
    reasons.append(why)
    if ort is not None and "CUDAExecutionProvider" not in ort.get_available_providers():
        reasons.append(f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (the CPU package, not onnxruntime-gpu)")
    reasons.append(need("torch", "the tests build their engine folder with the export extra (torch, diffusers)")[1])
elif part in ("tensorrt", "benchmark"):
    reasons.append(need("tensorrt", "install TensorRT: pip install 'cmrt[gpu]' --extra-index-url https://pypi.nvidia.com")[1])
    reasons.append(need("polygraphy", "install the gpu extra (polygraphy, onnx-graphsurgeon)")[1])
    reasons.append(need("torch", "building engine folders needs the export extra (torch, diffusers)")[1])
reason = "; ".join(r for r in reasons if r)
print(reason)
PY
}

run_part() {  # name limit_s command...
    local name="$1" limit="$2"
    shift 2
    local cmd="$*"
    local reason
    reason="$(why_not "$name")"
    if [ -n "$reason" ]; then
        record "$name" SKIPPED 0 "$reason" "$cmd"
        return
    fi
    local left=$(( BUDGET - ($(date +%s) - START) ))
    if [ "$left" -lt 30 ]; then
        record "$name" FAIL 0 "not run: the check's time budget (${BUDGET} s) is spent" "$cmd"
        return
    fi
    [ "$limit" -gt "$left" ] && limit="$left"
    local t0=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" > "$WORK/$name.log" 2>&1
    local rc=$?
    local secs=$(( $(date +%s) - t0 ))
    if [ "$rc" -eq 0 ]; then
        record "$name" PASS "$secs" "$(tail -n 1 "$WORK/$name.log")" "$cmd"
    elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        record "$name" FAIL "$secs" "timed out after ${limit} s (log: gpu_check-logs/$name.log)" "$cmd"
    else
        record "$name" FAIL "$secs" "exit $rc: $(grep -E 'FAILED|ERROR|Error' "$WORK/$name.log" | tail -n 1) (log: gpu_check-logs/$name.log)" "$cmd"
    fi
}

echo "cmrt GPU check: $(date -u +%Y-%m-%dT%H:%M:%SZ), Python: $PYTHON, report: $REPORT"
timeout 60 "$PYTHON" -m cmrt doctor --json > "$WORK/doctor.json" 2> "$WORK/doctor.log" || echo '{}' > "$WORK/doctor.json"
if command -v nvidia-smi > /dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$WORK/nvidia-smi.txt" 2>&1 || true
fi

PYTEST=("$PYTHON" -m pytest -q -rA --run-gpu -m gpu -p no:cacheprovider)
run_part cuda_layer 90 "${PYTEST[@]}" tests/runtime/backends/test_cuda.py
run_part ort_cuda 180 "${PYTEST[@]}" tests/gpu/test_ort_cuda.py
if command -v make > /dev/null; then
    run_part tensorrt 300 make --no-print-directory test-gpu GPU_PY="$PYTHON" GPU_TESTS=tests/gpu/test_gpu_path.py
else
    run_part tensorrt 300 "${PYTEST[@]}" tests/gpu/test_gpu_path.py
fi
run_part benchmark 150 "$PYTHON" -m cmrt bench --model digits --batch 1 4 --steps 1 2 --runs 5 --no-compile \
    --no-cold-start --engines "$WORK/engines" --out "$WORK/bench"

JSON_PY="$PYTHON"
"$JSON_PY" -c 'import json' 2> /dev/null || JSON_PY=python3
"$JSON_PY" - "$PARTS" "$REPORT" "$WORK" "$PYTHON" "$START" <<'PY'
import datetime, json, os, platform, subprocess, sys, time
parts_tsv, report, work, python, start = sys.argv[1:6]
parts = []
for line in open(parts_tsv):
    name, status, secs, reason, cmd = line.rstrip("\n").split("\t")
    log = os.path.join(work, f"{name}.log")
    tail = open(log, errors="replace").read().splitlines()[-15:] if os.path.exists(log) else []
    parts.append({"name": name, "status": status, "reason": reason, "seconds": int(secs), "command": cmd,
                  "log": os.path.relpath(log, os.path.dirname(report)) if os.path.exists(log) else None, "log_tail": tail})
def read(path):
    try:
        return open(path).read().strip()
    except OSError:
        return ""
try:
    doctor = json.loads(read(os.path.join(work, "doctor.json")) or "{}")
except ValueError:
    doctor = {"error": read(os.path.join(work, "doctor.log"))[-2000:]}
try:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10).stdout.strip() or None
except Exception:
    commit = None
summary = {s: sum(p["status"] == s for p in parts) for s in ("PASS", "FAIL", "SKIPPED")}
out = {
    "format": 1,
    "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    "seconds": int(time.time() - int(start)),
    "host": platform.node(),
    "cmrt_commit": commit,
    "python": python,
    "nvidia_smi": read(os.path.join(work, "nvidia-smi.txt")) or None,
    "doctor": doctor,
    "parts": parts,
    "summary": summary,
}
tmp = report + ".tmp"
with open(tmp, "w") as f:
    json.dump(out, f, indent=2)
os.replace(tmp, report)
print(f"{summary['PASS']} passed, {summary['FAIL']} failed, {summary['SKIPPED']} skipped; report: {report}")
PY
grep -q "	FAIL	" "$PARTS" && exit 1
exit 0
