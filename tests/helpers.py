"""Input builders shared by the op tests."""

from __future__ import annotations

import torch


def make_index(rows: list[list[int]], width: int | None = None, dtype=torch.int64) -> torch.Tensor:
    """Ragged position lists -> ``[B, N]`` index tensor padded with -1."""
    width = max((len(r) for r in rows), default=0) if width is None else width
    out = torch.full((len(rows), width), -1, dtype=dtype)
    for b, r in enumerate(rows):
        out[b, : len(r)] = torch.tensor(r, dtype=dtype)
    return out


def vlm_layout(
    batch: int, n_images: int, image_tokens: int, prefix: int, question: int, seed: int = 0
) -> tuple[int, torch.Tensor, torch.Tensor]:
    """A batch of sequences ``[prefix text][image][text]...[image][question]`` where every
    sample has a different number of image/question tokens (so indices carry -1 padding).

    Returns ``(seq_len, query_index [B, Nq], visual_index [B, Nv])``.
    """
    g = torch.Generator().manual_seed(seed)
    visual, query, lengths = [], [], []
    for b in range(batch):
        pos, vis = prefix, []
        for _ in range(n_images):
            n = image_tokens - int(
                torch.randint(0, max(1, image_tokens // 3), (1,), generator=g)
            ) * (b > 0)
            vis.extend(range(pos, pos + n))
            pos += n + 2  # two text tokens between images
        nq = question - b  # samples differ in question length
        query.append(list(range(pos, pos + nq)))
        visual.append(vis)
        lengths.append(pos + nq)
    return max(lengths), make_index(query), make_index(visual)
