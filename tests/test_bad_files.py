"""A corpus of damaged and unusual files through every way in: ``medsad infer``, ``medsad
check-data``, the app's upload-and-infer route and its datastore upload. Each file either works
(its mask keeps the input's geometry) or fails with one clear message naming the file — never a
traceback — and the input, the datastore and the temporary folder are left as they were."""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import pytest

from medsad_monai.cli import main

AFFINE = np.diag([1.0, 1.0, 2.0, 1.0])

#: file name -> None (works) or a phrase the one-line error must contain
EXPECTED: dict[str, str | None] = {
    "truncated.nii.gz": "cannot read",
    "text.nii.gz": "not a gzip file",
    "empty.nrrd": "empty file",
    "header_only.nrrd": "cannot read",
    "four_d.nii.gz": "3-D volume",
    "nan.nii.gz": "NaN",
    "complex.nii.gz": "complex-valued",
    "huge_header.nii": "above the 16 GiB limit",
    "short_raw.nii": "truncated",
    "all_zero.nii.gz": None,
    "three_by_three.nii.gz": None,
    "flipped.nii.gz": None,
    "one_slice.nii.gz": None,
}


def _corpus(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    good = (rng.random((40, 48, 6)) * 1000).astype(np.int16)
    files = {name: folder / name for name in EXPECTED}

    def save(name: str, array: np.ndarray, affine: np.ndarray = AFFINE) -> None:
        nib.save(nib.Nifti1Image(array, affine), files[name])

    save("four_d.nii.gz", np.stack([good, good], -1))
    nan = good.astype(np.float32)
    nan[3, 3, 3] = np.nan
    save("nan.nii.gz", nan)
    save("complex.nii.gz", good.astype(np.complex64))
    save("all_zero.nii.gz", np.zeros_like(good))
    save("three_by_three.nii.gz", good[:3, :3])
    flipped = AFFINE.copy()
    flipped[0, 0], flipped[0, 3] = -1.0, 39.0
    save("flipped.nii.gz", good, flipped)
    save("one_slice.nii.gz", good[:, :, :1])
    save("truncated.nii.gz", good)
    raw = files["truncated.nii.gz"].read_bytes()
    files["truncated.nii.gz"].write_bytes(raw[: len(raw) // 2])
    files["text.nii.gz"].write_text("this is not an image\n")
    files["empty.nrrd"].write_bytes(b"")
    nrrd.write(str(files["header_only.nrrd"]), good)
    raw = files["header_only.nrrd"].read_bytes()
    files["header_only.nrrd"].write_bytes(raw[: raw.index(b"\n\n") + 2])
    huge = nib.Nifti1Image(np.zeros((2, 2, 2), np.int16), AFFINE)
    huge.header.set_data_shape((30000, 30000, 30000))  # 50 TB declared in a 368-byte file
    files["huge_header.nii"].write_bytes(huge.header.binaryblock + bytes(16))
    save("short_raw.nii", good)
    raw = files["short_raw.nii"].read_bytes()
    files["short_raw.nii"].write_bytes(raw[: len(raw) - 100])
    return files


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    return _corpus(tmp_path_factory.mktemp("corpus"))


def test_medsad_infer_on_the_corpus(corpus, tiny_checkpoint, tmp_path, capsys):
    for name, expected in EXPECTED.items():
        before = _digest(corpus[name])
        out = tmp_path / name.split(".")[0]
        code = main(["infer", "--ckpt", str(tiny_checkpoint), "--input", str(corpus[name]), "--out", str(out)])
        captured = capsys.readouterr()
        assert "Traceback" not in captured.err + captured.out, name
        assert _digest(corpus[name]) == before, f"{name}: the input changed"
        if expected is None:
            assert code == 0, f"{name}: {captured.err}"
            mask = nib.load(next(out.glob("*_mask.nii*")))
            image = nib.load(corpus[name])
            assert mask.shape == image.shape and np.allclose(mask.affine, image.affine, atol=1e-5), name
        else:
            lines = [line for line in captured.err.splitlines() if "error:" in line]
            assert code == 2 and len(lines) == 1, f"{name}: exit {code}, stderr {captured.err!r}"
            assert expected in lines[0] and name in lines[0], f"{name}: {lines[0]}"
            assert not out.exists() or not list(out.glob("*_mask*")), f"{name}: a mask was written"


def test_check_data_names_the_bad_volume(corpus, tiny_volumes, tmp_path, capsys):
    for name, expected in EXPECTED.items():
        if expected is None:
            continue
        data = tmp_path / name.split(".")[0]
        shutil.copytree(tiny_volumes, data)
        suffix = "".join(Path(name).suffixes)
        for folder in ("imagesTr", "labelsTr"):  # one bad image, with a label of the same name
            target = data / folder / f"case_000{suffix}"
            for old in (data / folder).glob("case_000.*"):
                old.unlink()
            shutil.copy2(corpus[name] if folder == "imagesTr" else corpus["all_zero.nii.gz"], target)
        code = main(["check-data", str(data)])
        captured = capsys.readouterr()
        assert "Traceback" not in captured.err + captured.out, name
        assert code != 0 or "case_000" in captured.out, f"{name}: check-data passed silently"
        assert "case_000" in captured.err + captured.out, f"{name}: {captured.err}{captured.out}"


def test_the_app_answers_every_corpus_file_clearly_and_keeps_its_datastore(client, corpus, tmp_path, monkeypatch):
    from conftest import datastore_files

    uploads = tmp_path / "uploads"  # MONAI Label writes each uploaded file here for the request
    uploads.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(uploads))
    for name, expected in EXPECTED.items():
        before = datastore_files(client.studies), client.get("/datastore/?output=all").json()
        body = corpus[name].read_bytes()
        res = client.post(
            "/infer/medsad?output=json", data={"params": "{}"}, files={"file": (name, body, "application/octet-stream")}
        )
        if expected is None:
            assert res.status_code == 200, f"{name}: {res.text}"
            assert len(res.json()["slice_scores"]) == nib.load(corpus[name]).shape[2]
        else:
            assert res.status_code == 422, f"{name}: {res.status_code} {res.text}"
            detail = res.json()["detail"]
            assert expected in detail and "Traceback" not in detail, f"{name}: {detail}"
        assert (datastore_files(client.studies), client.get("/datastore/?output=all").json()) == before, name

        image_id = "upload_" + name.split(".")[0]
        res = client.put(f"/datastore/?image={image_id}", files={"file": (name, body, "application/octet-stream")})
        if expected is None:
            assert res.status_code == 200, f"{name}: {res.text}"
            assert image_id in client.get("/datastore/?output=all").json()["objects"]
        else:
            assert res.status_code == 422 and expected in res.json()["detail"], f"{name}: {res.text}"
            assert (datastore_files(client.studies), client.get("/datastore/?output=all").json()) == before, name
        # as a label of a datastore image: unreadable, or not on the image's voxel grid
        before = datastore_files(client.studies), client.get("/datastore/?output=all").json()
        res = client.put("/datastore/label?image=case_004&tag=final", files={"label": (name, body, "application/gzip")})
        assert res.status_code == 422 and "Traceback" not in res.json()["detail"], f"{name}: {res.text}"
        assert (datastore_files(client.studies), client.get("/datastore/?output=all").json()) == before, name
        assert not list(uploads.iterdir()), f"{name}: temporary upload files left behind"
    assert json.loads(client.get("/info/").text)["models"]["medsad"]  # still serving
