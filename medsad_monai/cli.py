"""The ``medsad`` command: train | evaluate | calibrate | infer | reproduce | export-bundle |
profiles | check-data | make-sample-data | demo."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from medsad_monai.configs import DATASETS, PAPER_PRESETS
from medsad_monai.demo import DEMO_MINUTES
from medsad_monai.engine.shifts import SHIFT_NAMES
from medsad_monai.log_setup import configure_logging

__all__ = ["main", "build_parser"]

logger = logging.getLogger("medsad")

DEMO_DIR = Path("demo")


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model on a dataset folder (validation-only checkpoint selection)")
    p.add_argument("--data", required=True, help="dataset folder (bmad, busi, sricl or volumes layout)")
    p.add_argument("--out", required=True, help="run folder (best.pt, last.pt, split.json, metrics.csv, curves.png)")
    p.add_argument("--layout", choices=["bmad", "busi", "sricl", "volumes"], help="default: auto-detect")
    p.add_argument("--preset", default="full", choices=["full", "adapt", "adapt_prompt", "adapt_prompt_tpca", "tiny"])
    p.add_argument(
        "--dataset",
        choices=list(DATASETS),
        help="lay the paper's setting for this dataset over the preset (medsad_monai/configs/datasets/*.json: "
        "ViT-L-14 at 224, batch 32, 50 epochs, category, layout and data protocol); options given here win",
    )
    p.add_argument(
        "--model",
        default="medsad",
        choices=["medsad", "unet"],
        help="unet = MONAI UNet baseline, at the preset's input size (224 for the paper presets) unless --image-size",
    )
    p.add_argument(
        "--category",
        help="the prompt's class name ('a photo of a damaged <category>.'; default: the dataset's, else 'brain'); "
        "stored in the checkpoint, so inference uses the same prompt",
    )
    _add_protocol(p, "default: the dataset's, else bmad")
    p.add_argument(
        "--seg-projection",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="linear layer from the Seg-adapter features into CLIP's embedding space (not in the paper; "
        "default on; --no-seg-projection = the paper's equations)",
    )
    p.add_argument(
        "--classifier-projection",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="linear layer from the Det class token into the text space (not in the paper; default on; "
        "--no-classifier-projection = the paper's equations)",
    )
    p.add_argument(
        "--adapter-mix-back",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="mix the adapted tokens back into the backbone's residual stream (the paper; default on); "
        "--no-adapter-mix-back = side adapters: the backbone runs without autograd and a training step "
        "costs little more than a forward",
    )
    p.add_argument("--clip-model", help="open_clip architecture (default: the preset's)")
    p.add_argument("--clip-pretrained", help="open_clip tag, local weight file, or 'none' (random init)")
    p.add_argument("--image-size", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-minutes", type=float, help="stop (after validating and saving) once this much time passed")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last completed epoch")
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.2,
        help="share of the training images (by volume / image, stratified by lesion) held out for checkpoint "
        "selection and calibration; never taken from the test set",
    )
    p.add_argument(
        "--val-data",
        help="a separate validation folder (same layout as --data): epochs are selected and the operating "
        "point fitted on its non-test cases, and every non-test case of --data trains (--val-fraction unused)",
    )
    p.add_argument(
        "--calibration-data",
        help="a separate folder of validation volumes (same layout as --data) that, with the run's own "
        "validation cases, fits the operating point at the end of training; epochs are still selected on the "
        "run's own validation cases (no cost per epoch)",
    )
    _add_slice_axis(p)
    p.add_argument(
        "--synthetic-lesions",
        type=float,
        default=0.0,
        help="probability of painting synthetic lesions on a normal training slice (augmentation)",
    )
    p.add_argument(
        "--synthetic-styles",
        default="A,C",
        help="lesion styles for --synthetic-lesions: A, B, C (the sample-data styles), mixed, R "
        "(random look: bright/dark mixtures on an A/C shape) or P (foreign tissue: a patch of the slice's "
        "brain from elsewhere on an A/C shape)",
    )
    p.add_argument(
        "--lr-schedule",
        choices=["constant", "cosine"],
        help="default: the preset's (constant = the paper; cosine decays to 0 over epochs or --max-minutes)",
    )
    p.add_argument(
        "--ema-decay",
        type=float,
        help="average the weights (exponential moving average, e.g. 0.99); validation, best.pt and "
        "inference use the average (default: the preset's; 0 = off)",
    )
    p.add_argument(
        "--fp-weight",
        type=float,
        help="weight of the lesion-free-image term: cross-entropy of the 1 %% most lesion-like pixels of "
        "every slice without a lesion (default: the preset's; 0 = off, the paper)",
    )
    p.add_argument(
        "--calibration-objective",
        default="dice",
        choices=["dice", "dice+lesion_f1"],
        help="what the operating point fitted at the end of training maximises on the validation volumes "
        "(as medsad calibrate --objective): dice = pooled Dice (default); dice+lesion_f1 = its mean with the "
        "lesion-wise F1",
    )
    p.add_argument(
        "--fp-start",
        type=float,
        help="fraction of the run after which the lesion-free-image term switches on (default: the preset's)",
    )
    p.add_argument(
        "--augment",
        default="paper",
        choices=["paper", "intensity", "strong", "mirror", "elastic"],
        help="paper = horizontal flips; intensity = + MONAI gamma, intensity scale, bias field, "
        "blur, low resolution, noise (scanner differences); strong = + affine, milder intensity; "
        "mirror = + flips along the other in-plane axis (left-right for RAS-view volume slices); "
        "elastic = + a random smooth deformation of slice and mask (anatomy of other shapes)",
    )
    p.add_argument(
        "--intensity",
        default="foreground",
        choices=["foreground", "percentile"],
        help="per-volume intensity normalisation, stored in the checkpoint and used by inference "
        "(docs/data.md): foreground (default) = background to 0, the median of the tissue "
        "(above Otsu) to 0.5, robust to skull and scalp; percentile = 0.5-99.5th percentiles",
    )
    p.add_argument(
        "--synthetic-region",
        default="slice",
        choices=["slice", "brain"],
        help="where synthetic lesions are painted: slice (default) = inside each slice's brain estimate; "
        "brain = on a head with its skull, never on neck, face or vertex slices, whose estimate is muscle, "
        "orbits or scalp (fewer false positives there, lower lesion Dice on the sample data: docs/data.md)",
    )
    p.add_argument(
        "--context-slices",
        type=int,
        default=0,
        choices=[0, 1],
        help="1 = the model sees each volume slice with its two neighbours as its three input channels "
        "(2.5-D context; stored in the checkpoint and used by inference); 0 (default) = the slice alone",
    )
    p.add_argument(
        "--mirror-channel",
        action="store_true",
        help="the model sees each volume slice beside its left-right mirror about the head's midline (its three "
        "input channels: slice, mirror, slice), so a lesion shows as an asymmetry; volumes only, not with "
        "--context-slices 1; stored in the checkpoint and used by inference. Not in the recipe: it helped on a "
        "validation head of a new anatomy and hurt on the test set's (docs/data.md); validate it on your data",
    )
    p.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        default="auto",
        help="autocast of the training step: auto (default) = bf16 on CUDA GPUs and on CPUs with bf16 "
        "units (AMX / AVX-512 bf16, detected), fp32 otherwise",
    )
    p.add_argument(
        "--balance-sources",
        action="store_true",
        help="draw training slices so that every source (the `anatomy` / `source` tag of dataset.json) "
        "is seen equally often, however many volumes it has",
    )
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--device", help="cpu, cuda, cuda:1 … (default: cuda when available)")
    p.add_argument("--record-samples", action="store_true", help="write the training samples each rank saw")


def _add_eval_infer(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="metrics of a checkpoint on a split → report.json / report.md / overlays")
    p.add_argument("--ckpt", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="test", choices=["test", "val", "all"])
    p.add_argument("--out", required=True, help="report folder")
    p.add_argument("--layout", choices=["bmad", "busi", "sricl", "volumes"])
    _add_slice_axis(p)
    _add_protocol(p, "default: the protocol the checkpoint was trained under")
    _add_thresholds(p)
    _add_model_run(p)
    _add_precision(p)

    p = sub.add_parser(
        "robustness",
        help="evaluate a checkpoint under simulated scanner shifts (contrast, blur, resolution, bias field, "
        "noise) → robustness.md / .json / .png",
    )
    p.add_argument("--ckpt", required=True)
    p.add_argument("--data", required=True)
    p.add_argument(
        "--split",
        default="val",
        choices=["val", "all", "test"],
        help="val = the run's saved validation split (default); all = every non-test case of --data (your "
        "own validation set); test = the test split (for reporting only, never for choosing)",
    )
    p.add_argument("--out", required=True, help="report folder (one evaluation report per shift inside)")
    p.add_argument(
        "--shifts",
        type=_shift_list,
        default=None,
        help=f"comma-separated shifts (default: all of {', '.join(SHIFT_NAMES)}); 'none' always runs first",
    )
    p.add_argument("--layout", choices=["bmad", "busi", "sricl", "volumes"])
    _add_slice_axis(p)
    _add_thresholds(p)
    _add_model_run(p)
    _add_precision(p)

    p = sub.add_parser(
        "calibrate",
        help="fit the operating point (thresholds, minimum lesion size) of a "
        "checkpoint on validation data and store it in the checkpoint",
    )
    p.add_argument("--ckpt", required=True)
    p.add_argument("--data", required=True, help="validation data folder (its test part is never used)")
    p.add_argument(
        "--split",
        default="all",
        choices=["all", "val"],
        help="all = every non-test case of --data (your own validation set; on the folder the model was "
        "trained from, the cases that trained it are left out); val = the run's saved validation split "
        "(split.json beside the checkpoint)",
    )
    p.add_argument("--layout", choices=["bmad", "busi", "sricl", "volumes"])
    _add_slice_axis(p)
    p.add_argument(
        "--slice-score",
        choices=["auto", "model", "peak", "lesion_area"],
        help="how slices are scored (default: the model config's: auto for tiny, model for the paper presets)",
    )
    p.add_argument(
        "--objective",
        default="dice",
        choices=["dice", "dice+lesion_f1"],
        help="what the lesion threshold and minimum lesion size maximise on the validation data: dice = the "
        "pooled Dice of all voxels (default); dice+lesion_f1 = its mean with the lesion-wise F1 (fewer "
        "false-positive lesions, some voxel overlap lost)",
    )
    p.add_argument("--out", help="write the calibrated checkpoint here instead of updating --ckpt in place")
    p.add_argument(
        "--profile",
        help="store the fit as a calibration profile of this name (e.g. one per site or scanner: "
        "letters, digits, _ . -), chosen at inference with --profile or the server request's 'profile'; "
        "the checkpoint's default operating point is kept (default: replace the default operating point)",
    )
    _add_model_run(p)

    p = sub.add_parser(
        "profiles",
        help="list a checkpoint's operating points (its default and its calibration profiles), or remove a profile",
    )
    p.add_argument("--ckpt", required=True)
    p.add_argument("--remove", metavar="NAME", help="remove the calibration profile NAME from the checkpoint")
    p.add_argument("--json", action="store_true", help="print the operating points as JSON")

    p = sub.add_parser("infer", help="mask + per-slice scores for NIfTI/NRRD volumes, DICOM series or PNG/JPG images")
    p.add_argument("--ckpt", required=True)
    p.add_argument(
        "--input",
        required=True,
        help="a file or a folder of files; every DICOM series of a folder is one volume (its mask is NIfTI)",
    )
    p.add_argument(
        "--dicom-seg",
        action="store_true",
        help="DICOM series: also write the mask as a DICOM SEG referencing the series (<name>_seg.dcm; "
        "none for a volume without lesion voxels)",
    )
    p.add_argument("--out", required=True)
    _add_slice_axis(p)
    _add_thresholds(p)
    p.add_argument("--no-skip-background", action="store_true", help="also run slices without anatomy")
    _add_model_run(p)
    _add_precision(p)


def _add_model_run(p: argparse.ArgumentParser) -> None:
    """How a command that runs the model runs it: batch size, backbone weights, device."""
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--clip-pretrained", help="where the backbone weights are on this machine")
    p.add_argument("--device")


def _evaluation_options(args: argparse.Namespace) -> dict:
    """The ``evaluate_checkpoint`` keyword arguments that ``evaluate`` and ``robustness`` share."""
    return {
        "split": args.split,
        "layout": args.layout,
        "slice_axis": args.slice_axis,
        "threshold": args.threshold,
        "slice_threshold": args.slice_threshold,
        "volume_threshold": args.volume_threshold,
        "min_lesion_mm3": args.min_lesion_mm3,
        "min_lesion_mean": args.min_lesion_mean,
        "profile": args.profile,
        "batch_size": args.batch_size,
        "clip_pretrained": args.clip_pretrained,
        "device": args.device,
        "precision": args.precision,
    }


def _shift_list(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in SHIFT_NAMES]
    if not names or bad:
        raise argparse.ArgumentTypeError(
            f"unknown shift(s) {', '.join(bad) or repr(text)}; expected {', '.join(SHIFT_NAMES)}"
        )
    return names


def _add_precision(p: argparse.ArgumentParser) -> None:
    """``--precision auto|fp32|bf16`` of ``infer`` and ``evaluate``."""
    p.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16"],
        help="model forward precision; auto = bf16 on CUDA with bf16 support or on a CPU with "
        "bf16 units (amx_bf16 / avx512_bf16), fp32 otherwise (default: auto)",
    )


def _add_slice_axis(p: argparse.ArgumentParser) -> None:
    """``--slice-axis``: counted in the volume's RAS view (``medsad_monai.data.orientation``)."""
    p.add_argument(
        "--slice-axis",
        type=int,
        default=2,
        choices=[0, 1, 2],
        help="axis of the volume's RAS view to slice along: 0 sagittal, 1 coronal, 2 axial (default)",
    )


def _add_protocol(p: argparse.ArgumentParser, default: str) -> None:
    """``--protocol``, ``--split-lists``, ``--busi-normal`` (docs/reproduce.md)."""
    p.add_argument(
        "--protocol",
        choices=["bmad", "paper"],
        help="BMAD folders: bmad = train on train/+valid/, test on test/; paper = train on test/, test on "
        f"valid/ (the paper's counts) ({default})",
    )
    p.add_argument(
        "--split-lists",
        metavar="DIR",
        help="busi/sricl: a folder with train.txt and test.txt (one image stem per line), e.g. SR-ICL's lists",
    )
    p.add_argument(
        "--busi-normal",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="BUSI: include normal/ (--no-busi-normal: benign + malignant only, the paper's Breast counts)",
    )


def _add_thresholds(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--threshold",
        type=float,
        help="lesion-map threshold (default: the checkpoint's calibrated one; 0.5 if it has none)",
    )
    p.add_argument("--slice-threshold", type=float, help="slice decision threshold (default: calibrated)")
    p.add_argument("--volume-threshold", type=float, help="volume decision threshold (default: calibrated)")
    p.add_argument(
        "--min-lesion-mm3",
        type=float,
        help="remove connected lesions under this many mm³ (default: the calibrated minimum; 0 keeps every lesion)",
    )
    p.add_argument(
        "--min-lesion-mean",
        type=float,
        help="remove connected lesions whose mean probability is under this (default: the calibrated value; "
        "0 keeps every lesion)",
    )
    p.add_argument(
        "--profile",
        help="decide at the checkpoint's calibration profile of this name (one site's or scanner's operating "
        "point, fitted by medsad calibrate --profile) instead of its default one; the options above still "
        "override single values (medsad profiles --ckpt CKPT lists them)",
    )


def _add_reproduce(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "reproduce",
        help="the paper's Table 2/3 on one dataset: train and test every preset and seed, then table.md/table.json",
    )
    p.add_argument("--dataset", required=True, choices=list(DATASETS))
    p.add_argument("--data", required=True, help="the dataset folder (BMAD Brain/Retina, SR-ICL lung, BUSI)")
    p.add_argument(
        "--clip-pretrained",
        required=True,
        help="the ViT-L-14 weights: a local file, an open_clip tag, or 'none' (random init, checks only)",
    )
    p.add_argument("--out", required=True, help="results folder (resumable: finished preset/seed runs are kept)")
    p.add_argument("--presets", default=",".join(PAPER_PRESETS), help="comma-separated (default: all four)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds")
    p.add_argument("--layout", choices=["bmad", "busi", "sricl"], help="default: the dataset's")
    _add_protocol(p, "default: the dataset's")
    p.add_argument(
        "--test-fraction",
        type=float,
        help="busi/sricl without --split-lists: test share of the seeded split written to OUT/split_lists "
        "(default: the dataset's, 0.25)",
    )
    p.add_argument("--val-fraction", type=float, help="default: the dataset's (0.2 of the training images)")
    p.add_argument("--clip-model", help="override the backbone (checks only; the paper: ViT-L-14)")
    p.add_argument("--image-size", type=int, help="override the input size (checks only)")
    p.add_argument("--epochs", type=int, help="override the epochs (checks only; the paper: 50)")
    p.add_argument("--batch-size", type=int, help="override the batch size (the paper: 32)")
    p.add_argument("--lr", type=float)
    p.add_argument("--max-minutes", type=float, help="time budget per training run")
    p.add_argument("--num-workers", type=int, default=4)
    p.add_argument("--eval-batch-size", type=int, default=32)
    p.add_argument("--device", help="cpu, cuda, cuda:1 … (default: cuda when available)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medsad", description="MedSAD-CLIP: lesion detection and segmentation")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_eval_infer(sub)
    p = sub.add_parser(
        "export-bundle",
        help="write a checkpoint as a MONAI bundle (configs/metadata.json, "
        "configs/inference.json, models/model.pt, docs/README.md, LICENSE)",
    )
    p.add_argument("--ckpt", required=True, help="a MedSAD checkpoint (best.pt of a run, calibrated or not)")
    p.add_argument("--out", required=True, help="bundle folder (new or empty)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the bundle files of an existing non-empty --out (other files are kept)",
    )
    p.add_argument(
        "--profile",
        help="the bundle decides at the checkpoint's calibration profile of this name (default: its own "
        "operating point)",
    )
    _add_reproduce(sub)
    p = sub.add_parser(
        "familiarity",
        help="are these scans like the model's training scans? intensity histograms against the checkpoint's "
        "reference, before any inference (table; --out: familiarity.json and familiarity.png)",
    )
    p.add_argument("--ckpt", required=True, help="a checkpoint trained by this version (it holds the reference)")
    p.add_argument("--input", required=True, help="a NIfTI/NRRD volume, DICOM series or 2-D image, or a folder")
    p.add_argument("--out", help="folder for familiarity.json and familiarity.png (a picture of the histograms)")
    p = sub.add_parser("check-data", help="validate a dataset folder and print counts")
    p.add_argument("data")
    p.add_argument("--layout", choices=["bmad", "busi", "sricl", "volumes"])
    _add_slice_axis(p)
    p = sub.add_parser("make-sample-data", help="synthetic lesions on warped MNI152 brains (no download)")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("demo", help="train the tiny preset on sample_data if needed, then infer a sample volume")
    p.add_argument("--data", default="sample_data/volumes")
    p.add_argument("--out", default=str(DEMO_DIR))
    p.add_argument("--max-minutes", type=float, default=DEMO_MINUTES)
    return parser


def _train(args: argparse.Namespace) -> int:
    from medsad_monai.engine.train import TrainOptions, train

    opts = TrainOptions(
        data=args.data,
        out=args.out,
        layout=args.layout,
        preset=args.preset,
        model=args.model,
        dataset=args.dataset,
        category=args.category,
        protocol=args.protocol,
        split_lists=args.split_lists,
        busi_normal=args.busi_normal,
        seg_projection=args.seg_projection,
        classifier_projection=args.classifier_projection,
        adapter_mix_back=args.adapter_mix_back,
        clip_model=args.clip_model,
        clip_pretrained=args.clip_pretrained,
        image_size=args.image_size,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        max_minutes=args.max_minutes,
        resume=args.resume,
        val_fraction=args.val_fraction,
        val_data=args.val_data,
        slice_axis=args.slice_axis,
        synthetic_lesions=args.synthetic_lesions,
        synthetic_styles=[s for s in args.synthetic_styles.split(",") if s],
        augment=args.augment,
        intensity=args.intensity,
        context_slices=args.context_slices,
        mirror_channel=args.mirror_channel,
        synthetic_region=args.synthetic_region,
        lr_schedule=args.lr_schedule,
        ema_decay=args.ema_decay,
        fp_weight=args.fp_weight,
        fp_start=args.fp_start,
        calibration_objective=args.calibration_objective,
        calibration_data=args.calibration_data,
        balance_sources=args.balance_sources,
        precision=args.precision,
        num_workers=args.num_workers,
        device=args.device,
        record_samples=args.record_samples,
    )
    summary = train(opts)
    print(json.dumps({k: v for k, v in summary.items() if k != "last"}, indent=2, default=str))
    _say_warnings((summary.get("calibration") or {}).get("warnings") or [])
    return 0


def _recorded_protocol(ckpt: str):
    """The data protocol a checkpoint was trained under (the default one for older checkpoints)."""
    from medsad_monai.checkpoint import read_checkpoint
    from medsad_monai.data.protocol import DataProtocol

    return DataProtocol.from_dict(read_checkpoint(ckpt).get("extra", {}).get("data_protocol"))


def _robustness(args: argparse.Namespace) -> int:
    from medsad_monai.engine.robustness import ROBUSTNESS_COLUMNS, robustness_report

    rows = robustness_report(
        args.ckpt, args.data, args.out, shifts=args.shifts or SHIFT_NAMES, **_evaluation_options(args)
    )
    keys = (
        "dice_global",
        "lesion_recall",
        "balanced_accuracy",
        "fp_voxels_mean",
        "lesion_mean_probability",
        "unfamiliar",
    )
    for r in rows:
        figures = " ".join(
            f"{k}={'n/a' if r[k] is None else format(r[k], '.4g')}" for k in keys if k in ROBUSTNESS_COLUMNS
        )
        print(f"{r['shift']}: {figures}")
    print(f"report: {Path(args.out) / 'robustness.md'}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from medsad_monai.engine.evaluate import evaluate_checkpoint

    protocol = None
    if args.protocol is not None or args.split_lists is not None or args.busi_normal is not None:
        protocol = _recorded_protocol(args.ckpt).replace(
            bmad_usage=args.protocol, split_lists=args.split_lists, busi_normal=args.busi_normal
        )
    metrics = evaluate_checkpoint(args.ckpt, args.data, args.out, protocol=protocol, **_evaluation_options(args))
    keys = (
        "dice",
        "dice_global",
        "image_auroc",
        "balanced_accuracy",
        "sensitivity",
        "specificity",
        "pixel_auroc",
        "volume_auroc",
        "volume_balanced_accuracy",
        "volume_ranking_separates",
        "fp_voxels_max",
        "fp_max_over_mean_lesion",
        "lesion_recall",
        "lesion_f1",
    )
    print(" ".join(f"{k}={_short(metrics.get(k))}" for k in keys))
    print(f"report: {Path(args.out) / 'report.md'}")
    return 0


def _short(value):
    return round(value, 4) if isinstance(value, float) else value


def _infer(args: argparse.Namespace) -> int:
    from medsad_monai.engine.inference import Predictor, infer_path

    predictor = Predictor.from_checkpoint(
        args.ckpt,
        clip_pretrained=args.clip_pretrained,
        batch_size=args.batch_size,
        device=args.device,
        precision=args.precision,
        profile=args.profile,
    )
    predictor.operating_point = predictor.operating_point.with_overrides(
        map_threshold=args.threshold,
        slice_threshold=args.slice_threshold,
        volume_threshold=args.volume_threshold,
        min_lesion_mm3=args.min_lesion_mm3,
        min_lesion_mean=args.min_lesion_mean,
    )
    for r in infer_path(
        predictor,
        args.input,
        args.out,
        axis=args.slice_axis,
        skip_background=not args.no_skip_background,
        dicom_seg=args.dicom_seg,
    ):
        largest = (r.get("lesions") or [{}])[0].get("volume_mm3")
        print(
            f"{r['input']}: volume_score={r['volume_score']:.3f} volume_abnormal={r.get('volume_abnormal')} "
            f"worst_slice={r['worst_slice']} lesion_voxels={r.get('lesion_voxels', r.get('lesion_pixels'))} "
            f"lesions={r.get('n_lesions')}"
            + (f" largest_mm3={largest:g}" if largest is not None else "")
            + f" -> {r['mask']}"
        )
        familiarity = r.get("familiarity") or {}
        if familiarity.get("warning"):
            print(f"warning: {r['input']}: {familiarity['warning']}", file=sys.stderr)
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from medsad_monai.engine.calibration import calibrate_checkpoint

    op = calibrate_checkpoint(
        args.ckpt,
        args.data,
        split=args.split,
        layout=args.layout,
        slice_axis=args.slice_axis,
        slice_score=args.slice_score,
        batch_size=args.batch_size,
        clip_pretrained=args.clip_pretrained,
        device=args.device,
        out=args.out,
        objective=args.objective,
        profile=args.profile,
    )
    print(json.dumps({"operating_point": op.summary(), "validation": op.validation}, indent=2))
    where = "as the default operating point" if op.profile == "default" else f"as calibration profile {op.profile!r}"
    print(f"calibration stored in {args.out or args.ckpt} {where}")
    for name, fig in (op.validation.get("compared_with_default") or {}).items():
        fp = fig["fp_voxels_per_lesion_free_volume"]
        print(
            f"on these validation cases, {name}: pooled Dice {fig['dice_pooled']}"
            + ("" if fp is None else f", {fp:g} false-positive voxels per lesion-free volume")
        )
    _say_warnings(op.summary()["warnings"])
    return 0


def _profiles(args: argparse.Namespace) -> int:
    from medsad_monai.checkpoint import calibration_profiles, read_checkpoint, remove_calibration_profile

    if args.remove:
        remove_calibration_profile(args.ckpt, args.remove)
        print(f"calibration profile {args.remove!r} removed from {args.ckpt}")
    points = calibration_profiles(read_checkpoint(args.ckpt), args.ckpt)
    if args.json:
        print(json.dumps({name: op.to_dict() for name, op in points.items()}, indent=2))
        return 0
    for name, op in points.items():
        cases = (op.validation or {}).get("cases") or []
        size = "n/a" if op.min_lesion_mm3 is None else f"{op.min_lesion_mm3:g} mm³"
        print(
            f"{name}: {op.source}, map >= {op.map_threshold:g}, min lesion {op.min_lesion_voxels} voxels ({size}), "
            f"min lesion mean {op.min_lesion_mean:g}, slice {op.slice_score} >= {op.slice_threshold:.3g}, "
            f"volume {op.volume_score} >= {op.volume_threshold:.3g}; {len(cases)} validation case(s)"
            + (f", fitted {op.validation['date']}" if (op.validation or {}).get("date") else "")
        )
        for warning in (op.validation or {}).get("warnings") or []:
            print(f"  warning: {warning}")
    return 0


def _say_warnings(warnings: list[str]) -> None:
    """The calibration's warnings, last on the terminal where they are not lost in the JSON."""
    for warning in warnings:
        print(f"warning: the operating point: {warning}", file=sys.stderr)


def _export_bundle(args: argparse.Namespace) -> int:
    from medsad_monai.bundle import BUNDLE_FILES, export_bundle

    out = export_bundle(args.ckpt, args.out, overwrite=args.overwrite, profile=args.profile)
    for name in BUNDLE_FILES:
        print(out / name)
    print(
        f"run it: cd {out} && python -m monai.bundle run --config_file configs/inference.json "
        f"--meta_file configs/metadata.json --input VOLUME_OR_FOLDER --output_dir OUT_DIR"
    )
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    from medsad_monai.engine.reproduce import ReproduceOptions, reproduce

    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--seeds {args.seeds!r}: expected comma-separated integers") from None
    opts = ReproduceOptions(
        dataset=args.dataset,
        data=args.data,
        out=args.out,
        clip_pretrained=args.clip_pretrained,
        presets=[p.strip() for p in args.presets.split(",") if p.strip()],
        seeds=seeds,
        layout=args.layout,
        protocol=args.protocol,
        split_lists=args.split_lists,
        busi_normal=args.busi_normal,
        test_fraction=args.test_fraction,
        val_fraction=args.val_fraction,
        clip_model=args.clip_model,
        image_size=args.image_size,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        max_minutes=args.max_minutes,
        num_workers=args.num_workers,
        device=args.device,
        eval_batch_size=args.eval_batch_size,
    )
    reproduce(opts)
    print((Path(args.out) / "table.md").read_text(), end="")
    print(f"table: {Path(args.out) / 'table.md'} and table.json")
    return 0


def _check_data(args: argparse.Namespace) -> int:
    from medsad_monai.data.check import check_data

    report = check_data(args.data, layout=args.layout, slice_axis=args.slice_axis)
    print(report.format())
    return 0 if report.ok else 1


def _make_sample_data(args: argparse.Namespace) -> int:
    from medsad_monai.data.synthetic import main as synthetic_main

    return synthetic_main(["--out", args.out, "--seed", str(args.seed)])


def _demo(args: argparse.Namespace) -> int:
    from medsad_monai.demo import demo_volume, ensure_demo_checkpoint
    from medsad_monai.engine.inference import Predictor, infer_path

    out = Path(args.out)
    ckpt = ensure_demo_checkpoint(args.data, out, args.max_minutes)
    volume = demo_volume(Path(args.data))
    predictor = Predictor.from_checkpoint(ckpt)
    for r in infer_path(predictor, volume, out / "infer"):
        print(
            f"{volume.name}: volume_score={r['volume_score']:.3f} worst_slice={r['worst_slice']} "
            f"lesion_voxels={r['lesion_voxels']} -> {r['mask']} (+ {r['scores']})"
        )
    print("demo model: trained on synthetic lesions — not for clinical use")
    return 0


def _familiarity(args: argparse.Namespace) -> int:
    from medsad_monai.engine.familiarity_survey import summary_line, survey, write_survey

    reference, rows = survey(args.ckpt, args.input)
    for r in rows:
        where = r["input"] if "dicom_series" not in r else f"{r['input']} (DICOM series {r['name']})"
        if r.get("error"):
            print(f"{where}: error: {r['error']}")
        elif r["familiar"] is None:
            print(f"{where}: {r['note']}")
        else:
            verdict = "familiar" if r["familiar"] else "UNFAMILIAR"
            print(f"{where}: distance={r['distance']:.3f} threshold={r['threshold']:.3f} {verdict}")
    print(summary_line(reference, rows))
    if args.out:
        for path in write_survey(reference, rows, args.out):
            print(f"wrote {path}")
    return 0


COMMANDS = {
    "train": _train,
    "evaluate": _evaluate,
    "robustness": _robustness,
    "calibrate": _calibrate,
    "profiles": _profiles,
    "infer": _infer,
    "reproduce": _reproduce,
    "export-bundle": _export_bundle,
    "familiarity": _familiarity,
    "check-data": _check_data,
    "make-sample-data": _make_sample_data,
    "demo": _demo,
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``medsad`` console script. Errors become one clear line, exit code 2."""
    args = build_parser().parse_args(argv)
    configure_logging(verbose=args.verbose)
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print(
            "interrupted: the last completed epoch/output is kept; re-run with --resume to continue training",
            file=sys.stderr,
        )
        return 130
    except (ValueError, OSError, RuntimeError) as exc:  # OSError: not found, exists, no permission
        if args.verbose:
            raise
        print(f"medsad {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
