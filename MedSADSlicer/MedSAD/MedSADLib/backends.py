"""Where the model runs: a local checkpoint (``medsad_monai``, needs torch) or a MONAI Label
server (``monailabel.client``, no torch). Both return a :class:`MedSADResult` whose arrays are in
Slicer's ``arrayFromVolume`` order (K, J, I): one score per K slice."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

ProgressFn = Callable[[int, int], None]
CancelFn = Callable[[], bool]


class MedSADError(RuntimeError):
    """A problem the user can act on; the message says what and where."""


@dataclass
class MedSADResult:
    """Per-slice anomaly scores and the lesion mask of one volume.

    The decisions come from the model's calibrated operating point (``medsad calibrate``; the
    0.5 fallback for an uncalibrated checkpoint), as in ``medsad infer`` and the server.

    Args:
        slice_scores: one calibrated score per K slice (Slicer's slice index).
        mask: (K, J, I) uint8 post-processed lesion mask at ``threshold``.
        threshold: the lesion-map threshold of ``mask``.
        slice_threshold: a slice is abnormal when its score is at or above it.
        volume_score: the volume's calibrated score.
        volume_abnormal: the volume decision (``volume_score >= volume_threshold``).
        volume_threshold: the volume decision threshold.
        probability: (K, J, I) float32 lesion probability when the backend returns it (local);
            then the mask can be re-thresholded without re-running.
        backend: ``"local"`` or ``"server"``.
        info: anything else the backend reported (plain types), e.g. ``operating_point``.
        redecide: local backend only: re-decides everything at another lesion-map threshold.
    """

    slice_scores: list[float]
    mask: np.ndarray
    threshold: float
    slice_threshold: float = 0.5
    volume_score: float = 0.0
    volume_abnormal: bool = False
    volume_threshold: float = 0.5
    probability: np.ndarray | None = None
    backend: str = "local"
    info: dict[str, Any] = field(default_factory=dict)
    redecide: Callable[[float], "MedSADResult"] | None = None

    @property
    def worst_slice(self) -> int:
        """K index of the most anomalous slice."""
        return int(np.argmax(self.slice_scores)) if self.slice_scores else 0

    def abnormal(self, threshold: float | None = None) -> list[bool]:
        """Per-slice flags at ``threshold`` (default: the calibrated slice threshold)."""
        t = self.slice_threshold if threshold is None else threshold
        return [s >= t for s in self.slice_scores]

    def mask_at(self, threshold: float) -> np.ndarray:
        """The post-processed mask at another lesion-map threshold (local backend); a server
        result keeps its mask (the server returns a binary mask: re-run to change it)."""
        if self.redecide is not None:
            return self.redecide(threshold).mask
        return self.mask

    @classmethod
    def from_summary(cls, summary: dict[str, Any], mask: np.ndarray, **kwargs: Any) -> "MedSADResult":
        """Build from a result summary (``medsad_monai``'s or the server's JSON)."""
        return cls(slice_scores=[float(s) for s in summary["slice_scores"]], mask=mask,
                   threshold=float(summary.get("threshold", 0.5)),
                   slice_threshold=float(summary.get("slice_threshold", summary.get("threshold", 0.5))),
                   volume_score=float(summary.get("volume_score", max(summary["slice_scores"], default=0.0))),
                   volume_abnormal=bool(summary.get("volume_abnormal", False)),
                   volume_threshold=float(summary.get("volume_threshold", 0.5)), **kwargs)


def _check_threshold(threshold: float | None) -> float | None:
    if threshold is None:
        return None
    t = float(threshold)
    if not 0.0 < t < 1.0:
        raise MedSADError(f"threshold {t} must lie strictly between 0 and 1")
    return t


class LocalBackend:
    """A checkpoint written by ``medsad train``, run with ``medsad_monai.engine.inference``.

    The model is loaded on first use and kept for later runs.
    """

    name = "local"

    def __init__(self, checkpoint: str | os.PathLike, batch_size: int = 8, device: str | None = None) -> None:
        self.checkpoint = str(checkpoint)
        self.batch_size = batch_size
        self.device = device
        self._predictor: Any = None

    def _load(self) -> Any:
        if self._predictor is None:
            if not os.path.isfile(self.checkpoint):
                raise MedSADError(f"checkpoint {self.checkpoint!r} not found")
            try:
                from medsad_monai.engine.inference import Predictor
            except ImportError as err:
                raise MedSADError(
                    f"the local backend needs PyTorch and the medsad_monai package ({err}); install them "
                    "(the MedSAD module offers to) or use a MONAI Label server"
                ) from err
            try:
                self._predictor = Predictor.from_checkpoint(self.checkpoint, batch_size=self.batch_size,
                                                            device=self.device)
            except Exception as err:  # noqa: BLE001 - any load failure becomes one clear message
                raise MedSADError(f"checkpoint {self.checkpoint!r} does not load: {err}") from err
        return self._predictor

    def run(self, array_kji: np.ndarray, threshold: float | None = None, progress: ProgressFn | None = None,
            cancel: CancelFn | None = None) -> MedSADResult:
        """Run a (K, J, I) voxel array (as ``arrayFromVolume`` returns it) slice by slice along K;
        ``threshold`` (lesion map) overrides the checkpoint's calibrated one."""
        threshold = _check_threshold(threshold)
        predictor = self._load()
        from medsad_monai.engine.inference import InferenceCancelled

        volume = np.ascontiguousarray(np.asarray(array_kji, dtype=np.float32).transpose(2, 1, 0))  # -> (I, J, K)
        try:
            out = predictor.predict_volume(predictor.normalize_volume(volume), axis=2, progress=progress, cancel=cancel)
        except InferenceCancelled as err:
            raise MedSADError(f"cancelled: {err}") from err
        except ValueError as err:
            raise MedSADError(str(err)) from err
        return _local_result(out.with_operating_point(out.op.with_overrides(map_threshold=threshold)), self)


def _local_result(out: Any, backend: LocalBackend) -> MedSADResult:
    """A ``medsad_monai`` VolumeResult (I, J, K) -> MedSADResult (K, J, I) that can re-decide."""
    summary = out.summary()
    return MedSADResult.from_summary(
        summary, np.ascontiguousarray(out.mask.transpose(2, 1, 0)),
        probability=np.ascontiguousarray(out.probability.transpose(2, 1, 0)), backend=backend.name,
        info={"checkpoint": backend.checkpoint, "skipped_slices": int(sum(out.skipped)),
              "operating_point": summary["operating_point"]},
        redecide=lambda t: _local_result(out.with_operating_point(out.op.with_overrides(map_threshold=t)), backend),
    )


class ServerBackend:
    """A MONAI Label server running the MedSAD app (``monailabel.client.MONAILabelClient``).

    The volume is uploaded as NRRD written by Slicer's own storage node; the answer's mask is
    read back the same way. Needs no torch.
    """

    name = "server"

    def __init__(self, url: str, model: str = "medsad", timeout: float = 600.0) -> None:
        if not url or not url.startswith(("http://", "https://")):
            raise MedSADError(f"server URL {url!r} must start with http:// or https://")
        self.url = url.rstrip("/")
        self.model = model
        self.timeout = timeout

    def run(self, volume_node: Any, threshold: float | None = None, progress: ProgressFn | None = None,
            cancel: CancelFn | None = None) -> MedSADResult:
        threshold = _check_threshold(threshold)
        try:
            from monailabel.client import MONAILabelClient
            from monailabel.client.client import MONAILabelClientException
        except ImportError as err:
            raise MedSADError(f"the server backend needs the monailabel client ({err}): "
                              "pip install --no-deps monailabel==0.8.5") from err
        from . import nodes

        if cancel is not None and cancel():
            raise MedSADError("cancelled before the request was sent")
        if progress is not None:
            progress(0, 1)
        with tempfile.TemporaryDirectory(prefix="medsad_") as tmp:
            upload = os.path.join(tmp, "volume.nrrd")
            nodes.write_volume(volume_node, upload)
            client = MONAILabelClient(self.url, tmpdir=tmp)
            try:
                request = {} if threshold is None else {"threshold": threshold}
                mask_file, params = client.infer(self.model, "", request, file=upload)
            except MONAILabelClientException as err:
                raise MedSADError(f"MONAI Label server {self.url} answered with an error: {err.msg}") from err
            except OSError as err:  # refused, DNS, timeout, reset
                raise MedSADError(f"MONAI Label server {self.url} is not reachable: {err}") from err
            if not isinstance(params, dict) or "slice_scores" not in params:
                raise MedSADError(f"MONAI Label server {self.url}: model {self.model!r} did not return slice scores "
                                  f"(is it the MedSAD app?)")
            if not mask_file or not os.path.isfile(mask_file):
                raise MedSADError(f"MONAI Label server {self.url} returned no mask")
            mask = nodes.read_mask(mask_file, volume_node)
        if progress is not None:
            progress(1, 1)
        scores = [float(s) for s in params["slice_scores"]]
        if len(scores) != mask.shape[0]:
            raise MedSADError(f"server returned {len(scores)} slice scores for a volume of {mask.shape[0]} slices; "
                              "start the server with --conf slice_axis 2")
        info = {k: v for k, v in params.items() if k not in ("slice_scores",)}
        return MedSADResult.from_summary(params, mask, probability=None, backend=self.name, info=info)
