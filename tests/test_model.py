"""MedSADCLIP: shapes, frozen backbone, ablation switches, cached text features."""

from __future__ import annotations

import pytest
import torch

from medsad_monai.configs import load_preset
from medsad_monai.losses import MedSADLoss
from medsad_monai.networks import MedSADCLIP, medsad_clip
from medsad_monai.networks.clip_backbone import run_block


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_tiny_outputs_have_documented_shapes_for_any_batch(tiny_config, batch):
    torch.manual_seed(0)
    model = MedSADCLIP(tiny_config).eval()
    size = model.image_size
    with torch.no_grad():
        out = model(torch.randn(batch, 3, size, size))
    assert out["mask_logits"].shape == (batch, 2, size, size)
    assert out["mask"].shape == (batch, 2, size, size)
    assert out["image_logits"].shape == (batch, 2)
    assert out["cos"].shape == (batch, 2)
    assert out["score"].shape == (batch,)
    assert torch.allclose(out["mask"].sum(1), torch.ones(batch, size, size), atol=1e-5)
    assert ((out["score"] >= 0) & (out["score"] <= 1)).all()


@pytest.mark.parametrize("preset", ["full", "adapt"])
def test_vit_b16_outputs_have_input_size(preset):
    torch.manual_seed(0)
    cfg = load_preset(preset, clip_model="ViT-B-16", clip_pretrained="none")
    model = MedSADCLIP(cfg).eval()
    assert model.backbone.tap_layers == [3, 6, 9, 12]
    with torch.no_grad():
        out = model(torch.randn(2, 3, 224, 224))
    assert out["mask"].shape == (2, 2, 224, 224)
    assert out["score"].shape == (2,)


def test_vit_l14_taps_are_spread_over_depth():
    from medsad_monai.networks.clip_backbone import default_tap_layers

    assert default_tap_layers(24) == [6, 12, 18, 24]
    assert default_tap_layers(12) == [3, 6, 9, 12]
    assert default_tap_layers(6) == [2, 3, 5, 6]


def test_optimizer_step_changes_heads_but_not_frozen_backbone(frozen_tiny_config):
    torch.manual_seed(0)
    model = MedSADCLIP(frozen_tiny_config)
    loss_fn = MedSADLoss.from_config(frozen_tiny_config)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    opt = torch.optim.Adam(model.trainable_parameters(), lr=1e-2)
    size = model.image_size
    x = torch.randn(4, 3, size, size)
    masks = (torch.rand(4, 1, size, size) > 0.8).float()
    out = model.train()(x)
    loss_fn(out, masks, torch.tensor([1.0, 0.0, 1.0, 0.0]))["loss"].backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    opt.step()
    after = model.state_dict()
    backbone_keys = [k for k in before if k.startswith("backbone.")]
    assert backbone_keys
    for k in backbone_keys:
        assert torch.equal(before[k], after[k]), f"frozen backbone weight {k} changed"
    for prefix in ("adapters.", "seg_proj.", "classifier.", "prompt.ctx", "tpca.", "decoder."):
        changed = [k for k in before if k.startswith(prefix) and not torch.equal(before[k], after[k])]
        assert changed, f"no weight under {prefix} changed after an optimizer step"


# The paper presets run the paper's equations: no seg / classifier projection (config switches).
EXPECTED_TRAINABLE = {
    "adapt": {"adapters"},
    "adapt_prompt": {"adapters", "prompt"},
    "adapt_prompt_tpca": {"adapters", "prompt", "tpca", "decoder"},
    "full": {"adapters", "prompt", "tpca", "decoder"},
}


@pytest.mark.parametrize("preset", sorted(EXPECTED_TRAINABLE))
def test_each_ablation_trains_exactly_its_modules(preset):
    cfg = load_preset(preset, clip_model="MedSAD-Tiny", clip_pretrained="none", image_size=64, tpca_heads=4)
    model = MedSADCLIP(cfg)
    trainable = {name.split(".")[0] for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == EXPECTED_TRAINABLE[preset]
    projected = MedSADCLIP(cfg.replace(seg_projection=True, classifier_projection=True))
    trainable = {name.split(".")[0] for name, p in projected.named_parameters() if p.requires_grad}
    assert trainable == EXPECTED_TRAINABLE[preset] | {"seg_proj", "classifier"}
    assert not any(p.requires_grad for p in model.backbone.parameters())
    loss = MedSADLoss.from_config(cfg)
    assert (loss.weights["mc"] > 0) == (preset == "full")


@pytest.mark.parametrize("preset", ["tiny", "adapt", "full"])
def test_every_trainable_parameter_gets_a_gradient(preset):
    """DDP without find_unused_parameters needs this; dead parameters also bloat checkpoints."""
    cfg = load_preset(preset, clip_model="MedSAD-Tiny", clip_pretrained="none", image_size=64, tpca_heads=4)
    model = MedSADCLIP(cfg).train()
    out = model(torch.randn(2, 3, 64, 64))
    MedSADLoss.from_config(cfg)(out, torch.ones(2, 1, 64, 64), torch.ones(2))["loss"].backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing


@pytest.mark.parametrize("mix_back", [True, False])
def test_adapter_mix_back_decides_whether_autograd_runs_through_the_backbone(frozen_tiny_config, mix_back, monkeypatch):
    """Mixed back (the paper), every block after the first tap is on the autograd graph; side
    adapters (mix_back off) leave the backbone's stream untouched and off the graph, so a
    training step backpropagates through the adapters and heads only, and still trains them all."""
    torch.manual_seed(0)
    model = MedSADCLIP(frozen_tiny_config.replace(adapter_mix_back=mix_back)).train()
    on_graph: list[bool] = []
    blocks = list(model.backbone.blocks)

    def recording_run_block(block, tokens):
        out = run_block(block, tokens)
        on_graph.append(out.requires_grad)
        return out

    monkeypatch.setattr(medsad_clip, "run_block", recording_run_block)
    x = torch.rand(2, 3, 64, 64)
    out = model(model.normalize(x))
    first_tap = model.backbone.tap_layers[0]
    assert on_graph[first_tap:] == [mix_back] * (len(on_graph) - first_tap) and len(on_graph) == len(blocks)
    assert all(a.up is not None for a in model.adapters.seg[:-1]) == mix_back
    MedSADLoss.from_config(frozen_tiny_config)(out, torch.ones(2, 1, 64, 64), torch.ones(2))["loss"].backward()
    assert not [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    if not mix_back:  # every tap reads the frozen backbone's own tokens
        taps = model.backbone.tap_layers
        with torch.no_grad():
            seg, _ = model.encode_image(model.normalize(x))
            tokens, expected = model.backbone.embed(model.normalize(x)), 0.0
            for index, block in enumerate(blocks[: taps[-1]]):
                tokens = run_block(block, tokens)
                if index + 1 in taps:
                    expected = expected + model.adapters.seg[taps.index(index + 1)](tokens[:, 1:].contiguous())[0]
        assert torch.allclose(seg, expected / len(taps), atol=1e-5)


def test_train_backbone_trains_image_tower_but_never_text_tower(tiny_config):
    model = MedSADCLIP(tiny_config.replace(train_backbone=True))
    clip = model.backbone.clip
    assert all(p.requires_grad for n, p in clip.visual.named_parameters() if not n.startswith(("ln_post", "proj")))
    text_params = [p for n, p in clip.named_parameters() if not n.startswith("visual.")]
    assert text_params and not any(p.requires_grad for p in text_params)


def _count_text_passes(model: MedSADCLIP) -> list[int]:
    """Passes through the text tower, counted at its first block's first norm (the tower runs
    block by block, batch-first on a CPU, so the block's own forward is not what runs)."""
    calls = [0]
    first_norm = model.backbone.clip.transformer.resblocks[0].ln_1
    first_norm.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_text_encoder_runs_once_across_eval_forwards(tiny_config):
    model = MedSADCLIP(tiny_config).eval()
    calls = _count_text_passes(model)
    x = torch.randn(2, 3, model.image_size, model.image_size)
    with torch.no_grad():
        for _ in range(5):
            model(x)
    assert calls[0] == 1


def test_text_cache_is_refreshed_after_prompt_update(tiny_config):
    model = MedSADCLIP(tiny_config).eval()
    calls = _count_text_passes(model)
    x = torch.randn(2, 3, model.image_size, model.image_size)
    with torch.no_grad():
        first = model(x)["score"]
        with torch.no_grad():
            model.prompt.ctx.add_(torch.randn_like(model.prompt.ctx))  # in place, as an optimizer step
        second = model(x)["score"]
        model(x)
    assert calls[0] == 2
    assert not torch.allclose(first, second)


def test_training_mode_recomputes_text_with_gradient_to_prompt(tiny_config):
    model = MedSADCLIP(tiny_config).train()
    x = torch.randn(2, 3, model.image_size, model.image_size)
    out = model(x)
    out["score"].sum().backward()
    assert model.prompt.ctx.grad is not None and model.prompt.ctx.grad.abs().sum() > 0


def test_decoder_image_skip_is_used_and_required(tiny_config):
    from medsad_monai.networks import SegDecoder

    decoder = SegDecoder(40, (16, 8), norm="instance", skip_channels=4).eval()
    grid = torch.randn(2, 40, 8, 8)
    image = torch.randn(2, 3, 64, 64)
    out = decoder(grid, (64, 64), image)
    assert out.shape == (2, 2, 64, 64)
    assert not torch.allclose(out, decoder(grid, (64, 64), image.flip(-1)))  # the image matters
    with pytest.raises(ValueError, match="image skip"):
        decoder(grid, (64, 64))
    assert (
        MedSADCLIP(tiny_config.replace(decoder_skip_channels=0, decoder_full_res_channels=0)).decoder.skip_channels == 0
    )


def test_decoder_full_resolution_stage_reads_the_image_at_full_size(tiny_config):
    from medsad_monai.networks import SegDecoder

    torch.manual_seed(0)
    decoder = SegDecoder(40, (16, 8), norm="instance", skip_channels=4, full_res_channels=4)
    grid, image = torch.randn(2, 40, 8, 8), torch.randn(2, 3, 64, 64, requires_grad=True)
    out = decoder(grid, (64, 64), image)
    assert out.shape == (2, 2, 64, 64)
    out[0, 1, 20, 20].backward()
    influence = image.grad[0].abs().sum(0)
    # the output pixel depends most on the image around it at full resolution (3x3 conv) ...
    assert influence[19:22, 19:22].sum() > 0.2 * influence.sum()  # without the stage: 0.08-0.13
    assert influence[20, 20] > 0.03 * influence.sum()  # the pixel itself; without: 0.002-0.013
    assert decoder.full_skip.conv.weight.grad is not None  # ... through the full-resolution branch
    with pytest.raises(ValueError, match="skip"):
        SegDecoder(40, (16, 8), skip_channels=0, full_res_channels=4)
    with pytest.raises(ValueError, match="decoder_full_res_channels"):
        tiny_config.replace(decoder_skip_channels=0, decoder_full_res_channels=8)


def test_score_fusion_mixes_class_token_and_lesion_map_peak(tiny_config):
    import torch.nn.functional as F

    torch.manual_seed(0)
    x = torch.randn(3, 3, 64, 64)
    plain = MedSADCLIP(tiny_config.replace(score_fusion="cls", tta_flip=False)).eval()
    with torch.no_grad():
        out = plain(x)
    assert torch.equal(out["score"], out["score_cls"])
    fused_model = MedSADCLIP(tiny_config.replace(score_fusion="cls_max_mask", tta_flip=False)).eval()
    fused_model.load_state_dict(plain.state_dict())
    with torch.no_grad():
        fused = fused_model(x)
    peak = F.avg_pool2d(fused["mask"][:, 1:], 5, 1, 2).flatten(1).max(1).values
    assert torch.allclose(fused["score"], 0.5 * (out["score_cls"] + peak))
    with pytest.raises(ValueError, match="score_fusion"):
        tiny_config.replace(score_fusion="max")


def _same_weights(tiny_config, kind: str, first: dict, second: dict) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Two eval-mode models of ``kind`` (``medsad``: the tiny preset; ``unet``: the baseline at 64)
    with the same weights, the flip-averaging options of ``first`` and ``second`` (the rest: flip
    averaging over columns only)."""
    from medsad_monai.networks.unet_baseline import UNetBaseline

    def build(options: dict) -> torch.nn.Module:
        options = {"tta_flip": True, "tta_flip_rows": False, **options}
        return (MedSADCLIP(tiny_config.replace(**options)) if kind == "medsad" else UNetBaseline(64, **options)).eval()

    torch.manual_seed(0)
    a, b = build(first), build(second)
    b.load_state_dict(a.state_dict())
    return a, b


@pytest.mark.parametrize("kind", ["medsad", "unet"])
def test_flip_averaging_makes_eval_predictions_mirror_equivariant(tiny_config, kind):
    model, plain = _same_weights(tiny_config, kind, {"tta_flip": True}, {"tta_flip": False})
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        a, b = model(x), model(x.flip(-1))
        p, q = plain(x), plain(x.flip(-1))
    assert torch.allclose(a["mask"], b["mask"].flip(-1), atol=1e-5)
    assert torch.allclose(a["score"], b["score"], atol=1e-5)
    assert not torch.allclose(p["mask"], q["mask"].flip(-1), atol=1e-5)  # without it: not equivariant
    assert torch.allclose(a["mask"], 0.5 * (p["mask"] + q["mask"].flip(-1)), atol=1e-6)
    with torch.no_grad():  # the per-call switch overrides the config both ways
        assert torch.allclose(model(x, flip_tta=False)["mask"], p["mask"], atol=1e-6)
        assert torch.allclose(plain(x, flip_tta=True)["mask"], a["mask"], atol=1e-6)
    with torch.no_grad():  # training sees one view: no averaging
        assert torch.allclose(model.train()(x)["mask"], plain.train()(x)["mask"], atol=1e-6)


@pytest.mark.parametrize("kind", ["medsad", "unet"])
def test_flip_averaging_over_rows_too_makes_predictions_equivariant_to_both_mirrors(tiny_config, kind):
    """``tta_flip_rows``: the four views (as is, columns, rows, both mirrored) averaged, so an
    image mirrored along its rows (left-right for a RAS-view volume slice) gets the mirrored
    answer; without it only the column mirror does."""
    from medsad_monai.networks.unet_baseline import UNetBaseline

    model, columns_only = _same_weights(tiny_config, kind, {"tta_flip_rows": True}, {"tta_flip_rows": False})
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        a, b = model(x), model(x.flip(-2))
        p, q = columns_only(x), columns_only(x.flip(-2))
        views = [model(v, flip_tta=False)["mask"] for v in (x, x.flip(-1), x.flip(-2), x.flip(-2, -1))]
    assert torch.allclose(a["mask"], b["mask"].flip(-2), atol=1e-5)
    assert torch.allclose(a["score"], b["score"], atol=1e-5)
    assert not torch.allclose(p["mask"], q["mask"].flip(-2), atol=1e-5)
    mirrored_back = views[0] + views[1].flip(-1) + views[2].flip(-2) + views[3].flip(-2, -1)
    assert torch.allclose(a["mask"], mirrored_back / 4, atol=1e-6)
    if kind == "unet":  # the switch is saved with the baseline's config
        assert UNetBaseline(**model.config_dict()).tta_flip_rows


def test_unet_baseline_image_logit_stays_finite_when_its_score_saturates_under_bf16():
    """The baseline's image logit is logit(max lesion probability) clamped to 1 - 1e-6; in bf16
    that bound is 1.0 and the logit infinite, which made every logged training loss NaN under bf16
    autocast (CPUs with bf16 units, CUDA; 2026-12-05). The score is computed in fp32."""
    from medsad_monai.networks.unet_baseline import UNetBaseline

    class Confident(torch.nn.Module):  # a UNet sure of a lesion everywhere
        def forward(self, x):
            logits = torch.tensor([-12.0, 12.0], dtype=torch.bfloat16)[None, :, None, None]  # as a conv under autocast
            return logits.expand(x.shape[0], 2, *x.shape[-2:])

    model = UNetBaseline(64).train()
    model.net = Confident()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.rand(2, 3, 64, 64))
    assert torch.isfinite(out["image_logits"]).all(), out["image_logits"]
    loss = MedSADLoss.from_config(load_preset("tiny"))
    parts = loss({k: v.float() for k, v in out.items()}, torch.ones(2, 1, 64, 64), torch.ones(2))
    assert torch.isfinite(parts["loss"]) and torch.isfinite(parts["bce"])
