"""Where the model runs: a local checkpoint (``medsad_monai``, needs torch) or a MONAI Label
server (``monailabel.client``, no torch), and the factory that the module and the Segment
Editor effect share.

Both backends implement :class:`~MedSADLib.results.Backend`, called the same way:
``backend.run(volume_node, threshold, progress, cancel, min_lesion_mm3=..., min_lesion_mean=...)
-> MedSADResult``.
"""

from __future__ import annotations

import logging
import os
import tempfile
from typing import Any

import numpy as np

from . import nodes
from .results import (
    Backend,
    CancelFn,
    MedSADError,
    MedSADResult,
    ProgressFn,
    check_min_lesion_mean,
    check_min_lesion_mm3,
    check_profile,
    check_threshold,
)

logger = logging.getLogger(__name__)

BACKEND_LOCAL = "local"
BACKEND_SERVER = "server"
BACKENDS = (BACKEND_LOCAL, BACKEND_SERVER)  # in the order of the backend combo boxes' items
DEFAULT_SERVER_URL = "http://127.0.0.1:8000"


class LocalBackend:
    """A checkpoint written by ``medsad train``, run with ``medsad_monai.engine.inference``.

    The model is loaded on first use and kept for later runs. ``precision`` is ``medsad infer``'s:
    ``auto`` (default) runs bf16 on CUDA GPUs and on CPUs with bf16 units (several times faster
    there, same decisions), fp32 elsewhere; ``fp32`` or ``bf16`` force one. ``profile`` names the
    checkpoint's calibration profile to decide at (``""``: its own operating point); it may be
    changed between runs without reloading the model.
    """

    name = BACKEND_LOCAL

    def __init__(
        self,
        checkpoint: str | os.PathLike,
        batch_size: int = 8,
        device: str | None = None,
        precision: str = "auto",
        profile: str = "",
    ) -> None:
        if str(precision).lower() not in ("auto", "fp32", "bf16"):
            raise MedSADError(f"precision {precision!r}: expected auto, fp32 or bf16")
        self.profile = check_profile(profile)
        self.checkpoint = str(checkpoint)
        self.batch_size = batch_size
        self.device = device
        self.precision = str(precision).lower()
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
                self._predictor = Predictor.from_checkpoint(
                    self.checkpoint, batch_size=self.batch_size, device=self.device, precision=self.precision
                )
            except Exception as err:  # noqa: BLE001 - any load failure becomes one clear message
                raise MedSADError(f"checkpoint {self.checkpoint!r} does not load: {err}") from err
        return self._predictor

    def run(
        self,
        volume_node: Any,
        threshold: float | None = None,
        progress: ProgressFn | None = None,
        cancel: CancelFn | None = None,
        min_lesion_mm3: float | None = None,
        min_lesion_mean: float | None = None,
    ) -> MedSADResult:
        """Run the volume slice by slice on the checkpoint's model; ``threshold`` (lesion map),
        ``min_lesion_mm3`` and ``min_lesion_mean`` override the checkpoint's calibrated ones.
        The voxels are copied once, to the (I, J, K) float32 array ``medsad_monai`` reads.

        The model sees each slice turned the way it was trained: a model that slices the RAS view
        (``medsad_monai.data.orientation``) gets the volume's axial slices, whichever voxel axis
        (I, J or K) is the axial one; the result's ``slice_axis`` names it. A model of an older
        checkpoint (no ``orientation``) slices along K as stored, as it did."""
        threshold = check_threshold(threshold)
        min_lesion_mm3 = check_min_lesion_mm3(min_lesion_mm3)
        min_lesion_mean = check_min_lesion_mean(min_lesion_mean)
        predictor = self._load()
        from medsad_monai.engine.inference import InferenceCancelled

        try:
            base = predictor.profile_point(check_profile(self.profile) or None)
        except ValueError as err:  # a profile the checkpoint does not hold: say which it has
            raise MedSADError(f"checkpoint {self.checkpoint!r}: {err}") from err

        volume = nodes.voxels_ijk(volume_node)
        affine = nodes.ijk_to_ras_array(volume_node)
        try:
            out = predictor.predict_volume(
                predictor.normalize_volume(volume),
                axis=2,
                progress=progress,
                cancel=cancel,
                spacing=tuple(volume_node.GetSpacing()),  # I, J, K as the voxels: lesion sizes in mm³
                affine=affine,
            )
        except InferenceCancelled as err:
            raise MedSADError(f"cancelled: {err}") from err
        except ValueError as err:
            raise MedSADError(str(err)) from err
        return _local_result(out.with_operating_point(base), self, threshold, min_lesion_mm3, min_lesion_mean)


def _local_result(
    out: Any,
    backend: LocalBackend,
    threshold: float | None,
    min_lesion_mm3: float | None = None,
    min_lesion_mean: float | None = None,
) -> MedSADResult:
    """A ``medsad_monai`` VolumeResult (I, J, K) at the model's operating point -> MedSADResult
    (K, J, I) at ``threshold``, ``min_lesion_mm3`` and ``min_lesion_mean`` (None: the calibrated
    ones) that can re-decide at others."""
    try:
        op = out.op.with_overrides(
            map_threshold=threshold, min_lesion_mm3=min_lesion_mm3, min_lesion_mean=min_lesion_mean
        )
    except ValueError as err:  # a size in mm³ for an operating point without a voxel size
        raise MedSADError(str(err)) from err
    decided = out.with_operating_point(op)
    summary = decided.summary()
    return MedSADResult.from_summary(
        summary,
        np.ascontiguousarray(decided.mask.transpose(2, 1, 0)),
        probability=np.ascontiguousarray(out.probability.transpose(2, 1, 0)),
        backend=backend.name,
        info={
            "checkpoint": backend.checkpoint,
            "skipped_slices": int(sum(out.skipped)),
            "precision": out.precision,
            "operating_point": summary["operating_point"],
        },
        calibrated_threshold=float(out.op.map_threshold),
        redecide=lambda t, m=None, q=None: _local_result(out, backend, t, m, q),
        min_lesion_mm3=min_lesion_mm3,
        min_lesion_mean=min_lesion_mean,
    )


class ServerBackend:
    """A MONAI Label server running the MedSAD app (``monailabel.client.MONAILabelClient``).

    The volume is uploaded as NRRD written by Slicer's own storage node; the answer's mask is
    read back the same way. Needs no torch. ``profile`` is sent as the request's calibration
    profile (``""``: the one the server is started with).
    """

    name = BACKEND_SERVER

    def __init__(self, url: str, model: str = "medsad", timeout: float = 600.0, profile: str = "") -> None:
        if not url or not url.startswith(("http://", "https://")):
            raise MedSADError(f"server URL {url!r} must start with http:// or https://")
        self.profile = check_profile(profile)
        self.url = url.rstrip("/")
        self.model = model
        self.timeout = timeout

    def run(
        self,
        volume_node: Any,
        threshold: float | None = None,
        progress: ProgressFn | None = None,
        cancel: CancelFn | None = None,
        min_lesion_mm3: float | None = None,
        min_lesion_mean: float | None = None,
    ) -> MedSADResult:
        """Send the volume (the server's app cuts the slices: along the axial axis for a model that
        slices the RAS view, whichever voxel axis that is; the answer says which); ``threshold``,
        ``min_lesion_mm3`` and ``min_lesion_mean`` are sent as the request's lesion-map threshold,
        minimum lesion size and minimum lesion mean probability, None keeps the server's."""
        threshold = check_threshold(threshold)
        min_lesion_mm3 = check_min_lesion_mm3(min_lesion_mm3)
        min_lesion_mean = check_min_lesion_mean(min_lesion_mean)
        try:
            from monailabel.client import MONAILabelClient
            from monailabel.client.client import MONAILabelClientException
        except ImportError as err:
            raise MedSADError(
                f"the server backend needs the monailabel client ({err}): pip install --no-deps monailabel==0.8.5"
            ) from err

        if cancel is not None and cancel():
            raise MedSADError("cancelled before the request was sent")
        if progress is not None:
            progress(0, 1)
        with tempfile.TemporaryDirectory(prefix="medsad_") as tmp:
            upload = os.path.join(tmp, "volume.nrrd")
            nodes.write_volume(volume_node, upload)
            client = MONAILabelClient(self.url, tmpdir=tmp)
            try:
                request: dict[str, float | str] = {} if threshold is None else {"threshold": threshold}
                if self.profile:
                    request["profile"] = self.profile
                if min_lesion_mm3 is not None:
                    request["min_lesion_mm3"] = min_lesion_mm3
                if min_lesion_mean is not None:
                    request["min_lesion_mean"] = min_lesion_mean
                mask_file, params = client.infer(self.model, "", request, file=upload)
            except MONAILabelClientException as err:
                raise MedSADError(f"MONAI Label server {self.url} answered with an error: {err.msg}") from err
            except OSError as err:  # refused, DNS, timeout, reset
                raise MedSADError(f"MONAI Label server {self.url} is not reachable: {err}") from err
            if not isinstance(params, dict) or "slice_scores" not in params:
                raise MedSADError(
                    f"MONAI Label server {self.url}: model {self.model!r} did not return slice scores "
                    f"(is it the MedSAD app?)"
                )
            if not mask_file or not os.path.isfile(mask_file):
                raise MedSADError(f"MONAI Label server {self.url} returned no mask")
            mask = nodes.read_mask(mask_file, volume_node)
        if progress is not None:
            progress(1, 1)
        scores = [float(s) for s in params["slice_scores"]]
        axis = params.get("slice_axis", 2)
        if axis not in (0, 1, 2):
            raise MedSADError(f"MONAI Label server {self.url} answered slice_axis {axis!r}: not a voxel axis")
        n_slices = mask.shape[2 - axis]  # the mask is (K, J, I)
        if len(scores) != n_slices:
            raise MedSADError(
                f"server returned {len(scores)} slice scores for a volume of {n_slices} slices along "
                f"{'IJK'[axis]}; is it the MedSAD app?"
            )
        info = {k: v for k, v in params.items() if k != "slice_scores"}
        op = params.get("operating_point") or {}
        calibrated = op.get("map_threshold") if threshold is None else None  # an override hides the calibrated one
        return MedSADResult.from_summary(
            params,
            mask,
            probability=None,
            backend=self.name,
            info=info,
            calibrated_threshold=None if calibrated is None else float(calibrated),
            min_lesion_mm3=min_lesion_mm3,
            min_lesion_mean=min_lesion_mean,
        )


# --------------------------------------------------------------------------- factory

_local_cache: dict[tuple[str, float, int], LocalBackend] = {}


def make_backend(kind: str, checkpoint: str = "", url: str = "", batch_size: int = 8, profile: str = "") -> Backend:
    """The backend for a choice of the module's parameters (``kind`` one of :data:`BACKENDS`),
    deciding at the calibration profile ``profile`` (``""``: the model's or server's own).

    A local backend is kept per checkpoint file (path and modification time), so the model loads
    once for the module and the Segment Editor effect; one model is held at a time.

    Raises:
        MedSADError: unknown kind, no or a missing checkpoint, a malformed server URL or profile name.
    """
    profile = check_profile(profile)
    if kind == BACKEND_SERVER:
        return ServerBackend(url or DEFAULT_SERVER_URL, profile=profile)
    if kind != BACKEND_LOCAL:
        raise MedSADError(f"unknown backend {kind!r}: expected one of {', '.join(BACKENDS)}")
    if not checkpoint:
        raise MedSADError(
            "no checkpoint chosen: select a MedSAD checkpoint (.pt from 'medsad train') "
            "in the MedSAD module, or switch to the MONAI Label server backend"
        )
    if not os.path.isfile(checkpoint):
        raise MedSADError(f"checkpoint {checkpoint!r} not found: select an existing .pt file in the MedSAD module")
    key = (os.path.abspath(checkpoint), os.path.getmtime(checkpoint), int(batch_size))
    if key not in _local_cache:
        _local_cache.clear()  # one model in memory at a time
        _local_cache[key] = LocalBackend(checkpoint, batch_size=batch_size)
    _local_cache[key].profile = profile
    return _local_cache[key]


def clear_backend_cache() -> None:
    """Forget the cached local model (frees its memory)."""
    _local_cache.clear()
