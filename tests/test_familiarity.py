"""Familiarity: does a result say when its scan is unlike the model's training volumes?"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medsad_monai.checkpoint import read_checkpoint, write_familiarity
from medsad_monai.data.images import load_image_2d
from medsad_monai.data.volumes import load_volume, normalize_intensity
from medsad_monai.engine.familiarity import MIN_VOLUMES, QUANTILE, assess, fit_reference, grey, intensity_histogram

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data" / "volumes"
BMAD = SAMPLE.parent / "bmad"


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
    # a blank input has nothing to compare (no block); blank training cases are left out of a
    # reference (two of them would make every blank input "familiar")
    assert assess(np.zeros((8, 8, 8)), reference) is None
    blank = [0.0] * len(reference["histograms"][0])
    padded = fit_reference([*reference["histograms"], blank, blank], [*reference["cases"], "blank_1", "blank_2"])
    assert padded["cases"] == reference["cases"]
    assert padded["threshold"] == pytest.approx(reference["threshold"], abs=1e-5)  # histograms stored rounded
    with pytest.raises(ValueError, match=f"at least {MIN_VOLUMES} training volumes"):
        fit_reference([*histograms, blank, blank], [*reference["cases"][: MIN_VOLUMES - 1], "b1", "b2"])


def _infer_same_and_other(ckpt, folder: Path, suffix: str, what: str, out: Path, capsys) -> tuple[dict, dict]:
    """``medsad infer`` on ``folder``'s ``same`` and ``other`` inputs: the first familiar, the
    second not, and only the second warned about on stderr; returns their familiarity blocks."""
    from medsad_monai.cli import main

    capsys.readouterr()
    assert main(["infer", "--ckpt", str(ckpt), "--input", str(folder), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    same = json.loads((out / "same_scores.json").read_text())["familiarity"]
    other = json.loads((out / "other_scores.json").read_text())["familiarity"]
    assert same["familiar"] and not other["familiar"]
    assert f"warning: {folder / ('other' + suffix)}: this {what}'s intensities are unlike" in err
    assert f"same{suffix}: this" not in err
    return same, other


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
    same, other = _infer_same_and_other(ckpt, scans, ".nii.gz", "scan", tmp_path / "b", capsys)

    # `medsad familiarity` surveys the same folder without running the model: the same distances
    shutil.copy(BMAD / "train" / "good" / "img" / sorted(os.listdir(BMAD / "train/good/img"))[0], scans / "slice.png")
    survey_out = tmp_path / "survey"
    assert main(["familiarity", "--ckpt", str(ckpt), "--input", str(scans), "--out", str(survey_out)]) == 0
    printed = capsys.readouterr().out
    assert (
        f"{scans / 'other.nii.gz'}: distance={other['distance']:.3f} threshold={other['threshold']:.3f} UNFAMILIAR"
        in printed
    )
    assert f"{scans / 'same.nii.gz'}: distance={same['distance']:.3f} threshold={same['threshold']:.3f} familiar\n" in (
        printed
    )
    assert f"{scans / 'slice.png'}: not checked" in printed  # a picture against a reference of volumes
    assert "1 of 2 input(s) are unlike the 14 training volumes" in printed and "1 not checked" in printed
    report = json.loads((survey_out / "familiarity.json").read_text())
    rows = {Path(r["input"]).name: r for r in report["inputs"]}
    assert rows["other.nii.gz"]["distance"] == other["distance"] and rows["other.nii.gz"]["familiar"] is False
    assert rows["slice.png"]["familiar"] is None and report["reference"]["training_cases"] == reference["cases"]
    assert (survey_out / "familiarity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_familiarity_survey_errors_are_one_line(tiny_checkpoint, tmp_path, capsys):
    from medsad_monai.cli import main

    scan = SAMPLE / "imagesTs" / "case_010.nii.gz"
    assert main(["familiarity", "--ckpt", str(tiny_checkpoint), "--input", str(scan)]) == 2
    err = capsys.readouterr().err
    assert "has no familiarity reference" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    ckpt = tmp_path / "model.pt"
    shutil.copy(tiny_checkpoint, ckpt)
    write_familiarity(ckpt, _reference("foreground"))
    assert main(["familiarity", "--ckpt", str(ckpt), "--input", str(tmp_path / "missing")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["familiarity", "--ckpt", str(ckpt), "--input", str(tmp_path / "empty")]) == 2
    assert "no NIfTI/NRRD volumes, PNG/JPG images or DICOM series" in capsys.readouterr().err


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
    assert json.loads((tmp_path / "old" / "report.json").read_text())["meta"]["familiarity"] is None
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
    summary = json.loads((tmp_path / "new" / "report.json").read_text())["meta"]["familiarity"]
    assert summary == {"cases": 2, "unfamiliar": 0, "unfamiliar_cases": []}


def _picture_reference() -> dict:
    files = sorted((BMAD / "train" / "good" / "img").glob("*.png"))
    return fit_reference(
        [intensity_histogram(grey(load_image_2d(f))) for f in files], [f.name for f in files], unit="image"
    )


def _other_contrast(picture: np.ndarray, gamma: float = 0.4) -> np.ndarray:
    """Another scanner's contrast curve: grey and white matter close (as for the volumes above)."""
    return picture**gamma


def test_pictures_are_checked_against_the_training_pictures():
    reference = _picture_reference()
    assert reference["unit"] == "image" and reference["quantile"] == QUANTILE["image"]
    assert reference["threshold"] == pytest.approx(
        2 * np.quantile(reference["training_distances"], QUANTILE["image"]), abs=1e-6
    )
    valid = sorted((BMAD / "valid").glob("*/img/*.png"))  # slices of the training volumes, held out
    blocks = [assess(load_image_2d(f), reference, "image") for f in valid]
    assert all(b["familiar"] for b in blocks) and all(b["training_images"] == 205 for b in blocks)
    largest = max(valid, key=lambda f: int((load_image_2d(f) > 0.05).sum()))  # mid-brain, most tissue
    other = assess(_other_contrast(load_image_2d(largest)), reference, "image")
    assert not other["familiar"] and "this image's intensities are unlike the 205 training images'" in other["warning"]
    # a reference of pictures is never used on a volume, nor one of volumes on a picture
    assert assess(_normalised(SAMPLE / "imagesTs" / "case_010.nii.gz"), reference) is None
    volume_reference = {**reference, "unit": "volume"}
    assert assess(load_image_2d(valid[0]), volume_reference, "image") is None
    assert assess(load_image_2d(valid[0]), {k: v for k, v in volume_reference.items() if k != "unit"}, "image") is None
    with pytest.raises(ValueError, match="unit must be one of"):
        fit_reference(reference["histograms"], reference["cases"], unit="slice")


def _small_bmad(root: Path) -> Path:
    """A copy of a few sample BMAD pictures: 40 normal training, 8 held-out lesion, 4 test."""
    picks = {
        "train/good/img": sorted((BMAD / "train/good/img").glob("*.png"))[::5][:40],
        "valid/Ungood/img": sorted((BMAD / "valid/Ungood/img").glob("*.png"))[::11][:8],
        "test/good/img": sorted((BMAD / "test/good/img").glob("*.png"))[:2],
        "test/Ungood/img": sorted((BMAD / "test/Ungood/img").glob("*.png"))[:2],
    }
    for folder, files in picks.items():
        (root / folder).mkdir(parents=True)
        for f in files:
            shutil.copy(f, root / folder / f.name)
            mask = f.parent.parent / "anomaly_mask" / f.name
            if mask.is_file():
                (root / folder).parent.joinpath("anomaly_mask").mkdir(exist_ok=True)
                shutil.copy(mask, (root / folder).parent / "anomaly_mask" / f.name)
    return root


def test_a_model_of_pictures_knows_its_training_pictures(tmp_path, capsys):
    """End to end: training on 2-D images stores a picture reference (training pictures only);
    ``medsad infer`` warns on a picture of another contrast; ``medsad evaluate`` counts them."""
    from PIL import Image

    from medsad_monai.cli import main
    from medsad_monai.engine.train import TrainOptions, train

    data = _small_bmad(tmp_path / "bmad")
    run = tmp_path / "run"
    train(TrainOptions(data=str(data), out=str(run), preset="tiny", image_size=64, epochs=1, batch_size=8, seed=0))
    block = read_checkpoint(run / "best.pt")["familiarity"]
    split = json.loads((run / "split.json").read_text())
    assert block["unit"] == "image" and len(block["histograms"]) == len(block["cases"]) >= 3
    assert set(block["cases"]) <= set(split["train_groups"])  # the training pictures, named as evaluate names them

    pictures = tmp_path / "pictures"
    pictures.mkdir()
    # the mid-brain slice of a new subject of a training anatomy, and the same under another contrast
    same = max(sorted((BMAD / "test/good/img").glob("case_010_*.png")), key=lambda f: (load_image_2d(f) > 0.05).sum())
    shutil.copy(same, pictures / "same.png")
    other = _other_contrast(load_image_2d(same), gamma=0.3)
    Image.fromarray((other[..., 0] * 255).round().astype(np.uint8)).save(pictures / "other.png")
    capsys.readouterr()
    ckpt = str(run / "best.pt")
    _infer_same_and_other(ckpt, pictures, ".png", "image", tmp_path / "out", capsys)

    out = tmp_path / "eval"
    shutil.copy(pictures / "other.png", data / "test/good/img/other_contrast.png")
    assert main(["evaluate", "--ckpt", ckpt, "--data", str(data), "--split", "test", "--out", str(out)]) == 0
    summary = json.loads((out / "report.json").read_text())["meta"]["familiarity"]
    assert summary["cases"] == 5 and summary["unfamiliar"] == 1 and len(summary["unfamiliar_cases"]) == 1
    assert "other_contrast" in summary["unfamiliar_cases"][0]
    assert "**Familiarity**: 1 of 5 cases are unlike the model's training cases (`" in (out / "report.md").read_text()
