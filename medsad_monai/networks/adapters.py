"""Multi-level image adapters (paper §3.2): a Det and a Seg adapter at every backbone tap."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["TokenAdapter", "MultiLevelAdapters"]


class TokenAdapter(nn.Module):
    """``Linear → LayerNorm → LeakyReLU → Linear → LayerNorm → LeakyReLU`` on tokens.

    The first half gives the adapted feature (bottleneck width) used by the heads; the second
    half maps it back to the backbone width so it can be mixed into the residual stream.

    Args:
        width: backbone token width.
        bottleneck: adapted feature width.
        residual: build the second half (False at the last tap, where no block reads it; a
            parameter without gradient would only stall DDP and bloat checkpoints).
    """

    def __init__(self, width: int, bottleneck: int, residual: bool = True) -> None:
        super().__init__()
        if width <= 0 or bottleneck <= 0:
            raise ValueError(f"width and bottleneck must be positive, got {width}, {bottleneck}")
        # In-place activations: the LayerNorm output is a fresh tensor nobody else reads.
        self.down = nn.Sequential(nn.Linear(width, bottleneck), nn.LayerNorm(bottleneck), nn.LeakyReLU(inplace=True))
        self.up = (
            nn.Sequential(nn.Linear(bottleneck, width), nn.LayerNorm(width), nn.LeakyReLU(inplace=True))
            if residual
            else None
        )

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, L, width) -> adapted (B, L, bottleneck), residual (B, L, width) or None."""
        feat = self.down(tokens)
        return feat, (self.up(feat) if self.up is not None else None)


class MultiLevelAdapters(nn.Module):
    """One Det and one Seg adapter per tap; mixes their outputs back into the residual stream.

    ``x ← residual_weight·x + seg_weight·seg(x) + det_weight·det(x)`` (MVFA: 0.8 / 0.1 / 0.1), so
    later blocks see adapted tokens. The per-level adapted features are averaged (paper eq. 3).

    Args:
        n_levels: number of taps.
        width: backbone token width.
        bottleneck: adapted feature width.
        residual_weight, seg_weight, det_weight: the mixing weights.
        mix_back: off = side adapters: no level mixes back (no up-projections), the tokens pass
            through unchanged.
    """

    def __init__(
        self,
        n_levels: int,
        width: int,
        bottleneck: int,
        residual_weight: float = 0.8,
        seg_weight: float = 0.1,
        det_weight: float = 0.1,
        mix_back: bool = True,
    ) -> None:
        super().__init__()
        if n_levels <= 0:
            raise ValueError(f"n_levels must be positive, got {n_levels}")
        self.mix_back = mix_back
        ups = [mix_back and i < n_levels - 1 for i in range(n_levels)]
        self.seg = nn.ModuleList(TokenAdapter(width, bottleneck, up) for up in ups)
        self.det = nn.ModuleList(TokenAdapter(width, bottleneck, up) for up in ups)
        self.residual_weight = residual_weight
        self.seg_weight = seg_weight
        self.det_weight = det_weight

    def adapt(self, level: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Adapt tokens at one level; the last level does not mix back (no block reads it).

        Args:
            level: tap index (0-based).
            x: block output tokens (B, 1+N, width), class token first.

        Returns:
            seg features of the patches (B, N, bottleneck), det feature of the class token
            (B, bottleneck), and the (possibly mixed) tokens (B, 1+N, width).
        """
        if self.mix_back and level < len(self.seg) - 1:
            seg_feat, seg_res = self.seg[level](x)
            det_feat, det_res = self.det[level](x)
            # One scaled add per branch into a fresh tensor (fewer passes over the tokens, which
            # matters under bf16, issue 16); the stream keeps its own dtype whatever the branches'.
            mixed = (x * self.residual_weight).add_(seg_res, alpha=self.seg_weight).add_(det_res, alpha=self.det_weight)
            x = mixed.to(x.dtype)
            return seg_feat[:, 1:], det_feat[:, 0], x
        # Last tap (every tap without mix-back): only the heads read the features; the det path
        # needs the class token only.
        # Contiguous slices: a strided 3-D input cannot be folded into one matmul, and under
        # bf16 autocast the fallback bmm copies the weight once per batch item (issue 16).
        seg_feat, _ = self.seg[level](x[:, 1:].contiguous())
        det_feat, _ = self.det[level](x[:, :1].contiguous())
        return seg_feat, det_feat[:, 0], x
