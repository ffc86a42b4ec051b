from .medsad import MedSADInfer

__all__ = ["MedSADInfer"]
