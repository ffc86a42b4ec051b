"""``medsad train`` killed with SIGKILL at several moments, then ``--resume``d: nothing partial
is ever visible, ``metrics.csv`` ends with every epoch once, and ``best.pt`` is the best epoch
that ``last.pt`` records."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medsad_monai.checkpoint import read_checkpoint
from medsad_monai.engine.train import PENDING_BEST

EPOCHS = 10


def _command(data: Path, run: Path, resume: bool) -> list[str]:
    cmd = [sys.executable, "-m", "medsad_monai.cli", "train", "--data", str(data), "--out", str(run)]
    cmd += ["--preset", "tiny", "--image-size", "64", "--epochs", str(EPOCHS), "--batch-size", "8", "--seed", "0"]
    return cmd + (["--resume"] if resume else [])


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return 0


def _wait_for_commit(proc: subprocess.Popen, last: Path, since: int) -> float:
    """Poll until last.pt changes; returns when (monotonic)."""
    while _mtime(last) == since:
        assert proc.poll() is None, "training ended before the kill"
        time.sleep(0.005)
    return time.monotonic()


def _rows(run: Path) -> list[int]:
    with (run / "metrics.csv").open() as fh:
        return [int(r["epoch"]) for r in csv.DictReader(fh)]


def _check_visible_state(run: Path) -> None:
    """What a user (or the next --resume) sees right after a kill: complete files only."""
    last = read_checkpoint(run / "last.pt")["extra"]
    if (run / "best.pt").exists():
        assert read_checkpoint(run / "best.pt")["extra"]["epoch"] <= last["epoch"]
    if (run / PENDING_BEST).exists():
        read_checkpoint(run / PENDING_BEST)  # complete, if present
    if (run / "metrics.csv").exists():
        epochs = _rows(run)
        assert epochs == list(range(1, len(epochs) + 1)) and len(epochs) <= last["epoch"] + 1


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sigkill_at_several_moments_then_resume_loses_nothing(tiny_volumes, tmp_path):
    run = tmp_path / "run"
    env = {"OMP_NUM_THREADS": "2", **os.environ, "PYTHONUNBUFFERED": "1"}  # the worker's share under xdist
    log = (tmp_path / "train.log").open("w")
    # where in the epoch cycle each kill lands: right after the commit, mid-training, late
    # (validation and the writes), measured from the last commit in units of one epoch
    moments = [0.0, 0.4, 0.85, 0.97]
    epoch_seconds = None
    for i, fraction in enumerate([None, *moments]):
        proc = subprocess.Popen(
            _command(tiny_volumes, run, resume=i > 0), stdout=log, stderr=subprocess.STDOUT, env=env
        )
        try:
            last = run / "last.pt"
            first = _wait_for_commit(proc, last, _mtime(last))
            if fraction is None:  # the first run: measure one epoch, then let it go on
                second = _wait_for_commit(proc, last, _mtime(last))
                epoch_seconds = second - first
            else:
                time.sleep(fraction * epoch_seconds)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.wait(timeout=60)
        if fraction is None:
            continue
        assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
        _check_visible_state(run)

    done = subprocess.run(_command(tiny_volumes, run, resume=True), stdout=log, stderr=subprocess.STDOUT, env=env)
    assert done.returncode == 0, (tmp_path / "train.log").read_text()[-3000:]
    last = read_checkpoint(run / "last.pt")["extra"]
    best = read_checkpoint(run / "best.pt")["extra"]
    assert _rows(run) == list(range(1, EPOCHS + 1)) and last["epoch"] == EPOCHS
    assert best["epoch"] == last["best_epoch"]
    with (run / "metrics.csv").open() as fh:
        selection = {int(r["epoch"]): float(r["selection"]) for r in csv.DictReader(fh)}
    assert selection[best["epoch"]] == max(selection.values())  # chosen on validation, across the kills
    assert not (run / PENDING_BEST).exists() and not list(run.glob(".*.tmp"))
