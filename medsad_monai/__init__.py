"""MedSAD-CLIP on MONAI: supervised CLIP for medical anomaly detection and segmentation.

The public entry points are:

- :class:`medsad_monai.config.MedSADConfig` and :func:`medsad_monai.configs.load_preset`
- :class:`medsad_monai.networks.MedSADCLIP` (the model)
- :class:`medsad_monai.losses.MedSADLoss` and :class:`medsad_monai.losses.MCLoss`
- :func:`medsad_monai.checkpoint.save_checkpoint` / :func:`medsad_monai.checkpoint.load_checkpoint`
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
