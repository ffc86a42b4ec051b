from .medsad import MedSADTaskConfig, ServeConfig

__all__ = ["MedSADTaskConfig", "ServeConfig"]
