"""Image-level anomaly classifier (paper §3.6): image embedding vs. text prototypes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AnomalyClassifier", "similarity_logits"]


def similarity_logits(features: torch.Tensor, prototypes: torch.Tensor, logit_scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine similarity of features (…, D) with unit prototypes (2, D), and scaled logits.

    Returns:
        cosines (…, 2) and ``logit_scale · cosines`` (…, 2); index 0 normal, 1 abnormal.
    """
    cos = F.normalize(features, dim=-1) @ prototypes.t().to(features.dtype)
    return cos, logit_scale.to(cos.dtype) * cos


class AnomalyClassifier(nn.Module):
    """Projects the Det-adapter class token into the text space and compares it with the
    mean normal / mean abnormal text embeddings; the anomaly score is P(abnormal).

    Args:
        in_dim: adapter bottleneck width.
        embed_dim: CLIP joint embedding width.
    """

    def __init__(self, in_dim: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, embed_dim)

    def forward(
        self, det_cls: torch.Tensor, prototypes: torch.Tensor, logit_scale: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """(B, in_dim) class-token features -> ``cos`` (B, 2), ``image_logits`` (B, 2), ``score`` (B,)."""
        cos, logits = similarity_logits(self.proj(det_cls), prototypes, logit_scale)
        return {"cos": cos, "image_logits": logits, "score": logits.softmax(dim=-1)[:, 1]}
