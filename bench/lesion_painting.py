"""On-the-fly lesion painting (``--synthetic-lesions``) vs. one training sample of the ``tiny``
recipe: the brain estimate and the painting of one slice, against a training step of the tiny
preset divided by its batch. Painting runs in the data-loader worker beside the step, so it is
free while ``painting_over_step_per_sample`` < 1. Prints medians and the ratio on the last line:

    painting_over_step_per_sample=<paint one slice / (one step / batch)>

    python bench/lesion_painting.py [--runs 30] [--batch 8]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from medsad_monai.configs import load_preset  # noqa: E402
from medsad_monai.data.anatomies import anatomy  # noqa: E402
from medsad_monai.data.lesions import estimate_brain_mask, paint_lesions  # noqa: E402
from medsad_monai.data.preprocess import prepare_slice  # noqa: E402
from medsad_monai.losses import MedSADLoss  # noqa: E402
from medsad_monai.networks import MedSADCLIP  # noqa: E402


def _median(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    slices = {
        name: anatomy(name, 2)[0][:, :, int(0.5 * anatomy(name, 2)[0].shape[2])] for name in ("mni152", "pycortex_s1")
    }
    paint = {}
    for name, img in slices.items():
        paint[name] = _median(
            lambda img=img: paint_lesions(img, estimate_brain_mask(img), rng, style="mixed"), args.runs
        )
    model = MedSADCLIP(load_preset("tiny"))
    loss_fn = MedSADLoss(dice_reduction="lesion_images")
    optimizer = torch.optim.Adam(model.trainable_parameters(), lr=1e-3)
    x = model.normalize(torch.stack([prepare_slice(slices["mni152"], model.image_size)[0]] * args.batch))
    mask = torch.zeros(args.batch, 1, model.image_size, model.image_size)
    mask[:, :, 40:60, 40:60] = 1.0
    label = torch.ones(args.batch)

    def step() -> None:
        out = model.train()(x)
        loss = loss_fn(out, mask, label)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()
    per_sample = _median(step, max(args.runs // 3, 3)) / args.batch
    print(f"threads={torch.get_num_threads()} runs={args.runs} batch={args.batch} size={model.image_size}")
    for name, t in paint.items():
        print(f"paint_{name}_ms={1000 * t:.2f}")
    print(f"step_per_sample_ms={1000 * per_sample:.2f}")
    print(f"painting_over_step_per_sample={max(paint.values()) / per_sample:.3f}")


if __name__ == "__main__":
    main()
