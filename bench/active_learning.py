"""Does the active-learning loop improve the model, and does ``medsad_uncertain`` pick better
volumes than MONAI Label's ``random``?

Simulates the loop on ``sample_data/volumes`` with the real app (MONAI Label's app in-process,
its HTTP routes): a datastore of the training volumes with 3 of them labelled, a model trained
on those 3 (the same for every strategy of a seed), then for each round the strategy picks the
next unlabelled volume, its sample label is saved as ``final``, and the app's train task
fine-tunes the served model for a fixed budget (publishing only what is not worse). After each
round the served model is evaluated on the held-out test volumes with ``medsad evaluate``'s
function (Dice, slice AUROC, volume balanced accuracy).

Writes ``active_learning.csv`` and ``active_learning.png`` into ``--out`` and prints, per
strategy and metric, the area under the curve (mean over seeds, normalised to the rounds) as
``key=value`` lines::

    nice -n 19 python bench/active_learning.py --rounds 6 --epochs 2 --seeds 0,1,2
    python bench/active_learning.py --rounds 1 --epochs 1 --initial-epochs 1 --seeds 0 \
        --pool 4 --test 1 --initial 2  # CI: one tiny round
"""

from __future__ import annotations

import argparse
import csv
import logging
import random
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
APP_DIR = ROOT / "monai_app"
METRICS = ("dice", "slice_auroc", "volume_accuracy")

logger = logging.getLogger("bench.active_learning")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(ROOT / "sample_data" / "volumes"), help="a `volumes` data folder")
    p.add_argument("--rounds", type=int, default=6, help="labels added one at a time")
    p.add_argument("--epochs", type=int, default=2, help="fine-tuning epochs per round (the fixed budget)")
    p.add_argument("--initial", type=int, default=3, help="volumes labelled at the start")
    p.add_argument("--initial-epochs", type=int, default=8, help="epochs of the starting model")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (which volumes start labelled)")
    p.add_argument("--strategies", default="medsad_uncertain,random")
    p.add_argument("--pool", type=int, default=0, help="training volumes in the datastore (0: all)")
    p.add_argument("--test", type=int, default=0, help="held-out test volumes evaluated (0: all)")
    p.add_argument("--out", default=str(ROOT / "runs" / "bench_active_learning"))
    return p.parse_args(argv)


def _datastore(data: Path, labelled: list[str], where: Path) -> Path:
    """A MONAI Label datastore of the training volumes, ``labelled`` with their ``final`` labels."""
    studies = where / "studies"
    (studies / "labels" / "final").mkdir(parents=True)
    for image in sorted((data / "imagesTr").glob("*.nii.gz")):
        shutil.copy2(image, studies / image.name)
        if image.name[: -len(".nii.gz")] in labelled:
            shutil.copy2(data / "labelsTr" / image.name, studies / "labels" / "final" / image.name)
    return studies


class App:
    """MONAI Label's app with the MedSAD app, in-process, on one datastore and checkpoint."""

    def __init__(self, studies: Path, checkpoint: Path, sessions: Path) -> None:
        from fastapi.testclient import TestClient
        from monailabel.config import settings
        from monailabel.interfaces.utils.app import clear_cache

        settings.MONAI_LABEL_APP_DIR = str(APP_DIR)
        settings.MONAI_LABEL_STUDIES = str(studies)
        settings.MONAI_LABEL_APP_CONF = {"models": "medsad", "checkpoint": str(checkpoint)}
        settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD = False
        settings.MONAI_LABEL_AUTO_UPDATE_SCORING = False
        settings.MONAI_LABEL_SESSION_PATH = str(sessions)
        settings.MONAI_LABEL_TRACKING_ENABLED = False
        from monailabel.app import app

        clear_cache()
        self._clear = clear_cache
        self.client = TestClient(app)
        self.client.__enter__()

    def post(self, url: str, body: dict[str, Any]) -> dict[str, Any]:
        res = self.client.post(url, json=body)
        if res.status_code != 200:
            raise RuntimeError(f"{url}: {res.status_code} {res.text}")
        return res.json()

    def close(self) -> None:
        self.client.__exit__(None, None, None)
        self._clear()


def _evaluate(checkpoint: Path, data: Path, out: Path) -> dict[str, float]:
    """Held-out figures of ``checkpoint`` at its operating point (the project's evaluate function)."""
    from medsad_monai.engine.evaluate import evaluate_checkpoint

    return figures(evaluate_checkpoint(checkpoint, str(data), out, split="test", layout="volumes"))


def figures(metrics: dict[str, Any]) -> dict[str, float]:
    """The curve's figures from ``medsad evaluate``'s metrics: lesion Dice, slice AUROC and volume
    balanced accuracy (NaN where evaluate leaves a figure undefined, e.g. one class only). A
    missing key is an error, never a silent default."""

    def number(key: str) -> float:
        value = metrics[key]
        return float("nan") if value is None else float(value)

    return {
        "dice": number("dice"),
        "slice_auroc": number("image_auroc"),
        "volume_accuracy": number("volume_balanced_accuracy"),
    }


def subset(data: Path, pool: int, test: int, where: Path) -> Path:
    """``data`` itself, or a copy with its first ``pool`` training and ``test`` test volumes."""
    if not pool and not test:
        return data
    out = where / "data"
    for kind, n in (("Tr", pool), ("Ts", test)):
        images = sorted((data / f"images{kind}").glob("*.nii.gz"))
        for image in images[: n or None]:
            for folder in (f"images{kind}", f"labels{kind}"):
                (out / folder).mkdir(parents=True, exist_ok=True)
                shutil.copy2(data / folder / image.name, out / folder / image.name)
    return out


def run_seed(args: argparse.Namespace, seed: int, work: Path) -> list[dict[str, Any]]:
    """The curves of every strategy for one seed (same starting labels and model)."""
    data = subset(Path(args.data), args.pool, args.test, work / f"seed{seed}")
    cases = sorted(p.name[: -len(".nii.gz")] for p in (data / "imagesTr").glob("*.nii.gz"))
    labelled = sorted(random.Random(seed).sample(cases, args.initial))
    base = work / f"seed{seed}" / "start"
    checkpoint = base / "model" / "medsad.pt"
    app = App(_datastore(data, labelled, base), checkpoint, base / "sessions")
    try:
        start = {"max_epochs": args.initial_epochs, "seed": seed, "from_scratch": True, "force": True}
        app.post("/train/medsad?run_sync=true", start)
    finally:
        app.close()
    start_figures = _evaluate(checkpoint, data, base / "eval0")  # round 0 is the same model for every strategy
    rows = []
    for strategy in args.strategies.split(","):
        where = work / f"seed{seed}" / strategy
        served = where / "model" / "medsad.pt"
        served.parent.mkdir(parents=True)
        shutil.copy2(checkpoint, served)
        app = App(_datastore(data, labelled, where), served, where / "sessions")
        random.seed(seed)  # MONAI Label's random strategy draws from Python's generator
        try:
            for rnd in range(args.rounds + 1):
                if rnd:
                    pick = app.post(f"/activelearning/{strategy}", {})["id"]
                    label = data / "labelsTr" / f"{pick}.nii.gz"
                    with label.open("rb") as fh:
                        res = app.client.put(
                            f"/datastore/label?image={pick}&tag=final", files={"label": (label.name, fh)}
                        )
                    if res.status_code != 200:
                        raise RuntimeError(f"label upload: {res.status_code} {res.text}")
                    result = app.post("/train/medsad?run_sync=true", {"max_epochs": args.epochs, "seed": seed})
                    published = bool(result["published"])
                else:
                    pick, published = "", True
                figures = _evaluate(served, data, where / f"eval{rnd}") if rnd else start_figures
                rows.append(
                    {
                        "seed": seed,
                        "strategy": strategy,
                        "round": rnd,
                        "picked": pick,
                        "published": published,
                        **figures,
                    }
                )
                logger.info("seed %d %s round %d: %s", seed, strategy, rnd, rows[-1])
        finally:
            app.close()
    return rows


def area(values: list[float]) -> float:
    """Area under a curve over rounds 0..R, normalised by R (the mean height; one point: itself)."""
    y = np.asarray(values, float)
    return float(y[0]) if y.size == 1 else float(np.trapezoid(y) / (y.size - 1))


def summarise(rows: list[dict[str, Any]]) -> dict[str, float]:
    """``<strategy>_<metric>_auc``: the area of each seed's curve, averaged over seeds."""
    out: dict[str, float] = {}
    for strategy in sorted({r["strategy"] for r in rows}):
        for metric in METRICS:
            per_seed = [
                area(
                    [
                        r[metric]
                        for r in sorted(rows, key=lambda r: r["round"])
                        if r["strategy"] == strategy and r["seed"] == s
                    ]
                )
                for s in sorted({r["seed"] for r in rows})
            ]
            out[f"{strategy}_{metric}_auc"] = round(float(np.mean(per_seed)), 4)
    return out


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(METRICS), figsize=(4 * len(METRICS), 3.2))
    for ax, metric in zip(axes, METRICS):
        for strategy in sorted({r["strategy"] for r in rows}):
            rounds = sorted({r["round"] for r in rows})
            mean = [np.mean([r[metric] for r in rows if r["strategy"] == strategy and r["round"] == k]) for k in rounds]
            ax.plot(rounds, mean, marker="o", label=strategy)
        ax.set_xlabel("labels added")
        ax.set_title(metric)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="medsad_al_") as tmp:
        for seed in (int(s) for s in args.seeds.split(",")):
            rows += run_seed(args, seed, Path(tmp))
    with (out / "active_learning.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, out / "active_learning.png")
    for key, value in summarise(rows).items():
        sys.stdout.write(f"{key}={value}\n")
    sys.stdout.write(f"csv={out / 'active_learning.csv'}\npng={out / 'active_learning.png'}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
