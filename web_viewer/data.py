"""Reading volumes, masks and score files, and turning them into PNG slices and an SVG score plot."""

from __future__ import annotations

import base64
import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

#: Lesion overlay colour (RGB) and opacity, set explicitly.
LESION_RGB = (255, 40, 40)
LESION_ALPHA = 0.55
VIEW_PX = 384


#: RAS axis names, by index, with the name of the patient side each points to
RAS_SIDES = ("R", "A", "S")


@dataclass
class Case:
    """A volume (file voxel order), its lesion mask (same shape) and the MedSAD result JSON;
    ``affine`` (voxel to RAS, when the file has one) turns the slices the way a scanner's axes
    run (:func:`display_axes`)."""

    name: str
    image: np.ndarray
    mask: np.ndarray
    spacing: tuple[float, float, float]
    result: dict[str, Any] = field(default_factory=dict)
    affine: np.ndarray | None = None

    @property
    def axis(self) -> int:
        return int(self.result.get("slice_axis", 2))

    @property
    def n_slices(self) -> int:
        return int(self.image.shape[self.axis])


def read_dicom_series(folder: str | Path, identifier: str) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """The DICOM series ``identifier`` (ITK's series identifier, as ``medsad infer`` records it in
    ``dicom_series``) of ``folder``, read with ITK as ``medsad infer`` reads it: ``(array (I, J, K),
    voxel-to-RAS affine, spacing)``, so the mask ``medsad infer`` wrote lies on its grid.

    Raises:
        ValueError: the folder holds no such series or it does not read.
    """
    import itk

    generator = itk.GDCMSeriesFileNames.New()  # set up as medsad_monai.data.dicom (MONAI's ITKReader) does
    generator.SetUseSeriesDetails(True)
    generator.AddSeriesRestriction("0008|0021")
    generator.SetGlobalWarningDisplay(False)
    generator.SetDirectory(str(folder))
    if identifier not in [str(i) for i in generator.GetSeriesUIDs()]:
        raise ValueError(f"{folder}: no DICOM series {identifier!r} there any more")
    try:
        image = itk.imread([str(f) for f in generator.GetFileNames(identifier)])
    except Exception as exc:  # any reader failure is one message about the series
        raise ValueError(f"{folder}: cannot read the DICOM series ({exc})") from exc
    data = np.array(itk.array_view_from_image(image), copy=True).transpose(2, 1, 0)  # (K, J, I) -> (I, J, K)
    spacing = tuple(float(s) for s in image.GetSpacing())
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(image.GetDirection()) @ np.diag(spacing)
    affine[:3, 3] = np.asarray(image.GetOrigin())
    return data, np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine, spacing  # type: ignore[return-value]


def read_volume(path: str | Path) -> tuple[np.ndarray, np.ndarray | None, tuple[float, float, float]]:
    """A NIfTI or NRRD volume as ``(array in file voxel order, affine or None, spacing)``.

    Raises:
        ValueError: the file is missing, unreadable or not 3-D.
    """
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{p}: no such file")
    try:
        if p.name.lower().endswith(".nrrd"):
            import nrrd

            data, header = nrrd.read(str(p))
            dirs = header.get("space directions")
            spacing = tuple(float(np.linalg.norm(d)) for d in dirs) if dirs is not None else (1.0, 1.0, 1.0)
            affine = _nrrd_affine(header)
        else:
            import nibabel as nib

            img = nib.load(str(p))
            data = np.asarray(img.dataobj)
            affine = np.asarray(img.affine)
            spacing = tuple(float(z) for z in img.header.get_zooms()[:3])
    except Exception as exc:  # any reader failure is one message about the file
        raise ValueError(f"{p.name}: cannot read the volume ({exc})") from exc
    data = np.squeeze(np.asarray(data))
    if data.ndim != 3:
        raise ValueError(f"{p.name}: not a 3-D volume (shape {data.shape})")
    return data, affine, spacing  # type: ignore[return-value]


def _nrrd_affine(header: dict[str, Any]) -> np.ndarray | None:
    """Voxel-to-RAS affine of a 3-D NRRD header in a patient space (RAS, LPS or LAS); None when
    the header has no such space or no spatial directions."""
    flips = {
        "right-anterior-superior": (1, 1, 1),
        "ras": (1, 1, 1),
        "left-posterior-superior": (-1, -1, 1),
        "lps": (-1, -1, 1),
        "left-anterior-superior": (-1, 1, 1),
        "las": (-1, 1, 1),
    }.get(str(header.get("space", "")).lower())
    dirs = header.get("space directions")
    if flips is None or dirs is None:
        return None
    try:
        columns = np.asarray(dirs, dtype=float)
    except (TypeError, ValueError):  # "none" entries of non-spatial axes
        return None
    if columns.shape != (3, 3) or not np.isfinite(columns).all():
        return None
    affine = np.eye(4)
    affine[:3, :3] = columns.T  # row i of "space directions" is voxel axis i's step
    affine[:3, 3] = np.asarray(header.get("space origin", np.zeros(3)), dtype=float)
    return np.diag([*flips, 1]) @ affine


def display_axes(affine: np.ndarray | None, axis: int) -> tuple[list[int], list[bool]]:
    """The two in-plane voxel axes of a slice across ``axis``, in screen order (left-right, then
    bottom-up), and whether each runs against its RAS direction (then it is mirrored).

    With an affine the screen shows a scanner's view whatever the voxel order: the in-plane axis
    closer to R (else A) runs left to right towards R (A), the other bottom-up towards A or S:
    an axial slice has the patient's right on the right and the front at the top, as a volume
    stored RAS shows in voxel order. Without one (or for an in-plane pair that is not separable,
    e.g. 45° oblique), voxel order.
    """
    dims = [d for d in range(3) if d != axis]
    if affine is None:
        return dims, [False, False]
    ras = [int(np.argmax(np.abs(affine[:3, d]))) for d in dims]
    if ras[0] == ras[1]:
        return dims, [False, False]
    if ras[0] > ras[1]:
        dims, ras = dims[::-1], ras[::-1]
    return dims, [bool(affine[r, d] < 0) for r, d in zip(ras, dims)]


def orientation_caption(case: Case) -> str:
    """Where the image's right edge and top point in the patient (``right: R, top: A``), or that
    the slice is shown in voxel order."""
    if case.affine is None:
        return "voxel order (the file has no patient orientation)"
    dims, _ = display_axes(case.affine, case.axis)
    ras = [int(np.argmax(np.abs(case.affine[:3, d]))) for d in dims]
    if ras[0] == ras[1]:
        return "voxel order (oblique slice)"
    return f"right: {RAS_SIDES[ras[0]]}, top: {RAS_SIDES[ras[1]]}"


def load_case(image_path: str | Path, mask_path: str | Path, result: dict[str, Any], name: str = "") -> Case:
    """Read a volume and its mask and check that they share one geometry.

    Raises:
        ValueError: unreadable files or a mask whose shape / affine differs from the volume's.
    """
    series = (result.get("dicom_series") or {}).get("identifier")
    if series and Path(image_path).is_dir():  # `medsad infer` on a DICOM series
        image, affine, spacing = read_dicom_series(image_path, str(series))
    else:
        image, affine, spacing = read_volume(image_path)
    mask, mask_affine, _ = read_volume(mask_path)
    if mask.shape != image.shape:
        raise ValueError(f"the mask's shape {mask.shape} differs from the volume's {image.shape}")
    if affine is not None and mask_affine is not None and not np.allclose(affine, mask_affine, atol=1e-3):
        raise ValueError("the mask's geometry (affine) differs from the volume's")
    n = image.shape[int(result.get("slice_axis", 2))]
    scores = result.get("slice_scores") or []
    if scores and len(scores) != n:
        raise ValueError(f"{len(scores)} slice scores for a volume of {n} slices")
    return Case(
        name or Path(image_path).name, image.astype(np.float32), (mask > 0).astype(np.uint8), spacing, result, affine
    )


def load_scores_json(path: str | Path) -> dict[str, Any]:
    """The ``<stem>_scores.json`` written by ``medsad infer``.

    Raises:
        ValueError: missing or not a MedSAD scores file.
    """
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{p}: cannot read the scores file ({exc})") from exc
    if not isinstance(data, dict) or "slice_scores" not in data:
        raise ValueError(f"{p}: not a MedSAD scores file (no slice_scores)")
    return data


def _plane(volume: np.ndarray, axis: int, index: int, affine: np.ndarray | None = None) -> np.ndarray:
    """One slice as an image (rows top-down): the in-plane axes as :func:`display_axes` orders them."""
    dims, flips = display_axes(affine, axis)
    plane = np.take(volume, index, axis=axis)  # axes: the remaining dims in ascending order
    if dims[0] > dims[1]:
        plane = plane.T
    for i, flip in enumerate(flips):
        if flip:
            plane = np.flip(plane, axis=i)
    return np.flipud(plane.T)


def slice_rgb(case: Case, index: int, overlay: bool = True) -> np.ndarray:
    """The slice ``index`` as RGB uint8 with the lesion overlay blended in (voxel grid, not resized)."""
    plane = _plane(case.image, case.axis, index, case.affine).astype(np.float32)
    finite = case.image[np.isfinite(case.image)]
    lo, hi = np.percentile(finite, (0.5, 99.5)) if finite.size else (0.0, 1.0)
    gray = np.clip((plane - lo) / max(float(hi - lo), 1e-6), 0, 1) * 255
    rgb = np.repeat(gray[..., None], 3, axis=2)
    if overlay:
        lesion = _plane(case.mask, case.axis, index, case.affine) > 0
        rgb[lesion] = (1 - LESION_ALPHA) * rgb[lesion] + LESION_ALPHA * np.asarray(LESION_RGB, np.float32)
    return rgb.astype(np.uint8)


def slice_png_data_url(case: Case, index: int, overlay: bool = True) -> str:
    """The slice as a PNG data URL, resized to the voxel spacing's aspect (nearest neighbour)."""
    from PIL import Image

    rgb = slice_rgb(case, index, overlay)
    dims, _ = display_axes(case.affine, case.axis)
    w_mm = case.image.shape[dims[0]] * case.spacing[dims[0]]
    h_mm = case.image.shape[dims[1]] * case.spacing[dims[1]]
    scale = VIEW_PX / max(w_mm, h_mm)
    size = (max(1, round(w_mm * scale)), max(1, round(h_mm * scale)))
    buf = io.BytesIO()
    Image.fromarray(rgb).resize(size, Image.Resampling.NEAREST).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def score_plot_svg(scores: list[float], threshold: float | None, current: int, width: int = 520) -> str:
    """An SVG line plot of the per-slice scores with the operating threshold and the current slice."""
    height, pad = 160, 28
    if not scores:
        return f'<svg width="{width}" height="{height}"></svg>'
    n = len(scores)

    def x(i: float) -> float:
        return pad + (width - 2 * pad) * (i / max(n - 1, 1))

    def y(v: float) -> float:
        return height - pad - (height - 2 * pad) * min(max(v, 0.0), 1.0)

    pts = " ".join(f"{x(i):.1f},{y(s):.1f}" for i, s in enumerate(scores))
    parts = [
        f'<svg id="score-plot" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        'style="width:100%;height:auto">',
        f'<rect x="{pad}" y="{pad}" width="{width - 2 * pad}" height="{height - 2 * pad}" fill="#fafafa" '
        'stroke="#bbb"/>',
        f'<polyline points="{pts}" fill="none" stroke="#1565c0" stroke-width="2"/>',
        f'<line x1="{x(current):.1f}" x2="{x(current):.1f}" y1="{pad}" y2="{height - pad}" stroke="#2e7d32"/>',
        f'<text x="{pad}" y="{height - 8}" font-size="11">slice 0</text>',
        f'<text x="{width - pad}" y="{height - 8}" font-size="11" text-anchor="end">{n - 1}</text>',
        f'<text x="{pad}" y="{pad - 8}" font-size="11">score (0-1)</text>',
    ]
    if threshold is not None:
        parts.append(
            f'<line x1="{pad}" x2="{width - pad}" y1="{y(threshold):.1f}" y2="{y(threshold):.1f}" '
            'stroke="#c62828" stroke-dasharray="5,4"/>'
            f'<text x="{width - pad - 2}" y="{y(threshold) - 4:.1f}" font-size="11" fill="#c62828" '
            f'text-anchor="end">threshold {threshold:.3f}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)
