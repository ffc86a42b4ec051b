"""The MedSAD module's state in the scene: a ``vtkMRMLScriptedModuleNode`` (singleton tag and
``ModuleName`` attribute ``MedSAD``), so it is saved with the scene and restored on reload.

Slicer's current scripted-module template declares this state with ``slicer.parameterNodeWrapper``
and typed fields; that needs the Slicer application, so :class:`MedSADParameters` is the same
idea without Qt: typed properties over the node's parameters (strings) and node references,
with the wrapper's naming (a parameter or reference role named after the field). The widget
and the Segment Editor effect read and write the module state only through this class.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import slicer

from .backends import BACKEND_LOCAL, BACKENDS, DEFAULT_SERVER_URL
from .results import MedSADError, check_min_lesion_mean, check_min_lesion_mm3, check_profile, check_threshold

MODULE_NAME = "MedSAD"
NODE_CLASS = "vtkMRMLScriptedModuleNode"


def _optional_number(field: str, check: Callable[[float | None], float | None], doc: str) -> property:
    """A parameter-node property holding an optional number: ``None`` (unset, the model's
    calibrated value) or a value ``check`` accepts; stored through ``_get_optional`` /
    ``_set_optional``."""

    def get(self: MedSADParameters) -> float | None:
        return self._get_optional(field, check)

    def set(self: MedSADParameters, value: float | None) -> None:
        self._set_optional(field, check, value)

    return property(get, set, doc=doc)


class MedSADParameters:
    """Typed access to the MedSAD parameter node.

    Fields: ``input_volume`` (scalar volume), ``backend`` (``local`` / ``server``),
    ``checkpoint`` (path), ``server_url``, ``threshold`` (lesion-map threshold in (0, 1), or None
    for the model's calibrated one), ``min_lesion_mm3`` (minimum lesion size in mm³, 0 keeps every
    lesion, or None for the model's calibrated one), ``min_lesion_mean`` (minimum mean probability
    of a kept lesion, 0 keeps every lesion, or None for the model's calibrated one), ``profile``
    (the model's calibration profile to decide at, e.g. one per site or scanner; ``""`` for its
    own operating point, or the one the server is started with), ``output_segmentation`` and
    ``output_table``.
    """

    #: field -> parameter name (strings)
    PARAMETERS = {
        "backend": "backend",
        "checkpoint": "checkpoint",
        "server_url": "serverUrl",
        "threshold": "threshold",
        "min_lesion_mm3": "minLesionMm3",
        "min_lesion_mean": "minLesionMean",
        "profile": "profile",
    }
    #: field -> node reference role
    REFERENCES = {
        "input_volume": "inputVolume",
        "output_segmentation": "outputSegmentation",
        "output_table": "outputTable",
    }

    node: Any  #: the vtkMRMLScriptedModuleNode

    def __init__(self, node: Any) -> None:
        if node is None or not node.IsA(NODE_CLASS):
            raise MedSADError(f"{node!r} is not a {NODE_CLASS}")
        self.node = node

    # ----------------------------------------------------------------- the node

    @classmethod
    def find(cls, scene: Any) -> MedSADParameters | None:
        """The scene's MedSAD parameter node, if it has one."""
        node = scene.GetSingletonNode(MODULE_NAME, NODE_CLASS)
        return cls(node) if node is not None else None

    @classmethod
    def get_or_create(
        cls,
        scene: Any,
        backend: str | None = None,
        checkpoint: str | None = None,
        server_url: str | None = None,
        profile: str | None = None,
    ) -> MedSADParameters:
        """The scene's MedSAD parameter node; a new one (with the given defaults, e.g. the
        choices remembered from the last session) when the scene has none."""
        found = cls.find(scene)
        if found is not None:
            return found
        node = slicer.vtkMRMLScriptedModuleNode()
        node.SetSingletonTag(MODULE_NAME)
        node.SetName(scene.GenerateUniqueName(MODULE_NAME))
        node.SetAttribute("ModuleName", MODULE_NAME)
        node = scene.AddNode(node)
        params = cls(node)
        was = node.StartModify()
        params.backend = backend if backend in BACKENDS else BACKEND_LOCAL
        params.checkpoint = checkpoint or ""
        params.server_url = server_url or DEFAULT_SERVER_URL
        try:
            params.profile = profile or ""
        except MedSADError:
            params.profile = ""  # a remembered name this version refuses: the model's own
        params.threshold = None
        node.EndModify(was)
        return params

    def modify(self) -> _Batch:
        """``with params.modify(): ...``: one Modified event for several changes."""
        return _Batch(self.node)

    # ----------------------------------------------------------------- fields

    @property
    def backend(self) -> str:
        value = self.node.GetParameter(self.PARAMETERS["backend"]) or BACKEND_LOCAL
        return value if value in BACKENDS else BACKEND_LOCAL

    @backend.setter
    def backend(self, value: str) -> None:
        if value not in BACKENDS:
            raise MedSADError(f"backend {value!r}: expected one of {', '.join(BACKENDS)}")
        self._set("backend", value)

    @property
    def checkpoint(self) -> str:
        return self.node.GetParameter(self.PARAMETERS["checkpoint"]) or ""

    @checkpoint.setter
    def checkpoint(self, value: str) -> None:
        self._set("checkpoint", (value or "").strip())

    @property
    def server_url(self) -> str:
        return self.node.GetParameter(self.PARAMETERS["server_url"]) or DEFAULT_SERVER_URL

    @server_url.setter
    def server_url(self, value: str) -> None:
        self._set("server_url", (value or "").strip() or DEFAULT_SERVER_URL)

    @property
    def profile(self) -> str:
        try:
            return check_profile(self.node.GetParameter(self.PARAMETERS["profile"]))
        except MedSADError:
            return ""  # a scene edited by hand: the model's own operating point

    @profile.setter
    def profile(self, value: str | None) -> None:
        self._set("profile", check_profile(value))

    threshold = _optional_number(
        "threshold", check_threshold, "The lesion-map threshold chosen by hand, or None: the model's calibrated one."
    )
    min_lesion_mm3 = _optional_number(
        "min_lesion_mm3",
        check_min_lesion_mm3,
        "The minimum lesion size (mm³) chosen by hand, or None: the model's calibrated one.",
    )
    min_lesion_mean = _optional_number(
        "min_lesion_mean",
        check_min_lesion_mean,
        "The minimum mean probability of a kept lesion chosen by hand, or None: the model's calibrated one.",
    )

    @property
    def input_volume(self) -> Any:
        return self._get_node("input_volume")

    @input_volume.setter
    def input_volume(self, node: Any) -> None:
        self._set_node("input_volume", node)

    @property
    def output_segmentation(self) -> Any:
        return self._get_node("output_segmentation")

    @output_segmentation.setter
    def output_segmentation(self, node: Any) -> None:
        self._set_node("output_segmentation", node)

    @property
    def output_table(self) -> Any:
        return self._get_node("output_table")

    @output_table.setter
    def output_table(self, node: Any) -> None:
        self._set_node("output_table", node)

    def ready(self) -> bool:
        """True when Run has what it needs: an input volume and a checkpoint (local) or server."""
        return self.input_volume is not None and (self.backend != BACKEND_LOCAL or bool(self.checkpoint))

    def as_dict(self) -> dict[str, Any]:
        """Every field (node fields as node IDs), e.g. to compare states."""
        values: dict[str, Any] = {name: getattr(self, name) for name in self.PARAMETERS}
        for name in self.REFERENCES:
            node = getattr(self, name)
            values[name] = node.GetID() if node is not None else None
        return values

    # ----------------------------------------------------------------- storage

    def _set(self, field: str, value: str) -> None:
        name = self.PARAMETERS[field]
        if self.node.GetParameter(name) != value:
            self.node.SetParameter(name, value)

    def _get_optional(self, field: str, check: Callable[[float | None], float | None]) -> float | None:
        """A number set by hand (``check`` passes it), or None: the model's calibrated value."""
        value = self.node.GetParameter(self.PARAMETERS[field]) or ""
        try:
            return check(float(value)) if value else None
        except (ValueError, MedSADError):
            return None  # a scene edited by hand: fall back to the calibrated value

    def _set_optional(self, field: str, check: Callable[[float | None], float | None], value: float | None) -> None:
        value = check(value)
        self._set(field, "" if value is None else repr(float(value)))

    def _get_node(self, field: str) -> Any:
        return self.node.GetNodeReference(self.REFERENCES[field])

    def _set_node(self, field: str, node: Any) -> None:
        role = self.REFERENCES[field]
        node_id = node.GetID() if node is not None else None
        if self.node.GetNodeReferenceID(role) != node_id:
            self.node.SetNodeReferenceID(role, node_id)


class _Batch:
    def __init__(self, node: Any) -> None:
        self.node = node
        self.was = 0

    def __enter__(self) -> None:
        self.was = self.node.StartModify()

    def __exit__(self, *exc: Any) -> None:
        self.node.EndModify(self.was)
