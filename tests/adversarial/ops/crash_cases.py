"""Risky inputs for the ops, run one after another by ``python crash_cases.py NAME...`` in
a child process (``test_crashes.py``). Each case must return a result (some check it) or
raise ``ValueError`` / ``TypeError``; the child prints ``<name> ok`` or ``<name> <Error>: <msg>``
per case, and any other exception or a signal ends it (the parent then reports the case).
"""

import sys

import torch
import torch.nn.functional as F

from cagul_kernels import (
    attention_with_lse,
    cross_modal_importance,
    select_low_importance,
    transform_scatter,
)


def _attention(b=1, hq=2, hkv=2, sq=4, sk=4, d=8, causal=True):
    q = torch.randn(b, hq, sq, d)
    k, v = torch.randn(b, hkv, sk, d), torch.randn(b, hkv, sk, d)
    return lambda: attention_with_lse(q, k, v, causal=causal)


def _empty_attention(sq, sk):
    """Sq = 0 or Sk = 0 give what F.scaled_dot_product_attention gives, and lse = -inf."""
    q, k, v = torch.randn(1, 2, sq, 8), torch.randn(1, 2, sk, 8), torch.randn(1, 2, sk, 8)

    def run():
        out, lse = attention_with_lse(q, k, v, causal=False)
        assert torch.equal(out, F.scaled_dot_product_attention(q, k, v)), "out differs from SDPA"
        assert lse.shape == (1, 2, sq) and torch.isneginf(lse).all(), "lse is not -inf"

    return run


def _importance(s=6, nq=2, nv=3, d=8, hkv=2):
    q, k = torch.randn(1, 2, s, d), torch.randn(1, hkv, s, d)
    lse = torch.zeros(1, 2, s)
    qi = torch.arange(s - nq, s)[None] if nq else torch.zeros(1, 0, dtype=torch.long)
    vi = torch.arange(nv)[None]
    return lambda: cross_modal_importance(q, k, lse, qi, vi, backend="cpu")


def _transform(d=4, r=3, s=5, k=2, backward=True, backend="cpu"):
    x = torch.randn(2, s, d, requires_grad=True)
    w1, b1 = torch.randn(d, r, requires_grad=True), torch.randn(r)
    w2, b2 = torch.randn(r, d, requires_grad=True), torch.randn(d)
    positions = torch.arange(k).expand(2, k).contiguous()

    def run():
        y = transform_scatter(x, positions, w1, b1, w2, b2, backend=backend)
        if backward:
            y.sum().backward()

    return run


def _select(b=2, nv=5, k=2):
    importance, visual_index = torch.rand(b, nv), torch.arange(b * nv).view(b, nv)
    return lambda: select_low_importance(importance, visual_index, k=k)


CASES = {
    "attention_sq0": _empty_attention(sq=0, sk=4),
    "attention_sk0": _empty_attention(sq=4, sk=0),
    "attention_sk0_causal": _attention(sk=0),
    "attention_sq0_sk0": _attention(sq=0, sk=0),
    "attention_b0": _attention(b=0),
    "attention_hq0": _attention(hq=0),
    "attention_hkv0": _attention(hkv=0),
    "attention_d0": _attention(d=0),
    "attention_sq_gt_sk_causal": _attention(sq=9, sk=3),
    "importance_nq0": _importance(nq=0),
    "importance_nv0": _importance(nv=0),
    "importance_hkv0": _importance(hkv=0),
    "importance_d0": _importance(d=0),
    "transform_d0_backward": _transform(d=0),
    "transform_d0_triton": _transform(d=0, backend="triton"),
    "transform_r0_backward": _transform(r=0),
    "transform_k0_backward": _transform(k=0),
    "transform_s0": _transform(s=0, k=0),
    "select_nv0": _select(nv=0, k=0),
    "select_b0": _select(b=0),
}


if __name__ == "__main__":
    for name in sys.argv[1:]:
        print(f"{name} start", flush=True)
        try:
            CASES[name]()
            print(f"{name} ok", flush=True)
        except (ValueError, TypeError) as e:
            print(f"{name} {type(e).__name__}: {str(e).splitlines()[0]}", flush=True)
