# cmrt: the two commands a user needs are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
MODEL  ?= digits
OUT    ?= outputs
ENGINES ?= engines
BATCH  ?= 8
ARGS   ?=

VENV_GPU ?= .venv-gpu
# Serving (nvidia-pytriton 0.7, Triton 2.51) needs numpy < 2: its own venv, so that .venv has what
# `pip install 'cmrt[cpu]'` gives users (numpy 2).
VENV_SERVE ?= .venv-serve
PY_SERVE := $(VENV_SERVE)/bin/python

.PHONY: setup setup-serve setup-gpu setup-gpu-ort engine generate demo doctor test test-main test-serve test-slow test-gpu bench clean

setup: $(VENV)/.cmrt-setup

# torch is pinned to the local CPU wheel (a bare `torch` pulls a multi-GB CUDA build).
# --clear: a .venv made before the split (with the serving extra and numpy 1) is rebuilt, not patched.
$(VENV)/.cmrt-setup: pyproject.toml
	$(PYTHON) -m venv --clear $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[cpu,openvino,export,dev]' 'numpy>=2'
	touch $@

setup-serve: $(VENV_SERVE)/.cmrt-setup

$(VENV_SERVE)/.cmrt-setup: pyproject.toml
	$(PYTHON) -m venv --clear $(VENV_SERVE)
	$(PY_SERVE) -m pip install -q --upgrade pip
	$(PY_SERVE) -m pip install -q torch==2.13.0
	$(PY_SERVE) -m pip install -q -e '.[cpu,export,dev,serve]'
	touch $@

engine: setup
	$(PY) -m cmrt build $(MODEL) --out $(ENGINES)/$(subst /,--,$(MODEL)) $(ARGS)

generate: engine
	$(PY) -m cmrt generate $(ENGINES)/$(subst /,--,$(MODEL)) --batch $(BATCH) --seed 0 --out $(OUT)/$(subst /,--,$(MODEL)).png $(ARGS)

demo: setup
	$(PY) -m cmrt demo --model $(MODEL) --engines $(ENGINES) --out $(OUT)

# The main suite in .venv (serving tests skipped, naming `make test-serve`), then the serving tests in
# .venv-serve; both run even when the first fails, and either failing fails `make test`.
test: setup setup-serve
	@status=0; \
	$(MAKE) --no-print-directory test-main || status=1; \
	$(MAKE) --no-print-directory test-serve || status=1; \
	exit $$status

test-main: setup
	$(PY) -m pytest -q

# CMRT_CLIENT_PYTHON: the numpy-2 .venv, whose cmrt.client is run against the server.
test-serve: setup setup-serve
	CMRT_RUN_SERVE=1 CMRT_CLIENT_PYTHON=$(abspath $(PY)) $(PY_SERVE) -m pytest -q -m serve

test-slow: setup
	$(PY) -m pytest -q -rP --run-slow

# GPU machines only: onnxruntime-gpu (+ TensorRT) in their own venv (never beside onnxruntime).
# setup-gpu needs NVIDIA's package index for TensorRT's libraries; setup-gpu-ort only the public one
# (ONNX Runtime's CUDA EP, no TensorRT). Both make $(VENV_GPU); test-gpu runs in whichever exists,
# or in GPU_PY (any Python with cmrt's GPU stack, as scripts/gpu_check.sh passes it).
NVIDIA_INDEX ?= https://pypi.nvidia.com
GPU_PY ?= $(VENV_GPU)/bin/python
GPU_TESTS ?= tests

setup-gpu: $(VENV_GPU)/.cmrt-setup-gpu

setup-gpu-ort: $(VENV_GPU)/.cmrt-setup-gpu-ort

$(VENV_GPU)/.cmrt-setup-gpu: pyproject.toml
	$(PYTHON) -m venv $(VENV_GPU)
	$(VENV_GPU)/bin/python -m pip install -q --upgrade pip
	$(VENV_GPU)/bin/python -m pip install -q torch==2.13.0
	$(VENV_GPU)/bin/python -m pip install -q -e '.[gpu,export,dev]' --extra-index-url $(NVIDIA_INDEX)
	touch $@

$(VENV_GPU)/.cmrt-setup-gpu-ort: pyproject.toml
	$(PYTHON) -m venv $(VENV_GPU)
	$(VENV_GPU)/bin/python -m pip install -q --upgrade pip
	$(VENV_GPU)/bin/python -m pip install -q torch==2.13.0
	$(VENV_GPU)/bin/python -m pip install -q -e '.[gpu-ort,export,dev]'
	touch $@

$(VENV_GPU)/bin/python:
	$(MAKE) setup-gpu

test-gpu: $(if $(filter $(VENV_GPU)/bin/python,$(GPU_PY)),$(VENV_GPU)/bin/python)
	$(GPU_PY) -m cmrt doctor
	$(GPU_PY) -m pytest -q -rA --run-gpu -m gpu $(GPU_TESTS)

doctor: setup
	$(PY) -m cmrt doctor

bench: setup
	$(PY) -m cmrt bench $(if $(ARCH),--arch $(ARCH),--model $(MODEL)) $(ARGS)

clean:
	rm -rf $(ENGINES) $(OUT) .pytest_cache
