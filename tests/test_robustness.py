"""Simulated scanner shifts and ``medsad robustness``: real MONAI transforms, real NIfTI files, the
real evaluation path."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medsad_monai.cli import main
from medsad_monai.engine.evaluate import evaluate_checkpoint
from medsad_monai.engine.shifts import SHIFT_NAMES, apply_shift, describe_shift

RANDOM_SHIFTS = ("bias_field", "noise")  # the others are fixed transforms


def _volume() -> np.ndarray:
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in (24, 28, 12)), indexing="ij")
    head = (x**2 + y**2 + z**2) < 0.8
    return np.where(head, 400.0 + 300.0 * (x > 0), 0.0).astype(np.float32)


@pytest.mark.parametrize("name", SHIFT_NAMES)
def test_every_shift_keeps_shape_and_is_reproducible(name):
    volume = _volume()
    a, b = apply_shift(volume, name, seed=3), apply_shift(volume, name, seed=3)
    assert a.shape == volume.shape and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)  # the same input gives the same shifted input, every run
    assert np.isfinite(a).all()
    if name == "none":
        np.testing.assert_array_equal(a, volume)
    else:
        assert np.abs(a - volume).mean() > 1.0, f"{name} left the volume unchanged"
    assert describe_shift(name)
    picture = np.linspace(0, 1, 20 * 16 * 3, dtype=np.float32).reshape(20, 16, 3)
    for image in (picture, picture[..., 0]):
        shifted = apply_shift(image, name, seed=3, image_2d=True)
        assert shifted.shape == image.shape and shifted.min() >= 0.0 and shifted.max() <= 1.0


@pytest.mark.parametrize("name", RANDOM_SHIFTS)
def test_random_shifts_depend_on_the_seed_only(name):
    volume = _volume()
    assert not np.array_equal(apply_shift(volume, name, seed=1), apply_shift(volume, name, seed=2))


def test_contrast_shifts_keep_the_intensity_range_and_order():
    volume = _volume()
    for name in ("gamma_0.6", "gamma_1.6"):
        shifted = apply_shift(volume, name)
        assert shifted.min() == pytest.approx(volume.min()) and shifted.max() == pytest.approx(volume.max(), rel=1e-4)
        inside = volume > 0
        assert (np.diff(np.sort(shifted[inside])) >= -1e-3).all()  # monotone: tissue keeps its order
    bright, dark = volume == 700, (volume == 400)
    assert apply_shift(volume, "gamma_0.6")[dark].mean() > 400 + 50  # dark tissue brightened
    assert apply_shift(volume, "gamma_1.6")[dark].mean() < 400 - 50
    assert apply_shift(volume, "gamma_0.6")[bright].mean() > 700 - 1


def test_an_unknown_shift_is_refused():
    with pytest.raises(ValueError, match="unknown shift 'fog'"):
        apply_shift(_volume(), "fog")
    with pytest.raises(ValueError, match="unknown shift"):
        describe_shift("fog")


def test_evaluate_reports_the_shift_and_the_confidence_inside_lesions(tiny_volumes, tiny_checkpoint, tmp_path):
    evaluate_checkpoint(tiny_checkpoint, str(tiny_volumes), tmp_path / "plain", split="all")
    evaluate_checkpoint(tiny_checkpoint, str(tiny_volumes), tmp_path / "dark", split="all", shift="gamma_0.6")
    plain = json.loads((tmp_path / "plain" / "report.json").read_text())["meta"]
    dark = json.loads((tmp_path / "dark" / "report.json").read_text())["meta"]
    assert plain["shift"]["name"] == "none" and dark["shift"]["name"] == "gamma_0.6"
    for name, case in plain["per_case"].items():
        if case["true_voxels"]:
            assert 0.0 <= case["lesion_mean_probability"] <= 1.0
            assert case["lesion_mean_probability"] != dark["per_case"][name]["lesion_mean_probability"]
        else:
            assert case["lesion_mean_probability"] is None
    with pytest.raises(ValueError, match="unknown shift"):
        evaluate_checkpoint(tiny_checkpoint, str(tiny_volumes), tmp_path / "x", split="all", shift="fog")
    assert not (tmp_path / "x").exists()


def test_medsad_robustness_writes_a_table_whose_first_row_is_plain_evaluation(
    tiny_volumes, tiny_checkpoint, tmp_path, capsys
):
    out = tmp_path / "rob"
    args = ["robustness", "--ckpt", str(tiny_checkpoint), "--data", str(tiny_volumes), "--split", "all"]
    assert main([*args, "--out", str(out), "--shifts", "noise,gamma_0.6", "--precision", "fp32"]) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0].startswith("none: dice_global=")
    report = json.loads((out / "robustness.json").read_text())
    assert [r["shift"] for r in report["rows"]] == ["none", "noise", "gamma_0.6"]  # 'none' always first
    assert report["meta"]["n_cases"] == 6 and report["meta"]["split"] == "all"
    for row in report["rows"]:
        assert (out / row["shift"] / "report.json").exists()
        assert row["lesion_mean_probability"] is not None and 0 <= row["lesion_mean_probability"] <= 1
    plain = evaluate_checkpoint(tiny_checkpoint, str(tiny_volumes), tmp_path / "plain", split="all")
    none = report["rows"][0]
    assert none["dice_global"] == pytest.approx(plain["dice_global"])
    assert none["balanced_accuracy"] == pytest.approx(plain["balanced_accuracy"])
    assert report["rows"][2]["lesion_mean_probability"] != pytest.approx(none["lesion_mean_probability"])
    assert all(r["unfamiliar"] is None for r in report["rows"])  # a model without a familiarity reference
    table = (out / "robustness.md").read_text()
    assert "| gamma_0.6 |" in table and "lesion map ≥" in table
    assert (out / "robustness.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_medsad_robustness_refuses_an_unknown_shift_in_one_line(tiny_volumes, tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "rob"
    args = ["robustness", "--ckpt", str(tiny_checkpoint), "--data", str(tiny_volumes), "--out", str(out)]
    with pytest.raises(SystemExit) as exc:
        main([*args, "--shifts", "noise,fog"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "unknown shift(s) fog" in err and "Traceback" not in err
    assert not out.exists()


def test_shifts_that_push_lesions_under_the_mean_filter_are_named(tiny_volumes, tiny_checkpoint, tmp_path):
    from medsad_monai.engine.robustness import filter_warnings, robustness_report

    rows = robustness_report(
        tiny_checkpoint, str(tiny_volumes), tmp_path / "rob", split="all", shifts=["blur"], min_lesion_mean=0.99
    )
    report = json.loads((tmp_path / "rob" / "robustness.json").read_text())
    assert report["meta"]["operating_point"]["min_lesion_mean"] == 0.99
    assert [w.split(" the mean")[0] for w in report["meta"]["warnings"]] == ["under none", "under blur"]
    assert "Warnings:" in (tmp_path / "rob" / "robustness.md").read_text()
    assert filter_warnings(rows, 0.0) == []  # no mean filter, nothing to warn about
    low, high = sorted(r["lesion_mean_probability"] for r in rows)
    assert low < high  # the blur moved the model's confidence
    assert len(filter_warnings(rows, (low + high) / 2)) == 1  # only the shift under the filter is named


def test_each_shift_says_how_many_cases_the_familiarity_check_flagged(tiny_volumes, tiny_checkpoint, tmp_path):
    """Does the unfamiliar-scan warning notice a scanner shift? Each row counts the cases its
    evaluation flagged, as that shift's own report does."""
    from conftest import with_familiarity_reference

    from medsad_monai.engine.robustness import robustness_report

    training = sorted((tiny_volumes / "imagesTr").glob("*.nii.gz"))
    ckpt = with_familiarity_reference(tiny_checkpoint, training, tmp_path / "model.pt")
    out = tmp_path / "rob"
    rows = robustness_report(ckpt, str(tiny_volumes), out, split="all", shifts=["gamma_0.6"], precision="fp32")
    for row in rows:
        own = json.loads((out / row["shift"] / "report.json").read_text())["meta"]["familiarity"]
        assert own["cases"] == 6 and row["unfamiliar"] == own["unfamiliar"]
    assert rows[0]["unfamiliar"] == 0  # the training volumes themselves
    assert "cases flagged unlike the training scans" in (out / "robustness.md").read_text()
