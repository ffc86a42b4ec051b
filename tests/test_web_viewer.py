"""The web viewer (web_viewer/) in a real headless chromium, against the real MONAI Label server."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.server_process import free_port, monailabel_server

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
KNOWN_NOISE = ("405",)  # trame's launcher probe: POST /paraview/ answers 405 on every load


@pytest.fixture(scope="module")
def browser():
    """Headless Debian chromium driven by playwright (never a downloaded browser)."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install it with `apt-get install -y chromium` (as .ci/run does)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(headless=True, executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


@contextlib.contextmanager
def viewer(log: Path, *args: str, tmpdir: Path | None = None) -> Iterator[str]:
    """Run ``python -m web_viewer`` on a free loopback port (its temporary files under ``tmpdir``
    when given); yields its URL."""
    port = free_port()
    cmd = [sys.executable, "-m", "web_viewer", "--host", "127.0.0.1", "--port", str(port), "--server", *args]
    env = {**os.environ, "MONAI_LABEL_TRACKING_ENABLED": "false"}
    if tmpdir is not None:
        env["TMPDIR"] = str(tmpdir)
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"viewer exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2) as res:
                    if res.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"viewer not up:\n{log.read_text()[-3000:]}")
            time.sleep(0.3)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextlib.contextmanager
def page_of(browser, url: str):
    """A page that records console errors; fails the test on any but the known launcher 405."""
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url)
    try:
        yield page
    finally:
        page.close()
    bad = [e for e in errors if not any(k in e for k in KNOWN_NOISE)]
    assert not bad, f"browser console errors: {bad}"


def red_mask(page) -> np.ndarray:
    """Lesion-coloured pixels of the slice image as the browser drew it (rows top-down)."""
    from PIL import Image

    png = page.locator("#slice-img").screenshot()
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    return (rgb[..., 0] - rgb[..., 1]) > 60


def red_pixels(page) -> int:
    return int(red_mask(page).sum())


def expect_message(page, text: str, timeout: float = 30.0) -> str:
    """Wait for the page's message to contain ``text``; fail with the message shown instead."""
    deadline = time.monotonic() + timeout
    shown = ""
    while time.monotonic() < deadline:
        loc = page.locator("#message")
        shown = loc.inner_text() if loc.count() else ""
        if text in shown:
            return shown
        page.wait_for_timeout(200)
    raise AssertionError(f"expected a message with {text!r}, the page shows {shown!r}")


def wait_slice(page, index: int) -> None:
    page.wait_for_function(
        "i => document.querySelector('#slice-label')?.textContent.trim().startsWith('slice ' + i + ' ')",
        arg=index,
        timeout=15000,
    )
    page.wait_for_timeout(300)  # the new PNG is set with the same state update; let it paint


def test_local_mode_overlay_scores_and_table(browser, tmp_path):
    import nibabel as nib

    shape = (40, 32, 12)
    affine = np.diag([0.8, 1.1, 3.0, 1.0])
    x, y = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    image = np.zeros(shape, np.int16)
    image[4:36, 4:28, :] = 300
    mask = np.zeros(shape, np.uint8)
    lesion = (x - 25) ** 2 + (y - 12) ** 2 < 25
    for k in (5, 6, 7):
        mask[..., k][lesion] = 1
        image[..., k][lesion] = 900
    nib.save(nib.Nifti1Image(image, affine), tmp_path / "case.nii.gz")
    nib.save(nib.Nifti1Image(mask, affine), tmp_path / "case_mask.nii.gz")
    scores = [0.05] * shape[2]
    scores[5:8] = [0.7, 0.9, 0.6]
    summary = {
        "input": str(tmp_path / "case.nii.gz"),
        "mask": str(tmp_path / "case_mask.nii.gz"),
        "slice_scores": scores,
        "volume_score": 0.9,
        "volume_abnormal": True,
        "worst_slice": 6,
        "slice_threshold": 0.5,
        "volume_threshold": 0.5,
        "slice_axis": 2,
        "n_lesions": 1,
        "lesions": [{"voxels": 237, "volume_mm3": 625.68, "slices": [5, 7], "centroid_voxel": [25.0, 12.0, 6.0]}],
        "operating_point": {"source": "validation", "warnings": ["validation holds 3 lesion(s): few", "second"]},
        "low_confidence": {"n_lesions": 2, "min_lesion_mean": 0.8, "lesions": [{"voxels": 90, "volume_mm3": 1300.4}]},
        "familiarity": {
            "distance": 0.28,
            "threshold": 0.15,
            "familiar": False,
            "warning": "this scan is unlike theirs",
        },
    }
    (tmp_path / "case_scores.json").write_text(json.dumps(summary))
    start = time.monotonic()
    with viewer(tmp_path / "viewer.log", "--scores", str(tmp_path / "case_scores.json")) as url:
        with page_of(browser, url) as page:
            page.wait_for_selector("#slice-img", timeout=30000)
            wait_slice(page, 6)  # opens on the most anomalous slice
            first_frame = time.monotonic() - start
            red = red_mask(page)
            assert red.sum() > 20, "no lesion overlay on a lesion slice"
            # where the mask's voxels are: x (first axis) left-right, y (second axis) bottom-up;
            # the picture keeps the spacing's aspect (40 x 0.8 mm wide, 32 x 1.1 mm high)
            h, w = red.shape
            assert abs(w / h - (40 * 0.8) / (32 * 1.1)) < 0.05
            rows, cols = np.nonzero(red)
            assert abs(cols.mean() / w - 25.5 / 40) < 0.05
            assert abs(1 - rows.mean() / h - 12.5 / 32) < 0.05
            assert "ABNORMAL" in page.locator("#verdict").inner_text()
            assert "0.900" in page.locator("#verdict").inner_text()
            assert "1 lesion, the largest 626 mm³ on slices 5-7" in page.locator("#verdict").inner_text()
            assert "2 low-confidence regions hidden, the largest 1,300 mm³" in page.locator("#verdict").inner_text()
            assert "; warning: this scan is unlike theirs" in page.locator("#verdict").inner_text()
            assert (
                "calibration warns: validation holds 3 lesion(s): few (and 1 more)"
                in page.locator("#verdict").inner_text()
            )
            assert page.locator("#score-plot polyline").count() == 1
            page.locator(".score-row").nth(1).click()  # slice 1: lesion-free
            wait_slice(page, 1)
            assert red_pixels(page) == 0, "overlay drawn on a lesion-free slice"
            page.locator("#goto-worst").click()
            wait_slice(page, 6)
            assert red_pixels(page) > 20
    assert first_frame < 30


def test_server_mode_infer_and_bad_input(browser, app_studies, tmp_path):
    import nibabel as nib

    from medsad_monai.checkpoint import write_calibration
    from medsad_monai.engine.decision import OperatingPoint

    studies, checkpoint = app_studies
    write_calibration(checkpoint, OperatingPoint(map_threshold=0.9, source="calibrate", profile="site_b"))
    # a volume the model refuses: its slices (axis 2) are lines
    nib.save(nib.Nifti1Image(np.ones((32, 1, 12), np.int16), np.eye(4)), studies / "flat_case.nii.gz")
    ml_port = free_port()
    viewer_tmp = tmp_path / "viewer_tmp"
    viewer_tmp.mkdir()
    # the viewer starts first, as `make view` beside a `make run` that is still starting: the page
    # lists the images once the server is up
    args = ("--monailabel", f"http://127.0.0.1:{ml_port}", "--profile", "site_b")  # one site's operating point
    with viewer(tmp_path / "viewer.log", *args, tmpdir=viewer_tmp) as url:
        with (
            monailabel_server(studies, {"checkpoint": str(checkpoint)}, tmp_path / "server.log", port=ml_port),
            page_of(browser, url) as page,
        ):
            page.wait_for_selector("#image-select", timeout=30000)
            page.wait_for_function("() => window.trame.state.get('images').length > 0", timeout=30000)
            listed = page.evaluate("() => window.trame.state.get('images').map(r => r.id)")
            assert {"case_000", "case_100", "flat_case"} <= set(listed)
            # a volume the model refuses: the server's message on the page
            page.locator("#image-id").fill("flat_case")
            page.locator("#run").click()
            expect_message(page, "server answered 422", 30)
            # unknown image: one message, the viewer keeps running
            page.locator("#image-id").fill("no_such_case")
            page.locator("#run").click()
            expect_message(page, "unknown image", 30)
            # a real case through MONAI Label's client
            page.locator("#image-id").fill("case_100")
            page.locator("#run").click()
            expect_message(page, "done", 60)
            page.wait_for_selector("#slice-img", timeout=15000)
            # the downloaded volume and mask are removed once read: the viewer keeps no copies
            assert [p.name for p in viewer_tmp.rglob("*") if p.is_file()] == []
            assert page.locator("#model-sha").inner_text().split()[-1] != "-"
            verdict = page.locator("#verdict").inner_text()
            assert "normal" in verdict.lower() and "decided at calibration profile site_b" in verdict
            rows = page.locator(".score-row")
            assert rows.count() > 3
            target = 2 if page.locator("#slice-label").inner_text().split()[1] != "2" else 3
            rows.nth(target).click()
            wait_slice(page, target)
            # the overlay agrees with the mask the server returned for this slice
            has_lesion = page.evaluate("() => window.trame.state.get('slice_has_lesion')")
            assert (red_pixels(page) > 0) == bool(has_lesion)
    # server down: the running viewer says so on the page
    with viewer(tmp_path / "viewer2.log", "--monailabel", f"http://127.0.0.1:{free_port()}") as url:
        with page_of(browser, url) as page:
            expect_message(page, "cannot reach", 30)
            page.locator("#image-id").fill("case_100")
            page.locator("#run").click()
            expect_message(page, "cannot reach", 30)


# --------------------------------------------------------------------------- orientation (no browser)


def test_a_slice_looks_the_same_whatever_the_files_voxel_order(tmp_path):
    """One scan stored in five voxel orders (NIfTI) and as an LPS NRRD: the same axial slice
    gives the same picture (right: R, top: A), and the aspect follows the in-plane spacing."""
    import nibabel as nib
    import nrrd

    from web_viewer.data import load_case, orientation_caption, slice_png_data_url, slice_rgb

    rng = np.random.default_rng(0)
    image = rng.random((12, 16, 9)).astype(np.float32) * 100  # RAS: I right, J anterior, K superior
    mask = np.zeros(image.shape, np.uint8)
    mask[2:5, 9:14, 4] = 1  # right-ish, anterior, one slice: an asymmetric mark
    affine = np.diag([0.8, 1.1, 3.0, 1.0])
    affine[:3, 3] = (-5.0, 7.0, 2.0)
    ras_img, ras_mask = nib.Nifti1Image(image, affine), nib.Nifti1Image(mask, affine)
    pictures, sizes = {}, {}
    for codes in (("R", "A", "S"), ("L", "P", "S"), ("P", "S", "R"), ("A", "S", "L"), ("L", "A", "S")):
        ornt = nib.orientations.ornt_transform(
            nib.orientations.io_orientation(affine), nib.orientations.axcodes2ornt(codes)
        )
        name = "".join(codes)
        nib.save(ras_img.as_reoriented(ornt), tmp_path / f"{name}.nii.gz")
        nib.save(ras_mask.as_reoriented(ornt), tmp_path / f"{name}_mask.nii.gz")
        axis = codes.index("S")  # superior increases along it in every order here: slice 4 is slice 4
        case = load_case(tmp_path / f"{name}.nii.gz", tmp_path / f"{name}_mask.nii.gz", {"slice_axis": axis})
        pictures[name] = slice_rgb(case, 4)
        sizes[name] = _png_size(slice_png_data_url(case, 4))
        assert orientation_caption(case) == "right: R, top: A"
    # LPS NRRD, as 3D Slicer writes it
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    header = {"space": "left-posterior-superior", "space directions": lps[:3, :3].T, "space origin": lps[:3, 3]}
    nrrd.write(str(tmp_path / "lps.nrrd"), image, header)
    nrrd.write(str(tmp_path / "lps_mask.nrrd"), mask, header)
    case = load_case(tmp_path / "lps.nrrd", tmp_path / "lps_mask.nrrd", {"slice_axis": 2})
    pictures["nrrd"], sizes["nrrd"] = slice_rgb(case, 4), _png_size(slice_png_data_url(case, 4))
    reference = pictures.pop("RAS")
    red = (reference[..., 0].astype(int) - reference[..., 1]) > 60
    rows, cols = np.nonzero(red)
    # columns 2-4 from the left (I counts towards R, left to right), rows near the top (J anterior)
    assert red.sum() == 15 and (cols.min(), cols.max()) == (2, 4) and (rows.min(), rows.max()) == (2, 6)
    for name, picture in pictures.items():
        np.testing.assert_array_equal(picture, reference, err_msg=name)
    assert len(set(sizes.values())) == 1 and sizes["nrrd"][0] < sizes["nrrd"][1]  # 9.6 mm wide, 17.6 mm high


def _png_size(data_url: str) -> tuple[int, int]:
    import base64

    from PIL import Image

    return Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))).size


def test_the_image_list_says_what_scoring_stored():
    """Each image's line: the stored calibrated score and verdict, and a mark when scoring found
    the scan unlike the model's training scans (``anomaly_familiar`` false; None: not assessed)."""
    pytest.importorskip("trame")
    from web_viewer.app import image_title

    assert image_title("case_3", {}) == "case_3"
    seen = {"anomaly_score": 0.1, "anomaly_abnormal": False}
    assert image_title("case_2", {**seen, "anomaly_familiar": True}) == "case_2  score 0.100 (normal)"
    assert image_title("case_2", {**seen, "anomaly_familiar": None}) == "case_2  score 0.100 (normal)"
    title = image_title("case_1", {"anomaly_score": 0.42, "anomaly_abnormal": True, "anomaly_familiar": False})
    assert title == "case_1  score 0.420 (abnormal)  - unlike the training scans"
