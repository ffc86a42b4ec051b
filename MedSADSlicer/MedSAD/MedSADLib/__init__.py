"""MedSAD for 3D Slicer, without Qt: run a volume node through a local checkpoint or a MONAI
Label server and turn the result into MRML nodes of an explicitly given scene.

The widget (``MedSAD.py``) and the Segment Editor effect are thin layers over this package;
it is tested in CI against the real MRML classes of the ``slicer-core`` wheel.
"""

from .backends import LocalBackend, MedSADError, MedSADResult, ServerBackend
from .logic import MedSADLogic, OutputNodes
from .nodes import SEGMENT_NAME

__all__ = ["LocalBackend", "ServerBackend", "MedSADError", "MedSADResult", "MedSADLogic", "OutputNodes", "SEGMENT_NAME"]
