"""Every CUDA source in csrc/cuda compiles with nvcc (compile only, no GPU needed) for the
architectures the extension is built for. Skipped when nvcc is not on PATH."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "csrc" / "cuda").glob("*.cu"))
ARCHS = ("sm_80", "sm_90")
NVCC = shutil.which("nvcc")


def test_there_are_cuda_sources():
    assert SOURCES, "no csrc/cuda/*.cu found"


@pytest.mark.skipif(NVCC is None, reason="nvcc not on PATH")
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_nvcc_compiles(source, arch, tmp_path):
    cmd = [
        NVCC, "-c", "-std=c++17", "-O3", "--use_fast_math", f"-arch={arch}",
        "-I", str(ROOT / "csrc"), str(source), "-o", str(tmp_path / f"{source.stem}.o"),
    ]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"{' '.join(cmd)}\n{result.stdout}\n{result.stderr}"
