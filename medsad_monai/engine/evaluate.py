"""``medsad evaluate``: metrics of a checkpoint on a split, written as a report."""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

import medsad_monai
from medsad_monai.data.layouts import case_tags, read_layout
from medsad_monai.data.protocol import DataProtocol
from medsad_monai.engine.calibration import CaseOutput, iter_cases
from medsad_monai.engine.datasets import saved_validation
from medsad_monai.engine.decision import OperatingPoint
from medsad_monai.engine.inference import Predictor, VolumeResult
from medsad_monai.engine.metrics import MetricAccumulator, dice_score, lesion_detection, volume_metrics
from medsad_monai.engine.report import CaseKeeper, CaseRecord, write_report
from medsad_monai.engine.shifts import describe_shift

__all__ = ["evaluate_checkpoint", "select_split", "checkpoint_protocol", "case_tags"]

logger = logging.getLogger(__name__)


def select_split(
    ckpt: str | os.PathLike,
    data: str,
    split: str,
    layout: str | None,
    slice_axis: int,
    protocol: DataProtocol | None = None,
) -> tuple[list, str]:
    """Samples of ``split`` under the data ``protocol`` (``None``: the default one): ``test`` =
    the protocol's test set; ``val`` = the run's saved validation split of its training pool."""
    protocol = protocol or DataProtocol()
    if split == "test":
        return protocol.test_samples(data, layout, slice_axis)
    if split == "val":
        return saved_validation(Path(ckpt).parent / "split.json", data, layout, slice_axis, protocol)
    if split == "all":
        index = read_layout(data, layout, slice_axis=slice_axis)
        return index.samples, index.layout
    raise ValueError(f"--split must be test, val or all, got {split!r}")


def checkpoint_protocol(payload: dict[str, Any], given: DataProtocol | None) -> DataProtocol:
    """The data protocol to evaluate with: ``given``, else the one the checkpoint was trained
    under (``extra.data_protocol``; the default protocol for older checkpoints). A ``given``
    protocol that differs from the recorded one is logged: its test set may hold training data."""
    recorded = DataProtocol.from_dict(payload.get("extra", {}).get("data_protocol"))
    if given is None:
        return recorded
    if given != recorded:
        logger.warning(
            "evaluating under the data protocol (%s), but the checkpoint was trained under (%s): "
            "the test set may overlap its training data",
            given.describe(),
            recorded.describe(),
        )
    return given


class _Group:
    """Slice and volume figures of one group of cases."""

    def __init__(self, op: OperatingPoint) -> None:
        self.slices = MetricAccumulator(threshold=op.map_threshold, score_threshold=op.slice_threshold)
        self.volumes: list[dict[str, Any]] = []

    def compute(self, op: OperatingPoint) -> dict[str, Any]:
        return {**self.slices.compute(), **volume_metrics(self.volumes, op.volume_threshold)}


def _case_slices(case: CaseOutput, result: VolumeResult) -> tuple[np.ndarray, ...]:
    """(prob, truth, pred) as (S, H, W) stacks and (score, label) of the evaluated slices."""
    keep = np.flatnonzero(case.evaluated)
    take = lambda a: np.moveaxis(a, case.axis, 0)[keep]  # noqa: E731
    scores = np.asarray(result.slice_scores)[keep]
    return take(case.probability), take(case.truth), take(result.mask), scores, case.slice_labels[keep]


@torch.no_grad()
def evaluate_checkpoint(
    ckpt: str | os.PathLike,
    data: str,
    out: str | os.PathLike,
    *,
    split: str = "test",
    layout: str | None = None,
    slice_axis: int = 2,
    threshold: float | None = None,
    slice_threshold: float | None = None,
    volume_threshold: float | None = None,
    min_lesion_mm3: float | None = None,
    min_lesion_mean: float | None = None,
    batch_size: int = 8,
    clip_pretrained: str | None = None,
    device: str | None = None,
    protocol: DataProtocol | None = None,
    precision: str | None = None,
    shift: str = "none",
    profile: str | None = None,
) -> dict[str, Any]:
    """Evaluate ``ckpt`` on ``data``/``split`` at its operating point; write ``report.json``,
    ``report.md`` and overlays.

    ``protocol`` says which samples are the test set (BMAD folder usage, split lists, BUSI
    ``normal/``); ``None`` = the protocol the checkpoint was trained under (recorded in it).
    ``precision`` (``auto``/``fp32``/``bf16``, see :class:`Predictor`) is recorded in the
    report's meta as the precision that ran. ``shift`` (:data:`~medsad_monai.engine.shifts.SHIFTS`)
    applies a simulated scanner change to every input first (``medsad robustness``).
    ``profile`` decides at the checkpoint's calibration profile of that name instead of its
    default operating point (one site's or scanner's, ``medsad calibrate --profile``).

    Every volume runs through the inference path at its own resolution (as ``medsad infer``
    and the server do), is post-processed and decided at the checkpoint's calibrated operating
    point (the thresholds, ``min_lesion_mm3`` and ``min_lesion_mean`` given here override it), and
    is scored per slice (background slices left out, as at inference, unless they hold a lesion)
    and per volume. Groups of cases (``dataset.json`` tags such as seen/unseen anatomy) get their
    own figures.

    Returns:
        The metrics dict (slice and pixel metrics, the ``volume`` figures and ``groups``).
    """
    from medsad_monai.checkpoint import read_checkpoint

    shift_description = describe_shift(shift)  # refuse an unknown shift before loading anything
    predictor = Predictor.from_checkpoint(
        ckpt,
        clip_pretrained=clip_pretrained,
        batch_size=batch_size,
        device=device,
        precision=precision,
        profile=profile,
    )
    op = predictor.operating_point.with_overrides(
        map_threshold=threshold,
        slice_threshold=slice_threshold,
        volume_threshold=volume_threshold,
        min_lesion_mm3=min_lesion_mm3,
        min_lesion_mean=min_lesion_mean,
    )
    payload = read_checkpoint(ckpt)
    protocol = checkpoint_protocol(payload, protocol)
    samples, layout_name = select_split(ckpt, data, split, layout, slice_axis, protocol)
    if not samples:
        raise ValueError(f"no samples to evaluate in {data} (split {split})")
    in_sample = _training_cases_among(payload, data, samples)
    if in_sample:
        logger.warning(
            "%d evaluated case(s) trained this model (%s): their figures are in-sample, not what it does on new "
            "scans (--split test is the run's test set)",
            len(in_sample),
            ", ".join(in_sample[:8]) + (", ..." if len(in_sample) > 8 else ""),
        )
    tags = case_tags(Path(data))
    overall = _Group(op)
    groups: dict[str, _Group] = {}
    keeper = CaseKeeper(2)
    per_case: dict[str, dict[str, Any]] = {}
    for case in iter_cases(predictor, samples, slice_axis, tags=tags, desc="evaluating", shift=shift):
        result = VolumeResult(
            case.probability, list(case.model_scores), list(case.skipped), case.axis, op, spacing=case.spacing
        )
        prob, truth, pred, scores, labels = _case_slices(case, result)
        record = {
            "name": case.name,
            "score": result.volume_score,
            "abnormal": case.abnormal,
            "true_voxels": int(case.truth.sum()),
            "predicted_voxels": int(result.mask.sum()),
            **lesion_detection(result.mask, case.truth),
        }
        dice = dice_score(result.mask, case.truth) if case.abnormal else None
        per_case[case.name] = {
            **{k: v for k, v in record.items() if k != "name"},
            **case.tags,
            "volume_abnormal": result.volume_abnormal,
            "dice": dice,
            "abnormal_slices": len(result.abnormal_slices),
            "lesion_slices": int(labels.sum()),
            # how sure the model is inside the true lesions: what a minimum lesion mean filters on
            "lesion_mean_probability": float(case.probability[case.truth].mean()) if case.abnormal else None,
            # is the scan like the training volumes (None: the model has no reference)
            "familiar": case.familiarity["familiar"] if case.familiarity else None,
            "familiarity_distance": case.familiarity["distance"] if case.familiarity else None,
        }
        for group in [overall] + [groups.setdefault(f"{k}={v}", _Group(op)) for k, v in case.tags.items()]:
            if len(labels):
                group.slices.update(prob, truth.astype(np.uint8), scores, labels.astype(np.uint8), pred=pred)
            group.volumes.append(record)
        evaluated = np.flatnonzero(case.evaluated)
        for i in np.flatnonzero(labels):  # lesion slices: candidates for the best/worst overlays
            k = int(evaluated[i])
            keeper.offer(
                CaseRecord(
                    name=f"{case.name}_s{k:03d}",
                    image=case.image_slice(k),
                    prob=prob[i] * pred[i],
                    mask=truth[i].astype(np.float32),
                    score=float(scores[i]),
                    label=1,
                ),
                dice_score(pred[i], truth[i]),
            )
    metrics = overall.compute(op)
    metrics["groups"] = {name: g.compute(op) for name, g in sorted(groups.items())}
    meta = {
        "checkpoint": str(Path(ckpt).resolve()),
        "data": str(Path(data).resolve()),
        "layout": layout_name,
        "split": split,
        "data_protocol": protocol.to_dict(),
        "slice_axis": slice_axis,
        "precision": predictor.precision,
        "shift": {"name": shift, "description": shift_description},
        "operating_point": op.summary(),
        "operating_point_validation": op.validation,
        "model": payload.get("model", "medsad"),
        "train_seed": payload.get("extra", {}).get("seed"),
        "epoch": payload.get("extra", {}).get("epoch"),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "medsad_version": medsad_monai.__version__,
        "familiarity": familiarity_summary(per_case),
        "trained_on_cases": in_sample,
        "per_case": per_case,
    }
    write_report(out, metrics, meta=meta, cases=keeper.cases())
    logger.info("evaluation written to %s", out)
    return json.loads(json.dumps(metrics, default=float))


def _training_cases_among(payload: dict[str, Any], data: str | os.PathLike, samples: list) -> list[str]:
    """The evaluated cases that trained the checkpoint's model (``data`` is the folder it was
    trained from and the case is one of its recorded training cases); empty when not recorded."""
    from medsad_monai.checkpoint import trained_cases_of, training_data_of

    trained, _ = trained_cases_of(payload)
    source = training_data_of(payload)
    if not trained or source is None or Path(data).resolve() != source:
        return []
    return sorted({s.group for s in samples} & set(trained))


def familiarity_summary(per_case: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """How many of the evaluated cases are unlike the model's training cases (``familiar``
    false), and which; None when the model has no familiarity reference."""
    assessed = {name: c for name, c in per_case.items() if c.get("familiar") is not None}
    if not assessed:
        return None
    unfamiliar = sorted(name for name, c in assessed.items() if not c["familiar"])
    return {"cases": len(assessed), "unfamiliar": len(unfamiliar), "unfamiliar_cases": unfamiliar}
