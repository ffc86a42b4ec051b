"""DICOM series as input volumes for ``medsad infer``.

A folder of DICOM files holds one or more series; each series is one volume. The series are
found and read with MONAI's :class:`~monai.data.ITKReader` (ITK's GDCM underneath: slices sorted
by position, rescale slope and intercept applied) and returned as the ``(I, J, K)`` array and
RAS :class:`~medsad_monai.data.volumes.Geometry` that :func:`~medsad_monai.data.volumes.load_volume`
gives for NIfTI and NRRD, so everything downstream (the RAS view, lesion sizes in mm³, the mask
written in the input's geometry) is the same. The mask of a series is written as NIfTI.
"""

from __future__ import annotations

import logging
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medsad_monai.data.volumes import Geometry

logger = logging.getLogger(__name__)

__all__ = ["DicomSeries", "find_dicom_series", "is_dicom_file", "load_dicom_series", "series_of_file"]

#: The relative spread of the slice steps a series may have (floating point in the headers).
_SPACING_TOLERANCE = 0.01


@dataclass(frozen=True)
class DicomSeries:
    """One DICOM series of a folder.

    Args:
        folder: the folder that holds its files.
        identifier: ITK's series identifier (the SeriesInstanceUID with series details).
        files: its files, in ITK's slice order.
        name: a file-safe name for its outputs (``<folder>`` or ``<folder>_s<series number>``).
        description: the SeriesDescription (empty when the files have none).
    """

    folder: Path
    identifier: str
    files: tuple[str, ...]
    name: str
    description: str = ""

    def __str__(self) -> str:
        what = f" ({self.description})" if self.description else ""
        return f"DICOM series {self.name}{what} in {self.folder}, {len(self.files)} file(s)"


def is_dicom_file(path: str | Path) -> bool:
    """True when ``path`` is a file with the DICOM preamble (``DICM`` at byte 128)."""
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def _names_generator(folder: Path):  # noqa: ANN202 - an ITK object
    """ITK's series lister, set up as MONAI's ``ITKReader`` sets it up (so its identifiers are
    the ``series_name`` that reader takes)."""
    import itk

    generator = itk.GDCMSeriesFileNames.New()
    generator.SetUseSeriesDetails(True)
    generator.AddSeriesRestriction("0008|0021")  # series date
    generator.SetGlobalWarningDisplay(False)
    generator.SetDirectory(str(folder))
    return generator


def _tag(file: str, tag: str) -> str:
    """One header value of a DICOM file (empty when absent or unreadable)."""
    import itk

    io = itk.GDCMImageIO.New()
    io.SetFileName(file)
    try:
        io.ReadImageInformation()
        found, value = io.GetValueFromTag(tag, "")
    except RuntimeError:
        return ""
    return str(value).strip() if found else ""


def find_dicom_series(folder: str | Path) -> list[DicomSeries]:
    """The DICOM series of the files directly in ``folder`` (none: an empty list)."""
    folder = Path(folder)
    dicom_files = (
        {p.resolve() for p in folder.iterdir() if p.is_file() and is_dicom_file(p)} if folder.is_dir() else set()
    )
    if not dicom_files:
        return []
    generator = _names_generator(folder)
    identifiers = sorted(str(i) for i in generator.GetSeriesUIDs())
    series = []
    for identifier in identifiers:
        files = tuple(str(f) for f in generator.GetFileNames(identifier))
        number = re.sub(r"[^0-9A-Za-z]+", "", _tag(files[0], "0020|0011"))
        name = folder.name if len(identifiers) == 1 else f"{folder.name}_s{number or len(series) + 1}"
        series.append(DicomSeries(folder, identifier, files, name, _tag(files[0], "0008|103e")))
    left_out = sorted(dicom_files - {Path(f).resolve() for s in series for f in s.files})
    if left_out:  # truncated files, or DICOM objects that are no images (reports, DICOMDIR)
        listed = ", ".join(p.name for p in left_out[:5]) + (
            f" and {len(left_out) - 5} more" if len(left_out) > 5 else ""
        )
        logger.warning(
            "%s: %d DICOM file(s) belong to no readable image series and are left out (truncated, or not images?): %s",
            folder,
            len(left_out),
            listed,
        )
    names = [s.name for s in series]
    if len(set(names)) != len(names):  # equal series numbers: number them in order instead
        series = [
            DicomSeries(s.folder, s.identifier, s.files, f"{folder.name}_{k + 1:02d}", s.description)
            for k, s in enumerate(series)
        ]
    return series


def series_of_file(path: str | Path) -> DicomSeries:
    """The series a DICOM file belongs to (among the series of its folder).

    Raises:
        ValueError: the file is not DICOM or no series of its folder holds it.
    """
    path = Path(path)
    if not is_dicom_file(path):
        raise ValueError(f"{path}: not a DICOM file (no DICM preamble)")
    for series in find_dicom_series(path.parent):
        if any(Path(f).resolve() == path.resolve() for f in series.files):
            return series
    raise ValueError(f"{path}: ITK finds no image series holding this DICOM file (is it an image?)")


def _check_even_spacing(series: DicomSeries, normal: np.ndarray) -> None:
    """Refuse a series whose slices are not evenly spaced (a gap, a duplicate, a localizer)."""
    if len(series.files) < 3:
        return
    positions = []
    for file in series.files:
        value = _tag(file, "0020|0032")  # image position (patient)
        try:
            positions.append([float(v) for v in value.split("\\")])
        except ValueError:
            return  # no positions (e.g. a multi-frame file): ITK's geometry stands
    if any(len(p) != 3 for p in positions):
        return
    steps = np.diff(np.asarray(positions) @ normal)
    if np.any(np.abs(steps) < 1e-6) or np.ptp(steps) > _SPACING_TOLERANCE * np.abs(steps).mean():
        raise ValueError(
            f"{series}: its slices are not evenly spaced (steps {np.round(steps, 3).min():g} to "
            f"{np.round(steps, 3).max():g} mm): missing or repeated slices, or a localizer; MedSAD needs a "
            "regular 3-D grid (convert the series with dcm2niix and check it)"
        )


def load_dicom_series(series: DicomSeries) -> tuple[np.ndarray, Geometry]:
    """Read a series as an ``(I, J, K)`` array (rescaled values) and its RAS geometry.

    Raises:
        ValueError: naming the series: unreadable files, not a scalar 3-D image, unevenly spaced
            slices, or NaN/inf values.
    """
    from monai.data import ITKReader

    reader = ITKReader(series_name=series.identifier, affine_lps_to_ras=True)  # arrays (I, J, K)
    try:
        with warnings.catch_warnings():  # "more than one DICOM series": this one is named
            warnings.filterwarnings("ignore", message=".*more than one DICOM series")
            image = reader.read(str(series.folder))
        array, meta = reader.get_data(image)
    except Exception as err:  # RuntimeError from GDCM, ValueError, ...
        raise ValueError(f"{series}: cannot read it ({type(err).__name__}: {err})") from err
    # a copy: the array is a view of ITK's image buffer, which is freed with the image
    array = np.array(array, copy=True)
    del image
    if isinstance(meta.get("original_channel_dim"), (int, np.integer)):  # "no_channel" for scalar images
        raise ValueError(f"{series}: colour (multi-component) images are not supported; MedSAD reads scalar scans")
    if array.ndim == 2:  # one slice
        array = array[..., None]
    if array.ndim != 3:
        raise ValueError(f"{series}: not a scalar 3-D image (array shape {array.shape}: colour or multi-frame data?)")
    if array.dtype.kind not in "iuf":
        raise ValueError(f"{series}: voxels of dtype {array.dtype} are not real numbers")
    if not np.isfinite(array).all():
        raise ValueError(f"{series}: contains NaN/inf values")
    affine = np.asarray(meta["affine"], dtype=np.float64)
    if affine.shape != (4, 4):  # one slice: ITK's 2-D affine, extended along the slice normal
        extended = np.eye(4)
        extended[:2, :2], extended[:2, 3] = affine[:2, :2], affine[:2, 2]
        affine = extended
    if array.shape[2] == 1:  # one slice: its thickness, not ITK's default of 1 mm, is its extent
        try:
            thickness = float(_tag(series.files[0], "0018|0050") or "nan")
        except ValueError:
            thickness = float("nan")
        if np.isfinite(thickness) and thickness > 0:
            affine[:3, 2] *= thickness / np.linalg.norm(affine[:3, 2])
    geometry = Geometry.from_affine(affine)
    normal_lps = np.diag([-1.0, -1.0, 1.0]) @ np.asarray(geometry.direction)[:, 2]
    _check_even_spacing(series, normal_lps)
    logger.info("%s: %s voxels of %s mm", series, array.shape, tuple(round(s, 3) for s in geometry.spacing))
    return array, geometry
