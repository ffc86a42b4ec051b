from .medsad import MedSADTrain

__all__ = ["MedSADTrain"]
