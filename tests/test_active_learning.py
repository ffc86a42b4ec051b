"""``bench/active_learning.py`` runs the active-learning loop end to end (one tiny round of each
strategy on a few sample volumes, the real app in-process) and prints its curve areas."""

from __future__ import annotations

import csv
import importlib.util
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_active_learning", ROOT / "bench" / "active_learning.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_area_is_the_mean_height_of_the_curve():
    bench = _bench()
    assert bench.area([0.5]) == 0.5
    assert bench.area([0.0, 1.0]) == pytest.approx(0.5)
    assert bench.area([0.2, 0.4, 0.6]) == pytest.approx(0.4)


def test_figures_come_from_evaluates_metrics():
    bench = _bench()
    metrics = {"dice": 0.6, "image_auroc": 0.9, "volume_balanced_accuracy": 0.75}
    assert bench.figures(metrics) == {"dice": 0.6, "slice_auroc": 0.9, "volume_accuracy": 0.75}
    assert math.isnan(bench.figures({**metrics, "volume_balanced_accuracy": None})["volume_accuracy"])
    with pytest.raises(KeyError):  # a renamed metric is an error, not a curve of zeros
        bench.figures({"dice": 0.6, "image_auroc": 0.9})


@pytest.mark.slow
def test_one_tiny_round_of_each_strategy(tmp_path, capsys):
    bench = _bench()
    argv = ["--rounds", "1", "--epochs", "1", "--initial-epochs", "1", "--seeds", "0"]
    # 3 test volumes: two with lesions and a lesion-free one, so every figure is defined
    argv += ["--pool", "4", "--test", "3", "--initial", "2", "--out", str(tmp_path)]
    assert bench.main(argv) == 0
    printed = dict(line.split("=", 1) for line in capsys.readouterr().out.splitlines() if "=" in line)
    for strategy in ("medsad_uncertain", "random"):
        for metric in bench.METRICS:
            assert 0.0 <= float(printed[f"{strategy}_{metric}_auc"]) <= 1.0, (strategy, metric)
    rows = list(csv.DictReader((tmp_path / "active_learning.csv").open()))
    assert {(r["strategy"], r["round"]) for r in rows} == {(s, k) for s in ("medsad_uncertain", "random") for k in "01"}
    assert all(r["picked"] for r in rows if r["round"] == "1")
    assert (tmp_path / "active_learning.png").stat().st_size > 0
