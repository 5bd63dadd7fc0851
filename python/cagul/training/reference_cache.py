"""CAGUL's reference, kept per sample across epochs (``UnlearningArguments.reference_cache_mb``).

The reference of CAGUL's retain KL and NPO loss is the frozen VLM with the transform off, so
for a given sample it never changes during training: not with the steps, and not with the
trained encoder or discriminator. A :class:`ReferenceCache` keeps, per sample, what the
reference pass gave: the ``[n, V]`` fp32 log-softmax at its ``n`` answer tokens and, in
``mode="input"``, its ``[n_visual]`` layer-L importance. From the second time a sample is
seen (the next epoch), its reference pass is skipped, as in offline distillation.

A sample's key is a SHA-256 digest of everything the reference pass reads of it: its input
tensors without the padding, its images' encoder outputs, its labels, and the autocast
state. A sample whose inputs differ in any byte (a random crop, another prompt) therefore
misses and is computed; nothing stale is ever returned. A sample with an input that cannot
be digested exactly (not a tensor, list or plain value) is never cached. A hit equals a
recomputation up to floating-point rounding (the sample may have been computed beside other
samples, with other padding).

Entries live in CPU memory, up to ``max_bytes``; once full, new samples are computed every
time (no eviction). At LLaVA-1.5-7B's vocabulary (32,064) an entry takes about 128 KiB per
answer token.
"""

from __future__ import annotations

import dataclasses
import hashlib

import torch

from ..model import PER_IMAGE_KEYS, VisualInputs


@dataclasses.dataclass(frozen=True)
class ReferenceEntry:
    """One sample's reference: ``logp [n, V]`` fp32 at its answer tokens (in sequence order)
    and ``importance [n_visual]`` (``None`` outside ``mode="input"`` or without an image)."""

    logp: torch.Tensor
    importance: torch.Tensor | None

    @property
    def nbytes(self) -> int:
        tensors = [self.logp] + ([] if self.importance is None else [self.importance])
        return sum(t.numel() * t.element_size() for t in tensors)


class ReferenceCache:
    """Per-sample reference entries keyed by content (module docstring); ``hits`` and
    ``misses`` count the lookups."""

    def __init__(self, max_bytes: int):
        if max_bytes < 0:
            raise ValueError(f"ReferenceCache: max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes, self.nbytes = max_bytes, 0
        self.hits = self.misses = 0
        self._entries: dict[bytes, ReferenceEntry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes, *, need_importance: bool) -> ReferenceEntry | None:
        """The entry of ``key``, if there is one holding an importance when one is needed."""
        entry = self._entries.get(key)
        if entry is None or (need_importance and entry.importance is None):
            self.misses += 1
            return None
        self.hits += 1
        return entry

    def put(self, key: bytes, logp: torch.Tensor, importance: torch.Tensor | None) -> None:
        """Keeps a CPU copy of one sample's reference, if it fits in ``max_bytes``."""
        entry = ReferenceEntry(
            logp.detach().to("cpu", torch.float32),
            None if importance is None else importance.detach().to("cpu", torch.float32),
        )
        previous = self._entries.get(key)
        size = entry.nbytes - (0 if previous is None else previous.nbytes)
        if self.nbytes + size <= self.max_bytes:
            self._entries[key] = entry
            self.nbytes += size


def sample_keys(vis: VisualInputs, labels: torch.Tensor, rows: torch.Tensor) -> dict[int, bytes]:
    """``{b: key}`` for each sample ``b`` where ``rows [B]`` holds: a digest of its inputs
    (``vis.kwargs`` split by sample, see :meth:`VisualInputs.select`, with the padding
    removed), its images' encoder outputs, its labels and the autocast state."""
    device = vis.mask.device.type
    state = f"autocast={torch.is_autocast_enabled(device)}:{torch.get_autocast_dtype(device)}"
    mask = vis.kwargs.get("attention_mask")
    seq_len = labels.shape[1]
    keys = {}
    for b in rows.nonzero().flatten().tolist():
        one = vis.select(torch.arange(rows.shape[0], device=rows.device) == b)
        keep = None if mask is None else mask[b].bool()
        digest = hashlib.sha256(state.encode())
        try:
            for name in sorted(one.kwargs):
                value = one.kwargs[name]
                if name == "mm_encoder_outputs":
                    continue  # the images: their encoder outputs, below
                if (
                    isinstance(value, torch.Tensor)
                    and name not in PER_IMAGE_KEYS
                    and value.dim() >= 2
                    and value.shape[1] == seq_len
                ):
                    value = value[0] if keep is None else value[0][keep]  # [1, S, ...]: unpadded
                _update(digest, name, value)
            _update(digest, "labels", labels[b] if keep is None else labels[b][keep])
            tokens = [] if one.features is None else one.features.pooler_output
            _update(digest, "images", list(tokens))
        except _Unkeyable:
            continue  # computed every time
        keys[b] = digest.digest()
    return keys


class _Unkeyable(Exception):
    """An input that cannot be digested exactly (neither a tensor nor a plain value)."""


def _update(digest, name: str, value) -> None:
    """Feeds ``name`` and ``value``: a tensor's dtype, shape and bytes, a list's or tuple's
    items, a plain value's repr; anything else raises :class:`_Unkeyable` (a repr may hide
    content, as numpy's does with "...")."""
    if isinstance(value, torch.Tensor):
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)};".encode())
        flat = value.detach().reshape(-1).contiguous().cpu()
        digest.update(flat.view(torch.uint8).numpy().data)
    elif isinstance(value, (list, tuple)):
        digest.update(f"{name}:{type(value).__name__}{len(value)};".encode())
        for i, item in enumerate(value):
            _update(digest, f"{name}[{i}]", item)
    elif value is None or isinstance(value, (bool, int, float, str)):
        digest.update(f"{name}={value!r};".encode())
    else:
        raise _Unkeyable(name)
