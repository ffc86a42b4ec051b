"""``make run``: serve the MedSAD demo with MONAI Label on 127.0.0.1:8000.

1. makes sure a demo checkpoint exists (``demo/run/best.pt``; trains the ``tiny`` preset on
   ``sample_data/volumes`` with MedSAD's own training code if it is missing, and says so);
2. makes a datastore ``demo/studies`` from copies of the sample volumes (never the committed
   files): the training volumes with their labels as ``final`` labels, the test volumes
   unlabelled (for active learning). An existing ``demo/studies`` is kept as it is, with the
   labels users saved;
3. publishes the checkpoint to ``demo/model/medsad.pt`` (if not there yet) and starts
   ``monailabel start_server --app monai_app --studies demo/studies --conf models medsad``.

The demo model is trained on synthetic lesions: not for clinical use.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def prepare_studies(sample: Path, studies: Path) -> Path:
    """Copy the sample volumes into a fresh datastore folder (kept if it already exists)."""
    if studies.exists():
        print(f"using the existing datastore {studies} (delete it to start over)")
        return studies
    tmp = studies.with_name(studies.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "labels" / "final").mkdir(parents=True)
    for image in sorted((sample / "imagesTr").glob("*.nii.gz")):
        shutil.copy2(image, tmp / image.name)
        shutil.copy2(sample / "labelsTr" / image.name, tmp / "labels" / "final" / image.name)
    for image in sorted((sample / "imagesTs").glob("*.nii.gz")):
        shutil.copy2(image, tmp / image.name)
    os.replace(tmp, studies)
    print(
        f"datastore {studies}: {len(list(studies.glob('*.nii.gz')))} volumes, "
        f"{len(list((studies / 'labels' / 'final').glob('*.nii.gz')))} with final labels"
    )
    return studies


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--data", default=str(ROOT / "sample_data" / "volumes"))
    parser.add_argument("--demo-dir", default=str(ROOT / "demo"))
    parser.add_argument(
        "--max-minutes",
        type=float,
        help="training budget if no demo checkpoint exists (default: medsad_monai.demo.DEMO_MINUTES)",
    )
    args = parser.parse_args(argv)
    from medsad_monai.log_setup import configure_logging

    configure_logging()

    from medsad_monai.demo import ensure_demo_checkpoint

    demo = Path(args.demo_dir).resolve()
    ckpt = ensure_demo_checkpoint(args.data, demo, *([args.max_minutes] if args.max_minutes else []))
    studies = prepare_studies(Path(args.data), demo / "studies")
    served = demo / "model" / "medsad.pt"
    if not served.exists():
        served.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ckpt, served)
        print(f"published {ckpt} -> {served}")
    from medsad_monai.checkpoint import read_checkpoint

    if not read_checkpoint(served).get("calibration"):
        print(
            f"note: the served model {served} has no calibration block and decides at 0.5; fit it with "
            f"`medsad calibrate --ckpt {served} --data {args.data}` or delete it to re-publish {ckpt}"
        )
    os.environ.setdefault("MONAI_LABEL_TRACKING_ENABLED", "false")
    cmd = [
        sys.executable,
        "-m",
        "monailabel.main",
        "start_server",
        "--app",
        str(ROOT / "monai_app"),
        "--studies",
        str(studies),
        "--host",
        args.host,
        "--port",
        str(args.port),
        "--conf",
        "models",
        "medsad",
        "--conf",
        "checkpoint",
        str(served),
    ]
    print("demo model: trained on synthetic lesions — not for clinical use")
    print(
        f"MONAI Label server on http://{args.host}:{args.port}  (Slicer: MONAI Label module, server address "
        f"http://{args.host}:{args.port}); Ctrl-C stops it",
        flush=True,
    )
    os.execv(sys.executable, cmd)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
