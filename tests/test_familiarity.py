"""Familiarity: does a result say when its scan is unlike the model's training volumes?"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medsad_monai.checkpoint import read_checkpoint, write_familiarity
from medsad_monai.data.volumes import load_volume, normalize_intensity
from medsad_monai.engine.familiarity import MIN_VOLUMES, assess, fit_reference, intensity_histogram

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data" / "volumes"


def _normalised(path: Path, method: str = "foreground") -> np.ndarray:
    return normalize_intensity(load_volume(path)[0], method=method)


def _reference(method: str) -> dict:
    files = sorted((SAMPLE / "imagesTr").glob("*.nii.gz"))
    return fit_reference([intensity_histogram(_normalised(f, method)) for f in files], [f.name for f in files])


@pytest.fixture(scope="module")
def reference():
    """The reference of a model trained on the committed sample volumes (imagesTr), as the recipe normalises them."""
    return _reference("foreground")


def test_scans_of_the_training_anatomies_are_familiar_and_other_contrasts_are_not(reference):
    assert len(reference["cases"]) == 14 and reference["threshold"] == pytest.approx(
        2 * max(reference["training_distances"])
    )
    for f in sorted((SAMPLE / "imagesTs").glob("*.nii.gz"))[:6]:  # MNI152 subjects the model never trained on
        block = assess(_normalised(f), reference)
        assert block["familiar"] and "warning" not in block, (f.name, block)
    volume = _normalised(SAMPLE / "imagesTs" / "case_010.nii.gz")
    flat = np.where(volume > 0.05, volume**0.4, 0.0)  # another scanner's contrast curve: grey and white matter close
    block = assess(normalize_intensity(flat, method="foreground"), reference)
    assert not block["familiar"] and block["distance"] > block["threshold"]
    assert "unlike the 14 training volumes'" in block["warning"] and "medsad calibrate" in block["warning"]


def test_a_head_no_training_volume_came_from_is_unfamiliar(reference):
    """ROBEX's reference head (another subject, scanner and field of view): the models' false
    positives there run to thousands of voxels per lesion-free scan (docs/experiments.md)."""
    pytest.importorskip("nilearn")
    from medsad_monai.data.synthetic import make_subject

    for seed in range(2):
        volume, _, _ = make_subject(np.random.default_rng(seed), anatomy="robex_ref")
        block = assess(normalize_intensity(volume, method="foreground"), reference)
        assert not block["familiar"], block


def test_no_reference_no_block_and_too_few_volumes_are_refused(reference):
    volume = _normalised(SAMPLE / "imagesTs" / "case_010.nii.gz")
    assert assess(volume, None) is None and assess(volume, {}) is None
    histograms = reference["histograms"][: MIN_VOLUMES - 1]
    with pytest.raises(ValueError, match=f"at least {MIN_VOLUMES} training volumes"):
        fit_reference(histograms, reference["cases"][: MIN_VOLUMES - 1])
    assert intensity_histogram(np.zeros((4, 4, 4))).sum() == 0  # no foreground: no crash


def test_infer_reports_familiarity_and_warns_on_an_unfamiliar_scan(tiny_checkpoint, tmp_path, capsys):
    from medsad_monai.checkpoint import intensity_of
    from medsad_monai.cli import main

    reference = _reference(intensity_of(read_checkpoint(tiny_checkpoint)))  # as this model normalises

    ckpt = tmp_path / "model.pt"
    shutil.copy(tiny_checkpoint, ckpt)
    scans = tmp_path / "scans"
    scans.mkdir()
    shutil.copy(SAMPLE / "imagesTs" / "case_010.nii.gz", scans / "same.nii.gz")
    img = nib.load(SAMPLE / "imagesTs" / "case_010.nii.gz")
    data = np.clip(np.asarray(img.dataobj, dtype=np.float32), 0, None)
    nib.save(nib.Nifti1Image((data / data.max()) ** 0.4, img.affine), scans / "other.nii.gz")
    # an old checkpoint (no reference): no block, no warning
    assert (
        main(["infer", "--ckpt", str(ckpt), "--input", str(scans / "same.nii.gz"), "--out", str(tmp_path / "a")]) == 0
    )
    assert "familiarity" not in json.loads((tmp_path / "a" / "same_scores.json").read_text())
    write_familiarity(ckpt, reference)
    assert read_checkpoint(ckpt)["familiarity"]["cases"] == reference["cases"]
    capsys.readouterr()
    assert main(["infer", "--ckpt", str(ckpt), "--input", str(scans), "--out", str(tmp_path / "b")]) == 0
    err = capsys.readouterr().err
    same = json.loads((tmp_path / "b" / "same_scores.json").read_text())["familiarity"]
    other = json.loads((tmp_path / "b" / "other_scores.json").read_text())["familiarity"]
    assert same["familiar"] and not other["familiar"]
    assert f"warning: {scans / 'other.nii.gz'}: this scan's intensities are unlike" in err
    assert "same.nii.gz: this scan" not in err


def test_evaluate_reports_which_volumes_are_familiar(tiny_checkpoint, tiny_volumes, tmp_path):
    from medsad_monai.checkpoint import intensity_of
    from medsad_monai.cli import main

    ckpt = tmp_path / "model.pt"
    shutil.copy(tiny_checkpoint, ckpt)
    args = ["evaluate", "--ckpt", str(ckpt), "--data", str(tiny_volumes), "--split", "test", "--device", "cpu"]
    assert main([*args, "--out", str(tmp_path / "old")]) == 0
    cases = json.loads((tmp_path / "old" / "report.json").read_text())["meta"]["per_case"]
    assert all(c["familiar"] is None for c in cases.values())
    assert "familiar |" not in (tmp_path / "old" / "report.md").read_text()
    method = intensity_of(read_checkpoint(ckpt))
    files = sorted((tiny_volumes / "imagesTr").glob("*.nii.gz"))
    write_familiarity(
        ckpt, fit_reference([intensity_histogram(_normalised(f, method)) for f in files], [f.name for f in files])
    )
    assert main([*args, "--out", str(tmp_path / "new")]) == 0
    cases = json.loads((tmp_path / "new" / "report.json").read_text())["meta"]["per_case"]
    assert [c["familiar"] for c in cases.values()] == [True, True]  # the same generator as the training volumes
    assert all(0 <= c["familiarity_distance"] for c in cases.values())
    assert "| familiar |" in (tmp_path / "new" / "report.md").read_text()
