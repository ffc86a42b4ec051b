"""Bad input gets a clear error that names the value and says what to do."""

from __future__ import annotations

import pytest
import torch

from medsad_monai.config import MedSADConfig
from medsad_monai.configs import load_preset
from medsad_monai.networks import MedSADCLIP


@pytest.fixture(scope="module")
def model():
    return MedSADCLIP(load_preset("tiny", image_size=64)).eval()


@pytest.mark.parametrize(
    "shape, message",
    [
        ((2, 1, 64, 64), "expected 3 channels, got 1"),
        ((3, 64, 64), "expected a 4-D batch"),
        ((1, 2, 3, 64, 64), "expected a 4-D batch"),
        ((2, 3, 32, 64), "expected spatial size 64x64, got 32x64"),
        ((0, 3, 64, 64), "empty batch"),
    ],
)
def test_wrong_shapes_are_rejected_with_advice(model, shape, message):
    with pytest.raises(ValueError, match=message):
        model(torch.zeros(shape))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_input_is_rejected(model, bad):
    x = torch.zeros(1, 3, 64, 64)
    x[0, 1, 5, 5] = bad
    with pytest.raises(ValueError, match="1 NaN/inf"):
        model(x)


def test_unknown_model_name_is_rejected():
    with pytest.raises(ValueError, match="unknown open_clip model 'ViT-Q-99'"):
        MedSADCLIP(MedSADConfig(clip_model="ViT-Q-99", clip_pretrained="none"))


def test_missing_weight_file_is_a_file_not_found_error(tmp_path):
    missing = tmp_path / "clip.bin"
    with pytest.raises(FileNotFoundError, match="clip.bin"):
        MedSADCLIP(load_preset("tiny", clip_pretrained=str(missing)))


def test_unknown_tag_lists_known_tags():
    with pytest.raises(ValueError, match="neither a file nor an open_clip pretrained tag"):
        MedSADCLIP(load_preset("full", clip_model="ViT-B-16", clip_pretrained="no-such-tag"))


def test_tag_without_network_fails_loudly_with_how_to():
    # HF_HUB_OFFLINE=1 (conftest): the download fails at once; never a silent random init.
    with pytest.raises(RuntimeError, match="pass the local file path"):
        MedSADCLIP(load_preset("full", clip_model="ViT-B-16", clip_pretrained="openai"))


def test_invalid_config_values_name_the_key():
    with pytest.raises(ValueError, match="decoder_norm"):
        MedSADConfig(decoder_norm="layer")
    with pytest.raises(ValueError, match="unknown MedSAD config key"):
        MedSADConfig.from_dict({"clip_modle": "ViT-B-16"})
    with pytest.raises(ValueError, match="unknown preset"):
        load_preset("huge")
    with pytest.raises(ValueError, match="tap_layers"):
        MedSADCLIP(load_preset("tiny", tap_layers=[2, 4, 99]))


def test_quick_gelu_is_chosen_for_openai_weights_only():
    import open_clip

    from medsad_monai.networks.clip_backbone import CLIPBackbone

    auto = CLIPBackbone._auto_quick_gelu
    assert auto(open_clip, "ViT-L-14", "tag", "openai") is True
    assert auto(open_clip, "ViT-B-16", "tag", "laion2b_s34b_b88k") is False
    assert auto(open_clip, "ViT-B-16-quickgelu", "tag", "openai") is False  # the config already has it
    assert auto(open_clip, "ViT-L-14", "path", "/models/ViT-L-14-openai.bin") is True
    assert auto(open_clip, "ViT-L-14", "none", None) is False
