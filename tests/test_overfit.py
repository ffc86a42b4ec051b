"""Learning: the tiny model memorises 8 synthetic images (bright blobs on noise, half normal)."""

from __future__ import annotations

import torch

from medsad_monai.losses import MedSADLoss
from medsad_monai.networks import MedSADCLIP


def _blobs(n: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 1, size, size, generator=g) * 0.3
    masks = torch.zeros(n, 1, size, size)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    for i in range(n // 2):
        cy, cx = torch.randint(size // 5, 4 * size // 5, (2,), generator=g)
        r = size / 10 + torch.rand(1, generator=g) * size / 10
        blob = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
        masks[i, 0][blob] = 1.0
        images[i, 0][blob] += 0.6
    labels = torch.tensor([1.0] * (n // 2) + [0.0] * (n - n // 2))
    return images.repeat(1, 3, 1, 1), masks, labels


def test_tiny_model_overfits_eight_images(tiny_config):
    torch.manual_seed(0)
    model = MedSADCLIP(tiny_config)
    loss_fn = MedSADLoss.from_config(tiny_config)
    images, masks, labels = _blobs(8, model.image_size, seed=1)
    x = model.normalize(images)
    opt = torch.optim.Adam(model.trainable_parameters(), lr=tiny_config.lr, betas=tuple(tiny_config.betas))
    for _ in range(150):
        model.train()
        loss = loss_fn(model(x), masks, labels)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        out = model(x)
    pred = (out["mask"][:, 1:] > 0.5).float()
    abnormal = labels == 1
    inter = (pred * masks).sum((1, 2, 3))
    dice = (2 * inter / (pred.sum((1, 2, 3)) + masks.sum((1, 2, 3))))[abnormal].mean()
    accuracy = ((out["score"] > 0.5).float() == labels).float().mean()
    assert dice > 0.8, f"Dice {dice:.3f} after 150 steps"
    assert accuracy == 1.0
    assert pred[~abnormal].sum() < 0.01 * pred[~abnormal].numel()
