"""MedSAD-CLIP: the composed model (backbone, adapters, prompts, TPCA, SegDecoder, classifier)."""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medsad_monai.config import MedSADConfig
from medsad_monai.networks.adapters import MultiLevelAdapters
from medsad_monai.networks.classifier import AnomalyClassifier
from medsad_monai.networks.clip_backbone import CLIPBackbone, run_block
from medsad_monai.networks.flip_tta import flip_averaged
from medsad_monai.networks.prompt_learner import PromptLearner, TextFeatures
from medsad_monai.networks.seg_decoder import SegDecoder
from medsad_monai.networks.similarity_map import dot_product_map
from medsad_monai.networks.tpca import TokenPatchCrossAttention

__all__ = ["MedSADCLIP"]

logger = logging.getLogger(__name__)


class MedSADCLIP(nn.Module):
    """Supervised CLIP for medical anomaly detection and segmentation.

    Input: CLIP-normalised images (B, 3, S, S) with S = :attr:`image_size` (use
    :meth:`normalize` on [0, 1] images). Output: a dict with

    - ``mask_logits`` (B, 2, S, S) and ``mask`` (B, 2, S, S): softmax over (background, lesion);
    - ``image_logits`` (B, 2), ``cos`` (B, 2): image embedding vs. normal/abnormal prototypes;
    - ``score`` (B,): the anomaly score, P(abnormal) from the class token (``score_cls``), or
      with ``score_fusion="cls_max_mask"`` its mean with the peak of the smoothed lesion map.

    The ablation switches of :class:`MedSADConfig` (``learnable_prompt``, ``use_tpca``) select
    the heads on one code path. In eval mode the text features are computed once and cached;
    the cache is dropped on ``train()``, on ``load_state_dict`` and when the prompt vectors
    change (their version counter moves on every in-place update).

    Args:
        config: the model configuration.

    Raises:
        ValueError, FileNotFoundError, RuntimeError: see :class:`CLIPBackbone`.
    """

    def __init__(self, config: MedSADConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.backbone = CLIPBackbone(
            config.clip_model,
            config.clip_pretrained,
            quick_gelu=config.quick_gelu,
            image_size=config.image_size,
            tap_layers=config.tap_layers,
            trainable=config.train_backbone,
        )
        bb = self.backbone
        bottleneck = config.adapter_bottleneck or bb.embed_dim
        self.adapters = MultiLevelAdapters(
            len(bb.tap_layers),
            bb.width,
            bottleneck,
            config.residual_weight,
            config.seg_adapter_weight,
            config.det_adapter_weight,
            mix_back=config.adapter_mix_back,
        )
        # Not in the paper (config switch, docs/model.md): off = the adapter output as it is.
        if not config.seg_projection and bottleneck != bb.embed_dim:
            raise ValueError(
                f"seg_projection=False needs the adapter width ({bottleneck}) to equal the CLIP "
                f"embedding width ({bb.embed_dim}); leave adapter_bottleneck unset"
            )
        self.seg_proj: nn.Module = nn.Linear(bottleneck, bb.embed_dim) if config.seg_projection else nn.Identity()
        self.prompt = PromptLearner(
            bb.clip,
            bb.tokenizer,
            config.category,
            list(config.normal_templates),
            list(config.abnormal_templates),
            n_ctx=config.n_ctx,
            learnable=config.learnable_prompt,
        )
        self.classifier = AnomalyClassifier(bottleneck, bb.embed_dim, project=config.classifier_projection)
        if config.use_tpca:
            self.tpca: TokenPatchCrossAttention | None = TokenPatchCrossAttention(
                bb.embed_dim, self.prompt.num_abnormal_tokens, heads=config.tpca_heads
            )
            self.decoder: SegDecoder | None = SegDecoder(
                bb.embed_dim + self.tpca.out_channels_extra,
                config.decoder_channels,
                config.decoder_norm,
                skip_channels=config.decoder_skip_channels,
                full_res_channels=config.decoder_full_res_channels,
            )
        else:
            self.tpca = None
            self.decoder = None
        self._text_cache: tuple[Any, TextFeatures] | None = None
        self.text_encoder_calls = 0

    # ------------------------------------------------------------------ properties / helpers
    @property
    def image_size(self) -> int:
        """Side length the model expects."""
        return self.backbone.image_size

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """CLIP normalisation of [0, 1] images (B, 3, H, W)."""
        mean = torch.tensor(self.backbone.image_mean, device=images.device, dtype=images.dtype)
        std = torch.tensor(self.backbone.image_std, device=images.device, dtype=images.dtype)
        return (images - mean[:, None, None]) / std[:, None, None]

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters the optimizer should update."""
        return [p for p in self.parameters() if p.requires_grad]

    def logit_scale(self) -> torch.Tensor:
        """CLIP's (frozen) temperature, capped at 100 as in CLIP."""
        return self.backbone.clip.logit_scale.detach().exp().clamp(max=100.0)

    # ------------------------------------------------------------------ text features
    def train(self, mode: bool = True) -> MedSADCLIP:
        self._text_cache = None
        return super().train(mode)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):  # type: ignore[override]
        self._text_cache = None
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def text_features(self) -> TextFeatures:
        """Prompt features; cached in eval mode, recomputed (with gradients) in training."""
        if self.training:
            self.text_encoder_calls += 1
            return self.prompt()
        p = self.backbone.clip.token_embedding.weight
        key = (self.prompt.version(), p.device, p.dtype)
        if self._text_cache is None or self._text_cache[0] != key:
            with torch.no_grad():
                self.text_encoder_calls += 1
                self._text_cache = (key, self.prompt())
        return self._text_cache[1]

    # ------------------------------------------------------------------ forward
    def check_input(self, images: torch.Tensor) -> None:
        """Raise ``ValueError`` with advice when ``images`` is not a valid model input."""
        if not isinstance(images, torch.Tensor):
            raise ValueError(f"expected a torch.Tensor of shape (B, 3, H, W), got {type(images).__name__}")
        if images.ndim != 4:
            raise ValueError(
                f"expected a 4-D batch (B, 3, {self.image_size}, {self.image_size}), got shape "
                f"{tuple(images.shape)}; add a batch dimension with x[None] or slice volumes first"
            )
        b, c, h, w = images.shape
        if b == 0:
            raise ValueError("got an empty batch (B = 0)")
        if c != 3:
            raise ValueError(
                f"expected 3 channels, got {c} (shape {tuple(images.shape)}); repeat a grey image "
                f"to 3 channels or stack neighbouring slices (2.5D)"
            )
        if (h, w) != (self.image_size, self.image_size):
            raise ValueError(
                f"expected spatial size {self.image_size}x{self.image_size}, got {h}x{w}; resize "
                f"the input (monai.transforms.Resize) or build the model with image_size={h}"
            )
        # One reduction first (a NaN/inf anywhere makes the sum non-finite); the exact elementwise
        # count only when that fires (it can also fire on a finite sum overflow).
        if not torch.isfinite(images.sum()):
            bad = int((~torch.isfinite(images)).sum())
            if bad:
                raise ValueError(f"input contains {bad} NaN/inf values; clean or mask them before inference")

    def encode_image(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Backbone with adapters mixed in.

        Returns:
            seg patch features (B, N, bottleneck) and det class-token feature (B, bottleneck),
            each averaged over the taps (paper eq. 3).
        """
        bb = self.backbone
        taps = bb.tap_layers
        x = bb.embed(images)
        frozen_prefix = not bb.trainable
        grad = torch.is_grad_enabled()
        with torch.set_grad_enabled(grad and not frozen_prefix):
            for block in bb.blocks[: taps[0] - 1]:
                x = run_block(block, x)
        # Side adapters on a frozen backbone: no gradient ever flows into the stream.
        stream_grad = grad and (self.adapters.mix_back or not frozen_prefix)
        seg_sum: torch.Tensor | None = None
        det_sum: torch.Tensor | None = None
        level = 0
        for index in range(taps[0] - 1, taps[-1]):
            with torch.set_grad_enabled(stream_grad):
                x = run_block(bb.blocks[index], x)
            if index + 1 == taps[level]:
                seg, det, x = self.adapters.adapt(level, x)
                seg_sum = seg if seg_sum is None else seg_sum + seg
                det_sum = det if det_sum is None else det_sum + det
                level += 1
        n = float(len(taps))
        return seg_sum / n, det_sum / n  # type: ignore[operator]

    def forward(self, images: torch.Tensor, flip_tta: bool | None = None) -> dict[str, torch.Tensor]:
        """Run the model; see the class docstring for the output dict. In eval mode with
        ``config.tta_flip`` (or ``flip_tta=True``) the maps and scores are averaged with the
        mirrored image's; ``flip_tta=False`` runs the plain forward whatever the config."""
        self.check_input(images)
        if (self.config.tta_flip if flip_tta is None else flip_tta) and not self.training:
            return flip_averaged(self._forward, images, rows=self.config.tta_flip_rows)
        return self._forward(images)

    def _forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        text = self.text_features()
        scale = self.logit_scale()
        seg, det = self.encode_image(images)
        patches = self.seg_proj(seg)  # (B, N, D)
        out = self.classifier(det, text.prototypes, scale)
        size = (images.shape[-2], images.shape[-1])
        grid = self.backbone.grid_size
        if self.tpca is not None and self.decoder is not None:
            tokens, token_mask = text.abnormal_tokens()
            fused = self.tpca(tokens.to(patches.dtype), token_mask, patches, grid)
            mask_logits = self.decoder(fused, size, images)
        else:
            mask_logits = dot_product_map(patches, text.prototypes, scale, grid, size)
        out["mask_logits"] = mask_logits
        out["mask"] = mask_logits.softmax(dim=1)
        out["score_cls"] = out["score"]
        if self.config.score_fusion == "cls_max_mask":
            smoothed = F.avg_pool2d(out["mask"][:, 1:], kernel_size=5, stride=1, padding=2)
            out["score"] = 0.5 * (out["score_cls"] + smoothed.flatten(1).max(dim=1).values)
        return out
