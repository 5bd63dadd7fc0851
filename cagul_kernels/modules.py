"""``nn.Module`` wrappers of the ops."""

from __future__ import annotations

import math

import torch
from torch import nn

from .ops.transform_scatter import ACTIVATIONS, transform_scatter


class ResidualTokenMLP(nn.Module):
    """Residual MLP ``D -> R -> D`` applied to selected token rows (the CAGUL visual token
    encoder): ``y[b, p] = x[b, p] + g_b * (act(x[b, p] @ w1 + b1) @ w2 + b2)``.

    ``w1 [D, R]`` is initialised like ``nn.Linear`` (uniform in ``+-1/sqrt(D)``); ``w2 [R, D]``
    and both biases start at zero, so a fresh module is the identity. The parameters are
    cast to ``x``'s dtype for the op, so they may stay fp32 under a bf16/fp16 model.
    """

    def __init__(
        self,
        dim: int,
        rank: int,
        activation: str = "gelu",
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("dim", dim), ("rank", rank)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"ResidualTokenMLP: {name} must be an int, got {value!r}")
        if dim < 1 or rank < 1:
            raise ValueError(f"ResidualTokenMLP: dim and rank must be >= 1, got {dim}, {rank}")
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"ResidualTokenMLP: activation must be one of {ACTIVATIONS}, got {activation!r}"
            )
        self.dim, self.rank, self.activation = dim, rank, activation
        factory = {"device": device, "dtype": dtype}
        self.w1 = nn.Parameter(torch.empty(dim, rank, **factory))
        self.b1 = nn.Parameter(torch.zeros(rank, **factory))
        self.w2 = nn.Parameter(torch.zeros(rank, dim, **factory))
        self.b2 = nn.Parameter(torch.zeros(dim, **factory))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.dim)
        with torch.no_grad():
            self.w1.uniform_(-bound, bound)
            self.b1.zero_()
            self.w2.zero_()
            self.b2.zero_()

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor,
        gate: torch.Tensor | None = None,
        inplace: bool = False,
        backend: str | None = None,
    ) -> torch.Tensor:
        """``x [B, S, D]``, ``positions [B, K]`` (-1 = padding), ``gate [B]`` float/bool."""
        # Parameters may be kept in higher precision (fp32 master weights for a bf16 model):
        # the op runs in x's dtype (the cast is a no-op, and differentiable, otherwise).
        w1, b1, w2, b2 = (p.to(x.dtype) for p in (self.w1, self.b1, self.w2, self.b2))
        return transform_scatter(
            x,
            positions,
            w1,
            b1,
            w2,
            b2,
            activation=self.activation,
            gate=gate,
            inplace=inplace,
            backend=backend,
        )

    def extra_repr(self) -> str:
        return f"dim={self.dim}, rank={self.rank}, activation={self.activation!r}"
