"""The single configuration object of a MedSAD-CLIP model and its training defaults."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = ["MedSADConfig", "ABLATIONS", "strict_from_dict"]

#: Paper Table 3 ablations: preset name -> (learnable_prompt, use_tpca, mc_loss).
ABLATIONS: dict[str, tuple[bool, bool, bool]] = {
    "adapt": (False, False, False),
    "adapt_prompt": (True, False, False),
    "adapt_prompt_tpca": (True, True, False),
    "full": (True, True, True),
}


def strict_from_dict(cls: type, data: dict[str, Any], what: str) -> Any:
    """``cls(**data)`` for a dataclass, refusing unknown keys with a message naming ``what``."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown {what} key(s) {unknown}; known keys: {sorted(known)}")
    return cls(**data)


@dataclass
class MedSADConfig:
    """Everything needed to rebuild a MedSAD-CLIP model (and its default training recipe).

    Backbone:
        clip_model: open_clip architecture name (``ViT-L-14``, ``ViT-B-16``, ``MedSAD-Tiny`` ...).
        clip_pretrained: open_clip pretrained tag (e.g. ``openai``; downloads on a machine with
            internet), a local weight file path, or ``none`` for an explicit random init.
        quick_gelu: use QuickGELU activations; ``None`` = automatic (on for OpenAI weights).
        image_size: input side length; ``None`` = the backbone's native size.
        tap_layers: 1-based transformer block indices whose outputs feed the adapters;
            ``None`` = four taps spread evenly over the depth (ViT-L: 6, 12, 18, 24).
        train_backbone: train the backbone too (only sensible for a random-init backbone).

    Adapters:
        adapter_bottleneck: hidden width of every Det/Seg adapter; ``None`` = CLIP embed dim.
        residual_weight, seg_adapter_weight, det_adapter_weight: mixing of the adapted tokens
            back into the residual stream (MVFA: 0.8 / 0.1 / 0.1).
        adapter_mix_back: mix the adapted tokens back into the residual stream (MVFA and the
            paper: on). Off = side adapters: every tap reads the frozen backbone's own tokens,
            the backbone runs without autograd and training backpropagates through the adapters
            and heads only (a training step costs little more than a forward; docs/model.md).

    Prompt:
        category: the organ / object name filled into the templates (``medsad train
            --category``; the dataset configs set ``brain``, ``retina``, ``lung``, ``breast``).
            Stored in the checkpoint's config, so inference encodes the same prompt.
        normal_templates, abnormal_templates: anchor templates with one ``{}`` for the category.
        learnable_prompt: append ``n_ctx`` learnable token vectors to every anchor.
        n_ctx: number of learnable token vectors per state (normal / abnormal).

    Projections not in the paper (docs/model.md, "Deviations from the paper"):
        seg_projection: a linear layer from the Seg-adapter patch features into CLIP's joint
            embedding space before TPCA / the similarity map (``MedSADCLIP.seg_proj``). Off =
            the paper's equations: the adapter output is used as it is (needs
            ``adapter_bottleneck`` equal to the CLIP embedding width, the default).
        classifier_projection: a linear layer from the Det-adapter class token into the text
            space before the comparison with the prototypes (``AnomalyClassifier.proj``). Off =
            the paper's equations (same width condition).
        Both default to on here (every older checkpoint was written with them, and the ``tiny``
        preset keeps them); the paper presets and dataset configs turn them off (docs/model.md).

    Segmentation head:
        use_tpca: Token-Patch Cross-Attention + SegDecoder; off = dot-product similarity map.
        tpca_heads: attention heads in TPCA.
        decoder_channels: channels of the SegDecoder's upsampling stages (each doubles the size).
        decoder_norm: normalisation in the decoder (``batch``, ``instance``, ``group``, ``none``).
        decoder_skip_channels: width of the decoder's high-resolution image branch (0 = off,
            the paper's decoder; see :class:`~medsad_monai.networks.SegDecoder`).
        decoder_full_res_channels: width of the decoder's last stage at the input's full
            resolution (0 = off; needs ``decoder_skip_channels``); places lesion borders to
            the pixel for 8 % more time per step in ``tiny``.

    Image score:
        score_fusion: ``cls`` (the paper: P(abnormal) from the class token) or ``cls_max_mask``:
            the mean of that and the maximum of the (5×5 average-pooled) lesion map, as
            AnomalyCLIP/MVFA do; the class-token output stays in ``score_cls`` and the losses
            always train the class token.
        slice_score: how calibration scores slices: ``model`` (the model's ``score``; the paper
            presets) or ``auto`` (the best-ranking on validation of the model's score, the
            smoothed lesion-map peak and the post-processed lesion area; see
            :mod:`medsad_monai.engine.decision`), or one of ``peak`` / ``lesion_area`` (the
            ``tiny`` preset: ``lesion_area``, see docs/decisions.md).
        tta_flip: at inference (eval mode), average the lesion map and score with those of the
            column-mirrored image (2× inference time; see ``networks/flip_tta.py``).
        tta_flip_rows: with ``tta_flip``, the row-mirrored views too (4 views, 4× inference
            time): for RAS-view volume slices the rows run left-right (the ``tiny`` preset).

    Loss:
        mc_loss: add the margin contrastive loss (the ``full`` preset).
        mc_margin, bce_weight, dicefocal_weight, mc_weight: loss settings.
        dice_reduction: ``batch`` (one soft Dice over the whole batch) or ``lesion_images``
            (the mean of per-image soft Dice over the images that hold a lesion; lesion-free
            images are left to the focal term). ``lesion_images`` weighs a small lesion like a
            large one, as the mean-per-image Dice metric does.
        fp_weight, fp_topk: the lesion-free-image term (0 = off, the paper): binary
            cross-entropy of the ``fp_topk`` most lesion-like pixels of every image without a
            lesion (see :func:`~medsad_monai.losses.medsad_loss.lesion_free_penalty`).
        fp_start: the fraction of the run (epochs, or ``--max-minutes`` when further along)
            after which that term switches on; earlier it stalls lesion learning.

    Training recipe (defaults of ``medsad train``):
        lr, betas, batch_size, epochs: Adam, batch 32 and 50 epochs are the paper's (§4.2);
            lr 1e-3 and betas (0.5, 0.999) come from MVFA's code (``train_few.py``), not from
            the paper's text.
        lr_schedule: ``constant`` (the paper) or ``cosine``: the learning rate follows a half
            cosine to 0 over the run's progress, the larger of the epoch fraction and the
            fraction of ``--max-minutes`` used (so a time-limited run still ends at a low rate).
        ema_decay: 0 (off, the paper) or the decay of an exponential moving average of the
            trainable weights (e.g. 0.99); validation, ``best.pt`` and inference then use the
            averaged weights, which damps the epoch-to-epoch noise of short runs.
    """

    preset: str = "full"
    clip_model: str = "ViT-L-14"
    clip_pretrained: str = "openai"
    quick_gelu: bool | None = None
    image_size: int | None = None
    tap_layers: list[int] | None = None
    train_backbone: bool = False

    adapter_bottleneck: int | None = None
    residual_weight: float = 0.8
    seg_adapter_weight: float = 0.1
    det_adapter_weight: float = 0.1
    adapter_mix_back: bool = True

    category: str = "brain"
    normal_templates: list[str] = field(default_factory=lambda: ["a photo of a normal {}."])
    abnormal_templates: list[str] = field(default_factory=lambda: ["a photo of a damaged {}."])
    learnable_prompt: bool = True
    n_ctx: int = 10

    seg_projection: bool = True
    classifier_projection: bool = True

    use_tpca: bool = True
    tpca_heads: int = 8
    decoder_channels: list[int] = field(default_factory=lambda: [128, 64, 32])
    decoder_norm: str = "instance"
    decoder_skip_channels: int = 0
    decoder_full_res_channels: int = 0

    score_fusion: str = "cls"
    slice_score: str = "model"
    tta_flip: bool = False
    tta_flip_rows: bool = False

    mc_loss: bool = True
    mc_margin: float = 0.4
    bce_weight: float = 1.0
    dicefocal_weight: float = 1.0
    mc_weight: float = 1.0
    dice_reduction: str = "batch"
    fp_weight: float = 0.0
    fp_topk: float = 0.01
    fp_start: float = 0.0

    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.5, 0.999])
    batch_size: int = 32
    epochs: int = 50
    lr_schedule: str = "constant"
    ema_decay: float = 0.0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first invalid field."""
        if not self.clip_model or not isinstance(self.clip_model, str):
            raise ValueError(f"clip_model must be an open_clip model name, got {self.clip_model!r}")
        if not isinstance(self.clip_pretrained, str) or not self.clip_pretrained:
            raise ValueError(
                f"clip_pretrained must be an open_clip tag, a local file path or 'none', got {self.clip_pretrained!r}"
            )
        if self.image_size is not None and self.image_size <= 0:
            raise ValueError(f"image_size must be positive, got {self.image_size}")
        if self.tap_layers is not None:
            if len(self.tap_layers) == 0 or any(int(t) < 1 for t in self.tap_layers):
                raise ValueError(f"tap_layers must be 1-based block indices, got {self.tap_layers}")
            if list(self.tap_layers) != sorted(set(self.tap_layers)):
                raise ValueError(f"tap_layers must be strictly increasing, got {self.tap_layers}")
        if self.adapter_bottleneck is not None and self.adapter_bottleneck <= 0:
            raise ValueError(f"adapter_bottleneck must be positive, got {self.adapter_bottleneck}")
        for name in ("normal_templates", "abnormal_templates"):
            templates = getattr(self, name)
            if not templates or any(t.count("{}") != 1 for t in templates):
                raise ValueError(f"{name} must be non-empty templates with exactly one '{{}}', got {templates}")
        if not self.category or not isinstance(self.category, str) or "{" in self.category:
            raise ValueError(f"category must be a non-empty organ / object name, got {self.category!r}")
        if self.n_ctx < 0:
            raise ValueError(f"n_ctx must be >= 0, got {self.n_ctx}")
        if self.tpca_heads <= 0:
            raise ValueError(f"tpca_heads must be positive, got {self.tpca_heads}")
        if not self.decoder_channels or any(c <= 0 for c in self.decoder_channels):
            raise ValueError(f"decoder_channels must be positive integers, got {self.decoder_channels}")
        if self.decoder_full_res_channels < 0 or (self.decoder_full_res_channels and not self.decoder_skip_channels):
            raise ValueError(
                f"decoder_full_res_channels must be >= 0 and needs decoder_skip_channels, got "
                f"{self.decoder_full_res_channels} (skip {self.decoder_skip_channels})"
            )
        if self.decoder_skip_channels < 0:
            raise ValueError(f"decoder_skip_channels must be >= 0, got {self.decoder_skip_channels}")
        if self.decoder_norm not in ("batch", "instance", "group", "none"):
            raise ValueError(f"decoder_norm must be one of batch, instance, group, none; got {self.decoder_norm!r}")
        if self.score_fusion not in ("cls", "cls_max_mask"):
            raise ValueError(f"score_fusion must be cls or cls_max_mask, got {self.score_fusion!r}")
        if self.slice_score not in ("model", "auto", "peak", "lesion_area"):
            raise ValueError(f"slice_score must be model, auto, peak or lesion_area, got {self.slice_score!r}")
        if self.mc_margin < 0:
            raise ValueError(f"mc_margin must be >= 0, got {self.mc_margin}")
        if not 0.0 <= self.fp_start < 1.0:
            raise ValueError(f"fp_start must lie in [0, 1), got {self.fp_start}")
        if not 0.0 < self.fp_topk <= 1.0:
            raise ValueError(f"fp_topk must lie in (0, 1], got {self.fp_topk}")
        for name in ("bce_weight", "dicefocal_weight", "mc_weight", "fp_weight", "lr"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must lie in [0, 1), got {self.ema_decay}")
        if self.dice_reduction not in ("batch", "lesion_images"):
            raise ValueError(f"dice_reduction must be batch or lesion_images, got {self.dice_reduction!r}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be constant or cosine, got {self.lr_schedule!r}")
        if self.batch_size <= 0 or self.epochs <= 0:
            raise ValueError(f"batch_size and epochs must be positive, got {self.batch_size}, {self.epochs}")

    @property
    def random_init(self) -> bool:
        """True when the backbone is explicitly randomly initialised."""
        return self.clip_pretrained.lower() == "none"

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python dict (JSON- and ``weights_only``-safe)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MedSADConfig:
        """Build from a dict, rejecting unknown keys with a clear message."""
        return strict_from_dict(cls, data, "MedSAD config")

    def replace(self, **changes: Any) -> MedSADConfig:
        """A copy with ``changes`` applied (validated)."""
        return self.from_dict({**self.to_dict(), **changes})
