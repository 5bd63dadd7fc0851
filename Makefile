# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# Both create (or reuse) .venv, reuse an already-installed torch if there is one
# (the venv sees the system site-packages), else install torch==2.13.0, then
# install this package with its dev extras (compiling the C++/CUDA extension).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.cagul-installed
EXT_SOURCES := setup.py pyproject.toml $(wildcard csrc/*.cpp csrc/*/*.cpp csrc/*/*.h csrc/*/*.cu csrc/*/*.cuh)

.PHONY: install test lint demo bench bench-quick clean

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

clean:
	rm -rf build *.egg-info cagul_kernels/*.so
