"""Atomic single-file writes: publish on success, leave the target untouched on failure."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from sparsekit.atomic import (
    MIN_AGE_S,
    atomic_path,
    hold,
    is_held,
    sweep_directory,
    sweep_leftovers,
    write_text_atomic,
)


def test_success_publishes_content(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp != target
        assert tmp.name.startswith(".out.bin.") and tmp.name.endswith(".tmp")
        assert f".{os.getpid()}." in tmp.name and is_held(tmp)  # a live writer holds its temporary file
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


def test_a_replaced_file_keeps_its_permissions(tmp_path: Path) -> None:
    """As a plain rewrite would: a private (0600) file does not become world-readable."""
    target = tmp_path / "secret.txt"
    target.write_text("old")
    target.chmod(0o600)
    write_text_atomic(target, "new")
    assert target.read_text() == "new" and target.stat().st_mode & 0o777 == 0o600


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(timeout=30)
    return proc.pid


def _age(path: Path) -> Path:
    """Make ``path`` look older than the sweep's minimum age."""
    old = time.time() - 10 * MIN_AGE_S
    os.utime(path, (old, old), follow_symlinks=False)
    return path


def _leftover(target: Path, kind: str = "tmp", pid: int = 12345) -> Path:
    path = target.with_name(f".{target.name}.{pid}.0badf00d.{kind}")
    path.write_text("half")
    return _age(path)


def test_sweep_removes_only_unlocked_old_leftovers(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    dead = _leftover(target, pid=_dead_pid())
    live = _leftover(target, pid=_dead_pid())  # a dead-looking pid (another PID namespace?), but locked
    young = target.with_name(f".{target.name}.{_dead_pid()}.0000beef.tmp")
    young.write_text("just created")
    other_target = _leftover(tmp_path / "out.txt.bak")
    with hold(live):
        write_text_atomic(target, "new")
    assert not dead.exists()
    assert live.exists() and young.exists() and other_target.exists()
    assert target.read_text() == "new"


def test_sweep_skips_what_it_cannot_open(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    dangling = target.with_name(f".{target.name}.1.deadbeef.tmp")
    dangling.symlink_to(tmp_path / "missing")
    _age(dangling)
    assert sweep_leftovers(target) == []
    write_text_atomic(target, "ok")
    assert target.read_text() == "ok"


def test_backup_is_swept_only_when_the_target_exists(tmp_path: Path) -> None:
    target = tmp_path / "art"
    backup = _leftover(target, kind="old")
    assert sweep_leftovers(target) == []  # no target: the backup is what a reader restores
    target.write_text("published")
    assert sweep_leftovers(target) == [backup] and not backup.exists()


def _writer(target: Path, handler: bool) -> subprocess.Popen[bytes]:
    script = textwrap.dedent(f"""
        import time
        from sparsekit.atomic import atomic_path, exit_on_sigterm
        if {handler}:
            exit_on_sigterm()
        with atomic_path({str(target)!r}) as tmp:
            tmp.write_text("half-written")
            print("writing", flush=True)
            time.sleep(60)
    """)
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, cwd=repo,
                            env={**os.environ, "PYTHONPATH": str(repo)})
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"writing"
    return proc


def test_sigterm_unwinds_and_removes_the_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    proc = _writer(target, handler=True)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    assert os.listdir(tmp_path) == ["out.txt"] and target.read_text() == "old"


def test_sigkill_leftover_is_swept_by_a_later_write(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    proc = _writer(target, handler=False)
    [leftover] = [tmp_path / n for n in os.listdir(tmp_path) if n != "out.txt"]
    assert is_held(leftover)  # the live writer holds its temporary file
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert f".{proc.pid}." in leftover.name and not is_held(leftover) and target.read_text() == "old"
    _age(leftover)
    write_text_atomic(target, "new")
    assert os.listdir(tmp_path) == ["out.txt"] and target.read_text() == "new"


def test_sweep_directory_removes_dead_writers_of_any_target(tmp_path: Path) -> None:
    dead = [_leftover(tmp_path / name) for name in ("a.pt", "b.json")]
    live = _leftover(tmp_path / "c.pt")
    backup = _leftover(tmp_path / "d", kind="old")
    (tmp_path / "e.pt.tmp").write_text("not ours")
    with hold(live):
        assert sorted(sweep_directory(tmp_path)) == sorted(dead)
    assert sorted(os.listdir(tmp_path)) == sorted([live.name, backup.name, "e.pt.tmp"])


def test_cli_entry_point_turns_sigterm_into_exit() -> None:
    script = textwrap.dedent("""
        import signal, sys
        from services.cli import main
        sys.argv = ["sparsekit", "--help"]
        try:
            main()
        except SystemExit:
            pass
        print(signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None))
    """)
    repo = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, cwd=repo, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(repo)}, check=True)
    assert out.stdout.strip().splitlines()[-1] == b"True"
