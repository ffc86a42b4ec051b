"""MCLoss against hand-computed values; MedSADLoss composition."""

from __future__ import annotations

import math

import pytest
import torch
from monai.losses import DiceLoss, FocalLoss

from medsad_monai.losses import MCLoss, MedSADLoss, lesion_logit


def test_mcloss_is_zero_inside_the_margin_for_a_normal_image():
    loss = MCLoss(margin=0.4, reduction="none")
    assert loss(torch.tensor([[0.9, 0.4]]), torch.tensor([0])).item() == pytest.approx(0.0)


def test_mcloss_is_linear_outside_the_margin_for_a_normal_image():
    loss = MCLoss(margin=0.4, reduction="none")
    # c_n - c_a = 0.1 -> 0.4 - 0.1 = 0.3 ; c_n - c_a = -0.2 -> 0.6
    values = loss(torch.tensor([[0.5, 0.4], [0.3, 0.5]]), torch.tensor([0, 0]))
    assert torch.allclose(values, torch.tensor([0.3, 0.6]))


def test_mcloss_is_mirrored_for_an_abnormal_image():
    loss = MCLoss(margin=0.4, reduction="none")
    cos = torch.tensor([[0.5, 0.4], [0.4, 0.9], [0.3, 0.5]])
    values = loss(cos, torch.tensor([1, 1, 1]))
    # c_a - c_n = -0.1 -> 0.5 ; 0.5 -> 0 ; 0.2 -> 0.2
    assert torch.allclose(values, torch.tensor([0.5, 0.0, 0.2]))
    assert loss(cos.flip(1), torch.tensor([0, 0, 0])).allclose(values)


def test_mcloss_mean_and_bad_shapes():
    loss = MCLoss(margin=0.4)
    assert loss(torch.tensor([[0.5, 0.4], [0.3, 0.5]]), torch.tensor([0, 0])).item() == pytest.approx(0.45)
    with pytest.raises(ValueError, match="shape"):
        loss(torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError, match="margin"):
        MCLoss(margin=-1)


def test_mask_term_uses_the_softmax_lesion_probability_for_dice_and_focal():
    torch.manual_seed(0)
    logits = torch.randn(2, 2, 8, 8)
    target = (torch.rand(2, 1, 8, 8) > 0.7).float()
    loss = MedSADLoss(bce_weight=0, mc_weight=0)
    outputs = {"mask_logits": logits, "image_logits": torch.zeros(2, 2), "cos": torch.zeros(2, 2)}
    z = lesion_logit(logits)
    assert torch.allclose(torch.sigmoid(z), logits.softmax(1)[:, 1:2], atol=1e-6)
    expected = DiceLoss(sigmoid=True, batch=True)(z, target) + FocalLoss(gamma=2.0)(z, target)
    assert loss(outputs, target, torch.ones(2))["dicefocal"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_total_is_the_weighted_sum_and_bce_matches_score():
    torch.manual_seed(0)
    image_logits = torch.randn(4, 2)
    labels = torch.tensor([1.0, 0.0, 1.0, 0.0])
    outputs = {
        "mask_logits": torch.randn(4, 2, 8, 8),
        "image_logits": image_logits,
        "cos": torch.rand(4, 2),
    }
    masks = torch.zeros(4, 1, 8, 8)
    parts = MedSADLoss(bce_weight=2.0, dicefocal_weight=0.5, mc_weight=3.0)(outputs, masks, labels)
    score = image_logits.softmax(1)[:, 1]
    assert parts["bce"].item() == pytest.approx(
        torch.nn.functional.binary_cross_entropy(score, labels).item(), rel=1e-5
    )
    expected = 2.0 * parts["bce"] + 0.5 * parts["dicefocal"] + 3.0 * parts["mc"]
    assert parts["loss"].item() == pytest.approx(expected.item())


def test_lesion_image_dice_averages_per_image_dice_over_images_with_a_lesion():
    torch.manual_seed(0)
    logits = torch.randn(4, 2, 16, 16)
    masks = torch.zeros(4, 1, 16, 16)
    masks[0, 0, 2:12, 2:12] = 1  # a large lesion
    masks[2, 0, 8:10, 8:10] = 1  # a small one; images 1 and 3 are normal
    outputs = {"mask_logits": logits, "image_logits": torch.zeros(4, 2), "cos": torch.zeros(4, 2)}
    z = lesion_logit(logits)
    dice = DiceLoss(sigmoid=True)
    expected = (dice(z[0:1], masks[0:1]) + dice(z[2:3], masks[2:3])) / 2 + FocalLoss(gamma=2.0)(z, masks)
    loss = MedSADLoss(bce_weight=0, mc_weight=0, dice_reduction="lesion_images")
    assert loss(outputs, masks, torch.ones(4))["dicefocal"].item() == pytest.approx(expected.item(), rel=1e-5)
    # the small lesion weighs as much as the large one: on a good prediction, missing the small
    # lesion costs half the Dice term; with one Dice over the batch, a few per cent (+ focal)
    good = torch.stack([torch.zeros_like(masks[:, 0]), 10.0 * (2 * masks[:, 0] - 1)], dim=1)
    missed = good.clone()
    missed[2, 1, 8:10, 8:10] = -10.0
    batch = MedSADLoss(bce_weight=0, mc_weight=0)

    def cost(fn):
        return (
            fn({**outputs, "mask_logits": missed}, masks, torch.ones(4))["dicefocal"]
            - fn({**outputs, "mask_logits": good}, masks, torch.ones(4))["dicefocal"]
        ).item()

    assert cost(loss) > 0.45
    assert cost(batch) < 0.1
    # a batch without lesions: the focal term alone, still finite
    normal = loss(outputs, torch.zeros_like(masks), torch.zeros(4))["dicefocal"]
    assert normal.item() == pytest.approx(FocalLoss(gamma=2.0)(z, torch.zeros_like(masks)).item(), rel=1e-5)
    with pytest.raises(ValueError, match="dice_reduction"):
        MedSADLoss(dice_reduction="image")


def test_config_dice_reduction_reaches_the_loss_and_is_validated():
    from medsad_monai.config import MedSADConfig
    from medsad_monai.configs import load_preset

    assert MedSADLoss.from_config(load_preset("tiny", dice_reduction="lesion_images")).dice_reduction == "lesion_images"
    assert MedSADLoss.from_config(load_preset("full", clip_pretrained="none")).dice_reduction == "batch"
    with pytest.raises(ValueError, match="dice_reduction"):
        MedSADConfig(dice_reduction="pixels")


def test_lesion_free_penalty_sees_a_small_false_positive_blob_that_focal_averages_away():
    from monai.losses import FocalLoss

    from medsad_monai.losses.medsad_loss import lesion_free_penalty

    logit = torch.full((2, 1, 64, 64), -6.0)
    logit[0, 0, 10:16, 10:16] = 3.0  # a 36-pixel false positive on a lesion-free image
    masks = torch.zeros(2, 1, 64, 64)
    masks[1, 0, 30:40, 30:40] = 1.0
    logit[1, 0, 30:40, 30:40] = 3.0  # image 1 is right and has a lesion: not looked at
    penalty = lesion_free_penalty(logit, masks, topk=0.01)
    focal = FocalLoss(gamma=2.0)(logit, masks)
    assert penalty > 2.0 and focal < 0.05
    clean = logit.clone()
    clean[0, 0, 10:16, 10:16] = -6.0
    assert lesion_free_penalty(clean, masks) < 0.01
    assert lesion_free_penalty(logit, torch.ones_like(masks)) == 0  # no lesion-free image
    logit.requires_grad_(True)
    lesion_free_penalty(logit, masks, topk=0.01).backward()
    assert logit.grad[1].abs().sum() == 0 and logit.grad[0, 0, 10:16, 10:16].abs().min() > 0


def test_fp_weight_adds_the_term_to_the_total():
    from medsad_monai.losses import MedSADLoss

    out = {"mask_logits": torch.randn(3, 2, 32, 32), "image_logits": torch.randn(3, 2), "cos": torch.randn(3, 2)}
    masks = torch.zeros(3, 1, 32, 32)
    masks[0, 0, 4:9, 4:9] = 1
    labels = torch.tensor([1.0, 0.0, 0.0])
    off = MedSADLoss(fp_weight=0.0)(out, masks, labels)
    on = MedSADLoss(fp_weight=2.0)(out, masks, labels)
    assert off["fp"] == 0 and on["fp"] > 0
    assert on["loss"] == pytest.approx(float(off["loss"] + 2.0 * on["fp"]), rel=1e-5)
    with pytest.raises(ValueError, match="fp_weight"):
        MedSADLoss(fp_weight=-1.0)


def test_a_switched_off_term_cannot_poison_the_total():
    """A term with weight 0 is left out of the sum (0 x inf = NaN); all weights 0 is refused."""
    loss = MedSADLoss(bce_weight=0.0, mc_weight=0.0)
    outputs = {
        "mask_logits": torch.randn(2, 2, 8, 8),
        "image_logits": torch.tensor([[0.0, math.inf], [0.0, math.inf]]),
        "cos": torch.tensor([[0.1, 0.9], [0.2, 0.8]]),
    }
    parts = loss(outputs, torch.zeros(2, 1, 8, 8), torch.tensor([1.0, 0.0]))
    assert not torch.isfinite(parts["bce"]) and torch.isfinite(parts["loss"])
    assert torch.allclose(parts["loss"], parts["dicefocal"])
    with pytest.raises(ValueError, match="all 0"):
        MedSADLoss(bce_weight=0.0, dicefocal_weight=0.0, mc_weight=0.0)
