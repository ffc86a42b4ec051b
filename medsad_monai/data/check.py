"""``medsad check-data``: validate a dataset folder and summarise it, without writing to it."""

from __future__ import annotations

__all__ = ["SplitCounts", "CheckReport", "check_data"]

import logging
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from medsad_monai.data.layouts import DatasetIndex, Sample, detect_layout, read_layout
from medsad_monai.data.volumes import load_volume

logger = logging.getLogger(__name__)

_NO_SPLIT = "all"


@dataclass
class SplitCounts:
    """Counts of one split.

    Args:
        normal: samples with label 0.
        abnormal: samples with label 1.
        masks: samples with at least one mask file.
        groups: distinct split units (images, or volumes for the volumes layout).
    """

    normal: int = 0
    abnormal: int = 0
    masks: int = 0
    groups: int = 0


@dataclass
class CheckReport:
    """Result of :func:`check_data`.

    Args:
        root: the dataset folder.
        layout: the layout read.
        counts: per split name (``'all'`` when the layout defines no split).
        problems: files skipped or faulty, each naming the file and the reason.
        slice_axis: for volumes, the slice axis used.
    """

    root: Path
    layout: str
    counts: dict[str, SplitCounts] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    slice_axis: int | None = None

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems

    def format(self, max_problems: int = 50) -> str:
        """A readable multi-line summary (counts table, then problems)."""
        head = f"dataset: {self.root}\nlayout:  {self.layout}"
        if self.slice_axis is not None:
            head += f" (slices along axis {self.slice_axis})"
        rows = [f"{'split':<10}{'normal':>9}{'abnormal':>10}{'masks':>9}{'groups':>9}"]
        total = SplitCounts()
        for name, c in self.counts.items():
            rows.append(f"{name:<10}{c.normal:>9}{c.abnormal:>10}{c.masks:>9}{c.groups:>9}")
            total.normal, total.abnormal = total.normal + c.normal, total.abnormal + c.abnormal
            total.masks, total.groups = total.masks + c.masks, total.groups + c.groups
        if len(self.counts) > 1:
            rows.append(f"{'total':<10}{total.normal:>9}{total.abnormal:>10}{total.masks:>9}{total.groups:>9}")
        lines = [head, *rows]
        if self.problems:
            lines.append(f"problems ({len(self.problems)}):")
            lines += [f"  - {p}" for p in self.problems[:max_problems]]
            if len(self.problems) > max_problems:
                lines.append(f"  ... and {len(self.problems) - max_problems} more")
        else:
            lines.append("problems: none")
        return "\n".join(lines)


def _count(samples: list[Sample]) -> dict[str, SplitCounts]:
    counts: dict[str, SplitCounts] = {}
    groups: dict[str, set[str]] = {}
    for s in samples:
        name = s.split or _NO_SPLIT
        c = counts.setdefault(name, SplitCounts())
        c.normal += s.label == 0
        c.abnormal += s.label == 1
        c.masks += bool(s.masks)
        groups.setdefault(name, set()).add(s.group)
    for name, g in groups.items():
        counts[name].groups = len(g)
    return counts


def _verify_2d(samples: list[Sample]) -> list[str]:
    """Open every image and mask header (no pixel decoding) and compare sizes."""
    problems = []
    for s in samples:
        try:
            with Image.open(s.image) as img:
                size = img.size
        except (OSError, SyntaxError) as err:
            problems.append(f"{s.image}: unreadable image ({err})")
            continue
        for mask in s.masks:
            try:
                with Image.open(mask) as m:
                    if m.size != size:
                        problems.append(f"{mask}: mask size {m.size} differs from image size {size}")
            except (OSError, SyntaxError) as err:
                problems.append(f"{mask}: unreadable mask ({err})")
    return problems


def _verify_volumes(samples: list[Sample]) -> list[str]:
    """Fully read every image volume once (catches truncated files and NaN voxels)."""
    problems = []
    for image in sorted({s.image for s in samples}):
        try:
            load_volume(image)
        except ValueError as err:
            problems.append(str(err))
    return problems


def check_data(root: str | Path, layout: str | None = None, slice_axis: int = 2, verify: bool = True) -> CheckReport:
    """Validate a dataset folder and count its samples; never writes into it.

    Args:
        root: dataset folder.
        layout: one of ``bmad``, ``busi``, ``sricl``, ``volumes``; detected when None.
        slice_axis: volumes only: the slice axis.
        verify: also open every image (2-D: header only; volumes: full read) to find unreadable
            or mis-sized files.

    Returns:
        The report; ``report.format()`` is the text ``medsad check-data`` prints.

    Raises:
        ValueError: when the folder cannot be read as a layout at all (missing or empty folder,
            unknown or mixed layout, unpaired files).
    """
    root = Path(root)
    layout = detect_layout(root) if layout is None else layout
    indexes: list[DatasetIndex] = [read_layout(root, layout, slice_axis=slice_axis)]
    if layout == "volumes" and (root / "imagesTs").is_dir() and (root / "labelsTs").is_dir():
        indexes.append(read_layout(root, layout, slice_axis=slice_axis, split="test"))
    elif layout == "volumes" and (root / "imagesTs").is_dir():
        logger.info("%s: imagesTs/ has no labelsTs/; test volumes not counted", root)
    samples = [s for index in indexes for s in index.samples]
    problems = [p for index in indexes for p in index.problems]
    if verify:
        problems += _verify_volumes(samples) if layout == "volumes" else _verify_2d(samples)
    counts = _count(samples)
    if layout == "volumes" and _NO_SPLIT in counts:
        counts = {("imagesTr" if k == _NO_SPLIT else "imagesTs"): v for k, v in counts.items()}
    report = CheckReport(root, layout, counts, problems, slice_axis if layout == "volumes" else None)
    logger.info("check-data %s: %s layout, %d problems", root, layout, len(problems))
    return report
