"""Losses: MCLoss and the combined MedSADLoss."""

from __future__ import annotations

from medsad_monai.losses.mc_loss import MCLoss
from medsad_monai.losses.medsad_loss import MedSADLoss, lesion_logit

__all__ = ["MCLoss", "MedSADLoss", "lesion_logit"]
