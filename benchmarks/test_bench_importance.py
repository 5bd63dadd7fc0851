"""cross_modal_importance, every provider of ``benchmarks/providers.py`` side by side, one
group per size: eager attention with probabilities, the fused attention alone, ours (fused
and alone), the torch recompute from the LSE and the PyramidDrop-style recompute."""

import functools

import pytest
import torch

from benchmarks.conftest import BACKENDS, DEVICE
from benchmarks.providers import importance_inputs, importance_providers

DTYPE = torch.bfloat16 if DEVICE.type == "cuda" else torch.float32
SIZES = [(576, 16), (4096, 4), (16384, 4)] if DEVICE.type == "cuda" else [(576, 16), (2304, 4)]


@functools.cache
def _providers(nv, hkv):
    return importance_providers(*importance_inputs(nv, hkv, DEVICE, DTYPE), BACKENDS)


@pytest.mark.parametrize("nv,hkv", SIZES, ids=lambda v: str(v))
@pytest.mark.parametrize("provider", list(_providers(*SIZES[0])))
def test_importance(measure, nv, hkv, provider):
    measure(f"importance nv={nv} hkv={hkv}", _providers(nv, hkv)[provider])
