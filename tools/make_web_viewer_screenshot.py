"""Make docs/images/web_viewer.png: ``medsad infer`` on a sample test volume, the web viewer in
local mode on its outputs, one headless-chromium screenshot (Debian's /usr/bin/chromium).

    .venv/bin/python tools/make_web_viewer_screenshot.py [--ckpt runs/recipe/best.pt] [--case case_010]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", default=str(ROOT / "runs" / "recipe" / "best.pt"))
    p.add_argument("--case", default="case_010")
    p.add_argument("--out", default=str(ROOT / "docs" / "images" / "web_viewer.png"))
    args = p.parse_args()
    from playwright.sync_api import sync_playwright

    work = Path(tempfile.mkdtemp(prefix="medsad_shot_"))
    volume = ROOT / "sample_data" / "volumes" / "imagesTs" / f"{args.case}.nii.gz"
    medsad = [sys.executable, "-m", "medsad_monai.cli", "infer", "--ckpt", args.ckpt, "--input", str(volume)]
    subprocess.run([*medsad, "--out", str(work)], check=True)
    port = _free_port()
    cmd = [sys.executable, "-m", "web_viewer", "--server", "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(
        [*cmd, "--scores", str(work / f"{args.case}_scores.json")], cwd=ROOT, start_new_session=True
    )
    try:
        url = f"http://127.0.0.1:{port}/"
        for _ in range(100):
            try:
                urllib.request.urlopen(url, timeout=2).close()
                break
            except OSError:
                time.sleep(0.3)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(headless=True, executable_path="/usr/bin/chromium", args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1360, "height": 760})
            page.goto(url)
            page.wait_for_selector("#slice-img", timeout=30000)
            page.wait_for_timeout(1000)
            page.screenshot(path=args.out)
            browser.close()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    print(f"wrote {args.out} ({Path(args.out).stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
