"""The served model: loaded once, reloaded when the checkpoint file changes (a finished
training publishes to the same path, so infer picks new weights up without a restart)."""

from __future__ import annotations

import hashlib
import logging
import threading
from pathlib import Path

from medsad_monai.engine.inference import Predictor

from .configs.medsad import ServeConfig
from .errors import NoModelError

logger = logging.getLogger(__name__)


class ModelCache:
    """Thread-safe holder of the :class:`Predictor` for ``serve.checkpoint``."""

    def __init__(self, serve: ServeConfig) -> None:
        self.serve = serve
        self._lock = threading.RLock()
        self._predictor: Predictor | None = None
        self._stamp: tuple[int, int] | None = None
        self._fingerprint: str | None = None

    @property
    def path(self) -> Path:
        return self.serve.checkpoint

    def exists(self) -> bool:
        return self.path.is_file()

    def _file_stamp(self) -> tuple[int, int]:
        st = self.path.stat()
        return st.st_mtime_ns, st.st_size

    def get(self) -> Predictor:
        """The predictor for the current checkpoint file (loads or reloads as needed).

        Raises:
            NoModelError: no checkpoint file yet.
            ValueError: the checkpoint does not load or was trained with another backbone.
        """
        with self._lock:
            if not self.exists():
                raise NoModelError(
                    f"no model at {self.path}: train one (POST /train/medsad) or start the server with "
                    "--conf checkpoint PATH"
                )
            stamp = self._file_stamp()
            if self._predictor is None or stamp != self._stamp:
                self._predictor = self._load()
                self._stamp = stamp
                self._fingerprint = _sha256(self.path)[:16]
                logger.info("serving %s (sha256 %s…)", self.path, self._fingerprint)
            return self._predictor

    def fingerprint(self) -> str:
        """Short sha256 of the loaded checkpoint (records which model scored an image)."""
        self.get()
        assert self._fingerprint is not None
        return self._fingerprint

    def _load(self) -> Predictor:
        predictor = Predictor.from_checkpoint(
            self.path, clip_pretrained=self.serve.clip_pretrained, batch_size=self.serve.batch_size,
            device=self.serve.device,
        )
        config = getattr(predictor.model, "config", None)
        trained_with = getattr(config, "clip_model", None)
        if self.serve.clip_model and trained_with and trained_with != self.serve.clip_model:
            raise ValueError(
                f"checkpoint {self.path} was trained with backbone {trained_with!r} but the server was started with "
                f"--conf clip_model {self.serve.clip_model!r}; use a checkpoint of that backbone or drop the key"
            )
        return predictor


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
