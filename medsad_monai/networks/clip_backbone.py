"""The frozen open_clip ViT backbone: building it offline-safely and exposing its tap points."""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medsad_monai.configs import register_model_configs

__all__ = ["CLIPBackbone", "resolve_pretrained", "default_tap_layers", "file_sha256", "run_block"]

logger = logging.getLogger(__name__)

_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


@functools.lru_cache(maxsize=8)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file (cached per path, size and modification time)."""
    st = os.stat(path)
    return _sha256_cached(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


def default_tap_layers(depth: int, n_taps: int = 4) -> list[int]:
    """1-based block indices spread evenly over ``depth`` (ViT-L/24: 6, 12, 18, 24)."""
    if depth < n_taps:
        return list(range(1, depth + 1))
    return [math.ceil(depth * k / n_taps) for k in range(1, n_taps + 1)]


def resolve_pretrained(clip_model: str, clip_pretrained: str) -> tuple[str, str | None]:
    """Classify ``clip_pretrained`` as ``("none", None)``, ``("path", abspath)`` or ``("tag", tag)``.

    Raises:
        ValueError: unknown model name, or a tag open_clip does not know for this model.
        FileNotFoundError: something that looks like a path but is not a file.
    """
    import open_clip

    register_model_configs()
    if clip_model not in open_clip.list_models():
        raise ValueError(
            f"unknown open_clip model {clip_model!r}. Use an open_clip ViT name such as "
            f"'ViT-B-16', 'ViT-L-14' or 'MedSAD-Tiny' (see open_clip.list_models())."
        )
    value = clip_pretrained.strip()
    if value.lower() == "none":
        return "none", None
    looks_like_path = os.sep in value or value.startswith(".") or value.lower().endswith(_WEIGHT_SUFFIXES)
    if os.path.isfile(value):
        return "path", str(Path(value).resolve())
    if looks_like_path:
        raise FileNotFoundError(
            f"CLIP weight file {value!r} does not exist. Pass an existing local file "
            f"(.pt/.bin/.safetensors), an open_clip tag, or 'none' for a random init."
        )
    tags = open_clip.list_pretrained_tags_by_model(clip_model)
    if value not in tags:
        raise ValueError(
            f"{value!r} is neither a file nor an open_clip pretrained tag of {clip_model!r} "
            f"(known tags: {', '.join(tags) or 'none'}). Pass a local weight file path, "
            f"a known tag, or 'none' for a random init."
        )
    return "tag", value


def _needs_batch_first_attention(block: nn.Module, x: torch.Tensor) -> bool:
    """Whether ``block`` should run through :func:`_batch_first_block` instead of its own forward.

    Under CPU autocast ``nn.MultiheadAttention`` leaves its fast path ("autocast is enabled" or
    a bf16 query against fp32 weights) and its slow path projects the *transposed* (L, B, D)
    query with ``F.linear``. That operand cannot be folded into one matrix, so ``matmul`` falls
    back to a ``bmm`` against the in-projection weight expanded to (L, D, 3D), which bf16
    materialises: ~2 s of ``aten::copy_`` per ViT-B-16 forward (issue 16). Projecting the
    contiguous batch-first tokens instead is one ``addmm``.

    With gradients on (training: the tapped blocks carry the adapters' gradients) the same slow
    path transposes and copies both ways and saves its intermediates for backward: a ViT-B-16
    block took 0.126 s forward and 0.304 s forward + backward there against 0.070 s and 0.143 s
    batch-first (batch 8, fp32, 2 CPU cores; issue 15).

    On a CPU the batch-first block is also the faster one in plain fp32 inference, where
    ``nn.MultiheadAttention`` takes its fused fast path: 12 ViT-B-16 blocks 1.80 s against 2.04 s
    (batch 8 at 224), the 4 ``MedSAD-Tiny-L4`` blocks 0.034 s against 0.039 s (batch 8 at 128),
    with identical outputs (AMD Zen 4, 2 cores, 2026-12-07). So on a CPU every eligible block runs
    batch-first; elsewhere (CUDA) the fast path stays for inference.
    """
    if not (x.device.type == "cpu" or torch.is_grad_enabled()):
        return False
    attn = getattr(block, "attn", None)
    return (
        isinstance(attn, nn.MultiheadAttention)
        and attn.batch_first
        and attn._qkv_same_embed_dim
        and attn.in_proj_weight is not None
        and attn.bias_k is None
        and not attn.add_zero_attn
        and hasattr(block, "ln_1")
        and hasattr(block, "mlp")
        and not hasattr(block, "ln_1_kv")
        and x.ndim == 3
    )


def _batch_first_block(block: nn.Module, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
    """open_clip's ``ResidualAttentionBlock.forward`` (self-attention, optionally with an additive
    ``attn_mask``, e.g. the text tower's causal one) with the attention computed batch-first: the
    same arithmetic as ``nn.MultiheadAttention``, without its layout copy."""
    attn: nn.MultiheadAttention = block.attn
    b, n, d = x.shape
    h = attn.num_heads
    dropout = attn.dropout if attn.training else 0.0
    qkv = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias)  # (B, N, 3D)
    q, k, v = qkv.reshape(b, n, 3, h, d // h).permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, N, hd) each
    mask = None if attn_mask is None else attn_mask.to(q.dtype)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
    out = attn.out_proj(out.transpose(1, 2).reshape(b, n, d))
    x = x + block.ls_1(out)
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def run_block(block: nn.Module, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
    """One transformer block on batch-first tokens (B, L, width).

    Identical to ``block(x, attn_mask=attn_mask)``; under CPU autocast or with gradients on the
    attention runs batch-first (see :func:`_needs_batch_first_attention`), which is what makes
    bf16 pay off on CPUs.
    """
    if _needs_batch_first_attention(block, x):
        return _batch_first_block(block, x, attn_mask)
    return block(x) if attn_mask is None else block(x, attn_mask=attn_mask)


def run_transformer(transformer: nn.Module, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
    """open_clip's ``Transformer`` (the text tower's) on batch-first tokens, block by block through
    :func:`run_block`; a transformer that is not batch-first or checkpoints its gradients runs as is."""
    if not getattr(transformer, "batch_first", False) or getattr(transformer, "grad_checkpointing", False):
        return transformer(x, attn_mask=attn_mask)
    for block in transformer.resblocks:
        x = run_block(block, x, attn_mask)
    return x


class CLIPBackbone(nn.Module):
    """An open_clip CLIP model whose vision tower is run block by block.

    Args:
        clip_model: open_clip architecture name.
        clip_pretrained: open_clip tag, local weight file or ``"none"`` (explicit random init).
        quick_gelu: force QuickGELU; ``None`` = on exactly when the tag's weights need it (OpenAI)
            or the file name says ``openai``.
        image_size: input side; ``None`` = the architecture's size.
        tap_layers: 1-based block indices to tap; ``None`` = :func:`default_tap_layers`.
        trainable: leave the weights trainable (random-init backbones only make sense here).

    Raises:
        ValueError, FileNotFoundError: bad names or paths (see :func:`resolve_pretrained`).
        RuntimeError: the weights could not be loaded or downloaded (e.g. no network).
    """

    def __init__(
        self,
        clip_model: str,
        clip_pretrained: str,
        quick_gelu: bool | None = None,
        image_size: int | None = None,
        tap_layers: list[int] | None = None,
        trainable: bool = False,
    ) -> None:
        super().__init__()
        import open_clip

        kind, value = resolve_pretrained(clip_model, clip_pretrained)
        if quick_gelu is None:
            quick_gelu = self._auto_quick_gelu(open_clip, clip_model, kind, value)
        kwargs: dict[str, Any] = {"force_quick_gelu": bool(quick_gelu)}
        if image_size is not None:
            kwargs["force_image_size"] = int(image_size)
        try:
            self.clip = open_clip.create_model(
                clip_model, pretrained=value, require_pretrained=kind != "none", **kwargs
            )
        except Exception as exc:  # open_clip raises many kinds; re-raise with advice
            where = f"file {value}" if kind == "path" else f"tag {value!r}"
            raise RuntimeError(
                f"could not load CLIP weights for {clip_model!r} from {where}: {exc}. "
                f"Without network access, download the weights elsewhere and pass the local "
                f"file path (clip_pretrained=/path/to/open_clip_pytorch_model.bin), or pass "
                f"'none' for an explicitly random-initialised backbone."
            ) from exc
        visual = self.clip.visual
        if not hasattr(visual, "transformer") or not hasattr(visual, "_embeds"):
            raise ValueError(f"{clip_model!r} has no ViT image tower; MedSAD needs an open_clip ViT")

        self.depth = len(visual.transformer.resblocks)
        taps = list(tap_layers) if tap_layers is not None else default_tap_layers(self.depth)
        if max(taps) > self.depth:
            raise ValueError(f"tap_layers {taps} exceed the depth ({self.depth}) of {clip_model!r}")
        self.tap_layers = taps
        self.width: int = visual.transformer.width
        self.embed_dim: int = int(visual.output_dim)
        self.text_width: int = int(self.clip.transformer.width)
        self.image_size: int = int(visual.image_size[0])
        self.patch_size: int = int(visual.patch_size[0])
        self.grid_size: tuple[int, int] = tuple(visual.grid_size)  # type: ignore[assignment]
        mean = getattr(visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN
        std = getattr(visual, "image_std", None) or open_clip.OPENAI_DATASET_STD
        self.image_mean: tuple[float, ...] = tuple(float(m) for m in mean)
        self.image_std: tuple[float, ...] = tuple(float(s) for s in std)
        self.identity: dict[str, Any] = {
            "arch": clip_model,
            "pretrained": value if kind != "none" else "none",
            "kind": kind,
            "sha256": file_sha256(value) if kind == "path" else None,
            "quick_gelu": bool(quick_gelu),
            "image_size": self.image_size,
        }
        self.tokenizer = open_clip.get_tokenizer(clip_model)
        self.trainable = trainable
        # The text tower always stays frozen (only the prompt vectors learn); the image tower
        # trains only when asked (sensible for a random-init backbone alone).
        self.clip.requires_grad_(False)
        if trainable:
            # Only what MedSAD reads may train: the pooled head (ln_post, proj) and blocks after
            # the last tap never see a gradient, and DDP needs every trainable tensor used.
            visual.requires_grad_(True)
            visual.ln_post.requires_grad_(False)
            if isinstance(visual.proj, nn.Parameter):
                visual.proj.requires_grad_(False)
            for block in visual.transformer.resblocks[max(taps) :]:
                block.requires_grad_(False)
        logger.info(
            "backbone %s (%s) depth=%d width=%d taps=%s grid=%s trainable=%s",
            clip_model,
            self.identity["pretrained"],
            self.depth,
            self.width,
            taps,
            self.grid_size,
            trainable,
        )

    @staticmethod
    def _auto_quick_gelu(open_clip: Any, clip_model: str, kind: str, value: str | None) -> bool:
        if "quickgelu" in clip_model.lower():
            return False  # the architecture config already uses QuickGELU
        if kind == "tag":
            cfg = open_clip.get_pretrained_cfg(clip_model, value) or {}
            return bool(cfg.get("quick_gelu", False))
        if kind == "path":
            return "openai" in Path(value).name.lower()  # type: ignore[arg-type]
        return False

    @property
    def blocks(self) -> nn.ModuleList:
        """The vision transformer's residual blocks."""
        return self.clip.visual.transformer.resblocks

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Patch + class embedding with positions and ``ln_pre``: (B, 3, H, W) -> (B, 1+N, W)."""
        return self.clip.visual._embeds(images)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """The bare open_clip image encoder (reference for the overhead benchmark).

        On a CPU the blocks run through :func:`run_block`, as in MedSAD's own forward, so the
        reference is the encoder at its best (batch-first attention: no layout copy under
        autocast, faster than the fused fast path in fp32) and the two differ only by what MedSAD
        adds; :meth:`encode_image_stock` is open_clip's own.
        """
        visual = self.clip.visual
        if images.device.type != "cpu":
            return self.clip.encode_image(images)
        x = self.embed(images)
        for block in self.blocks:
            x = run_block(block, x)
        pooled, _ = visual._pool(x)
        if visual.proj is not None:
            pooled = pooled @ visual.proj
        return pooled

    def encode_image_stock(self, images: torch.Tensor) -> torch.Tensor:
        """open_clip's own ``encode_image``, unchanged (what the benchmark compares against too)."""
        return self.clip.encode_image(images)

    def train(self, mode: bool = True) -> CLIPBackbone:
        """The text tower always stays in eval mode; the image tower trains only if trainable."""
        super().train(False)
        self.clip.visual.train(mode and self.trainable)
        return self
