"""A real ``monailabel start_server`` process driven over HTTP with MONAI Label's own client."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("monailabel")

from conftest import STUDY_UNLABELLED  # noqa: E402
from server_process import monailabel_server  # noqa: E402


@pytest.mark.slow
def test_real_server_info_infer_label_train_infer_activelearning_scoring(app_studies, tmp_path):
    from monailabel.client import MONAILabelClient
    from monailabel.client.client import MONAILabelUtils

    studies, checkpoint = app_studies
    with monailabel_server(studies, {"checkpoint": str(checkpoint)}, tmp_path / "server.log") as url:
        client = MONAILabelClient(url, tmpdir=str(tmp_path / "client"))
        info = client.info()
        assert info["models"]["medsad"]["type"] == "segmentation"

        mask_file, params = client.infer("medsad", "case_005", {})
        params = params if isinstance(params, dict) else json.loads(params)
        image = nib.load(studies / "case_005.nii.gz")
        mask = nib.load(mask_file)
        assert mask.shape == image.shape
        np.testing.assert_allclose(mask.affine, image.affine, atol=1e-5)
        assert len(params["slice_scores"]) == image.shape[2] and params["label_names"] == {"lesion": 1}
        first_model = params["checkpoint_sha256"]

        client.save_label("case_005", str(studies / "labels" / "final" / "case_000.nii.gz"), tag="final")
        status, body, _, _ = MONAILabelUtils.http_method(
            "POST", url, "/train/medsad?run_sync=true", {"max_epochs": 1, "batch_size": 8, "force": True}
        )
        assert status == 200, body
        assert json.loads(body)["best_epoch"] == 1

        _, params = client.infer("medsad", "case_005", {})
        params = params if isinstance(params, dict) else json.loads(params)
        assert params["checkpoint_sha256"] != first_model  # the new model, no restart

        chosen = client.next_sample("medsad_uncertain", {})
        assert chosen["id"] in set(STUDY_UNLABELLED) - {"case_005"}

        status, body, _, _ = MONAILabelUtils.http_method("POST", url, "/scoring/medsad_anomaly?run_sync=true", {})
        assert status == 200, body
        assert json.loads(body)["model"] == params["checkpoint_sha256"]

        # batch inference with the body MONAI Label's API offers (device cuda, multi_gpu) on a CPU server
        body = {"device": "cuda", "multi_gpu": True, "gpus": "all", "label_tag": "original", "max_workers": 1}
        status, body, _, _ = MONAILabelUtils.http_method(
            "POST", url, "/batch/infer/medsad?images=unlabeled&run_sync=true", body
        )
        assert status == 200, body
        originals = {p.name for p in (studies / "labels" / "original").glob("*.nii.gz")}
        assert originals == {f"{name}.nii.gz" for name in set(STUDY_UNLABELLED) - {"case_005"}}

        status, body, _, _ = MONAILabelUtils.http_method("POST", url, "/infer/medsad?image=nope&output=json", {})
        assert status == 404 and "unknown image id" in json.loads(body)["detail"]
        assert client.info()["models"]["medsad"]  # still serving
