"""Simulated scanner shifts: what changes between scanners and protocols, applied to an input.

A model calibrated on validation scans from one scanner can lose its lesions on another: its
confidence falls where contrast, resolution, noise or coil shading differ, and a confidence
filter fitted on the first scanner then removes the lesions (docs/decisions.md). ``medsad
robustness`` re-runs the evaluation of a checkpoint with each of these shifts applied to the raw
input before the model's own intensity normalisation, so a user sees how far the answers hold up
before serving a new scanner. Each shift is a fixed, seeded MONAI transform: the same input
gives the same shifted input on every run and machine.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["SHIFTS", "SHIFT_NAMES", "apply_shift", "describe_shift"]

#: name → what it simulates. The transforms are built by :func:`_transform`, fresh and seeded per
#: call, so a shift never depends on what ran before it (torch and MONAI are imported only then:
#: the CLI lists these names without loading them).
SHIFTS: dict[str, str] = {
    "none": "the input as it is",
    "gamma_0.6": "dark tissue brightened, contrast compressed toward bright (intensity gamma 0.6)",
    "gamma_1.6": "bright tissue contrast stretched, dark compressed (intensity gamma 1.6)",
    "blur": "a softer reconstruction (Gaussian blur, sigma 0.8 voxel)",
    "low_resolution": "half the resolution, resampled back (MONAI RandSimulateLowResolution, zoom 0.5)",
    "bias_field": "coil shading (a smooth multiplicative bias field, MONAI RandBiasField, coefficients within ±0.1)",
    "noise": "more noise (Rician, 0.1 x the image's standard deviation; MONAI RandRicianNoise)",
}
SHIFT_NAMES = tuple(SHIFTS)


def _transform(name: str, seed: int, dims: int) -> Any:
    """The seeded MONAI transform of shift ``name`` for channel-first arrays of ``dims`` spatial dims."""
    from monai.transforms import (
        AdjustContrast,
        GaussianSmooth,
        RandBiasField,
        RandRicianNoise,
        RandSimulateLowResolution,
    )

    if name.startswith("gamma_"):
        return AdjustContrast(gamma=float(name.split("_")[1]))
    if name == "blur":
        return GaussianSmooth(sigma=0.8)
    if name == "low_resolution":
        t = RandSimulateLowResolution(
            prob=1.0, zoom_range=(0.5, 0.5), upsample_mode="trilinear" if dims == 3 else "bilinear"
        )
    elif name == "bias_field":
        t = RandBiasField(prob=1.0, coeff_range=(-0.1, 0.1))
    elif name == "noise":
        t = RandRicianNoise(prob=1.0, std=0.1, relative=True, sample_std=False)
    else:
        raise ValueError(f"unknown shift {name!r}")
    t.set_random_state(seed=seed)
    return t


def describe_shift(name: str) -> str:
    """What ``name`` simulates, in words."""
    if name not in SHIFTS:
        raise ValueError(f"unknown shift {name!r}; expected one of {', '.join(SHIFT_NAMES)}")
    return SHIFTS[name]


def apply_shift(array: np.ndarray, name: str, seed: int = 0, image_2d: bool = False) -> np.ndarray:
    """``array`` (a raw volume (X, Y, Z), or with ``image_2d`` a picture (H, W) / (H, W, C) in [0, 1])
    with shift ``name`` applied, float32, same shape. ``seed`` fixes the random shifts (bias
    field, noise); use one per case. Negative intensities (CT) are kept: the
    contrast shifts work on the array's own range. A picture is clipped to [0, 1] afterwards,
    as an 8-bit picture would saturate."""
    if name not in SHIFTS:
        raise ValueError(f"unknown shift {name!r}; expected one of {', '.join(SHIFT_NAMES)}")
    if name == "none":
        return np.asarray(array, dtype=np.float32)
    import torch

    x = torch.as_tensor(np.asarray(array, dtype=np.float32))
    channels = image_2d and x.ndim == 3
    x = torch.movedim(x, -1, 0) if channels else x[None]  # channel first, as MONAI wants
    out = torch.as_tensor(_transform(name, seed, x.ndim - 1)(x)).float()
    out = torch.movedim(out, 0, -1) if channels else out[0]
    if image_2d:
        out = out.clamp(0.0, 1.0)
    return out.numpy().astype(np.float32, copy=False)
