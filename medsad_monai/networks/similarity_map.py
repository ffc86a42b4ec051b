"""Dot-product anomaly map (MVFA-style segmentation head of the ``adapt*`` ablations)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medsad_monai.networks.classifier import similarity_logits

__all__ = ["dot_product_map"]


def dot_product_map(
    patches: torch.Tensor,
    prototypes: torch.Tensor,
    logit_scale: torch.Tensor,
    grid: tuple[int, int],
    size: tuple[int, int],
) -> torch.Tensor:
    """Per-patch cosine logits against the normal/abnormal prototypes, upsampled bilinearly.

    Args:
        patches: patch features in the text space (B, N, D).
        prototypes: unit normal/abnormal text prototypes (2, D).
        logit_scale: scalar scale applied to the cosines.
        grid: patch grid (h, w) with h·w = N.
        size: output size (H, W).

    Returns:
        2-channel logits (B, 2, H, W).
    """
    _, logits = similarity_logits(patches, prototypes, logit_scale)  # (B, N, 2)
    b = logits.shape[0]
    logits = logits.transpose(1, 2).reshape(b, 2, grid[0], grid[1])
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
