"""Test-time flip averaging: the prediction of an image and of its mirror images, averaged.

Training already flips images along their columns (paper §4.2), so the mirror is an equally
valid view; averaging the two halves the variance of the lesion map at twice the inference cost.
With ``rows`` the row-mirrored views join (four views, four times the cost): for a volume slice
of the RAS view the rows run left-right, so the answer no longer depends on which way round a
head is (a left-right mirror of an unseen head moved its false positives by up to 1,100 voxels,
docs/experiments.md, session 42). The passes run one after the other, so peak memory stays that
of one pass.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["flip_averaged"]

#: outputs averaged over the two views; per-pixel maps are mirrored back first.
_MAPS = ("mask", "mask_logits")
_SCORES = ("score", "score_cls")


def flip_averaged(
    forward: Callable[[torch.Tensor], dict[str, torch.Tensor]], images: torch.Tensor, rows: bool = False
) -> dict[str, torch.Tensor]:
    """``forward(images)`` with lesion maps and image scores averaged with the column-mirrored
    view (and, with ``rows``, the row-mirrored and the doubly mirrored views).

    ``mask`` is the mean of the probability maps (``mask_logits`` the mean of the logits), each
    mirrored back first; the other outputs (class-token logits, ``cos``) are those of the
    original view.
    """
    out = forward(images)
    flips = [(-1,), (-2,), (-2, -1)] if rows else [(-1,)]
    views = [(dims, forward(images.flip(dims))) for dims in flips]
    for key in _MAPS:
        if key in out:
            out[key] = (out[key] + sum(view[key].flip(dims) for dims, view in views)) / (1 + len(views))
    for key in _SCORES:
        if key in out:
            out[key] = (out[key] + sum(view[key] for _, view in views)) / (1 + len(views))
    return out
