"""The training objective: BCE(score) + DiceFocal(mask) + MCLoss (paper §3.7)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceFocalLoss, DiceLoss, FocalLoss
from torch import nn

from medsad_monai.losses.mc_loss import MCLoss

__all__ = ["MedSADLoss", "lesion_logit", "lesion_free_penalty"]


def lesion_logit(mask_logits: torch.Tensor) -> torch.Tensor:
    """Two-class logits (B, 2, H, W) -> one lesion logit (B, 1, H, W).

    ``softmax(l)[1] == sigmoid(l1 − l0)``, so a sigmoid-based loss on this logit sees exactly
    the model's softmax lesion probability.
    """
    return mask_logits[:, 1:2] - mask_logits[:, 0:1]


def lesion_free_penalty(logit: torch.Tensor, masks: torch.Tensor, topk: float = 0.01) -> torch.Tensor:
    """Hard-negative term for lesion-free images: mean ``-log(1 - p)`` of their most lesion-like pixels.

    For each image (B, 1, H, W) whose mask is empty, the ``topk`` fraction of pixels with the
    highest lesion logit are taken; those predicted lesion (probability > 0.5) are scored with
    binary cross-entropy against background (``softplus(logit) = -log(1 - sigmoid(logit))``),
    averaged over the top pixels and images. A false-positive blob of a few dozen pixels is
    ~0.2 % of a 128² image, so a loss averaged over every pixel barely sees it; this term sees
    nothing else. Pixels already called background cost nothing, so the term does not push the
    whole map down before lesions are learnt (measured: without that hinge the validation Dice
    stayed 0 for 4-6 epochs at weights 0.2-1). Zero when every image has a lesion.
    """
    empty = masks.flatten(1).amax(dim=1) <= 0
    if not empty.any():
        return logit.new_zeros(())
    flat = logit[empty].flatten(1)  # (E, H*W)
    k = max(1, int(round(topk * flat.shape[1])))
    top = flat.topk(k, dim=1).values
    return (F.softplus(top) * (top > 0)).mean()


class MedSADLoss(nn.Module):
    """Weighted sum of the three paper losses; returns the total and its parts.

    Mask term: ``monai.losses.DiceFocalLoss(sigmoid=True)`` on :func:`lesion_logit`. In MONAI
    1.6 the focal part of ``DiceFocalLoss`` is sigmoid-based per channel even with
    ``softmax=True``; on the 2-channel softmax output that would score each channel as an
    independent binary problem. Feeding the single lesion logit makes Dice and focal terms both
    use the softmax lesion probability. Dice is computed over the batch (``batch=True``) so
    that lesion-free images (empty targets) do not make the Dice term degenerate.

    Args:
        bce_weight, dicefocal_weight, mc_weight: term weights (0 disables a term).
        mc_margin: MCLoss margin.
        focal_gamma: focal exponent.
        dice_reduction: ``batch`` (``DiceFocalLoss(batch=True)``) or ``lesion_images``: MONAI's
            ``DiceLoss`` per image, averaged over the images whose mask is not empty, plus
            ``FocalLoss`` over every pixel (see :class:`~medsad_monai.config.MedSADConfig`).
        fp_weight: weight of the lesion-free-image term (0 = off): on every image of the batch
            without a lesion pixel, the binary cross-entropy of its ``fp_topk`` most lesion-like
            pixels against "background" (:func:`lesion_free_penalty`).
        fp_topk: the fraction of pixels of a lesion-free image that term looks at.
    """

    def __init__(
        self,
        bce_weight: float = 1.0,
        dicefocal_weight: float = 1.0,
        mc_weight: float = 1.0,
        mc_margin: float = 0.4,
        focal_gamma: float = 2.0,
        dice_reduction: str = "batch",
        fp_weight: float = 0.0,
        fp_topk: float = 0.01,
    ) -> None:
        super().__init__()
        if fp_weight < 0 or not 0.0 < fp_topk <= 1.0:
            raise ValueError(f"fp_weight must be >= 0 and fp_topk in (0, 1], got {fp_weight}, {fp_topk}")
        self.fp_weight, self.fp_topk = float(fp_weight), float(fp_topk)
        for name, value in (
            ("bce_weight", bce_weight),
            ("dicefocal_weight", dicefocal_weight),
            ("mc_weight", mc_weight),
        ):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        self.weights = {"bce": bce_weight, "dicefocal": dicefocal_weight, "mc": mc_weight}
        if not any(self.weights.values()):
            raise ValueError("bce_weight, dicefocal_weight and mc_weight are all 0: nothing to train")
        if dice_reduction not in ("batch", "lesion_images"):
            raise ValueError(f"dice_reduction must be batch or lesion_images, got {dice_reduction!r}")
        self.dice_reduction = dice_reduction
        self.dicefocal = DiceFocalLoss(sigmoid=True, batch=True, gamma=focal_gamma)
        self.image_dice = DiceLoss(sigmoid=True, batch=False, reduction="none")
        self.focal = FocalLoss(gamma=focal_gamma)
        self.mc = MCLoss(margin=mc_margin)

    @classmethod
    def from_config(cls, config) -> MedSADLoss:
        """Build from a :class:`MedSADConfig` (MCLoss only when ``config.mc_loss``)."""
        return cls(
            bce_weight=config.bce_weight,
            dicefocal_weight=config.dicefocal_weight,
            mc_weight=config.mc_weight if config.mc_loss else 0.0,
            mc_margin=config.mc_margin,
            dice_reduction=config.dice_reduction,
            fp_weight=config.fp_weight,
            fp_topk=config.fp_topk,
        )

    def forward(
        self, outputs: dict[str, torch.Tensor], masks: torch.Tensor, labels: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Args:
            outputs: the model's output dict (``image_logits``, ``cos``, ``mask_logits``).
            masks: binary lesion masks (B, 1, H, W) or (B, H, W).
            labels: image labels (B,), 1 = abnormal.

        Returns:
            dict with ``loss`` (weighted total) and the unweighted ``bce``, ``dicefocal``, ``mc``
            and ``fp`` (0 when ``fp_weight`` is 0).
        """
        if masks.ndim == 3:
            masks = masks[:, None]
        logits = outputs["mask_logits"]
        if masks.shape[0] != logits.shape[0] or masks.shape[-2:] != logits.shape[-2:]:
            raise ValueError(f"masks {tuple(masks.shape)} do not match mask logits {tuple(logits.shape)}")
        labels = labels.reshape(-1).to(logits.dtype)
        image_logits = outputs["image_logits"]
        parts = {
            "bce": F.binary_cross_entropy_with_logits(image_logits[:, 1] - image_logits[:, 0], labels),
            "dicefocal": self._mask_term(lesion_logit(logits), masks.to(logits.dtype)),
            "mc": self.mc(outputs["cos"], labels),
        }
        # a switched-off term stays out of the sum: 0 * inf would make the loss NaN (the UNet
        # baseline's image logit is infinite once its score saturates, and its BCE weight is 0)
        parts["loss"] = sum(self.weights[k] * parts[k] for k in ("bce", "dicefocal", "mc") if self.weights[k] != 0)
        parts["fp"] = (
            lesion_free_penalty(lesion_logit(logits), masks, self.fp_topk)
            if self.fp_weight > 0
            else logits.new_zeros(())
        )
        if self.fp_weight > 0:
            parts["loss"] = parts["loss"] + self.fp_weight * parts["fp"]
        return parts

    def _mask_term(self, logit: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Dice + focal on the lesion logit (B, 1, H, W), reduced as ``dice_reduction`` says."""
        if self.dice_reduction == "batch":
            return self.dicefocal(logit, masks)
        has_lesion = masks.flatten(1).amax(dim=1) > 0
        focal = self.focal(logit, masks)
        if not has_lesion.any():
            return focal
        dice = self.image_dice(logit[has_lesion], masks[has_lesion]).flatten()
        return dice.mean() + focal
