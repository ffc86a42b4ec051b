"""The baseline we compare against: a MONAI 2-D UNet on the same pipeline and budget."""

from __future__ import annotations

from typing import Any

import torch
from monai.networks.nets import UNet
from torch import nn

from medsad_monai.networks.flip_tta import flip_averaged

__all__ = ["UNetBaseline"]

_MEAN = (0.5, 0.5, 0.5)
_STD = (0.5, 0.5, 0.5)


class UNetBaseline(nn.Module):
    """``monai.networks.nets.UNet`` with the MedSAD model interface.

    Outputs the same dict as :class:`~medsad_monai.networks.MedSADCLIP`; the image score is the
    maximum lesion probability (the usual way to turn a segmenter into a detector), and
    ``image_logits`` / ``cos`` are derived from it so the loss code stays shared (the baseline
    trains with the mask loss only: its preset sets the BCE and MC weights to 0).

    Args:
        image_size: input side.
        channels: UNet channels per level.
        tta_flip: average with the mirrored image at inference, as MedSAD's ``tta_flip``.
        tta_flip_rows: the row-mirrored views too, as MedSAD's ``tta_flip_rows``.
    """

    def __init__(
        self,
        image_size: int = 128,
        channels: tuple[int, ...] = (16, 32, 64, 128),
        tta_flip: bool = False,
        tta_flip_rows: bool = False,
    ) -> None:
        super().__init__()
        if image_size % (2 ** (len(channels) - 1)) != 0:
            raise ValueError(f"image_size {image_size} must be divisible by {2 ** (len(channels) - 1)}")
        self.image_size = image_size
        self.channels = tuple(channels)
        self.tta_flip = bool(tta_flip)
        self.tta_flip_rows = bool(tta_flip_rows)
        self.net = UNet(
            spatial_dims=2,
            in_channels=3,
            out_channels=2,
            channels=self.channels,
            strides=(2,) * (len(self.channels) - 1),
            num_res_units=1,
        )

    def config_dict(self) -> dict[str, Any]:
        return {
            "image_size": self.image_size,
            "channels": list(self.channels),
            "tta_flip": self.tta_flip,
            "tta_flip_rows": self.tta_flip_rows,
        }

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(_MEAN, device=images.device, dtype=images.dtype)[:, None, None]
        std = torch.tensor(_STD, device=images.device, dtype=images.dtype)[:, None, None]
        return (images - mean) / std

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def forward(self, images: torch.Tensor, flip_tta: bool | None = None) -> dict[str, torch.Tensor]:
        """Lesion map and score; ``flip_tta`` as MedSAD's (``None`` = the model's ``tta_flip``)."""
        if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[-2:]) != (self.image_size,) * 2:
            raise ValueError(f"expected (B, 3, {self.image_size}, {self.image_size}), got {tuple(images.shape)}")
        if (self.tta_flip if flip_tta is None else flip_tta) and not self.training:
            return flip_averaged(self._forward, images, rows=self.tta_flip_rows)
        return self._forward(images)

    def _forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.net(images)
        mask = logits.float().softmax(dim=1)  # fp32 under autocast: 1 - 1e-6 is 1.0 in bf16
        score = mask[:, 1].flatten(1).max(dim=1).values
        eps = 1e-6
        image_logit = torch.logit(score.clamp(eps, 1 - eps))
        image_logits = torch.stack([torch.zeros_like(image_logit), image_logit], dim=1)
        return {
            "mask_logits": logits,
            "mask": mask,
            "score": score,
            "image_logits": image_logits,
            "cos": torch.stack([1 - score, score], dim=1),
        }
