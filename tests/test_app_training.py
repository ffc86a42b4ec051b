"""The app's train task as an active-learning step (issue 17): it fine-tunes the served model,
publishes only a model that is not worse on validation (``force`` publishes anyway), replaces
the served file atomically, and shows live progress in ``/info``'s ``train_stats``.

Driven through MONAI Label's real app in-process (the ``client`` fixture of ``conftest.py``).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medsad_monai.checkpoint import load_checkpoint, read_checkpoint

#: a trainable tensor of the tiny model (not part of the frozen backbone) used as a marker.
MARK = 0.123


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _marked_key(payload: dict) -> str:
    return next(k for k, v in payload["state_dict"].items() if not k.startswith("backbone.") and v.is_floating_point())


def _mark(checkpoint: Path) -> str:
    """Set one saved non-backbone tensor of ``checkpoint`` to ``MARK``; returns its key."""
    payload = read_checkpoint(checkpoint)
    key = _marked_key(payload)
    payload["state_dict"][key] = torch.full_like(payload["state_dict"][key], MARK)
    torch.save(payload, checkpoint)
    return key


def test_fine_tune_starts_from_the_served_weights(client):
    key = _mark(client.checkpoint)
    served = read_checkpoint(client.checkpoint)
    assert served["intensity"] != "foreground"  # the training default: a fine-tune must not fall back to it
    served["context_slices"] = 1  # a model that sees each slice between its neighbours
    torch.save(served, client.checkpoint)
    res = client.post("/train/medsad?run_sync=true", json={"max_epochs": 1, "lr": 1e-12, "force": True})
    assert res.status_code == 200, res.text
    result = res.json()
    assert result["fine_tuned_from"] == str(client.checkpoint)
    assert result["published"] is True
    tuned_payload = read_checkpoint(Path(result["run"]) / "best.pt")
    tuned = tuned_payload["state_dict"][key]
    assert torch.allclose(tuned, torch.full_like(tuned, MARK), atol=1e-6)
    # the fine-tune sees volumes as the served model did: same normalisation, same context slices
    assert (tuned_payload["intensity"], tuned_payload["context_slices"]) == (served["intensity"], 1)
    assert {"served_val_dice", "new_val_dice", "epoch", "total_epochs", "best_metric", "total_time"} <= set(result)
    load_checkpoint(client.checkpoint)  # what is served loads

    res = client.post("/train/medsad?run_sync=true", json={"max_epochs": 1, "from_scratch": True, "force": True})
    assert res.status_code == 200, res.text
    assert res.json()["fine_tuned_from"] is None
    fresh = read_checkpoint(Path(res.json()["run"]) / "best.pt")["state_dict"][key]
    assert not torch.allclose(fresh, torch.full_like(fresh, MARK))


def test_a_fine_tune_keeps_the_served_models_mirror_channel(client):
    served = read_checkpoint(client.checkpoint)
    served["mirror_channel"] = True  # a model that sees each slice beside its left-right mirror
    served["context_slices"] = 0  # (an earlier test may have served a context-slices model)
    torch.save(served, client.checkpoint)
    res = client.post("/train/medsad?run_sync=true", json={"max_epochs": 1, "lr": 1e-12, "force": True})
    assert res.status_code == 200, res.text
    tuned = read_checkpoint(Path(res.json()["run"]) / "best.pt")
    assert tuned["mirror_channel"] is True and tuned["context_slices"] == 0


def test_a_worse_run_is_not_published_and_force_publishes(client):
    served = _sha(client.checkpoint)
    # lr 1e3 from scratch wrecks the weights: the run is worse than the served model on validation
    bad = {"max_epochs": 1, "lr": 1e3, "from_scratch": True}
    res = client.post("/train/medsad?run_sync=true", json=bad)
    assert res.status_code == 200, res.text
    result = res.json()
    assert result["published"] is False
    assert result["new_val_dice"] < result["served_val_dice"]
    assert _sha(client.checkpoint) == served
    run = Path(result["run"])
    assert (run / "best.pt").is_file() and json.loads((run / "summary.json").read_text())["published"] is False

    res = client.post("/train/medsad?run_sync=true", json={**bad, "force": True})
    assert res.status_code == 200, res.text
    assert res.json()["published"] is True
    assert _sha(client.checkpoint) != served
    assert _sha(client.checkpoint.with_name("medsad.prev.pt")) == served
    load_checkpoint(client.checkpoint)


def test_a_served_model_of_another_preset_is_refused_by_name(client):
    res = client.post("/train/medsad?run_sync=true", json={"max_epochs": 1, "preset": "full"})
    assert res.status_code == 422, res.text
    detail = res.json()["detail"]
    assert "'tiny'" in detail and "'full'" in detail and "from_scratch" in detail


def test_bad_switch_is_a_clear_error(client):
    res = client.post("/train/medsad?run_sync=true", json={"max_epochs": 1, "force": "maybe"})
    assert res.status_code == 422, res.text
    assert "force" in res.json()["detail"]


def test_a_starting_run_is_never_visible_without_its_request(client, monkeypatch):
    """``/info`` reads a starting run's epoch budget from its ``request.json``: a run folder must
    never be visible without it (a live ``train_stats`` once said ``total_epochs: None``)."""
    import sys

    trainer = next(m for name, m in sys.modules.items() if name.endswith("trainers.medsad"))
    real, bare = trainer.atomic_write, []

    def spy(path, *args, **kwargs):
        path = Path(path)
        if path.name == "request.json":
            runs = path.parent.parent
            bare.append(
                [
                    p.name
                    for p in runs.iterdir()
                    if p.is_dir()
                    and not p.name.startswith(".")
                    and not any((p / f).is_file() for f in ("request.json", "config.json", "summary.json"))
                ]
            )
        return real(path, *args, **kwargs)

    monkeypatch.setattr(trainer, "atomic_write", spy)
    res = client.post("/train/medsad?run_sync=true", json={"max_epochs": 1, "force": True})
    assert res.status_code == 200, res.text
    assert bare == [[]]  # the request was written once, and no visible run folder lacked it


def test_train_stats_are_live_during_a_run(client):
    results: dict = {}

    def run() -> None:
        results["res"] = client.post("/train/medsad?run_sync=true", json={"max_epochs": 3, "force": True})

    worker = threading.Thread(target=run)
    worker.start()
    seen = []
    while worker.is_alive():
        stats = client.get("/info/").json()["train_stats"]["medsad"]
        if stats.get("running"):
            seen.append(stats)
        time.sleep(0.2)
    worker.join()
    assert results["res"].status_code == 200, results["res"].text
    assert seen, "no live train_stats while the run trained"
    progress = [(s["epoch"], s["total_epochs"]) for s in seen]
    assert all(total == 3 and 0 <= epoch <= 3 for epoch, total in progress), progress
    assert any(s["epoch"] >= 1 and s["best_metric"] is not None for s in seen)
    final = client.get("/info/").json()["train_stats"]["medsad"]
    assert final["epoch"] == final["total_epochs"] == 3 and "best_epoch" in final and "total_time" in final


def _publish_forever(target: str, sources: list[str], started: str) -> None:  # pragma: no cover - child process
    """Publish the source files over ``target`` in turn until killed (the child of the kill test)."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "monai_app"))
    from lib.trainers.medsad import publish_checkpoint

    Path(started).touch()
    while True:
        for source in sources:
            publish_checkpoint(Path(source), Path(target))


@pytest.mark.parametrize("delay", [0.05, 0.3, 0.7])
def test_the_served_model_stays_loadable_if_publishing_is_killed(app_studies, tmp_path, delay):
    _, checkpoint = app_studies
    other, original, started = tmp_path / "other.pt", tmp_path / "original.pt", tmp_path / "started"
    original.write_bytes(checkpoint.read_bytes())
    payload = read_checkpoint(checkpoint)
    payload["extra"] = {"filler": torch.zeros(4_000_000)}  # a bigger file: the kill lands mid-write
    torch.save(payload, other)
    child = multiprocessing.get_context("spawn").Process(
        target=_publish_forever, args=(str(checkpoint), [str(other), str(original)], str(started))
    )
    child.start()
    deadline = time.monotonic() + 120
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(delay)
    child.kill()
    child.join()
    assert started.exists()
    load_checkpoint(checkpoint)  # whole: the old file or the new one, never a torn one
    prev = checkpoint.with_name("medsad.prev.pt")
    if prev.exists():  # killed before the first copy was in place: no previous file yet
        load_checkpoint(prev)


@pytest.mark.slow
def test_the_slicer_plugins_requests_against_the_real_server(app_studies, tmp_path):
    """Replays what MONAI Label's Slicer plugin sends: next sample (with its checksum check),
    infer asking for ``.nrrd`` / ``uint8``, a multipart label upload with ``label_info``, a
    training run and the ``train_stats`` keys its progress bar reads."""
    import nrrd
    from conftest import STUDY_UNLABELLED
    from monailabel.client import MONAILabelClient
    from monailabel.client.client import MONAILabelClientException, MONAILabelUtils
    from server_process import monailabel_server

    studies, checkpoint = app_studies
    with monailabel_server(studies, {"checkpoint": str(checkpoint)}, tmp_path / "server.log") as url:
        client = MONAILabelClient(url, tmpdir=str(tmp_path / "client"))
        sample = client.next_sample("medsad_uncertain", {})
        assert sample["id"] in STUDY_UNLABELLED and sample["checksum"].startswith("SHA256:")
        check = f"/datastore/image?image={sample['id']}&check_only=true&check_sum={sample['checksum']}"
        status, body, _, _ = MONAILabelUtils.http_method("GET", url, check)
        assert status == 200, body

        mask_file, params = client.infer("medsad", sample["id"], {"result_extension": ".nrrd", "result_dtype": "uint8"})
        mask, _ = nrrd.read(mask_file)
        image = nib.load(studies / f"{sample['id']}.nii.gz")
        assert mask.shape == image.shape and mask.dtype == np.uint8

        with pytest.raises(MONAILabelClientException) as refused:
            client.infer("medsad", sample["id"], {"result_extension": ".exe"})
        assert "Status: 422" in refused.value.msg and "result_extension" in refused.value.msg

        label = studies / "labels" / "final" / "case_000.nii.gz"
        client.save_label(sample["id"], str(label), tag="final", params={"label_info": [{"name": "lesion", "idx": 1}]})
        assert (studies / "labels" / "final" / f"{sample['id']}.nii.gz").is_file()

        status, body, _, _ = MONAILabelUtils.http_method(
            "POST", url, "/train/medsad?run_sync=true", {"max_epochs": 1, "force": True}
        )
        assert status == 200, body
        stats = client.info()["train_stats"]["medsad"]
        assert stats["epoch"] == stats["total_epochs"] == 1
        # the keys MONAI Label's Slicer plugin reads, and the older ones: present (not a timing check)
        plugin_keys = {"best_metric", "total_time", "best_epoch", "last_epoch", "best_val_selection", "seconds"}
        missing = plugin_keys - set(stats)
        assert not missing, f"train_stats lacks {sorted(missing)}: {stats}"


@pytest.mark.slow
def test_monai_label_clients_upload_and_background_training_against_the_real_server(app_studies, tmp_path):
    """What MONAI Label's own client does beyond infer-by-id: upload a volume the server does not
    have and infer it by its new id; start training in the background (``train_start``), poll
    ``train_status`` as the Slicer plugin's progress timer does, and get the new model served
    without a restart."""
    import shutil

    from monailabel.client import MONAILabelClient
    from server_process import monailabel_server, run_train_task

    studies, checkpoint = app_studies
    scan = tmp_path / "outside" / "from_the_scanner.nii.gz"
    scan.parent.mkdir()
    shutil.copy2(studies / "case_005.nii.gz", scan)
    with monailabel_server(studies, {"checkpoint": str(checkpoint)}, tmp_path / "server.log") as url:
        client = MONAILabelClient(url, tmpdir=str(tmp_path / "client"))
        assert client.upload_image(str(scan), image_id="uploaded_scan") == {"image": "uploaded_scan"}
        mask_file, params = client.infer("medsad", "uploaded_scan", {})
        mask, image = nib.load(mask_file), nib.load(scan)
        assert mask.shape == image.shape and np.allclose(mask.affine, image.affine, atol=1e-5)
        assert len(params["slice_scores"]) == image.shape[2]
        served = params["checkpoint_sha256"]

        run_train_task(client, "medsad", {"max_epochs": 1, "force": True})
        stats = client.info()["train_stats"]["medsad"]
        assert stats["epoch"] == stats["total_epochs"] == 1 and "published" in stats
        _, params = client.infer("medsad", "uploaded_scan", {})
        assert (params["checkpoint_sha256"] != served) == stats["published"]  # the new model, no restart
        assert client.train_status(check_if_running=True) is False  # nothing left running


@pytest.mark.slow
def test_monai_label_clients_sessions_file_upload_and_label_download_against_the_real_server(app_studies, tmp_path):
    """The rest of MONAI Label's own client: a session holding a scan the datastore does not have
    (``create_session``, infer by ``session_id``, ``remove_session``: how a client sends a local
    volume without adding it to the studies), infer with the scan uploaded in the request
    (``file=``), ``download_label`` of a saved label, ``train_stop`` with nothing running, and
    ``wsi_infer`` refused with a message; no image or label of the datastore changes."""
    import shutil

    from conftest import datastore_files
    from monailabel.client import MONAILabelClient
    from monailabel.client.client import MONAILabelClientException
    from server_process import monailabel_server

    studies, checkpoint = app_studies
    scan = tmp_path / "outside" / "local_scan.nii.gz"
    scan.parent.mkdir()
    shutil.copy2(studies / "case_005.nii.gz", scan)
    before = datastore_files(studies)
    env = {"MONAI_LABEL_SESSION_PATH": str(tmp_path / "sessions")}
    with monailabel_server(studies, {"checkpoint": str(checkpoint)}, tmp_path / "server.log", env=env) as url:
        client = MONAILabelClient(url, tmpdir=str(tmp_path / "client"))
        _, by_id = client.infer("medsad", "case_005", {})
        session = client.create_session(str(scan))["session_id"]
        assert Path(client.get_session(session)["image"]).name == scan.name
        image = nib.load(scan)
        for kwargs in ({"session_id": session}, {"file": str(scan)}):
            mask_file, params = client.infer("medsad", "", {}, **kwargs)
            mask = nib.load(mask_file)
            assert mask.shape == image.shape and np.allclose(mask.affine, image.affine, atol=1e-5), kwargs
            assert params["slice_scores"] == by_id["slice_scores"], kwargs  # the same scan, the same answer
        client.remove_session(session)
        with pytest.raises(MONAILabelClientException):
            client.get_session(session)
        label = client.download_label("case_000", "final")
        saved = studies / "labels" / "final" / "case_000.nii.gz"
        assert np.array_equal(nib.load(label).get_fdata(), nib.load(saved).get_fdata())
        assert client.train_stop() is None  # nothing running: nothing to stop, no error
        with pytest.raises(MONAILabelClientException, match="not whole-slide images"):
            client.wsi_infer("medsad", "case_005")
        assert "case_005" in client.datastore()["objects"]
    after = {k: v for k, v in datastore_files(studies).items() if k != "datastore_v2.json"}  # the server's index
    assert after == before
