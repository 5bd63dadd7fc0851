"""The custom ops, one module per op (kernel dispatch, fake impl, autograd)."""

from .attention import attention_with_lse
from .importance import cross_modal_importance
from .topk import low_importance_tokens, select_low_importance
from .transform_scatter import transform_scatter

__all__ = [
    "attention_with_lse",
    "cross_modal_importance",
    "low_importance_tokens",
    "select_low_importance",
    "transform_scatter",
]
