"""Model presets (JSON files beside this module), the paper's per-dataset settings
(``datasets/*.json``) and the tiny open_clip test config."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from medsad_monai.config import MedSADConfig

__all__ = [
    "DATASETS",
    "PAPER_PRESETS",
    "PRESETS",
    "DatasetConfig",
    "load_dataset_config",
    "load_preset",
    "model_config_dir",
    "native_image_size",
    "register_model_configs",
]

PRESETS: tuple[str, ...] = ("full", "adapt", "adapt_prompt", "adapt_prompt_tpca", "tiny")
#: The presets of the paper's ablation (Table 3), in its order.
PAPER_PRESETS: tuple[str, ...] = ("adapt", "adapt_prompt", "adapt_prompt_tpca", "full")
#: The paper's datasets (``datasets/<name>.json``).
DATASETS: tuple[str, ...] = ("brain", "retina", "lung", "breast")


def model_config_dir() -> Path:
    """Folder with MedSAD's own open_clip JSON model configs (``MedSAD-Tiny``)."""
    return Path(str(resources.files(__package__).joinpath("model_configs")))


_registered = False


def register_model_configs() -> None:
    """Register the shipped open_clip model configs once (open_clip's ``add_model_config``)."""
    global _registered
    if _registered:
        return
    import open_clip

    open_clip.add_model_config(model_config_dir())
    _registered = True


def load_preset(name: str, **overrides: Any) -> MedSADConfig:
    """Load a preset by name and apply ``overrides`` (``None`` values are ignored).

    Raises:
        ValueError: unknown preset name or invalid override.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    text = resources.files(__package__).joinpath(f"{name}.json").read_text(encoding="utf-8")
    data: dict[str, Any] = json.loads(text)
    data.update({k: v for k, v in overrides.items() if v is not None})
    return MedSADConfig.from_dict(data)


def native_image_size(clip_model: str) -> int:
    """The input side of an open_clip architecture (its ``vision_cfg.image_size``), without
    building the model.

    Raises:
        ValueError: an unknown architecture.
    """
    import open_clip

    register_model_configs()
    cfg = open_clip.get_model_config(clip_model)
    if cfg is None:
        raise ValueError(f"unknown open_clip model {clip_model!r} (see open_clip.list_models())")
    size = cfg.get("vision_cfg", {}).get("image_size", 224)
    return int(size[0] if isinstance(size, (list, tuple)) else size)


@dataclass(frozen=True)
class DatasetConfig:
    """The paper's setting for one of its datasets (``configs/datasets/<name>.json``).

    Args:
        dataset: ``brain``, ``retina``, ``lung`` or ``breast``.
        paper_name: the dataset's name in the paper.
        data_source: which public data set and folder layout it expects.
        layout: the layout reader (``bmad``, ``busi``, ``sricl``).
        protocol: the :class:`~medsad_monai.data.protocol.DataProtocol` fields (which folders
            or lists train and test).
        paper_counts: the paper's training / test image counts (``None`` where not recorded).
        model: :class:`~medsad_monai.config.MedSADConfig` fields laid over a preset.
        train: ``medsad train`` options (``augment``, ``val_fraction``).
        test_fraction: for ``busi``/``sricl`` without split lists: the test share of the seeded
            split ``medsad reproduce`` writes (``None``: the layout's folders define the test set).
        sources: where every value comes from (the paper, MVFA's code, BMAD, ours), in words.
    """

    dataset: str
    paper_name: str
    data_source: str
    layout: str
    protocol: dict[str, Any]
    paper_counts: dict[str, int | None]
    model: dict[str, Any]
    train: dict[str, Any] = field(default_factory=dict)
    test_fraction: float | None = None
    sources: dict[str, str] = field(default_factory=dict)

    def model_config(self, preset: str = "full", **overrides: Any) -> MedSADConfig:
        """``preset`` with this dataset's model settings, then ``overrides`` (``None`` ignored)."""
        return load_preset(preset, **{**self.model, **{k: v for k, v in overrides.items() if v is not None}})

    def data_protocol(self, **overrides: Any):
        """The dataset's :class:`~medsad_monai.data.protocol.DataProtocol`, with the non-``None``
        ``overrides`` (``bmad_usage``, ``split_lists``, ``busi_normal``) applied."""
        from medsad_monai.data.protocol import DataProtocol

        return DataProtocol.from_dict(self.protocol).replace(**overrides)


def load_dataset_config(name: str) -> DatasetConfig:
    """The paper's setting for dataset ``name`` (one of :data:`DATASETS`).

    Raises:
        ValueError: an unknown name.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    text = resources.files(__package__).joinpath("datasets", f"{name}.json").read_text(encoding="utf-8")
    from medsad_monai.config import strict_from_dict

    config = strict_from_dict(DatasetConfig, json.loads(text), f"dataset config {name!r}")
    MedSADConfig.from_dict({**MedSADConfig().to_dict(), **config.model})  # refuse unknown or invalid fields
    return config
