"""The MONAI Label app in-process, through FastAPI's TestClient on MONAI Label's real app
(as MONAI Label's own endpoint tests do): info, infer geometry, bad requests, train, scoring,
active learning."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("monailabel")

from conftest import APP_DIR, STUDY_LABELLED, STUDY_UNLABELLED, datastore_files  # noqa: E402

from medsad_monai.checkpoint import read_checkpoint  # noqa: E402
from medsad_monai.engine.inference import cpu_has_bf16  # noqa: E402


def _infer(client, image_id: str, **params):
    res = client.post(f"/infer/medsad?image={image_id}&output=json", data={"params": json.dumps(params)})
    assert res.status_code == 200, res.text
    mask = client.post(f"/infer/medsad?image={image_id}&output=image", data={"params": json.dumps(params)})
    assert mask.status_code == 200, mask.text
    return res.json(), mask.content


def _nifti(content: bytes) -> nib.Nifti1Image:
    return nib.Nifti1Image.from_bytes(gzip.decompress(content))


def test_info_lists_the_model_trainer_strategy_and_scoring(client):
    info = client.get("/info/").json()
    model = info["models"]["medsad"]
    assert model["type"] == "segmentation" and model["labels"] == {"lesion": 1} and model["dimension"] == 3
    assert set(info["trainers"]["medsad"]["config"]) >= {"max_epochs", "batch_size", "lr", "val_split", "preset"}
    assert info["trainers"]["medsad"]["config"]["preset"] == "tiny"
    assert "medsad_uncertain" in info["strategies"] and "medsad_anomaly" in info["scoring"]
    assert info["labels"] == {"lesion": 1}


def test_infer_returns_scores_and_a_mask_in_the_input_geometry(client):
    params, content = _infer(client, "case_000")
    image = nib.load(client.studies / "case_000.nii.gz")
    mask = _nifti(content)
    assert mask.shape == image.shape
    np.testing.assert_allclose(mask.affine, image.affine, atol=1e-5)
    n = image.shape[2]
    assert len(params["slice_scores"]) == n and all(isinstance(s, float) for s in params["slice_scores"])
    assert params["worst_slice"] == int(np.argmax(params["slice_scores"]))
    assert params["volume_score"] == max(params["slice_scores"])
    assert params["threshold"] == 0.5 and params["label_names"] == {"lesion": 1}
    # the served default is auto: bf16 on a CPU with bf16 units, fp32 elsewhere
    assert params["precision"] == ("bf16" if cpu_has_bf16() else "fp32")
    # an uncalibrated checkpoint says so and uses the 0.5 fallback for every decision
    assert params["operating_point"]["source"] == "default"
    assert params["volume_abnormal"] == (params["volume_score"] >= params["volume_threshold"] == 0.5)
    data = np.asarray(mask.dataobj)
    assert set(np.unique(data)) <= {0, 1} and int(data.sum()) == params["lesion_voxels"]
    lesions = params["lesions"]  # the mask's lesions, largest first, sizes in the scan's mm³
    assert params["n_lesions"] >= len(lesions) and sum(x["voxels"] for x in lesions) <= params["lesion_voxels"]
    voxel = float(np.prod(image.header.get_zooms()[:3]))
    assert all(x["volume_mm3"] == pytest.approx(x["voxels"] * voxel, rel=1e-3) for x in lesions)
    json.dumps(params)  # plain Python types only


def test_infer_threshold_of_the_request_rethresholds_the_same_probabilities(client):
    low, low_mask = _infer(client, "case_001", threshold=0.05)
    high, high_mask = _infer(client, "case_001", threshold=0.95)
    assert low["threshold"] == 0.05 and high["threshold"] == 0.95
    assert low["slice_scores"] == high["slice_scores"]
    assert int(np.asarray(_nifti(low_mask).dataobj).sum()) >= int(np.asarray(_nifti(high_mask).dataobj).sum())


def test_infer_uses_the_checkpoints_calibration_and_a_request_may_override_it(client):
    from medsad_monai.checkpoint import write_calibration
    from medsad_monai.engine.decision import OperatingPoint

    op = OperatingPoint(
        map_threshold=0.3,
        min_lesion_voxels=10,
        slice_score="lesion_area",
        slice_threshold=0.25,
        volume_score="lesion_volume",
        volume_threshold=0.6,
        source="calibrate",
    )
    write_calibration(client.checkpoint, op)  # the served file changes: the app reloads it
    params, content = _infer(client, "case_001")
    assert params["operating_point"] == op.summary()
    assert (params["threshold"], params["slice_threshold"], params["volume_threshold"]) == (0.3, 0.25, 0.6)
    assert params["volume_abnormal"] == (params["volume_score"] >= 0.6)
    assert params["abnormal_slices"] == [i for i, s in enumerate(params["slice_scores"]) if s >= 0.25]
    mask = np.asarray(_nifti(content).dataobj)
    from scipy import ndimage

    labels, n = ndimage.label(mask)
    assert n == 0 or np.bincount(labels.ravel())[1:].min() >= 10  # post-processed: no lesion below 10 voxels
    over, _ = _infer(client, "case_001", threshold=0.6, volume_threshold="0.9", slice_threshold="calibrated")
    assert over["threshold"] == 0.6 and over["volume_threshold"] == 0.9 and over["slice_threshold"] == 0.25
    assert over["operating_point"]["source"] == "calibrate+override"
    every, _ = _infer(client, "case_001", min_lesion_mm3=0)  # 0 keeps every lesion
    assert every["operating_point"]["min_lesion_voxels"] == 0 and every["lesion_voxels"] >= params["lesion_voxels"]
    # a size in mm³ needs an operating point that knows its voxel size: a clear 422, not a guess
    res = client.post("/infer/medsad?image=case_001&output=json", data={"params": json.dumps({"min_lesion_mm3": 100})})
    assert res.status_code == 422 and "no voxel size" in res.json()["detail"], res.text


def test_a_request_sets_the_minimum_lesion_size_in_mm3(client):
    from scipy import ndimage

    from medsad_monai.checkpoint import write_calibration
    from medsad_monai.engine.decision import OperatingPoint

    voxel = float(np.prod(nib.load(client.studies / "case_001.nii.gz").header.get_zooms()[:3]))
    op = OperatingPoint(map_threshold=0.3, min_lesion_voxels=2, voxel_mm3=voxel, source="calibrate")
    write_calibration(client.checkpoint, op)
    params, content = _infer(client, "case_001", min_lesion_mm3=40.5 * voxel)
    applied = params["operating_point"]
    assert applied["min_lesion_voxels"] == 41 and applied["min_lesion_mm3"] == pytest.approx(41 * voxel)
    assert applied["source"] == "calibrate+override" and params["min_lesion_voxels_applied"] == 41
    labels, n = ndimage.label(np.asarray(_nifti(content).dataobj), structure=ndimage.generate_binary_structure(3, 1))
    assert n == 0 or np.bincount(labels.ravel())[1:].min() >= 41
    calibrated, _ = _infer(client, "case_001")
    assert calibrated["operating_point"]["min_lesion_voxels"] == 2
    assert calibrated["lesion_voxels"] >= params["lesion_voxels"]
    # the minimum mean lesion probability, from the request: every lesion left is at least that confident
    confident, _ = _infer(client, "case_001", min_lesion_mean=0.9)
    assert confident["operating_point"]["min_lesion_mean"] == 0.9
    assert all(lesion["mean_probability"] >= 0.9 for lesion in confident["lesions"])
    assert confident["lesion_voxels"] <= calibrated["lesion_voxels"]
    # and the result says what that hid: the lesions of at least 2 voxels under that mean
    hidden = confident["low_confidence"]
    assert hidden["min_lesion_mean"] == 0.9 and calibrated["low_confidence"]["n_lesions"] == 0
    assert all(lesion["mean_probability"] < 0.9 for lesion in hidden["lesions"])
    assert hidden["n_lesions"] + confident["n_lesions"] == calibrated["n_lesions"]  # together: what the threshold kept
    res = client.post("/infer/medsad?image=case_001&output=json", data={"params": json.dumps({"min_lesion_mean": 1})})
    assert res.status_code == 422 and "min_lesion_mean" in res.json()["detail"], res.text


def _truncated(tmp_path: Path, studies: Path) -> Path:
    data = (studies / "case_000.nii.gz").read_bytes()
    path = tmp_path / "truncated.nii.gz"
    path.write_bytes(data[: len(data) // 2])
    return path


def _volume(tmp_path: Path, name: str, array: np.ndarray) -> Path:
    path = tmp_path / name
    nib.save(nib.Nifti1Image(array, np.eye(4)), path)
    return path


@pytest.mark.parametrize(
    "case", ["unknown_id", "truncated", "four_d", "line", "nan", "bad_threshold", "bad_min_lesion_size"]
)
def test_bad_infer_requests_get_a_clear_json_error_and_change_nothing(client, tmp_path, case, monkeypatch):
    import tempfile

    uploads = tmp_path / "uploads"  # where MONAI Label writes an uploaded file for the request
    uploads.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(uploads))
    before = datastore_files(client.studies), client.get("/datastore/?output=all").json()
    files = None
    url = "/infer/medsad?output=json"
    params = {}
    if case == "unknown_id":
        url += "&image=no_such_case"
        expect = (404, "unknown image id")
    elif case == "bad_threshold":
        url += "&image=case_000"
        params = {"threshold": 1.5}
        expect = (422, "threshold")
    elif case == "bad_min_lesion_size":
        url += "&image=case_000"
        params = {"min_lesion_mm3": -3}
        expect = (422, "min_lesion_mm3")
    else:
        path = {
            "truncated": lambda: _truncated(tmp_path, client.studies),
            "four_d": lambda: _volume(tmp_path, "x.nii.gz", np.zeros((8, 8, 8, 2), np.float32)),
            "line": lambda: _volume(tmp_path, "x.nii.gz", np.ones((16, 1, 4), np.float32)),
            "nan": lambda: _volume(tmp_path, "x.nii.gz", np.full((16, 16, 4), np.nan, np.float32)),
        }[case]()
        files = {"file": (path.name, path.read_bytes(), "application/gzip")}
        expect = (
            422,
            {"truncated": "cannot read", "four_d": "3-D volume", "line": "lines, not images", "nan": "NaN"}[case],
        )
    res = client.post(url, data={"params": json.dumps(params)}, files=files)
    assert res.status_code == expect[0], res.text
    assert expect[1] in res.json()["detail"]
    assert (datastore_files(client.studies), client.get("/datastore/?output=all").json()) == before
    assert not list(uploads.iterdir())  # a rejected upload leaves no temporary file behind
    assert client.get("/info/").status_code == 200  # still serving


def test_a_label_of_another_geometry_is_refused_and_nothing_is_lost(client, tmp_path):
    before = datastore_files(client.studies), client.get("/datastore/?output=all").json()
    image = nib.load(client.studies / "case_004.nii.gz")
    shifted = image.affine.copy()
    shifted[:3, 3] += 7.0
    label = tmp_path / "label.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(image.shape, np.uint8), shifted), label)
    res = client.put("/datastore/label?image=case_004&tag=final", files={"label": ("label.nii.gz", label.read_bytes())})
    assert res.status_code == 422, res.text
    assert "origin" in res.json()["detail"] and "case_004" in res.json()["detail"]
    # and a label for an existing labelled image is refused without touching the old one
    res = client.put("/datastore/label?image=case_000&tag=final", files={"label": ("label.nii.gz", label.read_bytes())})
    assert res.status_code == 422
    assert (datastore_files(client.studies), client.get("/datastore/?output=all").json()) == before


def test_scoring_and_active_learning_serve_an_unlabelled_volume(client):
    res = client.post("/scoring/medsad_anomaly?run_sync=true")
    assert res.status_code == 200, res.text
    scored = res.json()["scored"]
    assert set(scored) == set(STUDY_UNLABELLED)
    for image_id, entry in scored.items():
        info = client.get(f"/datastore/image/info?image={image_id}").json()
        assert info["anomaly_score"] == entry["anomaly_score"] and 0.0 <= info["anomaly_uncertainty"] <= 1.0
    again = client.post("/scoring/medsad_anomaly?run_sync=true").json()
    assert again["scored"] == {} and set(again["skipped"]) == set(STUDY_UNLABELLED)  # same model: cached
    res = client.post("/activelearning/medsad_uncertain", json={})
    assert res.status_code == 200, res.text
    chosen = res.json()
    assert chosen["id"] in STUDY_UNLABELLED
    assert chosen["anomaly_uncertainty"] == max(e["anomaly_uncertainty"] for e in scored.values())


def test_scoring_records_whether_each_scan_is_like_the_training_scans(client):
    """With a model that knows its training volumes, scoring stores ``anomaly_familiar`` per
    image (None with one that does not): the datastore's listing shows where decisions may not hold."""
    from conftest import with_familiarity_reference

    first = client.post("/scoring/medsad_anomaly?run_sync=true").json()["scored"]
    assert all(e["anomaly_familiar"] is None and e["anomaly_familiarity_distance"] is None for e in first.values())
    # the reference of a model trained on the labelled lesion volumes (in these toy volumes a lesion
    # is a large share of the head: a lesion-free one has another histogram, case_002 / case_005)
    trained = [client.studies / f"{name}.nii.gz" for name in ("case_000", "case_001", "case_003")]
    with_familiarity_reference(client.checkpoint, trained)
    # a scan with a second tissue (half the head darker), uploaded as a new unlabelled image
    other = nib.load(client.studies / "case_004.nii.gz")
    data = np.asarray(other.dataobj).copy()
    half = data[: data.shape[0] // 2]
    half[half > 0] //= 2
    upload = client.studies.parent / "case_200.nii.gz"
    nib.save(nib.Nifti1Image(data, other.affine), upload)
    res = client.put("/datastore/?image=case_200", files={"file": ("case_200.nii.gz", upload.read_bytes())})
    assert res.status_code == 200, res.text
    scored = client.post("/scoring/medsad_anomaly?run_sync=true").json()["scored"]  # a new model: scored again
    assert set(scored) == set(STUDY_UNLABELLED) | {"case_200"}
    familiar = {k: e["anomaly_familiar"] for k, e in scored.items()}
    assert familiar == {"case_004": True, "case_100": True, "case_005": False, "case_200": False}
    info = client.get("/datastore/image/info?image=case_200").json()
    assert info["anomaly_familiar"] is False and info["anomaly_familiarity_distance"] > 0


def test_train_from_final_labels_publishes_a_model_that_infer_uses(client):
    before, _ = _infer(client, "case_004")
    label = client.studies / "labels" / "final"
    res = client.put(
        "/datastore/label?image=case_004&tag=final",
        files={"label": ("case_004.nii.gz", (label / "case_000.nii.gz").read_bytes())},
    )
    assert res.status_code == 200, res.text
    old = hashlib.sha256(client.checkpoint.read_bytes()).hexdigest()
    res = client.post("/train/medsad?run_sync=true", json={"max_epochs": 1, "batch_size": 8, "force": True})
    assert res.status_code == 200, res.text
    result = res.json()
    assert result["images"] == len(STUDY_LABELLED) + 1 and result["best_epoch"] == 1
    split = json.loads((Path(result["run"]) / "split.json").read_text())
    assert set(split["train_groups"]) | set(split["val_groups"]) == set(STUDY_LABELLED) | {"case_004"}
    assert not set(split["train_groups"]) & set(split["val_groups"])
    assert hashlib.sha256(client.checkpoint.read_bytes()).hexdigest() != old
    assert client.checkpoint.with_name("medsad.prev.pt").is_file()
    after, _ = _infer(client, "case_004")  # no restart: the new weights are picked up
    assert after["checkpoint_sha256"] != before["checkpoint_sha256"]
    assert after["slice_scores"] != before["slice_scores"]
    # the trained model knows its training volumes: results say whether a scan is like them
    assert "familiarity" not in before and after["familiarity"]["training_volumes"] == len(split["train_groups"])
    assert set(after["familiarity"]) >= {"distance", "threshold", "familiar"}
    stats = client.get("/info/").json()["train_stats"]["medsad"]
    assert stats["run"] == result["run"]
    # the published model records what trained it; a calibration then uses only the others
    assert read_checkpoint(client.checkpoint)["extra"]["train_cases"] == sorted(split["train_groups"])
    res = client.post("/train/medsad_calibrate?run_sync=true", json={})
    assert res.status_code == 200, res.text
    assert res.json()["excluded_trained_on"] == sorted(split["train_groups"])
    assert res.json()["images"] == sorted(split["val_groups"]) and res.json()["warnings"] is not None


def test_training_with_too_few_labels_is_a_clear_error(client):
    for name in STUDY_LABELLED[1:]:
        client.delete(f"/datastore/label?id={name}&tag=final")
    # synchronous, and asynchronous (MONAI Label's default, the Slicer plugin's request): refused
    # up front, nothing queued
    for url in ("/train/medsad?run_sync=true", "/train/medsad", "/train/"):
        res = client.post(url, json={"max_epochs": 1})
        assert res.status_code == 422, (url, res.text)
        assert "at least 2 images" in res.json()["detail"] and "has 1" in res.json()["detail"], res.text
    res = client.get("/train/", params={"all": True})
    assert res.status_code == 404, res.text  # MONAI Label's "no training task": none was queued


@pytest.mark.parametrize(
    "key,value,needle",
    [
        ("threshold", "abc", "threshold"),
        ("threshold", "1.5", "threshold"),
        ("slice_axis", "3", "slice_axis"),
        ("preset", "huge", "preset"),
        ("models", "segmentation", "models"),
        ("clip_pretrained", "/no/such.pt", "clip_pretrained"),
        ("batch_size", "0", "batch_size"),
        ("device", "tpu", "device"),
        ("precision", "fp16", "precision"),
        ("min_lesion_mm3", "-5", "min_lesion_mm3"),
    ],
)
def test_bad_conf_values_name_the_key(app_studies, key, value, needle):
    studies, checkpoint = app_studies
    with pytest.raises(ValueError, match=needle):
        _app(studies, {"checkpoint": str(checkpoint), key: value})


def test_a_checkpoint_of_another_backbone_is_refused_with_both_names(app_studies):
    from fastapi import HTTPException

    studies, checkpoint = app_studies
    app = _app(studies, {"checkpoint": str(checkpoint), "clip_model": "ViT-B-16"})
    with pytest.raises(HTTPException) as err:
        app.infer({"model": "medsad", "image": "case_000"})
    assert err.value.status_code == 422
    assert "MedSAD-Tiny" in err.value.detail and "ViT-B-16" in err.value.detail


def _app(studies: Path, conf: dict[str, str]):
    from monailabel.utils.others.class_utils import get_class_of_subclass_from_file

    cls = get_class_of_subclass_from_file("main", str(APP_DIR / "main.py"), "MONAILabelApp")
    return cls(app_dir=str(APP_DIR), studies=str(studies), conf={"models": "medsad", **conf})


def test_infer_on_an_uploaded_nrrd_keeps_its_format_and_geometry(client, tmp_path):
    import nrrd

    from medsad_monai.data.volumes import read_volume_header, save_volume_like

    source = client.studies / "case_001.nii.gz"
    upload = save_volume_like(np.asarray(nib.load(source).dataobj), source, tmp_path / "scan.nrrd")
    res = client.post(
        "/infer/medsad?output=image",
        data={"params": "{}"},
        files={"file": ("scan.nrrd", upload.read_bytes(), "application/octet-stream")},
    )
    assert res.status_code == 200, res.text
    mask_path = tmp_path / "mask.nrrd"
    mask_path.write_bytes(res.content)
    mask, header = nrrd.read(str(mask_path))
    shape, geom = read_volume_header(mask_path)
    ref_shape, ref_geom = read_volume_header(upload)
    assert shape == ref_shape and mask.shape == ref_shape
    np.testing.assert_allclose(geom.affine, ref_geom.affine, atol=1e-5)


def test_infer_on_an_uploaded_png_returns_a_png_mask_of_its_size(client, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    picture = tmp_path / "slice.png"
    Image.fromarray((rng.random((70, 90)) * 255).astype(np.uint8)).save(picture)
    res = client.post(
        "/infer/medsad?output=image",
        data={"params": "{}"},
        files={"file": ("slice.png", picture.read_bytes(), "image/png")},
    )
    assert res.status_code == 200, res.text
    out = tmp_path / "mask.png"
    out.write_bytes(res.content)
    with Image.open(out) as mask:
        assert mask.size == (90, 70)
    params = client.post(
        "/infer/medsad?output=json",
        data={"params": "{}"},
        files={"file": ("slice.png", picture.read_bytes(), "image/png")},
    ).json()
    assert len(params["slice_scores"]) == 1 and params["label_names"] == {"lesion": 1}


def _served_app():
    from monailabel.interfaces.utils.app import app_instance

    return app_instance()


def test_the_reported_checkpoint_sha256_names_the_model_that_made_the_mask_across_a_hot_reload(client, monkeypatch):
    import os
    import shutil
    import sys

    from medsad_monai.checkpoint import write_calibration
    from medsad_monai.engine.decision import OperatingPoint

    infer_module = sys.modules[type(_served_app()._infers["medsad"]).__module__]
    old_sha = hashlib.sha256(client.checkpoint.read_bytes()).hexdigest()[:16]
    new_op = OperatingPoint(map_threshold=0.3, source="calibrate")
    real_save_mask = infer_module.save_mask
    published = []

    def save_then_publish(result, *args, **kwargs):
        """The mask is made; a training run publishes new weights before the result is reported."""
        out = real_save_mask(result, *args, **kwargs)
        if not published:
            staged = client.checkpoint.with_name("staged.pt")
            shutil.copyfile(client.checkpoint, staged)
            write_calibration(staged, new_op)
            os.replace(staged, client.checkpoint)
            published.append(hashlib.sha256(client.checkpoint.read_bytes()).hexdigest()[:16])
        return out

    monkeypatch.setattr(infer_module, "save_mask", save_then_publish)
    res = client.post("/infer/medsad?image=case_001&output=json", data={"params": "{}"})
    assert res.status_code == 200, res.text
    first = res.json()
    assert published and published[0] != old_sha
    assert first["checkpoint_sha256"] == old_sha  # the model that ran, not the one published meanwhile
    assert first["operating_point"]["source"] == "default" and first["threshold"] == 0.5
    second, _ = _infer(client, "case_001")  # the next request runs (and names) the new model
    assert second["checkpoint_sha256"] == published[0]
    assert second["operating_point"] == new_op.summary() and second["threshold"] == 0.3


@pytest.mark.parametrize("error", [RuntimeError("CUDA out of memory"), ValueError("operands could not be broadcast")])
def test_an_internal_error_is_a_500_with_a_traceback_in_the_log_and_a_bad_value_a_422(
    client, monkeypatch, caplog, error
):
    import logging

    predictor = _served_app().task.cache.get().predictor

    def broken(*args, **kwargs):
        raise error

    monkeypatch.setattr(predictor, "predict_volume", broken)
    with caplog.at_level(logging.ERROR):
        res = client.post("/infer/medsad?image=case_000&output=json", data={"params": "{}"})
        scoring = client.post("/scoring/medsad_anomaly?run_sync=true")
    assert res.status_code == 500, res.text
    detail = res.json()["detail"]
    assert f"{type(error).__name__}: {error}" in detail and "not a problem with the request" in detail
    assert scoring.status_code == 500, scoring.text  # not filed under "failed" images either
    logged = [r for r in caplog.records if r.exc_info and r.exc_info[1] is error]
    assert len(logged) == 2 and all(r.levelno == logging.ERROR for r in logged)
    for key, value in [
        ("threshold", 1.5),
        ("slice_threshold", "high"),
        ("slice_axis", 3),
        ("skip_background", "maybe"),
    ]:
        bad = client.post("/infer/medsad?image=case_000&output=json", data={"params": json.dumps({key: value})})
        assert bad.status_code == 422, bad.text
        assert f"{key} {value!r}" in bad.json()["detail"] or f"{key} {value}" in bad.json()["detail"]
    bad = client.post("/train/medsad?run_sync=true", json={"max_epochs": 1, "val_split": 1.5})
    assert bad.status_code == 422 and "val_split 1.5" in bad.json()["detail"]
    bad = client.post("/scoring/medsad_anomaly?run_sync=true", json={"images": "some"})
    assert bad.status_code == 422 and "images 'some'" in bad.json()["detail"]
    assert client.get("/info/").status_code == 200  # still serving


def test_active_learning_keeps_at_most_one_scoring_job_waiting(client, monkeypatch):
    """MONAI Label queues a full scoring job on every active-learning request: a busy client piled
    up 1,343 of them. With one job waiting, the app queues no other."""
    from monailabel.interfaces.utils.app import app_instance
    from monailabel.utils.async_tasks import task as task_mod
    from monailabel.utils.async_tasks import utils as task_utils

    app = app_instance()
    queued = []
    waiting: list[dict] = []

    def fake_run(method, request=None, params=None, force_sync=False, enqueue=False):
        queued.append(request)
        waiting.append({"id": f"job{len(queued)}", "status": "SUBMITTED"})
        return {"id": waiting[-1]["id"]}, None

    monkeypatch.setattr(task_mod.AsyncTask, "run", staticmethod(fake_run))
    monkeypatch.setattr(task_utils, "tasks", lambda method: list(waiting))
    monkeypatch.setattr(app, "_server_mode", True)
    for _ in range(5):
        app.async_scoring(None)
    assert len(queued) == 1  # one job per scoring method while it waits, not five
    waiting[0]["status"] = "DONE"
    app.async_scoring(None)
    assert len(queued) == 2  # once it has run, the next request queues again


def test_batch_infer_with_monai_labels_default_request_runs_on_a_cpu_server(client):
    """``POST /batch/infer/medsad`` with the body MONAI Label's API offers by default (device
    ``cuda``, ``multi_gpu``): every unlabelled image gets an ``original`` label on its own grid;
    the final labels, so what training reads, stay as they were."""
    before = datastore_files(client.studies)
    finals = {k: v for k, v in before.items() if k.startswith("labels/final/")}
    params = {
        "device": "cuda",
        "multi_gpu": True,
        "gpus": "all",
        "logging": "WARNING",
        "save_label": True,
        "label_tag": "original",
        "max_workers": 1,
        "max_batch_size": 0,
    }
    res = client.post("/batch/infer/medsad?images=unlabeled&run_sync=true", json=params)
    assert res.status_code == 200, res.text
    after = datastore_files(client.studies)
    assert {k: v for k, v in after.items() if k.startswith("labels/final/")} == finals
    originals = sorted(k for k in after if k.startswith("labels/original/"))
    assert originals == sorted(f"labels/original/{name}.nii.gz" for name in STUDY_UNLABELLED)
    for name in STUDY_UNLABELLED:
        image, label = (
            nib.load(client.studies / f"{name}.nii.gz"),
            nib.load(client.studies / "labels" / "original" / f"{name}.nii.gz"),
        )
        assert label.shape == image.shape and np.allclose(label.affine, image.affine, atol=1e-4)
    assert sorted(client.get("/datastore/?output=all").json()["objects"]) == sorted(STUDY_LABELLED + STUDY_UNLABELLED)


def test_a_label_saved_as_nrrd_as_slicer_does_is_accepted_and_trained_on(client, tmp_path):
    """MONAI Label's Slicer plugin submits the segmentation as an LPS NRRD for a NIfTI image: it is
    checked against the image's grid, stored, and training reads its voxels."""
    from medsad_monai.data.volumes import load_volume, save_volume_like

    image = client.studies / "case_004.nii.gz"
    truth = client.studies / "labels" / "final" / "case_000.nii.gz"
    label = save_volume_like(np.asarray(nib.load(truth).dataobj), image, tmp_path / "case_004.nrrd")
    res = client.put(
        "/datastore/label?image=case_004&tag=final", files={"label": ("case_004.nrrd", label.read_bytes())}
    )
    assert res.status_code == 200, res.text
    stored = next((client.studies / "labels" / "final").glob("case_004.*"))
    voxels, geometry = load_volume(stored)
    np.testing.assert_array_equal(voxels, np.asarray(nib.load(truth).dataobj))
    np.testing.assert_allclose(geometry.affine, nib.load(image).affine, atol=1e-4)
    res = client.post("/train/medsad?run_sync=true", json={"max_epochs": 1, "batch_size": 8, "force": True})
    assert res.status_code == 200, res.text
    assert res.json()["images"] == len(STUDY_LABELLED) + 1
