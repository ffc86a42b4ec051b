"""Test-time flip averaging: the prediction of an image and of its left-right mirror, averaged.

Training already flips images left-right (paper §4.2), so the mirror is an equally valid view;
averaging the two halves the variance of the lesion map at twice the inference cost. The two
passes run one after the other, so peak memory stays that of one pass.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["flip_averaged"]

#: outputs averaged over the two views; per-pixel maps are mirrored back first.
_MAPS = ("mask", "mask_logits")
_SCORES = ("score", "score_cls")


def flip_averaged(
    forward: Callable[[torch.Tensor], dict[str, torch.Tensor]], images: torch.Tensor
) -> dict[str, torch.Tensor]:
    """``forward(images)`` with lesion maps and image scores averaged with the mirrored view.

    ``mask`` is the mean of the two probability maps (``mask_logits`` the mean of the logits);
    the other outputs (class-token logits, ``cos``) are those of the original view.
    """
    out = forward(images)
    mirrored = forward(images.flip(-1))
    for key in _MAPS:
        if key in out:
            out[key] = 0.5 * (out[key] + mirrored[key].flip(-1))
    for key in _SCORES:
        if key in out:
            out[key] = 0.5 * (out[key] + mirrored[key])
    return out
