"""Trained state I/O shared by the adapter, the baselines and the trainer's checkpoints."""

from __future__ import annotations

import torch


def copy_state(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor], owner: str):
    """Copies ``state`` into the tensors ``own`` (same names and shapes, else a
    ``ValueError`` naming ``owner`` and the tensors)."""
    missing, unexpected = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
    if missing or unexpected:
        raise ValueError(f"{owner}: state mismatch, missing {missing}, unexpected {unexpected}")
    for name, value in state.items():
        if value.shape != own[name].shape:
            raise ValueError(
                f"{owner}: {name} has shape {tuple(value.shape)}, expected {tuple(own[name].shape)}"
            )
    with torch.no_grad():
        for name, value in state.items():
            own[name].copy_(value)
