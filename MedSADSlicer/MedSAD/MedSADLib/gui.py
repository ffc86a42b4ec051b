"""The small GUI part that the MedSAD module and the Segment Editor effect share: the backend
choices remembered across sessions (``QSettings``, only the defaults of a new scene's parameter
node) and the dialogs that pip-install a backend's Python packages.

The only ``MedSADLib`` module that needs the Slicer application; it imports ``qt`` inside the
functions that show something, so the package still imports under plain Python. No other
``MedSADLib`` module imports it.
"""

from __future__ import annotations

import importlib
import os
import site
import sys
from collections.abc import Iterable

import slicer

from .backends import BACKEND_LOCAL, BACKEND_SERVER, BACKENDS, DEFAULT_SERVER_URL
from .parameters import MedSADParameters
from .results import MedSADError

SETTINGS_BACKEND = "MedSAD/backend"
SETTINGS_CHECKPOINT = "MedSAD/checkpoint"
SETTINGS_SERVER_URL = "MedSAD/serverUrl"
SETTINGS_PROFILE = "MedSAD/profile"

# import name -> pip requirement, for the local backend (medsad_monai is installed from a clone)
LOCAL_PACKAGES = {
    "torch": "torch",
    "torchvision": "torchvision",
    "monai": "monai",
    "open_clip": "open_clip_torch",
    "nibabel": "nibabel",
    "nrrd": "pynrrd",
}
# monailabel's declared dependencies pull a CUDA build of sam2; the client needs only requests.
SERVER_REQUIREMENT = "monailabel==0.8.5 --no-deps"


# --------------------------------------------------------------------------- parameters and settings


def parameters(scene=None) -> MedSADParameters:
    """The scene's MedSAD parameter node; a new one starts from the last session's choices."""
    import qt

    settings = qt.QSettings()
    kind = str(settings.value(SETTINGS_BACKEND, BACKEND_LOCAL) or BACKEND_LOCAL)
    return MedSADParameters.get_or_create(
        scene if scene is not None else slicer.mrmlScene,
        backend=kind if kind in BACKENDS else BACKEND_LOCAL,
        checkpoint=str(settings.value(SETTINGS_CHECKPOINT, "") or ""),
        server_url=str(settings.value(SETTINGS_SERVER_URL, "") or "") or DEFAULT_SERVER_URL,
        profile=str(settings.value(SETTINGS_PROFILE, "") or ""),
    )


def remember(params: MedSADParameters) -> None:
    """Keep the backend choice as the default for the next scene / session."""
    import qt

    settings = qt.QSettings()
    settings.setValue(SETTINGS_BACKEND, params.backend)
    settings.setValue(SETTINGS_CHECKPOINT, params.checkpoint)
    settings.setValue(SETTINGS_SERVER_URL, params.server_url)
    settings.setValue(SETTINGS_PROFILE, params.profile)


# --------------------------------------------------------------------------- dependencies


def missing_modules(names: Iterable[str]) -> list[str]:
    """The import names among ``names`` that do not import (a broken install counts as missing)."""
    importlib.invalidate_caches()
    missing = []
    for name in names:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001
            missing.append(name)
    return missing


def _activate_new_site_packages() -> None:
    """Process .pth files written by pip since start-up (editable installs use them)."""
    for path in list(sys.path):
        if path.endswith("site-packages") and os.path.isdir(path):
            site.addsitedir(path)
    importlib.invalidate_caches()


def _install_local_packages() -> bool:
    import qt

    missing = missing_modules(LOCAL_PACKAGES)
    if missing:
        requirements = " ".join(LOCAL_PACKAGES[name] for name in missing)
        if not slicer.util.confirmOkCancelDisplay(
            f"The local backend needs Python packages that are not installed in Slicer: {', '.join(missing)}.\n\n"
            f"Install them now with pip ({requirements})? PyTorch is a download of several GB; if you use "
            "Slicer's PyTorch extension, install PyTorch with it first so that the build matches your GPU.",
            "MedSAD: install Python packages",
        ):
            return False
        with slicer.util.WaitCursor():
            slicer.util.pip_install(requirements)
    if missing_modules(["medsad_monai"]):
        if not slicer.util.confirmOkCancelDisplay(
            "The local backend needs the MedSAD model package (medsad_monai), installed from a clone of the "
            "MedSAD repository (https://github.com/medsad/medsad).\n\nChoose that folder (the one with "
            "pyproject.toml) to install it with 'pip install -e'?",
            "MedSAD: install the model package",
        ):
            return False
        repo = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), "MedSAD repository folder")
        if not repo:
            return False
        if not os.path.isfile(os.path.join(repo, "pyproject.toml")):
            raise MedSADError(f"{repo!r} has no pyproject.toml: choose the root folder of the MedSAD repository")
        with slicer.util.WaitCursor():
            slicer.util.pip_install(["-e", repo])
        _activate_new_site_packages()
    still = missing_modules(list(LOCAL_PACKAGES) + ["medsad_monai"])
    if still:
        raise MedSADError(f"still not importable after installing: {', '.join(still)}; restart Slicer and try again")
    return True


def _install_server_packages() -> bool:
    if not slicer.util.confirmOkCancelDisplay(
        "The MONAI Label server backend needs the 'monailabel' client, which is not installed in Slicer.\n\n"
        f"Install it now with pip ({SERVER_REQUIREMENT})?",
        "MedSAD: install Python packages",
    ):
        return False
    with slicer.util.WaitCursor():
        slicer.util.pip_install(SERVER_REQUIREMENT)
    if missing_modules(["monailabel.client"]):
        raise MedSADError("monailabel.client is still not importable after installing; restart Slicer and try again")
    return True


def ensure_dependencies(kind: str) -> bool:
    """True when the backend's Python packages import; else offer to install them (False: declined)."""
    if kind == BACKEND_SERVER:
        return not missing_modules(["monailabel.client"]) or _install_server_packages()
    return not missing_modules(["torch", "medsad_monai"]) or _install_local_packages()
