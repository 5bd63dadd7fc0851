"""The two trainable modules of CAGUL: the visual token encoder and the forget discriminator."""

from __future__ import annotations

import math

import torch
from torch import nn

import cagul_kernels


class VisualTokenEncoder(nn.Module):
    """Residual MLP ``D -> rank -> D`` applied in place to selected token rows.

    ``forward(x [B, S, D], positions [B, K])`` returns ``y`` with
    ``y[b, p] = x[b, p] + g_b * (act(x[b, p] @ w1 + b1) @ w2 + b2)`` for every valid
    ``p = positions[b, i]`` (``-1`` = padding) and every other row of ``x`` unchanged,
    through :func:`cagul_kernels.transform_scatter`. ``w2`` and ``b2`` start at zero, so an
    untrained encoder is the identity. Parameters stay fp32; they are cast to ``x``'s dtype
    for the op (bf16 / fp16 models, autocast).
    """

    def __init__(self, dim: int, rank: int, activation: str = "gelu"):
        super().__init__()
        if dim < 1 or rank < 1:
            raise ValueError(f"VisualTokenEncoder: dim and rank must be >= 1, got {dim}, {rank}")
        self.dim, self.rank, self.activation = dim, rank, activation
        bound = 1.0 / math.sqrt(dim)
        self.w1 = nn.Parameter(torch.empty(dim, rank).uniform_(-bound, bound))
        self.b1 = nn.Parameter(torch.zeros(rank))
        self.w2 = nn.Parameter(torch.zeros(rank, dim))
        self.b2 = nn.Parameter(torch.zeros(dim))

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor,
        gate: torch.Tensor | None = None,
        *,
        inplace: bool = False,
        backend: str | None = None,
    ) -> torch.Tensor:
        dt = x.dtype
        return cagul_kernels.transform_scatter(
            x,
            positions,
            self.w1.to(dt),
            self.b1.to(dt),
            self.w2.to(dt),
            self.b2.to(dt),
            activation=self.activation,
            gate=gate,
            inplace=inplace,
            backend=backend,
        )

    def extra_repr(self) -> str:
        return f"dim={self.dim}, rank={self.rank}, activation={self.activation!r}"


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
