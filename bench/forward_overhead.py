"""MedSAD eval forward vs. the bare open_clip image encoder on the same backbone.

Prints per-run medians and ``overhead_ratio=<medsad / bare>``.
Target (docs/maintainers.md, performance budget): <= 1.10. Ratios, not absolute times, are what we track.

With ``--precision bf16`` both sides run under bf16 autocast (the ratio is against the bare
encoder's bf16 forward) and a third, interleaved side times the full model in fp32; the last
line is ``bf16_speedup=<medsad fp32 / medsad bf16>``. In bf16 the model's matmul weights are
stored in bf16 first, as ``Predictor.from_checkpoint`` does (``--weights autocast`` leaves them
fp32 and lets autocast cast them on every forward, the way it ran before); the bare encoder is
the same model's backbone, so both sides run with the same weights. ``--stock-runs N`` also times open_clip's
own ``encode_image`` in bf16 N times (slow on CPU: its attention copies the expanded weights).

    python bench/forward_overhead.py [--model ViT-B-16] [--batch 8] [--runs 7] [--preset full]
                                     [--precision fp32|bf16] [--weights bf16|autocast] [--stock-runs 0]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from _common import header, model_bench_args  # noqa: E402

from medsad_monai.configs import load_preset  # noqa: E402
from medsad_monai.engine.inference import store_matmul_weights_bf16  # noqa: E402
from medsad_monai.networks import MedSADCLIP  # noqa: E402


def _time(fn, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def _own_args() -> argparse.Namespace:
    """``--precision`` and ``--stock-runs`` (this benchmark only); the rest goes to _common."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--weights", default="bf16", choices=["bf16", "autocast"])
    parser.add_argument("--stock-runs", type=int, default=0)
    own, rest = parser.parse_known_args()
    sys.argv = sys.argv[:1] + rest
    return own


def main() -> None:
    own = _own_args()
    args = model_bench_args(__doc__, runs=7)
    bf16 = own.precision == "bf16"

    torch.manual_seed(0)
    cfg = load_preset(args.preset, clip_model=args.model, clip_pretrained="none")
    model = MedSADCLIP(cfg).to(args.device).eval()
    fp32_model = model
    if bf16 and own.weights == "bf16":
        fp32_model = copy.deepcopy(model)
        store_matmul_weights_bf16(model)
    size = model.image_size
    x = torch.randn(args.batch, 3, size, size, device=args.device)

    def sync() -> None:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    def amp():
        if not bf16:
            return contextlib.nullcontext()
        return torch.autocast(args.device.split(":")[0], dtype=torch.bfloat16)

    def bare() -> None:
        with amp():
            model.backbone.encode_image(x)
        sync()

    def medsad() -> None:
        with amp():
            model(x)
        sync()

    def medsad_fp32() -> None:
        fp32_model(x)
        sync()

    def stock() -> None:
        with amp():
            model.backbone.encode_image_stock(x)
        sync()

    with torch.inference_mode():
        bare(), medsad()  # warm-up (also fills the text cache once)
        if bf16:
            medsad_fp32()
        bare_t, medsad_t, fp32_t = [], [], []
        for _ in range(args.runs):  # interleave so drifting machine load hits every side
            bare_t += _time(bare, 1)
            medsad_t += _time(medsad, 1)
            if bf16:
                fp32_t += _time(medsad_fp32, 1)
        stock_t = _time(stock, own.stock_runs) if own.stock_runs > 0 else []
    b, m = statistics.median(bare_t), statistics.median(medsad_t)
    weights = f" weights={own.weights}" if bf16 else ""
    print(header(args, size, f" precision={own.precision}{weights}"))
    print(f"bare_encoder_s={b:.4f} medsad_forward_s={m:.4f} text_encoder_calls={model.text_encoder_calls}")
    if stock_t:
        print(f"stock_open_clip_encoder_s={statistics.median(stock_t):.4f}")
    print(f"overhead_ratio={m / b:.3f}")
    if bf16:
        f = statistics.median(fp32_t)
        print(f"medsad_forward_fp32_s={f:.4f}")
        print(f"bf16_speedup={f / m:.3f}")


if __name__ == "__main__":
    main()
