"""What the app is served with (:class:`ServeConfig`, from ``--conf``) and the one validator of each
value a ``--conf`` key or a request may set.

Every task (infer, train, scoring, active learning) and the task config validate through these
functions, so a value means the same and is refused with the same message wherever it is given.
Each ``check_*`` takes the key as the client wrote it (``"threshold"`` in a request,
``"--conf threshold"`` on the command line) and the raw value, and returns the typed value or
raises :class:`~lib.errors.InputError` naming the key, the value and what is allowed
(:class:`~lib.errors.ConfError` for ``--conf`` keys).

This module imports nothing of the app but :mod:`lib.errors`: no task imports another to reach it.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from medsad_monai.configs import PRESETS
from medsad_monai.engine.decision import check_profile_name
from medsad_monai.engine.decision import check_threshold as _check_unit_interval
from medsad_monai.engine.inference import PRECISIONS

from .errors import ConfError, InputError

T = TypeVar("T")

#: ``--conf`` keys this app reads (MONAI Label passes its own keys too, e.g. ``models``).
CONF_KEYS = (
    "clip_model",
    "clip_pretrained",
    "checkpoint",
    "preset",
    "threshold",
    "slice_axis",
    "batch_size",
    "device",
    "precision",
    "infer_workers",
    "min_lesion_mm3",
    "min_lesion_mean",
    "profile",
)

#: What a request sends (and Slicer shows) for "the checkpoint's calibrated value".
CALIBRATED = "calibrated"

_DEVICE = re.compile(r"cpu|cuda(:\d+)?")
_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


# --- one validator per value ----------------------------------------------------------------------


def check_threshold(key: str, value: Any) -> float:
    """A threshold strictly inside (0, 1) (:func:`medsad_monai.engine.decision.check_threshold`)."""
    try:
        return _check_unit_interval(key, value)
    except ValueError as err:
        raise InputError(str(err)) from None


def check_optional_threshold(key: str, value: Any) -> float | None:
    """``threshold``, ``slice_threshold``, ``volume_threshold``: None for the checkpoint's
    calibrated value (absent, empty or ``calibrated``), else :func:`check_threshold`."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", CALIBRATED)):
        return None
    return check_threshold(key, value)


def check_optional_min_lesion_mm3(key: str, value: Any) -> float | None:
    """``min_lesion_mm3``: None for the checkpoint's calibrated minimum lesion size (absent, empty
    or ``calibrated``), else a size in mm³ ``>= 0`` (0 keeps every lesion)."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", CALIBRATED)):
        return None
    size = _number(key, value)
    if size < 0:
        raise InputError(f"{key} {size:g}: must be 0 (keep every lesion) or a size in mm³ above it")
    return size


def check_optional_min_lesion_mean(key: str, value: Any) -> float | None:
    """``min_lesion_mean``: None for the checkpoint's calibrated value (absent, empty or
    ``calibrated``), else a mean lesion probability in [0, 1) (0 keeps every lesion)."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", CALIBRATED)):
        return None
    mean = _number(key, value)
    if not 0.0 <= mean < 1.0:
        raise InputError(f"{key} {mean:g}: must be 0 (keep every lesion) or a mean probability above it and below 1")
    return mean


def check_optional_profile(key: str, value: Any) -> str | None:
    """``profile``: None for the served operating point (absent or empty), else the name of one of
    the checkpoint's calibration profiles (``default`` = its own operating point); whether the
    checkpoint holds it is checked where the model is at hand."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        return check_profile_name(value.strip() if isinstance(value, str) else value)
    except ValueError as err:
        raise InputError(f"{key}: {err}") from None


def check_slice_axis(key: str, value: Any) -> int:
    """The volume axis slices are taken along: 0, 1 or 2."""
    axis = _integer(key, value, "expected 0, 1 or 2")
    if axis not in (0, 1, 2):
        raise InputError(f"{key} {axis}: expected 0, 1 or 2")
    return axis


def check_count(key: str, value: Any) -> int:
    """An integer of at least 1 (``max_epochs``)."""
    count = _integer(key, value, "expected an integer")
    if count < 1:
        raise InputError(f"{key} {count}: must be at least 1")
    return count


def check_batch_size(key: str, value: Any) -> int:
    """Slices per forward pass (serving) or per step (training): at least 1."""
    return check_count(key, value)


def check_seed(key: str, value: Any) -> int:
    """A random seed: any integer."""
    return _integer(key, value, "expected an integer")


def check_positive(key: str, value: Any) -> float:
    """A number above 0 (``lr``)."""
    number = _number(key, value)
    if not number > 0:
        raise InputError(f"{key} {number}: must be positive")
    return number


def check_fraction(key: str, value: Any) -> float:
    """A fraction strictly between 0 and 1 (``val_split``)."""
    number = _number(key, value)
    if not 0.0 < number < 1.0:
        raise InputError(f"{key} {number}: must lie strictly between 0 and 1")
    return number


def check_probability(key: str, value: Any) -> float:
    """A probability in [0, 1] (``synthetic_lesions``)."""
    number = _number(key, value)
    if not 0.0 <= number <= 1.0:
        raise InputError(f"{key} {number}: must lie between 0 and 1")
    return number


def check_minutes(key: str, value: Any) -> float:
    """A time budget in minutes: 0 (no limit) or positive (``max_minutes``)."""
    number = _number(key, value)
    if number < 0:
        raise InputError(f"{key} {number}: must be 0 (no limit) or positive")
    return number


def check_flag(key: str, value: Any) -> bool:
    """A boolean: ``true``/``false`` (also 1/0, yes/no, any case)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise InputError(f"{key} {value!r}: expected true or false")


def check_choice(key: str, value: Any, choices: tuple[str, ...]) -> str:
    """One of ``choices``."""
    if value not in choices:
        raise InputError(f"{key} {value!r}: expected {' or '.join(repr(c) for c in choices)}")
    return value


def check_preset(key: str, value: Any) -> str:
    """A model preset of :data:`medsad_monai.configs.PRESETS`."""
    if value not in PRESETS:
        raise InputError(f"{key} {value!r}: choose one of {', '.join(PRESETS)}")
    return value


def check_device(key: str, value: Any, require_available: bool = False) -> str | None:
    """``cpu``, ``cuda`` or ``cuda:N`` (None: the default, CUDA when available). With
    ``require_available`` a CUDA device must exist on this server."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not _DEVICE.fullmatch(value):
        raise InputError(f"{key} {value!r}: use cpu, cuda or cuda:N")
    if require_available and value.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"{key} {value!r}: this server has no CUDA device; use cpu")
    return value


def check_precision(key: str, value: Any) -> str | None:
    """``auto``, ``fp32`` or ``bf16`` (:data:`medsad_monai.engine.inference.PRECISIONS`; None: the
    historical default, bf16 on CUDA with bf16 support and fp32 on CPUs)."""
    if value is None or value == "":
        return None
    if value not in PRECISIONS:
        raise InputError(f"{key} {value!r}: choose one of {', '.join(PRECISIONS)}")
    return value


def check_models(key: str, value: Any) -> str:
    """MONAI Label's ``models`` key: this app serves the single model ``medsad``."""
    if any(m.strip() not in ("medsad", "all") for m in str(value).split(",")):
        raise InputError(f"{key} {value!r}: this app serves one model, 'medsad'")
    return str(value)


def check_clip_pretrained(key: str, value: Any) -> str | None:
    """An open_clip tag, ``none`` or a local weight file that exists."""
    if value is None or value == "":
        return None
    value = str(value)
    is_path = value != "none" and ("/" in value or value.endswith((".pt", ".bin", ".safetensors")))
    if is_path and not Path(value).expanduser().is_file():
        raise InputError(f"{key} {value!r}: no such weight file")
    return value


def check_checkpoint(key: str, value: Any) -> Path:
    """The served checkpoint path (absolute); it may not exist yet, but must not be a folder."""
    checkpoint = Path(value).expanduser().resolve()
    if checkpoint.exists() and not checkpoint.is_file():
        raise InputError(f"{key} {str(checkpoint)!r} is not a file")
    return checkpoint


def _integer(key: str, value: Any, expected: str) -> int:
    if isinstance(value, bool):
        raise InputError(f"{key} {value!r}: {expected}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise InputError(f"{key} {value!r}: {expected}")


def _number(key: str, value: Any) -> float:
    if isinstance(value, bool):
        raise InputError(f"{key} {value!r}: expected a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{key} {value!r}: expected a number") from None
    if not math.isfinite(number):
        raise InputError(f"{key} {value!r}: expected a finite number")
    return number


# --- the served configuration -----------------------------------------------------------------------


@dataclass(frozen=True)
class ServeConfig:
    """Validated ``--conf`` values.

    Args:
        checkpoint: the served model file; training publishes to the same path.
        clip_model: open_clip architecture for new training (default: the preset's); a
            checkpoint of another architecture is refused.
        clip_pretrained: open_clip tag, local weight file or ``none``; where the backbone
            weights are on this machine.
        preset: model preset for training.
        threshold: lesion-map threshold for every request (default None: the checkpoint's
            calibrated operating point; a request may override it).
        min_lesion_mm3: minimum lesion size (mm³) for every request, 0 keeps every lesion
            (default None: the checkpoint's calibrated one; a request may override it).
        min_lesion_mean: connected lesions whose mean probability is under this are removed for
            every request, 0 keeps every lesion (default None: the checkpoint's calibrated value;
            a request may override it).
        slice_axis: axis of a volume's RAS view slices are taken along (2: axial).
        batch_size: slices per forward pass.
        device: ``cpu``/``cuda``/``cuda:N``; default CUDA when available.
        precision: ``auto`` (bf16 where the device runs it fast: CUDA with bf16, a CPU with AMX /
            AVX-512 bf16), ``fp32`` or ``bf16``; default ``auto``, as ``medsad infer`` and the
            Slicer module's local backend.
        infer_workers: inferences run at once (default 1: one volume already uses every core
            or the GPU; more requests wait their turn while the server keeps answering).
        profile: the checkpoint's calibration profile every request, scoring and active learning
            decide at (one site's or scanner's operating point, ``medsad calibrate --profile``;
            default None: the checkpoint's own operating point; a request may name another).
    """

    checkpoint: Path
    clip_model: str | None = None
    clip_pretrained: str | None = None
    preset: str = "tiny"
    threshold: float | None = None
    slice_axis: int = 2
    batch_size: int = 8
    device: str | None = None
    precision: str | None = "auto"
    infer_workers: int = 1
    min_lesion_mm3: float | None = None
    min_lesion_mean: float | None = None
    profile: str | None = None

    @classmethod
    def from_conf(cls, conf: dict[str, str], app_dir: str | os.PathLike) -> ServeConfig:
        """Parse MONAI Label's ``--conf`` dict.

        Raises:
            ConfError: naming the key and the allowed values.
        """
        _conf(check_models, conf, "models", "medsad")
        return cls(
            checkpoint=_conf(check_checkpoint, conf, "checkpoint", Path(app_dir) / "model" / "medsad.pt"),
            clip_model=conf.get("clip_model") or None,
            clip_pretrained=_conf(check_clip_pretrained, conf, "clip_pretrained", None),
            preset=_conf(check_preset, conf, "preset", "tiny"),
            threshold=_conf(check_optional_threshold, conf, "threshold", None),
            slice_axis=_conf(check_slice_axis, conf, "slice_axis", 2),
            batch_size=_conf(check_batch_size, conf, "batch_size", 8),
            device=_conf(check_device, conf, "device", None),
            precision=_conf(check_precision, conf, "precision", "auto"),
            infer_workers=_conf(check_count, conf, "infer_workers", 1),
            min_lesion_mm3=_conf(check_optional_min_lesion_mm3, conf, "min_lesion_mm3", None),
            min_lesion_mean=_conf(check_optional_min_lesion_mean, conf, "min_lesion_mean", None),
            profile=_conf(check_optional_profile, conf, "profile", None),
        )


def _conf(check: Callable[[str, Any], T], conf: dict[str, str], key: str, default: Any) -> T:
    """``check`` of ``--conf key`` (``default``, also checked, when the key is absent or empty)."""
    raw = conf.get(key)
    try:
        return check(f"--conf {key}", default if raw is None or raw == "" else raw)
    except ConfError:
        raise
    except InputError as err:
        raise ConfError(str(err)) from None


# --- request parameters -----------------------------------------------------------------------------


@dataclass(frozen=True)
class InferParams:
    """The validated keys of an infer request (see :class:`lib.infers.medsad.MedSADInfer`)."""

    threshold: float | None
    slice_threshold: float | None
    volume_threshold: float | None
    slice_axis: int
    skip_background: bool
    min_lesion_mm3: float | None = None
    min_lesion_mean: float | None = None
    profile: str | None = None

    @classmethod
    def from_request(cls, request: dict[str, Any], serve: ServeConfig) -> InferParams:
        """Raises :class:`InputError` naming the first bad key."""
        threshold = check_optional_threshold("threshold", request.get("threshold"))
        min_lesion_mm3 = check_optional_min_lesion_mm3("min_lesion_mm3", request.get("min_lesion_mm3"))
        min_lesion_mean = check_optional_min_lesion_mean("min_lesion_mean", request.get("min_lesion_mean"))
        return cls(
            threshold=serve.threshold if threshold is None else threshold,
            slice_threshold=check_optional_threshold("slice_threshold", request.get("slice_threshold")),
            volume_threshold=check_optional_threshold("volume_threshold", request.get("volume_threshold")),
            slice_axis=check_slice_axis("slice_axis", request.get("slice_axis", serve.slice_axis)),
            skip_background=check_flag("skip_background", request.get("skip_background", True)),
            min_lesion_mm3=serve.min_lesion_mm3 if min_lesion_mm3 is None else min_lesion_mm3,
            min_lesion_mean=serve.min_lesion_mean if min_lesion_mean is None else min_lesion_mean,
            profile=check_optional_profile("profile", request.get("profile")),
        )
