"""The one write-aside-then-rename helper: whole content or none, nothing left behind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from servegate import _atomic
from servegate._atomic import atomic_copy, atomic_write_bytes, atomic_write_text


def test_writes_replace_the_whole_file(tmp_path: Path) -> None:
    target = tmp_path / "models.config"
    target.write_text("old")
    assert atomic_write_text(target, "new ✓") == target
    assert target.read_text(encoding="utf-8") == "new ✓"
    atomic_write_bytes(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    assert os.listdir(tmp_path) == ["models.config"]
    assert (target.stat().st_mode & 0o777) == 0o600


def test_a_copy_is_streamed_into_place(tmp_path: Path) -> None:
    source = tmp_path / "a.mar"
    source.write_bytes(os.urandom(1 << 20))
    store = tmp_path / "store"
    store.mkdir()
    atomic_copy(source, store / "digits_1.mar")
    assert (store / "digits_1.mar").read_bytes() == source.read_bytes()
    assert os.listdir(store) == ["digits_1.mar"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "server.json"
    target.write_text("old")

    def broken(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(_atomic.os, "replace", broken)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(target, "new")
    with pytest.raises(FileNotFoundError):
        atomic_copy(tmp_path / "missing", target)
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["server.json"]
