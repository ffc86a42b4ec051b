"""Volume inference: slices/s and peak memory with background skipping on vs. off.

A synthetic 155×240×240 (BraTS-sized) volume whose anatomy fills the middle slices runs through
``medsad_monai.engine.inference.Predictor`` with ViT-B-16 (random init), then is decided (the
result's summary: mask, slice and volume scores, lesion tables; ``decide_s`` in each mode's
line), as ``medsad infer`` and the app do. Each mode runs in its own process so that peak RSS is
that mode's alone. The last line prints the ratios:

    skip_speedup=<wall off / wall on> rss_ratio=<peak on / peak off> slices_per_s_on=<x> slices_per_s_off=<y>

``--precision fp32,bf16`` runs the skipping mode once per precision as well (issue 16) and
prints ``slices_per_s_fp32=``, ``slices_per_s_bf16=``, ``bf16_volume_speedup=<wall fp32 / wall
bf16>`` and ``mask_agreement=`` (fraction of voxels where the two lesion masks agree), plus
``max_slice_score_diff=``.

    python bench/volume_inference.py [--model ViT-B-16] [--batch 8] [--depth 155]
                                     [--precision fp32,bf16]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _volume(depth: int, side: int):
    import numpy as np

    rng = np.random.default_rng(0)
    z, y, x = np.meshgrid(np.linspace(-1, 1, depth), np.linspace(-1, 1, side), np.linspace(-1, 1, side), indexing="ij")
    head = (x**2 + y**2 + (z * 1.6) ** 2) < 0.7  # anatomy in the middle ~60% of the slices
    vol = np.where(head, 0.5 + 0.05 * rng.standard_normal(head.shape), 0.0).astype(np.float32)
    return np.clip(vol, 0, 1)


def _run(mode: str, args: dict, queue: mp.Queue, precision: str = "fp32") -> None:
    import numpy as np
    import torch

    from medsad_monai.configs import load_preset
    from medsad_monai.engine.inference import Predictor, store_matmul_weights_bf16
    from medsad_monai.networks import MedSADCLIP

    torch.manual_seed(0)
    volume = _volume(args["depth"], args["side"])
    model = MedSADCLIP(load_preset("full", clip_model=args["model"], clip_pretrained="none"))
    predictor = Predictor(model, batch_size=args["batch"], device=args["device"], precision=precision)
    if predictor.precision == "bf16":  # as Predictor.from_checkpoint does for a loaded model
        store_matmul_weights_bf16(predictor.model)
    start = time.perf_counter()
    result = predictor.predict_volume(volume, axis=0, skip_background=mode == "on")
    model_s = time.perf_counter() - start
    result.summary()  # the decisions a user waits for too: mask, scores, lesion tables
    wall = time.perf_counter() - start
    ran = len(result.skipped) - sum(result.skipped)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = {
        "mode": mode,
        "precision": predictor.precision,
        "wall_s": wall,
        "decide_s": wall - model_s,
        "slices_run": ran,
        "slices": len(result.skipped),
        "peak_rss_mib": peak_mib,
    }
    if args.get("keep"):
        np.save(args["keep"] / f"{precision}_mask.npy", np.asarray(result.mask))
        np.save(args["keep"] / f"{precision}_scores.npy", np.asarray(result.slice_scores))
    queue.put(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B-16")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--depth", type=int, default=155)
    parser.add_argument("--side", type=int, default=240)
    parser.add_argument("--device", default=None)
    parser.add_argument("--precision", default="", help="comma list of fp32,bf16: also time each precision")
    args = vars(parser.parse_args())
    precisions = [p for p in args.pop("precision").split(",") if p]
    ctx = mp.get_context("spawn")

    def run(mode: str, precision: str = "fp32") -> dict:
        queue: mp.Queue = ctx.Queue()
        proc = ctx.Process(target=_run, args=(mode, args, queue, precision))
        proc.start()
        result = queue.get()
        proc.join()
        print(json.dumps(result))
        return result

    results = {mode: run(mode) for mode in ("on", "off")}
    on, off = results["on"], results["off"]
    per_s = {m: r["slices"] / r["wall_s"] for m, r in results.items()}
    print(
        f"skip_speedup={off['wall_s'] / on['wall_s']:.2f} rss_ratio={on['peak_rss_mib'] / off['peak_rss_mib']:.2f} "
        f"slices_per_s_on={per_s['on']:.2f} slices_per_s_off={per_s['off']:.2f}"
    )
    if precisions:
        _compare_precisions(run, args, precisions)


def _compare_precisions(run, args: dict, precisions: list[str]) -> None:
    """Time the skipping mode per precision; compare the fp32 and bf16 outputs voxel by voxel."""
    import tempfile
    from pathlib import Path

    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        args["keep"] = Path(tmp)
        timed = {p: run("on", p) for p in precisions}
        for p, r in timed.items():
            print(f"slices_per_s_{p}={r['slices'] / r['wall_s']:.2f}")
        if {"fp32", "bf16"} <= set(timed):
            masks = {p: np.load(Path(tmp) / f"{p}_mask.npy") for p in ("fp32", "bf16")}
            scores = {p: np.load(Path(tmp) / f"{p}_scores.npy") for p in ("fp32", "bf16")}
            agree = float((masks["fp32"] == masks["bf16"]).mean())
            diff = float(np.abs(scores["fp32"] - scores["bf16"]).max())
            print(
                f"bf16_volume_speedup={timed['fp32']['wall_s'] / timed['bf16']['wall_s']:.2f} "
                f"mask_agreement={agree:.4f} max_slice_score_diff={diff:.4f}"
            )


if __name__ == "__main__":
    main()
