"""cagul-kernels: fused kernels for Cross-Modal Attention Guided Unlearning (CAGUL).

Drop-in torch ops (``torch.library`` custom ops with fake implementations):

- ``attention_with_lse``: attention output + natural-log LSE (FlashAttention / SDPA).
- ``cross_modal_importance``: mean attention from query tokens to visual tokens, from
  q, k and the LSE, without materialising the attention matrix.
- ``select_low_importance``: the k (or ratio) lowest-importance visual tokens per sample.
- ``low_importance_tokens``: importance then selection in one call.
"""

from .ops import (
    attention_with_lse,
    cross_modal_importance,
    low_importance_tokens,
    select_low_importance,
)

__all__ = [
    "attention_with_lse",
    "cross_modal_importance",
    "low_importance_tokens",
    "select_low_importance",
]
