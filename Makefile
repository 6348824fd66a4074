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

.PHONY: setup setup-gpu setup-gpu-ort engine generate demo doctor test test-slow test-gpu bench clean

setup: $(VENV)/.cmrt-setup

# torch is pinned to the local CPU wheel (a bare `torch` pulls a multi-GB CUDA build).
$(VENV)/.cmrt-setup: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[cpu,openvino,export,dev,serve]'
	touch $@

engine: setup
	$(PY) -m cmrt build $(MODEL) --out $(ENGINES)/$(subst /,--,$(MODEL)) $(ARGS)

generate: engine
	$(PY) -m cmrt generate $(ENGINES)/$(subst /,--,$(MODEL)) --batch $(BATCH) --seed 0 --out $(OUT)/$(subst /,--,$(MODEL)).png $(ARGS)

demo: setup
	$(PY) -m cmrt demo --model $(MODEL) --engines $(ENGINES) --out $(OUT)

test: setup
	$(PY) -m pytest -q

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
