"""Checkpoint format: round trip, backbone identity, atomic writes, weights_only loading."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medsad_monai.checkpoint import (
    context_slices_of,
    intensity_of,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from medsad_monai.data.volumes import normalize_intensity
from medsad_monai.networks import MedSADCLIP


def _outputs(model, x):
    with torch.no_grad():
        return model.eval()(x)


def test_random_init_round_trip_gives_identical_outputs(tiny_config, tmp_path):
    torch.manual_seed(0)
    model = MedSADCLIP(tiny_config)
    with torch.no_grad():  # make the heads non-trivial
        for p in model.trainable_parameters():
            p.add_(torch.randn_like(p) * 0.01)
    x = torch.randn(3, 3, model.image_size, model.image_size)
    expected = _outputs(model, x)
    path = save_checkpoint(model, tmp_path / "m.pt", extra={"epoch": 3})
    torch.manual_seed(123)  # a different random init must be overwritten by the saved one
    loaded, payload = load_checkpoint(path)
    got = _outputs(loaded, x)
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
    assert payload["extra"]["epoch"] == 3
    assert payload["backbone"]["pretrained"] == "none"
    assert any(k.startswith("backbone.") for k in payload["state_dict"])


def _tiny_weight_file(tmp_path, seed):
    import open_clip

    from medsad_monai.configs import load_preset, register_model_configs

    register_model_configs()
    torch.manual_seed(seed)
    clip = open_clip.create_model(load_preset("tiny").clip_model, pretrained=None, force_image_size=64)
    path = tmp_path / f"tiny_clip_{seed}.pt"
    torch.save(clip.state_dict(), path)
    return path


def test_pretrained_file_backbone_is_referenced_by_hash_not_saved(frozen_tiny_config, tmp_path):
    weights = _tiny_weight_file(tmp_path, seed=1)
    cfg = frozen_tiny_config.replace(clip_pretrained=str(weights))
    torch.manual_seed(0)
    model = MedSADCLIP(cfg)
    x = torch.randn(2, 3, 64, 64)
    expected = _outputs(model, x)
    path = save_checkpoint(model, tmp_path / "m.pt")
    payload = read_checkpoint(path)
    assert not any(k.startswith("backbone.") for k in payload["state_dict"])
    assert len(payload["backbone"]["sha256"]) == 64
    loaded, _ = load_checkpoint(path)
    got = _outputs(loaded, x)
    assert torch.equal(expected["mask"], got["mask"])
    # the same weights found at another path on this machine are accepted
    moved = tmp_path / "elsewhere.pt"
    moved.write_bytes(weights.read_bytes())
    load_checkpoint(path, clip_pretrained=str(moved))


def test_checkpoint_of_another_backbone_is_refused_with_the_difference(frozen_tiny_config, tmp_path):
    weights = _tiny_weight_file(tmp_path, seed=1)
    other = _tiny_weight_file(tmp_path, seed=2)
    model = MedSADCLIP(frozen_tiny_config.replace(clip_pretrained=str(weights)))
    path = save_checkpoint(model, tmp_path / "m.pt")
    with pytest.raises(ValueError, match="sha256"):
        load_checkpoint(path, clip_pretrained=str(other))


def test_loading_rejects_non_checkpoints_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot be read"):
        load_checkpoint(junk)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(ValueError, match="not a MedSAD checkpoint"):
        load_checkpoint(other)


def test_failed_write_keeps_the_previous_checkpoint(tiny_config, tmp_path, monkeypatch):
    model = MedSADCLIP(tiny_config)
    path = save_checkpoint(model, tmp_path / "m.pt", extra={"epoch": 1})

    def boom(*_a, **_k):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError):
        save_checkpoint(model, path, extra={"epoch": 2})
    monkeypatch.undo()
    assert read_checkpoint(path)["extra"]["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]


def test_the_intensity_normalisation_travels_with_the_checkpoint(tiny_config, tmp_path):
    from medsad_monai.engine.inference import Predictor

    model = MedSADCLIP(tiny_config)
    path = save_checkpoint(model, tmp_path / "m.pt", intensity="foreground")
    assert read_checkpoint(path)["intensity"] == "foreground"
    predictor = Predictor.from_checkpoint(path)
    assert predictor.intensity == "foreground"
    volume = np.random.default_rng(0).uniform(0, 900, (8, 8, 4)).astype(np.float32) + 100.0
    assert np.array_equal(predictor.normalize_volume(volume), normalize_intensity(volume, method="foreground"))
    old = read_checkpoint(path)
    del old["intensity"]  # written before the choice existed: trained on percentile-normalised volumes
    assert intensity_of(old) == "percentile"
    with pytest.raises(ValueError, match="unknown intensity normalisation 'zscore'"):
        intensity_of({**old, "intensity": "zscore"}, "m.pt")
    with pytest.raises(ValueError, match="intensity 'zscore'"):
        save_checkpoint(model, tmp_path / "n.pt", intensity="zscore")


def test_the_mirror_channel_travels_with_the_checkpoint_and_inference_feeds_the_mirror(tiny_config, tmp_path):
    """A model trained beside the left-right mirror is served the mirror: the volume prediction
    equals the model run on ``take_mirror_slab`` of every slice (midline from the whole volume),
    in the RAS view of an oblique LAS-stored volume too; 2-D images are refused in words."""
    from medsad_monai.checkpoint import mirror_channel_of
    from medsad_monai.data.mirror import reflection_sum, take_mirror_slab
    from medsad_monai.engine.inference import Predictor

    torch.manual_seed(0)
    model = MedSADCLIP(tiny_config)
    path = save_checkpoint(model, tmp_path / "m.pt", mirror_channel=True)
    predictor = Predictor.from_checkpoint(path, precision="fp32")
    assert predictor.mirror_channel is True
    rng = np.random.default_rng(0)
    volume = np.zeros((24, 20, 5), np.float32)
    volume[3:19] = rng.uniform(0.3, 1.0, (16, 20, 5))
    k = reflection_sum(volume)
    result = predictor.predict_volume(volume, axis=2, skip_background=False)
    by_slab = predictor.predict_slices([take_mirror_slab(volume, 2, i, k) for i in range(5)])
    for i, (prob, score) in enumerate(by_slab):
        np.testing.assert_allclose(result.probability[:, :, i], prob, atol=1e-5)
        assert result.model_scores[i] == pytest.approx(score, abs=1e-5)
    alone = Predictor(predictor.model, precision="fp32").predict_volume(volume, axis=2, skip_background=False)
    assert not np.allclose(alone.probability, result.probability, atol=1e-4)
    # stored left-right mirrored (LAS): the model mirrors the RAS view, so the answer mirrors back
    las = np.diag([-1.0, 1.0, 1.0, 1.0])
    stored = volume[::-1].copy()
    mirrored = predictor.predict_volume(stored, axis=2, skip_background=False, affine=las)
    np.testing.assert_allclose(mirrored.probability[::-1], result.probability, atol=1e-5)
    with pytest.raises(ValueError, match="not 2-D images"):
        predictor.predict_image(np.full((32, 32), 0.5, np.float32))
    old = read_checkpoint(path)
    del old["mirror_channel"]  # written before the choice existed
    assert mirror_channel_of(old) is False
    with pytest.raises(ValueError, match="expected true or false"):
        mirror_channel_of({**old, "mirror_channel": "yes"}, "m.pt")
    with pytest.raises(ValueError, match="no context slices"):
        save_checkpoint(model, tmp_path / "n.pt", mirror_channel=True, context_slices=1)
    with pytest.raises(ValueError, match="RAS view"):
        Predictor(model, mirror_channel=True, orientation="file")


def test_context_slices_travel_with_the_checkpoint_and_inference_feeds_the_neighbours(tiny_config, tmp_path):
    """A model trained on slabs (a slice between its neighbours) is served slabs: the volume
    prediction equals the model run on ``take_slab`` of every slice, and differs from slices alone."""
    from medsad_monai.data.volumes import take_slab
    from medsad_monai.engine.inference import Predictor

    torch.manual_seed(0)
    model = MedSADCLIP(tiny_config)
    path = save_checkpoint(model, tmp_path / "m.pt", context_slices=1)
    predictor = Predictor.from_checkpoint(path)
    assert predictor.context_slices == 1
    rng = np.random.default_rng(0)
    volume = rng.uniform(0.2, 1.0, (20, 24, 5)).astype(np.float32)
    result = predictor.predict_volume(volume, axis=2, skip_background=False)
    by_slab = predictor.predict_slices([take_slab(volume, 2, i, 1) for i in range(5)])
    for i, (prob, score) in enumerate(by_slab):
        np.testing.assert_allclose(result.probability[:, :, i], prob, atol=1e-5)
        assert result.model_scores[i] == pytest.approx(score, abs=1e-5)
    alone = Predictor(predictor.model, context_slices=0).predict_volume(volume, axis=2, skip_background=False)
    assert not np.allclose(alone.probability, result.probability, atol=1e-4)
    old = read_checkpoint(path)
    del old["context_slices"]  # written before the choice existed: one slice repeated to 3 channels
    assert context_slices_of(old) == 0
    with pytest.raises(ValueError, match="asks for 2 context slices"):
        context_slices_of({**old, "context_slices": 2}, "m.pt")
    with pytest.raises(ValueError, match="context_slices 2"):
        save_checkpoint(model, tmp_path / "n.pt", context_slices=2)
    with pytest.raises(ValueError, match="context_slices 3"):
        Predictor(model, context_slices=3)


def test_the_training_cases_are_read_from_the_record_else_the_familiarity_reference():
    from medsad_monai.checkpoint import trained_cases_of

    assert trained_cases_of({"extra": {"train_cases": ["a", "b"]}, "familiarity": {"cases": ["a"]}}) == (
        ["a", "b"],
        True,
    )
    # older checkpoints: the familiarity reference names (some of) them, and says it may not be all
    assert trained_cases_of({"extra": {}, "familiarity": {"cases": ["a"]}}) == (["a"], False)
    assert trained_cases_of({"extra": {"train_cases": "a"}}) == ([], False)  # not a list of names: not trusted
    assert trained_cases_of({}) == ([], False)
