"""Specifications of the one metrics module (medsad_monai.engine.metrics)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from monai.metrics import compute_roc_auc

from medsad_monai.engine.metrics import (
    MetricAccumulator,
    auroc_from_histograms,
    dice_score,
    lesion_detection,
    lesion_f1,
    volume_metrics,
)


def _tiny_set():
    """3 images 4×4: two abnormal with hand-countable overlaps, one normal with 1 false positive."""
    mask = np.zeros((3, 4, 4), dtype=np.uint8)
    prob = np.zeros((3, 4, 4), dtype=np.float32)
    mask[0, 0, 0:4] = 1  # gt 4 px
    prob[0, 0, 0:2] = 0.9  # pred 2 px, both hits -> Dice 2*2/(2+4) = 2/3
    mask[1, 1:3, 1:3] = 1  # gt 4 px
    prob[1, 1:3, 1:3] = 0.8  # pred exactly the gt -> Dice 1
    prob[2, 3, 3] = 0.7  # normal image, 1 false-positive pixel
    score = np.array([0.9, 0.4, 0.2])
    label = np.array([1, 1, 0])
    return prob, mask, score, label


def test_dice_is_the_mean_over_abnormal_images_only_and_global_dice_pools_all_pixels():
    acc = MetricAccumulator()
    acc.update(*_tiny_set())
    m = acc.compute()
    assert m["dice"] == pytest.approx((2 / 3 + 1.0) / 2)
    # pooled: intersection 2+4 = 6, predicted 2+4+1 = 7, gt 4+4 = 8 -> 12/15
    assert m["dice_global"] == pytest.approx(12 / 15)
    assert m["n_abnormal_with_mask"] == 2
    assert (m["n_pixels"], m["n_lesion_pixels"]) == (48, 8)


def test_dice_score_conventions_for_empty_masks():
    assert dice_score(np.zeros((3, 3)), np.zeros((3, 3))) == 1.0
    assert dice_score(np.eye(3), np.zeros((3, 3))) == 0.0
    assert dice_score(np.array([1, 1, 0, 0]), np.array([1, 0, 0, 0])) == pytest.approx(2 / 3)


def test_abnormal_images_with_empty_masks_are_left_out_of_dice_and_counted():
    acc = MetricAccumulator()
    prob, mask, score, label = _tiny_set()
    acc.update(prob, mask, score, label)
    acc.update(np.full((4, 4), 0.9), np.zeros((4, 4)), 0.8, 1)  # abnormal, no mask
    m = acc.compute()
    assert m["dice"] == pytest.approx((2 / 3 + 1.0) / 2)
    assert m["n_abnormal_without_mask"] == 1


def test_accuracy_sensitivity_specificity_and_majority_baseline_on_a_known_set():
    # 8 images: 2 abnormal, 6 normal. Predictions (score >= 0.5): TP 1, FN 1, TN 5, FP 1.
    score = np.array([0.9, 0.1, 0.6, 0.2, 0.2, 0.2, 0.2, 0.2])
    label = np.array([1, 1, 0, 0, 0, 0, 0, 0])
    acc = MetricAccumulator()
    acc.update(np.zeros((8, 2, 2)), np.zeros((8, 2, 2)), score, label)
    m = acc.compute()
    assert m["accuracy"] == pytest.approx(6 / 8)
    assert m["sensitivity"] == pytest.approx(1 / 2)
    assert m["specificity"] == pytest.approx(5 / 6)
    assert m["balanced_accuracy"] == pytest.approx((1 / 2 + 5 / 6) / 2)
    assert m["baseline_accuracy"] == pytest.approx(6 / 8)
    assert m["baseline_prediction"] == "normal"
    assert (m["n_images"], m["n_abnormal"], m["n_normal"]) == (8, 2, 6)


def test_image_auroc_is_one_for_a_perfect_ranking_and_zero_for_an_inverted_one():
    label = np.array([0, 0, 1, 1])
    z = np.zeros((4, 2, 2))
    perfect, inverted = MetricAccumulator(), MetricAccumulator()
    perfect.update(z, z, np.array([0.1, 0.2, 0.8, 0.9]), label)
    inverted.update(z, z, np.array([0.9, 0.8, 0.2, 0.1]), label)
    assert perfect.compute()["image_auroc"] == pytest.approx(1.0)
    assert inverted.compute()["image_auroc"] == pytest.approx(0.0)


def test_one_class_gives_none_with_a_reason_never_zero_or_a_crash():
    acc = MetricAccumulator()
    z = np.zeros((12, 3, 3))
    acc.update(z, z, np.full(12, 0.3), np.zeros(12))
    m = acc.compute()
    for key in ("image_auroc", "pixel_auroc", "dice", "dice_global", "sensitivity", "balanced_accuracy"):
        assert m[key] is None, key
        assert m["reasons"][key], key
    assert m["reasons"]["image_auroc"] == "only one class (all normal) among 12 images"
    assert m["accuracy"] == 1.0 and m["baseline_accuracy"] == 1.0
    assert all(row["dice"] is None for row in m["threshold_sweep"])


def test_compute_with_no_images_is_all_none_with_reasons():
    m = MetricAccumulator().compute()
    assert m["n_images"] == 0
    assert m["accuracy"] is None and "no images" in m["reasons"]["accuracy"]
    json.dumps(m, allow_nan=False)


def _random_set(seed: int = 0, n: int = 20, size: int = 64):
    rng = np.random.default_rng(seed)
    mask = np.zeros((n, size, size), dtype=np.uint8)
    for i in range(n // 2):  # half abnormal with a random square lesion
        s = int(rng.integers(4, min(16, size // 2)))
        y, x = rng.integers(0, size - s, 2).tolist()
        mask[i, y : y + s, x : x + s] = 1
    prob = np.clip(0.35 * mask + rng.beta(2, 5, size=mask.shape), 0, 1).astype(np.float32)
    label = (mask.reshape(n, -1).max(axis=1) > 0).astype(int)
    score = np.clip(0.3 * label + rng.random(n) * 0.7, 0, 1)
    return prob, mask, score, label


def test_streamed_pixel_auroc_matches_the_exact_monai_value_within_1e_3():
    prob, mask, score, label = _random_set()
    acc = MetricAccumulator(pixel_bins=1000)
    acc.update(prob, mask, score, label)
    m = acc.compute()
    exact = float(compute_roc_auc(torch.from_numpy(prob.ravel()), torch.from_numpy(mask.ravel().astype(np.int64))))
    assert 0.6 < exact < 0.99  # a non-trivial case
    assert m["pixel_auroc"] == pytest.approx(exact, abs=1e-3)
    assert abs(m["pixel_auroc"] - exact) <= m["pixel_auroc_error_bound"] + 1e-12


def test_several_updates_give_the_same_metrics_as_one_update():
    prob, mask, score, label = _random_set(seed=1)
    one, many = MetricAccumulator(), MetricAccumulator()
    one.update(prob, mask, score, label)
    for sl in (slice(0, 3), slice(3, 11), slice(11, 20)):
        many.update(torch.from_numpy(prob[sl]), torch.from_numpy(mask[sl]), score[sl], label[sl])
    a, b = one.compute(), many.compute()
    assert a.keys() == b.keys()
    for key in a:
        if key == "threshold_sweep":
            for row_a, row_b in zip(a[key], b[key], strict=True):
                assert row_b == pytest.approx(row_a, abs=1e-6), row_a
        elif isinstance(a[key], float):
            assert b[key] == pytest.approx(a[key], abs=1e-6), key  # MONAI's Dice is float32 inside
        else:
            assert b[key] == a[key], key


def test_threshold_sweep_dice_rises_until_the_lesion_level_and_accuracy_falls_for_abnormal_images():
    # The lesion is exactly where prob >= 0.7: lower thresholds over-segment a ramp.
    ramp = np.linspace(0.0, 0.99, 100, dtype=np.float32).reshape(10, 10)
    prob = np.stack([ramp, ramp])
    mask = (prob >= 0.7).astype(np.uint8)
    score = np.array([0.35, 0.65])  # both abnormal
    acc = MetricAccumulator(sweep=(0.3, 0.4, 0.5, 0.6, 0.7))
    acc.update(prob, mask, score, np.array([1, 1]))
    sweep = acc.compute()["threshold_sweep"]
    assert [row["threshold"] for row in sweep] == [0.3, 0.4, 0.5, 0.6, 0.7]
    dice = [row["dice"] for row in sweep]
    assert all(a < b for a, b in zip(dice, dice[1:])) and dice[-1] == pytest.approx(1.0)
    assert [row["accuracy"] for row in sweep] == [1.0, 0.5, 0.5, 0.5, 0.0]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda p, m, s, y: (p[:, :3], m, s, y), "mask shape"),
        (lambda p, m, s, y: (np.where(p > 0.5, np.nan, p), m, s, y), "prob contains"),
        (lambda p, m, s, y: (p * 2 + 0.1, m, s, y), "prob must lie in [0, 1]"),
        (lambda p, m, s, y: (p, m, np.array([0.5, np.nan, 0.1]), y), "score contains"),
        (lambda p, m, s, y: (p, m, np.array([0.5, 1.5, 0.1]), y), "score must lie in [0, 1]"),
        (lambda p, m, s, y: (p, m, s[:2], y), "score must have shape (3,)"),
        (lambda p, m, s, y: (p, m * 2, s, y), "mask must contain only 0 and 1"),
        (lambda p, m, s, y: (p, m, s, np.array([1, 1, 2])), "label must contain only 0 and 1"),
        (lambda p, m, s, y: (p, m, s, np.array([1, 0, 0])), "label 0 (normal) but lesion"),
    ],
)
def test_bad_inputs_raise_value_error_naming_what_is_wrong(change, message):
    acc = MetricAccumulator()
    with pytest.raises(
        ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[").replace("]", r"\]")
    ):
        acc.update(*change(*_tiny_set()))


def test_bad_constructor_arguments_raise_value_error():
    with pytest.raises(ValueError, match="thresholds"):
        MetricAccumulator(threshold=1.5)
    with pytest.raises(ValueError, match="pixel_bins"):
        MetricAccumulator(pixel_bins=1)


def test_compute_returns_plain_json_serialisable_python_types():
    acc = MetricAccumulator()
    prob, mask, score, label = _random_set(seed=2, n=6, size=16)
    acc.update(torch.from_numpy(prob), torch.from_numpy(mask), torch.from_numpy(score), torch.from_numpy(label))
    m = acc.compute()
    json.dumps(m, allow_nan=False)

    def walk(x):
        assert x is None or type(x) in (bool, int, float, str, list, dict), type(x)
        if isinstance(x, dict):
            [walk(v) for v in x.values()]
        elif isinstance(x, list):
            [walk(v) for v in x]

    walk(m)


def test_histogram_auroc_counts_ties_within_a_bin_as_half():
    auroc, bound = auroc_from_histograms(np.array([0, 1]), np.array([0, 1]))
    assert auroc == 0.5 and bound == 0.5
    assert auroc_from_histograms(np.array([0, 3]), np.array([2, 0])) == (1.0, 0.0)
    assert auroc_from_histograms(np.array([0, 0]), np.array([2, 0]))[0] is None


def test_lesion_detection_counts_detected_missed_and_false_positive_lesions():
    truth = np.zeros((12, 12, 4), np.uint8)
    truth[1:3, 1:3, 1] = 1  # lesion 1: found by a prediction touching one voxel of it
    truth[8:10, 8:10, 2] = 1  # lesion 2: missed
    pred = np.zeros_like(truth)
    pred[2:5, 2:5, 1] = 1  # overlaps lesion 1 (and spills over: still one detection, no FP)
    pred[6, 0, 0] = 1  # a lone false-positive voxel
    pred[0, 11, 3] = 1  # another, not face-connected to anything
    pred[1, 11, 3] = 1  # face-connected to the previous one: the same false-positive lesion
    assert lesion_detection(pred, truth) == {"lesions": 2, "lesions_detected": 1, "fp_lesions": 2}
    assert lesion_detection(np.zeros_like(truth), truth) == {"lesions": 2, "lesions_detected": 0, "fp_lesions": 0}
    diagonal = np.zeros((3, 3, 3), np.uint8)
    diagonal[0, 0, 0] = diagonal[1, 1, 1] = 1  # corners only: two lesions under face connectivity
    assert lesion_detection(diagonal, np.zeros_like(diagonal))["fp_lesions"] == 2
    with pytest.raises(ValueError, match="shape"):
        lesion_detection(pred[..., :2], truth)
    with pytest.raises(ValueError, match="0 and 1"):
        lesion_detection(pred * 2, truth)


def test_volume_metrics_pool_lesion_counts_into_recall_and_f1():
    records = [
        {
            "name": "a",
            "score": 0.9,
            "abnormal": True,
            "true_voxels": 50,
            "predicted_voxels": 40,
            "lesions": 3,
            "lesions_detected": 2,
            "fp_lesions": 1,
        },
        {
            "name": "b",
            "score": 0.2,
            "abnormal": False,
            "true_voxels": 0,
            "predicted_voxels": 6,
            "lesions": 0,
            "lesions_detected": 0,
            "fp_lesions": 2,
        },
    ]
    out = volume_metrics(records, 0.5)
    assert out["n_lesions"] == 3 and out["lesions_detected"] == 2 and out["fp_lesions"] == 3
    assert out["lesion_recall"] == pytest.approx(2 / 3)
    assert out["lesion_f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 3))
    assert out["fp_lesions_per_lesion_free_volume"] == 2.0
    assert lesion_f1(0, 0, 0) is None
    nothing = volume_metrics([{**records[1], "fp_lesions": 0}], 0.5)
    assert nothing["lesion_recall"] is None and nothing["lesion_f1"] is None
    assert "lesion_f1" in nothing["volume_reasons"] and "lesion_recall" in nothing["volume_reasons"]
    older = volume_metrics([{k: v for k, v in r.items() if "lesion" not in k} for r in records], 0.5)
    assert "lesion_f1" not in older  # records without lesion counts keep the other figures
