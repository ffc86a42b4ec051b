"""The app's ``medsad_calibrate`` task: a calibration profile of the served model fitted on the
datastore's final labels that did not train it, written into the served checkpoint (its own
operating point kept), chosen by requests and ``--conf profile`` — and refused with a reason
where it cannot be fitted honestly.

Driven through MONAI Label's real app in-process (the ``client`` fixture of ``conftest.py``) and
once through a real ``monailabel start_server`` with MONAI Label's own client.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from conftest import STUDY_LABELLED

from medsad_monai.checkpoint import calibration_profiles, read_checkpoint
from medsad_monai.engine.decision import OperatingPoint


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _record_training(checkpoint: Path, cases: list[str]) -> None:
    """Make the served checkpoint say it was trained on ``cases`` (as ``medsad train`` records)."""
    payload = read_checkpoint(checkpoint)
    payload.setdefault("extra", {})["train_cases"] = cases
    torch.save(payload, checkpoint)


def _calibrate(client, body: dict | None = None):
    return client.post("/train/medsad_calibrate?run_sync=true", json=body or {})


def test_calibrating_writes_a_profile_fitted_on_the_labels_and_keeps_the_default(client):
    info = client.get("/info/").json()
    assert info["trainers"]["medsad_calibrate"]["config"] == {"profile": "site", "images": "", "objective": "dice"}
    before = client.checkpoint.read_bytes()
    default_before = read_checkpoint(client.checkpoint).get("calibration")

    res = _calibrate(client)
    assert res.status_code == 200, res.text
    result = res.json()
    assert result["profile"] == "site" and result["images"] == list(STUDY_LABELLED)
    assert result["excluded_trained_on"] == []
    # the untrained test checkpoint does not record its training cases: said, not assumed
    assert any("does not record every case" in w for w in result["warnings"])
    assert set(result["in_sample"]) == {"default", "site"}

    payload = read_checkpoint(client.checkpoint)
    assert payload.get("calibration") == default_before  # the model's own operating point is kept
    site = calibration_profiles(payload, client.checkpoint)["site"]
    assert site.to_dict() == result["operating_point"] and site.source == "calibrate"
    assert site.validation["cases"] == list(STUDY_LABELLED)
    assert result["checkpoint_sha256"] == _sha(client.checkpoint)[:16]
    prev = client.checkpoint.with_name(client.checkpoint.stem + ".prev.pt")
    assert prev.read_bytes() == before  # the previous file kept whole

    # the same fit as medsad_monai's calibration on the same cases with the served model
    from medsad_monai.data.layouts import volume_samples
    from medsad_monai.engine.calibration import fit_profile, predict_cases
    from medsad_monai.engine.inference import Predictor

    samples = []
    for name in STUDY_LABELLED:
        samples += volume_samples(
            client.studies / f"{name}.nii.gz", client.studies / "labels" / "final" / f"{name}.nii.gz", name, 2
        )
    predictor = Predictor.from_checkpoint(prev, batch_size=4, device="cpu", precision="auto")
    cases = predict_cases(predictor, samples, 2)
    expected = fit_profile(
        cases, profile="site", default=OperatingPoint(), slice_score=predictor.model.config.slice_score
    )
    for key in ("map_threshold", "min_lesion_voxels", "min_lesion_mean", "slice_score", "volume_score"):
        assert getattr(site, key) == getattr(expected, key), key
    assert site.slice_threshold == pytest.approx(expected.slice_threshold)

    # requests decide at it; /info shows the last calibration
    res = client.post("/infer/medsad?image=case_004&output=json", data={"params": json.dumps({"profile": "site"})})
    assert res.status_code == 200, res.text
    assert res.json()["operating_point"]["profile"] == "site"
    stats = client.get("/info/").json()["train_stats"]["medsad_calibrate"]
    assert stats["profile"] == "site" and stats["checkpoint_sha256"] == result["checkpoint_sha256"]
    summaries = list((client.checkpoint.parent / "calibrations").glob("*.json"))
    assert len(summaries) == 1 and json.loads(summaries[0].read_text()) == result


def test_images_the_model_was_trained_on_are_left_out_and_refused_by_name(client):
    _record_training(client.checkpoint, ["case_000", "case_001"])
    res = _calibrate(client, {"profile": "scanner_b"})
    assert res.status_code == 200, res.text
    result = res.json()
    assert result["images"] == ["case_002", "case_003"] and result["excluded_trained_on"] == ["case_000", "case_001"]
    assert not any("does not record" in w for w in result["warnings"])
    assert calibration_profiles(read_checkpoint(client.checkpoint), client.checkpoint)["scanner_b"].validation[
        "cases"
    ] == ["case_002", "case_003"]

    before = _sha(client.checkpoint)
    for body, status, needle in (
        ({"images": "case_003,case_000"}, 422, "images case_000: the served model was trained on them"),
        ({"images": ["case_003", "case_999"]}, 422, "images case_999: no such image with a final label"),
        ({"images": "case_004"}, 422, "images case_004: no such image with a final label"),  # unlabelled
        ({"images": 7}, 422, "images must be a list"),
        ({"profile": "default"}, 422, "profile 'default' is the operating point fitted on the model's own"),
        ({"profile": "a/b"}, 422, "calibration profile 'a/b'"),
        ({"objective": "accuracy"}, 422, "objective 'accuracy'"),
    ):
        res = _calibrate(client, body)
        assert res.status_code == status, (body, res.text)
        assert needle in res.text, (body, res.text)
    assert _sha(client.checkpoint) == before  # nothing written by a refused request

    res = _calibrate(client, {"images": ["case_003"], "profile": "one"})  # a chosen subset
    assert res.status_code == 200, res.text
    assert res.json()["images"] == ["case_003"] and res.json()["profile"] == "one"
    # /info shows the latest of the two calibrations, each kept
    assert client.get("/info/").json()["train_stats"]["medsad_calibrate"]["profile"] == "one"
    assert len(list((client.checkpoint.parent / "calibrations").glob("*.json"))) == 2


def test_lesion_free_or_training_only_labels_are_refused_with_what_to_do(client):
    _record_training(client.checkpoint, ["case_000", "case_001", "case_003"])  # left: case_002, lesion-free
    res = _calibrate(client)
    assert res.status_code == 422 and "has a lesion" in res.text and "case_002" in res.text
    _record_training(client.checkpoint, list(STUDY_LABELLED))
    res = _calibrate(client)
    assert res.status_code == 422
    assert "no image with a final label that the served model was not trained on" in res.text
    assert "label scans of this site" in res.text


def test_a_model_published_during_calibration_wins(client, monkeypatch):
    """A training run that publishes while the fit runs is never overwritten by the calibration."""
    import sys

    module = next(m for name, m in sys.modules.items() if name.endswith("trainers.calibrate"))
    newer = client.checkpoint.with_name("newer.pt")
    shutil.copy2(client.checkpoint, newer)
    payload = read_checkpoint(newer)
    payload.setdefault("extra", {})["epoch"] = 99
    torch.save(payload, newer)
    published = _sha(newer)
    original = module.predict_cases

    def publish_meanwhile(*args, **kwargs):
        os.replace(newer, client.checkpoint)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, "predict_cases", publish_meanwhile)
    res = _calibrate(client)
    assert res.status_code == 422 and "changed while it was being calibrated" in res.text
    assert _sha(client.checkpoint) == published
    assert not [p for p in client.checkpoint.parent.iterdir() if p.name.startswith(".calibrate-")]


def test_no_labels_is_refused_before_the_run_is_queued(client):
    for name in STUDY_LABELLED:
        client.delete(f"/datastore/label?id={name}&tag=final")
    for url in ("/train/medsad_calibrate", "/train/medsad_calibrate?run_sync=true"):
        res = client.post(url, json={})
        assert res.status_code == 422, (url, res.text)
        assert "the datastore has none" in res.json()["detail"], res.text
    assert client.get("/train/", params={"all": True}).status_code == 404  # nothing was queued


@pytest.mark.slow
def test_calibrating_from_monai_labels_client_makes_the_served_profile_work(app_studies, tmp_path):
    """The user story on a real server: served with ``--conf profile site`` before the site has a
    profile (every inference refused, saying what to do), calibrated in the background with MONAI
    Label's own client (``train_start``, polled with ``train_status`` as the Slicer plugin does),
    then served at the new profile without a restart."""
    from monailabel.client import MONAILabelClient
    from monailabel.client.client import MONAILabelClientException
    from server_process import monailabel_server, run_train_task

    studies, checkpoint = app_studies
    conf = {"checkpoint": str(checkpoint), "profile": "site", "precision": "fp32"}
    with monailabel_server(studies, conf, tmp_path / "server.log") as url:
        client = MONAILabelClient(url, tmpdir=str(tmp_path / "client"))
        with pytest.raises(MONAILabelClientException, match="Status: 422") as err:
            client.infer("medsad", "case_005", {})
        assert "POST /train/medsad_calibrate" in err.value.msg
        assert client.info()["trainers"]["medsad_calibrate"]["config"]["profile"] == "site"

        run_train_task(client, "medsad_calibrate", {}, polls=600)
        stats = client.info()["train_stats"]["medsad_calibrate"]
        assert stats["profile"] == "site" and stats["images"] == list(STUDY_LABELLED)

        _, params = client.infer("medsad", "case_005", {})
        assert params["operating_point"]["profile"] == "site"
        assert params["checkpoint_sha256"] == stats["checkpoint_sha256"]
        assert params["threshold"] == stats["operating_point"]["map_threshold"]


def test_train_all_trains_then_calibrates_the_published_model_on_its_validation_images(client):
    """MONAI Label's ``POST /train/`` (the Slicer plugin's default choice, ALL) runs the trainers
    in turn: ``medsad`` publishes a model, then ``medsad_calibrate`` fits its profile on the images
    that did not train it — the run's validation images."""
    res = client.post("/train/?run_sync=true", json={"medsad": {"max_epochs": 1, "force": True}})
    assert res.status_code == 200, res.text
    result = res.json()
    assert list(result) == ["medsad", "medsad_calibrate"]
    trained = result["medsad"]["result"]
    calibrated = result["medsad_calibrate"]["result"]
    split = json.loads((Path(trained["run"]) / "split.json").read_text())
    assert calibrated["excluded_trained_on"] == sorted(split["train_groups"])
    assert calibrated["images"] == sorted(split["val_groups"])
    payload = read_checkpoint(client.checkpoint)
    assert set(calibration_profiles(payload, client.checkpoint)) == {"default", "site"}
    assert calibrated["checkpoint_sha256"] == _sha(client.checkpoint)[:16]


def test_a_datastore_of_2d_pictures_gets_a_profile_counted_in_pixels(tiny_checkpoint, tmp_path, monkeypatch):
    """The paper's data are 2-D pictures (BMAD): a datastore of the sample BMAD validation PNGs,
    lesion pictures with their masks and normal ones with empty masks, gets a profile fitted on
    every picture, its sizes counted in pixels."""
    import numpy as np
    from conftest import app_client
    from PIL import Image

    root = Path(__file__).resolve().parents[1] / "sample_data" / "bmad" / "valid"
    studies = tmp_path / "studies"
    (studies / "labels" / "final").mkdir(parents=True)
    lesions = sorted((root / "Ungood" / "img").glob("*.png"))[:4]
    normals = sorted((root / "good" / "img").glob("*.png"))[:3]
    for picture in lesions + normals:
        shutil.copy2(picture, studies / picture.name)
        mask = root / "Ungood" / "anomaly_mask" / picture.name
        if picture in lesions:
            label = (np.asarray(Image.open(mask).convert("L")) > 0).astype(np.uint8)
        else:
            label = np.zeros(Image.open(picture).size[::-1], np.uint8)
        Image.fromarray(label).save(studies / "labels" / "final" / picture.name)
    checkpoint = tmp_path / "model" / "medsad.pt"
    checkpoint.parent.mkdir()
    shutil.copy2(tiny_checkpoint, checkpoint)
    with app_client(studies, checkpoint, tmp_path, monkeypatch) as client:
        res = _calibrate(client, {"profile": "bmad_site"})
        assert res.status_code == 200, res.text
        result = res.json()
    assert result["images"] == sorted(p.stem for p in lesions + normals)
    site = calibration_profiles(read_checkpoint(checkpoint), checkpoint)["bmad_site"]
    assert site.validation["n_lesion_volumes"] == len(lesions) and site.validation["n_volumes"] == len(lesions) + 3
    assert site.voxel_mm3 is None  # pictures: sizes in pixels
