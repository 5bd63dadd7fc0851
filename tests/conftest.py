"""Shared test set-up.

Without CUDA, Triton kernels run on CPU tensors through the interpreter
(TRITON_INTERPRET=1 must be set before triton is imported). GPU tests are marked
``gpu`` and skipped without CUDA.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest

HAS_CUDA = torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_gpu)
