"""Inference precision (issue 16): bf16 vs fp32 agreement, ``auto`` detection, refusal of bad names."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medsad_monai.cli import build_parser
from medsad_monai.data.volumes import load_volume
from medsad_monai.engine import inference
from medsad_monai.engine.inference import Predictor, cpu_has_bf16, resolve_precision


@pytest.fixture(scope="module")
def volume(tiny_volumes):
    raw, _ = load_volume(tiny_volumes / "imagesTr" / "case_000.nii.gz")
    return raw


def _run(tiny_checkpoint, volume, precision):
    predictor = Predictor.from_checkpoint(tiny_checkpoint, device="cpu", precision=precision)
    assert predictor.precision == precision
    result = predictor.predict_volume(predictor.normalize_volume(volume), skip_background=False)
    return result


def test_bf16_matches_fp32(tiny_checkpoint, volume):
    fp32 = _run(tiny_checkpoint, volume, "fp32")
    bf16 = _run(tiny_checkpoint, volume, "bf16")
    agreement = float((fp32.mask == bf16.mask).mean())
    assert agreement >= 0.995, f"bf16/fp32 mask agreement {agreement:.4%}"
    diff = np.abs(np.asarray(fp32.model_scores) - np.asarray(bf16.model_scores)).max()
    assert diff <= 0.01, f"slice scores differ by up to {diff:.4f}"
    assert fp32.summary()["precision"] == "fp32"
    assert bf16.summary()["precision"] == "bf16"


def test_bf16_checkpoint_keeps_matmul_weights_in_bf16(tiny_checkpoint, volume):
    """A bf16 predictor of a checkpoint casts its matmul weights once (not autocast on every
    forward); norms and embeddings stay fp32; the outputs equal plain autocast's."""
    from medsad_monai.checkpoint import load_checkpoint

    cast = Predictor.from_checkpoint(tiny_checkpoint, device="cpu", precision="bf16")
    linears = [m for m in cast.model.modules() if isinstance(m, torch.nn.Linear)]
    norms = [m for m in cast.model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert linears and norms
    assert all(m.weight.dtype == torch.bfloat16 for m in linears)
    assert all(m.weight.dtype == torch.float32 for m in norms)
    assert cast.model.backbone.clip.token_embedding.weight.dtype == torch.float32
    model, payload = load_checkpoint(tiny_checkpoint)
    plain = Predictor(model, device="cpu", precision="bf16", intensity=cast.intensity)  # a model passed in: left as is
    assert all(m.weight.dtype == torch.float32 for m in plain.model.modules() if isinstance(m, torch.nn.Linear))
    a = cast.predict_volume(cast.normalize_volume(volume), skip_background=False)
    b = plain.predict_volume(plain.normalize_volume(volume), skip_background=False)
    assert np.abs(a.probability - b.probability).max() <= 0.02
    assert np.abs(np.asarray(a.model_scores) - np.asarray(b.model_scores)).max() <= 0.01


def test_batch_first_block_matches_open_clip(tiny_checkpoint):
    """The batch-first vision blocks (bf16 and fp32 inference on a CPU) compute what open_clip's
    own block computes."""
    from medsad_monai.networks.clip_backbone import _needs_batch_first_attention, run_block

    predictor = Predictor.from_checkpoint(tiny_checkpoint, device="cpu")
    block = predictor.model.backbone.blocks[0]
    torch.manual_seed(0)
    x = torch.randn(2, 17, predictor.model.backbone.width)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert _needs_batch_first_attention(block, x)
        ours, theirs = run_block(block, x).float(), block(x).float()
    assert torch.allclose(ours, theirs, atol=0.05, rtol=0.02)
    with torch.inference_mode():  # fp32 inference on a CPU runs batch-first too (faster there), same answer
        assert _needs_batch_first_attention(block, x)
        assert torch.allclose(run_block(block, x), block(x), atol=1e-5, rtol=1e-4)
        assert not _needs_batch_first_attention(block, x.to("meta"))  # other devices keep the fused fast path
    backbone = predictor.model.backbone
    images = torch.randn(2, 3, backbone.image_size, backbone.image_size)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        ours, stock = backbone.encode_image(images).float(), backbone.encode_image_stock(images).float()
    assert torch.allclose(ours, stock, atol=0.05, rtol=0.02)
    with torch.inference_mode():
        ours, stock = backbone.encode_image(images), backbone.encode_image_stock(images)
    assert torch.allclose(ours, stock, atol=1e-5, rtol=1e-4)


def test_batch_first_block_with_gradients_matches_open_clip(tiny_checkpoint):
    """Training (gradients on, fp32) takes the batch-first path too: same outputs and the same
    gradient with respect to the tokens as open_clip's own block."""
    from medsad_monai.networks.clip_backbone import _needs_batch_first_attention, run_block

    block = Predictor.from_checkpoint(tiny_checkpoint, device="cpu").model.backbone.blocks[1]
    torch.manual_seed(0)
    x = torch.randn(2, 17, block.attn.embed_dim, requires_grad=True)
    assert _needs_batch_first_attention(block, x)
    ours = run_block(block, x)
    (grad_ours,) = torch.autograd.grad(ours.square().sum(), x)
    theirs = block(x)
    (grad_theirs,) = torch.autograd.grad(theirs.square().sum(), x)
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=1e-4)
    assert torch.allclose(grad_ours, grad_theirs, atol=1e-4, rtol=1e-4)


def test_text_tower_batch_first_matches_open_clip(tiny_checkpoint):
    """The causal text tower (the prompts learn through it) runs block by block batch-first with
    its mask: the same features and prompt gradients as open_clip's own transformer, in fp32
    with gradients and under bf16 autocast."""
    from medsad_monai.networks.clip_backbone import _needs_batch_first_attention, run_transformer

    prompts = Predictor.from_checkpoint(tiny_checkpoint, device="cpu").model.prompt
    clip = prompts.clip[0]
    torch.manual_seed(0)
    x = torch.randn(3, 12, clip.transformer.width, requires_grad=True)
    mask = clip.attn_mask[:12, :12]
    assert all(_needs_batch_first_attention(block, x) for block in clip.transformer.resblocks)
    ours = run_transformer(clip.transformer, x, mask)
    (grad_ours,) = torch.autograd.grad(ours.square().sum(), x)
    theirs = clip.transformer(x, attn_mask=mask)
    (grad_theirs,) = torch.autograd.grad(theirs.square().sum(), x)
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=1e-4)
    assert torch.allclose(grad_ours, grad_theirs, atol=1e-4, rtol=1e-4)
    # the mask is applied: a later token changes no earlier output
    y = x.detach().clone()
    y[:, -1] += 1.0
    assert torch.allclose(run_transformer(clip.transformer, y, mask)[:, :-1], ours.detach()[:, :-1], atol=1e-5)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        fast, stock = run_transformer(clip.transformer, x, mask).float(), clip.transformer(x, attn_mask=mask).float()
    assert torch.allclose(fast, stock, atol=0.05, rtol=0.02)


@pytest.mark.parametrize("has_bf16", [True, False])
def test_auto_follows_detection(monkeypatch, has_bf16):
    monkeypatch.setattr(inference, "cpu_has_bf16", lambda: has_bf16)
    assert resolve_precision("auto", torch.device("cpu")) == ("bf16" if has_bf16 else "fp32")
    assert resolve_precision("fp32", torch.device("cpu")) == "fp32"
    assert resolve_precision("BF16", torch.device("cpu")) == "bf16"
    assert resolve_precision(None, torch.device("cpu")) == "fp32"  # the historical default


def test_cpu_detection_reads_the_flags():
    flags = ""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            flags = next((line for line in fh if line.startswith("flags")), "")
    except OSError:
        pytest.skip("no /proc/cpuinfo")
    expected = any(f in flags.split() for f in ("amx_bf16", "avx512_bf16"))
    assert cpu_has_bf16() is expected
    expected_auto = "bf16" if expected else "fp32"
    assert Predictor(torch.nn.Identity(), device="cpu", precision="auto").precision == expected_auto


def test_invalid_precision_is_refused(tiny_checkpoint):
    with pytest.raises(ValueError, match="fp16"):
        resolve_precision("fp16", torch.device("cpu"))
    with pytest.raises(ValueError, match="half.*auto, fp32, bf16"):
        Predictor.from_checkpoint(tiny_checkpoint, device="cpu", precision="half")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["infer", "--ckpt", "c", "--input", "i", "--out", "o", "--precision", "fp16"])


def test_cli_default_is_auto():
    parser = build_parser()
    args = parser.parse_args(["infer", "--ckpt", "c", "--input", "i", "--out", "o"])
    assert args.precision == "auto"
    args = parser.parse_args(["evaluate", "--ckpt", "c", "--data", "d", "--out", "o", "--precision", "fp32"])
    assert args.precision == "fp32"
