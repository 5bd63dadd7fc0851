"""Helpers of the device-parametrised kernel tests (fixtures: conftest.py) and of the tests
that run the CUDA kernels through the host emulation (``*_cuda_emulated.py``)."""

import ctypes
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
EMULATION = ROOT / "tests" / "kernels" / "cuda_emulation"
NVCC = shutil.which("nvcc")
# cagul::cuda::ScalarType of csrc/cuda/launchers.h
DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH")


def kernel_backends(device: torch.device) -> tuple[str, str]:
    """The kernel backends that run on ``device`` (both must work: none is skipped)."""
    return device.type, "triton"


def assert_low_precision_close(got, want, want_low_precision, *, factor=2.0, atol=1e-5, what=""):
    """flash-attention's tolerance rule for fp16/bf16: the error of ``got`` against the fp32
    result ``want`` is at most ``factor`` times the error of the torch reference run in the
    same low precision (``want_low_precision``), plus ``atol``."""
    err = (got.double() - want.double()).abs().max().item()
    ref_err = (want_low_precision.double() - want.double()).abs().max().item()
    assert err <= factor * ref_err + atol, (
        f"{what}: error {err:.3g} > {factor} * {ref_err:.3g} (torch in low precision) + {atol}"
    )


def emulated_kernels(name: str, launches: int, out: Path, optimize: str = "-O2") -> ctypes.CDLL:
    """``csrc/cuda/<name>.cu`` built for the host emulation of the CUDA built-ins
    (``cuda_emulation/emu.h``) with the C entry points of ``cuda_emulation/<name>_entry.cpp``:
    its ``launches`` kernel launches ``kernel<<<cfg>>>(args);`` become
    ``emulate_launch(kernel, EmuConfig{cfg}, args);`` in ``<out>/<name>_kernel.inc``, which the
    entry file includes, and nvcc (for the CUDA headers) compiles it all as host C++20."""
    source = (ROOT / "csrc" / "cuda" / f"{name}.cu").read_text()
    source, n = re.subn(
        r"([\w:<>]+)<<<(.+?)>>>\((.*?)\);", r"emulate_launch(\1, EmuConfig{\2}, \3);", source
    )
    assert n == launches, f"expected {launches} kernel launches in {name}.cu, found {n}"
    (out / f"{name}_kernel.inc").write_text(source)
    library = out / f"lib{name}_emu.so"
    cmd = [
        NVCC, "-x", "c++", "-std=c++20", optimize, "-shared", "-Xcompiler", "-fPIC,-pthread",
        f"-I{out}", f"-I{ROOT / 'csrc' / 'cuda'}", f"-I{EMULATION}",
        str(EMULATION / f"{name}_entry.cpp"), "-o", str(library),
    ]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"{' '.join(cmd)}\n{result.stderr}"
    return ctypes.CDLL(str(library))
