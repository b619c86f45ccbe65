# vaelab — two commands on a fresh machine:  `make run`  and  `make test`.
# Both create or refresh the virtual environment first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.vaelab-installed
# A GPU machine gets the CUDA build of torch; a machine without one gets the CPU
# build (pinned so pip takes the local wheel instead of several GB of CUDA wheels).
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1)
TORCH_CPU ?= torch==2.13.0
ifeq ($(HAS_GPU),1)
TORCH_SPEC ?= torch
else
TORCH_SPEC ?= $(TORCH_CPU)
endif
STUDY  ?= ablations/smoke.yaml
BUDGET ?= smoke
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0
export PYTHONUNBUFFERED := 1

.PHONY: venv run test test-slow test-gpu bench gpu-bundle gpu-check clean

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

# The main job: a small real ablation study on the bundled offline dataset, report included.
run: $(STAMP)
	$(VENV)/bin/vaelab run $(STUDY) --budget $(BUDGET)

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

test-gpu: $(STAMP)
	$(PY) -m pytest -q -m gpu

bench: $(STAMP)
	$(PY) benchmarks/bench_train.py

# GPU evidence in one command (benchmarks/gpu_check.py; docs/speed.md, "On a GPU machine").
# gpu-bundle (needs network): the wheels a bare GPU Python lacks and the MNIST files, into
# ignored folders that travel with the repository. gpu-check never builds the venv: it
# runs with the venv's Python when there is one, else the machine's python3.
GPU_WHEELS ?= .gpu-wheels
GPU_DATA   ?= .gpu-data/mnist
GPU_PYTHON_VERSION ?= 3.12
# MNIST_SRC: a folder holding the four MNIST IDX files (make gpu-bundle MNIST_SRC=DIR), by
# default where `vaelab data fetch mnist` puts them: $VAELAB_DATA_DIR/mnist, else ~/.vaelab/data/mnist.
MNIST_SRC  ?= $(or $(VAELAB_DATA_DIR),$(HOME)/.vaelab/data)/mnist
GPU_OUT    ?= gpu-check-out
GPU_PY     ?= $(if $(wildcard $(PY)),$(PY),python3)
gpu-bundle:
	$(GPU_PY) -m pip download -q --only-binary=:all: --python-version $(GPU_PYTHON_VERSION) \
	  --implementation cp --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
	  -d $(GPU_WHEELS) -r benchmarks/gpu_wheels.txt
	mkdir -p $(GPU_DATA) && install -m 644 $(MNIST_SRC)/*-ubyte* $(GPU_DATA)/
	du -sh $(GPU_WHEELS) $(GPU_DATA)

gpu-check:
	$(GPU_PY) benchmarks/gpu_check.py --out $(GPU_OUT) $(GPU_ARGS)

clean:
	rm -rf $(VENV) ray_results mlflow.db
