"""Specifications of the evaluation report writer (medsad_monai.engine.report)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medsad_monai.engine.metrics import MetricAccumulator
from medsad_monai.engine.report import CaseKeeper, CaseRecord, write_report


def _case(name: str, overlap: int, label: int = 1, size: int = 16) -> CaseRecord:
    """A case whose lesion is an 8-pixel-wide band; ``overlap`` columns of it are predicted."""
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[4:12, 4:12] = label
    prob = np.zeros((size, size), dtype=np.float32)
    prob[4:12, 4 : 4 + overlap] = 0.9
    image = np.linspace(0, 1, size * size, dtype=np.float32).reshape(size, size)
    return CaseRecord(name=name, image=image, prob=prob, mask=mask, score=0.1 * overlap, label=label)


def _metrics(one_class: bool = False) -> dict:
    acc = MetricAccumulator()
    cases = [_case(f"c{i}", i) for i in range(1, 5)]
    if one_class:
        cases = [_case("n", 0, label=0)]
    for c in cases:
        acc.update(c.prob, c.mask, min(c.score, 1.0), c.label)
    return acc.compute()


def test_report_writes_json_markdown_and_best_and_worst_overlays(tmp_path):
    out = tmp_path / "new" / "report"
    cases = [_case(f"case{i}", i) for i in range(1, 7)]
    paths = write_report(out, _metrics(), meta={"checkpoint": "ckpt.pt", "seeds": [0]}, cases=cases, overlays=2)
    assert paths["json"] == out / "report.json" and paths["markdown"] == out / "report.md"
    assert sorted(p.name for p in out.glob("best_*.png")) == ["best_01_case6.png", "best_02_case5.png"]
    assert sorted(p.name for p in out.glob("worst_*.png")) == ["worst_01_case1.png", "worst_02_case2.png"]
    for p in paths.values():
        assert p.is_file() and p.stat().st_size > 0 and p.parent == out
    assert (out / "best_01_case6.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads(paths["json"].read_text())
    assert report["metrics"]["n_images"] == 4
    assert report["meta"]["checkpoint"] == "ckpt.pt"
    assert {"date", "package_version", "counts"} <= report["meta"].keys()
    assert not list(out.glob("*.tmp"))  # atomic write left no temp file


def test_report_markdown_shows_accuracy_beside_baseline_and_the_sweep(tmp_path):
    paths = write_report(tmp_path, _metrics(), meta={})
    md = paths["markdown"].read_text()
    acc_line = next(line for line in md.splitlines() if line.startswith("| Slice / image accuracy"))
    assert "baseline (always abnormal)" in acc_line
    assert "## Threshold sweep" in md and "| 0.3 |" in md and "| 0.7 |" in md


def test_report_markdown_shows_undefined_metrics_as_na_with_the_reason(tmp_path):
    paths = write_report(tmp_path, _metrics(one_class=True), meta={})
    md = paths["markdown"].read_text()
    assert "n/a (only one class (all normal) among 1 images)" in md
    assert json.loads(paths["json"].read_text())["metrics"]["image_auroc"] is None


def test_report_json_accepts_numpy_and_nan_in_meta(tmp_path):
    meta = {"seed": np.int64(3), "lr": np.float32(0.5), "odd": float("nan"), "data": tmp_path}
    report = json.loads(write_report(tmp_path, _metrics(), meta=meta)["json"].read_text())
    assert report["meta"]["seed"] == 3 and report["meta"]["odd"] is None and report["meta"]["data"] == str(tmp_path)


def test_overlay_file_names_cannot_escape_the_report_folder(tmp_path):
    out = tmp_path / "r"
    write_report(out, _metrics(), meta={}, cases=[_case("../../evil", 3), _case("ok", 5)], overlays=1)
    assert {p.parent for p in tmp_path.rglob("*.png")} == {out}


def test_case_keeper_keeps_exactly_the_k_best_and_k_worst_abnormal_cases():
    keeper = CaseKeeper(2)
    rng = np.random.default_rng(0)
    dices = rng.permutation(np.linspace(0, 1, 11)).tolist()
    for i, d in enumerate(dices):
        keeper.offer(_case(f"a{i}", 1), d)
        keeper.offer(_case(f"n{i}", 0, label=0), 1.0 - d)  # normal cases are refused
    assert [r.dice for r in keeper.best()] == pytest.approx([1.0, 0.9])
    assert [r.dice for r in keeper.worst()] == pytest.approx([0.0, 0.1])
    assert all(r.label == 1 for r in keeper.cases()) and len(keeper.cases()) == 4
    assert not keeper.offer(_case("none", 1), None)


def test_case_keeper_keeps_the_earlier_case_on_equal_dice():
    keeper = CaseKeeper(1)
    first, second = _case("first", 2), _case("second", 2)
    assert keeper.offer(first, 0.5) and not keeper.offer(second, 0.5)
    assert [r.name for r in keeper.best()] == ["first"] and [r.name for r in keeper.worst()] == ["first"]


def test_case_record_copies_its_arrays_and_checks_shapes():
    batch = np.zeros((4, 8, 8), dtype=np.float32)
    rec = CaseRecord("x", batch[0], batch[0], batch[0], 0.1, 1)
    assert not np.shares_memory(rec.image, batch)
    with pytest.raises(ValueError, match="2D of one shape"):
        CaseRecord("bad", np.zeros((8, 8)), np.zeros((8, 9)), np.zeros((8, 8)), 0.1, 1)
