"""The deployment path: a module calling ``cross_modal_importance``,
``select_low_importance`` and the in-place ``transform_scatter`` goes through
``torch.export``, AOTInductor packaging and ``torch.compile(fullgraph=True, dynamic=True)``,
and each gives the eager outputs exactly (the native kernels run in all of them)."""

import pytest
import torch
from helpers import vlm_layout

from cagul_kernels import (
    attention_with_lse,
    cross_modal_importance,
    select_low_importance,
    transform_scatter,
)

D_MODEL, RANK, HEAD_DIM, SELECTED = 32, 8, 16, 6


class LowImportanceTransform(torch.nn.Module):
    """Rates the visual tokens, picks the least attended ones and transforms their hidden
    states in place (the CAGUL inference step after one attention layer)."""

    def __init__(self, backend: str):
        super().__init__()
        self.backend = backend
        g = torch.Generator().manual_seed(0)
        for name, shape in (("w1", (D_MODEL, RANK)), ("b1", (RANK,))):
            self.register_buffer(name, torch.randn(shape, generator=g) / 4)
        for name, shape in (("w2", (RANK, D_MODEL)), ("b2", (D_MODEL,))):
            self.register_buffer(name, torch.randn(shape, generator=g) / 4)

    def forward(self, q, k, lse, query_index, visual_index, hidden):
        # An explicit scale (the default-scale path under dynamic shapes is tested with
        # the op's own compile tests).
        importance = cross_modal_importance(
            q, k, lse, query_index, visual_index, scale=HEAD_DIM**-0.5, backend=self.backend
        )
        _, positions = select_low_importance(
            importance, visual_index, k=SELECTED, backend=self.backend
        )
        out = hidden.clone()
        weights = (self.w1, self.b1, self.w2, self.b2)
        transform_scatter(out, positions, *weights, inplace=True, backend=self.backend)
        return importance, positions, out


def _inputs(device):
    s, qi, vi = vlm_layout(2, 2, 12, 3, 5)
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, h, s, HEAD_DIM, generator=g) for h in (4, 2, 2))
    _, lse = attention_with_lse(q, k, v)
    hidden = torch.randn(2, s, D_MODEL, generator=g)
    return tuple(t.to(device) for t in (q, k, lse, qi, vi, hidden))


def _assert_equal(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape and torch.equal(g, w)


def _native_ops(graph_module) -> set[str]:
    return {
        str(node.target)
        for node in graph_module.graph.nodes
        if node.op == "call_function" and str(node.target).startswith("cagul.")
    }


@pytest.fixture
def model_and_inputs(device):
    """The native kernels of ``device`` (the default on CUDA would be the Triton twins,
    which need Python at run time)."""
    return LowImportanceTransform(device.type).to(device).eval(), _inputs(device)


def test_export_then_aoti_package_matches_eager(model_and_inputs, tmp_path):
    model, inputs = model_and_inputs
    want = model(*inputs)
    assert not torch.equal(want[2], inputs[5])  # the transform changed the selected rows
    exported = torch.export.export(model, inputs)
    # The device kernels themselves, not their Python twins, are in the graph.
    assert _native_ops(exported.graph_module) == {
        "cagul.cross_modal_importance.default",
        "cagul.select_low_importance.default",
        "cagul.transform_scatter_.default",
    }
    _assert_equal(exported.module()(*inputs), want)
    package = torch._inductor.aoti_compile_and_package(
        exported, package_path=str(tmp_path / "cagul.pt2")
    )
    loaded = torch._inductor.aoti_load_package(package)
    _assert_equal(loaded(*inputs), want)


def test_compile_fullgraph_dynamic_matches_eager(model_and_inputs):
    model, inputs = model_and_inputs
    compiled = torch.compile(model, fullgraph=True, dynamic=True, backend="aot_eager")
    _assert_equal(compiled(*inputs), model(*inputs))
