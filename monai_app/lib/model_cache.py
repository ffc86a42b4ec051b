"""The served model: loaded once, reloaded when the checkpoint file changes (a finished
training publishes to the same path, so infer picks new weights up without a restart).

:meth:`ModelCache.get` hands out a :class:`LoadedModel`: the predictor together with the sha256
of the very file it was loaded from. A task reports that sha256, never a second look at the path,
so a reload between loading and reporting cannot make a result name a model that did not run.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from medsad_monai.engine.inference import Predictor

from .errors import ConfError, NoModelError
from .serve_config import ServeConfig

logger = logging.getLogger(__name__)

#: How often a checkpoint that changes while it loads is read again before giving up (503).
LOAD_ATTEMPTS = 3

#: (inode, mtime_ns, size): a published checkpoint (``os.replace``) always gets a new inode.
Stamp = tuple[int, int, int]


@dataclass(frozen=True)
class LoadedModel:
    """A predictor and the identity of the checkpoint file it was built from.

    Args:
        predictor: the model, ready to run.
        path: the checkpoint path it was loaded from.
        sha256: hex sha256 of the bytes that were loaded.
        stamp: the file's ``(inode, mtime_ns, size)`` when it was loaded.
    """

    predictor: Predictor
    path: Path
    sha256: str
    stamp: Stamp

    @property
    def fingerprint(self) -> str:
        """Short sha256 (16 hex digits): what results report as ``checkpoint_sha256``/``model``."""
        return self.sha256[:16]


class ModelCache:
    """Thread-safe holder of the :class:`LoadedModel` for ``serve.checkpoint``."""

    def __init__(self, serve: ServeConfig) -> None:
        self.serve = serve
        self._lock = threading.RLock()
        self._loaded: LoadedModel | None = None

    @property
    def path(self) -> Path:
        return self.serve.checkpoint

    def exists(self) -> bool:
        return self.path.is_file()

    def get(self) -> LoadedModel:
        """The model of the current checkpoint file with its sha256 (loads or reloads as needed).

        Raises:
            NoModelError: no checkpoint file yet (or it keeps changing while it loads).
            ConfError: the checkpoint was trained with another backbone than ``--conf clip_model``,
                or has no calibration profile ``--conf profile`` (e.g. a newly trained model
                published over a calibrated one: calibrate it again).
            ValueError: the checkpoint does not load (a server-side problem).
        """
        with self._lock:
            try:
                stamp = _stamp(self.path.stat())
            except FileNotFoundError:
                raise self._no_model() from None
            if self._loaded is None or stamp != self._loaded.stamp:
                self._loaded = self._load()
                logger.info("serving %s (sha256 %s…)", self.path, self._loaded.fingerprint)
            self._check_profile(self._loaded.predictor)
            return self._loaded

    def _no_model(self) -> NoModelError:
        return NoModelError(
            f"no model at {self.path}: train one (POST /train/medsad) or start the server with --conf checkpoint PATH"
        )

    def _load(self) -> LoadedModel:
        """Hash and load the checkpoint; the file's stamp is taken from the open file that is hashed
        and must be unchanged after loading, else both are done again (a publish came in between)."""
        for attempt in range(1, LOAD_ATTEMPTS + 1):
            try:
                with self.path.open("rb") as fh:
                    before = _stamp(os.fstat(fh.fileno()))
                    sha256 = _sha256(fh)
                predictor = Predictor.from_checkpoint(
                    self.path,
                    clip_pretrained=self.serve.clip_pretrained,
                    batch_size=self.serve.batch_size,
                    device=self.serve.device,
                    precision=self.serve.precision,
                )
                after = _stamp(self.path.stat())
            except FileNotFoundError:
                if self.exists():
                    raise  # not the checkpoint itself (e.g. backbone weights): a server-side error
                raise self._no_model() from None
            if after == before:
                self._check_backbone(predictor)
                return LoadedModel(predictor, self.path, sha256, before)
            logger.info(
                "%s changed while it was loading (attempt %d of %d); loading it again",
                self.path,
                attempt,
                LOAD_ATTEMPTS,
            )
        raise NoModelError(
            f"{self.path} changed every time it was loaded ({LOAD_ATTEMPTS} attempts): "
            "a training run is publishing; try again"
        )

    def _check_profile(self, predictor: Predictor) -> None:
        """Decide at ``--conf profile`` (the checkpoint's own operating point without it)."""
        name = self.serve.profile
        if name is None:
            return
        if name not in predictor.profiles:
            raise ConfError(
                f"--conf profile {name!r}: the served checkpoint {str(self.path)!r} has no such calibration "
                f"profile (it has: {', '.join(predictor.profiles)}); fit it on this datastore's final labels with "
                f"POST /train/medsad_calibrate (profile {name!r}), or with `medsad calibrate --ckpt {self.path} "
                f"--data <validation data> --profile {name}`, or serve without --conf profile"
            )
        predictor.operating_point = predictor.profiles[name]

    def _check_backbone(self, predictor: Predictor) -> None:
        config = getattr(predictor.model, "config", None)
        trained_with = getattr(config, "clip_model", None)
        if self.serve.clip_model and trained_with and trained_with != self.serve.clip_model:
            raise ConfError(
                f"checkpoint {self.path} was trained with backbone {trained_with!r} but the server was started with "
                f"--conf clip_model {self.serve.clip_model!r}; use a checkpoint of that backbone or drop the key"
            )


def _stamp(st: os.stat_result) -> Stamp:
    return st.st_ino, st.st_mtime_ns, st.st_size


def _sha256(fh: BinaryIO) -> str:
    digest = hashlib.sha256()
    for block in iter(lambda: fh.read(1 << 20), b""):
        digest.update(block)
    return digest.hexdigest()
