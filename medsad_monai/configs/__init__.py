"""Model presets (JSON files beside this module) and the tiny open_clip test config."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from medsad_monai.config import MedSADConfig

__all__ = ["PRESETS", "load_preset", "model_config_dir", "register_model_configs"]

PRESETS: tuple[str, ...] = ("full", "adapt", "adapt_prompt", "adapt_prompt_tpca", "tiny")


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
