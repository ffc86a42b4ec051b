"""MedSAD eval forward vs. the bare open_clip image encoder on the same backbone.

Prints per-run medians and, on the last line, ``overhead_ratio=<medsad / bare>``.
Target (docs/maintainers.md, performance budget): <= 1.10. Ratios, not absolute times, are what we track.

    python bench/forward_overhead.py [--model ViT-B-16] [--batch 8] [--runs 7] [--preset full]
"""

from __future__ import annotations

import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from _common import header, model_bench_args  # noqa: E402

from medsad_monai.configs import load_preset  # noqa: E402
from medsad_monai.networks import MedSADCLIP  # noqa: E402


def _time(fn, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    args = model_bench_args(__doc__, runs=7)

    torch.manual_seed(0)
    cfg = load_preset(args.preset, clip_model=args.model, clip_pretrained="none")
    model = MedSADCLIP(cfg).to(args.device).eval()
    size = model.image_size
    x = torch.randn(args.batch, 3, size, size, device=args.device)

    def sync() -> None:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    def bare() -> None:
        model.backbone.encode_image(x)
        sync()

    def medsad() -> None:
        model(x)
        sync()

    with torch.inference_mode():
        bare(), medsad()  # warm-up (also fills the text cache once)
        bare_t, medsad_t = [], []
        for _ in range(args.runs):  # interleave so drifting machine load hits both sides
            bare_t += _time(bare, 1)
            medsad_t += _time(medsad, 1)
    b, m = statistics.median(bare_t), statistics.median(medsad_t)
    print(header(args, size))
    print(f"bare_encoder_s={b:.4f} medsad_forward_s={m:.4f} text_encoder_calls={model.text_encoder_calls}")
    print(f"overhead_ratio={m / b:.3f}")


if __name__ == "__main__":
    main()
