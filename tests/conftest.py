"""Shared test set-up: strictly offline, small thread count, tiny model fixtures."""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
from pathlib import Path

# Offline by design: any hub access fails at once instead of trying the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MONAI_LABEL_TRACKING_ENABLED", "false")

import pytest  # noqa: E402
import torch  # noqa: E402


def _thread_budget() -> int:
    """Torch threads per test process: at most 2, the machine's cores shared among pytest-xdist's
    workers (``make test`` runs two). The small models of the suite gain little from a second
    thread (a `tiny` training step: 0.57 s on one AVX2 core, 0.53 s on two), so two workers of
    one thread each use the cores far better than one of two."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    return max(1, min(2, (os.cpu_count() or 1) // workers))


THREADS = _thread_budget()
torch.set_num_threads(THREADS)
if "PYTEST_XDIST_WORKER" in os.environ:  # subprocesses (CLI, servers) keep to the worker's share
    os.environ["OMP_NUM_THREADS"] = str(THREADS)

APP_DIR = Path(__file__).resolve().parent.parent / "monai_app"

_real_connect = socket.socket.connect


def _loopback_only_connect(self, address):  # type: ignore[no-untyped-def]
    host = address[0] if isinstance(address, tuple) else address
    if isinstance(host, str) and (host.startswith("127.") or host in ("localhost", "::1") or host.startswith("/")):
        return _real_connect(self, address)
    raise RuntimeError(f"test tried to reach the network ({address!r}); tests must stay offline")


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any test that opens a connection outside the loopback interface."""
    monkeypatch.setattr(socket.socket, "connect", _loopback_only_connect)


#: The longest test: started first, on a worker of its own (about half of the suite's time).
LONGEST = "test_learning.py"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The longest test first, then the quick tests, the other slow ones last (each group in
    collection order).

    ``make test`` runs two pytest-xdist workers with ``--dist worksteal``: the first worker gets the
    first half of this order and the second the other half; once the second runs dry it takes
    queued tests from the first, which is busy with the longest test, all but the one queued right
    after it. So the longest test starts at once and runs beside everything else, and what waits
    for it is one quick test.
    """

    def rank(item: pytest.Item) -> int:
        slow = item.get_closest_marker("slow") is not None
        if slow and item.path.name == LONGEST:
            return 0
        return 2 if slow else 1

    items.sort(key=rank)


@pytest.fixture
def tiny_config():
    """The tiny preset (random-init MedSAD-Tiny backbone) at 64 px for speed."""
    from medsad_monai.configs import load_preset

    return load_preset("tiny", image_size=64)


@pytest.fixture
def frozen_tiny_config(tiny_config):
    """Tiny preset with the paper's frozen backbone."""
    return tiny_config.replace(train_backbone=False)


def _write_case(folder, name, shape, affine, rng, with_lesion):
    import nibabel as nib
    import numpy as np

    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    head = (x**2 + y**2 + (z * 0.6) ** 2) < 0.8
    image = np.where(head, 0.45 + 0.05 * rng.standard_normal(shape), 0.0)
    label = np.zeros(shape, np.uint8)
    if with_lesion:
        cx, cy = rng.uniform(-0.35, 0.35, 2)
        r = rng.uniform(0.15, 0.3)
        blob = ((x - cx) ** 2 + (y - cy) ** 2 < r**2) & (np.abs(z) < 0.5) & head
        image[blob] = 0.95
        label[blob] = 1
    image = (np.clip(image, 0, 1) * 1000).astype(np.int16)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(image, affine), folder / "images" / f"{name}.nii.gz")
    (folder / "labels").mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(label, affine), folder / "labels" / f"{name}.nii.gz")


def oblique_affine(degrees: float, spacing: tuple[float, float, float]):
    """A voxel-to-RAS affine rotated ``degrees`` in the axial plane, anisotropic ``spacing``, origin
    (10, -20, 5): near RAS, so its RAS view keeps the voxel order."""
    import numpy as np

    theta = np.deg2rad(degrees)
    (si, sj, sk), c, s = spacing, np.cos(theta), np.sin(theta)
    return np.array([[si * c, -sj * s, 0, 10.0], [si * s, sj * c, 0, -20.0], [0, 0, sk, 5.0], [0, 0, 0, 1]])


def with_familiarity_reference(checkpoint: Path, volumes: list[Path], dest: Path | None = None) -> Path:
    """``checkpoint`` (copied to ``dest`` when given) with a familiarity reference fitted on
    ``volumes``, normalised as that model normalises them, as ``medsad train`` writes it."""
    import shutil

    from medsad_monai.checkpoint import intensity_of, read_checkpoint, write_familiarity
    from medsad_monai.data.volumes import load_volume, normalize_intensity
    from medsad_monai.engine.familiarity import fit_reference, intensity_histogram

    if dest is not None:
        shutil.copy(checkpoint, dest)
        checkpoint = dest
    method = intensity_of(read_checkpoint(checkpoint))
    histograms = [intensity_histogram(normalize_intensity(load_volume(f)[0], method=method)) for f in volumes]
    write_familiarity(checkpoint, fit_reference(histograms, [Path(f).name for f in volumes]))
    return checkpoint


@pytest.fixture(scope="session")
def tiny_volumes(tmp_path_factory):
    """A tiny ``volumes`` (nnU-Net/MSD) dataset: 6 training and 2 test cases, anisotropic and oblique."""
    import numpy as np

    root = tmp_path_factory.mktemp("tiny_volumes")
    rng = np.random.default_rng(0)
    affine = oblique_affine(20.0, (0.9, 0.8, 3.0))
    for split, names in (("Tr", [f"case_{i:03d}" for i in range(6)]), ("Ts", ["case_100", "case_101"])):
        for i, name in enumerate(names):
            _write_case(root / f"tmp{split}", name, (40, 48, 10), affine, rng, with_lesion=i % 3 != 2)
        (root / f"tmp{split}" / "images").rename(root / f"images{split}")
        (root / f"tmp{split}" / "labels").rename(root / f"labels{split}")
    return root


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """An (untrained) tiny MedSAD-CLIP checkpoint at 64 px, written by the real checkpoint code."""
    from medsad_monai.checkpoint import save_checkpoint
    from medsad_monai.configs import load_preset
    from medsad_monai.networks import MedSADCLIP

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "medsad.pt"
    save_checkpoint(MedSADCLIP(load_preset("tiny", image_size=64)), path, extra={"epoch": 0})
    return path


#: images of the app datastore fixture; the first four carry a ``final`` label.
STUDY_LABELLED = ("case_000", "case_001", "case_002", "case_003")
STUDY_UNLABELLED = ("case_004", "case_005", "case_100")


@pytest.fixture
def app_studies(tiny_volumes, tiny_checkpoint, tmp_path):
    """A MONAI Label datastore folder (4 labelled + 3 unlabelled oblique volumes) and a copy of
    the tiny checkpoint to serve: ``(studies_dir, checkpoint_path)``."""
    import shutil

    studies = tmp_path / "studies"
    (studies / "labels" / "final").mkdir(parents=True)
    for name in STUDY_LABELLED + STUDY_UNLABELLED:
        split = "Ts" if name.startswith("case_1") else "Tr"
        shutil.copy2(tiny_volumes / f"images{split}" / f"{name}.nii.gz", studies / f"{name}.nii.gz")
        if name in STUDY_LABELLED:
            shutil.copy2(
                tiny_volumes / f"labels{split}" / f"{name}.nii.gz", studies / "labels" / "final" / f"{name}.nii.gz"
            )
    checkpoint = tmp_path / "model" / "medsad.pt"
    checkpoint.parent.mkdir()
    shutil.copy2(tiny_checkpoint, checkpoint)
    return studies, checkpoint


def datastore_files(studies: Path) -> dict[str, str]:
    """Every file of the datastore folder -> sha256 (lock files excluded)."""
    return {
        str(p.relative_to(studies)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(studies.rglob("*"))
        if p.is_file() and not p.name.endswith(".lock")
    }


@contextlib.contextmanager
def app_client(studies: Path, checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The MONAI Label app in-process: FastAPI's TestClient on MONAI Label's real app, serving
    ``studies`` with ``checkpoint``; ``client.studies`` and ``client.checkpoint`` name them."""
    from fastapi.testclient import TestClient
    from monailabel.config import settings
    from monailabel.interfaces.utils.app import clear_cache

    conf = {"models": "medsad", "checkpoint": str(checkpoint), "batch_size": "4"}
    monkeypatch.setattr(settings, "MONAI_LABEL_APP_DIR", str(APP_DIR))
    monkeypatch.setattr(settings, "MONAI_LABEL_STUDIES", str(studies))
    monkeypatch.setattr(settings, "MONAI_LABEL_APP_CONF", conf)
    monkeypatch.setattr(settings, "MONAI_LABEL_DATASTORE_AUTO_RELOAD", False)
    monkeypatch.setattr(settings, "MONAI_LABEL_AUTO_UPDATE_SCORING", False)
    monkeypatch.setattr(settings, "MONAI_LABEL_SESSION_PATH", str(tmp_path / "sessions"))
    monkeypatch.setattr(settings, "MONAI_LABEL_TRACKING_ENABLED", False)
    from monailabel.app import app

    clear_cache()
    with TestClient(app) as c:
        c.studies = studies
        c.checkpoint = checkpoint
        yield c
    clear_cache()


@pytest.fixture
def client(app_studies, tmp_path, monkeypatch):
    """The MONAI Label app in-process (:func:`app_client`) serving ``app_studies``."""
    studies, checkpoint = app_studies
    with app_client(studies, checkpoint, tmp_path, monkeypatch) as c:
        yield c
