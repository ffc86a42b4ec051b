"""Learning on the committed sample data, in CI: the `tiny` recipe must keep learning.

`tiny` trained with the demo recipe (``medsad_monai.cli.DEMO_RECIPE``, 9 minutes, 2 CPU cores)
on ``sample_data/volumes`` is evaluated on the held-out test volumes (other subjects; one of the
five with lesions has style B, which training never sees). The checkpoint is chosen on
validation volumes only; the test volumes are read once, by ``evaluate_checkpoint``.

The data issue's target: held-out Dice >= 0.6 in at most 10 minutes. This test asserts exactly
that bound, ``DICE_BOUND`` = 0.6, and the time. Quiet-machine runs of the recipe scored
0.667 (seed 0, the seed used here) and 0.627 (seed 1) (README, "Learning on the sample data"); a broken loss, augmentation, split or
checkpoint selection falls far below (after one epoch the validation Dice is about 0).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from medsad_monai.cli import DEMO_MINUTES, DEMO_RECIPE
from medsad_monai.engine.evaluate import evaluate_checkpoint
from medsad_monai.engine.train import TrainOptions, train

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data" / "volumes"
DICE_BOUND = 0.6


@pytest.mark.slow
@pytest.mark.timeout(15 * 60)
def test_tiny_recipe_reaches_the_target_held_out_dice_in_ten_minutes(tmp_path):
    started = time.monotonic()
    run = tmp_path / "run"
    summary = train(TrainOptions(data=str(SAMPLE), out=str(run), max_minutes=DEMO_MINUTES, **DEMO_RECIPE))
    split = json.loads((run / "split.json").read_text())
    assert not any(g in {"case_010", "case_011", "case_012", "case_013", "case_014", "case_015"}
                   for g in split["train_groups"] + split["val_groups"])  # the test volumes stay unseen
    metrics = evaluate_checkpoint(run / "best.pt", str(SAMPLE), tmp_path / "report", split="test")
    minutes = (time.monotonic() - started) / 60
    print(f"tiny: {summary['last_epoch']} epochs (best {summary['best_epoch']}), held-out Dice "
          f"{metrics['dice']:.3f} (global {metrics['dice_global']:.3f}), {minutes:.1f} min")
    assert minutes <= 10.0
    assert metrics["n_abnormal"] > 0 and metrics["n_normal"] > 0
    per_volume = json.loads((tmp_path / "report" / "report.json").read_text())["meta"]["per_group_dice"]
    assert metrics["dice"] >= DICE_BOUND, (
        f"held-out Dice {metrics['dice']:.3f} < {DICE_BOUND} after {summary['last_epoch']} epochs; "
        f"per volume: {per_volume}")
