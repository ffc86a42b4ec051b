"""MedSAD for 3D Slicer, without Qt: run a volume node through a local checkpoint or a MONAI
Label server and turn the result into MRML nodes of an explicitly given scene.

Modules, each importing only those before it (no import circles):

- ``results``: ``MedSADError``, ``MedSADResult``, progress / cancel types, the ``Backend`` interface;
- ``nodes``: MRML helpers (voxels, geometry, segment, table, plot, file I/O);
- ``backends``: ``LocalBackend``, ``ServerBackend`` (one ``run(volume_node, threshold, progress,
  cancel)``) and the shared factory ``make_backend``;
- ``logic``: ``MedSADLogic`` (check, run, outputs, re-threshold, export);
- ``parameters``: ``MedSADParameters``, the module's state in a parameter node of the scene;
- ``gui``: settings and install dialogs shared by the module and the Segment Editor effect (the
  only part that needs the Slicer application; not imported here).

The widget (``MedSAD.py``) and the Segment Editor effect are thin layers over this package; it
is tested in CI against the real MRML classes of the ``slicer-core`` wheel.
"""

from .backends import (
    BACKEND_LOCAL,
    BACKEND_SERVER,
    BACKENDS,
    DEFAULT_SERVER_URL,
    LocalBackend,
    ServerBackend,
    make_backend,
)
from .logic import MedSADLogic, OutputNodes
from .nodes import SEGMENT_NAME
from .parameters import MedSADParameters
from .results import Backend, CancelFlag, MedSADError, MedSADResult, describe_decision

__all__ = [
    "BACKEND_LOCAL",
    "BACKEND_SERVER",
    "BACKENDS",
    "DEFAULT_SERVER_URL",
    "Backend",
    "CancelFlag",
    "LocalBackend",
    "MedSADError",
    "MedSADLogic",
    "MedSADParameters",
    "MedSADResult",
    "OutputNodes",
    "SEGMENT_NAME",
    "ServerBackend",
    "describe_decision",
    "make_backend",
]
