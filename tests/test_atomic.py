"""Atomic writes: a failure mid-write leaves the previous file and no temporary file behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from medsad_monai.atomic import atomic_write, atomic_write_text


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path: Path) -> None:
    target = atomic_write_text(tmp_path / "sub" / "scores.json", '{"a": 1}')
    assert target.read_text() == '{"a": 1}'

    def half_then_fail(fh) -> None:
        fh.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, half_then_fail)
    assert target.read_text() == '{"a": 1}'
    assert sorted(p.name for p in target.parent.iterdir()) == ["scores.json"]
    atomic_write(target, lambda fh: fh.write("a,b\r\n"), binary=False, newline="")
    assert target.read_bytes() == b"a,b\r\n"
