"""The paper's setting per dataset, its data protocol and ``medsad reproduce`` (issue 12).

CPU only: the tiny random-init backbone stands in for ViT-L-14, images are 32 px, 1 epoch.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medsad_monai.checkpoint import load_checkpoint, read_checkpoint
from medsad_monai.cli import build_parser, main
from medsad_monai.configs import DATASETS, PAPER_PRESETS, load_dataset_config, load_preset
from medsad_monai.data.protocol import DataProtocol, read_split_lists
from medsad_monai.engine import reproduce as reproduce_mod
from medsad_monai.engine import train as train_mod
from medsad_monai.engine.reproduce import PAPER_TABLE, ReproduceOptions, reproduce
from medsad_monai.engine.train import TrainOptions, build_model
from medsad_monai.networks import MedSADCLIP

TINY = {"clip_model": "MedSAD-Tiny-L4", "clip_pretrained": "none"}


# ---------------------------------------------------------------- synthetic folders


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _image(rng: np.random.Generator, lesion: bool, size: int = 40) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[:size, :size]
    image = (90 + 20 * rng.standard_normal((size, size))).clip(0, 255)
    mask = np.zeros((size, size), np.uint8)
    if lesion:
        cy, cx = rng.integers(10, size - 10, 2)
        blob = (yy - cy) ** 2 + (xx - cx) ** 2 < rng.integers(16, 50)
        image[blob] = 230
        mask[blob] = 255
    return image.astype(np.uint8), mask


def _make_bmad(root: Path) -> Path:
    """BMAD layout with distinct stems per folder: train/ 3 normal; valid/ 2 + 2; test/ 4 + 4."""
    rng = np.random.default_rng(0)
    counts = {"train": (3, 0), "valid": (2, 2), "test": (4, 4)}
    for split, (n_good, n_bad) in counts.items():
        for i in range(n_good):
            _png(root / split / "good/img" / f"{split}_good_{i}.png", _image(rng, False)[0])
        for i in range(n_bad):
            image, mask = _image(rng, True)
            _png(root / split / "Ungood/img" / f"{split}_bad_{i}.png", image)
            _png(root / split / "Ungood/anomaly_mask" / f"{split}_bad_{i}.png", mask)
    return root


def _make_busi(root: Path) -> Path:
    """BUSI layout: 6 benign, 4 malignant (with masks), 3 normal."""
    rng = np.random.default_rng(1)
    for cls, n in (("benign", 6), ("malignant", 4), ("normal", 3)):
        for i in range(n):
            image, mask = _image(rng, cls != "normal")
            _png(root / cls / f"{cls} ({i + 1}).png", image)
            _png(root / cls / f"{cls} ({i + 1})_mask.png", mask)
    return root


# ---------------------------------------------------------------- dataset configs


@pytest.mark.parametrize("name", DATASETS)
def test_each_dataset_config_holds_the_paper_setting_and_builds_a_model(name: str) -> None:
    ds = load_dataset_config(name)
    cfg = ds.model_config("full")
    assert (cfg.clip_model, cfg.image_size, cfg.batch_size, cfg.epochs) == ("ViT-L-14", 224, 32, 50)
    assert (cfg.n_ctx, cfg.mc_margin, cfg.lr, list(cfg.betas)) == (10, 0.4, 1e-3, [0.5, 0.999])
    assert cfg.category == name and cfg.lr_schedule == "constant" and cfg.ema_decay == 0.0
    assert ds.train["augment"] == "paper"
    # every value says where it comes from
    assert set(ds.model) - {"category"} <= set(ds.sources) and {"category", "protocol", "optimizer"} <= set(ds.sources)
    assert "MVFA" in ds.sources["betas"] and "MVFA" in ds.sources["lr"]
    # with the tiny backbone in place of ViT-L-14 (no weights on this machine)
    torch.manual_seed(0)
    model = MedSADCLIP(ds.model_config("full", **TINY, image_size=32)).eval()
    assert model.prompt.sentences == [f"a photo of a normal {name}.", f"a photo of a damaged {name}."]
    with torch.no_grad():
        out = model(model.normalize(torch.rand(2, 3, 32, 32)))
    assert out["mask"].shape == (2, 2, 32, 32) and out["score"].shape == (2,)


def test_dataset_protocols_follow_the_papers_counts() -> None:
    assert load_dataset_config("brain").data_protocol().bmad_usage == "paper"
    assert load_dataset_config("retina").data_protocol().bmad_usage == "paper"
    assert load_dataset_config("breast").data_protocol().busi_normal is False
    assert load_dataset_config("brain").paper_counts == {"train": 3715, "test": 83}
    assert load_dataset_config("breast").paper_counts == {"train": 486, "test": 161}


def test_paper_numbers_are_left_empty_not_invented() -> None:
    for name in DATASETS:
        assert set(PAPER_TABLE[name]) == set(PAPER_PRESETS)
        assert all(v == (None, None) for v in PAPER_TABLE[name].values())  # TODO: fill from the paper


# ---------------------------------------------------------------- prompt category and switches


def test_category_changes_the_tokenised_prompt(tmp_path: Path) -> None:
    args = build_parser().parse_args(
        ["train", "--data", str(tmp_path), "--out", str(tmp_path / "r"), "--preset", "tiny", "--category", "retina"]
    )
    assert args.category == "retina"
    opts = TrainOptions(data=str(tmp_path), out=str(tmp_path / "r"), preset="tiny", image_size=32)
    torch.manual_seed(0)
    brain, _, brain_cfg = build_model(opts)
    torch.manual_seed(0)
    retina, _, retina_cfg = build_model(TrainOptions(**{**opts.__dict__, "category": args.category}))
    assert (brain_cfg["category"], retina_cfg["category"]) == ("brain", "retina")
    assert retina.prompt.sentences == ["a photo of a normal retina.", "a photo of a damaged retina."]
    assert not torch.equal(brain.prompt.token_ids, retina.prompt.token_ids)
    # --category wins over the dataset's
    _, _, cfg = build_model(TrainOptions(**{**opts.__dict__, "dataset": "lung", "category": "chest", **TINY}))
    assert cfg["category"] == "chest" and cfg["batch_size"] == 32


def test_projection_switches_off_give_the_papers_equations() -> None:
    torch.manual_seed(0)
    cfg = load_preset("full", **TINY, image_size=32)
    paper = MedSADCLIP(cfg.replace(seg_projection=False, classifier_projection=False)).eval()
    assert isinstance(paper.seg_proj, torch.nn.Identity) and isinstance(paper.classifier.proj, torch.nn.Identity)
    assert not any(k.startswith(("seg_proj.", "classifier.")) for k in paper.state_dict())
    with torch.no_grad():
        assert paper(paper.normalize(torch.rand(1, 3, 32, 32)))["mask"].shape == (1, 2, 32, 32)
    assert isinstance(MedSADCLIP(cfg).seg_proj, torch.nn.Identity)  # the paper presets' default: off
    assert isinstance(MedSADCLIP(cfg.replace(seg_projection=True)).seg_proj, torch.nn.Linear)
    assert isinstance(MedSADCLIP(load_preset("tiny")).classifier.proj, torch.nn.Linear)  # tiny keeps them
    with pytest.raises(ValueError, match="seg_projection=False needs"):
        MedSADCLIP(cfg.replace(seg_projection=False, adapter_bottleneck=64))


def test_unet_baseline_runs_at_the_input_size_of_the_preset_it_is_compared_with(tmp_path: Path) -> None:
    def size(**kw) -> int:
        opts = TrainOptions(data=str(tmp_path), out=str(tmp_path / "r"), model="unet", **kw)
        return build_model(opts)[0].image_size

    assert size(preset="full", clip_pretrained="none") == 224  # ViT-L-14's native size
    assert size(preset="full", dataset="brain", clip_pretrained="none") == 224
    assert size(preset="tiny") == 128
    assert size(preset="full", clip_pretrained="none", image_size=64) == 64


# ---------------------------------------------------------------- data protocol


def test_paper_protocol_trains_on_bmad_test_and_tests_on_valid(tmp_path: Path) -> None:
    root = _make_bmad(tmp_path / "bmad")
    paper = DataProtocol(bmad_usage="paper")
    pool, layout = paper.training_pool(root)
    test, _ = paper.test_samples(root)
    assert layout == "bmad"
    assert {s.image.parent.parent.parent.name for s in pool} == {"test"} and len(pool) == 8
    assert {s.image.parent.parent.parent.name for s in test} == {"valid"} and len(test) == 4
    assert {s.split for s in pool} == {"train"} and {s.split for s in test} == {"test"}
    bmad = DataProtocol()
    assert {s.image.parent.parent.parent.name for s in bmad.training_pool(root)[0]} == {"train", "valid"}
    assert {s.image.parent.parent.parent.name for s in bmad.test_samples(root)[0]} == {"test"}


def test_split_lists_and_busi_normal(tmp_path: Path) -> None:
    root = _make_busi(tmp_path / "busi")
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "train.txt").write_text("# a comment\nbenign (1).png\nbenign (2)\nmalignant (1)\nnormal (1)\n\n")
    (lists / "test.txt").write_text("images/benign (3).png\nnormal (2)\n")
    assert read_split_lists(lists) == (
        {"benign (1)", "benign (2)", "malignant (1)", "normal (1)"},
        {"benign (3)", "normal (2)"},
    )
    with_normal = DataProtocol(split_lists=str(lists))
    assert {s.group for s in with_normal.training_pool(root)[0]} == {
        "benign (1)",
        "benign (2)",
        "malignant (1)",
        "normal (1)",
    }
    assert {s.group for s in with_normal.test_samples(root)[0]} == {"benign (3)", "normal (2)"}
    without = DataProtocol(split_lists=str(lists), busi_normal=False)
    assert {s.group for s in without.test_samples(root)[0]} == {"benign (3)"}
    assert all(s.label == 1 for s in DataProtocol(busi_normal=False).training_pool(root)[0])
    with pytest.raises(ValueError, match="no test part"):
        DataProtocol().test_samples(root)
    (lists / "test.txt").write_text("benign (1)\n")
    with pytest.raises(ValueError, match="in both train.txt and test.txt"):
        read_split_lists(lists)
    (lists / "test.txt").write_text("benign (99)\n")
    with pytest.raises(ValueError, match="not in the data folder: benign \\(99\\)"):
        with_normal.training_pool(root)
    with pytest.raises(ValueError, match="--split-lists is for"):
        DataProtocol(split_lists=str(lists)).training_pool(_make_bmad(tmp_path / "bmad"))


# ---------------------------------------------------------------- medsad reproduce


def _opts(dataset: str, data: Path, out: Path, presets: list[str], seeds: list[int]) -> ReproduceOptions:
    return ReproduceOptions(
        dataset=dataset,
        data=str(data),
        out=str(out),
        presets=presets,
        seeds=seeds,
        image_size=32,
        epochs=1,
        batch_size=4,
        eval_batch_size=8,
        device="cpu",
        **TINY,
    )


def test_reproduce_bmad_end_to_end_is_resumable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _make_bmad(tmp_path / "brain")
    out = tmp_path / "out"
    table = reproduce(_opts("brain", data, out, ["adapt", "full"], [0]))
    assert list(table["rows"]) == ["adapt", "full"] and table["data_protocol"]["bmad_usage"] == "paper"
    for preset in ("adapt", "full"):
        row = table["rows"][preset]
        assert row["seeds"] == [0] and row["paper"] == {"dice_percent": None, "accuracy_percent": None}
        assert set(row["stats"]) == set(reproduce_mod.METRICS) and row["stats"]["image_auroc"]["n"] == 1
        run = out / preset / "seed0"
        split = json.loads((run / "split.json").read_text())
        assert all(g.startswith("test_") for g in split["train_groups"] + split["val_groups"])  # from test/
        report = json.loads((run / "test" / "report.json").read_text())
        assert report["meta"]["data_protocol"]["bmad_usage"] == "paper"
        assert report["metrics"]["n_images"] == 4  # valid/
    md = (out / "table.md").read_text()
    assert md.count("\n| adapt | 1 |") == 1 and md.count("\n| full | 1 |") == 1 and "| paper Dice |" in md
    assert "3715 / 83" in md and "MVFA" in md
    saved = read_checkpoint(out / "full" / "seed0" / "best.pt")
    assert saved["config"]["category"] == "brain" and saved["extra"]["data_protocol"]["bmad_usage"] == "paper"

    # medsad evaluate tests under the checkpoint's protocol by default (valid/, never its training test/)
    best = str(out / "full" / "seed0" / "best.pt")
    assert (
        main(["evaluate", "--ckpt", best, "--data", str(data), "--out", str(tmp_path / "ev"), "--device", "cpu"]) == 0
    )
    assert json.loads((tmp_path / "ev" / "report.json").read_text())["metrics"]["n_images"] == 4
    # medsad calibrate reads the checkpoint's protocol: its validation cases come from test/ (the
    # paper's training folder), never from valid/ (the paper's test folder)
    assert main(["calibrate", "--ckpt", best, "--data", str(data), "--split", "val", "--device", "cpu"]) == 0
    cases = read_checkpoint(best)["calibration"]["validation"]["cases"]
    assert cases and all(c.startswith("test_") for c in cases)

    # resumable: a finished preset/seed is neither trained nor evaluated again; a new seed is added
    done = out / "full" / "seed0" / "test" / "report.json"
    stamp = done.stat().st_mtime_ns
    trained = []
    real_train = train_mod.train
    monkeypatch.setattr(train_mod, "train", lambda opts: trained.append(opts.out) or real_train(opts))
    again = reproduce(_opts("brain", data, out, ["full"], [0, 1]))
    assert trained == [str(out / "full" / "seed1")] and done.stat().st_mtime_ns == stamp
    stats = again["rows"]["full"]["stats"]
    assert again["rows"]["full"]["seeds"] == [0, 1] and stats["image_auroc"]["n"] == 2
    assert stats["image_auroc"]["std"] is not None  # mean ± std over the seeds
    assert "\n| full | 2 |" in (out / "table.md").read_text()


def test_reproduce_busi_writes_its_own_split_without_normal(tmp_path: Path) -> None:
    data = _make_busi(tmp_path / "busi")
    out = tmp_path / "out"
    table = reproduce(_opts("breast", data, out, ["adapt_prompt_tpca"], [0]))
    assert table["split_lists_ours"] and table["data_protocol"]["busi_normal"] is False
    train_stems, test_stems = read_split_lists(out / "split_lists")
    assert len(test_stems) in (2, 3) and not any(s.startswith("normal") for s in train_stems | test_stems)
    report = json.loads((out / "adapt_prompt_tpca" / "seed0" / "test" / "report.json").read_text())
    assert report["metrics"]["n_images"] == len(test_stems)
    assert "our own seeded split" in (out / "table.md").read_text()
    model, payload = load_checkpoint(out / "adapt_prompt_tpca" / "seed0" / "best.pt")
    assert "a photo of a damaged breast." in model.prompt.sentences


def test_reproduce_command_line_validates_its_lists(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    base = ["reproduce", "--dataset", "brain", "--data", str(tmp_path), "--clip-pretrained", "none"]
    assert main([*base, "--out", str(tmp_path / "o"), "--presets", "full,tiny"]) == 2
    assert "--presets" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "o"), "--seeds", "0,x"]) == 2
