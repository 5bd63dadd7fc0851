# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# Both create (or reuse) .venv, reuse an already-installed torch if there is one
# (the venv sees the system site-packages), else install torch==2.13.0, then
# install this package with its dev extras (compiling the C++/CUDA extension).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.cagul-installed
EXT_SOURCES := setup.py pyproject.toml $(wildcard csrc/*.cpp csrc/*.h csrc/*/*.cpp csrc/*/*.h csrc/*/*.cu csrc/*/*.cuh)

.PHONY: install test lint demo bench bench-quick bench-pytest bench-regression gpu-check gpu-step-bench check-cuda-build clean

$(PY):
	$(PYTHON) -m venv --system-site-packages $(VENV)

$(STAMP): $(PY) $(EXT_SOURCES)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -q setuptools wheel ninja
	$(PY) -m pip install --no-build-isolation -e ".[dev]"
	touch $@

install: $(STAMP)

lint: install
	$(PY) -m ruff check .

test: lint
	$(PY) -m pytest

# CAGUL end to end on the synthetic benchmark (docs/demo.md): writes runs/demo/, caches the
# benchmark and the trained vanilla model in runs/cache/ (a second run skips the training).
demo: install
	$(PY) -m cagul demo

# The quick importance-vs-eager comparison (seconds).
bench-quick: install
	$(PY) benchmarks/bench_importance.py --quick

# Every benchmark, each writing CSV/JSON/PNG to benchmarks/results/ (tens of minutes on CPU).
bench: install
	$(PY) benchmarks/bench_importance.py
	$(PY) benchmarks/bench_topk.py
	$(PY) benchmarks/bench_transform_scatter.py
	$(PY) benchmarks/bench_vlm_long_context.py

# pytest-benchmark suites (benchmarks/test_bench_*.py, every provider side by side per size):
# JSON to benchmarks/results/bench_pytest_<cpu|gpu>.json; then the ratio regression check.
BENCH_TAG = $(shell $(PY) -c "import torch; print('gpu' if torch.cuda.is_available() else 'cpu')" 2>/dev/null)
bench-pytest: install
	$(PY) -m pytest benchmarks -q -p no:cacheprovider --benchmark-only \
		--benchmark-min-rounds=5 --benchmark-max-time=0.5 --benchmark-columns=min,median,rounds \
		--benchmark-json=benchmarks/results/bench_pytest_$(BENCH_TAG).json

# Ours / baseline ratios of a bench-pytest run against the committed ones (exit 1 on a drop).
bench-regression: install
	$(PY) benchmarks/check_regression.py benchmarks/results/bench_pytest_$(BENCH_TAG).json

# The whole GPU verification on a GPU machine (benchmarks/gpu_check.py): its own python (the
# machine's, no venv or install needed). `make gpu-check DRY=1`: the CPU dry run.
GPU_PYTHON ?= $(shell test -x $(PY) && echo $(PY) || echo python3)
gpu-check:
	$(GPU_PYTHON) benchmarks/gpu_check.py $(if $(DRY),--dry-run)

# CAGUL's training step and inference against LoRA / full finetuning on a GPU: the 7B
# geometries, 32 layers, bf16 (benchmarks/bench_cagul_step.py; needs transformers>=5.18),
# writing benchmarks/results/cagul_step_*_gpu.*; stopped after 8 minutes.
gpu-step-bench:
	timeout 480 $(GPU_PYTHON) benchmarks/bench_cagul_step.py --device cuda --dtype bf16 --layers 32

# Builds the full CUDA extension against a CUDA torch in a throwaway venv (no GPU needed;
# ~5.5 GB download from the local wheel cache, ~12 GB free disk). Not part of `make test`.
check-cuda-build:
	scripts/check_cuda_build.sh

clean:
	rm -rf build *.egg-info cagul_kernels/*.so
