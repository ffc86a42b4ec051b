"""Start and stop a real ``monailabel start_server`` process on 127.0.0.1 (tests and bench)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

APP_DIR = Path(__file__).resolve().parent.parent / "monai_app"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def monailabel_server(
    studies: Path,
    conf: dict[str, str],
    log: Path,
    timeout: float = 180.0,
    env: dict[str, str] | None = None,
    port: int | None = None,
) -> Iterator[str]:
    """Run the MedSAD app with MONAI Label's real server (on ``port``, default a free one); yields
    its URL. ``env`` adds to or overrides the server's environment (MONAI Label's settings). The
    process group is always stopped by its PID (SIGTERM, then SIGKILL)."""
    port = port or free_port()
    cmd = [
        sys.executable,
        "-m",
        "monailabel.main",
        "start_server",
        "--app",
        str(APP_DIR),
        "--studies",
        str(studies),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    for key, value in {"models": "medsad", **conf}.items():
        cmd += ["--conf", key, value]
    overrides = env or {}
    env = {
        **os.environ,
        "MONAI_LABEL_TRACKING_ENABLED": "false",
        "MONAI_LABEL_AUTO_UPDATE_SCORING": "false",
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
        **overrides,
    }
    if "TMPDIR" not in overrides:
        # MONAI Label writes its logging config to a temporary file per start and never removes
        # it: keep those (and its other temporary files) beside the log, not in the machine's /tmp
        scratch = log.parent / f"{log.stem}_tmp"
        scratch.mkdir(parents=True, exist_ok=True)
        env["TMPDIR"] = str(scratch)
    url = f"http://127.0.0.1:{port}"
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/info/", timeout=5) as res:
                    if res.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"server not up after {timeout} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def run_train_task(client: Any, model: str, params: dict[str, Any], polls: int = 1800) -> dict[str, Any]:
    """Start MONAI Label train task ``model`` in the background with MONAI Label's own client
    (``train_start``), poll ``train_status`` once a second as the Slicer plugin's progress timer
    does until it ends (``polls`` bounds it only against a hang), and return its final status,
    asserted to be this task's and ``DONE``."""
    started = client.train_start(model, params)
    assert started["status"] in ("SUBMITTED", "RUNNING"), started
    for _ in range(polls):
        status = client.train_status()
        if status.get("status") not in ("SUBMITTED", "RUNNING"):
            break
        time.sleep(1)
    assert status["id"] == started["id"] and status["status"] == "DONE", str(status)[-2000:]
    return status
