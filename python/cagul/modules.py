"""The two trainable modules of CAGUL: the visual token encoder and the forget discriminator."""

from __future__ import annotations

import torch
from torch import nn

from cagul_kernels import ResidualTokenMLP


class VisualTokenEncoder(ResidualTokenMLP):
    """The CAGUL visual token encoder: :class:`cagul_kernels.ResidualTokenMLP` (residual MLP
    ``D -> rank -> D`` on selected rows through ``transform_scatter``; zero-initialised last
    layer, so an untrained encoder is the identity), kept in fp32 and cast to ``x``'s dtype
    for the op (bf16 / fp16 models, autocast).

    ``forward(x [B, S, D], positions [B, K], gate=None)``: ``y[b, p] = x[b, p] +
    g_b * (act(x[b, p] @ w1 + b1) @ w2 + b2)`` at every valid ``p = positions[b, i]``
    (``-1`` = padding); every other row of ``x`` is returned unchanged.
    """


class ForgetDiscriminator(nn.Module):
    """Predicts whether a sample's image belongs to the forget set.

    ``forward(tokens [B, N, D], mask [B, N] bool) -> logits [B]`` (fp32): every visual token
    is normalised (LayerNorm without affine) and projected ``D -> hidden`` with a GELU, the
    projections are mean-pooled over the valid tokens (``mask``), and an MLP
    ``hidden -> hidden -> 1`` gives the logit. Samples without visual tokens pool to zero.
    """

    def __init__(self, dim: int, hidden: int = 128):
        super().__init__()
        if dim < 1 or hidden < 1:
            raise ValueError(
                f"ForgetDiscriminator: dim and hidden must be >= 1, got {dim}, {hidden}"
            )
        self.dim, self.hidden = dim, hidden
        self.norm = nn.LayerNorm(dim, elementwise_affine=False)
        self.proj = nn.Linear(dim, hidden)
        self.head = nn.Sequential(
            nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, 1)
        )

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if tokens.dim() != 3 or tokens.shape[-1] != self.dim:
            raise ValueError(
                f"ForgetDiscriminator: tokens must be [B, N, {self.dim}], got {tuple(tokens.shape)}"
            )
        if mask.shape != tokens.shape[:2]:
            raise ValueError(
                f"ForgetDiscriminator: mask must be {tuple(tokens.shape[:2])}, got "
                f"{tuple(mask.shape)}"
            )
        h = nn.functional.gelu(self.proj(self.norm(tokens.float())))
        m = mask.to(h.dtype)[..., None]
        pooled = (h * m).sum(1) / m.sum(1).clamp(min=1.0)
        return self.head(pooled).squeeze(-1)
