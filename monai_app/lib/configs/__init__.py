from ..serve_config import ServeConfig
from .medsad import MedSADTaskConfig

__all__ = ["MedSADTaskConfig", "ServeConfig"]
