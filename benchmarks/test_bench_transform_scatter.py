"""transform_scatter against the plain-torch gather -> MLP -> index_put (forward, no-grad
forward, forward + backward), ours in place, out of place and with backward; one group per
(S, D), K = S/4, R = 64."""

import functools

import pytest

from benchmarks.conftest import BACKENDS, DEVICE
from benchmarks.providers import transform_scatter_providers

SIZES = [(4096, 1024), (16384, 4096)] if DEVICE.type == "cuda" else [(1024, 256), (4096, 1024)]


@functools.cache
def _providers(s, d):
    return transform_scatter_providers(s, d, DEVICE, BACKENDS)


@pytest.mark.parametrize("s,d", SIZES, ids=lambda v: str(v))
@pytest.mark.parametrize("provider", list(_providers(*SIZES[0])))
def test_transform_scatter(measure, s, d, provider):
    measure(f"transform_scatter S={s} D={d}", _providers(s, d)[provider])
