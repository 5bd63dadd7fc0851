"""One device parametrisation for every kernel test.

A test taking ``device`` runs on ``"cpu"`` and, marked ``gpu`` (skipped without CUDA), on
``"cuda"``; a test taking ``backend`` runs each kernel backend of that device: its C++
kernel (``"cpu"`` / ``"cuda"``) and Triton (through the interpreter on CPU tensors).
"""

import pytest
import torch

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    return torch.device(request.param)


@pytest.fixture(params=["native", "triton"])
def backend(request, device) -> str:
    return device.type if request.param == "native" else request.param


@pytest.fixture(params=["reference", "native", "triton"])
def backend_or_reference(request, device) -> str:
    """``backend``'s kernels plus the reference backend (its own hand-written backward)."""
    return device.type if request.param == "native" else request.param
