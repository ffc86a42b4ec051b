"""The GPU check (run by ``bench/gpu_check.sh``): the paper's model on one GPU, in minutes.

ViT-L-14 at the paper setting's input size (224), random init (``clip_pretrained=none``: no
weights needed), the ``full`` preset, bf16 autocast, batch 32:

1. **Throughput** (median of interleaved runs): one training step (forward, ``MedSADLoss``,
   backward, Adam) and a bare forward of the open_clip image encoder -> ``train_images_per_s``,
   ``train_step_over_forward``; the inference path (``Predictor.predict_slices``, eval mode,
   batch 32) -> ``infer_slices_per_s``; ``peak_train_mem_gib`` / ``peak_infer_mem_gib``.
2. **Learning smoke run**: a BMAD-layout folder of synthetic images (bright discs on textured
   grey) is written to a temporary folder; ``medsad train`` runs on it for ``--smoke-minutes``
   under the paper's data protocol (train on ``test/``, test on ``valid/``), then ``medsad
   evaluate`` scores ``best.pt`` on the test images. The test Dice must be above 0.

Every figure is one ``key=value`` line on stdout; logs go to stderr. Exit status 0 when every
check passed, 1 when the smoke run did not learn, 2 on an error (one ``gpu_check: error:``
line).

    python bench/gpu_check.py [--smoke-minutes 2] [--batch 32] [--image-size 224]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from medsad_monai.configs import load_preset  # noqa: E402
from medsad_monai.engine.inference import Predictor  # noqa: E402
from medsad_monai.losses import MedSADLoss  # noqa: E402
from medsad_monai.networks import MedSADCLIP  # noqa: E402


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clip-model", default="ViT-L-14")
    p.add_argument("--image-size", type=int, default=224, help="the paper setting's input size")
    p.add_argument("--preset", default="full")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--runs", type=int, default=10, help="timed runs per side (median is used)")
    p.add_argument("--smoke-minutes", type=float, default=2.0, help="training time of the learning smoke run")
    p.add_argument("--smoke-images", type=int, default=1536, help="synthetic training images (test/ folder)")
    p.add_argument("--num-workers", type=int, default=min(8, os.cpu_count() or 1))
    p.add_argument("--device", default="cuda")
    p.add_argument("--allow-cpu", action="store_true", help="run without CUDA (to check the script itself)")
    p.add_argument("--keep", help="write the smoke data and run here instead of a temporary folder")
    return p.parse_args()


def figure(key: str, value: object) -> None:
    """One result line."""
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    print(f"{key}={text}", flush=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def throughput(args: argparse.Namespace, device: torch.device, autocast: bool) -> None:
    """Training and inference throughput, their ratio and the peak memory."""
    torch.manual_seed(0)
    cfg = load_preset(args.preset, clip_model=args.clip_model, clip_pretrained="none", image_size=args.image_size)
    model = MedSADCLIP(cfg).to(device)
    loss_fn = MedSADLoss.from_config(cfg)
    optimizer = torch.optim.Adam(model.trainable_parameters(), lr=cfg.lr, betas=tuple(cfg.betas))
    size, b = model.image_size, args.batch
    x = torch.rand(b, 3, size, size, device=device)
    mask = torch.zeros(b, 1, size, size, device=device)
    mask[: b // 2, :, size // 4 : size // 2, size // 4 : size // 2] = 1.0
    label = (mask.flatten(1).amax(1) > 0).float()

    def bare() -> float:
        _sync(device)
        start = time.perf_counter()
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            model.backbone.encode_image(model.normalize(x))
        _sync(device)
        return time.perf_counter() - start

    def step() -> float:
        _sync(device)
        start = time.perf_counter()
        model.train()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            out = model(model.normalize(x))
        parts = loss_fn({k: v.float() for k, v in out.items()}, mask, label)
        optimizer.zero_grad(set_to_none=True)
        parts["loss"].backward()
        optimizer.step()
        _sync(device)
        return time.perf_counter() - start

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(3):  # warm-up (cuDNN / allocator)
        bare(), step()
    bare_t, step_t = [], []
    for _ in range(args.runs):  # interleaved so drifting load hits both sides
        bare_t.append(bare())
        step_t.append(step())
    peak_train = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")

    model.eval()
    predictor = Predictor(model, batch_size=b, device=device)
    slices = [np.random.default_rng(i).random((size, size), dtype=np.float32) for i in range(b)]
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    infer_t = []
    for i in range(args.runs + 2):
        _sync(device)
        start = time.perf_counter()
        predictor.predict_slices(slices)
        _sync(device)
        if i >= 2:
            infer_t.append(time.perf_counter() - start)
    peak_infer = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")

    f, s, i = statistics.median(bare_t), statistics.median(step_t), statistics.median(infer_t)
    figure("bare_forward_s", f)
    figure("train_step_s", s)
    figure("train_images_per_s", b / s)
    figure("infer_slices_per_s", b / i)
    figure("train_step_over_forward", s / f)
    figure("peak_train_mem_gib", peak_train)
    figure("peak_infer_mem_gib", peak_infer)


def _disc_image(rng: np.random.Generator, size: int, lesion: bool) -> tuple[np.ndarray, np.ndarray]:
    """A textured grey image; with ``lesion`` a bright disc (the mask) on it."""
    yy, xx = np.mgrid[:size, :size]
    base = 0.35 + 0.1 * np.sin(xx / rng.uniform(6, 14)) * np.cos(yy / rng.uniform(6, 14))
    image = base + 0.05 * rng.standard_normal((size, size))
    mask = np.zeros((size, size), np.uint8)
    if lesion:
        r = rng.uniform(0.08, 0.18) * size
        cy, cx = rng.uniform(r + 4, size - r - 4, 2)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        image[disc] = 0.85 + 0.05 * rng.standard_normal(int(disc.sum()))
        mask[disc] = 255
    return (np.clip(image, 0, 1) * 255).astype(np.uint8), mask


def make_bmad(root: Path, n_train: int, size: int, seed: int = 0) -> Path:
    """BMAD layout: ``test/`` (the paper protocol's training images, half with a disc),
    ``valid/`` (its test images, 64 + 64), ``train/`` (a few normal images, unused)."""
    rng = np.random.default_rng(seed)
    for split, n_good, n_bad in (("train", 4, 0), ("test", n_train // 2, n_train - n_train // 2), ("valid", 64, 64)):
        for cls, n, lesion in (("good", n_good, False), ("Ungood", n_bad, True)):
            for k in range(n):
                image, mask = _disc_image(rng, size, lesion)
                img_dir = root / split / cls / "img"
                img_dir.mkdir(parents=True, exist_ok=True)
                Image.fromarray(image).save(img_dir / f"{split}_{cls}_{k:05d}.png")
                if lesion:
                    (root / split / cls / "anomaly_mask").mkdir(exist_ok=True)
                    Image.fromarray(mask).save(root / split / cls / "anomaly_mask" / f"{split}_{cls}_{k:05d}.png")
    return root


def smoke(args: argparse.Namespace, device: torch.device) -> bool:
    """The learning smoke run; True when the test Dice is above 0."""
    from medsad_monai.engine.evaluate import evaluate_checkpoint
    from medsad_monai.engine.train import TrainOptions, train

    with tempfile.TemporaryDirectory(prefix="medsad_gpu_check_") as tmp:
        root = Path(args.keep) if args.keep else Path(tmp)
        data = root / "data"
        started = time.monotonic()
        if not (data / "test").is_dir():
            make_bmad(data, args.smoke_images, args.image_size)
        figure("smoke_data_s", time.monotonic() - started)
        run = root / time.strftime("run_%Y%m%d_%H%M%S")
        summary = train(
            TrainOptions(
                data=str(data),
                out=str(run),
                preset=args.preset,
                dataset="brain",
                clip_model=args.clip_model,
                clip_pretrained="none",
                image_size=args.image_size,
                batch_size=args.batch,
                epochs=1000,
                max_minutes=args.smoke_minutes,
                num_workers=args.num_workers,
                device=str(device),
            )
        )
        rows = [r for r in (run / "metrics.csv").read_text().splitlines()[1:] if r]
        figure("smoke_epochs", len(rows))
        figure("smoke_best_epoch", summary["best_epoch"])
        figure("smoke_last_val_dice", (summary.get("last") or {}).get("val_dice", ""))
        metrics = evaluate_checkpoint(
            run / "best.pt", str(data), run / "test", split="test", batch_size=args.batch, device=str(device)
        )
        dice = metrics.get("dice") or 0.0
        figure("smoke_test_dice", float(dice))
        figure("smoke_test_image_auroc", metrics.get("image_auroc"))
        figure("smoke_test_pixel_auroc", metrics.get("pixel_auroc"))
        figure("smoke_s", time.monotonic() - started)
        return dice > 0.0


def main() -> int:
    args = _args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        if not args.allow_cpu:
            print("gpu_check: error: no CUDA device (torch.cuda.is_available() is False)", file=sys.stderr)
            return 2
        args.device = "cpu"
    device = torch.device(args.device)
    autocast = device.type == "cuda" and torch.cuda.is_bf16_supported()
    started = time.monotonic()
    figure("device", torch.cuda.get_device_name(device).replace(" ", "_") if device.type == "cuda" else "cpu")
    figure("torch", torch.__version__)
    figure("model", f"{args.clip_model}@{args.image_size}/{args.preset}/random_init")
    figure("batch", args.batch)
    figure("autocast_bf16", autocast)
    throughput(args, device, autocast)
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the throughput model is gone; the smoke run builds its own
    learned = smoke(args, device)
    figure("smoke_learned", learned)
    figure("total_s", time.monotonic() - started)
    if not learned:
        print("gpu_check: error: the learning smoke run did not learn (test Dice 0)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as exc:  # the traceback, then one clear last line
        traceback.print_exc()
        print(f"gpu_check: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(2)
