"""``medsad train``: honest, resumable training (validation-only checkpoint selection).

A run folder holds ``config.json`` (model config + options), ``split.json`` (seeded split by
group), ``metrics.csv`` (one row per epoch), ``curves.png``, ``last.pt`` (every completed epoch,
with optimizer state and every metrics row: the epoch's commit) and ``best.pt`` (best *validation*
epoch). Ctrl-C, SIGTERM or even SIGKILL stops without losing the last committed epoch; ``--resume``
continues from it and rebuilds ``metrics.csv`` and ``best.pt`` to match that commit.
Under ``torchrun`` the training data is sharded with a ``DistributedSampler`` (NCCL on GPUs,
gloo on CPU) and rank 0 validates and writes.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from monai.data import DataLoader
from monai.utils import set_determinism
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from medsad_monai.atomic import atomic_write
from medsad_monai.checkpoint import read_checkpoint, save_checkpoint
from medsad_monai.configs import DATASETS, DatasetConfig, load_dataset_config, load_preset, native_image_size
from medsad_monai.data.layouts import Sample, case_tags
from medsad_monai.data.lesions import STYLES, TRAINING_LOOKS
from medsad_monai.data.protocol import BMAD_USAGES, DataProtocol
from medsad_monai.data.volumes import CONTEXT_SLICES, INTENSITY_METHODS
from medsad_monai.engine import distributed as dist_utils
from medsad_monai.engine.datasets import (
    SYNTHETIC_REGIONS,
    Split,
    drop_background,
    make_split,
    slice_dataset,
    source_balanced_sampler,
)
from medsad_monai.engine.inference import PRECISIONS, resolve_precision
from medsad_monai.engine.metrics import MetricAccumulator
from medsad_monai.losses import MedSADLoss
from medsad_monai.networks import MedSADCLIP
from medsad_monai.networks.unet_baseline import UNetBaseline

__all__ = [
    "TrainOptions",
    "NonFiniteLossError",
    "train",
    "build_model",
    "evaluate_model",
    "training_pool",
    "data_protocol",
]

logger = logging.getLogger(__name__)

#: best.pt of the epoch being committed: renamed over best.pt once last.pt records the epoch
PENDING_BEST = "best.pt.pending"

CSV_FIELDS = [
    "epoch",
    "train_loss",
    "train_bce",
    "train_dicefocal",
    "train_mc",
    "train_fp",
    "val_dice",
    "val_dice_global",
    "val_accuracy",
    "val_baseline_accuracy",
    "val_image_auroc",
    "val_pixel_auroc",
    "selection",
    "seconds",
]


@dataclass
class TrainOptions:
    """Options of ``medsad train`` (``None`` = the dataset config's value when ``dataset`` is
    given, else the preset's).

    ``dataset`` (``brain``, ``retina``, ``lung``, ``breast``) lays the paper's setting for that
    dataset (``medsad_monai/configs/datasets/*.json``) over the preset: model settings, layout
    and data protocol; every option given here wins over it. ``protocol`` (BMAD folders:
    ``bmad`` or ``paper``), ``split_lists`` and ``busi_normal`` make the
    :class:`~medsad_monai.data.protocol.DataProtocol`; ``category`` is the prompt's class name.
    """

    data: str
    out: str
    layout: str | None = None
    preset: str = "full"
    model: str = "medsad"
    dataset: str | None = None
    category: str | None = None
    protocol: str | None = None
    split_lists: str | None = None
    busi_normal: bool | None = None
    seg_projection: bool | None = None
    classifier_projection: bool | None = None
    adapter_mix_back: bool | None = None
    clip_model: str | None = None
    clip_pretrained: str | None = None
    image_size: int | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    seed: int = 0
    max_minutes: float | None = None
    resume: bool = False
    val_fraction: float = 0.2
    slice_axis: int = 2
    synthetic_lesions: float = 0.0
    synthetic_styles: list[str] = field(default_factory=lambda: ["A", "C"])
    synthetic_region: str = "slice"  # brain: never on a head's neck, face or vertex slices (SYNTHETIC_REGIONS)
    augment: str = "paper"
    intensity: str = "foreground"
    context_slices: int = 0  # 1: the slice and its two neighbours are the model's three channels
    mirror_channel: bool = False  # the slice beside its left-right mirror as the model's channels (volumes)
    lr_schedule: str | None = None
    ema_decay: float | None = None
    fp_weight: float | None = None
    fp_start: float | None = None
    balance_sources: bool = False  # draw slices so every source tag is seen equally often
    # autocast of the step: auto = bf16 on CUDA GPUs and CPUs with bf16 units (2.6x faster ViT-B-16
    # steps on such a CPU, validation Dice not worse: docs/experiments.md); None: bf16 on CUDA only
    precision: str | None = "auto"
    num_workers: int = 0
    device: str | None = None
    record_samples: bool = False
    init_from: str | None = None  # fine-tune: start from this checkpoint's weights (not a resume)
    calibration_objective: str = "dice"  # what the end-of-training lesion threshold and size maximise
    # a separate validation folder: epochs are selected and the operating point fitted on its non-test
    # cases, and every non-test case of ``data`` trains (``val_fraction`` is then unused)
    val_data: str | None = None
    # extra validation volumes for the end-of-training operating point only (with the run's own
    # validation cases; epochs are still selected on those alone): more lesions and lesion-free
    # volumes for the filters to be fitted on, at no cost per epoch
    calibration_data: str | None = None

    def validate(self) -> None:
        if self.precision is not None and str(self.precision).lower() not in PRECISIONS:
            raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.model not in ("medsad", "unet"):
            raise ValueError(f"--model must be medsad or unet, got {self.model!r}")
        if self.dataset is not None and self.dataset not in DATASETS:
            raise ValueError(f"--dataset must be one of {', '.join(DATASETS)}, got {self.dataset!r}")
        if self.protocol is not None and self.protocol not in BMAD_USAGES:
            raise ValueError(f"--protocol must be one of {', '.join(BMAD_USAGES)}, got {self.protocol!r}")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ValueError(f"--max-minutes must be positive, got {self.max_minutes}")
        if not 0.0 <= self.synthetic_lesions <= 1.0:
            raise ValueError(f"--synthetic-lesions is a probability in [0, 1], got {self.synthetic_lesions}")
        if self.synthetic_region not in SYNTHETIC_REGIONS:
            raise ValueError(
                f"--synthetic-region must be one of {', '.join(SYNTHETIC_REGIONS)}, got {self.synthetic_region!r}"
            )
        if self.context_slices not in CONTEXT_SLICES:
            raise ValueError(f"--context-slices must be one of {CONTEXT_SLICES}, got {self.context_slices!r}")
        if self.mirror_channel and self.context_slices:
            raise ValueError(
                "--mirror-channel and --context-slices 1 both use the model's three input channels: pick one"
            )
        from medsad_monai.engine.calibration import MAP_OBJECTIVES

        if self.calibration_objective not in MAP_OBJECTIVES:
            raise ValueError(
                f"--calibration-objective must be one of {', '.join(MAP_OBJECTIVES)}, "
                f"got {self.calibration_objective!r}"
            )
        if self.intensity not in INTENSITY_METHODS:
            raise ValueError(f"--intensity must be one of {', '.join(INTENSITY_METHODS)}, got {self.intensity!r}")
        known = [*STYLES, *TRAINING_LOOKS, "mixed"]
        bad = [s for s in self.synthetic_styles if s not in known]
        if bad or (self.synthetic_lesions > 0 and not self.synthetic_styles):
            raise ValueError(
                f"--synthetic-styles {','.join(self.synthetic_styles)!r}: use a comma-separated "
                f"list of {', '.join(known)}"
            )


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite: stop before the optimizer writes it into the weights."""

    def __init__(self, epoch: int, step: int, parts: dict[str, torch.Tensor], bf16: bool) -> None:
        terms = ", ".join(f"{k} {float(v.detach()):.4g}" for k, v in parts.items())
        hint = "--precision fp32 or a lower --lr" if bf16 else "a lower --lr"
        super().__init__(
            f"the training loss is not finite at epoch {epoch}, step {step} ({terms}); stopped before the "
            f"weights were updated with it. The run folder's last.pt (if any) holds the last completed epoch: try "
            f"{hint}, then --resume"
        )


def dataset_config(opts: TrainOptions) -> DatasetConfig | None:
    """The dataset config named by ``opts.dataset`` (None without one)."""
    return load_dataset_config(opts.dataset) if opts.dataset else None


def data_protocol(opts: TrainOptions) -> DataProtocol:
    """The run's data protocol: the dataset config's (or the default), then the options."""
    ds = dataset_config(opts)
    base = ds.data_protocol() if ds is not None else DataProtocol()
    return base.replace(bmad_usage=opts.protocol, split_lists=opts.split_lists, busi_normal=opts.busi_normal)


def _layout(opts: TrainOptions) -> str | None:
    ds = dataset_config(opts)
    return opts.layout or (ds.layout if ds is not None else None)


def build_model(opts: TrainOptions) -> tuple[nn.Module, MedSADLoss, dict[str, Any]]:
    """The model, its loss and the config dict recorded in the run.

    The UNet baseline runs at the input size of the MedSAD configuration it is compared with:
    ``--image-size`` when given, else the preset's (dataset's) ``image_size``, else the
    preset backbone's native size (224 for ViT-L-14, 128 for ``tiny``).
    """
    ds = dataset_config(opts)
    given = _given(
        category=opts.category,
        seg_projection=opts.seg_projection,
        classifier_projection=opts.classifier_projection,
        adapter_mix_back=opts.adapter_mix_back,
        clip_model=opts.clip_model,
        clip_pretrained=opts.clip_pretrained,
        image_size=opts.image_size,
        epochs=opts.epochs,
        batch_size=opts.batch_size,
        lr=opts.lr,
        lr_schedule=opts.lr_schedule,
        ema_decay=opts.ema_decay,
        fp_weight=opts.fp_weight,
        fp_start=opts.fp_start,
    )
    cfg = load_preset(opts.preset, **{**(ds.model if ds is not None else {}), **given})
    if opts.model == "unet":
        size = cfg.image_size or native_image_size(cfg.clip_model)
        model: nn.Module = UNetBaseline(image_size=size, tta_flip=cfg.tta_flip, tta_flip_rows=cfg.tta_flip_rows)
        loss = MedSADLoss(
            bce_weight=0.0,
            dicefocal_weight=1.0,
            mc_weight=0.0,
            dice_reduction=cfg.dice_reduction,
            fp_weight=cfg.fp_weight,
            fp_topk=cfg.fp_topk,
        )
    else:
        model = MedSADCLIP(cfg)
        loss = MedSADLoss.from_config(cfg)
    return model, loss, cfg.to_dict()


def _given(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def training_pool(
    data: str, layout: str | None, slice_axis: int, protocol: DataProtocol | None = None
) -> tuple[list, str]:
    """Every sample training may use (never the protocol's test set) and the layout name.

    Args:
        protocol: which folders / lists train; ``None`` = the default protocol (BMAD:
            ``train/`` + ``valid/``; ``busi``/``sricl``: every image).
    """
    return (protocol or DataProtocol()).training_pool(data, layout, slice_axis)


@torch.no_grad()
def evaluate_model(
    model: nn.Module, loader: DataLoader, device: torch.device, threshold: float = 0.5, flip_tta: bool = False
) -> dict[str, Any]:
    """Metrics of ``model`` on a loader (the one metrics module).

    The per-epoch validation that ranks epochs runs the plain forward (``flip_tta=False``, half
    the cost of the mirrored average); the operating point of the selected checkpoint is then
    fitted with the flip averaging the served model uses.
    """
    model.eval()
    acc = MetricAccumulator(threshold=threshold)
    for batch in loader:
        out = model(model.normalize(batch["image"].to(device)), flip_tta=flip_tta)
        acc.update(out["mask"][:, 1].float().cpu(), batch["mask"][:, 0], out["score"].float().cpu(), batch["label"])
    return acc.compute()


def _selection(metrics: dict[str, Any]) -> float:
    """Validation criterion that ranks epochs (``best.pt``).

    The mean of the lesion Dice (``dice``: mean over lesion images, so a small lesion weighs
    like a large one) and the pooled Dice of every validation pixel (``dice_global``: lesion
    voxels painted on lesion-free slices count against it). The lesion Dice alone is blind to
    false positives on normal tissue: it kept an epoch whose lesion Dice led by 0.003 and whose
    false positives were the run's highest (docs/experiments.md). Without lesions in
    validation: the pooled Dice, then the image AUROC.
    """
    dice, pooled = metrics.get("dice"), metrics.get("dice_global")
    if dice is not None and pooled is not None:
        return (float(dice) + float(pooled)) / 2
    for key in ("dice", "dice_global", "image_auroc"):
        if metrics.get(key) is not None:
            return float(metrics[key])
    return -math.inf


def _plot_curves(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [int(r["epoch"]) for r in rows]

    def col(name: str) -> list[float]:
        return [float(r[name]) if r[name] not in ("", None) else float("nan") for r in rows]

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax1.plot(epochs, col("train_loss"), "o-", label="train loss")
    ax1.set_xlabel("epoch"), ax1.set_title("training loss"), ax1.legend()
    for name, label in (
        ("val_dice", "val Dice (abnormal)"),
        ("val_image_auroc", "val image AUROC"),
        ("val_accuracy", "val accuracy"),
        ("val_baseline_accuracy", "all-normal baseline"),
    ):
        ax2.plot(epochs, col(name), "o-" if "baseline" not in name else "--", label=label)
    ax2.set_ylim(0, 1), ax2.set_xlabel("epoch"), ax2.set_title("validation"), ax2.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=90))
    plt.close(fig)


def _read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    with path.open() as fh:
        return list(csv.DictReader(fh))


def _tensorboard(out: Path, start_epoch: int):
    """A TensorBoard writer on the run folder (``tensorboard --logdir runs/``); on resume, events
    of epochs after the resumed one are dropped (``purge_step``)."""
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(out), purge_step=start_epoch if start_epoch > 1 else None)


def _log_scalars(board, row: dict[str, Any], lr: float) -> None:
    """One epoch's ``metrics.csv`` row as TensorBoard scalars (``train/*``, ``val/*``, ``lr``)."""
    if board is None:
        return
    epoch = int(row["epoch"])
    for key, value in row.items():
        if key in ("epoch", "seconds") or value in ("", None):
            continue
        value = float(value)
        if math.isfinite(value):
            board.add_scalar(key.replace("_", "/", 1) if key.startswith(("train_", "val_")) else key, value, epoch)
    board.add_scalar("lr", lr, epoch)
    board.add_scalar("seconds_per_epoch", float(row["seconds"]), epoch)
    board.flush()


def _write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    def write(fh) -> None:
        writer = csv.DictWriter(fh, CSV_FIELDS)
        writer.writeheader()
        writer.writerows(rows)

    atomic_write(path, write, binary=False, newline="")


class _Interrupt:
    """Turn SIGTERM into KeyboardInterrupt while training (so kill behaves like Ctrl-C)."""

    def __enter__(self) -> _Interrupt:
        self.previous = signal.getsignal(signal.SIGTERM)
        try:
            signal.signal(signal.SIGTERM, self._raise)
        except ValueError:  # not the main thread
            self.previous = None
        return self

    @staticmethod
    def _raise(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    def __exit__(self, *exc: Any) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


def _recover_run(out: Path, committed: dict[str, Any]) -> list[dict[str, Any]]:
    """Bring a run folder killed at any moment back to its last commit (``last.pt``'s ``extra``):
    a pending best.pt of the committed best epoch is put in place, one of an uncommitted epoch
    dropped; temporary files of interrupted writes are removed; ``metrics.csv`` is rewritten
    from the committed rows. Returns those rows."""
    pending = out / PENDING_BEST
    if pending.exists():
        epoch = int(read_checkpoint(pending).get("extra", {}).get("epoch", -1))
        if epoch == int(committed["best_epoch"]) and epoch <= int(committed["epoch"]):
            os.replace(pending, out / "best.pt")
            logger.info("resume: best.pt of epoch %d put in place (it was committed before the stop)", epoch)
        else:
            pending.unlink()
            logger.info("resume: dropped the best.pt candidate of epoch %d (never committed)", epoch)
    for leftover in out.glob(".*.tmp"):  # atomic_write's temporary files, from a kill mid-write
        leftover.unlink(missing_ok=True)
    if "rows" in committed:
        rows = [dict(r) for r in committed["rows"]]
    else:  # a run folder of an older MedSAD: its metrics.csv up to the committed epoch
        rows = [r for r in _read_rows(out / "metrics.csv") if int(r["epoch"]) <= int(committed["epoch"])]
    _write_rows(out / "metrics.csv", rows)
    return rows


def _validation_folder(
    opts: TrainOptions,
    samples: Sequence[Sample],
    protocol: DataProtocol,
    data_path: Path | None,
    out: Path,
    folder: str | None = None,
    flag: str = "--val-data",
) -> list[Sample]:
    """The non-test cases of ``folder`` (default ``opts.val_data``; read as ``opts.data`` is),
    checked to be a separate folder; ``flag`` names the option in messages.

    Raises:
        ValueError: the run trains on given samples, the folder is the training folder (or holds
            ``--out``), shares image files with it, or has no non-test case.
    """
    folder = opts.val_data if folder is None else folder
    if data_path is None:
        raise ValueError(f"{flag} needs the training data read from --data (train(samples=...) was given)")
    val_path = Path(folder).resolve()
    if not val_path.is_dir():
        raise FileNotFoundError(f"{flag} {folder}: no such folder")
    if val_path == data_path:
        raise ValueError(
            f"{flag} {folder} is the training folder; give a separate validation folder, or leave "
            f"{flag} out to hold out --val-fraction of --data"
        )
    if out.resolve() == val_path or val_path in out.resolve().parents:
        raise ValueError(f"--out {out} lies inside the validation folder {val_path}; data folders are never written to")
    val_pool, _ = training_pool(folder, _layout(opts), opts.slice_axis, protocol)
    if not val_pool:
        raise ValueError(f"{flag} {folder} holds no non-test case to validate on")
    shared = sorted({s.image.resolve() for s in samples} & {s.image.resolve() for s in val_pool})
    if shared:
        raise ValueError(
            f"{flag} {folder} shares {len(shared)} image file(s) with --data (e.g. {shared[0]}); "
            "validation volumes must not be trained on"
        )
    return val_pool


def _calibration_folder(
    opts: TrainOptions, samples: Sequence[Sample], protocol: DataProtocol, data_path: Path | None, out: Path
) -> list[Sample]:
    """The non-test cases of ``opts.calibration_data`` (none without it), named ``<folder>/<case>``
    so that they cannot be mistaken for the training folder's cases of the same name."""
    if opts.calibration_data is None:
        return []
    pool = _validation_folder(opts, samples, protocol, data_path, out, opts.calibration_data, "--calibration-data")
    if opts.val_data is not None and Path(opts.calibration_data).resolve() == Path(opts.val_data).resolve():
        raise ValueError("--calibration-data is the --val-data folder: its cases calibrate already")
    prefix = Path(opts.calibration_data).resolve().name
    return [dataclasses.replace(s, group=f"{prefix}/{s.group}") for s in pool]


def _prepare_run(opts: TrainOptions, out: Path, is_main: bool) -> dict[str, Any] | None:
    """Check the run folder; return the resume payload (or None for a fresh run)."""
    last = out / "last.pt"
    if opts.resume:
        if not last.exists():
            raise FileNotFoundError(f"--resume: no {last} to continue from")
        return read_checkpoint(last)
    if last.exists():
        raise FileExistsError(
            f"{out} already holds a training run (last.pt); continue it with --resume or choose another --out"
        )
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
    return None


def train(opts: TrainOptions, samples: Sequence[Sample] | None = None) -> dict[str, Any]:
    """Train per ``opts``; returns a summary (best/last epoch and their validation metrics).

    Args:
        opts: the options; ``opts.data`` is the data folder, read with its layout.
        samples: train on these samples instead of reading ``opts.data`` (e.g. the labelled
            volumes of a MONAI Label datastore); ``opts.data`` then only names the data in the
            run record (and is never written to). Test-split samples are refused.
    """
    opts.validate()
    ctx = dist_utils.setup(opts.device)
    out = Path(opts.out)
    data_path = Path(opts.data).resolve() if samples is None else None
    if data_path is not None and (out.resolve() == data_path or data_path in out.resolve().parents):
        raise ValueError(f"--out {out} lies inside the data folder {data_path}; the data folder is never written to")
    resume_payload = _prepare_run(opts, out, ctx.is_main)
    set_determinism(seed=opts.seed + ctx.rank)
    protocol = data_protocol(opts)

    if samples is None:
        samples, layout = training_pool(opts.data, _layout(opts), opts.slice_axis, protocol)
        sources = {case: tags["anatomy"] for case, tags in case_tags(opts.data).items() if "anatomy" in tags}
    else:
        samples, layout, sources = list(samples), opts.layout or "samples", {}
        if not samples:
            raise ValueError("train(samples=...) was given no samples")
        if any(s.split == "test" for s in samples):
            raise ValueError("train(samples=...) was given test-split samples; training never sees the test split")
    split_path = out / "split.json"
    if opts.val_data is not None:
        val_pool = _validation_folder(opts, samples, protocol, data_path, out)
        groups = (sorted({s.group for s in samples}), sorted({s.group for s in val_pool}))
        split = Split(opts.seed, 0.0, *groups, val_data=str(Path(opts.val_data).resolve()))
        train_cases, val_cases = list(samples), val_pool
    else:
        if opts.resume and split_path.exists():
            split = Split.from_json(split_path)
        else:
            split = make_split(samples, opts.val_fraction, opts.seed, sources=sources)
        train_cases, val_cases = split.select(samples, "train"), split.select(samples, "val")
    calibration_cases = _calibration_folder(opts, samples, protocol, data_path, out)  # checked before training
    train_samples = drop_background(train_cases, opts.slice_axis, opts.intensity)
    # which cases (volumes / images) trained the model: a later calibration must not use them
    trained_on = sorted({s.group for s in train_cases})
    val_samples = drop_background(val_cases, opts.slice_axis, opts.intensity)
    if opts.context_slices and any(s.slice_index is None for s in samples):
        raise ValueError("--context-slices 1 needs volumes: 2-D images have no neighbouring slices (train them with 0)")
    if opts.mirror_channel and any(s.slice_index is None for s in samples):
        raise ValueError(
            "--mirror-channel needs volumes: a 2-D image has no known left-right axis and midline (train without it)"
        )

    model, loss_fn, cfg = build_model(opts)
    if resume_payload is not None:
        model.load_state_dict(resume_payload["state_dict"], strict=False)
    elif opts.init_from:  # fine-tune: the saved weights; what a checkpoint omits is rebuilt by the model
        start = read_checkpoint(opts.init_from)
        context = start.get("context_slices", 0)
        if context != opts.context_slices:
            raise ValueError(
                f"cannot fine-tune {opts.init_from}: it was trained with context slices {context}, this run "
                f"asks for {opts.context_slices}; pass --context-slices {context}"
            )
        mirror = bool(start.get("mirror_channel", False))
        if mirror != opts.mirror_channel:
            raise ValueError(
                f"cannot fine-tune {opts.init_from}: it was trained {'with' if mirror else 'without'} the mirror "
                f"channel, this run {'with' if opts.mirror_channel else 'without'}; "
                + ("pass --mirror-channel" if mirror else "leave out --mirror-channel")
            )
        model.load_state_dict(start["state_dict"], strict=False)
        logger.info("fine-tuning from %s", opts.init_from)
    model.to(ctx.device)
    size = int(model.image_size)
    epochs = int(cfg["epochs"]) if opts.epochs is None else opts.epochs
    batch_size = int(cfg["batch_size"]) if opts.batch_size is None else opts.batch_size
    lr = float(cfg["lr"]) if opts.lr is None else opts.lr
    if ctx.is_main:
        split.to_json(
            split_path,
            layout=layout,
            data=str(data_path or opts.data),
            slice_axis=opts.slice_axis,
            n_train_samples=len(train_samples),
            n_val_samples=len(val_samples),
            stratified_by=[] if opts.val_data is not None else ["lesion"] + (["anatomy"] if sources else []),
            data_protocol=protocol.to_dict(),
        )
        (out / "config.json").write_text(
            json.dumps(
                {
                    "model": opts.model,
                    "config": cfg,
                    "data_protocol": protocol.to_dict(),
                    "options": dataclasses.asdict(opts),
                },
                indent=2,
            )
        )
    logger.info(
        "train %d slices / val %d slices (%d / %d groups), image size %d, %d epochs, batch %d, lr %g; data: %s",
        len(train_samples),
        len(val_samples),
        len(split.train_groups),
        len(split.val_groups),
        size,
        epochs,
        batch_size,
        lr,
        protocol.describe(layout) if data_path is not None else "the given samples",
    )

    inputs = dict(
        slice_axis=opts.slice_axis, intensity=opts.intensity, context=opts.context_slices, mirror=opts.mirror_channel
    )
    train_ds = slice_dataset(
        train_samples,
        size,
        train=True,
        synthetic_lesions=opts.synthetic_lesions,
        synthetic_styles=opts.synthetic_styles,
        augment=opts.augment,
        seed=opts.seed + ctx.rank,
        synthetic_region=opts.synthetic_region,
        **inputs,
    )
    val_ds = slice_dataset(val_samples, size, train=False, **inputs)
    sampler = dist_utils.sampler(train_ds, ctx, seed=opts.seed)
    if opts.balance_sources:
        if sampler is not None:
            raise ValueError("--balance-sources is not available under torchrun (it needs one sampler)")
        sampler = source_balanced_sampler(train_samples, sources, seed=opts.seed)
    train_loader = DataLoader(
        train_ds,
        batch_size=batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        num_workers=opts.num_workers,
        drop_last=len(train_ds) > batch_size,
    )
    val_loader = DataLoader(val_ds, batch_size=batch_size, num_workers=opts.num_workers)

    ema = _make_ema(model, float(cfg.get("ema_decay", 0.0) or 0.0))
    if ema is not None and resume_payload is not None and "ema_state_dict" in resume_payload["extra"]:
        ema.module.load_state_dict(resume_payload["extra"]["ema_state_dict"], strict=False)
        ema.n_averaged.fill_(1)
    selected = ema.module if ema is not None else model  # what is validated and saved as best.pt

    params = model.trainable_parameters()
    betas = tuple(cfg.get("betas", (0.9, 0.999)))
    optimizer = torch.optim.Adam(params, lr=lr, betas=betas)  # type: ignore[arg-type]
    train_model = dist_utils.wrap(model, ctx)
    rows: list[dict[str, Any]] = []
    start_epoch, best, best_epoch = 1, -math.inf, 0
    if resume_payload is not None:
        extra = resume_payload["extra"]
        optimizer.load_state_dict(extra["optimizer"])
        start_epoch = int(extra["epoch"]) + 1
        best, best_epoch = float(extra["best_selection"]), int(extra["best_epoch"])
        rows = _recover_run(out, extra) if ctx.is_main else list(extra.get("rows", []))
        logger.info("resuming after epoch %d (best val epoch %d)", start_epoch - 1, best_epoch)
    board = _tensorboard(out, start_epoch) if ctx.is_main else None
    started = time.monotonic()
    deadline = started + opts.max_minutes * 60 if opts.max_minutes else math.inf
    schedule = cfg.get("lr_schedule", "constant")
    fp_weight, fp_start = loss_fn.fp_weight, float(cfg.get("fp_start", 0.0))
    steps_per_epoch = max(len(train_loader), 1)
    autocast = resolve_precision(opts.precision, ctx.device) == "bf16"
    logger.info("training step precision: %s (%s)", "bf16 autocast" if autocast else "fp32", opts.precision)
    seen = [] if opts.record_samples else None
    stop_reason = "epochs"

    with _Interrupt():
        for epoch in range(start_epoch, epochs + 1):
            if hasattr(sampler, "set_epoch"):  # DistributedSampler: a new shuffle per epoch
                sampler.set_epoch(epoch)
            model.train()
            t0 = time.monotonic()
            sums: dict[str, float] = {}
            steps = 0
            bar = tqdm(
                train_loader,
                desc=f"epoch {epoch}/{epochs}",
                leave=False,
                disable=not ctx.is_main or not sys.stderr.isatty(),
            )  # logs get one line per epoch
            for i, batch in enumerate(bar):
                progress = _progress(
                    epoch - 1 + i / steps_per_epoch, epochs, started, opts.max_minutes, ctx.distributed
                )
                if schedule == "cosine":
                    _set_lr(optimizer, lr * _cosine(progress))
                loss_fn.fp_weight = fp_weight if progress >= fp_start else 0.0
                x = model.normalize(batch["image"].to(ctx.device))
                with torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=autocast):
                    outputs = train_model(x)
                parts = loss_fn(
                    {k: v.float() for k, v in outputs.items()},
                    batch["mask"].to(ctx.device),
                    batch["label"].to(ctx.device),
                )
                if not torch.isfinite(parts["loss"].detach()):
                    raise NonFiniteLossError(epoch, i + 1, parts, autocast)
                optimizer.zero_grad(set_to_none=True)
                parts["loss"].backward()
                optimizer.step()
                if ema is not None:
                    ema.update_parameters(model)
                steps += 1
                for k, v in parts.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach())
                bar.set_postfix(loss=f"{sums['loss'] / steps:.3f}")
                if seen is not None:
                    seen.extend(batch["name"])
                if time.monotonic() > deadline:
                    stop_reason = "time budget"
                    break
            bar.close()
            stop_reason = dist_utils.agree(stop_reason, ctx)
            if seen is not None:
                with (out / f"samples_rank{ctx.rank}.txt").open("a") as fh:
                    fh.write("".join(f"{epoch}\t{n}\n" for n in seen))
                seen.clear()
            if ctx.is_main:
                if ema is not None:
                    _sync_buffers(ema.module, model)
                metrics = evaluate_model(selected, val_loader, ctx.device)
                selection = _selection(metrics)
                is_best = selection > best
                if is_best:
                    best, best_epoch = selection, epoch
                row = {
                    "epoch": epoch,
                    **{
                        f"train_{k}": round(sums.get(k, float("nan")) / max(steps, 1), 5)
                        for k in ("loss", "bce", "dicefocal", "mc", "fp")
                    },
                    **{
                        f"val_{k}": "" if metrics.get(k) is None else round(float(metrics[k]), 5)
                        for k in ("dice", "dice_global", "accuracy", "baseline_accuracy", "image_auroc", "pixel_auroc")
                    },
                    "selection": round(selection, 5) if math.isfinite(selection) else "",
                    "seconds": round(time.monotonic() - t0, 1),
                }
                rows.append(row)
                extra = {
                    "epoch": epoch,
                    "best_selection": best,
                    "best_epoch": best_epoch,
                    "val_metrics": _plain(metrics),
                    "optimizer": optimizer.state_dict(),
                    "model": opts.model,
                    "seed": opts.seed,
                    "data_protocol": protocol.to_dict(),
                    "train_cases": trained_on,
                    "train_data": None if data_path is None else str(data_path),
                }
                last_extra = {**extra, "rows": rows}
                if ema is not None:
                    last_extra["ema_state_dict"] = _trainable_state(ema.module, model)
                # One commit per epoch, safe against a kill at any moment: the new best weights go
                # to best.pt.pending, then last.pt (every metrics row and the best epoch inside) is
                # the commit; only then best.pt and metrics.csv follow. A resume finishes or drops
                # the pending best.pt by what last.pt says and rebuilds metrics.csv from it.
                if is_best:
                    save_checkpoint(
                        selected,
                        out / PENDING_BEST,
                        extra={k: v for k, v in extra.items() if k != "optimizer"},
                        intensity=opts.intensity,
                        context_slices=opts.context_slices,
                        mirror_channel=opts.mirror_channel,
                    )
                save_checkpoint(
                    model,
                    out / "last.pt",
                    extra=last_extra,
                    intensity=opts.intensity,
                    context_slices=opts.context_slices,
                    mirror_channel=opts.mirror_channel,
                )
                if is_best:
                    os.replace(out / PENDING_BEST, out / "best.pt")
                _write_rows(out / "metrics.csv", rows)
                _log_scalars(board, row, float(optimizer.param_groups[0]["lr"]))
                _plot_curves(rows, out / "curves.png")
                left = deadline - time.monotonic()
                budget = f", {max(left, 0.0) / 60:.1f} min of the budget left" if math.isfinite(left) else ""
                logger.info(
                    "epoch %d/%d: loss %.4f, val dice %s, val auroc %s%s (%.0f s%s)",
                    epoch,
                    epochs,
                    row["train_loss"],
                    row["val_dice"],
                    row["val_image_auroc"],
                    " (best)" if is_best else "",
                    row["seconds"],
                    budget,
                )
            dist_utils.barrier(ctx)
            if stop_reason != "epochs":
                logger.info("stopping after epoch %d: %s reached", epoch, stop_reason)
                break
    if board is not None:
        board.close()
    calibration = None
    if ctx.is_main and (out / "best.pt").exists():
        calibration = calibrate_run(
            out / "best.pt",
            list(val_cases) + calibration_cases,
            opts.slice_axis,
            ctx.device,
            cfg.get("slice_score", "auto") if opts.model == "medsad" else "auto",
            objective=opts.calibration_objective,
        )
        write_familiarity_reference(out / "best.pt", train_cases, opts.intensity)
    dist_utils.teardown(ctx)
    last_row = rows[-1] if rows else {}
    return {
        "best_epoch": best_epoch,
        "best_selection": best,
        "last_epoch": int(last_row.get("epoch", 0) or 0),
        "last": last_row,
        "out": str(out),
        "stop_reason": stop_reason,
        "calibration": calibration.summary() if calibration is not None else None,
    }


def calibrate_run(
    best: Path, val_samples: list, slice_axis: int, device: torch.device, slice_score: str, objective: str = "dice"
):
    """Fit the operating point of ``best`` on the run's validation volumes and store it there
    (``objective``: what the lesion threshold and size maximise, see ``MAP_OBJECTIVES``)."""
    from medsad_monai.checkpoint import write_calibration
    from medsad_monai.engine.calibration import fit_operating_point, predict_cases
    from medsad_monai.engine.decision import OperatingPoint
    from medsad_monai.engine.inference import Predictor

    predictor = Predictor.from_checkpoint(best, device=device, operating_point=OperatingPoint())  # not yet calibrated
    cases = predict_cases(predictor, val_samples, slice_axis, desc="calibrating")
    op = fit_operating_point(cases, slice_score=slice_score, source="validation", objective=objective)
    write_calibration(best, op)
    return op


#: Most training volumes the familiarity reference reads (evenly spaced by name beyond it).
FAMILIARITY_VOLUMES = 64
#: Most training 2-D images it reads (a picture is cheap to read; the nearest of more is closer).
FAMILIARITY_IMAGES = 256


def write_familiarity_reference(best: Path, train_cases: Sequence[Sample], intensity: str) -> dict[str, Any] | None:
    """Store the training volumes' (or, for a model of 2-D images, the training images')
    intensity histograms in ``best``: the reference each result's ``familiarity`` is measured
    against (:mod:`~medsad_monai.engine.familiarity`); nothing for fewer than three (said in
    the log)."""
    from medsad_monai.checkpoint import write_familiarity
    from medsad_monai.data.images import load_image_2d
    from medsad_monai.data.volumes import load_volume, normalize_intensity
    from medsad_monai.engine.familiarity import MIN_VOLUMES, fit_reference, grey, intensity_histogram

    volumes = sorted({(s.group, str(s.image)) for s in train_cases if s.slice_index is not None})
    unit, cap = "volume", FAMILIARITY_VOLUMES
    if not volumes:  # a model of 2-D images: one entry per picture
        volumes = sorted({(s.group, str(s.image)) for s in train_cases})
        unit, cap = "image", FAMILIARITY_IMAGES
    if len(volumes) < MIN_VOLUMES:
        logger.info("no familiarity reference: %d training %s(s), it needs %d", len(volumes), unit, MIN_VOLUMES)
        return None
    if len(volumes) > cap:
        step = len(volumes) / cap
        volumes = [volumes[int(i * step)] for i in range(cap)]
    logger.info("familiarity reference: reading %d training %s(s)", len(volumes), unit)
    if unit == "volume":
        arrays = (normalize_intensity(load_volume(path)[0], method=intensity) for _, path in volumes)
    else:
        arrays = (grey(load_image_2d(path)) for _, path in volumes)
    histograms = [intensity_histogram(a) for a in arrays]
    if sum(1 for h in histograms if h.any()) < MIN_VOLUMES:
        logger.info("no familiarity reference: fewer than %d training %ss have foreground", MIN_VOLUMES, unit)
        return None
    block = fit_reference(histograms, [name for name, _ in volumes], unit=unit)
    write_familiarity(best, block)
    return block


def _make_ema(model: nn.Module, decay: float) -> AveragedModel | None:
    """torch's ``AveragedModel`` with an EMA of the parameters, or None when off.

    Buffers are not averaged (open_clip's causal mask holds -inf); :func:`_sync_buffers` copies
    them from the live model before each validation (running statistics of a batch norm).
    """
    if decay <= 0.0:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=False)


def _sync_buffers(averaged: nn.Module, model: nn.Module) -> None:
    with torch.no_grad():
        for mine, theirs in zip(averaged.buffers(), model.buffers()):
            mine.copy_(theirs)


def _trainable_state(averaged: nn.Module, model: nn.Module) -> dict[str, torch.Tensor]:
    """The averaged weights a resume needs: trainable parameters and non-backbone buffers."""
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    return {
        k: v.detach().cpu() for k, v in averaged.state_dict().items() if k in trainable or not k.startswith("backbone.")
    }


def _progress(epochs_done: float, epochs: int, started: float, max_minutes: float | None, distributed: bool) -> float:
    """Fraction of the run done: epochs, or the time budget when that is further along. Under
    DDP only epochs count (ranks must agree on the learning rate without talking)."""
    progress = epochs_done / max(epochs, 1)
    if max_minutes and not distributed:
        progress = max(progress, (time.monotonic() - started) / (max_minutes * 60))
    return min(progress, 1.0)


def _cosine(progress: float) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def _set_lr(optimizer: torch.optim.Optimizer, value: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = value


def _plain(value: Any) -> Any:
    """Metrics dict -> weights_only-safe plain types."""
    return json.loads(json.dumps(value, default=float))
