"""Regression tests for the kernel-side defects of the adversarial run (issue 15): each
fails on the code before its fix. Crashes (SIGFPE) are tested in a subprocess in
``tests/adversarial/ops/test_crashes.py``."""

import pytest
import torch
import torch.nn.functional as F

from cagul_kernels import (
    ResidualTokenMLP,
    attention_with_lse,
    cross_modal_importance,
    select_low_importance,
    transform_scatter,
)
from cagul_kernels import reference as ref


def _qkv(b=1, hq=2, hkv=2, sq=4, sk=4, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, hq, sq, d, generator=g)
    k = torch.randn(b, hkv, sk, d, generator=g)
    v = torch.randn(b, hkv, sk, d, generator=g)
    return q, k, v


def _mlp_args(b=2, s=5, d=4, r=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, s, d, generator=g)
    weights = (
        torch.randn(d, r, generator=g),
        torch.randn(r, generator=g),
        torch.randn(r, d, generator=g),
        torch.randn(d, generator=g),
    )
    return x, weights


# --- item 4: rows with no visible key get lse = -inf on every backend --------------------

ATTENTION_BACKENDS = ["sdpa", "cpu", "reference", None]


@pytest.mark.parametrize("backend", ATTENTION_BACKENDS)
def test_all_masked_row_has_neg_inf_lse(backend):
    q, k, v = _qkv()
    mask = torch.ones(1, 1, 4, 4, dtype=torch.bool)
    mask[..., 1, :] = False
    out, lse = attention_with_lse(q, k, v, causal=False, attn_mask=mask, backend=backend)
    assert torch.isneginf(lse[:, :, 1]).all()
    assert torch.isfinite(lse[:, :, [0, 2, 3]]).all()
    assert (out[:, :, 1] == 0).all()
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))


@pytest.mark.parametrize("backend", ATTENTION_BACKENDS)
def test_additive_all_masked_row_has_neg_inf_lse(backend):
    q, k, v = _qkv()
    mask = torch.zeros(4, 4)
    mask[2] = float("-inf")
    _, lse = attention_with_lse(q, k, v, causal=False, attn_mask=mask, backend=backend)
    assert torch.isneginf(lse[:, :, 2]).all() and torch.isfinite(lse[:, :, [0, 1, 3]]).all()


@pytest.mark.parametrize("backend", ATTENTION_BACKENDS)
def test_bottom_right_causal_rows_without_keys(backend):
    q, k, v = _qkv(sq=6, sk=4)
    out, lse = attention_with_lse(q, k, v, causal=True, backend=backend)
    assert torch.isneginf(lse[:, :, :2]).all() and torch.isfinite(lse[:, :, 2:]).all()
    assert (out[:, :, :2] == 0).all()


@pytest.mark.parametrize("backend", ATTENTION_BACKENDS)
def test_causal_and_mask_together_leave_a_row_without_keys(backend):
    q, k, v = _qkv()
    mask = torch.ones(4, 4, dtype=torch.bool)
    mask[:, 0] = False  # row 0 sees only key 0 under causal, and the mask hides it
    out, lse = attention_with_lse(q, k, v, causal=True, attn_mask=mask, backend=backend)
    assert torch.isneginf(lse[:, :, 0]).all() and torch.isfinite(lse[:, :, 1:]).all()
    assert (out[:, :, 0] == 0).all()


def test_importance_refuses_a_query_row_without_keys():
    q, k, v = _qkv()
    mask = torch.ones(4, 4, dtype=torch.bool)
    mask[3] = False
    _, lse = attention_with_lse(q, k, v, causal=False, attn_mask=mask)
    qi, vi = torch.tensor([[3]]), torch.tensor([[0, 1]])
    with pytest.raises(ValueError, match="lse must be finite"):
        cross_modal_importance(q, k, lse, qi, vi, causal=False)


# --- item 7a: scale, and the reference does not hide NaNs ---------------------------------


@pytest.mark.parametrize("scale", [float("nan"), float("inf"), -float("inf"), 0.0, -1.0])
def test_attention_rejects_bad_scale(scale):
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="scale"):
        attention_with_lse(q, k, v, scale=scale)


@pytest.mark.parametrize("scale", [float("nan"), float("inf"), 0.0, -0.5])
def test_importance_rejects_bad_scale(scale):
    q, k, v = _qkv()
    _, lse = attention_with_lse(q, k, v)
    with pytest.raises(ValueError, match="scale"):
        cross_modal_importance(q, k, lse, torch.tensor([[3]]), torch.tensor([[0]]), scale=scale)


@pytest.mark.parametrize("scale", [True, "0.5"])
def test_scale_must_be_a_number(scale):
    q, k, v = _qkv()
    with pytest.raises(TypeError, match="scale"):
        attention_with_lse(q, k, v, scale=scale)


def test_reference_attention_propagates_nan_rows():
    q, k, v = _qkv()
    q[0, 1, 2, 0] = float("nan")
    out, lse = ref.attention_with_lse(q, k, v, False, 0.5, None)
    assert out[0, 1, 2].isnan().all() and lse[0, 1, 2].isnan()
    others = torch.ones(out.shape[:3], dtype=torch.bool)
    others[0, 1, 2] = False
    assert torch.isfinite(out[others]).all()


# --- items 11, 13a: degenerate sizes, masks, devices, backend="cpu" ----------------------


def test_attention_zero_kv_heads():
    q, _, _ = _qkv()
    empty = torch.randn(1, 0, 4, 8)
    with pytest.raises(ValueError, match="multiple of kv heads"):
        attention_with_lse(q, empty, empty)


def test_attention_zero_head_dim():
    q, k, v = _qkv(d=0)
    with pytest.raises(ValueError, match="q must have at least one head and D >= 1"):
        attention_with_lse(q, k, v)


@pytest.mark.parametrize("shape", [(3, 5), (2, 1, 4, 4), (1, 1, 1, 4, 4), (4, 3)])
def test_attention_mask_shape(shape):
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="attn_mask must be broadcastable"):
        attention_with_lse(q, k, v, attn_mask=torch.ones(shape, dtype=torch.bool))


def test_attention_meta_tensors():
    q, k, v = (t.to("meta") for t in _qkv())
    with pytest.raises(ValueError, match="q must be a cpu or cuda tensor"):
        attention_with_lse(q, k, v)


def test_attention_backend_cpu_is_the_cpu_flash_path():
    q, k, v = _qkv(hq=4, hkv=2)
    out, lse = attention_with_lse(q, k, v, backend="cpu")
    want_out, want_lse = attention_with_lse(q, k, v, backend="sdpa")
    assert torch.equal(out, want_out) and torch.equal(lse, want_lse)


def test_importance_cpu_sequence_limit_without_allocating():
    s = 2**31
    big = torch.zeros(1, 1, 1, 8).expand(1, 1, s, 8)  # no memory behind the 2^31 rows
    lse = torch.zeros(1, 1, 1).expand(1, 1, s)
    with pytest.raises(ValueError, match=r"backend='cpu' takes sequences shorter.*q of shape"):
        cross_modal_importance(big, big, lse, torch.tensor([[0]]), torch.tensor([[0]]))


@pytest.mark.parametrize(
    ("dim", "rank", "name"), [(8.5, 4, "dim"), (8, 4.0, "rank"), (True, 4, "dim")]
)
def test_residual_token_mlp_sizes_must_be_ints(dim, rank, name):
    with pytest.raises(TypeError, match=f"{name} must be an int"):
        ResidualTokenMLP(dim, rank)


# --- items 3, 5: transform_scatter D = 0 and overlapping in-place targets -----------------


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
def test_transform_scatter_refuses_zero_features(backend):
    x, (w1, b1, w2, b2) = _mlp_args(d=0)
    with pytest.raises(ValueError, match="x must have D >= 1"):
        transform_scatter(x, torch.tensor([[0], [1]]), w1, b1, w2, b2, backend=backend)


@pytest.mark.parametrize(
    "make_x",
    [
        lambda x: x[:1].expand(2, 5, 4),  # stride 0 over the batch
        lambda x: x[:, :1].expand(2, 5, 4),  # stride 0 over the sequence
        lambda x: x.flatten().as_strided((2, 5, 4), (4, 4, 1)),  # rows overlap, no stride 0
    ],
)
def test_inplace_refuses_overlapping_x(make_x):
    x, (w1, b1, w2, b2) = _mlp_args()
    target = make_x(x)
    before = target.clone()
    with pytest.raises(ValueError, match="x must not overlap itself"):
        transform_scatter(target, torch.tensor([[0], [1]]), w1, b1, w2, b2, inplace=True)
    assert torch.equal(target, before)


def test_inplace_accepts_non_contiguous_views():
    x, (w1, b1, w2, b2) = _mlp_args()
    positions = torch.tensor([[0, 3], [1, -1]])
    want = transform_scatter(x, positions, w1, b1, w2, b2, backend="reference")
    view = x.transpose(0, 1).contiguous().transpose(0, 1)  # [B, S, D] with batch stride D
    transform_scatter(view, positions, w1, b1, w2, b2, inplace=True)
    torch.testing.assert_close(view, want)


# --- item 12: torch.compile(fullgraph=True, dynamic=True) --------------------------------


def test_compiled_importance_with_default_scale():
    q, k, v = _qkv(sq=6, sk=6)
    _, lse = attention_with_lse(q, k, v)
    qi, vi = torch.tensor([[4, 5]]), torch.tensor([[0, 1, 2]])

    def importance(q, k, lse, qi, vi):
        return cross_modal_importance(q, k, lse, qi, vi)

    torch._dynamo.reset()
    compiled = torch.compile(importance, fullgraph=True, dynamic=True, backend="eager")
    torch.testing.assert_close(compiled(q, k, lse, qi, vi), importance(q, k, lse, qi, vi))


def test_compiled_selection_with_traced_ratio():
    def select(importance, visual_index, ratio):
        return select_low_importance(importance, visual_index, ratio=ratio)

    torch._dynamo.reset()
    compiled = torch.compile(select, fullgraph=True, dynamic=True, backend="eager")
    importance = torch.tensor([[0.5, 0.1, 0.4, 0.2, 0.3], [0.9, 0.8, 0.7, 0.6, 0.5]])
    visual_index = torch.tensor([[0, 1, 2, 3, 4], [5, 6, 7, 8, -1]])
    for ratio in (0.5, 0.7, 1.0):
        got = compiled(importance, visual_index, ratio)
        want = select(importance, visual_index, ratio)
        assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
    # ceil(0.7 * 5) = 4 and ceil(0.7 * 4) = 3: width 4, row 1's tail is -1.
    slots, _ = compiled(importance, visual_index, 0.7)
    assert slots.shape == (2, 4) and slots[1, 3] == -1 and (slots[:, :3] >= 0).all()


# --- native ops called directly (or from an exported graph): every tensor on one device ----


def _native_calls(device):
    """``(op, tensor argument names, args)`` of a valid direct call of each native op: the
    dispatcher picks the kernel by the highest-priority device among the tensors, so a
    mixed call must be refused before a kernel reads another device's pointers."""
    q, k, _ = (t.to(device) for t in _qkv())
    lse = torch.zeros(1, 2, 4, device=device)
    query_index, visual_index = (torch.tensor(v, device=device) for v in ([[2, 3]], [[0, 1]]))
    x, weights = _mlp_args()
    x, w1, b1, w2, b2 = (t.to(device) for t in (x, *weights))
    positions = torch.tensor([[0, 2], [1, -1]], device=device)
    gate = torch.ones(2, device=device)
    z = torch.zeros(2, 2, w1.shape[1], device=device)
    ops = torch.ops.cagul
    scatter = (x, positions, w1, b1, w2, b2, gate)
    scatter_names = ["x", "positions", "w1", "b1", "w2", "b2", "gate"]
    return [
        (
            ops.cross_modal_importance,
            ["q", "k", "lse", "query_index", "visual_index"],
            (q, k, lse, query_index, visual_index, 1.0, False, True, False),
        ),
        (
            ops.select_low_importance,
            ["importance", "visual_index"],
            (torch.rand(1, 2, device=device), visual_index, 1, None),
        ),
        (ops.transform_scatter, scatter_names, (*scatter, "gelu")),
        (ops.transform_scatter_, scatter_names, (x.clone(), *scatter[1:], "gelu")),
        (
            ops.transform_scatter_backward,
            ["dy", "x", "positions", "z", "w1", "w2", "gate"],
            (x, x, positions, z, w1, w2, gate, "gelu", True),
        ),
    ]


def test_native_calls_are_valid_on_one_device(device):
    for op, _, args in _native_calls(device):
        op(*args)


@pytest.mark.gpu
def test_native_ops_refuse_a_tensor_on_another_device():
    for op, names, args in _native_calls(torch.device("cuda")):
        for i, name in enumerate(names):
            mixed = [a.cpu() if j == i else a for j, a in enumerate(args)]
            with pytest.raises(ValueError, match=f"must be on one device, .* {name} is on cpu"):
                op(*mixed)
