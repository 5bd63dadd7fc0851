"""Hypothesis profiles of the op half of the standing adversarial suite.

``default``: few examples per property, so the suite stays well under a minute on 2 cores.
``slow`` (``CAGUL_HYPOTHESIS_PROFILE=slow``): many more examples, for a nightly or
pre-release run; every test here is then marked ``slow`` (so ``-m "not slow"`` leaves the
long run out). Counts of examples tried: ``pytest --hypothesis-show-statistics``.
"""

import os

import pytest
from hypothesis import HealthCheck, settings

PROFILE = os.environ.get("CAGUL_HYPOTHESIS_PROFILE", "default")
settings.register_profile(
    "default",
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)
settings.register_profile(
    "slow", max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(PROFILE)


def pytest_collection_modifyitems(config, items):
    if PROFILE != "slow":
        return
    for item in items:
        if "adversarial/ops" in item.nodeid:
            item.add_marker(pytest.mark.slow)
