"""Shared set-up of the pytest-benchmark suites (``benchmarks/test_bench_*.py``; ``make
bench-pytest``). Outside ``tests/``, so ``make test`` never collects them: timings are not
tests. The suites run on CUDA when present, else on CPU."""

import pytest
import torch

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
# The C++ kernel of the device; on CUDA also Triton (the default there).
BACKENDS = ["triton", "cuda"] if DEVICE.type == "cuda" else ["cpu"]


@pytest.fixture
def measure(benchmark):
    """``measure(group, fn)``: times ``fn`` in ``group`` (CUDA work waited for)."""

    def run(group: str, fn):
        benchmark.group = group
        if DEVICE.type == "cuda":
            return benchmark(lambda: (fn(), torch.cuda.synchronize()))
        return benchmark(fn)

    return run
