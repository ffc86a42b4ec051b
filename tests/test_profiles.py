"""Calibration profiles: one checkpoint, an operating point per site or scanner, chosen by name in
``medsad infer / evaluate``, the MONAI Label server (``--conf profile``, a request's ``profile``) and
the Slicer module's backends."""

from __future__ import annotations

import dataclasses
import json
import shutil

import nibabel as nib
import numpy as np
import pytest

from medsad_monai.checkpoint import (
    PROFILES_KEY,
    calibration_profiles,
    operating_point_of,
    read_checkpoint,
    remove_calibration_profile,
    write_calibration,
)
from medsad_monai.cli import main
from medsad_monai.engine.decision import DEFAULT_PROFILE, OperatingPoint, check_profile_name
from medsad_monai.engine.inference import Predictor

#: A site's operating point that decides differently from the 0.5 fallback of an uncalibrated
#: checkpoint (a low threshold, a size filter, the mask-based scores).
SITE_B = OperatingPoint(
    map_threshold=0.2,
    min_lesion_voxels=3,
    slice_score="lesion_area",
    slice_threshold=0.05,
    volume_score="lesion_volume",
    volume_threshold=0.3,
    source="calibrate",
    profile="site_b",
)


def _infer(checkpoint, image, out, *options: str) -> int:
    """``medsad infer`` of one volume on the CPU; its exit code."""
    argv = ["infer", "--ckpt", str(checkpoint), "--input", str(image), "--out", str(out), *options]
    return main([*argv, "--batch-size", "4", "--device", "cpu"])


@pytest.fixture
def checkpoint(tiny_checkpoint, tmp_path):
    path = tmp_path / "model.pt"
    shutil.copy2(tiny_checkpoint, path)
    return path


def test_profile_names_are_checked():
    for good in ("site_b", "scanner-3T", "A", "v1.2", "x" * 64):
        assert check_profile_name(good) == good
    for bad in ("", "_x", "-x", ".x", "a b", "a/b", "ü", "x" * 65, None, 3):
        with pytest.raises(ValueError, match="calibration profile"):
            check_profile_name(bad)
    with pytest.raises(ValueError, match="calibration profile"):
        OperatingPoint(profile="../etc")


def test_profiles_are_stored_beside_the_default_and_chosen_by_name(checkpoint):
    weights = read_checkpoint(checkpoint)["state_dict"]
    default = dataclasses.replace(SITE_B, map_threshold=0.6, profile=DEFAULT_PROFILE)
    write_calibration(checkpoint, default)
    write_calibration(checkpoint, SITE_B)
    write_calibration(checkpoint, dataclasses.replace(SITE_B, map_threshold=0.7, profile="site_c"))
    payload = read_checkpoint(checkpoint)
    assert all((weights[k] == payload["state_dict"][k]).all() for k in weights)  # weights untouched
    assert operating_point_of(payload, checkpoint) == default  # the default block is kept as it was
    points = calibration_profiles(payload, checkpoint)
    assert list(points) == ["default", "site_b", "site_c"]
    assert points["site_b"] == SITE_B and operating_point_of(payload, checkpoint, "site_b") == SITE_B
    with pytest.raises(ValueError, match=r"'site_x' is not in .* \(it holds: default, site_b, site_c\)"):
        operating_point_of(payload, checkpoint, "site_x")

    # the same name again replaces that profile only
    write_calibration(checkpoint, dataclasses.replace(SITE_B, map_threshold=0.25))
    points = calibration_profiles(read_checkpoint(checkpoint), checkpoint)
    assert points["site_b"].map_threshold == 0.25 and points["site_c"].map_threshold == 0.7

    # the predictor decides at the profile asked for, and knows the others for a request
    predictor = Predictor.from_checkpoint(checkpoint, batch_size=2, device="cpu", profile="site_c")
    assert predictor.operating_point.map_threshold == 0.7 and predictor.operating_point.profile == "site_c"
    assert predictor.profile_point("default") == default and predictor.profile_point(None).profile == "site_c"
    with pytest.raises(ValueError, match="this model has default, site_b, site_c"):
        predictor.profile_point("site_x")
    with pytest.raises(ValueError, match="it holds: default, site_b, site_c"):
        Predictor.from_checkpoint(checkpoint, batch_size=2, device="cpu", profile="site_x")

    remove_calibration_profile(checkpoint, "site_c")
    assert list(calibration_profiles(read_checkpoint(checkpoint), checkpoint)) == ["default", "site_b"]
    with pytest.raises(ValueError, match="cannot be removed"):
        remove_calibration_profile(checkpoint, "default")
    with pytest.raises(ValueError, match="it holds: default, site_b"):
        remove_calibration_profile(checkpoint, "site_c")

    # a block stored under another name than it says it is: refused, not used silently
    payload = read_checkpoint(checkpoint)
    payload[PROFILES_KEY]["site_d"] = payload[PROFILES_KEY]["site_b"]
    with pytest.raises(ValueError, match="'site_d' says it is 'site_b'"):
        calibration_profiles(payload, checkpoint)


def test_a_checkpoint_without_profiles_has_its_default_only(checkpoint, caplog):
    predictor = Predictor.from_checkpoint(checkpoint, batch_size=2, device="cpu")
    assert list(predictor.profiles) == ["default"] and predictor.operating_point == OperatingPoint()
    assert predictor.operating_point.summary()["profile"] == "default"


def test_calibrate_a_profile_then_infer_and_evaluate_at_it(checkpoint, tiny_volumes, tmp_path, capsys):
    run = ["--batch-size", "4", "--device", "cpu"]
    assert main(["calibrate", "--ckpt", str(checkpoint), "--data", str(tiny_volumes), "--profile", "site_b", *run]) == 0
    said = capsys.readouterr().out
    assert "as calibration profile 'site_b'" in said and "on these validation cases, default: pooled Dice" in said
    payload = read_checkpoint(checkpoint)
    assert "calibration" not in payload  # the default operating point is left as it was (none)
    fitted = calibration_profiles(payload, checkpoint)["site_b"]
    assert fitted.source == "calibrate" and fitted.profile == "site_b"
    assert fitted.validation["cases"] == [f"case_{i:03d}" for i in range(6)]  # imagesTr only, never imagesTs
    # what the profile changes on this site's data, against the default (here the 0.5 fallback)
    compared = fitted.validation["compared_with_default"]
    assert list(compared) == ["default", "site_b"]
    assert compared["site_b"]["dice_pooled"] == fitted.validation["dice_pooled"]  # the fit's own figure
    assert compared["site_b"]["dice_pooled"] >= compared["default"]["dice_pooled"]  # the fit maximises it

    # listed with where it came from
    assert main(["profiles", "--ckpt", str(checkpoint)]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[0].startswith("default: default, map >= 0.5")
    assert (
        listing[1].startswith(f"site_b: calibrate, map >= {fitted.map_threshold:g}")
        and "6 validation case" in listing[1]
    )
    assert main(["profiles", "--ckpt", str(checkpoint), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["site_b"] == fitted.to_dict()

    # medsad infer at the profile: the result says which, and decides as the profile does
    image = tiny_volumes / "imagesTs" / "case_100.nii.gz"
    out_b, out_d = tmp_path / "site_b", tmp_path / "default"
    assert _infer(checkpoint, image, out_b, "--profile", "site_b") == 0
    assert _infer(checkpoint, image, out_d) == 0
    scores_b = json.loads((out_b / "case_100_scores.json").read_text())
    scores_d = json.loads((out_d / "case_100_scores.json").read_text())
    assert scores_b["operating_point"]["profile"] == "site_b" and scores_d["operating_point"]["profile"] == "default"
    assert scores_b["operating_point"]["map_threshold"] == fitted.map_threshold
    direct = Predictor.from_checkpoint(checkpoint, batch_size=4, device="cpu", precision="auto")  # as medsad infer
    from medsad_monai.data.volumes import load_volume

    array, geometry = load_volume(image)
    result = direct.predict_volume(direct.normalize_volume(array), spacing=geometry.spacing, affine=geometry.affine)
    expected = result.with_operating_point(fitted).mask
    np.testing.assert_array_equal(np.asarray(nib.load(out_b / "case_100_mask.nii.gz").dataobj) > 0, expected > 0)
    # an override still replaces one value of the profile
    out_o = tmp_path / "override"
    assert _infer(checkpoint, image, out_o, "--profile", "site_b", "--threshold", "0.9") == 0
    op = json.loads((out_o / "case_100_scores.json").read_text())["operating_point"]
    assert (op["profile"], op["source"], op["map_threshold"]) == ("site_b", "calibrate+override", 0.9)
    assert op["min_lesion_voxels"] == fitted.min_lesion_voxels

    # evaluate reports the profile it decided at
    assert (
        main(
            [
                "evaluate",
                "--ckpt",
                str(checkpoint),
                "--data",
                str(tiny_volumes),
                "--out",
                str(tmp_path / "r"),
                "--profile",
                "site_b",
                *run,
            ]
        )
        == 0
    )
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["meta"]["operating_point"]["profile"] == "site_b"

    # an unknown profile: one clear line that lists those the checkpoint holds, no output written
    capsys.readouterr()
    out_x = tmp_path / "x"
    assert _infer(checkpoint, image, out_x, "--profile", "site_x") == 2
    err = capsys.readouterr().err
    assert "calibration profile 'site_x' is not in" in err and "(it holds: default, site_b)" in err
    assert not out_x.exists() or not any(out_x.iterdir())
    assert main(["calibrate", "--ckpt", str(checkpoint), "--data", str(tiny_volumes), "--profile", "a/b", *run]) == 2
    assert "calibration profile 'a/b'" in capsys.readouterr().err

    # removed again
    assert main(["profiles", "--ckpt", str(checkpoint), "--remove", "site_b"]) == 0
    assert list(calibration_profiles(read_checkpoint(checkpoint), checkpoint)) == ["default"]


@pytest.mark.slow
def test_the_server_decides_at_its_profile_and_a_request_may_name_another(app_studies, tiny_checkpoint, tmp_path):
    """A real ``monailabel start_server`` with ``--conf profile``, driven by MONAI Label's own client."""
    pytest.importorskip("monailabel")
    import os

    from monailabel.client import MONAILabelClient
    from monailabel.client.client import MONAILabelClientException
    from server_process import monailabel_server

    studies, checkpoint = app_studies
    write_calibration(checkpoint, SITE_B)
    conf = {"checkpoint": str(checkpoint), "profile": "site_b", "precision": "fp32"}
    with monailabel_server(studies, conf, tmp_path / "server.log") as url:
        client = MONAILabelClient(url, tmpdir=str(tmp_path / "client"))
        assert client.info()["models"]["medsad"]["config"]["profile"] == "site_b"  # what the Slicer plugin shows
        file_b, served = client.infer("medsad", "case_005", {})
        assert served["operating_point"]["profile"] == "site_b" and served["threshold"] == SITE_B.map_threshold
        file_d, default = client.infer("medsad", "case_005", {"profile": "default"})
        assert default["operating_point"]["profile"] == "default" and default["threshold"] == 0.5
        # the same model, decided at each operating point as medsad_monai decides
        predictor = Predictor.from_checkpoint(checkpoint, batch_size=8, device="cpu", precision="fp32")
        from medsad_monai.data.volumes import load_volume

        array, geometry = load_volume(studies / "case_005.nii.gz")
        result = predictor.predict_volume(
            predictor.normalize_volume(array), spacing=geometry.spacing, affine=geometry.affine
        )
        for file, op in ((file_b, SITE_B), (file_d, OperatingPoint())):
            got = np.asarray(nib.load(file).dataobj) > 0
            np.testing.assert_array_equal(got, result.with_operating_point(op).mask > 0)
        assert served["lesion_voxels"] != default["lesion_voxels"]  # the two operating points differ here

        for params, needle in (
            ({"profile": "site_x"}, "this model has default, site_b"),
            ({"profile": "a/b"}, "calibration profile 'a/b'"),
        ):
            with pytest.raises(MONAILabelClientException, match="Status: 422") as err:
                client.infer("medsad", "case_005", params)
            assert needle in err.value.msg

        # a model published without the profile (what a training run publishes): said, not guessed
        fresh = tmp_path / "fresh.pt"
        shutil.copy2(tiny_checkpoint, fresh)
        os.replace(fresh, checkpoint)
        with pytest.raises(MONAILabelClientException, match="Status: 422") as err:
            client.infer("medsad", "case_005", {})
        assert "--conf profile 'site_b'" in err.value.msg and "medsad calibrate" in err.value.msg
        assert client.info()["models"]["medsad"]  # still serving


def test_a_bundle_can_carry_a_profile_as_its_operating_point(checkpoint, tmp_path):
    from monai.bundle import ConfigParser

    from medsad_monai.bundle import export_bundle

    write_calibration(checkpoint, SITE_B)
    for profile, expected in ((None, OperatingPoint()), ("site_b", SITE_B)):
        out = export_bundle(checkpoint, tmp_path / f"bundle_{profile}", profile=profile)
        parser = ConfigParser()
        parser.read_config(str(out / "configs" / "inference.json"))
        op = parser.get_parsed_content("operating_point")
        assert (op.profile, op.map_threshold, op.min_lesion_voxels) == (
            expected.profile,
            expected.map_threshold,
            expected.min_lesion_voxels,
        )
    with pytest.raises(ValueError, match="it holds: default, site_b"):
        export_bundle(checkpoint, tmp_path / "bundle_x", profile="site_x")
    assert not (tmp_path / "bundle_x").exists()  # refused before anything is written
