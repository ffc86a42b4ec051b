"""Entry-point logging: library INFO lines reach the handler; only known third-party noise is dropped."""

from __future__ import annotations

import logging

from medsad_monai.log_setup import ThirdPartyNoise, configure_logging


def _record(name: str, level: int, message: str) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, message, None, None)


def test_the_filter_drops_root_chatter_and_open_clips_random_init_warning_only():
    noise = ThirdPartyNoise()
    assert not noise.filter(
        _record("root", logging.WARNING, "No pretrained weights loaded for model 'x'. Model initialized randomly.")
    )
    assert noise.filter(_record("root", logging.WARNING, "something else on the root logger"))
    assert not noise.filter(_record("root", logging.INFO, "Using default SimpleTokenizer."))
    assert noise.filter(
        _record("root", logging.ERROR, "No pretrained weights loaded for model 'x'.")
    )  # errors always pass
    assert noise.filter(_record("medsad_monai.engine.train", logging.INFO, "epoch 3/200: loss 0.5"))


def test_configure_logging_keeps_library_info_and_installs_one_handler():
    root = logging.getLogger()
    level = root.level
    try:
        first = configure_logging()
        second = configure_logging(verbose=True)
        ours = [h for h in root.handlers if getattr(h, "_medsad", False)]
        assert ours == [second] and first not in root.handlers
        assert root.level == logging.DEBUG
        assert logging.getLogger("medsad_monai.engine.train").isEnabledFor(logging.INFO)
    finally:
        root.removeHandler(second)
        root.setLevel(level)
