"""Synthetic lesion painting on 2D slices or 3D volumes (training augmentation and sample data).

Each lesion is described by a normalised distance ``d`` (``d < 1`` inside, ``d = 1`` on the
boundary) built from one or several randomly rotated ellipsoids whose radius is perturbed by a
smooth random field; intensities are blended in with a soft edge, optional rim and texture.

Styles (see :data:`STYLES`) differ in shape *and* appearance, so a model can be tested on a
style it never saw:

- ``"A"``: smooth ellipsoid, hyperintense (tumour / oedema-like), soft edge, mild texture.
- ``"B"``: irregular multi-lobed, ring-enhancing (bright rim, dark necrotic core), sharp edge.
- ``"C"``: lobulated, hypointense (necrotic / cavity-like, below grey matter), medium edge.
- ``"mixed"``: every lesion takes the shape of one random style and the look of another.
- ``"R"`` (training augmentation only, not a sample-data style): the shape of ``A`` or ``C``
  with a *random* look, in the spirit of DRAEM's random-texture anomalies: two intensity
  levels, each independently bright (above white matter) or dark (below grey matter), mixed
  by a thresholded smooth random field, with a random edge and texture. It teaches "any
  tissue that departs from normal" rather than one appearance.
- ``"P"`` (training augmentation only): the shape of ``A`` or ``C`` filled with *foreign tissue*,
  a patch of the same image taken from another place inside the brain (mirrored at random,
  its contrast scaled by 0.85-1.15), in the spirit of foreign-patch interpolation (FPI) for
  medical anomaly detection: grey matter moved into white matter, CSF into tissue, tissue into
  a ventricle. Only where the patch visibly differs from what it replaces is it labelled.
- ``"D"`` and ``"E"`` (:data:`VALIDATION_STYLES`: validation sets only, never training nor the
  sample test set): faint lesions of looks no other style has — ``D`` grey-matter-like (a little
  below grey matter) on ``C``'s lobulated shapes with a soft edge, ``E`` a little above white
  matter on ``B``'s irregular shapes with a sharp edge. They measure, without the test set, how a
  model does on a lesion generator it never saw (``tools/make_validation_sets.py``).
"""

from __future__ import annotations

import functools

import numpy as np
from scipy import ndimage

__all__ = [
    "STYLES",
    "VALIDATION_STYLES",
    "paint_lesions",
    "estimate_tissue",
    "estimate_brain_mask",
    "volume_has_skull",
    "smooth_noise",
]

STYLES: dict[str, str] = {
    "A": "smooth ellipsoid, hyperintense (tumour/oedema-like), soft edge",
    "B": "irregular, ring-enhancing: bright rim and dark necrotic core, sharp edge",
    "C": "lobulated, hypointense (necrotic/cavity-like), below grey matter",
}
#: Looks for validation sets only (a lesion generator the model never saw); ``--synthetic-styles``
#: refuses them, ``"mixed"`` does not draw them.
VALIDATION_STYLES: dict[str, str] = {
    "D": "faint, grey-matter-like (a little below grey matter), lobulated, soft edge",
    "E": "faint, a little above white matter, irregular, sharp edge",
}
#: The shapes the validation styles borrow.
_SHAPE_OF = {"D": "C", "E": "B"}
RANDOM_LOOK = "R"
FOREIGN_PATCH = "P"
#: Training-only looks (``--synthetic-styles``), never in sample or validation data.
TRAINING_LOOKS = (RANDOM_LOOK, FOREIGN_PATCH)
_MIN_VOXELS = {2: 6, 3: 20}


def estimate_tissue(image: np.ndarray, brain_mask: np.ndarray) -> dict[str, float]:
    """Rough grey- and white-matter intensities of a T1-like image.

    On the MNI152 template the 40th / 85th in-brain percentiles match the GM / WM means
    within 0.02.

    Returns:
        ``{"gm": float, "wm": float}``.
    """
    values = image[brain_mask > 0]
    if values.size == 0:
        raise ValueError("brain_mask is empty: cannot estimate tissue intensities")
    gm, wm = np.percentile(values, [40, 85])
    return {"gm": float(gm), "wm": float(max(wm, gm + 1e-3))}


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(mask)
    if n <= 1:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    return labels == (int(np.argmax(sizes)) + 1)


#: On a head with its skull, a slice's brain estimate covering this share of the head or more is
#: not a brain (neck, face or vertex slices, where no dark skull separates tissue from scalp).
_WHOLE_HEAD = 0.85
#: ... nor is one whose outline runs along the head's surface (within 2 pixels) for more than
#: this share of it: a brain lies inside the skull, face and neck tissue reach the skin.
_MAX_SURFACE_CONTACT = 0.1


def _head(image: np.ndarray, threshold: float) -> np.ndarray:
    return _largest_component(ndimage.binary_fill_holes(image > threshold))


def estimate_brain_mask(image: np.ndarray, threshold: float = 0.05, skull: bool | None = None) -> np.ndarray:
    """Where lesions may be painted on a T1-like slice: the brain, also when the slice keeps
    skull and scalp.

    The head is ``image > threshold`` (holes filled, largest component). Inside it, tissue
    brighter than 0.6 × the head's median, opened to cut the thin bridges between brain and
    scalp, largest component, closed and holes filled: on a head with its skull, the dark skull
    separates the brain from the scalp, orbits and face; on a skull-stripped slice it is the
    brain itself.

    ``skull=True`` (the slice's volume keeps skull and scalp, :func:`volume_has_skull`) rejects
    what cannot be a brain there — an estimate covering nearly the whole head, or one whose
    outline runs along the skin — and returns an empty mask: on neck, face and skull-base slices
    the estimate is muscle, orbits and face, and lesions painted there teach a model that such
    tissue is a lesion. ``None`` or ``False``: the estimate as it is. Returns uint8.
    """
    head = _head(image, threshold)
    if head.sum() < 64:
        return head.astype(np.uint8)
    tissue = image > 0.6 * float(np.median(image[head]))
    inner = _largest_component(ndimage.binary_opening(tissue & head, structure=np.ones((3, 3)), iterations=2))
    inner = ndimage.binary_fill_holes(ndimage.binary_closing(inner, structure=np.ones((3, 3)), iterations=3))
    brain = inner & head
    if skull and brain.sum() >= 64:
        outline = brain & ~ndimage.binary_erosion(brain)
        near_skin = ndimage.distance_transform_edt(head) <= 2
        if brain.sum() >= _WHOLE_HEAD * head.sum() or float(near_skin[outline].mean()) > _MAX_SURFACE_CONTACT:
            brain = np.zeros_like(brain)
    return brain.astype(np.uint8)


def volume_has_skull(volume: np.ndarray, axis: int = 2, threshold: float = 0.05) -> bool:
    """Whether a normalised volume keeps skull and scalp (a head) rather than a skull-stripped
    brain: on its central slices (40-60 % along ``axis``) the brain estimate of
    :func:`estimate_brain_mask` covers less than 85 % of the head (median over the slices)."""
    n = volume.shape[axis]
    ratios = []
    for index in range(int(0.4 * n), int(0.6 * n) + 1):
        where: list = [slice(None)] * volume.ndim
        where[axis] = index
        image = np.asarray(volume[tuple(where)], dtype=np.float32)
        head = _head(image, threshold)
        if head.sum() >= 64:
            ratios.append(estimate_brain_mask(image, threshold).sum() / head.sum())
    return bool(ratios) and float(np.median(ratios)) < _WHOLE_HEAD


@functools.lru_cache(maxsize=256)
def _basis(n: int, cells: int) -> tuple[np.ndarray, float]:
    """Gaussian interpolation weights (n, cells), rows summing to 1, and the rms row norm."""
    pos = np.linspace(0.0, cells - 1.0, n, dtype=np.float32)[:, None]
    weights = np.exp(-0.5 * ((pos - np.arange(cells, dtype=np.float32)) / 0.7) ** 2)
    weights /= weights.sum(axis=1, keepdims=True)
    return weights, float(np.sqrt(np.mean(np.sum(weights**2, axis=1))))


def smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], cells: int) -> np.ndarray:
    """Smooth random field of roughly zero mean and unit std: a ``cells``^n grid of normal
    values interpolated separably (Gaussian weights) onto ``shape``. float32, fast in 3D."""
    field = rng.standard_normal((cells,) * len(shape)).astype(np.float32)
    scale = 1.0
    for axis, n in enumerate(shape):
        weights, norm = _basis(int(n), cells)
        field = np.moveaxis(np.tensordot(weights, np.moveaxis(field, axis, 0), axes=(1, 0)), 0, axis)
        scale *= norm
    return field / np.float32(scale)


def _rotation(rng: np.random.Generator, ndim: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((ndim, ndim)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _shape_params(rng: np.random.Generator, style: str, radius: float, ndim: int) -> list[dict]:
    """One lobe for style A, 2-4 (B) or 1-3 (C) overlapping lobes for the irregular styles."""
    style = _SHAPE_OF.get(style, style)
    if style == "A":
        n_lobes, deform, cells, squash = 1, rng.uniform(0.0, 0.08), 3, (0.55, 1.0)
    elif style == "B":
        n_lobes, deform, cells, squash = int(rng.integers(2, 5)), rng.uniform(0.3, 0.5), 7, (0.5, 1.0)
    else:
        n_lobes, deform, cells, squash = int(rng.integers(1, 4)), rng.uniform(0.15, 0.35), 4, (0.45, 1.0)
    lobes = []
    for i in range(n_lobes):
        scale = 1.0 if i == 0 else rng.uniform(0.45, 0.8)
        axes = radius * scale * np.concatenate([[1.0], rng.uniform(*squash, size=ndim - 1)])
        offset = np.zeros(ndim) if i == 0 else rng.standard_normal(ndim)
        if i:
            offset *= radius * rng.uniform(0.6, 1.0) / max(np.linalg.norm(offset), 1e-6)
        lobes.append(
            {
                "axes": rng.permutation(axes),
                "rot": _rotation(rng, ndim),
                "offset": offset,
                "deform": deform,
                "cells": cells,
            }
        )
    return lobes


def _plain_look(rng: np.random.Generator, core: float, edge: tuple, texture: tuple, cells: int) -> dict:
    """One intensity level with a soft edge and texture. ``core`` is drawn by the caller first, then
    the edge and the texture, in that order: the random stream (and so the sample data) depends on it."""
    return {"core": core, "rim": None, "edge": rng.uniform(*edge), "texture": rng.uniform(*texture), "cells": cells}


def _look_params(rng: np.random.Generator, style: str, tissue: dict[str, float]) -> dict:
    gm, wm = tissue["gm"], tissue["wm"]
    bright = lambda lo, hi: min(1.0, max(wm * rng.uniform(lo, hi), wm + 0.15))  # noqa: E731
    dark = lambda lo, hi: gm * rng.uniform(lo, hi)  # noqa: E731
    if style == "A":
        return _plain_look(rng, bright(1.25, 1.55), (0.15, 0.4), (0.02, 0.07), 4)
    if style == "B":
        return {
            "core": dark(0.3, 0.7),
            "rim": bright(1.25, 1.6),
            "rim_width": rng.uniform(0.2, 0.4),
            "edge": rng.uniform(0.04, 0.12),
            "texture": rng.uniform(0.04, 0.12),
            "cells": 6,
        }
    if style == "C":
        return _plain_look(rng, dark(0.3, 0.72), (0.08, 0.25), (0.05, 0.12), 5)
    if style == "D":
        return _plain_look(rng, dark(0.8, 0.95), (0.2, 0.45), (0.03, 0.08), 4)
    if style == "E":
        return _plain_look(rng, min(1.0, wm * rng.uniform(1.12, 1.25)), (0.04, 0.12), (0.03, 0.1), 6)
    if style == FOREIGN_PATCH:
        return {
            "core": None,
            "rim": None,
            "edge": rng.uniform(0.1, 0.4),
            "texture": 0.0,
            "cells": 4,
            "flip": rng.random(2) < 0.5,
            "gain": rng.uniform(0.85, 1.15),
            "min_change": 0.25 * (wm - gm),
        }
    level = lambda: bright(1.15, 1.6) if rng.random() < 0.5 else dark(0.25, 0.85)  # noqa: E731
    return {
        "core": level(),
        "rim": None,
        "edge": rng.uniform(0.04, 0.4),
        "texture": rng.uniform(0.02, 0.12),
        "cells": int(rng.integers(3, 7)),
        "second": level(),
        "mix_cells": int(rng.integers(3, 7)),
        "mix_level": rng.uniform(-0.8, 0.8),
    }


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _foreign_patch(image, brain, lo, hi, look, rng) -> tuple[np.ndarray, np.ndarray]:
    """The box ``lo:hi`` filled from another place inside the brain (style ``P``), mirrored and
    scaled, and where that place is brain (the patch never brings in background)."""
    half = max((b - a) // 2 for a, b in zip(lo, hi))
    depth = ndimage.distance_transform_edt(brain)
    inside = np.flatnonzero(depth >= min(half, 0.8 * depth.max()))
    source = np.unravel_index(inside[rng.integers(inside.size)], image.shape)
    index = np.ix_(
        *[np.clip(np.arange(a, b) + s - (a + b) // 2, 0, n - 1) for a, b, s, n in zip(lo, hi, source, image.shape)]
    )
    patch, patch_brain = image[index].astype(np.float32), brain[index]
    for axis in range(min(2, image.ndim)):
        if look["flip"][axis]:
            patch, patch_brain = np.flip(patch, axis=axis), np.flip(patch_brain, axis=axis)
    return np.clip(patch * look["gain"], 0.0, 1.0), patch_brain


def _paint_one(image, brain, centre, radius, shape_style, look_style, tissue, rng):
    """Paint one lesion in place; returns its mask (bool, image shape) or None if it missed."""
    ndim = image.ndim
    lobes = _shape_params(rng, shape_style, radius, ndim)
    look = _look_params(rng, look_style, tissue)
    reach = max(np.max(lb["axes"]) * (1 + lb["deform"]) + np.linalg.norm(lb["offset"]) for lb in lobes)
    half = int(np.ceil(reach * 1.15)) + 1
    lo = [max(0, c - half) for c in centre]
    hi = [min(s, c + half + 1) for c, s in zip(centre, image.shape)]
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    full = (2 * half + 1,) * ndim  # noise is drawn on the unclipped box so borders don't change it
    inner = tuple(slice(a - c + half, b - c + half) for a, b, c in zip(lo, hi, centre))
    grids = np.meshgrid(*[np.arange(a, b, dtype=np.float32) - c for a, b, c in zip(lo, hi, centre)], indexing="ij")
    coords = np.stack(grids, axis=-1)  # (*box, ndim)
    d = None
    for lb in lobes:
        local = (coords - lb["offset"].astype(np.float32)) @ lb["rot"].astype(np.float32)
        rho = np.sqrt(np.sum((local / lb["axes"].astype(np.float32)) ** 2, axis=-1))
        if lb["deform"] > 0:
            rho = rho / np.maximum(1.0 + lb["deform"] * smooth_noise(rng, full, lb["cells"])[inner], 0.3)
        d = rho if d is None else np.minimum(d, rho)
    alpha = _smoothstep((1.0 - d) / look["edge"]) * (brain[box] > 0)
    mask = alpha >= 0.5
    if look["core"] is None:  # foreign tissue: labelled only where it visibly differs
        region = image[box]
        target, source_brain = _foreign_patch(image, brain, lo, hi, look, rng)
        alpha = alpha * source_brain
        mask &= source_brain
        change = ndimage.gaussian_filter(np.abs(alpha * (target - region)), 1.0)
        mask &= change >= look["min_change"]
        mask = ndimage.binary_opening(mask) if mask.sum() >= _MIN_VOXELS[ndim] else mask
        if mask.sum() < _MIN_VOXELS[ndim]:
            return None
        image[box] = np.clip(region + alpha * (target - region), 0.0, 1.0)
        out = np.zeros(image.shape, dtype=bool)
        out[box] = mask
        return out
    if mask.sum() < _MIN_VOXELS[ndim]:
        return None
    target = np.full(d.shape, look["core"], dtype=np.float32)
    if look["rim"] is not None:
        inner_edge = 1.0 - look["rim_width"]
        target += (look["rim"] - look["core"]) * _smoothstep((d - inner_edge + 0.08) / 0.16)
    if look.get("second") is not None:
        field = smooth_noise(rng, full, look["mix_cells"])[inner]
        target += (look["second"] - look["core"]) * _smoothstep((field - look["mix_level"]) / 0.3 + 0.5)
    target *= 1.0 + look["texture"] * smooth_noise(rng, full, look["cells"])[inner]
    target += rng.uniform(0.005, 0.025) * rng.standard_normal(d.shape).astype(np.float32)
    region = image[box]
    image[box] = np.clip(region + alpha * (target - region), 0.0, 1.0)
    out = np.zeros(image.shape, dtype=bool)
    out[box] = mask
    return out


def paint_lesions(
    image: np.ndarray,
    brain_mask: np.ndarray,
    rng: np.random.Generator,
    *,
    style: str = "mixed",
    max_lesions: int = 3,
    tissue: dict | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Paint 1..``max_lesions`` synthetic lesions inside the brain.

    Args:
        image: 2D slice ``(H, W)`` or 3D volume ``(X, Y, Z)``, intensities in [0, 1].
        brain_mask: same shape; lesions are painted (and labelled) only where it is non-zero.
        rng: the only source of randomness (same state → identical output).
        style: ``"A"``, ``"B"``, ``"C"`` (see :data:`STYLES`), ``"mixed"``, ``"R"`` (random
            look on an A/C shape; training augmentation), ``"P"`` (foreign tissue on an A/C
            shape; training augmentation) or a validation-only style
            (:data:`VALIDATION_STYLES`).
        max_lesions: upper bound on the number of lesions (at least one is painted).
        tissue: ``{"gm": float, "wm": float}`` mean intensities; estimated from the image
            (:func:`estimate_tissue`) when omitted.

    Returns:
        ``(painted float32 image, lesion mask uint8)``, both of the input shape. The mask covers
        each whole lesion (rim and core) where its blending weight is at least one half.

    Raises:
        ValueError: on a bad style, ``max_lesions``, dimensionality, shape mismatch or an
            empty brain mask.
    """
    if style not in ("mixed", *TRAINING_LOOKS) and style not in STYLES and style not in VALIDATION_STYLES:
        raise ValueError(
            f"style={style!r}; expected 'mixed', {RANDOM_LOOK!r}, {FOREIGN_PATCH!r} or one of "
            f"{sorted(STYLES) + sorted(VALIDATION_STYLES)}"
        )
    if max_lesions < 1:
        raise ValueError(f"max_lesions={max_lesions}; need at least 1")
    image = np.asarray(image, dtype=np.float32)
    if image.ndim not in (2, 3):
        raise ValueError(f"image has shape {image.shape}; expected a 2D slice or a 3D volume")
    if brain_mask.shape != image.shape:
        raise ValueError(f"brain_mask shape {brain_mask.shape} != image shape {image.shape}")
    brain = np.asarray(brain_mask) > 0
    idx = np.flatnonzero(brain)
    if idx.size == 0:
        raise ValueError("brain_mask is empty: no place to paint a lesion")
    tissue = dict(tissue) if tissue is not None else estimate_tissue(image, brain)
    out, lesion = image.copy(), np.zeros(image.shape, dtype=bool)
    ndim = image.ndim
    brain_radius = (idx.size / (np.pi if ndim == 2 else 4.0 / 3.0 * np.pi)) ** (1.0 / ndim)
    r_lo, r_hi = max(2.0, 0.06 * brain_radius), max(2.5, 0.42 * brain_radius)
    n_wanted, painted, attempts = int(rng.integers(1, max_lesions + 1)), 0, 0
    while painted < n_wanted and attempts < 4 * n_wanted + 8:
        attempts += 1
        centre = np.unravel_index(idx[rng.integers(idx.size)], image.shape)
        radius = float(np.exp(rng.uniform(np.log(r_lo), np.log(r_hi))))
        if attempts > 2 * n_wanted:  # small brains / slice edges: retry smaller
            radius = max(2.0, radius * 0.5)
        if style in TRAINING_LOOKS:
            shape_style, look_style = str(rng.choice(["A", "C"])), style
        else:
            styles = sorted(STYLES) if style == "mixed" else [style]
            shape_style, look_style = rng.choice(styles), rng.choice(styles)
            if style != "mixed":
                look_style = shape_style
        one = _paint_one(out, brain, centre, radius, shape_style, look_style, tissue, rng)
        if one is not None:
            lesion |= one
            painted += 1
    return out, lesion.astype(np.uint8)
