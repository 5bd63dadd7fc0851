"""Every CUDA source (csrc/cuda/*.cu) compiles with nvcc for sm_80 and sm_90 (compile only:
no GPU needed). Skipped only when nvcc is not on PATH."""

import shutil
import subprocess
from pathlib import Path

import pytest

CUDA_DIR = Path(__file__).resolve().parents[1] / "csrc" / "cuda"
SOURCES = sorted(CUDA_DIR.glob("*.cu"))
NVCC = shutil.which("nvcc")


def test_cuda_sources_exist():
    assert SOURCES, f"no .cu files under {CUDA_DIR}"


@pytest.mark.skipif(NVCC is None, reason="nvcc not on PATH")
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_nvcc_compiles(source, arch, tmp_path):
    cmd = [NVCC, "-std=c++17", "-O3", "-c", f"-arch={arch}", str(source)]
    cmd += ["-I", str(CUDA_DIR), "-o", str(tmp_path / f"{source.stem}.o")]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{' '.join(cmd)}\n{result.stdout}\n{result.stderr}"
