"""The `medsad` command line: sub-commands run, errors are one clear line with exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medsad_monai.cli import main


def test_check_data_prints_counts_for_the_sample_volumes(capsys):
    assert main(["check-data", "sample_data/volumes"]) == 0
    out = capsys.readouterr().out
    assert "volumes" in out and "abnormal" in out


def test_errors_are_one_clear_line_with_exit_code_2(tmp_path, capsys):
    assert main(["check-data", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("medsad check-data: error:") and "missing" in err
    assert main(["infer", "--ckpt", str(tmp_path / "none.pt"), "--input", "x", "--out", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_train_then_infer_from_the_command_line(tiny_volumes, tmp_path, capsys):
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--data",
                str(tiny_volumes),
                "--out",
                str(run),
                "--preset",
                "tiny",
                "--image-size",
                "64",
                "--epochs",
                "1",
                "--batch-size",
                "8",
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["best_epoch"] == 1
    # the per-epoch line reaches the log; open_clip's expected random-init notice does not
    assert "medsad_monai.engine.train: epoch 1/1: loss" in captured.err, captured.err[-2000:]
    assert "No pretrained weights loaded" not in captured.err
    out = tmp_path / "pred"
    assert (
        main(["infer", "--ckpt", str(run / "best.pt"), "--input", str(tiny_volumes / "imagesTs"), "--out", str(out)])
        == 0
    )
    assert len(list(out.glob("*_mask.nii.gz"))) == 2
    assert len(list(out.glob("*_scores.json"))) == 2
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    for line in lines:  # one line per volume, its lesion count from scores.json
        stem = Path(line.split(": ", 1)[0]).name.removesuffix(".nii.gz")
        scores = json.loads((out / f"{stem}_scores.json").read_text())
        assert f"lesions={scores['n_lesions']}" in line and "volume_abnormal=" in line


def test_unknown_preset_is_rejected_by_the_parser():
    with pytest.raises(SystemExit):
        main(["train", "--data", "x", "--out", "y", "--preset", "huge"])


def test_demo_reuses_a_calibrated_checkpoint_and_picks_the_largest_test_lesion(
    tiny_checkpoint, tiny_volumes, tmp_path, caplog
):
    """`make run` / `medsad demo` start in seconds once the demo model exists: no training, no calibration."""
    import logging
    import shutil

    import nibabel as nib
    import numpy as np

    from medsad_monai.checkpoint import write_calibration
    from medsad_monai.demo import demo_volume, ensure_demo_checkpoint
    from medsad_monai.engine.decision import OperatingPoint

    ckpt = tmp_path / "demo" / "run" / "best.pt"
    ckpt.parent.mkdir(parents=True)
    shutil.copyfile(tiny_checkpoint, ckpt)
    write_calibration(ckpt, OperatingPoint(map_threshold=0.6, source="validation"))
    with caplog.at_level(logging.INFO, logger="medsad_monai.demo"):
        assert ensure_demo_checkpoint(tiny_volumes, tmp_path / "demo") == ckpt
    assert "using the demo checkpoint" in caplog.text and "training" not in caplog.text
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["best.pt"]
    sizes = {
        p.name: int((np.asarray(nib.load(p).dataobj) > 0).sum()) for p in (tiny_volumes / "labelsTs").glob("*.nii*")
    }
    assert demo_volume(tiny_volumes).name == max(sizes, key=sizes.get)


def test_infer_takes_a_minimum_lesion_size_in_mm3(tiny_checkpoint, tiny_volumes, tmp_path, capsys):
    import shutil

    from medsad_monai.checkpoint import write_calibration
    from medsad_monai.engine.decision import OperatingPoint

    ckpt = tmp_path / "best.pt"
    shutil.copyfile(tiny_checkpoint, ckpt)
    volume = sorted((tiny_volumes / "imagesTs").glob("*.nii.gz"))[0]
    args = ["infer", "--ckpt", str(ckpt), "--input", str(volume), "--out", str(tmp_path / "pred")]
    write_calibration(ckpt, OperatingPoint(map_threshold=0.5, min_lesion_voxels=4, source="validation"))
    assert main([*args, "--min-lesion-mm3", "30"]) == 2  # no voxel size in this operating point
    assert "no voxel size" in capsys.readouterr().err
    write_calibration(ckpt, OperatingPoint(map_threshold=0.5, min_lesion_voxels=4, voxel_mm3=2.0, source="validation"))
    assert main([*args, "--min-lesion-mm3", "-1"]) == 2
    assert "min_lesion_mm3 -1" in capsys.readouterr().err
    assert main([*args, "--min-lesion-mm3", "30"]) == 0
    stem = volume.name.removesuffix(".nii.gz")
    op = json.loads((tmp_path / "pred" / f"{stem}_scores.json").read_text())["operating_point"]
    assert (op["min_lesion_voxels"], op["min_lesion_mm3"], op["source"]) == (15, 30.0, "validation+override")
    # the minimum mean lesion probability: refused by name when out of range, applied when given
    assert main([*args, "--min-lesion-mean", "1.5"]) == 2
    assert "min_lesion_mean 1.5" in capsys.readouterr().err
    voxels = {}
    for mean in ("0", "0.97"):
        assert main([*args, "--min-lesion-mm3", "0", "--min-lesion-mean", mean]) == 0
        result = json.loads((tmp_path / "pred" / f"{stem}_scores.json").read_text())
        assert result["operating_point"]["min_lesion_mean"] == float(mean)
        voxels[mean] = result["lesion_voxels"]
        assert all(lesion["mean_probability"] >= float(mean) for lesion in result["lesions"])
    assert voxels["0.97"] <= voxels["0"]
