"""`medsad train` / `evaluate`: run folder contents, honest splits, resume, interrupts, baseline."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import nibabel as nib
import pytest
import torch

from medsad_monai.checkpoint import load_checkpoint, read_checkpoint
from medsad_monai.engine import train as train_mod
from medsad_monai.engine.evaluate import evaluate_checkpoint
from medsad_monai.engine.train import TrainOptions, train


def _opts(data, out, **kw):
    base = dict(data=str(data), out=str(out), preset="tiny", image_size=64, epochs=2, batch_size=8, seed=0)
    base.update(kw)
    return TrainOptions(**base)


def _rows(run):
    with (run / "metrics.csv").open() as fh:
        return list(csv.DictReader(fh))


def test_training_writes_a_complete_run_folder(tiny_volumes, tmp_path):
    run = tmp_path / "run"
    summary = train(_opts(tiny_volumes, run))
    for name in ("best.pt", "last.pt", "split.json", "config.json", "metrics.csv", "curves.png"):
        assert (run / name).is_file(), name
    split = json.loads((run / "split.json").read_text())
    assert set(split["train_groups"]).isdisjoint(split["val_groups"])
    assert set(split["train_groups"]) | set(split["val_groups"]) == {f"case_{i:03d}" for i in range(6)}
    assert not any(g.startswith("case_1") for g in split["train_groups"] + split["val_groups"])  # test never used
    rows = _rows(run)
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert read_checkpoint(run / "last.pt")["extra"]["epoch"] == 2
    best = read_checkpoint(run / "best.pt")["extra"]
    assert best["epoch"] == summary["best_epoch"]
    selections = [float(r["selection"]) for r in rows]
    assert float(rows[best["epoch"] - 1]["selection"]) == max(selections)  # chosen on validation
    assert "optimizer" not in best
    # what trained it, for a later calibration to leave out (medsad calibrate, the app's medsad_calibrate)
    assert best["train_cases"] == sorted(split["train_groups"])
    assert best["train_data"] == str(Path(split["data"]).resolve())
    assert read_checkpoint(run / "best.pt")["calibration"]["validation"]["map_objective"] == "dice"
    # the familiarity reference: the training volumes' histograms, never a validation or test case
    familiarity = read_checkpoint(run / "best.pt")["familiarity"]
    assert familiarity["cases"] == sorted(split["train_groups"]) and len(familiarity["histograms"]) == len(
        split["train_groups"]
    )
    # TensorBoard events beside metrics.csv, with the same values
    assert _board(run, "val/dice") == [(1, float(rows[0]["val_dice"])), (2, float(rows[1]["val_dice"]))]
    assert [step for step, _ in _board(run, "lr")] == [1, 2] and _board(run, "train/loss")


def _board(run, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run))
    acc.Reload()
    return [(e.step, round(e.value, 5)) for e in acc.Scalars(tag)]


def test_existing_run_is_never_overwritten_and_resume_continues(tiny_volumes, tmp_path):
    run = tmp_path / "run"
    train(_opts(tiny_volumes, run, epochs=1))
    with pytest.raises(FileExistsError, match="--resume"):
        train(_opts(tiny_volumes, run, epochs=1))
    first = read_checkpoint(run / "last.pt")
    train(_opts(tiny_volumes, run, epochs=2, resume=True))
    rows = _rows(run)
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert [step for step, _ in _board(run, "val/dice")] == [1, 2]  # one event per epoch across the resume
    second = read_checkpoint(run / "last.pt")
    assert second["extra"]["epoch"] == 2
    changed = [k for k in first["state_dict"] if not torch.equal(first["state_dict"][k], second["state_dict"][k])]
    assert changed  # it kept training from the saved weights


def test_interrupt_keeps_the_last_completed_epoch(tiny_volumes, tmp_path, monkeypatch):
    run = tmp_path / "run"
    train(_opts(tiny_volumes, run, epochs=1))
    saved = read_checkpoint(run / "last.pt")["state_dict"]
    real_step = torch.optim.Adam.step
    calls = {"n": 0}

    def step_then_interrupt(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.Adam, "step", step_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        train(_opts(tiny_volumes, run, epochs=3, resume=True))
    monkeypatch.undo()
    after = read_checkpoint(run / "last.pt")
    assert after["extra"]["epoch"] == 1
    assert all(torch.equal(saved[k], after["state_dict"][k]) for k in saved)
    assert not list(run.glob("*.tmp"))
    train(_opts(tiny_volumes, run, epochs=2, resume=True))
    assert [int(r["epoch"]) for r in _rows(run)] == [1, 2]


def test_time_budget_stops_after_validating_and_saving(tiny_volumes, tmp_path, monkeypatch):
    run = tmp_path / "run"
    clock = iter(range(0, 10_000, 100))  # every monotonic() call advances 100 s
    monkeypatch.setattr(train_mod.time, "monotonic", lambda: float(next(clock)))
    summary = train(_opts(tiny_volumes, run, epochs=5, max_minutes=1))
    assert summary["stop_reason"] == "time budget"
    assert summary["last_epoch"] == 1
    assert (run / "last.pt").is_file() and (run / "best.pt").is_file()


def test_unet_baseline_trains_on_the_same_pipeline_and_loads(tiny_volumes, tmp_path):
    run = tmp_path / "unet"
    train(_opts(tiny_volumes, run, model="unet", epochs=1))
    model, payload = load_checkpoint(run / "best.pt")
    assert payload["model"] == "unet"
    out = model(torch.zeros(2, 3, 64, 64))
    assert out["mask"].shape == (2, 2, 64, 64)


def test_a_loss_that_blows_up_stops_training_with_a_clear_error(tiny_volumes, tmp_path):
    """An absurd learning rate sends the weights to infinity within a few steps: training stops at
    the first non-finite loss, before the optimizer writes it into the weights, and says what to do."""
    with pytest.raises(train_mod.NonFiniteLossError, match=r"not finite at epoch 1, step \d+ .*lower --lr"):
        train(_opts(tiny_volumes, tmp_path / "run", epochs=1, lr=1e30, precision="fp32"))


def test_evaluate_writes_report_on_the_test_split(tiny_volumes, tmp_path):
    run = tmp_path / "run"
    train(_opts(tiny_volumes, run, epochs=1))
    metrics = evaluate_checkpoint(run / "best.pt", str(tiny_volumes), tmp_path / "report", split="test")
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["meta"]["split"] == "test"
    assert report["metrics"]["n_images"] == metrics["n_images"] > 0
    for key in ("dice", "dice_global", "accuracy", "image_auroc", "pixel_auroc", "threshold_sweep"):
        assert key in report["metrics"]
    assert (tmp_path / "report" / "report.md").is_file()
    per_case = report["meta"]["per_case"]
    assert set(per_case) == {"case_100", "case_101"}  # the held-out volumes, each evaluated whole
    for name, case in per_case.items():
        truth = int((nib.load(tiny_volumes / "labelsTs" / f"{name}.nii.gz").get_fdata() > 0).sum())
        assert case["abnormal"] and case["true_voxels"] == truth and 0.0 <= case["dice"] <= 1.0
    assert report["meta"]["operating_point"]["source"] == "validation"  # calibrated at the end of training
    val = evaluate_checkpoint(run / "best.pt", str(tiny_volumes), tmp_path / "val", split="val")
    assert 0 < val["n_images"] < metrics["n_images"] * 10


def test_output_inside_the_data_folder_is_refused(tiny_volumes):
    with pytest.raises(ValueError, match="never written"):
        train(_opts(tiny_volumes, tiny_volumes / "run"))
    assert not (tiny_volumes / "run").exists()


@pytest.mark.parametrize("augment", ["strong", "intensity", "elastic"])
def test_augmentation_keeps_shapes_range_and_binary_masks_as_plain_tensors(tiny_volumes, augment):
    from medsad_monai.data.layouts import read_layout
    from medsad_monai.engine.datasets import slice_dataset

    samples = [s for s in read_layout(tiny_volumes).samples if s.label == 1][:6]
    plain = slice_dataset(samples, 64, train=True, augment="paper", seed=1)
    augmented = slice_dataset(samples, 64, train=True, augment=augment, seed=1)
    changed = 0
    for i in range(len(samples)):
        a, b = plain[i], augmented[i]
        assert b["image"].shape == (3, 64, 64) and b["mask"].shape == (1, 64, 64)
        # plain tensors reach the model: a MetaTensor batch sends every op of the training
        # forward through MONAI's __torch_function__ bookkeeping
        assert type(a["image"]) is torch.Tensor and type(b["image"]) is torch.Tensor and type(b["mask"]) is torch.Tensor
        assert float(b["image"].min()) >= 0.0 and float(b["image"].max()) <= 1.0
        assert set(torch.unique(torch.as_tensor(b["mask"])).tolist()) <= {0.0, 1.0}
        if augment == "intensity":  # intensity only: the geometry (the flip draw included) is the paper's
            assert torch.equal(torch.as_tensor(a["mask"]), torch.as_tensor(b["mask"]))
        changed += int(not torch.allclose(torch.as_tensor(a["image"]), torch.as_tensor(b["image"])))
    assert changed >= 3  # the pipeline really transforms
    with pytest.raises(ValueError, match="augment"):
        slice_dataset(samples, 64, train=True, augment="heavy")


def test_slab_lesions_are_painted_on_the_middle_slice_and_carried_into_the_neighbours():
    """With context slices, a painted lesion is labelled on the middle slice and shows in each
    neighbour with a strength of 0 (ends here) or 0.5-1 (tapers), never elsewhere."""
    import numpy as np

    from medsad_monai.engine.datasets import PaintLesionsd

    yy, xx = np.mgrid[:64, :64]
    head = ((yy - 32) ** 2 + (xx - 32) ** 2 < 26**2).astype(np.float32)
    rng = np.random.default_rng(0)
    slab = np.stack([head * (0.4 + 0.02 * rng.standard_normal(head.shape)) for _ in range(3)], axis=-1)
    slab = np.clip(slab, 0, 1).astype(np.float32)
    paint = PaintLesionsd(1.0, ["A", "C"], context=1)
    paint.set_random_state(seed=3)
    strengths = []
    for _ in range(12):
        out = paint({"image": slab, "mask": np.zeros((64, 64), np.uint8), "label": 0.0})
        assert out["label"] == 1.0 and out["image"].shape == (64, 64, 3) and out["mask"].sum() > 0
        delta = out["image"][..., 1] - slab[..., 1]
        assert np.abs(delta[out["mask"] > 0]).max() > 0.05  # the lesion is on the labelled middle slice
        where = np.abs(delta) > 0.02
        for side in (0, 2):
            moved = out["image"][..., side] - slab[..., side]
            assert np.abs(moved[~where]).max() < 0.02  # nothing painted where the middle slice has no lesion
            ratio = float(np.median(moved[where] / delta[where]))
            assert ratio == pytest.approx(0.0, abs=0.02) or 0.48 <= ratio <= 1.02
            strengths.append(ratio)
    assert min(strengths) < 0.02 and max(strengths) > 0.5  # both kinds occur


def test_no_lesion_is_painted_on_the_neck_and_face_slices_of_a_head():
    """``synthetic_region="brain"``: the sample data's S1 heads keep skull, face and neck; their
    lowest slices get no painted lesion even when every normal slice is painted (the default
    paints most of them), their mid-brain slices do, and the ``skull`` flag that tells the
    painter so never reaches the batch."""
    from pathlib import Path

    from medsad_monai.data.layouts import read_layout
    from medsad_monai.engine.datasets import slice_dataset

    data = Path(__file__).resolve().parents[1] / "sample_data" / "volumes"
    normal = {s.slice_index: s for s in read_layout(data).samples if s.group == "case_021" and s.label == 0}
    low, mid = [normal[i] for i in range(2, 20, 3)], [normal[i] for i in (56, 58, 60, 62)]
    kw = dict(train=True, synthetic_lesions=1.0, synthetic_styles=["A", "C"], seed=0)
    ds = slice_dataset(low + mid, 64, synthetic_region="brain", **kw)
    items = [ds[i] for i in range(len(ds))]
    assert all("skull" not in item for item in items)
    assert all(float(item["mask"].sum()) == 0 and float(item["label"]) == 0 for item in items[: len(low)])
    assert all(float(item["mask"].sum()) > 0 for item in items[len(low) :])
    plain = slice_dataset(low, 64, synthetic_region="slice", **kw)  # the default: the slice's estimate as it is
    assert sum(float(plain[i]["mask"].sum()) > 0 for i in range(len(low))) >= len(low) // 2
    with pytest.raises(ValueError, match="synthetic_region"):
        slice_dataset(low, 64, synthetic_region="skull", **kw)


def test_context_slices_train_into_the_checkpoint_and_a_fine_tune_must_keep_them(tiny_volumes, tmp_path):
    from medsad_monai.engine.inference import Predictor

    run = tmp_path / "slabs"
    train(_opts(tiny_volumes, run, epochs=1, context_slices=1, synthetic_lesions=0.5))
    assert read_checkpoint(run / "best.pt")["context_slices"] == 1
    assert read_checkpoint(run / "last.pt")["context_slices"] == 1
    assert Predictor.from_checkpoint(run / "best.pt").context_slices == 1
    with pytest.raises(ValueError, match="pass --context-slices 1"):
        train(_opts(tiny_volumes, tmp_path / "tune", epochs=1, init_from=str(run / "best.pt")))
    bmad = Path(__file__).resolve().parents[1] / "sample_data" / "bmad"  # 2-D images: no neighbours
    with pytest.raises(ValueError, match="needs volumes"):
        train(_opts(bmad, tmp_path / "images", epochs=1, context_slices=1))
    assert not (tmp_path / "images" / "last.pt").exists()


def test_the_mirror_channel_trains_into_the_checkpoint_and_a_fine_tune_must_keep_it(tiny_volumes, tmp_path):
    from medsad_monai.cli import build_parser
    from medsad_monai.engine.inference import Predictor

    run = tmp_path / "mirror"
    train(_opts(tiny_volumes, run, epochs=1, mirror_channel=True, synthetic_lesions=0.5))
    assert read_checkpoint(run / "best.pt")["mirror_channel"] is True
    assert read_checkpoint(run / "last.pt")["mirror_channel"] is True
    assert Predictor.from_checkpoint(run / "best.pt").mirror_channel is True
    with pytest.raises(ValueError, match="pass --mirror-channel"):
        train(_opts(tiny_volumes, tmp_path / "tune", epochs=1, init_from=str(run / "best.pt")))
    with pytest.raises(ValueError, match="pick one"):
        train(_opts(tiny_volumes, tmp_path / "both", epochs=1, mirror_channel=True, context_slices=1))
    bmad = Path(__file__).resolve().parents[1] / "sample_data" / "bmad"  # 2-D images: no known midline
    with pytest.raises(ValueError, match="needs volumes"):
        train(_opts(bmad, tmp_path / "images", epochs=1, mirror_channel=True))
    assert not (tmp_path / "images" / "last.pt").exists()
    args = build_parser().parse_args(["train", "--data", "d", "--out", "o", "--mirror-channel"])
    assert args.mirror_channel is True
    assert build_parser().parse_args(["train", "--data", "d", "--out", "o"]).mirror_channel is False


def test_cosine_schedule_decays_the_learning_rate_over_the_run(tiny_volumes, tmp_path):
    from medsad_monai.engine.train import _cosine, _progress

    assert _cosine(0.0) == 1.0 and abs(_cosine(1.0)) < 1e-12 and abs(_cosine(0.5) - 0.5) < 1e-12
    assert _progress(1.0, 4, 0.0, None, False) == 0.25
    assert _progress(1.0, 4, -1e9, 10.0, False) == 1.0  # time budget used up: progress is 1
    assert _progress(1.0, 4, -1e9, 10.0, True) == 0.25  # DDP: epochs only
    run = tmp_path / "cos"
    train(_opts(tiny_volumes, run, epochs=2, lr=1e-3, lr_schedule="cosine"))
    last_lr = read_checkpoint(run / "last.pt")["extra"]["optimizer"]["param_groups"][0]["lr"]
    assert 0.0 < last_lr < 0.5e-3  # the last step of epoch 2 is past the half-way point
    assert json.loads((run / "config.json").read_text())["config"]["lr_schedule"] == "cosine"
    with pytest.raises(ValueError, match="lr_schedule"):
        train(_opts(tiny_volumes, tmp_path / "bad", lr_schedule="step"))


def test_epoch_validation_ranks_with_the_plain_forward(tiny_config):
    """The per-epoch validation runs one view per slice (the flip average only at calibration
    and serving): its metrics equal those of the same weights without ``tta_flip``."""
    from medsad_monai.networks import MedSADCLIP

    torch.manual_seed(0)
    flipped = MedSADCLIP(tiny_config.replace(tta_flip=True))
    plain = MedSADCLIP(tiny_config.replace(tta_flip=False))
    plain.load_state_dict(flipped.state_dict())
    g = torch.Generator().manual_seed(1)
    masks = (torch.rand(4, 1, 64, 64, generator=g) > 0.7).float()
    masks[2] = 0  # the normal slice
    batches = [{"image": torch.rand(4, 3, 64, 64, generator=g), "mask": masks, "label": torch.tensor([1.0, 1, 0, 1])}]
    cpu = torch.device("cpu")
    ranked = train_mod.evaluate_model(flipped, batches, cpu)
    assert ranked == train_mod.evaluate_model(plain, batches, cpu)
    assert ranked != train_mod.evaluate_model(flipped, batches, cpu, flip_tta=True)


def test_epoch_selection_counts_false_positives_on_lesion_free_slices():
    """Two epochs with the same lesion Dice: the one that also paints lesion on a normal slice
    ranks lower (the lesion Dice alone cannot tell them apart)."""
    from medsad_monai.engine.metrics import MetricAccumulator

    truth = torch.zeros(2, 32, 32)
    truth[0, 8:16, 8:16] = 1  # slice 0: a lesion; slice 1: lesion-free
    clean, noisy = truth.clone(), truth.clone()
    noisy[1, 20:28, 20:28] = 1  # a false lesion on the lesion-free slice
    figures = []
    for prob in (clean, noisy):
        acc = MetricAccumulator(threshold=0.5)
        acc.update(prob, truth, torch.tensor([0.9, 0.1]), torch.tensor([1, 0]))
        figures.append(acc.compute())
    assert figures[0]["dice"] == figures[1]["dice"] == 1.0
    assert train_mod._selection(figures[0]) > train_mod._selection(figures[1])
    assert train_mod._selection({"dice": None, "dice_global": None, "image_auroc": 0.7}) == 0.7


def test_weight_averaging_validates_and_saves_the_average_and_resumes(tiny_volumes, tmp_path):
    run = tmp_path / "run"
    train(_opts(tiny_volumes, run, epochs=1, ema_decay=0.9))
    last, best = read_checkpoint(run / "last.pt"), read_checkpoint(run / "best.pt")
    averaged = last["extra"]["ema_state_dict"]
    moved = [k for k in averaged if k in best["state_dict"] and not torch.equal(last["state_dict"][k], averaged[k])]
    assert moved, "the average equals the live weights"
    assert all(torch.equal(best["state_dict"][k], averaged[k]) for k in moved)  # best.pt holds the average
    assert "ema_state_dict" not in best["extra"]
    assert json.loads((run / "config.json").read_text())["config"]["ema_decay"] == 0.9
    train(_opts(tiny_volumes, run, epochs=2, ema_decay=0.9, resume=True))
    resumed = read_checkpoint(run / "last.pt")["extra"]["ema_state_dict"]
    assert any(not torch.equal(resumed[k], averaged[k]) for k in moved)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(synthetic_lesions=0.5, synthetic_styles=["A", "Q"]), "synthetic-styles"),
        (dict(ema_decay=1.0), "ema_decay"),
        (dict(precision="fp16"), "--precision"),
        (dict(context_slices=2), "--context-slices"),
        (dict(synthetic_region="head"), "--synthetic-region"),
        (dict(calibration_objective="f1"), "--calibration-objective"),
    ],
)
def test_bad_recipe_options_are_refused_before_training(tiny_volumes, tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        train(_opts(tiny_volumes, tmp_path / "run", **kw))
    assert not (tmp_path / "run" / "last.pt").exists()


def test_the_end_of_training_calibration_can_count_lesions(tiny_volumes, tmp_path):
    summary = train(_opts(tiny_volumes, tmp_path / "run", epochs=1, calibration_objective="dice+lesion_f1"))
    block = read_checkpoint(tmp_path / "run" / "best.pt")["calibration"]
    assert block["validation"]["map_objective"] == "dice+lesion_f1" and "lesion-wise F1" in block["objective"]["map"]
    assert summary["calibration"]["map_threshold"] == block["map_threshold"]


def test_validation_draws_from_every_anatomy_source():
    """Stratified by lesion status, then round-robin over the ``anatomy`` of each case: with two
    sources the two lesion volumes of validation come from both, for every seed; without
    sources the split is the plain lesion-stratified one."""
    from pathlib import Path

    from medsad_monai.data.layouts import Sample
    from medsad_monai.engine.datasets import make_split

    def sample(case: str, label: int) -> Sample:
        return Sample(Path(f"{case}.nii.gz"), (), label, case, None, 0)

    lesion = [f"a{i}" for i in range(8)] + ["b0", "b1", "b2"]
    normal = ["a8", "a9", "b3"]
    samples = [sample(c, 1) for c in lesion] + [sample(c, 0) for c in normal]
    sources = {c: c[0] for c in lesion + normal}
    for seed in range(6):
        split = make_split(samples, 0.2, seed, sources=sources)
        val_lesion = [g for g in split.val_groups if g in lesion]
        assert len(val_lesion) == 2 and {g[0] for g in val_lesion} == {"a", "b"}, (seed, split.val_groups)
        assert len([g for g in split.val_groups if g in normal]) == 1
        assert not set(split.train_groups) & set(split.val_groups)
        assert set(split.train_groups) | set(split.val_groups) == set(lesion + normal)
    plain = [make_split(samples, 0.2, seed).val_groups for seed in range(6)]
    assert any({g[0] for g in v if g in lesion} == {"a"} for v in plain)  # what stratifying prevents


def test_source_balanced_sampler_draws_every_source_equally_often():
    from pathlib import Path

    from medsad_monai.data.layouts import Sample
    from medsad_monai.engine.datasets import source_balanced_sampler

    samples = [Sample(Path(f"{c}.nii.gz"), (), 0, c, i, 0) for c in ("a0", "a1", "a2") for i in range(30)]
    samples += [Sample(Path("b0.nii.gz"), (), 0, "b0", i, 0) for i in range(10)]  # 10 of 100 slices
    sampler = source_balanced_sampler(samples, {"a0": "a", "a1": "a", "a2": "a", "b0": "b"}, seed=3)
    drawn = [samples[i].group for _ in range(20) for i in sampler]
    assert len(drawn) == 20 * len(samples)
    share_b = drawn.count("b0") / len(drawn)
    assert 0.45 < share_b < 0.55, share_b  # 0.10 without balancing
    assert [samples[i].group for i in source_balanced_sampler(samples, {}, seed=3)].count("b0") < 25
    with pytest.raises(ValueError, match="no training samples"):
        source_balanced_sampler([], {})


def test_bf16_training_step_on_cpu(tiny_volumes, tmp_path, monkeypatch):
    """``precision="bf16"`` runs the step under CPU bf16 autocast (asked for by name, whatever the
    CPU); the losses stay finite and the run is complete."""
    seen = []
    real = torch.autocast

    def spy(device_type, *args, **kwargs):
        seen.append((device_type, kwargs.get("dtype"), kwargs.get("enabled", True)))
        return real(device_type, *args, **kwargs)

    monkeypatch.setattr(torch, "autocast", spy)
    run = tmp_path / "run"
    summary = train(_opts(tiny_volumes, run, epochs=1, precision="bf16"))
    assert ("cpu", torch.bfloat16, True) in seen
    assert summary["last_epoch"] == 1 and (run / "best.pt").is_file()
    assert all(math.isfinite(float(r["train_loss"])) for r in _rows(run))


def test_source_balanced_training_runs_and_resumes(tiny_volumes, tmp_path, caplog):
    run = tmp_path / "run"
    with caplog.at_level("INFO", logger="medsad_monai.engine.datasets"):
        train(_opts(tiny_volumes, run, epochs=1, balance_sources=True))
        train(_opts(tiny_volumes, run, epochs=2, balance_sources=True, resume=True))
    assert "source-balanced sampling" in caplog.text
    assert len((run / "metrics.csv").read_text().splitlines()) == 3  # header + 2 epochs


def test_train_takes_samples_instead_of_a_folder(tiny_volumes, tmp_path):
    """What the MONAI Label trainer uses: a list of samples, no folder of links; the test split is refused."""
    from medsad_monai.data.layouts import read_layout

    index = read_layout(str(tiny_volumes))
    chosen = [
        s for s in index.samples if s.split != "test" and s.group in {"case_000", "case_001", "case_002", "case_003"}
    ]
    run = tmp_path / "run"
    summary = train(_opts("datastore:final labels", run, epochs=1), samples=chosen)
    split = json.loads((run / "split.json").read_text())
    assert set(split["train_groups"]) | set(split["val_groups"]) == {"case_000", "case_001", "case_002", "case_003"}
    assert split["data"].endswith("datastore:final labels") and summary["last_epoch"] == 1
    with pytest.raises(ValueError, match="test-split"):
        train(
            _opts("x", tmp_path / "run2", epochs=1),
            samples=chosen + read_layout(str(tiny_volumes), split="test").samples,
        )


def _validation_folder(root: Path) -> Path:
    """A separate validation folder of 3 new cases (val_000 and val_002 with a lesion, val_001 without)."""
    import numpy as np
    from conftest import _write_case

    rng = np.random.default_rng(7)
    for i in range(3):
        _write_case(root / "tmp", f"val_{i:03d}", (40, 48, 10), np.diag([0.9, 0.8, 3.0, 1.0]), rng, i != 1)
    (root / "tmp" / "images").rename(root / "imagesTr")
    (root / "tmp" / "labels").rename(root / "labelsTr")
    return root


def test_a_separate_validation_folder_selects_and_calibrates_while_every_case_trains(tiny_volumes, tmp_path):
    from medsad_monai.engine.calibration import calibrate_checkpoint

    val = _validation_folder(tmp_path / "val")
    run = tmp_path / "run"
    train(_opts(tiny_volumes, run, epochs=1, val_data=str(val)))
    split = json.loads((run / "split.json").read_text())
    assert split["val_data"] == str(val.resolve())
    assert split["train_groups"] == [f"case_{i:03d}" for i in range(6)]  # no case of --data is held out
    assert split["val_groups"] == ["val_000", "val_001", "val_002"]
    block = read_checkpoint(run / "best.pt")["calibration"]["validation"]
    assert block["cases"] == ["val_000", "val_001", "val_002"] and block["n_lesion_volumes"] == 2
    # --split val of calibrate (and evaluate) reads the run's validation folder, not the --data given
    op = calibrate_checkpoint(run / "best.pt", str(tiny_volumes), split="val", out=tmp_path / "again.pt")
    assert op.validation["cases"] == ["val_000", "val_001", "val_002"]


def test_a_calibration_folder_joins_the_end_of_training_fit_only(tiny_volumes, tmp_path):
    val = _validation_folder(tmp_path / "extra")
    run = tmp_path / "run"
    train(_opts(tiny_volumes, run, epochs=1, calibration_data=str(val)))
    split = json.loads((run / "split.json").read_text())
    own = split["val_groups"]
    assert own and not set(own) & {"val_000", "val_001", "val_002"}  # epochs are selected on the run's own split
    block = read_checkpoint(run / "best.pt")["calibration"]["validation"]
    assert block["cases"] == own + ["extra/val_000", "extra/val_001", "extra/val_002"]
    assert block["n_volumes"] == len(own) + 3
    for folder, needle in (
        (tiny_volumes, "is the training folder"),
        (tmp_path / "missing", "no such folder"),
    ):
        with pytest.raises((ValueError, FileNotFoundError), match=f"--calibration-data .*{needle}"):
            train(_opts(tiny_volumes, tmp_path / "bad", calibration_data=str(folder)))
    assert not (tmp_path / "bad" / "last.pt").exists()  # refused before any training


def test_a_validation_folder_that_overlaps_the_training_data_is_refused(tiny_volumes, tmp_path):
    with pytest.raises(ValueError, match="is the training folder"):
        train(_opts(tiny_volumes, tmp_path / "a", val_data=str(tiny_volumes)))
    linked = tmp_path / "linked"
    for sub in ("imagesTr", "labelsTr"):
        (linked / sub).mkdir(parents=True)
        (linked / sub / "case_000.nii.gz").symlink_to(tiny_volumes / sub / "case_000.nii.gz")
    with pytest.raises(ValueError, match="shares 1 image file"):
        train(_opts(tiny_volumes, tmp_path / "b", val_data=str(linked)))
    with pytest.raises(FileNotFoundError, match="no such folder"):
        train(_opts(tiny_volumes, tmp_path / "c", val_data=str(tmp_path / "missing")))
    with pytest.raises(ValueError, match="--val-data needs"):
        train(_opts("x", tmp_path / "d", val_data=str(linked)), samples=read_layout_samples(tiny_volumes))
    for name in "abcd":
        assert not (tmp_path / name / "last.pt").exists()


def read_layout_samples(root: Path) -> list:
    from medsad_monai.data.layouts import read_layout

    return [s for s in read_layout(str(root)).samples if s.split != "test"]


@pytest.mark.parametrize("after_commit", [False, True])
def test_a_kill_around_the_commit_loses_no_metrics_row_and_best_matches_last(
    tiny_volumes, tmp_path, monkeypatch, after_commit
):
    """Killed just before or just after epoch 2's last.pt (the commit): the resumed run holds
    every epoch's metrics row once, and best.pt is the best epoch last.pt records."""
    run = tmp_path / "run"
    real_save = train_mod.save_checkpoint
    saves = {"last": 0}

    def save_then_die(model, path, *a, **k):
        if path.name == "last.pt":
            saves["last"] += 1
            if saves["last"] == 2:  # epoch 2's commit
                if after_commit:
                    real_save(model, path, *a, **k)
                raise KeyboardInterrupt
        return real_save(model, path, *a, **k)

    monkeypatch.setattr(train_mod, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(_opts(tiny_volumes, run, epochs=3))
    monkeypatch.undo()
    committed = read_checkpoint(run / "last.pt")["extra"]
    assert committed["epoch"] == (2 if after_commit else 1)
    assert [int(r["epoch"]) for r in committed["rows"]] == list(range(1, committed["epoch"] + 1))
    assert [int(r["epoch"]) for r in _rows(run)] == [1]  # metrics.csv follows the commit
    train(_opts(tiny_volumes, run, epochs=3, resume=True))
    assert [int(r["epoch"]) for r in _rows(run)] == [1, 2, 3]
    last, best = read_checkpoint(run / "last.pt")["extra"], read_checkpoint(run / "best.pt")["extra"]
    assert last["epoch"] == 3 and best["epoch"] == last["best_epoch"]
    assert not (run / train_mod.PENDING_BEST).exists() and not list(run.glob(".*.tmp"))


def test_resume_finishes_a_committed_best_and_drops_an_uncommitted_one(tiny_volumes, tmp_path):
    run = tmp_path / "run"
    train(_opts(tiny_volumes, run, epochs=2))
    committed = read_checkpoint(run / "last.pt")["extra"]
    best_epoch = read_checkpoint(run / "best.pt")["extra"]["epoch"]
    (run / "metrics.csv").unlink()
    shutil.copy2(run / "best.pt", run / train_mod.PENDING_BEST)
    (run / ".last.pt.x1y2.tmp").write_bytes(b"half a checkpoint")
    rows = train_mod._recover_run(run, {**committed, "best_epoch": best_epoch})  # committed: put in place
    assert not (run / train_mod.PENDING_BEST).exists() and (run / "best.pt").is_file()
    assert not list(run.glob(".*.tmp")) and [int(r["epoch"]) for r in rows] == [1, 2] == [
        int(r["epoch"]) for r in _rows(run)
    ]
    before = (run / "best.pt").read_bytes()
    shutil.copy2(run / "best.pt", run / train_mod.PENDING_BEST)
    train_mod._recover_run(run, {**committed, "best_epoch": best_epoch + 5, "epoch": best_epoch + 5})
    assert not (run / train_mod.PENDING_BEST).exists() and (run / "best.pt").read_bytes() == before  # dropped


def test_mirror_augmentation_flips_along_both_in_plane_axes(tiny_volumes):
    """``augment="mirror"`` draws a flip along each in-plane axis independently: over repeated draws
    of one lesion slice the mask comes out as itself, mirrored left-right (rows), front-back
    (columns) and both; the paper's flip gives only the column mirror."""
    from medsad_monai.data.layouts import read_layout
    from medsad_monai.engine.datasets import slice_dataset

    sample = next(s for s in read_layout(tiny_volumes).samples if s.label == 1)
    seen: dict[str, set[str]] = {}
    for augment in ("paper", "mirror"):
        ds = slice_dataset([sample] * 40, 64, train=True, augment=augment, seed=3)
        base = torch.as_tensor(slice_dataset([sample], 64, train=False)[0]["mask"])
        variants = {"none": base, "rows": base.flip(-2), "cols": base.flip(-1), "both": base.flip(-2, -1)}
        assert len({tuple(v.flatten().tolist()) for v in variants.values()}) == 4  # an asymmetric lesion
        seen[augment] = {
            name for item in ds for name, v in variants.items() if torch.equal(torch.as_tensor(item["mask"]), v)
        }
    assert seen["paper"] == {"none", "cols"}
    assert seen["mirror"] == {"none", "rows", "cols", "both"}


def test_elastic_augmentation_deforms_image_and_mask_together(tiny_volumes):
    """``augment="elastic"`` deforms about half the draws of a slice, and the label moves with the
    image: the bright lesion of the deformed image is where the deformed mask is."""
    from medsad_monai.data.layouts import read_layout
    from medsad_monai.engine.datasets import slice_dataset

    sample = next(s for s in read_layout(tiny_volumes).samples if s.label == 1)
    base = torch.as_tensor(slice_dataset([sample], 64, train=False)[0]["mask"])
    deformed = 0
    for item in slice_dataset([sample] * 30, 64, train=True, augment="elastic", seed=5):
        mask = torch.as_tensor(item["mask"])[0] > 0
        if any(torch.equal(torch.as_tensor(item["mask"]), v) for v in (base, base.flip(-1))):
            continue  # not deformed this draw (only the paper's flip)
        deformed += 1
        grey = torch.as_tensor(item["image"]).mean(0)
        bright = grey > 0.5 * (grey[mask].median() + grey[(grey > 0.05) & ~mask].median())
        assert float((bright & mask).sum() / mask.sum()) > 0.85  # the mask lies on the lesion
        assert float((bright & mask).sum() / bright.sum()) > 0.85  # and the lesion inside the mask
    assert 6 <= deformed <= 24
