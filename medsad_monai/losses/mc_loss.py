"""Margin contrastive loss (MCLoss, paper §3.7)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["MCLoss"]


class MCLoss(nn.Module):
    """Hinge on the gap between the image's cosine to the normal and to the abnormal prototype.

    With ``c_n = cos(image, normal text)`` and ``c_a = cos(image, abnormal text)``, a normal image
    pays ``max(0, m − (c_n − c_a))`` and an abnormal image ``max(0, m − (c_a − c_n))``: zero once
    the right prototype wins by the margin ``m``, linear before that.

    Args:
        margin: the margin ``m`` (paper: 0.4).
        reduction: ``mean``, ``sum`` or ``none``.
    """

    def __init__(self, margin: float = 0.4, reduction: str = "mean") -> None:
        super().__init__()
        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be mean, sum or none, got {reduction!r}")
        self.margin = margin
        self.reduction = reduction

    def forward(self, cos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Args:
        cos: (B, 2) cosines to the (normal, abnormal) prototypes.
        labels: (B,) image labels, 1 = abnormal.
        """
        if cos.ndim != 2 or cos.shape[1] != 2:
            raise ValueError(f"cos must have shape (B, 2), got {tuple(cos.shape)}")
        if labels.shape[0] != cos.shape[0]:
            raise ValueError(f"labels {tuple(labels.shape)} do not match cos {tuple(cos.shape)}")
        gap = cos[:, 0] - cos[:, 1]  # c_n - c_a
        sign = 1.0 - 2.0 * labels.to(cos.dtype).reshape(-1)  # +1 normal, -1 abnormal
        loss = torch.clamp(self.margin - sign * gap, min=0.0)
        if self.reduction == "mean":
            return loss.mean()
        if self.reduction == "sum":
            return loss.sum()
        return loss
