from .medsad import MedSADScoring

__all__ = ["MedSADScoring"]
