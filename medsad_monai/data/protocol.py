"""The data protocol: which samples of a dataset folder train (validation included) and which test.

A layout reader (:mod:`medsad_monai.data.layouts`) lists every sample of a folder; the
protocol decides what each one is for. Training never sees the test samples, and validation
(checkpoint selection and calibration) is always carved out of the training samples by
:func:`~medsad_monai.engine.datasets.make_split` (``val_fraction`` of the groups, 0.2 by
default), never taken from the test samples.

- **BMAD** (``bmad``: ``train/ valid/ test/``), ``bmad_usage``:

  - ``bmad`` (default, the usage BMAD was built for): train on ``train/`` + ``valid/``, test on
    ``test/``. BMAD's ``train/`` holds only normal images (it is an unsupervised benchmark).
  - ``paper``: train on ``test/`` (normal and abnormal images with masks), test on ``valid/``;
    ``train/`` is not used. The paper's Table 1 counts (Brain 3715 train / 83 test, Retina
    1805 / 115) are the sizes of BMAD's ``test/`` and ``valid/`` folders, so this is how we read
    the paper's supervised setting (a reading of the counts; the paper does not name folders).
    The samples' ``split`` is rewritten to say what they are used for (``test/`` samples get
    ``"train"``, ``valid/`` samples ``"test"``); their paths still name the folder.

- **Split lists** (``split_lists``: a folder with ``train.txt`` and ``test.txt``) for the layouts
  without split folders (``busi``, ``sricl``), e.g. the lists of the SR-ICL framework: one image
  per line, as a stem (``case_12``), a file name (``case_12.png``) or a path (its file name is
  used); blank lines and ``#`` comments are ignored. Every listed stem must exist in the folder;
  a stem in both lists is an error; images in neither list are left out (and logged).
  Without lists, ``busi``/``sricl`` have no test set (``medsad reproduce`` then writes a seeded
  split of its own, :func:`write_split_lists`).

- **BUSI** ``busi_normal``: include ``normal/`` (default) or not. The paper's Breast counts
  (486 + 161 = 647) are the benign + malignant images only.

- **volumes** (``imagesTr``/``imagesTs``): train on ``imagesTr``, test on ``imagesTs``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medsad_monai.config import strict_from_dict
from medsad_monai.data.images import IMAGE_SUFFIXES
from medsad_monai.data.layouts import Sample, detect_layout, read_layout

__all__ = [
    "BMAD_USAGES",
    "SPLIT_LIST_FILES",
    "DataProtocol",
    "read_split_lists",
    "write_split_lists",
]

logger = logging.getLogger(__name__)

#: How BMAD's folders are used: ``bmad`` (train/ + valid/ -> test/) or ``paper`` (test/ -> valid/).
BMAD_USAGES: tuple[str, ...] = ("bmad", "paper")
#: The files of a split-list folder.
SPLIT_LIST_FILES: tuple[str, str] = ("train.txt", "test.txt")
_LIST_LAYOUTS = ("busi", "sricl")
_MAX_LISTED = 5


@dataclass(frozen=True)
class DataProtocol:
    """Which samples of a dataset folder are for training and which are the test set.

    Args:
        bmad_usage: ``bmad`` or ``paper`` (see the module docstring); BMAD folders only.
        split_lists: folder with ``train.txt`` / ``test.txt`` (``busi`` and ``sricl`` only).
        busi_normal: include BUSI's ``normal/`` images.
    """

    bmad_usage: str = "bmad"
    split_lists: str | None = None
    busi_normal: bool = True

    def __post_init__(self) -> None:
        if self.bmad_usage not in BMAD_USAGES:
            raise ValueError(f"--protocol must be one of {', '.join(BMAD_USAGES)}, got {self.bmad_usage!r}")
        if self.split_lists is not None:  # absolute: the path is recorded in the run and the checkpoint
            object.__setattr__(self, "split_lists", str(Path(self.split_lists).resolve()))

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python dict (stored in ``split.json``, ``config.json`` and the checkpoint)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> DataProtocol:
        """Build from a dict (``None`` or ``{}``: the default protocol); unknown keys are refused."""
        return strict_from_dict(cls, dict(data or {}), "data protocol")

    def replace(self, **changes: Any) -> DataProtocol:
        """A copy with the non-``None`` ``changes`` applied."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def describe(self, layout: str | None = None) -> str:
        """One line for logs and reports (only what applies to ``layout`` when it is given)."""
        parts = []
        if layout in (None, "bmad"):
            usage = {"bmad": "train/ + valid/ -> test/", "paper": "test/ -> valid/"}[self.bmad_usage]
            parts.append(f"BMAD usage {self.bmad_usage} ({usage})")
        if self.split_lists:
            parts.append(f"split lists {self.split_lists}")
        if layout in (None, "busi"):
            parts.append("BUSI with normal/" if self.busi_normal else "BUSI without normal/")
        return ", ".join(parts) or "the layout's own split"

    # ------------------------------------------------------------------ reading
    def _read(self, data: str | os.PathLike, layout: str | None, slice_axis: int) -> tuple[list[Sample], str, set[str]]:
        """The samples this protocol may use, the layout, and every stem of the folder."""
        index = read_layout(data, layout, slice_axis=slice_axis)
        if self.split_lists and index.layout not in _LIST_LAYOUTS:
            raise ValueError(
                f"--split-lists is for the layouts without split folders ({', '.join(_LIST_LAYOUTS)}); "
                f"{data} has the {index.layout} layout, whose folders define the split"
            )
        samples = index.samples
        if index.layout == "busi" and not self.busi_normal:
            samples = [s for s in samples if s.image.parent.name != "normal"]
        return samples, index.layout, {s.group for s in index.samples}

    def _listed(self, samples: Sequence[Sample], stems: set[str]) -> tuple[list[Sample], list[Sample]]:
        """(train, test) samples of the split lists; listed stems are checked against ``stems``
        (every stem of the folder: a list may name BUSI normal/ images that are left out)."""
        train_stems, test_stems = read_split_lists(self.split_lists)  # type: ignore[arg-type]
        missing = sorted((train_stems | test_stems) - stems)
        if missing:
            more = " …" if len(missing) > _MAX_LISTED else ""
            raise ValueError(
                f"{len(missing)} stem(s) of the split lists in {self.split_lists} are not in the data "
                f"folder: {', '.join(missing[:_MAX_LISTED])}{more}"
            )
        train = [dataclasses.replace(s, split="train") for s in samples if s.group in train_stems]
        test = [dataclasses.replace(s, split="test") for s in samples if s.group in test_stems]
        left = len({s.group for s in samples} - train_stems - test_stems)
        if left:
            logger.info(
                "split lists %s: %d image(s) of the folder are in neither list (not used)", self.split_lists, left
            )
        return train, test

    def training_pool(
        self, data: str | os.PathLike, layout: str | None = None, slice_axis: int = 2
    ) -> tuple[list[Sample], str]:
        """Every sample training may use (validation is carved out of these), and the layout."""
        samples, name, stems = self._read(data, layout, slice_axis)
        if self.split_lists:
            return self._listed(samples, stems)[0], name
        if name == "bmad" and self.bmad_usage == "paper":
            return [dataclasses.replace(s, split="train") for s in samples if s.split == "test"], name
        return [s for s in samples if s.split != "test"], name

    def test_samples(
        self, data: str | os.PathLike, layout: str | None = None, slice_axis: int = 2
    ) -> tuple[list[Sample], str]:
        """The test set of ``data`` under this protocol, and the layout.

        Raises:
            ValueError: a layout without a test part (``busi``/``sricl`` without split lists,
                ``volumes`` without ``imagesTs``), or no test samples.
        """
        if (layout or detect_layout(data)) == "volumes" and not self.split_lists:
            return read_layout(data, "volumes", slice_axis=slice_axis, split="test").samples, "volumes"
        samples, name, stems = self._read(data, layout, slice_axis)
        if self.split_lists:
            test = self._listed(samples, stems)[1]
        elif name == "bmad":
            wanted = "valid" if self.bmad_usage == "paper" else "test"
            test = [dataclasses.replace(s, split="test") for s in samples if s.split == wanted]
        else:
            raise ValueError(
                f"the {name} layout has no test part; pass split lists (--split-lists DIR with "
                f"{' and '.join(SPLIT_LIST_FILES)}) or evaluate with --split val"
            )
        if not test:
            raise ValueError(f"no test samples in {data} under the data protocol ({self.describe()})")
        return test, name


def _stem(line: str) -> str:
    name = Path(line.strip()).name
    suffix = Path(name).suffix.lower()
    return name[: -len(suffix)] if suffix in IMAGE_SUFFIXES else name


def read_split_lists(folder: str | os.PathLike) -> tuple[set[str], set[str]]:
    """The train and test stems of a split-list folder (``train.txt``, ``test.txt``).

    Raises:
        FileNotFoundError: a list file is missing.
        ValueError: an empty list, or a stem in both lists.
    """
    folder = Path(folder)
    stems: list[set[str]] = []
    for name in SPLIT_LIST_FILES:
        path = folder / name
        if not path.is_file():
            raise FileNotFoundError(f"split lists: {path} not found (a split-list folder holds {SPLIT_LIST_FILES})")
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
        found = {_stem(ln) for ln in lines if ln and not ln.startswith("#")}
        if not found:
            raise ValueError(f"split lists: {path} lists no image")
        stems.append(found)
    both = sorted(stems[0] & stems[1])
    if both:
        raise ValueError(
            f"split lists in {folder}: {len(both)} stem(s) are in both train.txt and test.txt: "
            f"{', '.join(both[:_MAX_LISTED])}"
        )
    return stems[0], stems[1]


def write_split_lists(
    samples: Sequence[Sample], folder: str | os.PathLike, test_fraction: float, seed: int = 0
) -> Path:
    """Write a seeded split of ``samples`` by group (stratified by label) as ``train.txt`` /
    ``test.txt`` in ``folder``; used by ``medsad reproduce`` when a 2-D layout without split
    folders comes without lists, so every preset and seed is tested on the same images.

    Returns:
        ``folder``.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    from medsad_monai.atomic import atomic_write_text

    abnormal = {s.group for s in samples if s.label == 1}
    groups = sorted({s.group for s in samples})
    rng = np.random.default_rng(seed)
    train: list[str] = []
    test: list[str] = []
    for stratum in (sorted(g for g in groups if g in abnormal), sorted(g for g in groups if g not in abnormal)):
        order = [stratum[i] for i in rng.permutation(len(stratum))]
        n_test = int(round(len(order) * test_fraction))
        if order and n_test == 0 and len(order) > 1:
            n_test = 1
        test += order[:n_test]
        train += order[n_test:]
    if not train or not test:
        raise ValueError(f"a test fraction of {test_fraction} leaves an empty side ({len(groups)} images)")
    folder = Path(folder)
    header = f"# seeded split (seed {seed}, test fraction {test_fraction}) written by medsad reproduce\n"
    atomic_write_text(folder / "train.txt", header + "".join(f"{g}\n" for g in sorted(train)))
    atomic_write_text(folder / "test.txt", header + "".join(f"{g}\n" for g in sorted(test)))
    return folder
