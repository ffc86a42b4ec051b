"""Make ``docs/slicer_screenshot.png``: a MedSAD result drawn by 3D Slicer's own view code.

The ``slicer-core`` wheel has no Qt, so there is no ``qMRMLSliceView``. This script builds the
same non-Qt parts that a Slicer slice view is made of and renders them offscreen:

* a ``vtkMRMLSliceNode`` "Red" (axial, layout name "Red") and its ``vtkMRMLSliceCompositeNode``
  (background volume = the sample volume), both created by ``vtkMRMLSliceLogic.AddSliceNode``;
* ``vtkMRMLSliceLogic``, which reslices the volume, applies the volume display node's window/level
  and grey colour table, and blends the layers. Its output is shown in a ``vtkRenderer`` as a
  ``vtkImageMapper`` + ``vtkActor2D`` with window 255 / level 127.5, which is how Slicer's slice
  view shows the slice logic's image;
* a ``vtkMRMLDisplayableManagerGroup`` built by ``vtkMRMLSliceViewDisplayableManagerFactory``
  with ``vtkMRMLSegmentationsDisplayableManager2D``. Slicer's segmentation displayable manager
  draws the "Lesion" segment (fill and outline) on top of the slice.

Rendering path: **displayable manager**. The label-layer blending fallback is not used. Displayable
managers need a render window interactor, or ``SetMRMLDisplayableNode`` crashes. The script
creates a ``vtkGenericRenderWindowInteractor``, which never opens a window or starts an event loop,
and a ``vtkMRMLSliceViewInteractorStyle``.

The view is jumped to the slice that MedSAD reports as worst (``--slice worst``, the default), just
as the module's "jump to worst slice" does. The view is then fitted to the volume. The right-hand
panel plots ``result.slice_scores`` with matplotlib. PIL puts the two panels and a caption together.

Run from the repository (CPU only; nothing is downloaded)::

    .venv/bin/python tools/make_slicer_screenshot.py
    .venv/bin/python tools/make_slicer_screenshot.py --slice largest --out /tmp/shot.png
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Headless Linux: ask VTK for its EGL window straight away rather than failing on X first.
if sys.platform.startswith("linux") and not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
    os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "MedSADSlicer" / "MedSAD"))
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import slicer  # noqa: E402
import vtk  # noqa: E402
from vtk.util import numpy_support  # noqa: E402

from MedSADLib import SEGMENT_NAME, LocalBackend, MedSADLogic, nodes  # noqa: E402

logger = logging.getLogger("make_slicer_screenshot")

DEFAULT_CASE = ROOT / "sample_data" / "volumes" / "imagesTs" / "case_010.nii.gz"
DEFAULT_OUT = ROOT / "docs" / "slicer_screenshot.png"
CAPTION = "MedSAD tiny demo model (synthetic lesions, not for clinical use)"
PLOT_TITLE = "MedSAD per-slice anomaly score"
MAX_BYTES = 300 * 1024


@dataclass
class SliceView:
    """The objects of one offscreen slice view. Keep a reference to all of them while rendering."""

    app_logic: Any
    slice_logic: Any
    slice_node: Any
    composite_node: Any
    render_window: Any
    renderer: Any
    interactor: Any
    interactor_style: Any
    displayable_managers: Any


def load_volume(scene: Any, path: Path, color_logic: Any) -> Any:
    """Read a NIfTI into a ``vtkMRMLScalarVolumeNode`` with Slicer's archetype storage node. The
    volume gets a grey display node with auto window/level, as it would in Slicer."""
    name = path.name.removesuffix(".gz").removesuffix(".nii")
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    if not storage.ReadData(volume):
        raise RuntimeError(f"Slicer's storage node could not read {path}")
    volume.SetAndObserveStorageNodeID(storage.GetID())
    volume.CreateDefaultDisplayNodes()
    display = volume.GetDisplayNode()
    if not display.GetColorNodeID():
        display.SetAndObserveColorNodeID(color_logic.GetDefaultVolumeColorNodeID())
    display.AutoWindowLevelOn()
    return volume


def make_slice_view(scene: Any, app_logic: Any, volume: Any, size: int) -> SliceView:
    """Build the "Red" slice view offscreen: slice logic + renderer + segmentations displayable manager."""
    slice_logic = slicer.vtkMRMLSliceLogic()
    slice_logic.SetMRMLApplicationLogic(app_logic)
    slice_logic.SetMRMLScene(scene)
    slice_node = slice_logic.AddSliceNode("Red")  # singleton tag and layout name "Red"
    slice_node.SetOrientationToAxial()
    logics = vtk.vtkCollection()
    logics.AddItem(slice_logic)
    app_logic.SetSliceLogics(logics)
    composite = slice_logic.GetSliceCompositeNode()
    composite.SetBackgroundVolumeID(volume.GetID())
    slice_logic.ResizeSliceNode(size, size)  # what qMRMLSliceView does on resize

    render_window = vtk.vtkRenderWindow()
    render_window.SetOffScreenRendering(1)
    render_window.SetSize(size, size)
    render_window.SetMultiSamples(0)
    renderer = vtk.vtkRenderer()
    renderer.SetBackground(0.0, 0.0, 0.0)
    render_window.AddRenderer(renderer)

    mapper = vtk.vtkImageMapper()  # the slice logic's blended RGBA image, 1 pixel = 1 view pixel
    mapper.SetColorWindow(255.0)
    mapper.SetColorLevel(127.5)
    mapper.SetInputConnection(slice_logic.GetImageDataConnection())
    actor = vtk.vtkActor2D()
    actor.SetMapper(mapper)
    renderer.AddViewProp(actor)

    # Displayable managers observe the render window's interactor; a generic one never opens a window.
    interactor = vtk.vtkGenericRenderWindowInteractor()
    interactor.SetRenderWindow(render_window)
    interactor.SetInteractorStyle(vtk.vtkInteractorStyleUser())
    style = slicer.vtkMRMLSliceViewInteractorStyle()
    style.SetInteractor(interactor)
    style.SetSliceLogic(slice_logic)

    factory = slicer.vtkMRMLSliceViewDisplayableManagerFactory.GetInstance()
    factory.SetMRMLApplicationLogic(app_logic)
    if not factory.IsDisplayableManagerRegistered("vtkMRMLSegmentationsDisplayableManager2D"):
        factory.RegisterDisplayableManager("vtkMRMLSegmentationsDisplayableManager2D")
    group = factory.InstantiateDisplayableManagers(renderer)
    names = [group.GetNthDisplayableManager(i).GetClassName() for i in range(group.GetDisplayableManagerCount())]
    if "vtkMRMLSegmentationsDisplayableManager2D" not in names:
        raise RuntimeError(f"the segmentations displayable manager was not instantiated (got {names})")
    group.SetMRMLDisplayableNode(slice_node)
    slice_logic.SetDisplayableManagerGroup(group)
    style.SetDisplayableManagers(group)
    logger.info("slice view %dx%d, displayable managers: %s", size, size, ", ".join(names))
    return SliceView(app_logic, slice_logic, slice_node, composite, render_window, renderer, interactor, style, group)


def shown_k(view: SliceView, volume: Any) -> int:
    """K index of the volume slice through the centre of the view."""
    slice_to_ras = view.slice_node.GetSliceToRAS()
    centre = [slice_to_ras.GetElement(i, 3) for i in range(3)] + [1.0]
    ras_to_ijk = vtk.vtkMatrix4x4()
    volume.GetRASToIJKMatrix(ras_to_ijk)
    return int(round(ras_to_ijk.MultiplyPoint(centre)[2]))


def grab(view: SliceView) -> np.ndarray:
    """Render offscreen and return the view as an RGB array (row 0 = top)."""
    view.slice_logic.UpdatePipeline()
    view.displayable_managers.RequestRender()
    view.render_window.Render()
    grabber = vtk.vtkWindowToImageFilter()
    grabber.SetInput(view.render_window)
    grabber.SetInputBufferTypeToRGB()
    grabber.ReadFrontBufferOff()
    grabber.Update()
    image = grabber.GetOutput()
    width, height, _ = image.GetDimensions()
    pixels = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(height, width, -1)
    return np.ascontiguousarray(pixels[::-1, :, :3])  # VTK's first row is the bottom one


def check_not_blank(rgb: np.ndarray, min_lesion_pixels: int = 20) -> int:
    """Raise unless the render shows some image and some red lesion pixels. Returns their number."""
    grey = rgb.astype(np.float32).mean(axis=2)
    if grey.std() < 10.0 or (grey > 40).mean() < 0.05:
        raise RuntimeError(
            f"the slice view render looks blank (std {grey.std():.1f}, {100 * (grey > 40).mean():.1f}% non-dark pixels)"
        )
    r, g, b = (rgb[..., i].astype(np.int16) for i in range(3))
    reddish = int(((r - np.maximum(g, b)) > 60).sum())
    if reddish < min_lesion_pixels:
        raise RuntimeError(f"no {SEGMENT_NAME} segment visible in the slice view ({reddish} red pixels)")
    return reddish


def pick_slice(spec: str, result: Any) -> int:
    """``worst`` (MedSAD's worst slice), ``largest`` (most Lesion voxels) or a K index."""
    depth = len(result.slice_scores)
    if spec == "worst":
        return int(result.worst_slice)
    if spec == "largest":
        return int(np.asarray(result.mask).reshape(depth, -1).sum(axis=1).argmax())
    k = int(spec)
    if not 0 <= k < depth:
        raise SystemExit(f"--slice {k}: the volume has slices 0..{depth - 1}")
    return k


def render_slice(
    case: Path, checkpoint: Path, slice_spec: str, threshold: float, size: int
) -> tuple[np.ndarray, Any, int, str]:
    """Run MedSAD on ``case`` through the Slicer library and render the chosen slice.
    Returns (RGB render, MedSAD result, shown K, volume name)."""
    scene = slicer.vtkMRMLScene()
    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)
    # The MRML colour logic adds Slicer's built-in colour tables (Grey, ...). vtkSlicerColorLogic would
    # also look for colour files under Slicer's home directory, which the wheel does not have.
    color_logic = slicer.vtkMRMLColorLogic()
    color_logic.SetMRMLApplicationLogic(app_logic)
    color_logic.SetMRMLScene(scene)
    app_logic.SetColorLogic(color_logic)
    # MedSADLib's nodes.set_segment calls vtkSlicerSegmentationsModuleLogic().SetMRMLScene(scene) itself (it
    # registers the segmentation converters and node classes); a second call here would only re-register them.

    volume = load_volume(scene, case, color_logic)
    logic = MedSADLogic(scene)
    result = logic.run(volume, LocalBackend(str(checkpoint)), threshold=threshold)
    outputs = logic.create_outputs(volume, result)
    seg_display = outputs.segmentation.GetDisplayNode()
    seg_display.SetSliceIntersectionThickness(2)  # Slicer's default is 1 px; 2 reads better when downscaled

    view = make_slice_view(scene, app_logic, volume, size)
    view.slice_logic.FitSliceToAll()
    k = pick_slice(slice_spec, result)
    if k == result.worst_slice:
        ras = logic.worst_slice_ras(volume, result)
    else:
        ras = nodes.slice_centre_ras(volume, k)  # the helper worst_slice_ras uses
    view.slice_node.JumpSliceByCentering(*ras)
    got = shown_k(view, volume)
    if got != k:
        raise RuntimeError(f"the slice view shows K={got}, expected K={k}")
    rgb = grab(view)
    reddish = check_not_blank(rgb)
    logger.info(
        "%s: rendered axial slice K=%d (worst slice %d, score %.3f), %d lesion-coloured pixels",
        volume.GetName(),
        k,
        result.worst_slice,
        result.slice_scores[k],
        reddish,
    )
    return rgb, result, k, volume.GetName()


def score_plot(result: Any, k_shown: int, size: tuple[int, int]) -> Any:
    """A PIL image of the per-slice scores, the threshold and the worst and shown slices."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    scores = np.asarray(result.slice_scores, dtype=float)
    worst = int(result.worst_slice)
    dpi = 100
    fig, ax = plt.subplots(figsize=(size[0] / dpi, size[1] / dpi), dpi=dpi)
    try:
        ax.plot(np.arange(len(scores)), scores, color="#e6261a", lw=1.6, label="slice score")
        ax.axhline(
            result.slice_threshold, color="0.35", ls="--", lw=1.0, label=f"slice threshold {result.slice_threshold:.2f}"
        )
        ax.axvline(worst, color="#1f5fbf", lw=1.0, alpha=0.8)
        ax.plot([worst], [scores[worst]], "o", color="#1f5fbf", ms=7, label=f"worst slice K={worst}")
        if k_shown != worst:
            ax.plot([k_shown], [scores[k_shown]], "s", color="k", ms=6, mfc="none", label=f"shown slice K={k_shown}")
        ax.set_xlim(0, len(scores) - 1)
        ax.set_ylim(0.0, 1.0)
        ax.set_xlabel("slice (K)")
        ax.set_ylabel("anomaly score")
        ax.set_title(PLOT_TITLE, fontsize=12)
        ax.grid(alpha=0.25)
        ax.legend(loc="upper right", fontsize=9, frameon=False)
        fig.tight_layout()
        fig.canvas.draw()
        plot = Image.fromarray(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy())
    finally:
        plt.close(fig)
    return plot


def compose(rgb: np.ndarray, plot: Any, lines: list[str]) -> Any:
    """The slice render on the left, the plot on the right, caption lines (wrapped) below."""
    from matplotlib import font_manager
    from PIL import Image, ImageDraw, ImageFont

    slice_image = Image.fromarray(rgb)
    font = ImageFont.truetype(font_manager.findfont("DejaVu Sans"), 15)
    gap, pad, line_height = 8, 10, 21
    width = slice_image.width + gap + plot.width
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    wrapped: list[str] = []
    for line in lines:
        current = ""
        for word in line.split():
            candidate = f"{current} {word}".strip()
            if current and measure.textlength(candidate, font=font) > width - 2 * pad:
                wrapped.append(current)
                current = word
            else:
                current = candidate
        wrapped.append(current)
    top = max(slice_image.height, plot.height)
    canvas = Image.new("RGB", (width, top + pad + line_height * len(wrapped) + pad), "white")
    canvas.paste(slice_image, (0, (top - slice_image.height) // 2))
    canvas.paste(plot, (slice_image.width + gap, (top - plot.height) // 2))
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(wrapped):
        draw.text((pad, top + pad + i * line_height), line, fill=(30, 30, 30), font=font)
    return canvas


def save_png(image: Any, out: Path) -> int:
    """Write ``image`` as PNG (palette-quantised if that is needed to stay under 300 KB). Returns bytes."""
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out, optimize=True)
    if out.stat().st_size > MAX_BYTES:
        image.quantize(colors=256, dither=0).save(out, optimize=True)
    size = out.stat().st_size
    if size > MAX_BYTES:
        raise RuntimeError(f"{out} is {size // 1024} KB, over the {MAX_BYTES // 1024} KB budget")
    return size


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--case",
        type=Path,
        default=DEFAULT_CASE,
        help="a 3-D NIfTI volume (default: sample case_010, the largest held-out lesion)",
    )
    p.add_argument(
        "--checkpoint",
        type=Path,
        help="MedSAD checkpoint (default: demo/run/best.pt, trained on the sample volumes if missing)",
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output PNG (default: docs/slicer_screenshot.png)")
    p.add_argument(
        "--slice",
        default="worst",
        help="'worst' (MedSAD's worst slice, default), 'largest' (most Lesion voxels) or a K index",
    )
    p.add_argument(
        "--threshold", type=float, default=None, help="lesion-map threshold (default: the checkpoint's calibrated one)"
    )
    p.add_argument("--size", type=int, default=512, help="slice view size in pixels (square)")
    p.add_argument("--view-only", action="store_true", help="write only the Slicer slice view, no plot or caption")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.slice not in ("worst", "largest") and not args.slice.lstrip("-").isdigit():
        raise SystemExit(f"--slice {args.slice!r}: use 'worst', 'largest' or a K index")
    checkpoint = args.checkpoint
    if checkpoint is None:
        from medsad_monai.demo import ensure_demo_checkpoint

        checkpoint = ensure_demo_checkpoint(ROOT / "sample_data" / "volumes", ROOT / "demo")
    if not args.case.exists():
        raise SystemExit(f"{args.case}: no such volume")

    rgb, result, k, name = render_slice(args.case, Path(checkpoint), args.slice, args.threshold, args.size)
    from PIL import Image

    if args.view_only:
        image = Image.fromarray(rgb)
    else:
        plot = score_plot(result, k, (args.size, args.size))
        which = "MedSAD's worst slice" if k == result.worst_slice else "shown slice"
        image = compose(
            rgb,
            plot,
            [
                f'Left: {name}, axial slice K={k} ({which}) with the "{SEGMENT_NAME}" segment, rendered offscreen by '
                "3D Slicer's own slice view code (vtkMRMLSliceLogic + segmentations displayable manager). "
                "Right: MedSAD's score for every slice.",
                CAPTION,
            ],
        )
    size = save_png(image, args.out)
    logger.info("%s: %dx%d px, %.0f KB", args.out, image.width, image.height, size / 1024)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
