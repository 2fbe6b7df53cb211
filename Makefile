# Two commands from a fresh machine:  make test   |   make demo
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch where no GPU is present, the CUDA 13.0 build where one is.
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1 || echo 0)
TORCH_SPEC ?= $(if $(filter 1,$(HAS_GPU)),torch==2.14.1,torch==2.13.0)
SOURCES := $(shell find csrc -type f) setup.py pyproject.toml
export MAX_JOBS ?= 2

.PHONY: test demo demo-sketch build bench cuda-check cmake-check clean zoo-small

$(BIN)/.deps: requirements-dev.txt Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -r requirements-dev.txt
	touch $@

$(BIN)/.built: $(BIN)/.deps $(SOURCES)
	$(BIN)/pip install -q --no-build-isolation --no-deps -e .
	touch $@

build: $(BIN)/.built

test: build
	$(BIN)/python -m pytest -q tests

# The main job: rank the MiniZoo experts for a bundled task, predict the chosen one's fine-tuning time.
demo: build
	$(BIN)/python -m zoo_kernels.main_job $(DEMO_ARGS)

# The kernel-level demo: sketched vs exact NTK of a small CNN.
demo-sketch: build
	$(BIN)/python -m zoo_kernels.demo

bench: build
	$(BIN)/python -m pytest benchmarks -q --benchmark-columns=mean,stddev,rounds --benchmark-json=.benchmarks/last.json

# MiniZoo small tier, recomputed and compared with the stored ground truth (nothing is written; fails on a
# mismatch): the 36 fine-tuning runs of seed 0 (6 models x 3 tasks x 10/50 shots) and 4 SGD-grid runs.
# A few minutes on 2 CPU cores. The whole small tier: python -m zoo_kernels.zoo.groundtruth --tier small --verify
# Only latin_heldout: its runs reproduce on other CPUs (an Intel Xeon: losses within 4e-6 of the files, made on an
# AMD EPYC), while texture_orient's and pendigits_inverted's are chaotic under another CPU's rounding (up to 252/600
# test samples and 35 % per-step loss apart). Tolerances absorb rounding; a recipe change is far larger.
ZOO_TOL ?= --acc-samples 2 --rtol 5e-3
zoo-small: build
	$(BIN)/python -m zoo_kernels.zoo.groundtruth --tier small --part finetune --tasks latin_heldout --seeds 0 \
		--verify $(ZOO_TOL)
	$(BIN)/python -m zoo_kernels.zoo.groundtruth --tier small --part sgd --tasks latin_heldout \
		--lrs 0.003 0.03 --batches 16 --momenta 0.9 --verify $(ZOO_TOL)

# Compiles (does not run) the CUDA sources with nvcc against torch 2.14.1 + CUDA 13.0.
cuda-check:
	tools/check_cuda_build.sh

# Builds the C++ library with CMake (find_package(Torch)) and loads it.
cmake-check: build
	tools/check_cmake_build.sh

clean:
	rm -rf build build-cmake zoo_kernels/_C*.so *.egg-info
