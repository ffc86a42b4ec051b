"""Dataset folder layouts (BMAD, BUSI, SR-ICL/COVID-CT, volume folders) and 2-D image loading.

Every reader turns a folder into a flat list of :class:`Sample`. Files are paired by stem
(file name without extension), never by sort order or string replacement. Files and folders
whose names start with ``.`` (e.g. macOS ``._x.nii.gz`` in Decathlon tarballs) are ignored.

Layouts:

- ``bmad``: ``<root>/{train,valid,test}/{good,Ungood}/img/*.png``; masks in
  ``.../Ungood/anomaly_mask/<stem>.*`` (or ``.../Ungood/label/``, BMAD's other spelling).
- ``busi``: ``<root>/{benign,malignant,normal}/name.png`` + ``name_mask.png``,
  ``name_mask_1.png`` ... (OR-merged).
- ``sricl``: ``<root>/images/*`` + ``<root>/masks/*``; label = 1 iff the mask is non-empty.
- ``volumes``: Decathlon/nnU-Net ``imagesTr/ labelsTr/ [imagesTs/ labelsTs/]``; one sample per
  slice along ``slice_axis``; label = 1 iff the label slice has a voxel > 0.
"""

from __future__ import annotations

__all__ = [
    "case_tags",
    "volume_samples",
    "image_sample",
    "LAYOUTS",
    "IMAGE_SUFFIXES",
    "Sample",
    "DatasetIndex",
    "detect_layout",
    "read_layout",
    "load_image_2d",
    "load_mask_2d",
]

import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medsad_monai.data.images import IMAGE_SUFFIXES, _read_binary_mask, load_image_2d, load_mask_2d
from medsad_monai.data.orientation import ras_view
from medsad_monai.data.volumes import check_label_matches, load_volume, read_volume_header, volume_suffix

logger = logging.getLogger(__name__)

LAYOUTS: tuple[str, ...] = ("bmad", "busi", "sricl", "volumes")
SPLITS: tuple[str, ...] = ("train", "valid", "test")
_BUSI_CLASSES = {"benign": 1, "malignant": 1, "normal": 0}
_BUSI_MASK = re.compile(r"^(?P<base>.+)_mask(?:_\d+)?$")
_CHANNEL = re.compile(r"^(?P<case>.+)_\d{4}$")
_BMAD_MASK_DIRS = ("anomaly_mask", "label")
_MAX_LISTED = 10


@dataclass(frozen=True)
class Sample:
    """One 2-D training/evaluation sample.

    Args:
        image: 2-D image file, or the volume file for volume slices.
        masks: mask files, OR-merged (for volumes: the label volume); empty => all-zero mask.
        label: 1 = abnormal, 0 = normal.
        group: unit for splitting: the stem for 2-D images, the case id for volumes.
        split: ``'train'``/``'valid'``/``'test'`` when the layout defines it, else None.
        slice_index: volumes only: index along the slice axis.
    """

    image: Path
    masks: tuple[Path, ...]
    label: int
    group: str
    split: str | None
    slice_index: int | None = None


@dataclass
class DatasetIndex:
    """The samples of a dataset folder.

    Args:
        samples: all samples, in a deterministic order.
        layout: one of :data:`LAYOUTS`.
        problems: things skipped, each naming the file and the reason.
        slice_axis: for ``volumes``, the axis slices were taken along; else None.
    """

    samples: list[Sample]
    layout: str
    problems: list[str] = field(default_factory=list)
    slice_axis: int | None = None

    @property
    def n_normal(self) -> int:
        """Number of samples with label 0."""
        return sum(1 for s in self.samples if s.label == 0)

    @property
    def n_abnormal(self) -> int:
        """Number of samples with label 1."""
        return sum(1 for s in self.samples if s.label == 1)

    @property
    def n_masks(self) -> int:
        """Number of samples with at least one mask file."""
        return sum(1 for s in self.samples if s.masks)


def _visible(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def _image_files(folder: Path) -> list[Path]:
    return [p for p in _visible(folder) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]


def _volume_files(folder: Path) -> list[Path]:
    return [p for p in _visible(folder) if p.is_file() and volume_suffix(p) is not None]


def _volume_stem(path: Path) -> str:
    return path.name[: -len(volume_suffix(path) or "")]


def _by_stem(files: Iterable[Path], stem_of: Callable[[Path], str] = lambda p: p.stem) -> dict[str, Path]:
    """Index files by stem; two files with one stem (a.png, a.jpg) is an error."""
    out: dict[str, Path] = {}
    for path in files:
        stem = stem_of(path)
        if stem in out:
            raise ValueError(f"two files share the stem {stem!r}: {out[stem]} and {path}; keep one")
        out[stem] = path
    return out


def _unmatched_error(what: str, files: Sequence[Path | str]) -> ValueError:
    listed = ", ".join(str(f) for f in list(files)[:_MAX_LISTED])
    more = f" (+{len(files) - _MAX_LISTED} more)" if len(files) > _MAX_LISTED else ""
    return ValueError(f"{len(files)} {what}: {listed}{more}")


def _require_dir(path: Path) -> Path:
    if not path.is_dir():
        raise ValueError(f"folder not found: {path}")
    return path


def detect_layout(root: str | Path) -> str:
    """Detect the layout of a dataset folder from its sub-folder names.

    Raises:
        ValueError: naming the folder and what was found if no layout or several match.
    """
    root = _require_dir(Path(root))
    names = {p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}
    found = []
    if names & set(SPLITS) and any((root / s / c / "img").is_dir() for s in SPLITS for c in ("good", "Ungood")):
        found.append("bmad")
    if names & set(_BUSI_CLASSES):
        found.append("busi")
    if "images" in names or "masks" in names:
        found.append("sricl")
    if names & {"imagesTr", "labelsTr", "imagesTs", "labelsTs"}:
        found.append("volumes")
    if len(found) != 1:
        what = "no known layout" if not found else f"a mix of layouts {found}"
        raise ValueError(
            f"{root}: found {what} (sub-folders: {sorted(names) or 'none'}); expected exactly one of "
            "bmad (train|valid|test/good|Ungood/img), busi (benign|malignant|normal), "
            "sricl (images + masks) or volumes (imagesTr + labelsTr)"
        )
    return found[0]


def read_layout(
    root: str | Path,
    layout: str | None = None,
    *,
    slice_axis: int = 2,
    split: str | None = None,
) -> DatasetIndex:
    """Read a dataset folder into a :class:`DatasetIndex`.

    Args:
        root: dataset folder.
        layout: one of :data:`LAYOUTS`; detected with :func:`detect_layout` when None.
        slice_axis: volumes only: the axis (0, 1, 2) slices are taken along.
        split: ``bmad``: keep only that split (None = all). ``volumes``: ``'test'`` reads
            ``imagesTs``/``labelsTs``, None or ``'train'`` read ``imagesTr``/``labelsTr`` (their
            samples have ``split=None``: split them by group). ``busi``/``sricl`` define no split;
            passing one is an error.

    Returns:
        The index; its ``problems`` list the files skipped and why.

    Raises:
        ValueError: for an unknown layout or split, an empty or missing folder, or unpaired files.
    """
    root = Path(root)
    layout = detect_layout(root) if layout is None else layout
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
    if split is not None and split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS} or None")
    if split is not None and layout in ("busi", "sricl"):
        raise ValueError(f"layout {layout!r} has no predefined splits; omit split= and split by Sample.group")
    if layout == "volumes":
        if split == "valid":
            raise ValueError("volumes layout has no predefined validation split; split imagesTr by Sample.group")
        if slice_axis not in (0, 1, 2):
            raise ValueError(f"slice_axis must be 0, 1 or 2, got {slice_axis}")
        index = _read_volumes(_require_dir(root), slice_axis, test=split == "test")
    else:
        reader = {"bmad": _read_bmad, "busi": _read_busi, "sricl": _read_sricl}[layout]
        index = reader(_require_dir(root), split)
    if not index.samples:
        raise ValueError(f"{root}: no usable samples for layout {layout!r} (problems: {index.problems[:3]})")
    for problem in index.problems:
        logger.warning("%s", problem)
    logger.info("%s: %s layout, %d normal, %d abnormal samples", root, layout, index.n_normal, index.n_abnormal)
    return index


def _read_bmad(root: Path, split: str | None) -> DatasetIndex:
    samples: list[Sample] = []
    for name in [split] if split else SPLITS:
        for cls, label in (("good", 0), ("Ungood", 1)):
            img_dir = root / name / cls / "img"
            if not img_dir.is_dir():
                continue
            images = _by_stem(_image_files(img_dir))
            masks: dict[str, Path] = {}
            if label:
                mask_dir = next((img_dir.parent / d for d in _BMAD_MASK_DIRS if (img_dir.parent / d).is_dir()), None)
                if mask_dir is None:
                    raise ValueError(f"{img_dir.parent}: no mask folder; expected one of {_BMAD_MASK_DIRS}")
                masks = _by_stem(_image_files(mask_dir))
                unmatched = sorted(set(images) ^ set(masks))
                if unmatched:
                    files = [images.get(s) or masks[s] for s in unmatched]
                    raise _unmatched_error(f"BMAD images/masks without a partner (by stem) in {img_dir.parent}", files)
            samples += [Sample(images[s], (masks[s],) if label else (), label, s, name) for s in images]
    if not samples:
        where = f"{root}/{split}" if split else str(root)
        raise ValueError(f"{where}: no images in any {{good,Ungood}}/img folder")
    return DatasetIndex(samples, "bmad")


def _read_busi(root: Path, split: str | None) -> DatasetIndex:
    samples: list[Sample] = []
    problems: list[str] = []
    for cls, label in _BUSI_CLASSES.items():
        folder = root / cls
        if not folder.is_dir():
            continue
        files = _image_files(folder)
        images = _by_stem(p for p in files if not _BUSI_MASK.match(p.stem))
        masks: dict[str, list[Path]] = {}
        for path in files:
            match = _BUSI_MASK.match(path.stem)
            if match:
                masks.setdefault(match["base"], []).append(path)
        orphans = sorted(p for base, paths in masks.items() if base not in images for p in paths)
        if orphans:
            raise _unmatched_error(f"BUSI masks without an image (by stem) in {folder}", orphans)
        for stem, image in images.items():
            mask_files = tuple(sorted(masks.get(stem, [])))
            if label and not mask_files:
                problems.append(f"{image}: skipped, {cls} image has no {stem}_mask.* file")
                continue
            samples.append(Sample(image, mask_files, label, stem, None))
    if not samples and not problems:
        raise ValueError(f"{root}: no images in benign/, malignant/ or normal/")
    return DatasetIndex(samples, "busi", problems)


def _read_sricl(root: Path, split: str | None) -> DatasetIndex:
    img_dir, mask_dir = _require_dir(root / "images"), _require_dir(root / "masks")
    images, masks = _by_stem(_image_files(img_dir)), _by_stem(_image_files(mask_dir))
    if not images:
        raise ValueError(f"{img_dir}: no images ({', '.join(IMAGE_SUFFIXES)})")
    unmatched = sorted(set(images) ^ set(masks))
    if unmatched:
        raise _unmatched_error(
            f"SR-ICL images/masks without a partner (by stem) under {root}",
            [images.get(s) or masks[s] for s in unmatched],
        )
    samples: list[Sample] = []
    problems: list[str] = []
    for stem, image in images.items():
        try:
            samples.append(image_sample(image, masks[stem], stem))
        except (OSError, ValueError) as err:
            problems.append(f"{masks[stem]}: skipped, unreadable mask ({err})")
    return DatasetIndex(samples, "sricl", problems)


def _pair_volumes(images_dir: Path, labels_dir: Path) -> tuple[dict[str, Path], dict[str, Path], list[str]]:
    """Pair images with labels by case id; nnU-Net channel suffixes ``_0000`` are understood."""
    images = _volume_files(_require_dir(images_dir))
    if not images:
        raise ValueError(f"{images_dir}: no volumes (.nii, .nii.gz, .nrrd, .nhdr)")
    labels = _by_stem(_volume_files(_require_dir(labels_dir)), _volume_stem)
    pairs: dict[str, Path] = {}
    problems: list[str] = []
    unmatched: list[Path] = []
    for image in images:
        stem = _volume_stem(image)
        channel = _CHANNEL.match(stem)
        case = stem if stem in labels else (channel["case"] if channel and channel["case"] in labels else None)
        if case is None:
            unmatched.append(image)
        elif case in pairs:  # a second channel: keep the lowest (_0000), report the rest
            problems.append(f"{image}: skipped, extra channel of case {case!r} (only {pairs[case].name} is used)")
        else:
            pairs[case] = image
    unmatched += [labels[c] for c in sorted(set(labels) - set(pairs))]
    if unmatched:
        raise _unmatched_error(
            f"volumes without a partner (by case id) in {images_dir.name}/{labels_dir.name}", unmatched
        )
    return pairs, labels, problems


def volume_samples(
    image: str | Path, label: str | Path, case: str, slice_axis: int = 2, split: str | None = None
) -> list[Sample]:
    """One sample per slice along ``slice_axis`` of a labelled volume's RAS view (as training
    cuts it, :mod:`medsad_monai.data.orientation`; an empty label slice is a normal sample).

    Raises:
        ValueError: naming the label: unreadable, or its geometry differs from the image's.
    """
    image, label_path = Path(image), Path(label)
    image_shape, image_geom = read_volume_header(image)
    label_array, label_geom = load_volume(label_path)
    check_label_matches(image_geom, label_geom, image_shape, label_array.shape, label_path)
    other = tuple(a for a in range(3) if a != slice_axis)  # slices of the RAS view, as training cuts them
    has_lesion = np.any(ras_view(np.asarray(label_array), label_geom.affine) > 0, axis=other)
    return [Sample(image, (label_path,), int(flag), case, split, k) for k, flag in enumerate(has_lesion.tolist())]


def image_sample(image: str | Path, mask: str | Path, stem: str) -> Sample:
    """The sample of a 2-D image and its mask (abnormal when the mask has a foreground pixel).

    Raises:
        ValueError: naming the mask if it cannot be read.
    """
    return Sample(Path(image), (Path(mask),), int(_read_binary_mask(Path(mask)).any()), stem, None)


def _read_volumes(root: Path, slice_axis: int, test: bool) -> DatasetIndex:
    kind = "Ts" if test else "Tr"
    pairs, labels, problems = _pair_volumes(root / f"images{kind}", root / f"labels{kind}")
    samples: list[Sample] = []
    for case, image in sorted(pairs.items()):
        try:
            samples += volume_samples(image, labels[case], case, slice_axis, "test" if test else None)
        except ValueError as err:
            problems.append(f"case {case!r} skipped: {err}")
    return DatasetIndex(samples, "volumes", problems, slice_axis)


def case_tags(data: str | os.PathLike) -> dict[str, dict[str, str]]:
    """Per-case tags of a volumes layout, from its ``dataset.json`` (the ``medsad.cases`` entries
    of ``medsad make-sample-data``: ``style``, ``anatomy``, ``source``); ``{}`` without them.

    Evaluation reports figures per tag; training draws validation volumes from every
    ``anatomy``.
    """
    meta = Path(data) / "dataset.json"
    if not meta.is_file():
        return {}
    try:
        cases = json.loads(meta.read_text()).get("medsad", {}).get("cases", [])
    except (ValueError, AttributeError):
        return {}
    keys = ("anatomy", "style", "source")
    return {c["case"]: {k: str(c[k]) for k in keys if k in c} for c in cases if isinstance(c, dict) and "case" in c}
