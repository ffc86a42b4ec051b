"""Logging for the command-line entry points (``medsad``, ``make run``).

The library itself only uses ``logging.getLogger(__name__)``; this sets up one stderr handler
for a program. open_clip warns "No pretrained weights loaded … initialized randomly" on the
*root* logger whenever a random-init backbone is built — expected for the tiny preset, whose
checkpoint carries its own weights — so that message, and the INFO chatter libraries send to
the root logger, are dropped by a filter on the handler. Nothing is silenced by raising a
logger's level: every ``medsad_monai`` INFO line (the per-epoch training lines among them)
reaches the handler.
"""

from __future__ import annotations

import logging
import sys

__all__ = ["configure_logging", "ThirdPartyNoise"]

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class ThirdPartyNoise(logging.Filter):
    """Drop third-party chatter on the root logger: its INFO lines (open_clip's "Using default
    SimpleTokenizer") and known, expected warnings (open_clip's random-init notice)."""

    MESSAGES = ("No pretrained weights loaded for model",)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name != "root" or record.levelno >= logging.ERROR:
            return True
        if record.levelno < logging.WARNING:
            return False
        message = record.getMessage()
        return not any(message.startswith(m) for m in self.MESSAGES)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of the record (as ``logging.lastResort``
    does), so a replaced or closed stderr (pytest's capture, a notebook) never breaks logging."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def configure_logging(verbose: bool = False) -> logging.Handler:
    """One stderr handler on the root logger at INFO (DEBUG with ``verbose``), with
    :class:`ThirdPartyNoise` on it; replaces a handler an earlier call installed."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_medsad", False):
            root.removeHandler(handler)
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter(FORMAT, datefmt="%H:%M:%S"))
    handler.addFilter(ThirdPartyNoise())
    handler._medsad = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    return handler
