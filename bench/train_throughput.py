"""One MedSAD training step vs. a bare forward of the same backbone and batch.

A training step is what ``medsad train`` does per batch: forward of the full model (frozen
backbone, adapters, prompts, TPCA, SegDecoder), ``MedSADLoss`` (BCE + DiceFocal + MCLoss),
backward and an Adam step. The bare forward is the open_clip image encoder alone in inference
mode. Target (docs/maintainers.md, performance budget): ``train_step_over_forward`` <= 2.0. Prints medians of
interleaved runs, then where a step's time goes (each part as a multiple of the bare forward:
frozen prefix blocks, tapped blocks, embedding + adapters, text tower, heads, loss, backward,
optimizer; from timing hooks on extra steps), and the ratio on the last line:

    breakdown frozen_prefix=<x> tapped_blocks=<x> embed_adapters=<x> text_tower=<x> heads=<x> loss=<x>
        backward=<x> optimizer=<x>
    train_step_over_forward=<step / bare forward>

    python bench/train_throughput.py [--model ViT-B-16] [--batch 8] [--runs 5] [--preset full]
                                     [--precision auto|fp32|bf16] [--no-adapter-mix-back]

``--precision bf16`` runs the step and the bare forward under bf16 autocast (the ratio is against
the bare bf16 forward) and also times the fp32 step: ``bf16_step_speedup=`` (fp32 step / bf16
step). ``auto`` is what ``medsad train`` uses: bf16 on CUDA GPUs that have it, fp32 elsewhere.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from _common import header, model_bench_args  # noqa: E402

from medsad_monai.configs import load_preset  # noqa: E402
from medsad_monai.losses import MedSADLoss  # noqa: E402
from medsad_monai.networks import MedSADCLIP, medsad_clip  # noqa: E402


def _own_args() -> argparse.Namespace:
    """``--precision`` (this benchmark only); the rest goes to _common."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument(
        "--no-adapter-mix-back",
        dest="mix_back",
        action="store_false",
        help="side adapters (config adapter_mix_back=False): the backbone runs without autograd",
    )
    own, rest = parser.parse_known_args()
    sys.argv = sys.argv[:1] + rest
    return own


def main() -> None:
    own = _own_args()
    args = model_bench_args(__doc__, runs=5)

    torch.manual_seed(0)
    cfg = load_preset(args.preset, clip_model=args.model, clip_pretrained="none", adapter_mix_back=own.mix_back)
    model = MedSADCLIP(cfg).to(args.device)
    loss_fn = MedSADLoss.from_config(cfg)
    optimizer = torch.optim.Adam(model.trainable_parameters(), lr=cfg.lr, betas=tuple(cfg.betas))
    size = model.image_size
    x = torch.rand(args.batch, 3, size, size, device=args.device)
    mask = (torch.rand(args.batch, 1, size, size, device=args.device) > 0.97).float()
    label = (mask.flatten(1).amax(1) > 0).float()
    # auto: what `medsad train` does (bf16 autocast on CUDA GPUs that have it, fp32 elsewhere)
    cuda_bf16 = args.device.startswith("cuda") and torch.cuda.is_bf16_supported()
    autocast = own.precision == "bf16" or (own.precision == "auto" and cuda_bf16)

    def sync() -> None:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    def bare() -> float:
        start = time.perf_counter()
        with torch.inference_mode(), torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
            model.backbone.encode_image(x)
        sync()
        return time.perf_counter() - start

    def step(bf16: bool = autocast) -> float:
        start = time.perf_counter()
        model.train()
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            out = model(model.normalize(x))
        parts = loss_fn({k: v.float() for k, v in out.items()}, mask, label)
        optimizer.zero_grad(set_to_none=True)
        parts["loss"].backward()
        optimizer.step()
        sync()
        return time.perf_counter() - start

    bare(), step()  # warm-up
    bare_t, step_t, fp32_t = [], [], []
    for _ in range(args.runs):  # interleaved so drifting machine load hits both sides
        bare_t.append(bare())
        step_t.append(step())
        if autocast:  # the same step in fp32, for the speed-up
            fp32_t.append(step(False))
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        step()
        peak = f" peak_cuda_mem_gib={torch.cuda.max_memory_allocated() / 2**30:.2f}"
    else:
        peak = ""
    b, s = statistics.median(bare_t), statistics.median(step_t)
    parts = _breakdown(model, loss_fn, optimizer, x, mask, label, autocast, sync, args.runs)
    print(header(args, size, f" autocast_bf16={autocast} adapter_mix_back={cfg.adapter_mix_back}{peak}"))
    print(f"bare_forward_s={b:.4f} train_step_s={s:.4f}")
    print("breakdown " + " ".join(f"{k}={v / b:.3f}" for k, v in parts.items()))
    if fp32_t:
        f = statistics.median(fp32_t)
        print(f"fp32_train_step_s={f:.4f} bf16_step_speedup={f / s:.3f}")
    print(f"train_step_over_forward={s / b:.3f}")


def _breakdown(model, loss_fn, optimizer, x, mask, label, autocast, sync, runs) -> dict[str, float]:
    """Median seconds per part of a training step, from forward hooks (blocks, text tower) and
    timers around encode_image, the loss, backward and the optimizer step."""
    acc: dict[str, float] = {}
    started: dict[int, float] = {}

    def timed(name: str, module: torch.nn.Module) -> None:
        def pre(mod, _inputs) -> None:
            started[id(mod)] = time.perf_counter()

        def post(mod, _inputs, _output) -> None:
            acc[name] = acc.get(name, 0.0) + time.perf_counter() - started.pop(id(mod))

        module.register_forward_pre_hook(pre)
        module.register_forward_hook(post)

    first_tap = model.backbone.tap_layers[0] - 1
    prefix = {id(block) for block in list(model.backbone.blocks)[:first_tap]}
    run_block = medsad_clip.run_block

    def run_block_timed(block, tokens):  # vision blocks, as MedSADCLIP.encode_image runs them
        start = time.perf_counter()
        out = run_block(block, tokens)
        name = "frozen_prefix" if id(block) in prefix else "tapped_blocks"
        acc[name] = acc.get(name, 0.0) + time.perf_counter() - start
        return out

    medsad_clip.run_block = run_block_timed
    timed("text_tower", model.prompt)
    encode_image = model.encode_image

    def encode_timed(images):
        start = time.perf_counter()
        out = encode_image(images)
        acc["encode_image"] = acc.get("encode_image", 0.0) + time.perf_counter() - start
        return out

    model.encode_image = encode_timed
    samples: dict[str, list[float]] = {}
    for _ in range(runs):
        acc.clear()
        model.train()
        t0 = time.perf_counter()
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
            out = model(model.normalize(x))
        t1 = time.perf_counter()
        parts = loss_fn({k: v.float() for k, v in out.items()}, mask, label)
        t2 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        parts["loss"].backward()
        sync()
        t3 = time.perf_counter()
        optimizer.step()
        sync()
        t4 = time.perf_counter()
        blocks = acc.get("frozen_prefix", 0.0) + acc.get("tapped_blocks", 0.0)
        row = {
            "frozen_prefix": acc.get("frozen_prefix", 0.0),
            "tapped_blocks": acc.get("tapped_blocks", 0.0),
            "embed_adapters": acc["encode_image"] - blocks,
            "text_tower": acc.get("text_tower", 0.0),
            "heads": (t1 - t0) - acc["encode_image"] - acc.get("text_tower", 0.0),
            "loss": t2 - t1,
            "backward": t3 - t2,
            "optimizer": t4 - t3,
        }
        for k, v in row.items():
            samples.setdefault(k, []).append(v)
    model.encode_image = encode_image
    medsad_clip.run_block = run_block
    return {k: statistics.median(v) for k, v in samples.items()}


if __name__ == "__main__":
    main()
