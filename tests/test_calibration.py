"""The operating point: fitted on validation data, stored in the checkpoint, used everywhere."""

from __future__ import annotations

import dataclasses
import json
import logging

import numpy as np
import pytest
from scipy import ndimage

from medsad_monai.checkpoint import operating_point_of, read_checkpoint, write_calibration
from medsad_monai.data.volumes import load_volume
from medsad_monai.engine.calibration import (
    FEW_VALIDATION_LESIONS,
    WEAK_VALIDATION_DICE,
    CaseOutput,
    calibration_warnings,
    fit_operating_point,
)
from medsad_monai.engine.decision import (
    OperatingPoint,
    lesion_mask,
    lesion_table,
    low_confidence_mask,
    slice_scores,
)
from medsad_monai.engine.inference import Predictor, VolumeResult
from medsad_monai.engine.metrics import best_threshold, dice_score


def _case(name: str, rng: np.random.Generator, lesion: bool, speckles: int) -> CaseOutput:
    """A 3-D case: a true lesion (prob ~0.8) on a few slices and small false-positive speckles
    (prob 0.9, 2 voxels each) on others, as a model with false positives would give."""
    shape = (24, 24, 12)
    prob = (0.2 * rng.random(shape)).astype(np.float32)
    truth = np.zeros(shape, bool)
    if lesion:
        truth[8:14, 9:15, 4:8] = True
        prob[truth] = 0.75 + 0.1 * rng.random(int(truth.sum()))
    for _ in range(speckles):
        x, y, z = rng.integers(2, 20), rng.integers(2, 20), rng.choice([0, 1, 10, 11])
        prob[x : x + 2, y, z] = 0.9
    scores = prob.reshape(-1, shape[2]).max(axis=0)  # a saturated "model" score: every slice has a peak
    return CaseOutput(name, prob, truth, scores, np.zeros(shape[2], bool), 2)


@pytest.fixture(scope="module")
def cases():
    rng = np.random.default_rng(0)
    return [_case(f"v{i}", rng, lesion=i < 3, speckles=4) for i in range(5)]


def test_operating_point_refuses_bad_values_by_name():
    with pytest.raises(ValueError, match="map_threshold 1.5"):
        OperatingPoint(map_threshold=1.5)
    with pytest.raises(ValueError, match="min_lesion_voxels"):
        OperatingPoint(min_lesion_voxels=-1)
    with pytest.raises(ValueError, match="slice_score 'nope'"):
        OperatingPoint(slice_score="nope")
    with pytest.raises(ValueError, match="unknown calibration key"):
        OperatingPoint.from_dict({"map_treshold": 0.4})
    op = OperatingPoint(map_threshold=0.6, min_lesion_voxels=8, source="validation")
    assert OperatingPoint.from_dict(json.loads(json.dumps(op.to_dict()))) == op
    assert op.with_overrides(map_threshold=0.3).source == "validation+override"
    assert op.with_overrides(map_threshold=None) is op


def test_a_minimum_lesion_size_in_mm3_overrides_the_calibrated_one():
    op = OperatingPoint(map_threshold=0.6, min_lesion_voxels=64, voxel_mm3=8.0, source="validation")
    # lesions under 100 mm³ go: 13 voxels of 8 mm³ (104 mm³) is the smallest that stays
    smaller = op.with_overrides(min_lesion_mm3=100)
    assert smaller.min_lesion_voxels == 13 and smaller.min_lesion_mm3 == 104.0
    assert smaller.source == "validation+override" and smaller.map_threshold == 0.6
    assert op.with_overrides(min_lesion_mm3=96).min_lesion_voxels == 12  # exactly 12 voxels
    assert op.with_overrides(min_lesion_mm3=0.5).min_lesion_voxels == 1  # any lesion of one voxel stays
    assert op.with_overrides(min_lesion_mm3=0).min_lesion_voxels == 0
    assert (
        op.with_overrides(min_lesion_mm3=512) is not op and op.with_overrides(min_lesion_mm3=512).source == "validation"
    )
    assert op.with_overrides(min_lesion_mm3=100).min_voxels_at(1.0) == 104  # a 1 mm scan: 104 of its voxels
    prob = np.zeros((12, 12, 4), np.float32)
    prob[1:4, 1:4, 1:3] = 0.9  # 18 voxels: 144 mm³ at 8 mm³
    assert lesion_mask(prob, op).sum() == 0 and lesion_mask(prob, smaller).sum() == 18
    for bad in (-1, float("nan"), "big", True):
        with pytest.raises(ValueError, match="min_lesion_mm3"):
            op.with_overrides(min_lesion_mm3=bad)
    voxels_only = OperatingPoint(min_lesion_voxels=8)  # a 2-D model or an old checkpoint: no voxel size
    assert voxels_only.with_overrides(min_lesion_mm3=0).min_lesion_voxels == 0
    with pytest.raises(ValueError, match="no voxel size"):
        voxels_only.with_overrides(min_lesion_mm3=50)


def test_lesion_mask_removes_components_below_the_minimum_size():
    prob = np.zeros((10, 10, 6), np.float32)
    prob[1:4, 1:4, 1:3] = 0.9  # 18 voxels
    prob[7, 7, 4] = 0.8  # 1 voxel
    prob[7:9, 1, 1] = 0.7  # 2 voxels
    assert lesion_mask(prob, OperatingPoint()).sum() == 21
    kept = lesion_mask(prob, OperatingPoint(min_lesion_voxels=3))
    assert kept.sum() == 18 and kept[1:4, 1:4, 1:3].all()
    assert lesion_mask(prob, OperatingPoint(map_threshold=0.75, min_lesion_voxels=2)).sum() == 18
    # a lesion of exactly the minimum size stays, as calibration counts it (scikit-image 0.26 made
    # MONAI's RemoveSmallObjects(min_size=2) drop 2-voxel objects too)
    assert lesion_mask(prob, OperatingPoint(min_lesion_voxels=2)).sum() == 20
    assert lesion_mask(prob, OperatingPoint(min_lesion_voxels=18)).sum() == 18
    assert lesion_mask(prob, OperatingPoint(min_lesion_voxels=19)).sum() == 0


def test_fit_removes_speckles_and_separates_volumes(cases):
    op = fit_operating_point(cases, slice_score="auto")
    assert op.source == "validation" and op.calibrated
    assert op.min_lesion_voxels > 2  # the 2-voxel speckles go
    assert 0.3 <= op.map_threshold < 0.75  # the true lesion stays
    for c in cases:
        mask = lesion_mask(c.probability, op)
        assert (mask.astype(bool) == c.truth).all()
    # the reported pooled Dice is what the product's own post-processing gives
    pooled = dice_score(
        np.concatenate([lesion_mask(c.probability, op).ravel() for c in cases]),
        np.concatenate([c.truth.ravel() for c in cases]),
    )
    assert op.validation["dice_pooled"] == pytest.approx(pooled, abs=1e-4)
    # the saturated model score ranks worse than the post-processed lesion area, so auto picks the latter
    assert op.validation["slice_auroc"]["model"] < op.validation["slice_auroc"]["lesion_area"]
    assert op.slice_score != "model"
    results = [VolumeResult(c.probability, list(c.model_scores), list(c.skipped), 2, op) for c in cases]
    assert [r.volume_abnormal for r in results] == [c.abnormal for c in cases]
    assert max(r.volume_score for r, c in zip(results, cases) if not c.abnormal) < min(
        r.volume_score for r, c in zip(results, cases) if c.abnormal
    )
    assert op.validation["cases"] == [c.name for c in cases]


def test_fit_keeps_the_model_score_when_asked(cases):
    op = fit_operating_point(cases, slice_score="model")
    assert op.slice_score == "model"
    with pytest.raises(ValueError, match="slice_score"):
        fit_operating_point(cases, slice_score="bogus")
    with pytest.raises(ValueError, match="at least one"):
        fit_operating_point([])


def test_one_class_validation_calls_any_remaining_lesion_abnormal():
    rng = np.random.default_rng(1)
    op = fit_operating_point([_case("a", rng, True, 0), _case("b", rng, True, 0)])
    assert "only one class" in op.objective["volume"]
    empty = VolumeResult(np.zeros((8, 8, 4), np.float32), [0.0] * 4, [False] * 4, 2, op)
    assert not empty.volume_abnormal


def test_best_threshold_sits_mid_gap_and_is_undefined_for_one_class():
    t, bal = best_threshold([0.1, 0.2, 0.6, 0.9], [0, 0, 1, 1])
    assert bal == 1.0 and t == pytest.approx(0.4)
    assert best_threshold([0.1, 0.2], [1, 1]) == (None, None)


def test_slice_scores_follow_their_definition():
    prob = np.zeros((6, 6, 3), np.float32)
    prob[2:4, 2:4, 1] = 0.8
    mask = (prob >= 0.5).astype(np.uint8)
    area = slice_scores("lesion_area", prob, mask, [0.9, 0.9, 0.9], [False] * 3, 2)
    assert area[0] == 0 and area[2] == 0 and area[1] == pytest.approx(3.2 / (3.2 + 20))
    assert list(slice_scores("model", prob, mask, [0.1, 0.2, 0.3], [False, True, False], 2)) == [0.1, 0.0, 0.3]


def test_checkpoint_carries_calibration_and_old_ones_fall_back_loudly(tiny_checkpoint, tmp_path, caplog):
    import shutil

    old = tmp_path / "old.pt"
    shutil.copy2(tiny_checkpoint, old)
    with caplog.at_level(logging.WARNING):
        assert operating_point_of(read_checkpoint(old), old) == OperatingPoint()
    assert "uncalibrated 0.5" in caplog.text
    op = OperatingPoint(
        map_threshold=0.65,
        min_lesion_voxels=16,
        slice_score="lesion_area",
        slice_threshold=0.3,
        volume_score="lesion_volume",
        volume_threshold=0.4,
        source="calibrate",
    )
    before = read_checkpoint(old)["state_dict"]
    write_calibration(old, op)
    after = read_checkpoint(old)
    assert operating_point_of(after, old) == op
    assert all((before[k] == after["state_dict"][k]).all() for k in before)  # weights untouched
    predictor = Predictor.from_checkpoint(old, batch_size=2, device="cpu")
    assert predictor.operating_point == op
    overridden = Predictor.from_checkpoint(old, batch_size=2, device="cpu", threshold=0.4)
    assert overridden.threshold == 0.4 and overridden.operating_point.min_lesion_voxels == 16


def test_calibrate_cli_stores_the_block_and_never_uses_test(tiny_checkpoint, tiny_volumes, tmp_path, capsys):
    from medsad_monai.cli import main

    out = tmp_path / "calibrated.pt"
    assert (
        main(
            [
                "calibrate",
                "--ckpt",
                str(tiny_checkpoint),
                "--data",
                str(tiny_volumes),
                "--out",
                str(out),
                "--batch-size",
                "4",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    op = operating_point_of(read_checkpoint(out), out)
    assert op.source == "calibrate"
    assert op.validation["cases"] == [f"case_{i:03d}" for i in range(6)]  # imagesTr only, never imagesTs
    said = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: the operating point: ")]
    assert op.validation["warnings"] and [line.split(": ", 2)[2] for line in said] == op.validation["warnings"]
    # sizes are counted in the validation volumes' own voxels and pixels, read from their files
    spacing = load_volume(tiny_volumes / "imagesTr" / "case_000.nii.gz")[1].spacing
    assert op.voxel_mm3 == pytest.approx(float(np.prod(spacing)))
    assert op.pixel_mm2 == pytest.approx(spacing[0] * spacing[1])
    assert "calibration" not in read_checkpoint(tiny_checkpoint)  # the original is left as it was
    with pytest.raises(SystemExit):
        main(["calibrate", "--ckpt", str(tiny_checkpoint), "--data", str(tiny_volumes), "--split", "test"])


def test_calibrate_leaves_out_the_cases_that_trained_the_model(tiny_checkpoint, tiny_volumes, tmp_path, caplog, capsys):
    """On the folder the model was trained from, ``--split all`` fits on the other cases only (an
    operating point fitted on training volumes is optimistic), says so, and refuses when none is
    left; a folder the checkpoint was not trained from is used whole."""
    import shutil

    import torch

    from medsad_monai.cli import main

    ckpt = tmp_path / "trained.pt"
    payload = read_checkpoint(tiny_checkpoint)
    payload["extra"] = {**payload.get("extra", {}), "train_cases": ["case_000", "case_001", "case_002"]}
    payload["extra"]["train_data"] = str(tiny_volumes.resolve())
    torch.save(payload, ckpt)
    run = ["--batch-size", "4", "--device", "cpu"]
    with caplog.at_level("WARNING"):
        assert (
            main(["calibrate", "--ckpt", str(ckpt), "--data", str(tiny_volumes), "--out", str(tmp_path / "a.pt"), *run])
            == 0
        )
    op = operating_point_of(read_checkpoint(tmp_path / "a.pt"), tmp_path / "a.pt")
    assert op.validation["cases"] == ["case_003", "case_004", "case_005"]
    assert "3 case(s) of" in caplog.text and "trained this model and are left out" in caplog.text

    elsewhere = tmp_path / "copy"
    shutil.copytree(tiny_volumes, elsewhere)  # the same names in another folder: other scans, all used
    assert (
        main(["calibrate", "--ckpt", str(ckpt), "--data", str(elsewhere), "--out", str(tmp_path / "b.pt"), *run]) == 0
    )
    assert len(operating_point_of(read_checkpoint(tmp_path / "b.pt"), tmp_path / "b.pt").validation["cases"]) == 6

    # evaluate says which evaluated cases trained the model (their figures are in-sample)
    for folder, expected in ((tiny_volumes, ["case_000", "case_001", "case_002"]), (elsewhere, [])):
        report = tmp_path / f"report_{folder.name}"
        assert (
            main(["evaluate", "--ckpt", str(ckpt), "--data", str(folder), "--split", "all", "--out", str(report), *run])
            == 0
        )
        assert json.loads((report / "report.json").read_text())["meta"]["trained_on_cases"] == expected

    payload["extra"]["train_cases"] = [f"case_{i:03d}" for i in range(6)]
    torch.save(payload, ckpt)
    capsys.readouterr()
    assert main(["calibrate", "--ckpt", str(ckpt), "--data", str(tiny_volumes), *run]) == 2
    err = capsys.readouterr().err
    assert "outside its test split trained this model (6 case(s))" in err and "--split val" in err
    assert "calibration" not in read_checkpoint(ckpt)  # nothing written


def test_calibrate_refuses_lesion_free_scans_alone_and_says_what_to_do(tiny_checkpoint, tiny_volumes, tmp_path, capsys):
    """Normal scans alone leave every clean threshold equally good: a fit there would be arbitrary."""
    import shutil

    from medsad_monai.cli import main

    normals = tmp_path / "normals"
    for sub in ("imagesTr", "labelsTr"):
        (normals / sub).mkdir(parents=True)
    for name in ("case_002", "case_005"):  # the fixture's lesion-free cases
        for sub in ("imagesTr", "labelsTr"):
            shutil.copy(tiny_volumes / sub / f"{name}.nii.gz", normals / sub)
    ckpt = tmp_path / "model.pt"
    shutil.copy(tiny_checkpoint, ckpt)
    before = ckpt.read_bytes()
    for extra in ([], ["--profile", "site"]):
        assert main(["calibrate", "--ckpt", str(ckpt), "--data", str(normals), "--device", "cpu", *extra]) == 2
        err = capsys.readouterr().err
        assert "none of the 2 validation case(s)" in err and "Traceback" not in err
        assert f"medsad evaluate --ckpt {ckpt} --data {normals} --split all" in err
    assert ckpt.read_bytes() == before  # nothing written


def test_evaluate_reports_slice_and_volume_decisions_at_the_operating_point(tiny_checkpoint, tiny_volumes, tmp_path):
    import shutil

    from medsad_monai.engine.evaluate import evaluate_checkpoint

    ckpt = tmp_path / "calibrated.pt"
    shutil.copy2(tiny_checkpoint, ckpt)
    op = OperatingPoint(
        map_threshold=0.4,
        min_lesion_voxels=4,
        slice_score="lesion_area",
        slice_threshold=0.3,
        volume_score="lesion_volume",
        volume_threshold=0.5,
        source="calibrate",
        validation={"warnings": ["validation holds 1 lesion(s): the minimum lesion size and mean are fitted to few"]},
    )
    write_calibration(ckpt, op)
    metrics = evaluate_checkpoint(ckpt, str(tiny_volumes), tmp_path / "report", split="all", batch_size=4, device="cpu")
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    per_case = report["meta"]["per_case"]
    assert report["meta"]["operating_point"] == op.summary()
    assert sorted(per_case) == [f"case_{i:03d}" for i in range(6)]
    normal = [n for n, c in per_case.items() if not c["abnormal"]]
    assert normal == ["case_002", "case_005"]
    assert metrics["fp_voxels"] == {n: per_case[n]["predicted_voxels"] for n in normal}
    assert metrics["n_volumes"] == 6 and metrics["n_lesion_free_volumes"] == 2
    scores = {n: c["score"] for n, c in per_case.items()}
    assert metrics["volume_ranking_separates"] == (
        max(scores[n] for n in normal) < min(s for n, s in scores.items() if n not in normal)
    )
    assert all(c["volume_abnormal"] == (c["score"] >= 0.5) for c in per_case.values())
    assert metrics["score_threshold"] == 0.3 and metrics["threshold"] == 0.4
    md = (tmp_path / "report" / "report.md").read_text()
    assert "## Volumes" in md and "## Operating point (calibrate)" in md and "case_005" in md
    assert "**Calibration warnings**" in md and "- validation holds 1 lesion(s)" in md


def test_active_learning_uncertainty_is_measured_on_calibrated_scores():
    from medsad_monai.engine.decision import calibrated_probability
    from monai_app.lib.scoring.medsad import uncertainty

    assert calibrated_probability(0.2, 0.2) == 0.5
    assert calibrated_probability(0.0, 0.2) == 0.0 and calibrated_probability(1.0, 0.2) == 1.0
    assert calibrated_probability(0.1, 0.2) < calibrated_probability(0.3, 0.2) < calibrated_probability(0.9, 0.2)
    op = OperatingPoint(slice_threshold=0.2, source="calibrate")
    prob = np.zeros((4, 4, 3), np.float32)
    at_threshold = VolumeResult(prob, [0.2, 0.2, 0.2], [False] * 3, 2, op)
    assert uncertainty(at_threshold) == pytest.approx(1.0)  # every slice undecided at its calibrated threshold
    sure = VolumeResult(prob, [0.0, 1.0, 0.0], [False] * 3, 2, op)
    assert uncertainty(sure) < 0.01


def test_near_ties_go_to_the_mask_based_score_and_clear_wins_to_the_best():
    """Validation AUROCs within AUROC_TIE are a tie, broken towards the score read from the lesion
    mask; a score that ranks clearly better still wins, whatever its place in the preference."""
    from medsad_monai.engine import calibration

    def table(aurocs):
        def fake(cases, kind, op):
            # scores whose AUROC is exactly aurocs[kind]: n positives above a fraction of negatives
            n = 1000
            labels = np.r_[np.ones(n, bool), np.zeros(n, bool)]
            scores = np.r_[np.full(n, 0.5), np.where(np.arange(n) < aurocs[kind] * n, 0.0, 1.0)]
            return scores, labels

        return fake

    kinds = ["model", "peak", "lesion_area"]
    near = {"model": 0.974, "peak": 0.973, "lesion_area": 0.967}  # within 0.01: a tie
    kind, aurocs = calibration._choose(kinds, table(near), [], None)
    assert kind == "lesion_area" and aurocs["model"] == pytest.approx(0.974, abs=1e-3)
    clear = {"model": 0.99, "peak": 0.95, "lesion_area": 0.96}
    assert calibration._choose(kinds, table(clear), [], None)[0] == "model"
    volume = {"lesion_volume": 0.80, "max_slice": 0.805}
    assert calibration._choose(["lesion_volume", "max_slice"], table(volume), [], None)[0] == "lesion_volume"


def test_cross_validated_balanced_accuracy_sees_a_threshold_that_does_not_carry_over():
    """Leave-one-volume-out: a score that separates every volume on its own but sits at another
    level in each (the saturated image score) decides held-out volumes badly; a score at the same
    level everywhere decides them well. Fewer than 3 volumes: None."""
    from medsad_monai.engine.calibration import cross_validated_balanced_accuracy

    rng = np.random.default_rng(0)
    labels = np.r_[np.ones(20, bool), np.zeros(80, bool)]

    def volume(neg: float, pos: float) -> tuple[np.ndarray, np.ndarray]:
        return np.r_[rng.uniform(pos, pos + 0.01, 20), rng.uniform(neg, neg + 0.01, 80)], labels

    steady = [volume(0.2, 0.7) for _ in range(4)]
    shifted = [volume(0.90 + 0.02 * i, 0.91 + 0.02 * i) for i in range(4)]  # separates within each volume
    assert cross_validated_balanced_accuracy(steady) == pytest.approx(1.0)
    assert cross_validated_balanced_accuracy(shifted) < 0.8
    assert cross_validated_balanced_accuracy(steady[:2]) is None
    one_class = [(np.zeros(5), np.zeros(5, bool))] * 3
    assert cross_validated_balanced_accuracy(one_class) is None


def test_the_slice_score_is_chosen_by_how_its_threshold_carries_over(monkeypatch):
    """The cross-validated balanced accuracy decides, ties (CV_TIE) go to the mask-based score,
    and with fewer than 3 validation volumes the AUROC rule decides."""
    from medsad_monai.engine import calibration

    cv = {"model": 0.80, "peak": 0.70, "lesion_area": 0.86}
    aurocs = {"model": 0.95, "peak": 0.90, "lesion_area": 0.90}
    monkeypatch.setattr(calibration, "_slices_per_case", lambda cases, kind, op: kind)
    monkeypatch.setattr(calibration, "cross_validated_balanced_accuracy", lambda per_case: cv[per_case])
    monkeypatch.setattr(calibration, "_choose", lambda c, t, cases, op: (max(c, key=aurocs.get), dict(aurocs)))
    kinds = ["model", "peak", "lesion_area"]
    kind, got_aurocs, got_cv = calibration._choose_slice_score(kinds, [], None)
    assert kind == "lesion_area" and got_cv == cv and got_aurocs == aurocs  # the best AUROC does not decide
    cv.update(model=0.865)  # within CV_TIE of lesion_area: the mask-based score
    assert calibration._choose_slice_score(kinds, [], None)[0] == "lesion_area"
    cv.update(model=0.90)  # a clear win
    assert calibration._choose_slice_score(kinds, [], None)[0] == "model"
    cv.update(model=None, peak=None, lesion_area=None)  # < 3 volumes: the AUROC rule
    assert calibration._choose_slice_score(kinds, [], None)[0] == "model"


def _blob(scale: int) -> np.ndarray:
    """A 3x3x3-voxel lesion (probability 0.9) on a 2 mm grid, or the same lesion on a grid
    ``scale`` times finer (each voxel repeated ``scale`` times along every axis)."""
    prob = np.zeros((12, 12, 12), np.float32)
    prob[4:7, 4:7, 4:7] = 0.9
    return np.repeat(np.repeat(np.repeat(prob, scale, 0), scale, 1), scale, 2)


def test_lesion_sizes_are_physical_across_voxel_sizes():
    """The minimum lesion size and the area/volume scores are fitted in the validation volumes'
    voxels (``voxel_mm3``, ``pixel_mm2``); a scan with 1 mm voxels keeps or drops the same
    lesions in mm³ and scores them the same as a 2 mm scan. Without a physical size (older
    checkpoints, 2-D images) they stay voxel counts."""
    coarse, fine = _blob(1), _blob(2)  # 27 voxels of 8 mm³ = 216 mm³; 216 voxels of 1 mm³
    op = OperatingPoint(min_lesion_voxels=32, voxel_mm3=8.0, pixel_mm2=4.0, slice_score="lesion_area")
    assert op.min_lesion_mm3 == 256.0 and op.min_voxels_at(1.0) == 256 and op.min_voxels_at(8.0) == 32
    assert lesion_mask(coarse, op, 8.0).sum() == 0 and lesion_mask(fine, op, 1.0).sum() == 0  # 216 < 256 mm³
    assert lesion_mask(fine, op).sum() == 216  # in voxel counts the fine scan's lesion would have stayed
    smaller = OperatingPoint(min_lesion_voxels=16, voxel_mm3=8.0, pixel_mm2=4.0, slice_score="lesion_area")
    assert lesion_mask(coarse, smaller, 8.0).sum() == 27 and lesion_mask(fine, smaller, 1.0).sum() == 216
    results = [
        VolumeResult(prob, [0.5] * prob.shape[2], [False] * prob.shape[2], 2, smaller, spacing=(mm, mm, mm))
        for prob, mm in ((coarse, 2.0), (fine, 1.0))
    ]
    assert results[0].volume_score == pytest.approx(results[1].volume_score)
    assert max(results[0].slice_scores) == pytest.approx(max(results[1].slice_scores))
    assert results[1].summary()["min_lesion_voxels_applied"] == 128
    assert results[1].summary()["operating_point"]["min_lesion_mm3"] == 128.0
    old = OperatingPoint.from_dict({k: v for k, v in smaller.to_dict().items() if k not in ("voxel_mm3", "pixel_mm2")})
    assert old.voxel_mm3 is None and old.min_voxels_at(1.0) == 16  # a block written before: voxel counts
    with pytest.raises(ValueError, match="voxel_mm3"):
        OperatingPoint(voxel_mm3=0)


def test_fit_counts_sizes_in_the_validation_voxels():
    """Validation volumes of different voxel sizes: the size filter is applied per volume in mm³,
    counted in the median validation voxel; cases without a spacing (2-D images) keep counts."""
    rng = np.random.default_rng(1)
    cases = [_case(f"v{i}", rng, lesion=i < 3, speckles=4) for i in range(5)]
    op = fit_operating_point(cases)
    assert op.voxel_mm3 is None and op.pixel_mm2 is None and op.min_lesion_mm3 is None
    spaced = [dataclasses.replace(c, spacing=(s, s, 2 * s)) for c, s in zip(cases, (1.0, 1.0, 2.0, 1.0, 2.0))]
    op = fit_operating_point(spaced)
    assert op.voxel_mm3 == 2.0 and op.pixel_mm2 == 1.0
    assert op.min_lesion_voxels > 2  # the 2-voxel speckles still go (they are 2 or 16 mm³ here)
    for c in spaced:
        assert (lesion_mask(c.probability, op, c.voxel_mm3).astype(bool) == c.truth).all(), c.name


def test_a_result_lists_its_lesions_largest_first_in_mm3_with_their_slices():
    """``n_lesions`` and ``lesions`` of a result describe the post-processed mask: a lesion the
    size filter removed is not listed, sizes are in mm³ of the scan's voxels, ``slices`` counts
    along the slice axis as ``slice_scores`` do, and the list is capped (largest first)."""
    prob = np.zeros((20, 20, 10), np.float32)
    prob[2:6, 2:6, 1:5] = 0.8  # 64 voxels on slices 1-4
    prob[3, 3, 2] = 0.97
    prob[12:15, 12:15, 6:9] = 0.7  # 27 voxels on slices 6-8
    prob[18, 1, 9] = 0.9  # one voxel: removed by the size filter
    op = OperatingPoint(map_threshold=0.5, min_lesion_voxels=8, voxel_mm3=8.0)
    result = VolumeResult(prob, [0.5] * 10, [False] * 10, 2, op, spacing=(2.0, 2.0, 2.0))
    summary = result.summary()
    assert summary["n_lesions"] == 2 and summary["lesion_voxels"] == 64 + 27
    big, small = summary["lesions"]
    assert big["voxels"] == 64 and big["volume_mm3"] == 512.0 and big["slices"] == [1, 4]
    assert big["centroid_voxel"] == [3.5, 3.5, 2.5] and big["peak_probability"] == pytest.approx(0.97)
    assert small["voxels"] == 27 and small["volume_mm3"] == 216.0 and small["slices"] == [6, 8]
    assert small["mean_probability"] == pytest.approx(0.7, abs=1e-4)
    assert json.loads(json.dumps(summary))["lesions"] == summary["lesions"]  # plain JSON types
    on_axis0 = lesion_table(result.mask, prob, 0, None)[1][0]
    assert on_axis0["slices"] == [2, 5] and on_axis0["volume_mm3"] is None  # no spacing: voxels only
    n, capped = lesion_table(result.mask, prob, 2, 8.0, limit=1)
    assert n == 2 and [lesion["voxels"] for lesion in capped] == [64]
    assert lesion_table(np.zeros_like(result.mask), prob, 2) == (0, [])


@pytest.mark.parametrize("shape, axis", [((30, 26, 22), 0), ((30, 26, 22), 2), ((40, 36), None)])
def test_lesion_table_agrees_with_scipys_per_label_measurements(shape, axis):
    """The table counts over the lesion voxels only (not a sort of the whole volume); its sizes,
    peaks, means, centroids and slice ranges are scipy.ndimage's per-label ones, for hundreds of
    lesions of every size."""
    rng = np.random.default_rng(3)
    prob = ndimage.uniform_filter(rng.random(shape), 3).astype(np.float32)
    mask = prob > np.quantile(prob, 0.8)
    labels, n = ndimage.label(mask, structure=ndimage.generate_binary_structure(mask.ndim, 1))
    assert n > 50
    count, table = lesion_table(mask, prob, axis, 2.0, limit=n)
    assert count == n and len(table) == n
    index = np.arange(1, n + 1)
    sizes = np.bincount(labels.ravel())[1:]
    peaks = ndimage.maximum(prob.astype(np.float64), labels, index)
    means = ndimage.mean(prob.astype(np.float64), labels, index)
    centroids = ndimage.center_of_mass(mask, labels, index)
    boxes = ndimage.find_objects(labels)
    for k, row in zip(np.argsort(-sizes, kind="stable"), table):
        assert row["voxels"] == sizes[k] and row["volume_mm3"] == pytest.approx(2.0 * sizes[k])
        assert row["peak_probability"] == round(float(peaks[k]), 4)
        assert row["mean_probability"] == pytest.approx(means[k], abs=6e-5)
        assert row["centroid_voxel"] == pytest.approx([float(c) for c in centroids[k]], abs=0.051)
        if axis is None:
            assert "slices" not in row
        else:
            assert row["slices"] == [boxes[k][axis].start, boxes[k][axis].stop - 1]


def _blob_case(name: str, rng: np.random.Generator, lesion: bool) -> CaseOutput:
    """A 3-D case whose false positive is as large as the lesion but less confident as a whole: the
    lesion a 0.95 core in a 0.6 rim (mean ≈ 0.76), the blob a uniform 0.62."""
    shape = (24, 24, 12)
    prob = (0.2 * rng.random(shape)).astype(np.float32)
    truth = np.zeros(shape, bool)
    if lesion:
        truth[2:8, 2:8, 3:7] = True
        prob[truth] = 0.6
        prob[3:7, 3:7, 3:7] = 0.95
    prob[14:20, 14:20, 3:7] = 0.62  # the false blob, 144 voxels like the lesion
    scores = prob.reshape(-1, shape[2]).max(axis=0)
    return CaseOutput(name, prob, truth, scores, np.zeros(shape[2], bool), 2)


def test_a_minimum_lesion_mean_removes_large_unconfident_false_positives():
    """Where false blobs are as large as lesions, size cannot remove them and a threshold that
    does cuts the lesions' rims; the fit finds the mean probability that keeps lesions and drops
    the blobs (the middle of the tied means), and every front-end's mask applies it."""
    rng = np.random.default_rng(1)
    val = [_blob_case(f"v{i}", rng, lesion=i < 3) for i in range(5)]
    op = fit_operating_point(val)
    assert 0.62 < op.min_lesion_mean <= 0.75 and op.min_lesion_mean == pytest.approx(0.7)
    assert op.map_threshold <= 0.6 and op.validation["dice_pooled"] == 1.0
    assert "min_lesion_mean" in op.objective["map"] and op.summary()["min_lesion_mean"] == op.min_lesion_mean
    assert OperatingPoint.from_dict(json.loads(json.dumps(op.to_dict()))) == op
    fresh = _blob_case("new", np.random.default_rng(7), lesion=True)
    assert np.array_equal(lesion_mask(fresh.probability, op) > 0, fresh.truth)  # the blob is gone, the rim kept
    unfiltered = lesion_mask(fresh.probability, op.with_overrides(min_lesion_mean=0.0))
    assert unfiltered.sum() == 2 * fresh.truth.sum()
    # the result says what the filter hid: the blob, with its size, place and mean
    result = VolumeResult(fresh.probability, list(fresh.model_scores), list(fresh.skipped), 2, op, spacing=(1, 1, 2))
    hidden = result.summary()["low_confidence"]
    assert hidden["n_lesions"] == 1 and hidden["min_lesion_mean"] == op.min_lesion_mean
    (blob,) = hidden["lesions"]
    assert (blob["voxels"], blob["volume_mm3"], blob["slices"]) == (144, 288.0, [3, 6])
    assert blob["mean_probability"] == pytest.approx(0.62, abs=1e-4) and blob["mean_probability"] < op.min_lesion_mean
    assert np.array_equal(low_confidence_mask(fresh.probability, op) | (result.mask > 0), unfiltered > 0)
    everything = result.with_operating_point(op.with_overrides(min_lesion_mean=0.0)).summary()["low_confidence"]
    assert everything["n_lesions"] == 0 and everything["lesions"] == []  # no mean filter, nothing hidden
    assert op.with_overrides(min_lesion_mean=0.0).source.endswith("+override")
    # without the mean filter the best the grid can do is worse on the same validation volumes
    plain = fit_operating_point(val, means=(0.0,))
    assert plain.min_lesion_mean == 0.0 and plain.validation["dice_pooled"] < 1.0
    for bad in (1.0, -0.1, "high", True):
        with pytest.raises(ValueError, match="min_lesion_mean"):
            OperatingPoint(min_lesion_mean=bad)
    # a checkpoint's block from before the filter existed loads without it
    old = {k: v for k, v in op.to_dict().items() if k != "min_lesion_mean"}
    assert OperatingPoint.from_dict(old).min_lesion_mean == 0.0


def test_the_lesion_objective_counts_lesions_as_the_metrics_module_does(cases):
    """The grid's pooled Dice and lesion-wise F1 at each (threshold, size, mean) equal what
    ``medsad evaluate`` would report for the masks ``lesion_mask`` makes (metrics.lesion_detection,
    pooled), and the ``dice+lesion_f1`` objective is recorded with the figures it reached."""
    from medsad_monai.engine.calibration import _grids, pooled_dice
    from medsad_monai.engine.metrics import lesion_detection
    from medsad_monai.engine.metrics import lesion_f1 as f1_of

    thresholds, sizes, means = (0.5, 0.8, 0.95), (0, 2, 3, 64), (0.0, 0.8, 0.86)
    dice_grid, f1_grid = _grids(cases, thresholds, sizes, None, means)
    assert dice_grid.shape == f1_grid.shape == (3, 4, 3)
    for i, t in enumerate(thresholds):
        for j, m in enumerate(sizes):
            for k, q in enumerate(means):
                op = OperatingPoint(map_threshold=t, min_lesion_voxels=m, min_lesion_mean=q)
                counts = [lesion_detection(lesion_mask(c.probability, op), c.truth) for c in cases]
                found = sum(n["lesions_detected"] for n in counts)
                missed = sum(n["lesions"] for n in counts) - found
                expected = f1_of(found, missed, sum(n["fp_lesions"] for n in counts))
                assert f1_grid[i, j, k] == pytest.approx(1.0 if expected is None else expected), (t, m, q)
                assert dice_grid[i, j, k] == pytest.approx(pooled_dice(cases, op)), (t, m, q)
    assert f1_grid[0, 0, 0] < 1.0 and f1_grid[0, 2, 0] == 1.0  # 2-voxel speckles are false lesions until size 3
    assert dice_grid[0, 2, 2] == 0.0 < dice_grid[0, 2, 0]  # every lesion's mean is under 0.85: 0.86 loses them all
    op = fit_operating_point(cases, objective="dice+lesion_f1")
    assert op.validation["map_objective"] == "dice+lesion_f1" and op.validation["lesion_f1"] == 1.0
    assert "lesion-wise F1" in op.objective["map"]
    assert fit_operating_point(cases).validation["map_objective"] == "dice"
    with pytest.raises(ValueError, match="objective 'f1'"):
        fit_operating_point(cases, objective="f1")


def test_lesion_free_slices_are_ranked_by_their_peak_but_never_flagged():
    """``lesion_area`` gives a slice without a post-processed lesion a score below every
    threshold, ordered by its peak probability: a ranking (slice AUROC, the scores table) sees
    which slices came close, a decision only the slices that show a lesion."""
    from medsad_monai.engine.decision import NO_LESION_CEILING
    from medsad_monai.engine.metrics import auroc

    prob = np.zeros((16, 16, 4), np.float32)
    prob[4:8, 4:8, 0] = 0.9  # a lesion that stays
    prob[4:8, 4:8, 1] = 0.45  # below the map threshold: no lesion, a high peak
    prob[4:6, 4:6, 2] = 0.2  # a lower peak
    op = OperatingPoint(map_threshold=0.5)
    mask = lesion_mask(prob, op)
    scores = slice_scores("lesion_area", prob, mask, [0.0] * 4, [False] * 4, 2)
    assert scores[0] > 1e-3 and NO_LESION_CEILING > scores[1] > scores[2] > scores[3] == 0.0
    assert slice_scores("lesion_area", prob, mask, [0.0] * 4, [False, True, False, False], 2)[1] == 0.0  # skipped
    labels = np.array([1, 1, 0, 0], bool)  # slice 1 holds a lesion the model barely saw
    assert auroc(scores, labels) == 1.0  # with every lesion-free slice at 0 it would be 0.875
    t, bal = best_threshold(scores, labels)
    assert t >= 1e-4 and ((scores >= t) == [True, False, False, False]).all() and bal == 0.75  # the judged threshold


def test_best_threshold_judges_the_threshold_it_returns():
    """Candidates are clipped into (0, 1) before they are judged, so a threshold between tiny
    scores is never reported with an accuracy it does not have."""
    scores, labels = [0.0, 1e-5, 2e-5, 0.5], [0, 0, 1, 1]
    t, bal = best_threshold(scores, labels)
    s, y = np.array(scores), np.array(labels, bool)
    assert t >= 1e-4 and bal == pytest.approx(((s >= t) & y).sum() / 4 + ((s < t) & ~y).sum() / 4)


def test_calibration_says_when_its_validation_data_cannot_determine_it(cases, caplog):
    rng = np.random.default_rng(5)
    # enough lesions, lesion-free cases, a model that finds them: nothing to say
    strong = [
        _case(f"s{i}", rng, lesion=i < FEW_VALIDATION_LESIONS, speckles=2) for i in range(FEW_VALIDATION_LESIONS + 2)
    ]
    op = fit_operating_point(strong)
    assert op.validation["warnings"] == [] and op.validation["dice_pooled"] > WEAK_VALIDATION_DICE
    # the module fixture: 3 lesions, fewer than the lesion filters need
    with caplog.at_level(logging.WARNING, logger="medsad_monai.engine.calibration"):
        op = fit_operating_point(cases)
    (warning,) = op.validation["warnings"]
    assert "3 lesion(s)" in warning and "3 lesion(s)" in caplog.text
    # every result says it with its operating point (the app's JSON, medsad infer, Slicer)
    c = cases[0]
    result = VolumeResult(c.probability, list(c.model_scores), list(c.skipped), 2, op).summary()
    assert result["operating_point"]["warnings"] == [warning]
    assert OperatingPoint().summary()["warnings"] == []  # an uncalibrated model: nothing fitted, nothing to warn
    # a model that does not find the lesions: every fitted value is weakly determined
    blind = [dataclasses.replace(c, probability=np.roll(c.probability, 10, axis=1)) for c in strong]
    op = fit_operating_point(blind)
    assert op.validation["dice_pooled"] < WEAK_VALIDATION_DICE
    assert any("finds the validation lesions poorly" in w for w in op.validation["warnings"])
    # too few cases, one class only
    two = calibration_warnings(strong[:2], dice=0.9)
    assert any("only 2 validation case(s)" in w for w in two) and any("no lesion-free" in w for w in two)
    free = calibration_warnings(strong[-2:], dice=1.0)
    assert any("no validation case has a lesion" in w for w in free)
    assert not any("poorly" in w for w in free)  # no lesion to find: the Dice says nothing
