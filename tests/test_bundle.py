"""``medsad export-bundle``: a MONAI bundle that MONAI's own tools read and run, with the mask
of ``medsad infer``."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medsad_monai.bundle import BUNDLE_FILES, SCHEMA_URL, export_bundle
from medsad_monai.cli import main

# The required top-level keys of the Model Zoo metadata schema that SCHEMA_URL names
# (meta_schema_20240725.json) and of a tensor format specifier in its network_data_format.
# No copy of the schema is installed (no ``meta_schema*.json`` in monai or monailabel) and the
# tests are offline, so these lists were taken from the schema by hand;
# ``monai.bundle.verify_metadata`` runs as well whenever a local copy is found.
REQUIRED_KEYS = (
    "schema",
    "version",
    "monai_version",
    "pytorch_version",
    "numpy_version",
    "required_packages_version",
    "task",
    "description",
    "authors",
    "copyright",
    "network_data_format",
)
TENSOR_KEYS = ("type", "format", "num_channels", "spatial_shape", "dtype", "value_range")

VOLUME = "imagesTs/case_100.nii.gz"


def _local_schema() -> Path | None:
    import monai

    roots = [Path(monai.__file__).parent]
    spec = importlib.util.find_spec("monailabel")
    if spec is not None and spec.origin:
        roots.append(Path(spec.origin).parent)
    return next((p for root in roots for p in root.rglob("meta_schema*.json")), None)


@pytest.fixture(scope="module")
def calibrated_ckpt(tiny_checkpoint, tiny_volumes, tmp_path_factory):
    """The tiny checkpoint with a calibration block whose map threshold gives the test volume a
    mask that is neither empty nor full, and a minimum lesion size that removes something."""
    from medsad_monai.checkpoint import write_calibration
    from medsad_monai.engine.decision import OperatingPoint
    from medsad_monai.engine.inference import Predictor, predict_file

    path = tmp_path_factory.mktemp("calibrated") / "best.pt"
    shutil.copy2(tiny_checkpoint, path)
    result = predict_file(Predictor.from_checkpoint(path, device="cpu"), tiny_volumes / VOLUME)
    inside = result.probability[result.probability > 0]
    threshold = float(np.clip(np.quantile(inside, 0.8), 0.01, 0.99))
    op = OperatingPoint(
        map_threshold=threshold,
        min_lesion_voxels=3,
        source="calibrate",
        objective={"map": "test"},
        validation={"cases": ["case_100"], "n_volumes": 1, "warnings": ["only 1 validation case(s): a test"]},
    )
    write_calibration(path, op)
    return path


@pytest.fixture(scope="module")
def bundle(calibrated_ckpt, tmp_path_factory):
    return export_bundle(calibrated_ckpt, tmp_path_factory.mktemp("export") / "bundle")


def test_export_writes_every_file_and_model_zoo_metadata(bundle, calibrated_ckpt):
    for name in BUNDLE_FILES:
        assert (bundle / name).is_file(), name
    assert (bundle / "models" / "model.pt").read_bytes() == calibrated_ckpt.read_bytes()

    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    assert not missing, missing
    assert meta["schema"] == SCHEMA_URL
    assert {"open_clip_torch", "medsad_monai"} <= set(meta["required_packages_version"])
    for key in ("name", "changelog", "intended_use", "data_source"):
        assert meta[key], key
    image = meta["network_data_format"]["inputs"]["image"]
    pred = meta["network_data_format"]["outputs"]["pred"]
    for spec in (image, pred):
        assert not [k for k in TENSOR_KEYS if k not in spec]
        assert spec["spatial_shape"] == [64, 64] and spec["is_patch_data"] is False
    assert (
        image["type"],
        image["format"],
        image["modality"],
        image["num_channels"],
        image["dtype"],
        image["value_range"],
    ) == ("image", "magnitude", "MR", 3, "float32", [0, 1])
    assert (pred["type"], pred["format"], pred["num_channels"]) == ("probabilities", "segmentation", 2)
    assert pred["channel_def"] == {"0": "background", "1": "lesion"}
    # no run folder beside the checkpoint: the training data are unknown -> the generic notice
    for key in ("description", "intended_use"):
        assert "research use only, not for clinical use" in meta[key].lower()
    assert "synthetic demo" not in meta["intended_use"].lower()

    saved = torch.load(calibrated_ckpt, weights_only=True)["calibration"]
    op = meta["medsad"]["operating_point"]
    assert (op["map_threshold"], op["min_lesion_voxels"], op["source"]) == (
        saved["map_threshold"],
        saved["min_lesion_voxels"],
        "calibrate",
    )
    config = json.loads((bundle / "configs" / "inference.json").read_text())
    assert config["operating_point"]["map_threshold"] == saved["map_threshold"]
    for key in (
        "bundle_root",
        "device",
        "dataset_dir",
        "input",
        "output_dir",
        "checkpoint",
        "network_def",
        "network",
        "preprocessing",
        "inferer",
        "postprocessing",
        "writer",
        "dataset",
        "evaluator",
        "initialize",
        "run",
        "finalize",
    ):
        assert key in config, key

    readme = (bundle / "docs" / "README.md").read_text()
    assert "python -m monai.bundle run" in readme and "calibration" in readme and "monaibundle" in readme
    assert str(saved["map_threshold"]) in readme
    licence = (bundle / "LICENSE").read_text()
    assert "Apache-2.0" in licence and "https://www.apache.org/licenses/LICENSE-2.0" in licence
    assert "not for clinical use" in licence.lower()

    schema = _local_schema()
    if schema is not None:  # never downloads: verify_metadata finds the file already there
        from monai.bundle import verify_metadata

        verify_metadata(meta_file=str(bundle / "configs" / "metadata.json"), filepath=str(schema))


def test_sample_data_checkpoint_is_marked_synthetic(tiny_checkpoint, tmp_path):
    data = tmp_path / "sample_data" / "volumes"
    data.mkdir(parents=True)
    (data / "dataset.json").write_text(json.dumps({"name": "MedSAD-synthetic-MNI152", "description": "Synthetic"}))
    run = tmp_path / "runs" / "demo"
    run.mkdir(parents=True)
    shutil.copy2(tiny_checkpoint, run / "best.pt")
    (run / "config.json").write_text(json.dumps({"options": {"data": "sample_data/volumes", "out": "runs/demo"}}))
    out = export_bundle(run / "best.pt", tmp_path / "bundle")
    meta = json.loads((out / "configs" / "metadata.json").read_text())
    assert meta["medsad"]["training_data"]["synthetic"] is True
    assert meta["medsad"]["training_data"]["dataset"] == "MedSAD-synthetic-MNI152"
    for text in (
        meta["description"],
        meta["intended_use"],
        (out / "LICENSE").read_text(),
        (out / "docs" / "README.md").read_text(),
    ):
        assert "synthetic demo, not for clinical use" in text.lower()


def test_monai_config_parser_reads_the_bundle(bundle, tiny_volumes):
    from monai.bundle import ConfigParser, ConfigWorkflow

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser.read_meta(str(bundle / "configs" / "metadata.json"))
    parser["bundle_root"] = str(bundle)
    network = parser.get_parsed_content("network_def")
    assert isinstance(network, torch.nn.Module) and network.image_size == 64
    assert parser.get_parsed_content("checkpoint") == str(bundle / "models" / "model.pt")

    # every required property of MONAI's inference workflow is there
    workflow = ConfigWorkflow(
        config_file=str(bundle / "configs" / "inference.json"),
        meta_file=str(bundle / "configs" / "metadata.json"),
        logging_file=False,
        workflow_type="infer",
        bundle_root=str(bundle),
        input=str(tiny_volumes / VOLUME),
    )
    workflow.initialize()
    assert workflow.check_properties() == []
    # the bundle's operating point carries the calibration's warnings into every result
    assert parser.get_parsed_content("operating_point").summary()["warnings"] == ["only 1 validation case(s): a test"]


def test_monai_bundle_run_writes_the_mask_of_medsad_infer(bundle, calibrated_ckpt, tiny_volumes, tmp_path):
    volume = tiny_volumes / VOLUME
    ref_dir, out_dir = tmp_path / "medsad_infer", tmp_path / "bundle_run"
    assert main(["infer", "--ckpt", str(calibrated_ckpt), "--input", str(volume), "--out", str(ref_dir)]) == 0

    args = [
        "--config_file",
        "configs/inference.json",
        "--meta_file",
        "configs/metadata.json",
        "--input",
        str(volume),
        "--output_dir",
        str(out_dir),
    ]
    cmd = [sys.executable, "-m", "monai.bundle", "run", *args]  # MONAI's own command line (needs `fire`)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run(cmd, check=False, cwd=bundle, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])

    name = "case_100_mask.nii.gz"
    ref, got = nib.load(ref_dir / name), nib.load(out_dir / name)
    ref_mask, got_mask = np.asarray(ref.dataobj), np.asarray(got.dataobj)
    assert 0 < int(ref_mask.sum()) < ref_mask.size  # the operating point leaves a real decision
    assert got_mask.dtype == ref_mask.dtype and np.array_equal(got_mask, ref_mask)
    assert np.array_equal(got.affine, ref.affine)
    ref_scores = json.loads((ref_dir / "case_100_scores.json").read_text())
    got_scores = json.loads((out_dir / "case_100_scores.json").read_text())
    for scores in (ref_scores, got_scores):
        scores.pop("mask"), scores.pop("scores")
    assert got_scores == ref_scores


def test_export_bundle_cli_errors_are_clear(tmp_path, capsys, tiny_checkpoint):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a checkpoint")
    out = tmp_path / "bundle"
    assert main(["export-bundle", "--ckpt", str(notes), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("medsad export-bundle: error:") and "notes.txt" in err and "not a MedSAD checkpoint" in err
    assert len(err.strip().splitlines()) == 1

    other = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, other)
    assert main(["export-bundle", "--ckpt", str(other), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "other.pt" in err and "not a MedSAD checkpoint" in err
    assert main(["export-bundle", "--ckpt", str(tmp_path / "missing.pt"), "--out", str(out)]) == 2
    assert "missing.pt" in capsys.readouterr().err and not out.exists()

    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert main(["export-bundle", "--ckpt", str(tiny_checkpoint), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err and not (out / "configs").exists()
    assert main(["export-bundle", "--ckpt", str(tiny_checkpoint), "--out", str(out), "--overwrite"]) == 0
    assert all((out / name).is_file() for name in BUNDLE_FILES) and (out / "keep.txt").is_file()


def test_a_mirror_channel_checkpoint_exports_an_inferer_that_feeds_the_mirror(tmp_path, tiny_volumes):
    from monai.bundle import ConfigParser

    from medsad_monai.checkpoint import save_checkpoint
    from medsad_monai.configs import load_preset
    from medsad_monai.data.volumes import load_volume, normalize_intensity
    from medsad_monai.engine.inference import Predictor
    from medsad_monai.networks import MedSADCLIP

    torch.manual_seed(1)
    ckpt = save_checkpoint(MedSADCLIP(load_preset("tiny", image_size=64)), tmp_path / "mirror.pt", mirror_channel=True)
    out = export_bundle(ckpt, tmp_path / "bundle")
    config = json.loads((out / "configs" / "inference.json").read_text())
    assert config["mirror_channel"] is True
    meta = json.loads((out / "configs" / "metadata.json").read_text())
    assert "mirrored left-right" in meta["network_data_format"]["inputs"]["image"]["channel_def"]["1"]
    assert "left-right mirror" in (out / "docs" / "README.md").read_text()
    parser = ConfigParser()
    parser.read_config(str(out / "configs" / "inference.json"))
    parser["bundle_root"] = str(out)
    parser["device"] = "cpu"
    parser["precision"] = "fp32"
    inferer, network = parser.get_parsed_content("inferer"), parser.get_parsed_content("network")
    volume = normalize_intensity(load_volume(tiny_volumes / VOLUME)[0], method="percentile")
    got = inferer(volume, network)
    want = Predictor.from_checkpoint(ckpt, device="cpu", precision="fp32").predict_volume(volume, axis=2)
    np.testing.assert_allclose(got.probability, want.probability, atol=1e-5)
    plain = Predictor(network, device="cpu", precision="fp32").predict_volume(volume, axis=2)
    assert not np.allclose(plain.probability, want.probability, atol=1e-4)


def test_a_context_slices_checkpoint_exports_an_inferer_that_feeds_the_neighbours(tmp_path, tiny_volumes):
    """A model trained on slabs (``--context-slices 1``): the bundle's inferer, as MONAI's
    config parser builds it, predicts what ``Predictor.from_checkpoint`` predicts."""
    from monai.bundle import ConfigParser

    from medsad_monai.checkpoint import save_checkpoint
    from medsad_monai.configs import load_preset
    from medsad_monai.data.volumes import load_volume, normalize_intensity
    from medsad_monai.engine.inference import Predictor
    from medsad_monai.networks import MedSADCLIP

    torch.manual_seed(1)
    ckpt = save_checkpoint(MedSADCLIP(load_preset("tiny", image_size=64)), tmp_path / "slabs.pt", context_slices=1)
    out = export_bundle(ckpt, tmp_path / "bundle")
    config = json.loads((out / "configs" / "inference.json").read_text())
    assert config["context_slices"] == 1
    meta = json.loads((out / "configs" / "metadata.json").read_text())
    assert meta["network_data_format"]["inputs"]["image"]["channel_def"]["0"] == "previous slice"
    assert "two neighbouring slices" in (out / "docs" / "README.md").read_text()

    parser = ConfigParser()
    parser.read_config(str(out / "configs" / "inference.json"))
    parser["bundle_root"] = str(out)
    parser["device"] = "cpu"
    parser["precision"] = "fp32"  # Predictor.from_checkpoint's default on a CPU (auto = bf16 on CPUs with bf16 units)
    inferer, network = parser.get_parsed_content("inferer"), parser.get_parsed_content("network")
    volume = normalize_intensity(load_volume(tiny_volumes / VOLUME)[0], method="percentile")
    got = inferer(volume, network)
    want = Predictor.from_checkpoint(ckpt, device="cpu").predict_volume(volume, axis=2)
    assert got.probability.shape == volume.shape
    np.testing.assert_allclose(got.probability, want.probability, atol=1e-5)
