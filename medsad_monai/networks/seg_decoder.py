"""SegDecoder (paper §3.5): a light convolutional decoder from the fused patch grid to a mask."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution, UpSample
from torch import nn

__all__ = ["SegDecoder"]

_NORMS = {"batch": "batch", "instance": "instance", "group": ("group", {"num_groups": 8}), "none": None}


class SegDecoder(nn.Module):
    """Conv → (×2 upsample → conv) per stage → 1×1 conv to 2 logits → bilinear to the input size.

    Built from MONAI blocks (``Convolution``, ``UpSample``). Each stage doubles the grid, so a
    16×16 patch grid with three stages is decoded at 128×128 before the final interpolation.

    Args:
        in_channels: channels of the fused grid (patch features + TPCA token maps).
        channels: output channels of the stem and of each upsampling stage; the first entry is
            the stem, every following entry one ×2 stage.
        norm: ``batch``, ``instance``, ``group`` or ``none``.
        out_channels: number of classes (2: background, lesion).
        skip_channels: 0 (the paper's decoder) or the width of an image branch (two 3×3 convs on
            the input image, the first with stride 2) fused at half resolution before the head. A
            ViT patch grid (8–16 px per patch) cannot place a lesion border; this high-resolution skip, as in UNETR- or
            SAM-style decoders, can. Used by the ``tiny`` preset, off in the paper presets.
        full_res_channels: 0 or the width of a last stage at the input's full resolution: the
            fused half-resolution features are narrowed (1×1 conv), upsampled, joined with one
            3×3 conv of the image and refined by a 3×3 conv before the head, so borders are
            placed to the pixel (needs ``skip_channels``).
    """

    def __init__(
        self,
        in_channels: int,
        channels: Sequence[int] = (128, 64, 32),
        norm: str = "instance",
        out_channels: int = 2,
        skip_channels: int = 0,
        full_res_channels: int = 0,
    ) -> None:
        super().__init__()
        if norm not in _NORMS:
            raise ValueError(f"norm must be one of {sorted(_NORMS)}, got {norm!r}")
        if in_channels <= 0 or not channels:
            raise ValueError(f"bad decoder sizes: in_channels={in_channels}, channels={channels}")
        norm_arg = _NORMS[norm]
        self.stem = Convolution(2, in_channels, channels[0], kernel_size=3, norm=norm_arg, act="PRELU")
        stages = []
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            stages.append(
                nn.Sequential(
                    UpSample(
                        2, c_in, c_in, scale_factor=2, mode="nontrainable", interp_mode="bilinear", align_corners=False
                    ),
                    Convolution(2, c_in, c_out, kernel_size=3, norm=norm_arg, act="PRELU"),
                )
            )
        self.stages = nn.Sequential(*stages)
        self.skip_channels = skip_channels
        if skip_channels > 0:
            self.skip = nn.Sequential(  # at half the input resolution: 4× cheaper, 2-px borders
                Convolution(2, 3, skip_channels, strides=2, kernel_size=3, norm=norm_arg, act="PRELU"),
                Convolution(2, skip_channels, skip_channels, kernel_size=3, norm=norm_arg, act="PRELU"),
            )
            self.fuse = Convolution(
                2, channels[-1] + skip_channels, channels[-1], kernel_size=3, norm=norm_arg, act="PRELU"
            )
        self.full_res_channels = full_res_channels
        if full_res_channels > 0:
            if skip_channels <= 0:
                raise ValueError("full_res_channels needs the half-resolution skip branch (skip_channels > 0)")
            self.squeeze = Convolution(2, channels[-1], full_res_channels, kernel_size=1, conv_only=True)
            self.full_skip = Convolution(2, 3, full_res_channels, kernel_size=3, norm=norm_arg, act="PRELU")
            self.refine = Convolution(
                2, 2 * full_res_channels, full_res_channels, kernel_size=3, norm=norm_arg, act="PRELU"
            )
        head_in = full_res_channels if full_res_channels > 0 else channels[-1]
        self.head = Convolution(2, head_in, out_channels, kernel_size=1, conv_only=True)

    def forward(self, grid: torch.Tensor, size: tuple[int, int], image: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, h, w) fused grid [+ (B, 3, H, W) image for the skip] -> (B, 2, H, W) logits."""
        x = self.stages(self.stem(grid))
        if self.skip_channels > 0:
            if image is None:
                raise ValueError("this SegDecoder has an image skip branch: pass the input image")
            skip = self.skip(image)
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = self.fuse(torch.cat([x, skip], dim=1))
            if self.full_res_channels > 0:
                x = F.interpolate(self.squeeze(x), size=image.shape[-2:], mode="bilinear", align_corners=False)
                x = self.refine(torch.cat([x, self.full_skip(image)], dim=1))
        x = self.head(x)
        if tuple(x.shape[-2:]) != tuple(size):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return x
