from .calibrate import MedSADCalibrate
from .medsad import MedSADTrain

__all__ = ["MedSADCalibrate", "MedSADTrain"]
