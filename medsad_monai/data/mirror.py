"""The left-right mirror channel: a slice shown beside its mirror image about the head's midline.

A slice-wise model that sees a slice alone must learn what every normal structure looks like to
call something else a lesion, and a head it never saw (larger ventricles, another brainstem)
breaks that. Brains are nearly symmetric left to right and most lesions are not, so a model that
also sees the *other side* can tell "unlike the other hemisphere" from "unlike the training
subjects". With ``mirror_channel`` the model's three input channels are ``(slice, mirror,
slice)``: the mirror is the volume reflected along its first voxel axis of the RAS view (Right
to Left) about the foreground's centre, and cut at the same place (for axial and coronal slices
the slice itself flipped about the midline; for sagittal slices the slice on the other side).

The midline is estimated once per volume (:func:`reflection_sum`): the centroid along R-L of the
voxels above :data:`FOREGROUND_LEVEL` of the intensity-normalised volume. Nothing is
interpolated: the reflection is a whole-voxel flip and shift, and voxels whose mirror falls
outside the volume are 0 (background). A lesion that crosses the midline or has a twin on the
other side shows in both channels. Measured (an option, not the recipe): docs/experiments.md,
session 50.
"""

from __future__ import annotations

__all__ = ["FOREGROUND_LEVEL", "reflection_sum", "mirror_rows", "take_mirror_slab"]

import numpy as np

from medsad_monai.data.volumes import take_slice

#: Voxels above this level of the normalised volume (``foreground``: the foreground median is
#: 0.5, the background 0) count as head when the midline is estimated.
FOREGROUND_LEVEL = 0.2


def reflection_sum(volume: np.ndarray) -> int:
    """``k`` of the reflection ``i -> k - i`` along axis 0 (R-L of the RAS view) that maps the
    volume's foreground onto itself: twice the foreground centroid along axis 0, rounded. A
    volume without foreground reflects about its middle (``k = n - 1``).

    Raises:
        ValueError: not a 3-D array.
    """
    array = np.asarray(volume)
    if array.ndim != 3:
        raise ValueError(f"the mirror channel needs a 3-D volume, got shape {array.shape}")
    profile = (array > FOREGROUND_LEVEL).sum(axis=(1, 2)).astype(np.float64)
    total = profile.sum()
    if total == 0:
        return array.shape[0] - 1
    centre = float((profile * np.arange(profile.size)).sum() / total)
    return int(round(2 * centre))


def mirror_rows(array: np.ndarray, k: int) -> np.ndarray:
    """``out[i] = array[k - i]`` along axis 0, 0 where ``k - i`` is outside the array (a 2-D
    slice whose rows run along R-L, or a whole volume)."""
    array = np.asarray(array)
    n = array.shape[0]
    out = np.zeros_like(array)
    # rows i with 0 <= k - i < n: i in [k - n + 1, k] clipped to [0, n - 1]
    lo, hi = max(k - n + 1, 0), min(k, n - 1)
    if lo <= hi:
        out[lo : hi + 1] = array[k - hi : k - lo + 1][::-1]
    return out


def take_mirror_slab(volume: np.ndarray, axis: int, index: int, k: int) -> np.ndarray:
    """Slice ``index`` along ``axis`` as ``(H, W, 3)`` channels ``(slice, mirror, slice)``
    (module docstring); ``k`` from :func:`reflection_sum` of the same volume.

    Raises:
        ValueError: as :func:`~medsad_monai.data.volumes.take_slice`.
    """
    centre = take_slice(volume, axis, index)
    if axis in (0, -3):
        partner = k - index
        if 0 <= partner < volume.shape[0]:
            mirror = take_slice(volume, 0, partner)
        else:
            mirror = np.zeros_like(centre)
    else:
        mirror = mirror_rows(centre, k)  # the slice's rows run along axis 0 of the volume
    return np.stack([centre, mirror, centre], axis=-1)
