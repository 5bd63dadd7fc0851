"""cagul-kernels: fused kernels for Cross-Modal Attention Guided Unlearning (CAGUL).

Drop-in torch ops (``torch.library`` custom ops with fake implementations):

- ``attention_with_lse``: attention output + natural-log LSE (FlashAttention / SDPA).
- ``cross_modal_importance``: mean attention from query tokens to visual tokens, from
  q, k and the LSE, without materialising the attention matrix.
- ``select_low_importance``: the k (or ratio) lowest-importance visual tokens per sample.
- ``low_importance_tokens``: importance then selection in one call.
- ``transform_scatter``: a residual MLP on selected token rows, written back in place of
  the originals (gather, both GEMMs, activation, residual and scatter fused), with autograd.
- ``ResidualTokenMLP``: the ``nn.Module`` holding the weights of ``transform_scatter``.
"""

from .modules import ResidualTokenMLP
from .ops import (
    attention_with_lse,
    cross_modal_importance,
    low_importance_tokens,
    select_low_importance,
    transform_scatter,
)

__all__ = [
    "ResidualTokenMLP",
    "attention_with_lse",
    "cross_modal_importance",
    "low_importance_tokens",
    "select_low_importance",
    "transform_scatter",
]
