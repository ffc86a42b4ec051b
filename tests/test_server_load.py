"""The real server under load: it keeps answering while a volume is inferred, and concurrent
infer requests all succeed (MONAI Label's own client and ``curl``)."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("monailabel")

from conftest import STUDY_LABELLED, STUDY_UNLABELLED  # noqa: E402
from server_process import monailabel_server  # noqa: E402


def _long_volume(path, slices: int = 480) -> None:
    """A head-like volume with many slices, so one inference takes a while."""
    rng = np.random.default_rng(1)
    x, y = np.meshgrid(np.linspace(-1, 1, 48), np.linspace(-1, 1, 48), indexing="ij")
    head = (x**2 + y**2) < 0.8
    image = np.where(head[..., None], 450 + 50 * rng.standard_normal((48, 48, slices)), 0).astype(np.int16)
    nib.save(nib.Nifti1Image(image, np.diag([1.0, 1.0, 2.0, 1.0])), path)


def _info_latency(url: str) -> float:
    start = time.perf_counter()
    with urllib.request.urlopen(f"{url}/info/", timeout=120) as res:
        assert res.status == 200
        json.loads(res.read())
    return time.perf_counter() - start


@pytest.mark.slow
def test_server_answers_during_inference_and_serves_concurrent_requests(app_studies, tmp_path):
    from monailabel.client import MONAILabelClient

    studies, checkpoint = app_studies
    _long_volume(studies / "long_case.nii.gz")
    files = {p: p.stat().st_mtime_ns for p in studies.rglob("*.nii.gz")}
    with monailabel_server(studies, {"checkpoint": str(checkpoint)}, tmp_path / "server.log") as url:
        client = MONAILabelClient(url, tmpdir=str(tmp_path / "client"))
        client.infer("medsad", "case_100", {})  # model load

        # 1. /info/ is answered while one long volume is inferred
        finished: dict[str, float] = {}

        def long_infer() -> None:
            start = time.perf_counter()
            mask, _ = MONAILabelClient(url, tmpdir=str(tmp_path / "long")).infer("medsad", "long_case", {})
            assert nib.load(mask).shape == (48, 48, 480)
            finished["seconds"] = time.perf_counter() - start

        worker = threading.Thread(target=long_infer)
        worker.start()
        time.sleep(0.3)  # the request is in
        latencies = []
        while worker.is_alive():
            latencies.append(_info_latency(url))
            time.sleep(0.05)
        worker.join()
        assert "seconds" in finished, "the long inference failed (see the server log)"
        # relative, not wall-clock: a blocked event loop makes /info/ wait for the inference
        assert len(latencies) >= 3, f"/info/ answered {len(latencies)}× during a {finished['seconds']:.1f} s inference"
        assert max(latencies) < 0.25 * finished["seconds"], (latencies, finished)

        # 2. eight concurrent requests (MONAI Label's client) all succeed, each with its own answer
        ids = [*STUDY_LABELLED, *STUDY_UNLABELLED, "case_100"]

        def one(i: int) -> tuple[str, tuple[int, ...], int]:
            image_id = ids[i % len(ids)]
            mask, params = MONAILabelClient(url, tmpdir=str(tmp_path / f"c{i}")).infer("medsad", image_id, {})
            params = params if isinstance(params, dict) else json.loads(params)
            return image_id, nib.load(mask).shape, len(params["slice_scores"])

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(one, range(8)))
        for image_id, shape, n_scores in answers:
            assert shape == nib.load(studies / f"{image_id}.nii.gz").shape and n_scores == shape[2]

        # 3. the same route from curl, as documented
        curl = shutil.which("curl")
        if curl is None:
            pytest.skip("curl is not installed: the curl half of this test needs it (apt-get install curl)")
        out = subprocess.run(
            [curl, "-sS", "-f", "-X", "POST", f"{url}/infer/medsad?image=case_004&output=json"],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        assert len(json.loads(out.stdout)["slice_scores"]) == nib.load(studies / "case_004.nii.gz").shape[2]
    # inference leaves the datastore's images and labels as they were
    assert {p: p.stat().st_mtime_ns for p in studies.rglob("*.nii.gz")} == files
