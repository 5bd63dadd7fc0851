"""Builds the `cagul_kernels._C` extension.

CPU kernels (csrc/cpu, OpenMP) are always built. The CUDA kernels (csrc/cuda) are added
when the installed torch has CUDA and nvcc is found; otherwise the build is CPU-only and
says so. Install with `pip install --no-build-isolation -e .` so that the extension is
compiled against the torch already installed.
"""

import glob
import os
import re
import shutil
import subprocess

import torch
from setuptools import find_packages, setup


def _cuda_home_from_nvcc() -> str | None:
    """The toolkit root nvcc reports itself (``TOP=`` of ``nvcc --dryrun``). torch guesses
    CUDA_HOME from where nvcc is found, which is wrong for a wrapper script such as
    /usr/local/bin/nvcc (the CUDA headers are then not found)."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    dry = subprocess.run(
        [nvcc, "--dryrun", "-c", "-x", "cu", os.devnull], capture_output=True, text=True
    )
    top = re.search(r"^#\$ TOP=(.+)$", dry.stdout + dry.stderr, re.MULTILINE)
    return os.path.realpath(top.group(1).strip()) if top else None


# Before torch.utils.cpp_extension reads it at import time.
_CUDA_HOME_SET = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
if torch.version.cuda and not _CUDA_HOME_SET and (found := _cuda_home_from_nvcc()):
    os.environ["CUDA_HOME"] = found

from torch.utils.cpp_extension import (  # noqa: E402
    CUDA_HOME,
    BuildExtension,
    CppExtension,
    CUDAExtension,
)

ROOT = os.path.dirname(os.path.abspath(__file__))


def _cuda_build_possible() -> tuple[bool, str]:
    if os.environ.get("CAGUL_FORCE_CPU_BUILD") == "1":
        return False, "CAGUL_FORCE_CPU_BUILD=1"
    if torch.version.cuda is None:
        return False, "the installed torch has no CUDA support"
    if CUDA_HOME is None and shutil.which("nvcc") is None:
        return False, "nvcc was not found"
    return True, f"torch CUDA {torch.version.cuda}, CUDA_HOME={CUDA_HOME}"


def _sources(pattern: str) -> list[str]:
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def _extension():
    with_cuda, why = _cuda_build_possible()
    cxx_flags = ["-O3", "-std=c++20", "-fopenmp", "-fno-math-errno", "-fno-trapping-math"]
    sources = ["csrc/ops.cpp", *_sources("csrc/cpu/*.cpp")]
    if not with_cuda:
        print(f"cagul-kernels: building the CPU-only extension ({why}).")
        return CppExtension(
            "cagul_kernels._C",
            sources,
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=["-fopenmp"],
        )
    print(f"cagul-kernels: building CPU + CUDA kernels ({why}).")
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST")
    nvcc_flags = ["-O3", "-std=c++17", "--use_fast_math", "-lineinfo"]
    if not archs:
        nvcc_flags += ["-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90,code=sm_90"]
    return CUDAExtension(
        "cagul_kernels._C",
        sources + _sources("csrc/cuda/*.cu"),
        define_macros=[("CAGUL_WITH_CUDA", "1")],
        extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
        extra_link_args=["-fopenmp"],
    )


setup(
    packages=[
        *find_packages(include=["cagul_kernels", "cagul_kernels.*"]),
        *find_packages("python", include=["cagul", "cagul.*", "cagul_demo", "cagul_demo.*"]),
    ],
    package_dir={"cagul": "python/cagul", "cagul_demo": "python/cagul_demo"},
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
