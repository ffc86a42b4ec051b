"""Reading, checking, slicing and writing 3-D medical volumes (NIfTI and NRRD).

Conventions (the whole package relies on them):

- **Array order.** A volume array is indexed ``[i, j, k]`` in the file's own voxel order, for
  both formats (nibabel's order; pynrrd with ``index_order='F'``). Nothing is reoriented, so a
  prediction written back with :func:`save_volume_like` lands on the same voxels.
- **World coordinates.** :class:`Geometry` is expressed in RAS+ (nibabel's world space, also
  MONAI's and Slicer's). NRRD files in LPS/LAS space are converted on reading and written back
  in their original space. An NRRD without a ``space`` field is read as LPS, as ITK does.
- **Slices.** :func:`take_slice` equals ``np.take(array, index, axis)``: no flip, no transpose; the
  rows of a slice run along the first remaining axis and the columns along the second. For the
  default ``axis=2`` of a RAS volume that is rows = i (x), columns = j (y).
  :func:`stack_slices` is its exact inverse.
"""

from __future__ import annotations

__all__ = [
    "VOLUME_SUFFIXES",
    "Geometry",
    "volume_suffix",
    "read_volume_header",
    "load_volume",
    "check_label_matches",
    "save_volume",
    "save_volume_like",
    "take_slice",
    "take_slab",
    "CONTEXT_SLICES",
    "iter_slices",
    "stack_slices",
    "normalize_intensity",
    "INTENSITY_METHODS",
]

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import nrrd
import numpy as np

logger = logging.getLogger(__name__)

VOLUME_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii", ".nrrd", ".nhdr")
_NIFTI = (".nii.gz", ".nii")
_NRRD = (".nrrd", ".nhdr")
# NRRD space name -> sign flip that takes its coordinates to RAS.
_SPACE_TO_RAS: dict[str, tuple[float, float, float]] = {
    "right-anterior-superior": (1.0, 1.0, 1.0),
    "ras": (1.0, 1.0, 1.0),
    "left-anterior-superior": (-1.0, 1.0, 1.0),
    "las": (-1.0, 1.0, 1.0),
    "left-posterior-superior": (-1.0, -1.0, 1.0),
    "lps": (-1.0, -1.0, 1.0),
}
_NRRD_KEEP = (
    "space",
    "space dimension",
    "space directions",
    "space origin",
    "space units",
    "measurement frame",
    "kinds",
)


@dataclass(frozen=True)
class Geometry:
    """Voxel-to-world geometry of a 3-D volume, in RAS+ millimetres.

    Args:
        spacing: voxel size along array axes i, j, k.
        origin: world position of voxel (0, 0, 0).
        direction: 3x3 matrix whose *columns* are the unit world directions of axes i, j, k.
    """

    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[tuple[float, float, float], ...]

    @property
    def voxel_mm3(self) -> float:
        """The volume of one voxel in mm³ (the product of the spacing)."""
        return float(abs(np.prod(self.spacing)))

    @property
    def affine(self) -> np.ndarray:
        """The 4x4 voxel-to-RAS affine, ``direction @ diag(spacing)`` plus ``origin``."""
        out = np.eye(4)
        out[:3, :3] = np.asarray(self.direction) @ np.diag(self.spacing)
        out[:3, 3] = self.origin
        return out

    @classmethod
    def from_affine(cls, affine: np.ndarray) -> Geometry:
        """Build a geometry from a 4x4 voxel-to-RAS affine.

        Raises:
            ValueError: if an axis has zero length.
        """
        affine = np.asarray(affine, dtype=np.float64)
        spacing = np.linalg.norm(affine[:3, :3], axis=0)
        if np.any(spacing <= 0) or not np.all(np.isfinite(affine)):
            raise ValueError(f"degenerate affine (spacing {spacing.tolist()}): {affine.tolist()}")
        direction = affine[:3, :3] / spacing
        return cls(
            spacing=tuple(float(s) for s in spacing),
            origin=tuple(float(o) for o in affine[:3, 3]),
            direction=tuple(tuple(float(v) for v in row) for row in direction),
        )


def volume_suffix(path: str | Path) -> str | None:
    """Return the volume suffix of ``path`` (lower case, e.g. ``'.nii.gz'``) or None."""
    name = Path(path).name.lower()
    return next((s for s in VOLUME_SUFFIXES if name.endswith(s)), None)


def _require_suffix(path: Path) -> str:
    suffix = volume_suffix(path)
    if suffix is None:
        raise ValueError(f"{path}: not a volume file; expected one of {', '.join(VOLUME_SUFFIXES)}")
    return suffix


def _spatial_shape(shape: Sequence[int], path: Path) -> tuple[int, int, int]:
    """Drop trailing singleton dimensions beyond the third; reject anything not 3-D."""
    dims = list(shape)
    while len(dims) > 3 and dims[-1] == 1:
        dims.pop()
    if len(dims) != 3:
        raise ValueError(
            f"{path}: expected a 3-D volume, got shape {tuple(shape)}; split 4-D/multi-channel "
            "volumes into one file per channel (nnU-Net style _0000, _0001, ...)"
        )
    return (int(dims[0]), int(dims[1]), int(dims[2]))


def _nrrd_flip(header: dict, path: Path) -> np.ndarray:
    space = str(header.get("space", "")).strip().lower()
    if not space:
        return np.array(_SPACE_TO_RAS["lps"])
    if space not in _SPACE_TO_RAS:
        logger.warning("%s: NRRD space %r is not RAS/LAS/LPS; reading it as LPS", path, space)
        return np.array(_SPACE_TO_RAS["lps"])
    return np.array(_SPACE_TO_RAS[space])


def _nrrd_geometry(header: dict, path: Path) -> Geometry:
    flip = _nrrd_flip(header, path)
    if "space directions" in header:
        rows = np.asarray(header["space directions"], dtype=np.float64)[:3]
        if rows.shape != (3, 3) or not np.all(np.isfinite(rows)):
            raise ValueError(f"{path}: 'space directions' is not a 3x3 matrix: {rows.tolist()}")
        matrix = rows.T  # columns = axis vectors
    else:
        matrix = np.diag(np.asarray(header.get("spacings", [1.0, 1.0, 1.0]), dtype=np.float64)[:3])
    origin = np.asarray(header.get("space origin", np.zeros(3)), dtype=np.float64)[:3]
    affine = np.eye(4)
    affine[:3, :3] = flip[:, None] * matrix
    affine[:3, 3] = flip * origin
    return Geometry.from_affine(affine)


def read_volume_header(path: str | Path) -> tuple[tuple[int, int, int], Geometry]:
    """Read only the header of a volume: its 3-D shape and geometry.

    Raises:
        ValueError: naming the file if it is unreadable, not 3-D or has a degenerate geometry.
    """
    path = Path(path)
    suffix = _require_suffix(path)
    try:
        if suffix in _NIFTI:
            img = nib.load(str(path))
            shape, geom = img.shape, Geometry.from_affine(img.affine)
        else:
            header = nrrd.read_header(str(path))
            shape, geom = tuple(header["sizes"]), _nrrd_geometry(header, path)
    except ValueError as err:
        if str(path) in str(err):
            raise
        raise ValueError(f"{path}: cannot read volume header ({err})") from err
    except Exception as err:  # nibabel/pynrrd raise many types on corrupt files
        raise ValueError(f"{path}: cannot read volume header ({type(err).__name__}: {err})") from err
    return _spatial_shape(shape, path), geom


#: the largest volume :func:`load_volume` reads (bytes of voxels as stored), ``MEDSAD_MAX_VOLUME_GB``
MAX_VOLUME_BYTES = int(float(os.environ.get("MEDSAD_MAX_VOLUME_GB", "16")) * 2**30)


def _check_declared_size(
    path: Path, shape: Sequence[int], dtype: np.dtype, offset: int | None, uncompressed: bool
) -> None:
    """Refuse a header that declares more voxels than the limit, or (uncompressed files) more
    bytes than the file holds, before anything is allocated."""
    n_bytes = int(np.prod([int(n) for n in shape], dtype=np.float64)) * np.dtype(dtype).itemsize
    if n_bytes > MAX_VOLUME_BYTES:
        raise ValueError(
            f"{path}: the header declares a {'x'.join(str(int(n)) for n in shape)} volume "
            f"({n_bytes / 2**30:.1f} GiB of voxels), above the {MAX_VOLUME_BYTES / 2**30:.0f} GiB limit "
            "(a damaged header? raise MEDSAD_MAX_VOLUME_GB for a genuinely larger volume)"
        )
    if uncompressed and offset is not None:
        size = path.stat().st_size
        if size < offset + n_bytes:
            raise ValueError(
                f"{path}: truncated: the header declares {n_bytes} bytes of voxels from byte {offset}, "
                f"the file holds {size} bytes"
            )


def load_volume(path: str | Path) -> tuple[np.ndarray, Geometry]:
    """Load a 3-D volume and its geometry.

    The array keeps the file's dtype (NIfTI scaling applied) and voxel order (see module doc).

    Args:
        path: a ``.nii``, ``.nii.gz``, ``.nrrd`` or ``.nhdr`` file.

    Returns:
        ``(array, geometry)``, array of shape ``(I, J, K)``.

    Raises:
        ValueError: naming the file if it is unreadable or truncated, not 3-D (a trailing
            singleton dimension is allowed and dropped), not real-valued (complex, RGB or object
            voxels), or contains NaN/inf voxels.
    """
    path = Path(path)
    suffix = _require_suffix(path)
    if path.is_file() and path.stat().st_size == 0:
        raise ValueError(f"{path}: empty file (0 bytes)")
    try:
        if suffix in _NIFTI:
            img = nib.load(str(path))
            _check_declared_size(path, img.shape, img.get_data_dtype(), int(img.dataobj.offset), suffix == ".nii")
            array, geom = np.asanyarray(img.dataobj), Geometry.from_affine(img.affine)
        else:
            # voxel count only (at least one byte each): the data may be compressed or detached
            _check_declared_size(path, tuple(nrrd.read_header(str(path)).get("sizes", ())), np.uint8, None, False)
            array, header = nrrd.read(str(path), index_order="F")
            geom = _nrrd_geometry(header, path)
    except ValueError as err:
        if str(path) in str(err):
            raise
        raise ValueError(f"{path}: cannot read volume ({err})") from err
    except Exception as err:  # EOFError, zlib.error, OSError, nrrd.NRRDError, ...
        raise ValueError(f"{path}: cannot read volume ({type(err).__name__}: {err})") from err
    array = np.asarray(array)
    if array.dtype.kind == "b":
        raise ValueError(f"{path}: voxels are boolean; this looks like a mask, not an intensity image")
    if array.dtype.kind not in "iuf":  # complex, object, string, structured (RGB NIfTI) voxels
        what = "complex-valued" if array.dtype.kind == "c" else f"of dtype {array.dtype}"
        raise ValueError(
            f"{path}: voxels are {what}; MedSAD reads one real intensity per voxel "
            "(save the magnitude, or one channel, as a real-valued volume first)"
        )
    array = array.reshape(_spatial_shape(array.shape, path))
    if np.issubdtype(array.dtype, np.floating):
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        if bad:
            raise ValueError(f"{path}: {bad} NaN/inf voxels; fix or mask them before use")
    return array, geom


def check_label_matches(
    image_geom: Geometry,
    label_geom: Geometry,
    image_shape: Sequence[int],
    label_shape: Sequence[int],
    path: str | Path,
    rtol: float = 1e-4,
) -> None:
    """Check that a label volume lies on exactly the image's voxel grid.

    Spacing is compared with relative tolerance ``rtol``; direction cosines with absolute
    tolerance ``rtol``; origins with absolute tolerance ``rtol * max(spacing)`` (a fraction of a
    voxel).

    Args:
        image_geom: geometry of the image.
        label_geom: geometry of the label.
        image_shape: spatial shape of the image.
        label_shape: spatial shape of the label.
        path: the label file, named in the error.

    Raises:
        ValueError: naming ``path`` and the differing values.
    """
    if tuple(image_shape) != tuple(label_shape):
        raise ValueError(f"{path}: label shape {tuple(label_shape)} != image shape {tuple(image_shape)}")
    spacing_i, spacing_l = np.asarray(image_geom.spacing), np.asarray(label_geom.spacing)
    checks = (
        ("spacing", spacing_i, spacing_l, 0.0, rtol),
        ("origin", np.asarray(image_geom.origin), np.asarray(label_geom.origin), rtol * float(spacing_i.max()), 0.0),
        ("direction", np.asarray(image_geom.direction), np.asarray(label_geom.direction), rtol, 0.0),
    )
    for name, a, b, atol, rel in checks:
        if not np.allclose(a, b, rtol=rel, atol=atol):
            raise ValueError(
                f"{path}: label {name} {np.round(b, 6).tolist()} differs from image {name} "
                f"{np.round(a, 6).tolist()}; resample the label onto the image grid"
            )


def _writable(array: np.ndarray) -> np.ndarray:
    """Map dtypes that NIfTI/NRRD readers handle badly to safe ones."""
    array = np.asarray(array)
    if array.dtype == np.bool_:
        return array.astype(np.uint8)
    if array.dtype == np.float64 or array.dtype == np.float16:
        return array.astype(np.float32)
    if array.dtype == np.int64:
        if array.size == 0 or (array.min() >= np.iinfo(np.int32).min and array.max() <= np.iinfo(np.int32).max):
            return array.astype(np.int32)
    return array


def _save_nifti_like(array: np.ndarray, reference: Path, out_path: Path) -> None:
    ref = nib.load(str(reference))
    header = ref.header.copy()
    img = type(ref)(array, ref.affine, header=header, dtype=array.dtype)
    qform, qcode = ref.header.get_qform(coded=True)
    sform, scode = ref.header.get_sform(coded=True)
    if qform is not None:
        img.set_qform(qform, code=int(qcode))
    if sform is not None:
        img.set_sform(sform, code=int(scode))
    img.header.set_slope_inter(1.0, 0.0)
    nib.save(img, str(out_path))


def _nrrd_header_like(reference: Path) -> dict:
    ref = nrrd.read_header(str(reference))
    header = {k: ref[k] for k in _NRRD_KEEP if k in ref}
    if "space directions" in header:
        header["space directions"] = np.asarray(header["space directions"], dtype=np.float64)[:3]
    if "kinds" in header:
        header["kinds"] = list(header["kinds"])[:3]
    return header


def _nrrd_header_from_geometry(geom: Geometry) -> dict:
    flip = np.asarray(_SPACE_TO_RAS["lps"])  # RAS -> LPS is the same sign flip
    matrix = flip[:, None] * (np.asarray(geom.direction) @ np.diag(geom.spacing))
    return {
        "space": "left-posterior-superior",
        "space directions": matrix.T,
        "space origin": flip * np.asarray(geom.origin),
        "kinds": ["domain", "domain", "domain"],
    }


def _save_nifti(array: np.ndarray, geometry: Geometry, out_path: Path) -> None:
    img = nib.Nifti1Image(array, geometry.affine, dtype=array.dtype)
    img.set_qform(geometry.affine, code=1)  # scanner coordinates
    img.set_sform(geometry.affine, code=1)
    nib.save(img, str(out_path))


def save_volume(array: np.ndarray, geometry: Geometry, out_path: str | Path) -> Path:
    """Write an ``(I, J, K)`` ``array`` on ``geometry``'s grid as NIfTI (``out_path`` ends in
    ``.nii`` or ``.nii.gz``; bool is written as uint8, float64 as float32): the mask of an input
    that is no NIfTI/NRRD file (a DICOM series).

    Raises:
        ValueError: another suffix.
    """
    out_path = Path(out_path)
    if _require_suffix(out_path) not in _NIFTI:
        raise ValueError(f"{out_path}: save_volume writes NIfTI (.nii / .nii.gz)")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    _save_nifti(_writable(array), geometry, out_path)
    return out_path


def save_volume_like(array: np.ndarray, reference_path: str | Path, out_path: str | Path) -> Path:
    """Write ``array`` with exactly the geometry of ``reference_path``.

    The output format follows ``out_path``'s extension. Same-format writes copy the reference
    header (NIfTI: affine, qform and sform with their codes, units; NRRD: space, space directions,
    space origin, kinds, measurement frame); cross-format writes convert through :class:`Geometry`
    (NRRD is then written in LPS space).

    Args:
        array: ``(I, J, K)`` array in the reference's voxel order (bool is written as uint8,
            float64 as float32).
        reference_path: the volume whose grid ``array`` lies on.
        out_path: output file; its parent folder is created.

    Returns:
        ``out_path`` as a Path.

    Raises:
        ValueError: if the array shape differs from the reference's spatial shape or a format is
            not supported.
    """
    reference_path, out_path = Path(reference_path), Path(out_path)
    ref_suffix, out_suffix = _require_suffix(reference_path), _require_suffix(out_path)
    ref_shape, ref_geom = read_volume_header(reference_path)
    array = _writable(array)
    if array.shape != ref_shape:
        raise ValueError(f"array shape {array.shape} != shape {ref_shape} of reference {reference_path}")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if out_suffix in _NIFTI:
        if ref_suffix in _NIFTI:
            _save_nifti_like(array, reference_path, out_path)
        else:
            _save_nifti(array, ref_geom, out_path)
    else:
        header = _nrrd_header_like(reference_path) if ref_suffix in _NRRD else _nrrd_header_from_geometry(ref_geom)
        header["encoding"] = "gzip"
        nrrd.write(str(out_path), array, header, index_order="F")
    logger.debug("wrote %s with the geometry of %s", out_path, reference_path)
    return out_path


def _check_axis(array: np.ndarray, axis: int) -> int:
    if array.ndim != 3:
        raise ValueError(f"expected a 3-D volume, got shape {array.shape}")
    if axis not in (0, 1, 2, -1, -2, -3):
        raise ValueError(f"slice axis must be 0, 1 or 2, got {axis}")
    return axis % 3


def take_slice(array: np.ndarray, axis: int, index: int) -> np.ndarray:
    """Return slice ``index`` along ``axis`` as a 2-D array (rows, cols) = remaining axes in order.

    Raises:
        ValueError: if the array is not 3-D, the axis is invalid, or the index out of range.
    """
    axis = _check_axis(array, axis)
    if not 0 <= index < array.shape[axis]:
        raise ValueError(f"slice index {index} out of range for axis {axis} of size {array.shape[axis]}")
    return _slice_copy(array, axis, index)


def _slice_copy(array: np.ndarray, axis: int, index: int) -> np.ndarray:
    """``np.take(array, index, axis)`` by basic indexing: the same fresh C-ordered copy, but a
    strided view copied at memory speed (``np.take`` walks a volume slice ~300× slower)."""
    where: list[Any] = [slice(None)] * array.ndim
    where[axis] = index
    return np.array(array[tuple(where)], order="C", copy=True)


def take_slab(array: np.ndarray, axis: int, index: int, context: int = 0) -> np.ndarray:
    """Slice ``index`` with ``context`` neighbours on each side as channels: (H, W) for
    ``context`` 0 (:func:`take_slice`), (H, W, 3) = slices ``index - 1, index, index + 1`` for 1.

    At the first and last slice the missing neighbour repeats the slice itself (edge padding).

    Raises:
        ValueError: as :func:`take_slice`, or ``context`` other than 0 or 1.
    """
    if context not in CONTEXT_SLICES:
        raise ValueError(f"context slices must be one of {CONTEXT_SLICES}, got {context}")
    centre = take_slice(array, axis, index)
    if context == 0:
        return centre
    n = array.shape[_check_axis(array, axis)]
    below = _slice_copy(array, axis, max(index - 1, 0))
    above = _slice_copy(array, axis, min(index + 1, n - 1))
    return np.stack([below, centre, above], axis=-1)


def iter_slices(array: np.ndarray, axis: int) -> Iterator[np.ndarray]:
    """Yield every slice along ``axis`` in index order (same orientation as :func:`take_slice`)."""
    axis = _check_axis(array, axis)
    for index in range(array.shape[axis]):
        yield _slice_copy(array, axis, index)


def stack_slices(slices: Sequence[np.ndarray], axis: int) -> np.ndarray:
    """Inverse of :func:`iter_slices`: stack 2-D slices back into a volume along ``axis``."""
    if axis not in (0, 1, 2, -1, -2, -3):
        raise ValueError(f"slice axis must be 0, 1 or 2, got {axis}")
    return np.stack(list(slices), axis=axis % 3)


#: Neighbouring slices a model may see on each side of a volume slice (:func:`take_slab`).
CONTEXT_SLICES: tuple[int, ...] = (0, 1)

#: Per-volume intensity normalisations (:func:`normalize_intensity`).
INTENSITY_METHODS: tuple[str, ...] = ("percentile", "foreground")
#: Where ``foreground`` puts the median of the foreground (tissue) intensities.
FOREGROUND_MEDIAN = 0.5


def normalize_intensity(
    volume: np.ndarray, lower: float = 0.5, upper: float = 99.5, method: str = "percentile"
) -> np.ndarray:
    """A volume's intensities mapped to ``[0, 1]`` float32 (the model's input range).

    - ``percentile``: clip to the ``[lower, upper]`` percentiles of all voxels and rescale. The
      upper percentile is whatever is brightest — white matter on a skull-stripped T1, scalp fat
      or vessels on a head with its skull — so the brain's grey level depends on what else the
      field of view holds.
    - ``foreground``: the ``lower`` percentile (background) goes to 0 and the median of the
      foreground — voxels above the Otsu threshold (scikit-image) — to
      :data:`FOREGROUND_MEDIAN`; clipped to ``[0, 1]``. Invariant to a scanner's gain and offset
      and much less sensitive to skull and scalp (docs/data.md: the measurement).

    A constant volume maps to zeros.
    """
    volume = np.asarray(volume, dtype=np.float32)
    if method not in INTENSITY_METHODS:
        raise ValueError(f"intensity normalisation {method!r}: expected one of {', '.join(INTENSITY_METHODS)}")
    if not 0.0 <= lower < upper <= 100.0:
        raise ValueError(f"need 0 <= lower < upper <= 100, got lower={lower}, upper={upper}")
    lo, hi = (float(v) for v in np.percentile(volume, [lower, upper]))
    if hi <= lo:
        return np.zeros_like(volume)
    if method == "foreground":
        from skimage.filters import threshold_otsu

        foreground = volume[volume > threshold_otsu(volume.ravel())]
        median = float(np.median(foreground)) if foreground.size else hi
        if median <= lo:
            return np.zeros_like(volume)
        return np.clip((volume - lo) * (FOREGROUND_MEDIAN / (median - lo)), 0.0, 1.0).astype(np.float32)
    return ((np.clip(volume, lo, hi) - lo) / (hi - lo)).astype(np.float32)
