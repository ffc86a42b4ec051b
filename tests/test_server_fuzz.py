"""Fuzz the real server with schemathesis from its own ``/openapi.json``: no 5xx, no crash, no
temporary files left, and the datastore changed only by requests that succeeded.

Fuzzed: the info, infer, datastore, active-learning, scoring, train-status and model-info routes,
a bounded number of examples per operation with a fixed seed. Left out, each for a stated
reason: starting a training run (``POST /train…``: a fuzzed ``max_epochs`` would train for hours;
the train request's validation has its own tests), replacing or deleting the served model
(``PUT``/``DELETE /model``: after a delete, 503 "no model" is the right answer), and the
proxy/OHIF/logs/session/batch routes MedSAD does not serve differently from MONAI Label.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("schemathesis")

from conftest import datastore_files  # noqa: E402
from server_process import monailabel_server  # noqa: E402

INCLUDE = r"^/(info|infer|datastore|activelearning|scoring|train|model)"
EXCLUDE = [  # operation ids (FastAPI's: endpoint name, path, method)
    "api_run_model_train__model__post",
    "api_update_model_model__model__put",
    "api_delete_model_model__model__delete",
]


def _listing(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/datastore/?output=all", timeout=60) as res:
        return json.loads(res.read())


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_schemathesis_finds_no_server_error(app_studies, tmp_path):
    studies, checkpoint = app_studies
    uploads = tmp_path / "server_tmp"  # the server's temporary folder (uploads land here)
    uploads.mkdir()
    env = {"TMPDIR": str(uploads), "MONAI_LABEL_AUTO_UPDATE_SCORING": "true"}
    images_before = {k: v for k, v in datastore_files(studies).items() if not k.startswith("labels/")}
    with monailabel_server(studies, {"checkpoint": str(checkpoint)}, tmp_path / "server.log", env=env) as url:
        startup = {p for p in uploads.rglob("*") if p.is_file()}  # MONAI Label's logging config
        cmd = [sys.executable, "-m", "schemathesis.cli", "run", f"{url}/openapi.json"]
        cmd += ["--checks", "not_a_server_error,response_schema_conformance,status_code_conformance"]
        cmd += ["--max-examples", "30", "--seed", "20261202", "--no-shrink"]
        cmd += ["--phases", "examples,coverage,fuzzing", "--include-path-regex", INCLUDE]
        cmd += ["--request-timeout", "120", "--workers", "1", "--generation-database", "none"]
        for operation_id in EXCLUDE:
            cmd += ["--exclude-operation-id", operation_id]
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=840, cwd=tmp_path)
        report = run.stdout[-6000:] + run.stderr[-2000:]
        (tmp_path / "schemathesis.txt").write_text(run.stdout + run.stderr)
        assert run.returncode == 0, f"schemathesis found server errors:\n{report}"
        assert "No issues found" in run.stdout or "passed" in run.stdout, report
        with urllib.request.urlopen(f"{url}/info/", timeout=60) as res:  # still serving
            assert json.loads(res.read())["models"]["medsad"]
        listing = _listing(url)
    leftovers = [p for p in uploads.rglob("*") if p.is_file() and p not in startup]
    archives = [p for p in leftovers if p.name.endswith(".medsad-dataset.zip")]  # the latest export
    assert len(archives) <= 1 and len(leftovers) == len(archives), f"temporary files left behind: {leftovers[:5]}"
    # images the fuzzer did not delete by a successful request are byte-identical
    for name, digest in images_before.items():
        image_id = Path(name).name.split(".")[0]
        if (studies / name).exists():
            assert datastore_files(studies)[name] == digest, name
        else:
            assert image_id not in listing["objects"], f"{name} vanished but is still listed"
    shutil.rmtree(uploads, ignore_errors=True)
