"""Helpers of the device-parametrised kernel tests (fixtures: conftest.py)."""

import torch


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
