"""Shared test set-up: strictly offline, small thread count, tiny model fixtures."""

from __future__ import annotations

import os
import socket

# Offline by design: any hub access fails at once instead of trying the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MONAI_LABEL_TRACKING_ENABLED", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

_real_connect = socket.socket.connect


def _loopback_only_connect(self, address):  # type: ignore[no-untyped-def]
    host = address[0] if isinstance(address, tuple) else address
    if isinstance(host, str) and (host.startswith("127.") or host in ("localhost", "::1") or host.startswith("/")):
        return _real_connect(self, address)
    raise RuntimeError(f"test tried to reach the network ({address!r}); tests must stay offline")


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any test that opens a connection outside the loopback interface."""
    monkeypatch.setattr(socket.socket, "connect", _loopback_only_connect)


@pytest.fixture
def tiny_config():
    """The tiny preset (random-init MedSAD-Tiny backbone) at 64 px for speed."""
    from medsad_monai.configs import load_preset

    return load_preset("tiny", image_size=64)


@pytest.fixture
def frozen_tiny_config(tiny_config):
    """Tiny preset with the paper's frozen backbone."""
    return tiny_config.replace(train_backbone=False)
