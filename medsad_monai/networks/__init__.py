"""MedSAD-CLIP network components, one paper component per module."""

from __future__ import annotations

from medsad_monai.networks.adapters import MultiLevelAdapters, TokenAdapter
from medsad_monai.networks.classifier import AnomalyClassifier
from medsad_monai.networks.clip_backbone import CLIPBackbone
from medsad_monai.networks.medsad_clip import MedSADCLIP
from medsad_monai.networks.prompt_learner import PromptLearner, TextFeatures
from medsad_monai.networks.seg_decoder import SegDecoder
from medsad_monai.networks.similarity_map import dot_product_map
from medsad_monai.networks.tpca import TokenPatchCrossAttention

__all__ = [
    "AnomalyClassifier",
    "CLIPBackbone",
    "MedSADCLIP",
    "MultiLevelAdapters",
    "PromptLearner",
    "SegDecoder",
    "TextFeatures",
    "TokenAdapter",
    "TokenPatchCrossAttention",
    "dot_product_map",
]
