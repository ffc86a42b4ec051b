"""Specifications of the 2-D dataset layouts, 2-D loaders, detect_layout and check_data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medsad_monai.data import check_data, detect_layout, load_image_2d, load_mask_2d, read_layout


def _png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _grey(h: int = 8, w: int = 10, value: int = 100) -> np.ndarray:
    return np.full((h, w), value, dtype=np.uint8)


def _mask(h: int = 8, w: int = 10, box: tuple[int, int, int, int] | None = (2, 4, 3, 6)) -> np.ndarray:
    m = np.zeros((h, w), dtype=np.uint8)
    if box is not None:
        m[box[0] : box[1], box[2] : box[3]] = 255
    return m


def _make_bmad(root: Path) -> Path:
    for i in range(3):
        _png(root / "train/good/img" / f"{i:03d}.png", _grey())
    for split in ("valid", "test"):
        _png(root / split / "good/img/100.png", _grey())
        for i in range(2):
            _png(root / split / "Ungood/img" / f"{i + 200}.png", _grey())
            rgb = np.zeros((8, 10, 3), dtype=np.uint8)
            rgb[1:3, 1:3, 0] = 1  # red channel only, value 1: grey conversion would round to 0
            _png(root / split / "Ungood/anomaly_mask" / f"{i + 200}.png", rgb)
    return root


def _make_busi(root: Path) -> Path:
    _png(root / "benign/benign (1).png", _grey())
    _png(root / "benign/benign (1)_mask.png", _mask(box=(0, 2, 0, 2)))
    _png(root / "benign/benign (1)_mask_1.png", _mask(box=(6, 8, 8, 10)))
    _png(root / "malignant/malignant (1).png", _grey())
    _png(root / "malignant/malignant (1)_mask.png", _mask())
    _png(root / "normal/normal (1).png", _grey())
    _png(root / "normal/normal (1)_mask.png", _mask(box=None))
    _png(root / "normal/normal (2).png", _grey())  # BUSI normal images may lack a mask
    return root


def _make_sricl(root: Path) -> Path:
    # Images sort a, b, c; masks are named so that a positional pairing would be wrong.
    _png(root / "images/a.png", _grey(8, 10))
    _png(root / "images/b.jpg", _grey(6, 6))
    _png(root / "images/c.PNG", _grey(4, 5))
    _png(root / "masks/a.png", _mask(8, 10, box=None))  # normal
    _png(root / "masks/b.png", _mask(6, 6, box=(1, 3, 1, 3)))  # abnormal
    _png(root / "masks/c.png", _mask(4, 5, box=None))  # normal
    return root


# ---------------------------------------------------------------- BMAD


def test_bmad_counts_labels_and_splits(tmp_path: Path) -> None:
    index = read_layout(_make_bmad(tmp_path / "bmad"))
    assert index.layout == "bmad"
    assert (index.n_normal, index.n_abnormal, index.n_masks) == (5, 4, 4)
    by_split = {s: [x for x in index.samples if x.split == s] for s in ("train", "valid", "test")}
    assert all(x.label == 0 and not x.masks for x in by_split["train"])
    assert sorted(x.label for x in by_split["valid"]) == [0, 1, 1]
    for x in index.samples:
        if x.label:
            assert x.masks[0].parent.name == "anomaly_mask" and x.masks[0].stem == x.image.stem


def test_bmad_split_argument_selects_one_split(tmp_path: Path) -> None:
    index = read_layout(_make_bmad(tmp_path / "bmad"), split="valid")
    assert {s.split for s in index.samples} == {"valid"} and len(index.samples) == 3


def test_bmad_rgb_mask_becomes_binary(tmp_path: Path) -> None:
    index = read_layout(_make_bmad(tmp_path / "bmad"), split="test")
    sample = next(s for s in index.samples if s.label == 1)
    mask = load_mask_2d(sample.masks, (8, 10))
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1}
    assert mask.sum() == 4 and mask[1:3, 1:3].all()


def test_bmad_abnormal_image_without_mask_is_an_error_naming_it(tmp_path: Path) -> None:
    root = _make_bmad(tmp_path / "bmad")
    _png(root / "valid/Ungood/img/999.png", _grey())
    with pytest.raises(ValueError, match="999.png"):
        read_layout(root)


# ---------------------------------------------------------------- BUSI


def test_busi_counts_and_labels(tmp_path: Path) -> None:
    index = read_layout(_make_busi(tmp_path / "busi"))
    assert index.layout == "busi"
    labels = {s.group: s.label for s in index.samples}
    assert labels == {"benign (1)": 1, "malignant (1)": 1, "normal (1)": 0, "normal (2)": 0}
    assert index.problems == []
    assert all(s.split is None for s in index.samples)


def test_busi_masks_are_or_merged(tmp_path: Path) -> None:
    index = read_layout(_make_busi(tmp_path / "busi"))
    sample = next(s for s in index.samples if s.group == "benign (1)")
    assert [p.name for p in sample.masks] == ["benign (1)_mask.png", "benign (1)_mask_1.png"]
    mask = load_mask_2d(sample.masks, (8, 10))
    assert mask[0:2, 0:2].all() and mask[6:8, 8:10].all() and mask.sum() == 8


def test_busi_pairs_by_stem_where_sorted_order_would_mismatch(tmp_path: Path) -> None:
    # Sorted separately, images are (1), (10), (2) and masks (1), (1)_1, (10), (2):
    # a positional pairing would give "benign (10)" the mask "benign (1)_mask_1".
    root = tmp_path / "busi"
    for stem, (h, w) in {"benign (1)": (4, 4), "benign (10)": (5, 6), "benign (2)": (7, 3)}.items():
        _png(root / "benign" / f"{stem}.png", _grey(h, w))
        _png(root / "benign" / f"{stem}_mask.png", _mask(h, w, box=(0, 1, 0, 1)))
    _png(root / "benign/benign (1)_mask_1.png", _mask(4, 4, box=(3, 4, 3, 4)))
    index = read_layout(root, "busi")
    for s in index.samples:
        assert all(m.name.startswith(s.image.stem + "_mask") for m in s.masks)
        h, w = load_image_2d(s.image).shape[:2]
        load_mask_2d(s.masks, (h, w))  # raises if a mask of another image slipped in
    assert len(next(s for s in index.samples if s.group == "benign (1)").masks) == 2


def test_busi_abnormal_image_without_mask_is_skipped_and_reported(tmp_path: Path) -> None:
    root = _make_busi(tmp_path / "busi")
    _png(root / "malignant/malignant (2).png", _grey())
    index = read_layout(root)
    assert "malignant (2)" not in {s.group for s in index.samples}
    assert len(index.problems) == 1 and "malignant (2).png" in index.problems[0]


def test_busi_mask_without_image_is_an_error_naming_it(tmp_path: Path) -> None:
    root = _make_busi(tmp_path / "busi")
    _png(root / "benign/benign (7)_mask.png", _mask())
    with pytest.raises(ValueError, match=r"benign \(7\)_mask.png"):
        read_layout(root)


# ---------------------------------------------------------------- SR-ICL


def test_sricl_pairs_by_stem_and_labels_from_mask_content(tmp_path: Path) -> None:
    index = read_layout(_make_sricl(tmp_path / "sricl"))
    assert index.layout == "sricl"
    pairs = {s.image.name: (s.masks[0].name, s.label) for s in index.samples}
    assert pairs == {"a.png": ("a.png", 0), "b.jpg": ("b.png", 1), "c.PNG": ("c.png", 0)}
    for s in index.samples:  # each pair really belongs together: sizes agree
        image = load_image_2d(s.image)
        assert load_mask_2d(s.masks, image.shape[:2]).shape == image.shape[:2]


def test_sricl_unmatched_files_are_listed_in_the_error(tmp_path: Path) -> None:
    root = _make_sricl(tmp_path / "sricl")
    _png(root / "images/d.png", _grey())
    _png(root / "masks/e.png", _mask())
    with pytest.raises(ValueError, match=r"2 SR-ICL .*d\.png.*e\.png"):
        read_layout(root)


def test_sricl_empty_images_folder_is_an_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "sricl/images").mkdir(parents=True)
    (tmp_path / "sricl/masks").mkdir()
    with pytest.raises(ValueError, match="images"):
        read_layout(tmp_path / "sricl")


def test_split_argument_on_a_layout_without_splits_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no predefined splits"):
        read_layout(_make_sricl(tmp_path / "sricl"), split="train")


# ---------------------------------------------------------------- 2-D loaders


def test_load_image_2d_repeats_grey_to_three_channels_in_unit_range(tmp_path: Path) -> None:
    image = load_image_2d(_png(tmp_path / "g.png", _grey(value=255)))
    assert image.shape == (8, 10, 3) and image.dtype == np.float32
    assert np.allclose(image, 1.0)


def test_load_image_2d_scales_16_bit_by_full_range(tmp_path: Path) -> None:
    path = tmp_path / "g16.png"
    Image.fromarray(np.full((4, 4), 32768, dtype=np.uint16)).save(path)
    image = load_image_2d(path)
    assert image.shape == (4, 4, 3) and np.allclose(image, 32768 / 65535, atol=1e-6)


def test_mask_with_a_different_size_than_its_image_names_the_file(tmp_path: Path) -> None:
    path = _png(tmp_path / "wrong_mask.png", _mask(5, 5))
    with pytest.raises(ValueError, match="wrong_mask.png"):
        load_mask_2d([path], (8, 10))


def test_no_mask_files_give_an_all_zero_mask() -> None:
    mask = load_mask_2d([], (3, 4))
    assert mask.shape == (3, 4) and mask.dtype == np.uint8 and mask.sum() == 0


# ---------------------------------------------------------------- detect_layout


@pytest.mark.parametrize("maker,expected", [(_make_bmad, "bmad"), (_make_busi, "busi"), (_make_sricl, "sricl")])
def test_detect_layout_recognises_each_2d_layout(tmp_path: Path, maker, expected: str) -> None:
    assert detect_layout(maker(tmp_path / "d")) == expected


def test_detect_layout_recognises_volume_folders(tmp_path: Path) -> None:
    (tmp_path / "v/imagesTr").mkdir(parents=True)
    (tmp_path / "v/labelsTr").mkdir()
    assert detect_layout(tmp_path / "v") == "volumes"


def test_detect_layout_rejects_an_empty_folder_naming_it(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty.*no known layout"):
        detect_layout(tmp_path / "empty")


def test_detect_layout_rejects_mixed_layouts(tmp_path: Path) -> None:
    root = _make_sricl(tmp_path / "mixed")
    (root / "imagesTr").mkdir()
    with pytest.raises(ValueError, match="mix of layouts"):
        detect_layout(root)


# ---------------------------------------------------------------- check_data


def _listing(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_size) for p in root.rglob("*")}


def test_check_data_counts_per_split_and_formats_a_summary(tmp_path: Path) -> None:
    report = check_data(_make_bmad(tmp_path / "bmad"))
    assert report.ok and report.layout == "bmad"
    assert (report.counts["train"].normal, report.counts["train"].abnormal) == (3, 0)
    assert (report.counts["valid"].abnormal, report.counts["valid"].masks) == (2, 2)
    text = report.format()
    assert "bmad" in text and "valid" in text and "problems: none" in text


def test_check_data_reports_a_mis_sized_mask(tmp_path: Path) -> None:
    root = _make_sricl(tmp_path / "sricl")
    _png(root / "masks/a.png", _mask(3, 3, box=None))
    report = check_data(root)
    assert not report.ok and any("a.png" in p and "size" in p for p in report.problems)
    assert "a.png" in report.format()


@pytest.mark.parametrize("maker", [_make_bmad, _make_busi, _make_sricl])
def test_check_data_never_writes_into_the_data_folder(tmp_path: Path, maker) -> None:
    root = maker(tmp_path / "d")
    before = _listing(root)
    check_data(root).format()
    assert _listing(root) == before
