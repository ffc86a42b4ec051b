from .medsad import MedSADUncertain

__all__ = ["MedSADUncertain"]
