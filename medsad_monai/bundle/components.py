"""The components a MedSAD bundle's ``configs/inference.json`` names (``_target_``): MedSAD's own
inference path taken apart into the ids of a MONAI bundle (see :mod:`medsad_monai.bundle`)."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.inferers import Inferer
from torch import nn

from medsad_monai.data.volumes import VOLUME_SUFFIXES, load_volume, normalize_intensity, volume_suffix

logger = logging.getLogger(__name__)

IMAGE_KEY = "image"
PRED_KEY = "pred"


# --------------------------------------------------------------------------- bundle components
def load_network(checkpoint: str | os.PathLike, clip_pretrained: str | None = None) -> nn.Module:
    """The bundle's ``network_def``: the model of a MedSAD checkpoint (``models/model.pt``),
    rebuilt by :func:`medsad_monai.checkpoint.load_checkpoint` (``weights_only`` loading), in
    eval mode on the CPU.

    Args:
        checkpoint: the checkpoint file.
        clip_pretrained: where the CLIP backbone weights are on this machine, for a checkpoint
            of a frozen pretrained backbone (which does not carry them); see docs/bundle.md.
    """
    from medsad_monai.checkpoint import load_checkpoint

    model, _ = load_checkpoint(checkpoint, clip_pretrained=clip_pretrained)
    return model


def list_inputs(input: str | os.PathLike) -> list[str]:  # the bundle id is "input"
    """The volumes to run: ``input`` itself (a NIfTI/NRRD file) or the volumes of a folder, sorted.

    Raises:
        FileNotFoundError: ``input`` does not exist.
        ValueError: not a volume, or a folder without volumes.
    """
    path = Path(input)
    if path.is_dir():
        files = sorted(str(p) for p in path.iterdir() if p.is_file() and volume_suffix(p) is not None)
        if not files:
            raise ValueError(f"no NIfTI/NRRD volumes ({', '.join(VOLUME_SUFFIXES)}) in folder {str(path)!r}")
        return files
    if not path.is_file():
        raise FileNotFoundError(
            f"input {str(path)!r} does not exist: pass --input FILE_OR_FOLDER "
            f"(or --dataset_dir FOLDER) to `monai.bundle run`"
        )
    if volume_suffix(path) is None:
        raise ValueError(
            f"unsupported input {str(path)!r}: the bundle runs NIfTI/NRRD volumes "
            f"({', '.join(VOLUME_SUFFIXES)}); for 2-D images use `medsad infer`"
        )
    return [str(path)]


def setup_logging() -> None:
    """The bundle's ``initialize``: MedSAD's log filter on the handlers ``configs/logging.conf``
    installed (drops open_clip's expected random-init notice), or MedSAD's own stderr handler
    when the root logger has none (``--logging_file False``)."""
    from medsad_monai.log_setup import ThirdPartyNoise, configure_logging

    root = logging.getLogger()
    if not root.handlers:
        configure_logging()
        return
    for handler in root.handlers:
        if not any(isinstance(f, ThirdPartyNoise) for f in handler.filters):
            handler.addFilter(ThirdPartyNoise())


class LoadVolumed:
    """Load the volume named by ``data[key]`` (MedSAD's :func:`~medsad_monai.data.volumes.load_volume`:
    the file's voxel order and dtype) as a ``MetaTensor`` whose ``affine`` is the file's (lesion
    sizes downstream are physical), keep its path in ``data[f"{key}_path"]``.

    Raises:
        ValueError: naming the file: unreadable, not 3-D, or slices that are lines.
    """

    def __init__(self, keys: str = IMAGE_KEY, slice_axis: int = 2) -> None:
        if slice_axis not in (0, 1, 2):
            raise ValueError(f"slice axis must be 0, 1 or 2, got {slice_axis}")
        self.key = keys
        self.slice_axis = slice_axis

    def __call__(self, data: Mapping[str, Any]) -> dict[str, Any]:
        d = dict(data)
        path = Path(d[self.key])
        volume, geometry = load_volume(path)
        if volume.ndim != 3:
            raise ValueError(f"{str(path)!r} is not a 3-D volume (shape {volume.shape})")
        if min(n for i, n in enumerate(volume.shape) if i != self.slice_axis) < 2:
            raise ValueError(
                f"{str(path)!r}: its slices along axis {self.slice_axis} are lines, not images "
                f"(shape {volume.shape}); pick another slice axis"
            )
        d[f"{self.key}_path"] = str(path)
        d[self.key] = MetaTensor(
            torch.from_numpy(np.ascontiguousarray(volume)), affine=torch.as_tensor(geometry.affine)
        )
        return d


class NormalizeVolumed:
    """Map ``data[key]`` to [0, 1] with the checkpoint's per-volume intensity normalisation
    (:func:`~medsad_monai.data.volumes.normalize_intensity`, ``method`` = the checkpoint's
    ``intensity``); a ``MetaTensor`` keeps its affine."""

    def __init__(self, keys: str = IMAGE_KEY, method: str = "percentile") -> None:
        self.key = keys
        self.method = method

    def __call__(self, data: Mapping[str, Any]) -> dict[str, Any]:
        d = dict(data)
        volume = d[self.key]
        affine = getattr(volume, "affine", None)
        array = volume.numpy() if isinstance(volume, torch.Tensor) else np.asarray(volume)
        normalized = normalize_intensity(array, method=self.method)
        d[self.key] = normalized if affine is None else MetaTensor(torch.from_numpy(normalized), affine=affine)
        return d


class SliceWiseInferer(Inferer):
    """MedSAD's slice-wise inferer: a normalised volume through
    :meth:`Predictor.predict_volume <medsad_monai.engine.inference.Predictor.predict_volume>`
    (slices in batches, background slices skipped, each slice padded and resized to the
    model's side and mapped back).

    ``inferer(volume, network)`` returns the :class:`~medsad_monai.engine.inference.VolumeResult`
    (lesion probability on the volume's grid + per-slice model scores), not yet decided.
    ``monai.inferers.SliceInferer`` is not used for the reasons in
    :mod:`medsad_monai.engine.inference`.
    """

    def __init__(
        self,
        slice_axis: int = 2,
        batch_size: int = 8,
        skip_background: bool = True,
        device: str | torch.device | None = None,
        precision: str = "auto",
        context_slices: int = 0,
        orientation: str = "ras",
        mirror_channel: bool = False,
    ) -> None:
        super().__init__()
        self.context_slices = context_slices  # the checkpoint's: 1 = each slice with its two neighbours
        self.mirror_channel = mirror_channel  # the checkpoint's: each slice beside its left-right mirror
        self.orientation = orientation  # the checkpoint's: "ras" slices the volume's RAS view
        self.precision = precision  # as `medsad infer --precision` (auto: bf16 where the device runs it fast)
        self.slice_axis = slice_axis
        self.batch_size = batch_size
        self.skip_background = skip_background
        self.device = device
        self._predictor = None

    def predictor(self, network: nn.Module):
        from medsad_monai.engine.inference import Predictor

        if self._predictor is None or self._predictor.model is not network:
            self._predictor = Predictor(
                network,
                batch_size=self.batch_size,
                device=self.device,
                precision=self.precision,
                context_slices=self.context_slices,
                orientation=self.orientation,
                mirror_channel=self.mirror_channel,
            )
        return self._predictor

    def __call__(self, inputs: Any, network: nn.Module, *args: Any, **kwargs: Any):  # type: ignore[override]
        volume = inputs.numpy() if isinstance(inputs, torch.Tensor) else np.asarray(inputs)
        affine = getattr(inputs, "affine", None)  # a MetaTensor's: lesion sizes in mm³
        spacing = None if affine is None else np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)
        return self.predictor(network).predict_volume(
            volume,
            axis=self.slice_axis,
            skip_background=self.skip_background,
            spacing=spacing,
            affine=None if affine is None else np.asarray(affine, dtype=np.float64),
        )


class LesionMaskd:
    """Decide ``data[key]`` (a :class:`~medsad_monai.engine.inference.VolumeResult`) at
    ``operating_point``: map threshold, then connected lesions below ``min_lesion_voxels`` or
    below a mean probability of ``min_lesion_mean`` removed
    (:func:`~medsad_monai.engine.decision.lesion_mask`); the mask goes to
    ``data["mask"]``."""

    def __init__(self, keys: str = PRED_KEY, operating_point: Any = None) -> None:
        from medsad_monai.engine.decision import OperatingPoint

        self.key = keys
        self.operating_point = operating_point if operating_point is not None else OperatingPoint()

    def __call__(self, data: Mapping[str, Any]) -> dict[str, Any]:
        d = dict(data)
        result = d[self.key].with_operating_point(self.operating_point)
        d[self.key] = result
        d["mask"] = result.mask
        return d


class MaskWriter:
    """Write ``<stem>_mask<ext>`` (exactly the input's geometry and format:
    :func:`~medsad_monai.engine.inference.save_mask`) and ``<stem>_scores.json`` into
    ``output_dir``, named and filled as ``medsad infer`` does."""

    def __init__(self, output_dir: str | os.PathLike, keys: str = PRED_KEY, image_key: str = IMAGE_KEY) -> None:
        self.output_dir = Path(output_dir)
        self.key = keys
        self.image_key = image_key

    def __call__(self, data: Mapping[str, Any]) -> dict[str, Any]:
        from medsad_monai.engine.inference import write_outputs

        d = dict(data)
        d["summary"] = write_outputs(d[self.key], d[f"{self.image_key}_path"], self.output_dir, "--output_dir")
        return d


class SliceWiseEvaluator:
    """The bundle's ``evaluator``: every item of ``dataset`` (already preprocessed by it)
    through ``inferer`` and ``postprocessing``, one volume at a time.

    :meth:`run` returns the per-volume summaries (also kept in :attr:`summaries`).
    """

    def __init__(
        self,
        dataset: Sequence[Mapping[str, Any]],
        network: nn.Module,
        inferer: Inferer,
        postprocessing: Any = None,
        image_key: str = IMAGE_KEY,
        pred_key: str = PRED_KEY,
    ) -> None:
        self.dataset = dataset
        self.network = network
        self.inferer = inferer
        self.postprocessing = postprocessing
        self.image_key = image_key
        self.pred_key = pred_key
        self.summaries: list[dict[str, Any]] = []

    def run(self) -> list[dict[str, Any]]:
        self.summaries = []
        self.network.eval()
        for i in range(len(self.dataset)):
            item = dict(self.dataset[i])
            item[self.pred_key] = self.inferer(item[self.image_key], self.network)
            if self.postprocessing is not None:
                item = self.postprocessing(item)
            self.summaries.append(item.get("summary", {}))
        logger.info("bundle inference: %d volume(s) done", len(self.summaries))
        return self.summaries
