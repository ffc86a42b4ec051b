"""Image-level anomaly classifier (paper §3.6): image embedding vs. text prototypes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AnomalyClassifier", "similarity_logits"]


def similarity_logits(
    features: torch.Tensor, prototypes: torch.Tensor, logit_scale: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine similarity of features (…, D) with unit prototypes (2, D), and scaled logits.

    Returns:
        cosines (…, 2) and ``logit_scale · cosines`` (…, 2); index 0 normal, 1 abnormal.
    """
    cos = F.normalize(features, dim=-1) @ prototypes.t().to(features.dtype)
    return cos, logit_scale.to(cos.dtype) * cos


class AnomalyClassifier(nn.Module):
    """Compares the Det-adapter class token with the mean normal / mean abnormal text
    embeddings; the anomaly score is P(abnormal).

    With ``project`` (config ``classifier_projection``, the default) a linear layer first maps
    the class token into the text space; that layer is not in the paper. Without it the class
    token is compared as it is (the paper's equations; its width must be the text width).

    Args:
        in_dim: adapter bottleneck width.
        embed_dim: CLIP joint embedding width.
        project: add the linear projection.

    Raises:
        ValueError: ``project=False`` with ``in_dim != embed_dim``.
    """

    def __init__(self, in_dim: int, embed_dim: int, project: bool = True) -> None:
        super().__init__()
        if not project and in_dim != embed_dim:
            raise ValueError(
                f"classifier_projection=False needs the adapter width ({in_dim}) to equal the CLIP "
                f"embedding width ({embed_dim}); leave adapter_bottleneck unset"
            )
        self.proj: nn.Module = nn.Linear(in_dim, embed_dim) if project else nn.Identity()

    def forward(
        self, det_cls: torch.Tensor, prototypes: torch.Tensor, logit_scale: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """(B, in_dim) class-token features -> ``cos`` (B, 2), ``image_logits`` (B, 2), ``score`` (B,)."""
        cos, logits = similarity_logits(self.proj(det_cls), prototypes, logit_scale)
        return {"cos": cos, "image_logits": logits, "score": logits.softmax(dim=-1)[:, 1]}
