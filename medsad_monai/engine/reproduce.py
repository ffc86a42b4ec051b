"""``medsad reproduce``: the paper's Table 2/3 on one of its datasets, from the command line.

For every preset (the ablation of the paper's Table 3: ``adapt``, ``adapt_prompt``,
``adapt_prompt_tpca``, ``full``) and seed, ``medsad reproduce`` trains with the dataset's
paper setting (``medsad_monai/configs/datasets/<dataset>.json``) through
:func:`~medsad_monai.engine.train.train`, evaluates ``best.pt`` on the test set of the data
protocol through :func:`~medsad_monai.engine.evaluate.evaluate_checkpoint`, and writes
``table.md`` and ``table.json``: mean ± std over the seeds of Dice and accuracy (at the
calibrated operating point and at 0.5, how the paper decides), image and pixel AUROC, beside
the paper's numbers.

Layout of ``--out``::

    OUT/table.md, OUT/table.json          the summary (rewritten after every run)
    OUT/split_lists/{train,test}.txt      only for busi/sricl data without --split-lists
    OUT/<preset>/seed<k>/                 the training run (best.pt, split.json, metrics.csv …)
    OUT/<preset>/seed<k>/test/report.json the evaluation on the test set

Resumable: a preset/seed whose ``test/report.json`` exists is not run again; a run stopped
during training continues from its ``last.pt`` (``--resume``), one stopped after training is
only evaluated.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medsad_monai.atomic import atomic_write_text
from medsad_monai.configs import DATASETS, PAPER_PRESETS, DatasetConfig, load_dataset_config
from medsad_monai.data.protocol import DataProtocol, write_split_lists

__all__ = ["PAPER_TABLE", "METRICS", "ReproduceOptions", "reproduce", "summarise", "render_table"]

logger = logging.getLogger(__name__)

#: The paper's numbers, in %, as (Dice, accuracy) per dataset and preset: the paper's Table 2
#: (the full model against other methods, per dataset) and Table 3 (the ablation: adapters,
#: + learnable prompts, + TPCA, + MCLoss). ``None`` = not filled in.
#: TODO(issue 12): copy the paper's Table 2/3 values here from the paper itself; this project
#: has no verified copy of the tables, and guessed numbers would be worse than none.
PAPER_TABLE: dict[str, dict[str, tuple[float | None, float | None]]] = {
    #           preset:              (Dice %, accuracy %)
    "brain": {
        "adapt": (None, None),
        "adapt_prompt": (None, None),
        "adapt_prompt_tpca": (None, None),
        "full": (None, None),
    },
    "retina": {
        "adapt": (None, None),
        "adapt_prompt": (None, None),
        "adapt_prompt_tpca": (None, None),
        "full": (None, None),
    },
    "lung": {
        "adapt": (None, None),
        "adapt_prompt": (None, None),
        "adapt_prompt_tpca": (None, None),
        "full": (None, None),
    },
    "breast": {
        "adapt": (None, None),
        "adapt_prompt": (None, None),
        "adapt_prompt_tpca": (None, None),
        "full": (None, None),
    },
}

#: Figures taken from each run's ``report.json`` (fractions in [0, 1]), in table order, with
#: their column titles.
METRICS: dict[str, str] = {
    "dice": "Dice (calibrated)",
    "accuracy": "accuracy (calibrated)",
    "dice_at_0.5": "Dice @0.5",
    "accuracy_at_0.5": "accuracy @0.5",
    "image_auroc": "image AUROC",
    "pixel_auroc": "pixel AUROC",
}
_LIST_LAYOUTS = ("busi", "sricl")


@dataclass
class ReproduceOptions:
    """Options of ``medsad reproduce`` (``None`` = the dataset config's value).

    ``clip_model``, ``image_size``, ``epochs``, ``batch_size``, ``lr`` override the paper
    setting (for a quick check or a test, never for the paper's figures).
    """

    dataset: str
    data: str
    out: str
    clip_pretrained: str | None = None
    presets: list[str] = field(default_factory=lambda: list(PAPER_PRESETS))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    layout: str | None = None
    protocol: str | None = None
    split_lists: str | None = None
    busi_normal: bool | None = None
    test_fraction: float | None = None
    val_fraction: float | None = None
    clip_model: str | None = None
    image_size: int | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    max_minutes: float | None = None
    num_workers: int = 0
    device: str | None = None
    eval_batch_size: int = 8

    def validate(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"--dataset must be one of {', '.join(DATASETS)}, got {self.dataset!r}")
        bad = [p for p in self.presets if p not in PAPER_PRESETS]
        if bad or not self.presets:
            raise ValueError(f"--presets {','.join(self.presets)!r}: use a comma-separated list of {PAPER_PRESETS}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"--seeds must be distinct integers, got {self.seeds}")
        if len(set(self.presets)) != len(self.presets):
            raise ValueError(f"--presets lists a preset twice: {self.presets}")


def _run_dir(out: Path, preset: str, seed: int) -> Path:
    return out / preset / f"seed{seed}"


def _figures(metrics: dict[str, Any]) -> dict[str, float | None]:
    """The table's figures of one ``report.json`` ``metrics`` block."""
    at_half = next((r for r in metrics.get("threshold_sweep") or [] if abs(float(r["threshold"]) - 0.5) < 1e-9), {})
    return {
        "dice": metrics.get("dice"),
        "accuracy": metrics.get("accuracy"),
        "dice_at_0.5": at_half.get("dice"),
        "accuracy_at_0.5": at_half.get("accuracy"),
        "image_auroc": metrics.get("image_auroc"),
        "pixel_auroc": metrics.get("pixel_auroc"),
    }


def _mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None, int]:
    """Mean, sample standard deviation (None for one value) and count of the defined values."""
    got = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not got:
        return None, None, 0
    return statistics.fmean(got), (statistics.stdev(got) if len(got) > 1 else None), len(got)


def _protocol(opts: ReproduceOptions, ds: DatasetConfig, layout: str | None) -> tuple[DataProtocol, bool]:
    """The data protocol; for busi/sricl data without split lists, a seeded split of our own
    written to ``OUT/split_lists`` (reused on a resumed run). Returns it and whether ours."""
    protocol = ds.data_protocol(bmad_usage=opts.protocol, split_lists=opts.split_lists, busi_normal=opts.busi_normal)
    from medsad_monai.data.layouts import detect_layout

    name = layout or detect_layout(opts.data)
    if protocol.split_lists or name not in _LIST_LAYOUTS:
        return protocol, False
    folder = Path(opts.out) / "split_lists"
    if not (folder / "train.txt").is_file() or not (folder / "test.txt").is_file():
        fraction = opts.test_fraction if opts.test_fraction is not None else ds.test_fraction or 0.25
        pool, _ = protocol.training_pool(opts.data, name)
        write_split_lists(pool, folder, fraction, seed=0)
        logger.warning(
            "%s: no --split-lists given; wrote a seeded split of our own (test fraction %g) to %s. "
            "It is not the paper's split: pass the paper's lists with --split-lists for its figures.",
            opts.data,
            fraction,
            folder,
        )
    return protocol.replace(split_lists=str(folder)), True


def reproduce(opts: ReproduceOptions) -> dict[str, Any]:
    """Train and evaluate every preset × seed not done yet, then write the table.

    Returns:
        The ``table.json`` payload.
    """
    from medsad_monai.engine.evaluate import evaluate_checkpoint
    from medsad_monai.engine.train import TrainOptions, train

    opts.validate()
    ds = load_dataset_config(opts.dataset)
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    layout = opts.layout or ds.layout
    protocol, own_split = _protocol(opts, ds, layout)
    logger.info(
        "reproduce %s on %s: %s; presets %s, seeds %s",
        ds.paper_name,
        opts.data,
        protocol.describe(layout),
        ",".join(opts.presets),
        ",".join(map(str, opts.seeds)),
    )
    setting = ds.model_config(
        "full",
        clip_model=opts.clip_model,
        clip_pretrained=opts.clip_pretrained,
        image_size=opts.image_size,
        epochs=opts.epochs,
        batch_size=opts.batch_size,
        lr=opts.lr,
    )
    runs: dict[str, dict[int, dict[str, Any]]] = {p: {} for p in opts.presets}
    for preset in opts.presets:
        for seed in opts.seeds:
            run = _run_dir(out, preset, seed)
            report = run / "test" / "report.json"
            if not report.is_file():
                started = time.monotonic()
                if not (run / "train_summary.json").is_file():
                    summary = train(
                        TrainOptions(
                            data=opts.data,
                            out=str(run),
                            layout=layout,
                            preset=preset,
                            dataset=ds.dataset,
                            protocol=protocol.bmad_usage,
                            split_lists=protocol.split_lists,
                            busi_normal=protocol.busi_normal,
                            clip_model=opts.clip_model,
                            clip_pretrained=opts.clip_pretrained,
                            image_size=opts.image_size,
                            epochs=opts.epochs,
                            batch_size=opts.batch_size,
                            lr=opts.lr,
                            seed=seed,
                            max_minutes=opts.max_minutes,
                            resume=(run / "last.pt").is_file(),
                            val_fraction=opts.val_fraction or float(ds.train.get("val_fraction", 0.2)),
                            augment=str(ds.train.get("augment", "paper")),
                            num_workers=opts.num_workers,
                            device=opts.device,
                        )
                    )
                    atomic_write_text(run / "train_summary.json", json.dumps(summary, indent=2, default=str) + "\n")
                if not (run / "best.pt").is_file():
                    raise RuntimeError(f"{run}: training wrote no best.pt (no completed validation epoch)")
                evaluate_checkpoint(
                    run / "best.pt",
                    opts.data,
                    run / "test",
                    split="test",
                    layout=layout,
                    batch_size=opts.eval_batch_size,
                    clip_pretrained=opts.clip_pretrained,
                    device=opts.device,
                    protocol=protocol,
                )
                logger.info("%s seed %d done in %.0f s", preset, seed, time.monotonic() - started)
            else:
                logger.info("%s seed %d: %s exists, not run again", preset, seed, report)
            runs[preset][seed] = _run_record(run, report)
            table = summarise(ds, opts, protocol, own_split, setting.to_dict(), runs)
            write_table(out, table)
    return table


def _run_record(run: Path, report: Path) -> dict[str, Any]:
    payload = json.loads(report.read_text())
    record: dict[str, Any] = {"figures": _figures(payload["metrics"]), "report": str(report)}
    split = run / "split.json"
    if split.is_file():
        meta = json.loads(split.read_text())
        record["n_train_images"] = meta.get("n_train_samples")
        record["n_val_images"] = meta.get("n_val_samples")
    record["n_test_images"] = payload["metrics"].get("n_images")
    record["epoch"] = payload.get("meta", {}).get("epoch")
    return record


def summarise(
    ds: DatasetConfig,
    opts: ReproduceOptions,
    protocol: DataProtocol,
    own_split: bool,
    setting: dict[str, Any],
    runs: dict[str, dict[int, dict[str, Any]]],
) -> dict[str, Any]:
    """The ``table.json`` payload: per preset the runs, mean ± std per figure, and the paper's."""
    rows: dict[str, Any] = {}
    for preset, by_seed in runs.items():
        stats = {}
        for key in METRICS:
            mean, std, n = _mean_std([r["figures"].get(key) for r in by_seed.values()])
            stats[key] = {"mean": mean, "std": std, "n": n}
        dice, acc = PAPER_TABLE.get(ds.dataset, {}).get(preset, (None, None))
        rows[preset] = {
            "seeds": sorted(by_seed),
            "stats": stats,
            "paper": {"dice_percent": dice, "accuracy_percent": acc},
            "runs": {str(seed): record for seed, record in sorted(by_seed.items())},
        }
    return {
        "dataset": ds.dataset,
        "paper_name": ds.paper_name,
        "data": str(Path(opts.data).resolve()),
        "layout": opts.layout or ds.layout,
        "data_protocol": protocol.to_dict(),
        "split_lists_ours": own_split,
        "paper_counts": ds.paper_counts,
        "presets": list(opts.presets),
        "seeds": list(opts.seeds),
        "setting": {k: setting.get(k) for k in ds.model} | {"clip_pretrained": setting.get("clip_pretrained")},
        "sources": ds.sources,
        "paper_source": "the paper's Table 2/3 (MedSAD-CLIP, arXiv 2603.17325); null = not filled in",
        "rows": rows,
    }


def _pct(stat: dict[str, Any]) -> str:
    if stat["mean"] is None:
        return "—"
    text = f"{100 * stat['mean']:.1f}"
    return text + (f" ± {100 * stat['std']:.1f}" if stat["std"] is not None else "")


def render_table(table: dict[str, Any]) -> str:
    """``table.md``: the figures beside the paper's, and where every setting comes from."""
    s = table["setting"]
    proto = DataProtocol.from_dict(table["data_protocol"])
    first = next((r for row in table["rows"].values() for r in row["runs"].values()), {})
    counts = table["paper_counts"]
    paper_counts = (
        f"{counts.get('train')} / {counts.get('test')}" if counts.get("train") is not None else "not recorded"
    )
    lines = [
        f"# MedSAD-CLIP on {table['paper_name']}: the paper's Table 2/3 reproduced",
        "",
        f"- data: `{table['data']}` ({table['layout']} layout); data protocol: {proto.describe(table['layout'])}"
        + (" — **our own seeded split, not the paper's**" if table["split_lists_ours"] else ""),
        f"- images: {first.get('n_train_images', '?')} train + {first.get('n_val_images', '?')} validation "
        f"(carved out of the training data) / {first.get('n_test_images', '?')} test; "
        f"the paper: {paper_counts} (train / test)",
        f"- setting: {s.get('clip_model')} ({s.get('clip_pretrained')}), input {s.get('image_size')}, "
        f"batch {s.get('batch_size')}, {s.get('epochs')} epochs, Adam lr {s.get('lr')} betas {s.get('betas')}, "
        f"{s.get('n_ctx')} prompt tokens, margin {s.get('mc_margin')}, category '{s.get('category')}'",
        f"- seeds: {', '.join(map(str, table['seeds']))}; figures in %, mean ± sample std over the seeds",
        "- Dice: mean over the test images with a lesion; accuracy: image-level. *calibrated*: at the operating "
        "point fitted on the validation images; *@0.5*: at 0.5 (how the paper decides). AUROCs need no threshold.",
        f"- paper: {table['paper_source']}",
        "",
        "| preset | seeds | " + " | ".join(METRICS.values()) + " | paper Dice | paper accuracy |",
        "| --- | --- | " + " | ".join("---" for _ in METRICS) + " | --- | --- |",
    ]
    for preset, row in table["rows"].items():
        paper = row["paper"]
        cells = [_pct(row["stats"][k]) for k in METRICS]
        p_dice = "" if paper["dice_percent"] is None else f"{paper['dice_percent']:.1f}"
        p_acc = "" if paper["accuracy_percent"] is None else f"{paper['accuracy_percent']:.1f}"
        lines.append(f"| {preset} | {len(row['seeds'])} | " + " | ".join(cells) + f" | {p_dice} | {p_acc} |")
    lines += ["", "## Where the settings come from", ""]
    lines += [f"- `{key}`: {text}" for key, text in table["sources"].items()]
    return "\n".join(lines) + "\n"


def write_table(out: Path, table: dict[str, Any]) -> None:
    """Write ``table.json`` and ``table.md`` atomically."""
    atomic_write_text(out / "table.json", json.dumps(table, indent=2, allow_nan=False) + "\n")
    atomic_write_text(out / "table.md", render_table(table))
