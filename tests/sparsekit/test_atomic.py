"""Atomic single-file writes: publish on success, leave the target untouched on failure."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sparsekit.atomic import atomic_path, write_text_atomic


def test_success_publishes_content(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp != target
        assert tmp.name.startswith(".out.bin.") and tmp.name.endswith(".tmp")
        assert not target.exists()
        tmp.write_bytes(b"payload")
    assert target.read_bytes() == b"payload"
    assert os.listdir(tmp_path) == ["out.bin"]


def test_replaces_existing_target(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    write_text_atomic(target, "new \u00e9\n")
    assert target.read_text(encoding="utf-8") == "new \u00e9\n"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_exception_keeps_old_content_and_removes_temp(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="boom"), atomic_path(target) as tmp:
        tmp.write_text("half-writ")
        raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_exception_without_target_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt), atomic_path(tmp_path / "out.txt"):
        raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []


def test_creates_parent_dirs(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "out.json"
    write_text_atomic(str(target), "{}\n")
    assert target.read_text() == "{}\n"
    assert os.listdir(target.parent) == ["out.json"]


def test_temp_names_are_unique(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    with atomic_path(target) as first, atomic_path(target) as second:
        assert first != second
        first.write_text("1")
        second.write_text("2")
    assert target.read_text() == "1"  # the outer block exits last
    assert os.listdir(tmp_path) == ["out.txt"]


def test_permissions_follow_umask(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "out.txt", "x")
    finally:
        os.umask(umask)
    assert (tmp_path / "out.txt").stat().st_mode & 0o777 == 0o644
