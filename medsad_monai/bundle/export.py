"""``medsad export-bundle``: metadata, inference config, README and licence of a MedSAD bundle."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

import medsad_monai
from medsad_monai.atomic import atomic_write, atomic_write_text
from medsad_monai.bundle.components import IMAGE_KEY, PRED_KEY

logger = logging.getLogger(__name__)

#: The newest MONAI bundle metadata schema (the one current Model Zoo bundles name). The
#: installed MONAI names no default; ``monai.bundle verify_metadata`` downloads the URL.
SCHEMA_URL = "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"

#: What :func:`export_bundle` writes, relative to the bundle folder.
BUNDLE_FILES: tuple[str, ...] = (
    "configs/metadata.json",
    "configs/inference.json",
    "configs/logging.conf",
    "models/model.pt",
    "docs/README.md",
    "LICENSE",
)

BUNDLE_VERSION = "0.1.0"
NOT_CLINICAL = "research use only, not for clinical use"
SYNTHETIC_NOTICE = "synthetic demo, not for clinical use"


# --------------------------------------------------------------------------- export
def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _plain_version(version: str) -> str:
    return version.split("+")[0]


def training_data_of(ckpt: str | os.PathLike) -> dict[str, Any]:
    """What a checkpoint's run folder says about its training data.

    ``medsad train`` writes ``config.json`` (with ``options.data``) beside ``best.pt``; a
    relative data path is taken from the folder training ran in (the run folder minus the
    recorded ``options.out``), else the current folder. The data are *synthetic* when the
    folder's ``dataset.json`` says so (``medsad make-sample-data`` writes
    ``MedSAD-synthetic-…``) or the path lies in a ``sample_data`` folder.

    Returns:
        ``{"data": str | None, "synthetic": bool | None, "dataset": str | None, "how": str}``;
        ``synthetic`` is None when nothing tells.
    """
    ckpt = Path(ckpt)
    config = ckpt.parent / "config.json"
    unknown = {
        "data": None,
        "synthetic": None,
        "dataset": None,
        "how": f"no run folder config.json beside {ckpt.name}: the training data are not recorded",
    }
    try:
        options = json.loads(config.read_text(encoding="utf-8")).get("options", {})
    except (OSError, ValueError, AttributeError):
        return unknown
    data = options.get("data") if isinstance(options, dict) else None
    if not data:
        return {**unknown, "how": f"{config} names no training data"}
    data_path = Path(data)
    candidates = [data_path] if data_path.is_absolute() else []
    if not data_path.is_absolute():
        out = Path(str(options.get("out") or ""))
        run_dir = ckpt.parent.resolve()
        if out.parts and not out.is_absolute() and run_dir.parts[-len(out.parts) :] == out.parts:
            candidates.append(run_dir.parents[len(out.parts) - 1] / data_path)
        candidates.append(Path.cwd() / data_path)
    name, description = None, ""
    for folder in candidates:
        meta = folder / "dataset.json"
        if meta.is_file():
            try:
                info = json.loads(meta.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            name, description = str(info.get("name", "")), str(info.get("description", ""))
            break
    synthetic = (bool(name) and "synthetic" in (name + " " + description).lower()) or "sample_data" in data_path.parts
    return {
        "data": str(data),
        "synthetic": bool(synthetic),
        "dataset": name or None,
        "how": f"{config}: options.data = {data!r}" + (f" (dataset.json: {name})" if name else ""),
    }


def _image_size(payload: dict[str, Any]) -> int:
    if payload.get("model") == "unet":
        return int(payload["config"]["image_size"])
    size = (payload.get("backbone") or {}).get("image_size") or (payload.get("config") or {}).get("image_size")
    if not size:
        raise ValueError("the checkpoint records no image size")
    return int(size)


def _model_name(payload: dict[str, Any]) -> str:
    if payload.get("model") == "unet":
        return "MONAI UNet baseline (MedSAD recipe)"
    arch = (payload.get("backbone") or {}).get("arch") or (payload.get("config") or {}).get("clip_model", "?")
    return f"MedSAD-CLIP ({arch} backbone)"


def _backbone_note(payload: dict[str, Any]) -> str:
    """Whether ``models/model.pt`` carries every weight, or needs the CLIP backbone's on this machine."""
    if payload.get("model") == "unet":
        return "self-contained: the checkpoint holds every weight of the UNet"
    config, identity = payload.get("config") or {}, payload.get("backbone") or {}
    random_init = str(config.get("clip_pretrained", "")).lower() in ("none", "") or identity.get("kind") == "none"
    if random_init or config.get("train_backbone"):
        return "self-contained: the checkpoint holds the backbone weights it needs"
    return (
        f"needs the frozen CLIP backbone weights it was trained with ({identity.get('arch')}, "
        f"{identity.get('kind')} {identity.get('pretrained')!r}, sha256 {identity.get('sha256')}): set "
        f"`network_def#clip_pretrained` to a local copy (the open_clip tag would need a download)"
    )


def _channels(payload: dict[str, Any]) -> str:
    """How a slice becomes the network's 3 channels, in words."""
    if payload.get("context_slices", 0):
        return "stacked with its two neighbouring slices as 3 channels (previous, slice, next)"
    if payload.get("mirror_channel", False):
        return "beside its left-right mirror about the head's midline as 3 channels (slice, mirror, slice)"
    return "repeated to 3 channels"


def _metadata(payload: dict[str, Any], ckpt: Path, op: Any, intensity: str, provenance: dict[str, Any]) -> dict:
    size = _image_size(payload)
    synthetic = provenance["synthetic"] is True
    use = f"{SYNTHETIC_NOTICE} (research use only)" if synthetic else NOT_CLINICAL
    if synthetic:
        source = (
            f"synthetic sample data ({provenance['dataset'] or provenance['data']}): synthetic lesions painted "
            f"on warped T1 anatomy, written by `medsad make-sample-data` ({provenance['how']})"
        )
    elif provenance["data"]:
        source = f"{provenance['data']} ({provenance['how']})"
    else:
        source = f"unknown ({provenance['how']})"
    eval_metrics = {}
    if op.calibrated and op.validation:
        v = op.validation
        eval_metrics = {
            k: v[k]
            for k in ("dice_pooled", "slice_balanced_accuracy", "volume_balanced_accuracy")
            if v.get(k) is not None
        }
        eval_metrics["note"] = (
            f"validation figures of the operating point fit ({v.get('n_volumes')} validation "
            "volumes), not a test-set result"
        )
    return {
        "schema": SCHEMA_URL,
        "version": BUNDLE_VERSION,
        "changelog": {
            BUNDLE_VERSION: f"exported by `medsad export-bundle` (medsad_monai {medsad_monai.__version__}) "
            f"from {ckpt.name}"
        },
        "monai_version": _plain_version(_version("monai")),
        "pytorch_version": _plain_version(torch.__version__),
        "numpy_version": np.__version__,
        # The Model Zoo schema (meta_schema_20240725) requires ``required_packages_version``;
        # MONAI 1.6 renames the older ``optional_packages_version`` to it when it reads a bundle.
        "required_packages_version": {
            "medsad_monai": medsad_monai.__version__,
            "open_clip_torch": _version("open_clip_torch"),
            "nibabel": _version("nibabel"),
            "pynrrd": _version("pynrrd"),
            "scikit-image": _version("scikit-image"),
            "scipy": _version("scipy"),
        },
        "name": f"MedSAD lesion detector: {_model_name(payload)}, {size} px",
        "task": "Lesion detection and segmentation in MR volumes, slice by slice (anomaly scores per slice and volume)",
        "description": (
            f"{_model_name(payload)} trained with medsad_monai: each slice of an MR volume (along axis 2 by default) "
            "is "
            f"normalised per volume ('{intensity}'), padded to a square, resized to {size}x{size} and "
            f"{_channels(payload)}; the network gives a 2-channel (background, lesion) probability map and a "
            "slice score. The "
            f"maps are put back on the volume's grid and decided at the checkpoint's operating point "
            f"(map threshold {op.map_threshold:g}, lesions under {op.min_lesion_voxels} voxels"
            + (f" or a mean probability under {op.min_lesion_mean:g}" if op.min_lesion_mean > op.map_threshold else "")
            + f" removed; source "
            f"'{op.source}'). Output: a binary lesion mask with the input's geometry and a JSON of slice and volume "
            f"scores. {use[0].upper() + use[1:]}."
        ),
        "authors": "MedSAD contributors",
        "copyright": "Copyright (c) MedSAD contributors",
        "data_source": source,
        "data_type": "nibabel",
        "image_classes": (
            f"3 channels of [0, 1] grey slices ({size}x{size}; {_channels(payload)}); the inferer applies the "
            "network's CLIP mean/std normalisation before the forward pass"
        ),
        "pred_classes": "2 channels (softmax): channel 0 background, channel 1 lesion probability",
        "eval_metrics": eval_metrics,
        "intended_use": (
            f"{use[0].upper() + use[1:]}. A research tool for lesion detection experiments; its "
            "output must not inform diagnosis or treatment."
        ),
        "references": [
            (
                "MedSAD-CLIP: supervised CLIP with Token-Patch Cross-Attention for medical anomaly detection and "
                "segmentation (implemented in medsad_monai)"
            ),
        ],
        "network_data_format": {
            "inputs": {
                IMAGE_KEY: {
                    "type": "image",
                    "format": "magnitude",
                    "modality": "MR",
                    "num_channels": 3,
                    "spatial_shape": [size, size],
                    "dtype": "float32",
                    "value_range": [0, 1],
                    "is_patch_data": False,
                    "channel_def": (
                        {"0": "previous slice", "1": "slice", "2": "next slice"}
                        if payload.get("context_slices", 0)
                        else {"0": "slice", "1": "slice mirrored left-right about the midline", "2": "slice"}
                        if payload.get("mirror_channel", False)
                        else {"0": "grey slice", "1": "grey slice (copy)", "2": "grey slice (copy)"}
                    ),
                }
            },
            "outputs": {
                PRED_KEY: {
                    "type": "probabilities",
                    "format": "segmentation",
                    "num_channels": 2,
                    "spatial_shape": [size, size],
                    "dtype": "float32",
                    "value_range": [0, 1],
                    "is_patch_data": False,
                    "channel_def": {"0": "background", "1": "lesion"},
                },
                "score": {
                    "type": "probabilities",
                    "format": "classes",
                    "num_channels": 1,
                    "spatial_shape": [],
                    "dtype": "float32",
                    "value_range": [0, 1],
                    "is_patch_data": False,
                    "channel_def": {"0": "slice abnormality score"},
                },
            },
            "post_processed_outputs": {
                PRED_KEY: {
                    "type": "image",
                    "format": "segmentation",
                    "num_channels": 1,
                    "spatial_shape": ["*", "*", "*"],
                    "dtype": "uint8",
                    "value_range": [0, 1],
                    "is_patch_data": False,
                    "channel_def": {"0": "background", "1": "lesion"},
                }
            },
        },
        "medsad": {
            "checkpoint_format": payload.get("format"),
            "model": payload.get("model"),
            "image_size": size,
            "intensity": intensity,
            "slice_axis": 2,
            "operating_point": op.summary(),
            "backbone": _backbone_note(payload),
            "training_data": provenance,
            "model_sha256": _sha256(ckpt),
        },
    }


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _inference_config(
    op: Any, intensity: str, context_slices: int = 0, orientation: str = "ras", mirror_channel: bool = False
) -> dict[str, Any]:
    summary = op.summary()
    ref_op = {k: v for k, v in summary.items() if k not in ("min_lesion_mm3", "warnings")}  # derived, not fields
    if summary["warnings"]:  # the bundle's results say them as medsad infer's do
        ref_op["validation"] = {"warnings": summary["warnings"]}
    return {
        "imports": ["$import torch", "$import medsad_monai.bundle as medsad_bundle"],
        "bundle_root": ".",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "checkpoint": "$@bundle_root + '/models/model.pt'",
        "dataset_dir": "$@bundle_root + '/data'",
        "input": "@dataset_dir",
        "output_dir": "$@bundle_root + '/eval'",
        "slice_axis": 2,
        "batch_size": 8,
        "skip_background": True,
        "precision": "auto",
        "clip_pretrained": None,
        "intensity": intensity,
        "context_slices": context_slices,
        "orientation": orientation,
        "mirror_channel": mirror_channel,
        "operating_point": {"_target_": "medsad_monai.engine.decision.OperatingPoint", **ref_op},
        "network_def": {
            "_target_": "medsad_monai.bundle.load_network",
            "checkpoint": "@checkpoint",
            "clip_pretrained": "@clip_pretrained",
        },
        "network": "$@network_def.to(@device)",
        "datalist": "$medsad_bundle.list_inputs(@input)",
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "medsad_monai.bundle.LoadVolumed", "keys": IMAGE_KEY, "slice_axis": "@slice_axis"},
                {"_target_": "medsad_monai.bundle.NormalizeVolumed", "keys": IMAGE_KEY, "method": "@intensity"},
            ],
        },
        "dataset": {
            "_target_": "Dataset",
            "data": f"$[{{'{IMAGE_KEY}': f}} for f in @datalist]",
            "transform": "@preprocessing",
        },
        "inferer": {
            "_target_": "medsad_monai.bundle.SliceWiseInferer",
            "slice_axis": "@slice_axis",
            "batch_size": "@batch_size",
            "skip_background": "@skip_background",
            "device": "@device",
            "precision": "@precision",
            "context_slices": "@context_slices",
            "orientation": "@orientation",
            "mirror_channel": "@mirror_channel",
        },
        "writer": {"_target_": "medsad_monai.bundle.MaskWriter", "output_dir": "@output_dir", "keys": PRED_KEY},
        "postprocessing": {
            "_target_": "Compose",
            "transforms": [
                {
                    "_target_": "medsad_monai.bundle.LesionMaskd",
                    "keys": PRED_KEY,
                    "operating_point": "@operating_point",
                },
                "@writer",
            ],
        },
        "evaluator": {
            "_target_": "medsad_monai.bundle.SliceWiseEvaluator",
            "dataset": "@dataset",
            "network": "@network",
            "inferer": "@inferer",
            "postprocessing": "@postprocessing",
        },
        "initialize": ["$medsad_bundle.setup_logging()"],
        "run": ["$@evaluator.run()"],
        "finalize": ["$print('masks and scores in ' + str(@output_dir))"],
    }


LOGGING_CONF = """\
[loggers]
keys=root

[handlers]
keys=consoleHandler

[formatters]
keys=fullFormatter

[logger_root]
level=INFO
handlers=consoleHandler

[handler_consoleHandler]
class=StreamHandler
level=INFO
formatter=fullFormatter
args=(sys.stdout,)

[formatter_fullFormatter]
format=%(asctime)s %(levelname)s %(name)s: %(message)s
"""


def _readme(
    payload: dict[str, Any], ckpt: Path, op: Any, intensity: str, provenance: dict[str, Any], meta: dict[str, Any]
) -> str:
    size = _image_size(payload)
    synthetic = provenance["synthetic"] is True
    if op.calibrated:
        v = op.validation or {}
        cases = ", ".join(v.get("cases", [])) or "not recorded"
        how = (
            "fitted on the validation split at the end of training"
            if op.source.startswith("validation")
            else "fitted by `medsad calibrate`"
        )
        op_origin = (
            f"These values are the checkpoint's `calibration` block (source `{op.source}`: {how}"
            f"{', ' + v['date'] if v.get('date') else ''}; validation cases: {cases}). "
            f"Objective: {op.objective.get('map', 'not recorded')}."
        )
    else:
        op_origin = (
            "The checkpoint has **no** `calibration` block: these are the uncalibrated 0.5 fallback values "
            "(what `medsad infer` uses for it too). Run `medsad calibrate --ckpt CKPT --data <validation "
            "data>` and export again to get a fitted operating point."
        )
    warning = (
        f"**{SYNTHETIC_NOTICE[0].upper() + SYNTHETIC_NOTICE[1:]}** — the checkpoint was trained on MedSAD's "
        f"synthetic sample data. "
        if synthetic
        else ""
    )
    rows = "\n".join(f"| `{k}` | {v} |" for k, v in op.summary().items())
    return f"""# {meta["name"]}

{warning}**{NOT_CLINICAL[0].upper() + NOT_CLINICAL[1:]}.**

{meta["description"]}

Exported by `medsad export-bundle` (medsad_monai {medsad_monai.__version__}) from `{ckpt.name}`
(sha256 `{meta["medsad"]["model_sha256"]}`); `models/model.pt` is that checkpoint, byte for byte.

## Training data

{meta["data_source"]}

## Inputs and outputs

- **Bundle input** (`--input`, default `<bundle_root>/data`): one NIfTI/NRRD MR volume, or a folder of them
  (`.nii.gz`, `.nii`, `.nrrd`, `.nhdr`). 2-D PNG/JPG images are not run by the bundle: use `medsad infer`.
- **Network input** (`image`): one slice, `3 x {size} x {size}` float32 in [0, 1] (the grey slice
  {_channels(payload)}); the volume is first normalised with `{intensity}` (the checkpoint's `intensity`), each slice
  along axis `slice_axis` (2) is padded to a square and resized; slices without anatomy are skipped (score 0).
  The inferer applies the network's CLIP mean/std normalisation before the forward pass.
- **Network output** (`pred`): `2 x {size} x {size}` softmax probabilities (0 background, 1 lesion), plus a
  slice score; the maps are resized back onto each slice's own grid.
- **Bundle output** (in `--output_dir`, default `<bundle_root>/eval`): `<name>_mask.nii.gz` (or the
  input's format), a uint8 0/1 lesion mask with exactly the input's geometry, and `<name>_scores.json`
  (slice scores, volume score and decisions, the operating point): the same files, with the same voxels, as
  `medsad infer --ckpt models/model.pt --input <volume> --out <dir>`.

## Operating point

| value | |
| --- | --- |
{rows}

{op_origin} In `configs/inference.json` they are the `operating_point` component (override one with e.g.
`--operating_point#map_threshold 0.5`).

## Run it

Requires `medsad_monai` (and so open_clip_torch) installed in the Python that runs MONAI; MONAI's command
line also needs the `fire` package, which `medsad_monai` installs with it:

```bash
cd <this bundle>
python -m monai.bundle run --config_file configs/inference.json --meta_file configs/metadata.json \\
    --input /path/to/volume_or_folder --output_dir /path/to/out
```

From another folder add `--bundle_root /path/to/bundle` (and give the two configs' paths). The same run
from Python, without `fire`:

```python
from monai.bundle.scripts import run
run(config_file="configs/inference.json", meta_file="configs/metadata.json",
    input="/path/to/volume.nii.gz", output_dir="/path/to/out")
```

Other ids to override: `device` (default CUDA when available), `slice_axis`, `batch_size`,
`skip_background`, `clip_pretrained`.

## Limitations

- The bundle is MedSAD's own pipeline expressed as MONAI bundle components: the network, the transforms, the
  inferer, the writer and the evaluator are functions and classes of `medsad_monai`, which must be installed
  (same version: {medsad_monai.__version__}). It is not a plain `state_dict` + MONAI network: `models/model.pt`
  is a MedSAD checkpoint (config + weights), loaded with `torch.load(weights_only=True)` by
  `medsad_monai.checkpoint.load_checkpoint`.
- Backbone: {_backbone_note(payload)}.
- MONAI Label's stock bundle app (`sample-apps/monaibundle`, `BundleInferTask`) cannot serve this bundle: it
  loads `models/model.pt` itself as a `state_dict` (under the key `model`, which in a MedSAD checkpoint is the
  string `"medsad"`), feeds the whole pre-processed volume to `inferer(inputs, network)` as one batch and
  restores the output with its own `Restored` post-transform — while this model takes `3 x {size} x {size}`
  slices, returns a dict (`mask`, `score`) and needs the slice-wise loop, background skipping and the
  operating point. Serve it with MedSAD's own MONAI Label app (`monai_app/`, docs/monai_label.md in the
  MedSAD repository) with a copy of `models/model.pt` (training through the app replaces the served file):
  `monailabel start_server --app monai_app --studies DIR --conf models medsad --conf checkpoint COPY.pt`.

## Licence

Apache-2.0 (see `LICENSE`). {NOT_CLINICAL[0].upper() + NOT_CLINICAL[1:]}.
"""


def _license(synthetic: bool) -> str:
    extra = f"The model was trained on synthetic sample data: {SYNTHETIC_NOTICE}.\n\n" if synthetic else ""
    return f"""MedSAD lesion detector bundle

Licensed under the Apache License, Version 2.0 (Apache-2.0), the licence of the medsad_monai
project; see https://www.apache.org/licenses/LICENSE-2.0 for the full text. Unless required by
applicable law or agreed to in writing, this bundle is distributed on an "AS IS" BASIS, WITHOUT
WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.

{extra}NOT FOR CLINICAL USE: {NOT_CLINICAL}. This model has not been validated for, and must not be
used in, diagnosis, treatment or any other clinical decision.
"""


def _copy_atomic(src: Path, dst: Path) -> None:
    def write(fh):
        with open(src, "rb") as fin:
            shutil.copyfileobj(fin, fh)

    atomic_write(dst, write)
    shutil.copystat(src, dst)


def export_bundle(
    ckpt: str | os.PathLike, out: str | os.PathLike, overwrite: bool = False, profile: str | None = None
) -> Path:
    """Write the MONAI bundle of checkpoint ``ckpt`` into folder ``out`` (see the module doc).

    Args:
        ckpt: a MedSAD checkpoint (``medsad train`` / ``medsad calibrate``).
        out: the bundle folder; must not exist or be empty unless ``overwrite``.
        overwrite: replace the bundle files of an existing non-empty ``out`` (other files in it
            are left alone).
        profile: the checkpoint's calibration profile the bundle decides at (one site's or
            scanner's operating point); None: its default operating point.

    Returns:
        ``out`` as a :class:`~pathlib.Path`.

    Raises:
        FileNotFoundError: no such checkpoint.
        ValueError: ``ckpt`` is not a MedSAD checkpoint (the message names it), or has an
            invalid calibration block / intensity, or no calibration profile ``profile``;
            ``out`` would overwrite the checkpoint.
        FileExistsError: ``out`` is a file, or a non-empty folder without ``overwrite``.
    """
    from medsad_monai.checkpoint import (
        context_slices_of,
        intensity_of,
        mirror_channel_of,
        operating_point_of,
        orientation_of,
        read_checkpoint,
    )

    ckpt, out = Path(ckpt), Path(out)
    try:
        payload = read_checkpoint(ckpt)
    except ValueError as exc:
        if "cannot be read" not in str(exc):
            raise
        raise ValueError(
            f"{str(ckpt)!r} is not a MedSAD checkpoint: it cannot be read as a torch checkpoint "
            "(corrupt, or another kind of file); give a .pt written by `medsad train` or "
            "`medsad calibrate`"
        ) from exc
    op = operating_point_of(payload, ckpt, profile)
    intensity = intensity_of(payload, ckpt)
    try:
        _image_size(payload)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(
            f"{str(ckpt)!r} is not a complete MedSAD checkpoint ({exc!r}); export a `medsad train` best.pt"
        ) from exc
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {str(out)!r} is a file; give a folder for the bundle")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"--out {str(out)!r} exists and is not empty; choose a new folder or pass --overwrite")
    model_pt = out / "models" / "model.pt"
    if model_pt.exists() and model_pt.resolve() == ckpt.resolve():
        raise ValueError(f"{str(ckpt)!r} is the bundle's own models/model.pt; export to another --out")

    provenance = training_data_of(ckpt)
    _copy_atomic(ckpt, model_pt)
    meta = _metadata(payload, ckpt, op, intensity, provenance)
    atomic_write_text(out / "configs" / "metadata.json", json.dumps(meta, indent=4) + "\n")
    config = _inference_config(
        op,
        intensity,
        context_slices_of(payload, ckpt),
        orientation_of(payload, ckpt),
        mirror_channel_of(payload, ckpt),
    )
    atomic_write_text(out / "configs" / "inference.json", json.dumps(config, indent=4) + "\n")
    atomic_write_text(out / "configs" / "logging.conf", LOGGING_CONF)
    atomic_write_text(out / "docs" / "README.md", _readme(payload, ckpt, op, intensity, provenance, meta))
    atomic_write_text(out / "LICENSE", _license(provenance["synthetic"] is True))
    logger.info(
        "bundle of %s written to %s (%s; operating point %s)",
        ckpt,
        out,
        "synthetic demo" if provenance["synthetic"] else "training data: " + str(provenance["data"]),
        op.source,
    )
    return out
