"""``python -m web_viewer``: serve the MedSAD web viewer (see docs/web_viewer.md)."""

from __future__ import annotations

import atexit
import logging
import shutil
import tempfile
from pathlib import Path

from web_viewer.app import DEFAULT_SERVER, Viewer

logger = logging.getLogger("web_viewer")


def main() -> None:
    """Parse the options, build the page, serve it (blocks)."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("web_viewer").setLevel(logging.INFO)  # trame's own INFO logs are per token
    workdir = Path(tempfile.mkdtemp(prefix="medsad_view_"))
    atexit.register(shutil.rmtree, workdir, ignore_errors=True)  # downloads are removed once read, too
    import argparse

    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--monailabel", default=DEFAULT_SERVER, help="MedSAD MONAI Label server URL")
    parser.add_argument("--scores", help="local mode: a <stem>_scores.json written by medsad infer")
    parser.add_argument("--image", help="local mode: the volume (default: the scores file's input)")
    parser.add_argument("--mask", help="local mode: the mask (default: the scores file's mask)")
    parser.add_argument(
        "--profile",
        default="",
        help="server mode: the model's calibration profile to decide at (default: the one the server is started with)",
    )
    args, _ = parser.parse_known_args()
    viewer = Viewer(args.monailabel, workdir, profile=args.profile)
    for action in parser._actions:
        if action.dest != "help":
            viewer.server.cli.add_argument(*action.option_strings, default=action.default, help=action.help)
    if args.scores:
        viewer.open_local(args.scores, args.image, args.mask)
    else:
        viewer.refresh()
        # `make view` is often started beside a `make run` that is still starting (or training its
        # demo model): list the images again whenever a page connects
        viewer.server.controller.on_client_connected.add(viewer.refresh_on_connect)
    viewer.server.start(open_browser=False)


if __name__ == "__main__":
    main()
