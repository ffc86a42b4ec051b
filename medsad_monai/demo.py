"""The demo model: its recipe (also the recipe of the learning figures and of
``tests/test_learning.py``) and :func:`ensure_demo_checkpoint`, which ``medsad demo``, the MONAI
Label demo server (``make run``) and the Slicer screenshot tool use."""

from __future__ import annotations

import logging
from pathlib import Path

__all__ = ["DEMO_RECIPE", "DEMO_MINUTES", "demo_volume", "ensure_demo_checkpoint"]

logger = logging.getLogger(__name__)


def demo_volume(data: Path) -> Path:
    """The held-out sample volume with the largest lesion (the most telling one to look at)."""
    from medsad_monai.data.volumes import load_volume

    labels = sorted((data / "labelsTs").glob("*.nii*"))
    if not labels:
        raise FileNotFoundError(f"no test labels in {data / 'labelsTs'}; run `medsad make-sample-data` first")
    best = max(labels, key=lambda p: int((load_volume(p)[0] > 0).sum()))
    return data / "imagesTs" / best.name


#: The recipe of the demo model, of the README's learning figure and of tests/test_learning.py:
#: the ``tiny`` preset on the sample volumes, synthetic lesions painted on 95 % of the normal
#: training slices (styles A and C and random looks; style B stays unseen), batch 8, weights
#: averaged (EMA 0.99), seed 0, slices loaded and painted in the training process (no loader
#: worker: on 2 cores a worker competes with the step's two threads, 56.8 s against 49.1 s per
#: epoch, AVX2 CPU, 2026-12-03), a time budget of DEMO_MINUTES on 2 CPU cores.
DEMO_RECIPE: dict = {
    "preset": "tiny",
    "epochs": 200,
    "batch_size": 8,
    "synthetic_lesions": 0.95,
    "synthetic_styles": ["A", "C", "R"],
    "ema_decay": 0.99,
    "seed": 0,
    "num_workers": 0,
    "intensity": "foreground",
}
DEMO_MINUTES = 9.0


def ensure_demo_checkpoint(data: str | Path, out: str | Path, max_minutes: float = DEMO_MINUTES) -> Path:
    """``OUT/run/best.pt``: trains the tiny preset on ``data`` (the sample volumes) if it is missing.

    Used by ``medsad demo`` and by the MONAI Label demo server (``make run``).
    """
    from medsad_monai.engine.train import TrainOptions, train

    ckpt = Path(out) / "run" / "best.pt"
    if ckpt.exists():
        logger.info("using the demo checkpoint %s", ckpt)
        from medsad_monai.checkpoint import read_checkpoint

        if not read_checkpoint(ckpt).get("calibration"):  # written before calibration existed
            from medsad_monai.engine.calibration import calibrate_checkpoint

            logger.info("calibrating it on its validation volumes (%s)", ckpt.parent / "split.json")
            calibrate_checkpoint(ckpt, str(data), split="val")
        return ckpt
    import datetime

    ready = (datetime.datetime.now() + datetime.timedelta(minutes=max_minutes + 1)).strftime("%H:%M")
    logger.info(
        "no demo checkpoint yet: training the tiny preset on %s for at most %g min, then calibrating it "
        "(done by about %s); one line per epoch follows",
        data,
        max_minutes,
        ready,
    )
    train(TrainOptions(data=str(data), out=str(ckpt.parent), max_minutes=max_minutes, **DEMO_RECIPE))
    if not ckpt.exists():
        raise RuntimeError(f"demo training ended without a validation-selected checkpoint in {ckpt.parent}")
    return ckpt
