"""``medsad evaluate``: metrics of a checkpoint on a split, written as a report."""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from monai.data import DataLoader

import medsad_monai
from medsad_monai.checkpoint import load_checkpoint
from medsad_monai.data.layouts import read_layout
from medsad_monai.engine.datasets import slice_dataset, Split, drop_background
from medsad_monai.engine.metrics import MetricAccumulator, dice_score
from medsad_monai.engine.report import CaseKeeper, CaseRecord, write_report

__all__ = ["evaluate_checkpoint", "select_split"]

logger = logging.getLogger(__name__)


def select_split(ckpt: str | os.PathLike, data: str, split: str, layout: str | None, slice_axis: int) -> tuple[list, str]:
    """Samples of ``split``: ``test`` = the layout's test part; ``val`` = the run's saved split."""
    if split == "test":
        index = read_layout(data, layout, slice_axis=slice_axis, split="test")
        return index.samples, index.layout
    if split == "val":
        split_file = Path(ckpt).parent / "split.json"
        if not split_file.exists():
            raise FileNotFoundError(f"--split val needs the run's {split_file} (written by medsad train)")
        index = read_layout(data, layout, slice_axis=slice_axis)
        return Split.from_json(split_file).select([s for s in index.samples if s.split != "test"], "val"), index.layout
    if split == "all":
        index = read_layout(data, layout, slice_axis=slice_axis)
        return index.samples, index.layout
    raise ValueError(f"--split must be test, val or all, got {split!r}")


@torch.no_grad()
def evaluate_checkpoint(
    ckpt: str | os.PathLike,
    data: str,
    out: str | os.PathLike,
    *,
    split: str = "test",
    layout: str | None = None,
    slice_axis: int = 2,
    threshold: float = 0.5,
    batch_size: int = 8,
    clip_pretrained: str | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """Evaluate ``ckpt`` on ``data``/``split``; write ``report.json``, ``report.md`` and overlays.

    Background-only volume slices are left out, as at inference. Returns the metrics dict.
    """
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, payload = load_checkpoint(ckpt, clip_pretrained=clip_pretrained, map_location=dev)
    samples, layout_name = select_split(ckpt, data, split, layout, slice_axis)
    samples = drop_background(samples, slice_axis)
    if not samples:
        raise ValueError(f"no samples to evaluate in {data} (split {split})")
    loader = DataLoader(slice_dataset(samples, int(model.image_size), train=False, slice_axis=slice_axis),
                        batch_size=batch_size)
    acc = MetricAccumulator(threshold=threshold)
    keeper = CaseKeeper(2)
    per_group: dict[str, list[float]] = {}
    for batch in loader:
        out_ = model(model.normalize(batch["image"].to(dev)))
        prob = out_["mask"][:, 1].float().cpu()
        score = out_["score"].float().cpu()
        acc.update(prob, batch["mask"][:, 0], score, batch["label"])
        for i in range(prob.shape[0]):
            if batch["label"][i] < 1:
                continue
            mask = batch["mask"][i, 0].numpy()
            record = CaseRecord(name=batch["name"][i], image=batch["image"][i].mean(0).numpy(),
                                prob=prob[i].numpy(), mask=mask, score=float(score[i]), label=1)
            dice = dice_score(prob[i].numpy() >= threshold, mask > 0.5)
            keeper.offer(record, dice)
            if mask.sum() > 0:  # as the dice metric: abnormal images with a lesion mask
                per_group.setdefault(batch["group"][i], []).append(float(dice))
    metrics = acc.compute()
    meta = {
        "checkpoint": str(Path(ckpt).resolve()),
        "data": str(Path(data).resolve()),
        "layout": layout_name,
        "split": split,
        "slice_axis": slice_axis,
        "threshold": threshold,
        "model": payload.get("model", "medsad"),
        "train_seed": payload.get("extra", {}).get("seed"),
        "epoch": payload.get("extra", {}).get("epoch"),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "medsad_version": medsad_monai.__version__,
        # mean Dice of each volume's (group's) abnormal images: where a model fails, at a glance
        "per_group_dice": {g: {"n_abnormal": len(v), "dice": round(sum(v) / len(v), 4)}
                           for g, v in sorted(per_group.items())},
    }
    write_report(out, metrics, meta=meta, cases=keeper.cases())
    logger.info("evaluation written to %s", out)
    return json.loads(json.dumps(metrics, default=float))

