"""select_low_importance against torch.topk + gather and the reference, one group per
(B, Nv), ratio 0.25."""

import functools

import pytest

from benchmarks.conftest import DEVICE
from benchmarks.providers import topk_inputs, topk_providers

SIZES = [(1, 576), (8, 2880), (8, 16384)]


@functools.cache
def _providers(batch, nv):
    return topk_providers(*topk_inputs(batch, nv, DEVICE))


@pytest.mark.parametrize("batch,nv", SIZES, ids=lambda v: str(v))
@pytest.mark.parametrize("provider", list(_providers(*SIZES[0])))
def test_topk(measure, batch, nv, provider):
    measure(f"topk B={batch} Nv={nv}", _providers(batch, nv)[provider])
