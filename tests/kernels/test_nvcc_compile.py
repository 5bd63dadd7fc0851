"""Compile-only checks of the CUDA code with nvcc, no GPU needed: every ``csrc/cuda/*.cu``
for sm_80 and sm_90, and the tensor -> pointer glue of ``csrc/ops.cpp`` built with
``CAGUL_WITH_CUDA`` against the installed torch headers. Skipped only without nvcc."""

import glob
import os
import shutil
import subprocess
import sysconfig

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CU_SOURCES = sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")))
NVCC = shutil.which("nvcc")

pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH")


def _compile(args: list[str]) -> None:
    cmd = [NVCC, "-std=c++17", *args]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(cmd)}\n{result.stdout}\n{result.stderr}"


def test_there_are_cuda_sources():
    assert CU_SOURCES, "no csrc/cuda/*.cu found"


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("source", CU_SOURCES, ids=os.path.basename)
def test_cu_compiles(source, arch, tmp_path):
    # setup.py's flags plus the ones torch's CUDAExtension adds (no implicit half / bfloat16
    # conversions), warnings as errors: e.g. a host-only function called from device code is
    # only a warning, yet it compiles the kernel to an empty stub.
    from torch.utils.cpp_extension import COMMON_NVCC_FLAGS

    flags = ["-O3", "--use_fast_math", *COMMON_NVCC_FLAGS, "-Werror", "all-warnings"]
    flags.append(f"-arch={arch}")
    _compile([*flags, "-c", source, "-o", str(tmp_path / "k.o")])


def test_cuda_glue_compiles(tmp_path):
    """csrc/ops.cpp with CAGUL_WITH_CUDA (host code: nvcc supplies the CUDA include path)."""
    from torch.utils.cpp_extension import include_paths

    torch_include = include_paths()[0]
    if not os.path.exists(os.path.join(torch_include, "c10", "cuda", "CUDAStream.h")):
        pytest.skip("the installed torch ships no c10/cuda headers")
    defines = ["-DCAGUL_WITH_CUDA", "-DTORCH_EXTENSION_NAME=_C"]
    # CPU wheels lack this generated header (it only sets Windows export macros).
    if not os.path.exists(
        os.path.join(torch_include, "c10", "cuda", "impl", "cuda_cmake_macros.h")
    ):
        defines.append("-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE")
    includes = [f"-I{p}" for p in [*include_paths(), sysconfig.get_paths()["include"]]]
    _compile(
        [
            "-x",
            "c++",
            "-O0",
            "-c",
            *defines,
            *includes,
            "csrc/ops.cpp",
            "-o",
            str(tmp_path / "b.o"),
        ]
    )
