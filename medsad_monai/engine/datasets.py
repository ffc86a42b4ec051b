"""Training/validation data: samples of any layout -> MONAI ``Dataset`` of model-sized slices."""

from __future__ import annotations

import json
import logging
import os
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import Dataset
from monai.transforms import (
    Compose,
    MapTransform,
    Rand2DElasticd,
    RandAdjustContrastd,
    RandAffined,
    RandBiasFieldd,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    Randomizable,
    RandScaleIntensityd,
    RandSimulateLowResolutiond,
    ToTensord,
)

from medsad_monai.data.images import load_image_2d, load_mask_2d
from medsad_monai.data.layouts import Sample
from medsad_monai.data.lesions import estimate_brain_mask, paint_lesions, volume_has_skull
from medsad_monai.data.mirror import mirror_rows, reflection_sum
from medsad_monai.data.orientation import ras_view, reorientation
from medsad_monai.data.preprocess import is_background, prepare_mask, prepare_slice
from medsad_monai.data.volumes import (
    CONTEXT_SLICES,
    INTENSITY_METHODS,
    load_volume,
    normalize_intensity,
    read_volume_header,
    take_slab,
    take_slice,
)

AUGMENTS: tuple[str, ...] = ("paper", "intensity", "strong", "mirror", "elastic")
#: ``augment="elastic"``: control points every 32 pixels of the model-sized slice, each moved by
#: 2-5 pixels (MONAI ``Rand2DElastic``), half the slices: ventricles, sulci and head outlines of
#: other sizes and shapes than the training subjects'.
ELASTIC_SPACING, ELASTIC_MAGNITUDE, ELASTIC_PROB = (32, 32), (2.0, 5.0), 0.5
#: Where synthetic lesions may go: ``slice`` = the slice's brain estimate as it is (on a head's
#: neck, face and vertex slices that is muscle, orbits and scalp); ``brain`` = on a head with its
#: skull, only slices whose estimate is a brain (:func:`estimate_brain_mask` with ``skull``).
SYNTHETIC_REGIONS: tuple[str, ...] = ("slice", "brain")

__all__ = [
    "AUGMENTS",
    "SYNTHETIC_REGIONS",
    "Split",
    "make_split",
    "saved_validation",
    "load_sample",
    "slice_dataset",
    "drop_background",
    "LoadSliced",
    "PaintLesionsd",
    "MirrorChanneld",
]

logger = logging.getLogger(__name__)


@dataclass
class Split:
    """A seeded split of groups (volumes / images) into train and validation."""

    seed: int
    val_fraction: float
    train_groups: list[str]
    val_groups: list[str]
    val_data: str | None = None  # a separate validation folder (``medsad train --val-data``): its groups

    def to_json(self, path: str | os.PathLike, **meta: Any) -> None:
        payload = {
            "seed": self.seed,
            "val_fraction": self.val_fraction,
            **({"val_data": self.val_data} if self.val_data is not None else {}),
            **meta,
            "train_groups": self.train_groups,
            "val_groups": self.val_groups,
        }
        Path(path).write_text(json.dumps(payload, indent=2))

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> Split:
        data = json.loads(Path(path).read_text())
        return cls(data["seed"], data["val_fraction"], data["train_groups"], data["val_groups"], data.get("val_data"))

    def select(self, samples: Sequence[Sample], which: str) -> list[Sample]:
        groups = set(self.train_groups if which == "train" else self.val_groups)
        return [s for s in samples if s.group in groups]


def saved_validation(
    split_file: Path, data: str, layout: str | None, slice_axis: int, protocol: Any
) -> tuple[list[Sample], str]:
    """The validation samples of a training run (``--split val``) and their layout name.

    Its ``split.json`` names them: the held-out groups of ``data``'s training pool, or, for a run
    trained with ``--val-data``, that folder's non-test cases (``data`` is then not read).

    Raises:
        FileNotFoundError: no ``split.json``, or the run's validation folder is gone.
    """
    if not split_file.exists():
        raise FileNotFoundError(f"--split val needs the run's {split_file} (written by medsad train)")
    split = Split.from_json(split_file)
    if split.val_data is not None:
        if not Path(split.val_data).is_dir():
            raise FileNotFoundError(
                f"the run validated on the folder {split.val_data} (--val-data), which is not there any more"
            )
        logger.info("the run's validation folder: %s (its --val-data)", split.val_data)
        data = split.val_data
    pool, name = protocol.training_pool(data, layout, slice_axis)
    return split.select(pool, "val"), name


def make_split(
    samples: Sequence[Sample], val_fraction: float, seed: int, sources: dict[str, str] | None = None
) -> Split:
    """Split by group (volume / patient / image stem), stratified by whether a group has lesions.

    Within each stratum the validation groups are drawn in turn from each ``sources`` value
    (e.g. the anatomy source or site of every group, from ``dataset.json``), so validation
    holds more than one source whenever it can: an operating point fitted on validation then
    sees every kind of scan it will be used on, not only the most common one.

    Raises:
        ValueError: fewer than two groups, or a fraction outside (0, 1).
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    abnormal = {s.group for s in samples if s.label == 1}
    groups = sorted({s.group for s in samples})
    if len(groups) < 2:
        raise ValueError(f"need at least 2 groups (volumes/images) to split, found {len(groups)}")
    rng = np.random.default_rng(seed)
    source_of = {g: (sources or {}).get(g, "") for g in groups}
    train, val = [], []
    for stratum in (sorted(g for g in groups if g in abnormal), sorted(g for g in groups if g not in abnormal)):
        order = [stratum[i] for i in rng.permutation(len(stratum))]
        n_val = int(round(len(order) * val_fraction))
        if stratum and n_val == 0 and len(order) > 1:
            n_val = 1
        queues: dict[str, list[str]] = {}
        for g in order:  # sources in order of first appearance (seeded), groups in seeded order
            queues.setdefault(source_of[g], []).append(g)
        picked: list[str] = []
        while len(picked) < n_val:
            for queue in queues.values():
                if queue and len(picked) < n_val:
                    picked.append(queue.pop(0))
        val += picked
        train += [g for g in order if g not in picked]
    if not train or not val:
        raise ValueError(f"split left an empty side (train {len(train)}, val {len(val)} groups)")
    return Split(seed, val_fraction, sorted(train), sorted(val))


def source_balanced_sampler(
    samples: Sequence[Sample], sources: dict[str, str], seed: int = 0
) -> torch.utils.data.WeightedRandomSampler:
    """Draws ``len(samples)`` samples per epoch (with replacement) so that every source of
    ``sources`` (group -> source tag; untagged groups form one source) is drawn equally often:
    a source with few volumes is not outweighed by one with many.

    Raises:
        ValueError: no samples.
    """
    if not samples:
        raise ValueError("no training samples to draw from")
    tags = [sources.get(s.group, "") for s in samples]
    counts = Counter(tags)
    weights = torch.tensor([1.0 / counts[t] for t in tags], dtype=torch.double)
    logger.info(
        "source-balanced sampling: %s",
        ", ".join(f"{t or 'untagged'} {n} slices" for t, n in sorted(counts.items())),
    )
    generator = torch.Generator().manual_seed(seed)
    return torch.utils.data.WeightedRandomSampler(weights, len(samples), replacement=True, generator=generator)


#: Memory the decoded training volumes may hold (the sample data's 14 volumes take ~110 MB).
VOLUME_CACHE_BYTES = int(os.environ.get("MEDSAD_VOLUME_CACHE_MB", "2048")) * 2**20


class _ArrayCache:
    """Least-recently-used cache of decoded volumes, bounded by bytes rather than by count.

    A count bound thrashes as soon as a training set has more volumes than the bound: with
    shuffled slices nearly every miss decodes (and normalises) a whole volume again for one
    slice. Volumes larger than the bound are returned without being kept.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._bytes = 0
        self.hits = self.misses = 0

    def get(self, key: tuple, make: Callable[[], np.ndarray]) -> np.ndarray:
        if key in self._items:
            self._items.move_to_end(key)
            self.hits += 1
            return self._items[key]
        self.misses += 1
        value = make()
        if value.nbytes <= self.max_bytes:
            self._items[key] = value
            self._bytes += value.nbytes
            while self._bytes > self.max_bytes:
                _, old = self._items.popitem(last=False)
                self._bytes -= old.nbytes
        return value

    def clear(self) -> None:
        self._items.clear()
        self._bytes = 0


def _file_key(path: str) -> tuple:
    """The path with its modification time and size: a label saved again is read again."""
    st = os.stat(path)
    return path, st.st_mtime_ns, st.st_size


_CACHE = _ArrayCache(VOLUME_CACHE_BYTES)


def _volume(path: str, intensity: str = "percentile") -> np.ndarray:
    def make() -> np.ndarray:
        array, geometry = load_volume(path)  # models slice the RAS view (data/orientation.py)
        return normalize_intensity(ras_view(array, geometry.affine), method=intensity)

    return _CACHE.get(("image", *_file_key(path), intensity), make)


_SPACING: dict[tuple, tuple[float, float, float] | None] = {}


def _ras_spacing(path: str) -> tuple[float, float, float] | None:
    """The voxel sizes of the volume at ``path`` along its RAS view's axes (from its header)."""
    key = ("spacing", *_file_key(path))
    if key not in _SPACING:
        _, geometry = read_volume_header(path)
        _SPACING[key] = reorientation(geometry.affine).spacing_to_ras(geometry.spacing)
    return _SPACING[key]


def pixel_mm(sample: Sample, slice_axis: int) -> tuple[float, float] | None:
    """(row, column) mm of a volume sample's slices (None for 2-D images): what makes
    :func:`~medsad_monai.data.preprocess.prepare_slice` resample non-square pixels, as inference does."""
    if sample.slice_index is None:
        return None
    spacing = _ras_spacing(str(sample.image))
    return None if spacing is None else tuple(float(spacing[d]) for d in range(3) if d != slice_axis)  # type: ignore[return-value]


_SKULL: dict[tuple, bool] = {}
_REFLECTION: dict[tuple, int] = {}


def _reflection_sum(path: str, intensity: str) -> int:
    """The midline reflection of the volume at ``path`` (:func:`reflection_sum`), once per file."""
    key = ("reflection", *_file_key(path), intensity)
    if key not in _REFLECTION:
        _REFLECTION[key] = reflection_sum(_volume(path, intensity))
    return _REFLECTION[key]


def _has_skull(path: str, intensity: str, axis: int) -> bool:
    """Whether the volume at ``path`` keeps skull and scalp (:func:`volume_has_skull`), once per file."""
    key = ("skull", *_file_key(path), intensity, axis)
    if key not in _SKULL:
        _SKULL[key] = volume_has_skull(_volume(path, intensity), axis)
    return _SKULL[key]


def _label_volume(path: str) -> np.ndarray:
    def make() -> np.ndarray:
        array, geometry = load_volume(path)
        return (ras_view(np.asarray(array), geometry.affine) > 0).astype(np.uint8)

    return _CACHE.get(("label", *_file_key(path)), make)


def load_sample(
    sample: Sample, slice_axis: int = 2, intensity: str = "percentile", context: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """A sample's image in [0, 1] ((H, W) for volume slices, normalised per volume with
    ``intensity``, (H, W, 3) with ``context`` 1: the slice and its two neighbours,
    :func:`~medsad_monai.data.volumes.take_slab`; (H, W, 3) for 2-D) and its mask."""
    if sample.slice_index is not None:
        image = take_slab(_volume(str(sample.image), intensity), slice_axis, sample.slice_index, context)
        if sample.masks:
            mask = take_slice(_label_volume(str(sample.masks[0])), slice_axis, sample.slice_index)
        else:
            mask = np.zeros(image.shape, np.uint8)
        return image, mask
    image = load_image_2d(sample.image)
    return image, load_mask_2d(list(sample.masks), image.shape[:2])


def drop_background(samples: Sequence[Sample], slice_axis: int = 2, intensity: str = "percentile") -> list[Sample]:
    """Remove volume slices without anatomy (the same rule inference uses to skip slices)."""
    kept = []
    for s in samples:
        if s.slice_index is None:
            kept.append(s)
            continue
        image = take_slice(_volume(str(s.image), intensity), slice_axis, s.slice_index)
        if s.label == 1 or not is_background(image):
            kept.append(s)
    return kept


class LoadSliced(MapTransform):
    """``{"sample": Sample}`` -> ``image`` (H, W[, 3]) float, ``mask`` (H, W), ``label``
    (``context`` 1: a volume slice comes with its neighbours as channels 0 and 2). With
    ``skull`` a volume slice also carries ``skull``: whether its volume keeps skull and scalp
    (for :class:`PaintLesionsd`, which removes the key). With ``mirror`` it carries what
    :class:`MirrorChanneld` needs (``mirror_k``, and for sagittal slices ``mirror_partner``)."""

    def __init__(
        self,
        slice_axis: int = 2,
        intensity: str = "percentile",
        context: int = 0,
        skull: bool = False,
        mirror: bool = False,
    ):
        super().__init__(keys=["sample"])
        self.slice_axis = slice_axis
        self.intensity = intensity
        self.context = context
        self.skull = skull
        self.mirror = mirror

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        sample: Sample = data["sample"]
        image, mask = load_sample(sample, self.slice_axis, self.intensity, self.context)
        out = {
            "image": image,
            "mask": mask,
            "label": float(sample.label),
            "name": _name(sample),
            "group": sample.group,
        }
        if self.skull and sample.slice_index is not None:
            out["skull"] = _has_skull(str(sample.image), self.intensity, self.slice_axis)
        if self.mirror:
            if sample.slice_index is None:
                raise ValueError(f"{sample.image}: the mirror channel needs volumes, not 2-D images")
            k = _reflection_sum(str(sample.image), self.intensity)
            out["mirror_k"] = k
            if self.slice_axis == 0:  # sagittal: the mirror is the slice on the other side, unpainted
                volume = _volume(str(sample.image), self.intensity)
                partner = k - sample.slice_index
                inside = 0 <= partner < volume.shape[0]
                out["mirror_partner"] = take_slice(volume, 0, partner) if inside else np.zeros_like(image)
        out["pixel_mm"] = pixel_mm(sample, self.slice_axis)
        return out


class PaintLesionsd(Randomizable, MapTransform):
    """With probability ``prob``, paint synthetic lesions on a *normal* slice (augmentation).

    Gives the variety of many lesions instead of a fixed handful (docs/maintainers.md).
    ``styles`` restricts the lesion styles (keep a held-out style out of training).
    With ``context`` 1 the image is a slab (H, W, 3) of a slice between its two neighbours: the
    lesion is painted on the middle slice and carried into each neighbour with a random
    strength in [0.5, 1] (a lesion tapering off), or with probability 0.2 not at all (the
    lesion ends at this slice), so that lesions look three-dimensional as real ones do.
    Lesions go inside the slice's brain estimate (:func:`estimate_brain_mask`); on a slice of a
    head with its skull (``skull`` from :class:`LoadSliced`) a slice whose estimate is not a
    brain (neck, face, vertex) gets none, so no lesion is ever painted on muscle, orbits or scalp.
    """

    def __init__(self, prob: float, styles: Sequence[str] = ("A", "C"), context: int = 0) -> None:
        MapTransform.__init__(self, keys=["image"])
        self.prob = prob
        self.styles = list(styles)
        self.context = context

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        data = dict(data)
        skull = data.pop("skull", None)
        if data["label"] != 0 or self.R.rand() >= self.prob:
            return data
        image = np.asarray(data["image"], dtype=np.float32)
        slab = self.context > 0 and image.ndim == 3
        grey = image if image.ndim == 2 else image[..., 1] if slab else image.mean(axis=-1)
        brain = estimate_brain_mask(grey, skull=skull)
        if brain.sum() < 64:
            return data
        rng = np.random.default_rng(self.R.randint(0, 2**31 - 1))
        style = self.styles[self.R.randint(len(self.styles))]
        painted, mask = paint_lesions(grey, brain, rng, style=style)
        if mask.sum() == 0:
            return data
        if slab:
            delta = painted - grey
            strengths = [0.0 if rng.random() < 0.2 else rng.uniform(0.5, 1.0) for _ in range(2)]
            painted = np.stack(
                [
                    np.clip(image[..., 0] + strengths[0] * delta, 0.0, 1.0),
                    painted,
                    np.clip(image[..., 2] + strengths[1] * delta, 0.0, 1.0),
                ],
                axis=-1,
            ).astype(np.float32)
        return {**data, "image": painted, "mask": mask, "label": 1.0}


class MirrorChanneld(MapTransform):
    """A volume slice ``(H, W)`` -> ``(H, W, 3)`` channels (slice, its left-right mirror, slice)
    (:mod:`medsad_monai.data.mirror`), after any painted lesion: on an axial or coronal slice the
    lesion shows in the mirror on the other side, as the whole slice does; a sagittal slice's
    mirror is the unpainted slice on the other side of the midline. The same channels as
    :func:`~medsad_monai.data.mirror.take_mirror_slab` gives inference."""

    def __init__(self, slice_axis: int = 2) -> None:
        super().__init__(keys=["image"])
        self.slice_axis = slice_axis

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        data = dict(data)
        k = data.pop("mirror_k")
        partner = data.pop("mirror_partner", None)
        image = np.asarray(data["image"], dtype=np.float32)
        mirror = np.asarray(partner, dtype=np.float32) if self.slice_axis == 0 else mirror_rows(image, k)
        return {**data, "image": np.stack([image, mirror, image], axis=-1)}


class _ToModelSized(MapTransform):
    def __init__(self, size: int) -> None:
        super().__init__(keys=["image", "mask"])
        self.size = size

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        data = dict(data)
        mm = data.pop("pixel_mm", None)  # non-square pixels are made square, as at inference
        image, _ = prepare_slice(data["image"], self.size, mm)
        mask = prepare_mask(data["mask"], self.size, mm)
        return {**data, "image": image, "mask": mask, "label": torch.tensor(data["label"], dtype=torch.float32)}


class _Clip01(MapTransform):
    """Keep intensities in [0, 1] after intensity augmentation (the model's input range)."""

    def __init__(self) -> None:
        super().__init__(keys=["image"])

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        return {**data, "image": torch.as_tensor(data["image"]).clamp(0.0, 1.0)}


def _name(sample: Sample) -> str:
    stem = sample.group
    return f"{stem}_s{sample.slice_index:03d}" if sample.slice_index is not None else stem


def slice_dataset(
    samples: Sequence[Sample],
    size: int,
    *,
    train: bool,
    slice_axis: int = 2,
    synthetic_lesions: float = 0.0,
    synthetic_styles: Sequence[str] = ("A", "C"),
    augment: str = "paper",
    seed: int = 0,
    intensity: str = "percentile",
    context: int = 0,
    synthetic_region: str = "slice",
    mirror: bool = False,
) -> Dataset:
    """A MONAI ``Dataset`` of model-sized slices: ``image`` (3, S, S) in [0, 1], ``mask`` (1, S, S).

    Training adds random horizontal flips (paper §4.2) and, if asked, on-the-fly synthetic
    lesions on normal slices. ``augment="intensity"`` adds MONAI's random contrast (gamma),
    intensity scale, bias field, noise, blur and lower resolution — what changes between
    scanners and protocols, not anatomy; ``augment="strong"`` adds a random affine (rotation,
    scale, shift) to the paper's flips and a milder intensity set. ``augment="mirror"`` adds a
    random flip along the other in-plane axis, drawn independently: a volume slice of the RAS
    view has left-right along its rows and anterior-posterior along its columns, so the paper's
    flip (columns) mirrors front and back, and this one left and right. ``augment="elastic"`` adds
    a random smooth deformation (MONAI ``Rand2DElasticd``, :data:`ELASTIC_SPACING`) of the slice
    and its mask, after the lesions are painted: normal anatomy of other shapes than the few
    training subjects have (a new subject's larger ventricles looked like lesions to the model).
    Volumes are normalised per volume with ``intensity`` (:func:`normalize_intensity`); the
    model's own normalisation (``model.normalize``) follows inside the model. ``context`` 1 gives
    the model a volume slice with its two neighbours as its three channels (2-D images are
    unchanged). ``synthetic_region`` (:data:`SYNTHETIC_REGIONS`) says where lesions are painted.
    ``mirror`` gives it a volume slice beside its left-right mirror (:class:`MirrorChanneld`;
    volumes only, not with ``context``).
    """
    if augment not in AUGMENTS:
        raise ValueError(f"augment={augment!r}; expected one of {AUGMENTS}")
    if intensity not in INTENSITY_METHODS:
        raise ValueError(f"intensity={intensity!r}; expected one of {INTENSITY_METHODS}")
    if context not in CONTEXT_SLICES:
        raise ValueError(f"context={context!r}; expected one of {CONTEXT_SLICES}")
    if synthetic_region not in SYNTHETIC_REGIONS:
        raise ValueError(f"synthetic_region={synthetic_region!r}; expected one of {SYNTHETIC_REGIONS}")
    if mirror and context:
        raise ValueError("the mirror channel and context slices both use the model's 3 channels: pick one")
    if mirror and any(s.slice_index is None for s in samples):
        raise ValueError("the mirror channel needs volumes: a 2-D image has no known left-right axis and midline")
    skull = train and synthetic_lesions > 0 and synthetic_region == "brain"
    transforms: list[Any] = [LoadSliced(slice_axis, intensity, context, skull=skull, mirror=mirror)]
    if train and synthetic_lesions > 0:
        transforms.append(PaintLesionsd(synthetic_lesions, synthetic_styles, context))
    if mirror:
        transforms.append(MirrorChanneld(slice_axis))
    transforms.append(_ToModelSized(size))
    if train:
        transforms.append(RandFlipd(keys=["image", "mask"], prob=0.5, spatial_axis=1))
    if train and augment == "mirror":
        transforms.append(RandFlipd(keys=["image", "mask"], prob=0.5, spatial_axis=0))
    if train and augment == "elastic":
        transforms.append(
            Rand2DElasticd(
                keys=["image", "mask"],
                spacing=ELASTIC_SPACING,
                magnitude_range=ELASTIC_MAGNITUDE,
                prob=ELASTIC_PROB,
                mode=("bilinear", "nearest"),
                padding_mode="zeros",
            )
        )
    if train and augment == "strong":
        transforms += [
            RandAffined(
                keys=["image", "mask"],
                prob=0.7,
                rotate_range=0.26,
                scale_range=0.12,
                translate_range=6,
                mode=("bilinear", "nearest"),
                padding_mode="zeros",
            ),
            RandBiasFieldd(keys=["image"], prob=0.3, coeff_range=(0.0, 0.15)),
            RandAdjustContrastd(keys=["image"], prob=0.5, gamma=(0.7, 1.4)),
            RandScaleIntensityd(keys=["image"], prob=0.3, factors=0.1),
            RandGaussianNoised(keys=["image"], prob=0.3, std=0.02),
            _Clip01(),
        ]
    if train and augment == "intensity":
        transforms += [
            RandAdjustContrastd(keys=["image"], prob=0.5, gamma=(0.6, 1.6)),
            RandScaleIntensityd(keys=["image"], prob=0.5, factors=0.25),
            RandBiasFieldd(keys=["image"], prob=0.3, coeff_range=(0.0, 0.2)),
            RandGaussianSmoothd(keys=["image"], prob=0.2, sigma_x=(0.25, 1.0), sigma_y=(0.25, 1.0)),
            RandSimulateLowResolutiond(keys=["image"], prob=0.2, zoom_range=(0.5, 1.0), upsample_mode="bilinear"),
            RandGaussianNoised(keys=["image"], prob=0.2, std=0.03),
            _Clip01(),
        ]
    # Plain tensors out: MONAI's random transforms return MetaTensors, and every op of the model
    # on a MetaTensor batch goes through its __torch_function__ (meta-data bookkeeping), which
    # made the training forward of `tiny` about 3x slower than on a plain tensor.
    transforms.append(ToTensord(keys=["image", "mask"], track_meta=False))
    compose = Compose(transforms)
    compose.set_random_state(seed=seed)
    return Dataset(data=[{"sample": s} for s in samples], transform=compose)
