"""One MedSAD training step vs. a bare forward of the same backbone and batch.

A training step is what ``medsad train`` does per batch: forward of the full model (frozen
backbone, adapters, prompts, TPCA, SegDecoder), ``MedSADLoss`` (BCE + DiceFocal + MCLoss),
backward and an Adam step. The bare forward is the open_clip image encoder alone in inference
mode. Target (docs/maintainers.md, performance budget): ``train_step_over_forward`` <= 2.0. Prints medians of
interleaved runs and the ratio on the last line:

    train_step_over_forward=<step / bare forward>

    python bench/train_throughput.py [--model ViT-B-16] [--batch 8] [--runs 5] [--preset full]
"""

from __future__ import annotations

import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from _common import header, model_bench_args  # noqa: E402

from medsad_monai.configs import load_preset  # noqa: E402
from medsad_monai.losses import MedSADLoss  # noqa: E402
from medsad_monai.networks import MedSADCLIP  # noqa: E402


def main() -> None:
    args = model_bench_args(__doc__, runs=5)

    torch.manual_seed(0)
    cfg = load_preset(args.preset, clip_model=args.model, clip_pretrained="none")
    model = MedSADCLIP(cfg).to(args.device)
    loss_fn = MedSADLoss.from_config(cfg)
    optimizer = torch.optim.Adam(model.trainable_parameters(), lr=cfg.lr, betas=tuple(cfg.betas))
    size = model.image_size
    x = torch.rand(args.batch, 3, size, size, device=args.device)
    mask = (torch.rand(args.batch, 1, size, size, device=args.device) > 0.97).float()
    label = (mask.flatten(1).amax(1) > 0).float()
    autocast = args.device.startswith("cuda") and torch.cuda.is_bf16_supported()

    def sync() -> None:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    def bare() -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            model.backbone.encode_image(x)
        sync()
        return time.perf_counter() - start

    def step() -> float:
        start = time.perf_counter()
        model.train()
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
            out = model(model.normalize(x))
        parts = loss_fn({k: v.float() for k, v in out.items()}, mask, label)
        optimizer.zero_grad(set_to_none=True)
        parts["loss"].backward()
        optimizer.step()
        sync()
        return time.perf_counter() - start

    bare(), step()  # warm-up
    bare_t, step_t = [], []
    for _ in range(args.runs):  # interleaved so drifting machine load hits both sides
        bare_t.append(bare())
        step_t.append(step())
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        step()
        peak = f" peak_cuda_mem_gib={torch.cuda.max_memory_allocated() / 2**30:.2f}"
    else:
        peak = ""
    b, s = statistics.median(bare_t), statistics.median(step_t)
    print(header(args, size, f" autocast_bf16={autocast}{peak}"))
    print(f"bare_forward_s={b:.4f} train_step_s={s:.4f}")
    print(f"train_step_over_forward={s / b:.3f}")


if __name__ == "__main__":
    main()
