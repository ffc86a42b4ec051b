"""Token-Patch Cross-Attention (TPCA, paper §3.4)."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["TokenPatchCrossAttention"]


class TokenPatchCrossAttention(nn.Module):
    """Cross-attention from the abnormal prompt's text tokens (queries) to image patches (keys).

    For each head ``h``: ``A_h = softmax_patches(W_q t · (W_k p)ᵀ / √d)``, shape (T, N). The
    maps are averaged over heads and transposed to patch-major (N, T), so every patch gets one
    feature per text token: how strongly that token attends to it. The map is scaled by ``N`` (a
    uniform map is 1, independent of the grid size), padding tokens are zeroed, and the result is
    concatenated with the patch features (the residual) and reshaped to the patch grid.

    The paper's TPCA has a value projection ``W_v``; in this head-averaged-map form the
    attention *values* are never read, so a ``W_v`` would be a parameter without gradient and is
    left out deliberately.

    Args:
        dim: feature width of text tokens and patches (the CLIP embedding dim).
        num_tokens: number of query token slots T (fixed at construction).
        heads: number of attention heads; must divide ``dim``.
    """

    def __init__(self, dim: int, num_tokens: int, heads: int = 8) -> None:
        super().__init__()
        if dim % heads != 0:
            raise ValueError(f"TPCA heads ({heads}) must divide the feature width ({dim})")
        if num_tokens <= 0:
            raise ValueError(f"num_tokens must be positive, got {num_tokens}")
        self.dim, self.heads, self.num_tokens = dim, heads, num_tokens
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)

    @property
    def out_channels_extra(self) -> int:
        """Channels TPCA adds to the patch features."""
        return self.num_tokens

    def attention_map(self, tokens: torch.Tensor, token_mask: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        """Head-averaged, patch-major attention: (T, D), (T,), (B, N, D) -> (B, N, T)."""
        b, n, d = patches.shape
        t = tokens.shape[0]
        hd = d // self.heads
        q = self.q(tokens).reshape(t, self.heads, hd).transpose(0, 1)  # (H, T, hd)
        k = self.k(patches).reshape(b, n, self.heads, hd).transpose(1, 2)  # (B, H, N, hd)
        logits = torch.einsum("htc,bhnc->bhtn", q, k) / math.sqrt(hd)  # (B, H, T, N)
        attn = logits.softmax(dim=-1).mean(dim=1)  # (B, T, N)
        attn = attn * token_mask.to(attn.dtype)[None, :, None] * n  # padding rows -> 0
        return attn.transpose(1, 2)  # (B, N, T)

    def forward(
        self, tokens: torch.Tensor, token_mask: torch.Tensor, patches: torch.Tensor, grid: tuple[int, int]
    ) -> torch.Tensor:
        """Fuse text tokens into the patch grid.

        Args:
            tokens: abnormal prompt token embeddings (T, D).
            token_mask: True at valid (non-padding) tokens (T,).
            patches: patch features (B, N, D), N = grid[0]·grid[1].
            grid: patch grid (h, w).

        Returns:
            Fused grid (B, D + T, h, w).
        """
        if tokens.shape[0] != self.num_tokens:
            raise ValueError(f"TPCA was built for {self.num_tokens} tokens, got {tokens.shape[0]}")
        # Padding embeddings must not leak anywhere: mask them before the projection too.
        tokens = tokens * token_mask.to(tokens.dtype)[:, None]
        attn = self.attention_map(tokens, token_mask, patches)  # (B, N, T)
        fused = torch.cat([patches, attn], dim=-1)  # (B, N, D + T)
        b, n, c = fused.shape
        return fused.transpose(1, 2).reshape(b, c, grid[0], grid[1])
