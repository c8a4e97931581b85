"""Atomic publication of single files, so a killed job never leaves a half-written file.

The content is written to a uniquely named temporary file in the target's own directory, fsynced,
then moved onto the target with :func:`os.replace` (atomic on one filesystem). Readers see either
the old file or the complete new one; an exception (or a kill) before the move leaves the target,
and anything already stored there, untouched. For whole directories see
:func:`sparsekit.artifacts.write_artifact`, which names its temporary directories the same way.

**Leftovers.** An exception removes the temporary file, and so does a polite kill (SIGTERM or
Ctrl-C) of a ``sparsekit`` command, which turns the signal into an exit (:func:`exit_on_sigterm`). A
``kill -9`` cannot be caught, so the next write of the same target removes what a dead writer left
(:func:`sweep_leftovers`). Temporary names are ``.<name>.<pid>.<random>.<kind>``, and a writer holds
an exclusive ``flock`` on its temporary file or directory for as long as it writes (:func:`hold`). The
lock, not the pid, says whether the writer is alive: the kernel drops it when the process dies, and it
works across PID namespaces. A sweep removes only entries it can lock and that are at least
``MIN_AGE_S`` old, and it skips (never raises on) anything it cannot inspect or remove.
"""

from __future__ import annotations

import fcntl
import os
import re
import secrets
import shutil
import signal
import stat
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sparsekit.errors import InputError

TEMP_KINDS = ("tmp", "tmpdir", "old")  # a file being written, a directory being written, a swapped-out backup
MIN_AGE_S = 10.0  # a younger leftover is left alone: its writer may not hold the lock yet
_TEMP_NAME = re.compile(rf"\.(?P<name>.+)\.(?P<pid>\d+)\.[0-9a-f]{{8}}\.(?P<kind>{'|'.join(TEMP_KINDS)})")


def temp_sibling(target: Path, kind: str) -> Path:
    """A fresh name ``.<name>.<pid>.<random>.<kind>`` beside ``target`` (not created)."""
    if kind not in TEMP_KINDS:
        raise ValueError(f"kind must be one of {TEMP_KINDS}, got {kind!r}")
    return target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.{kind}")


def temp_siblings(target: Path, kind: str) -> list[Path]:
    """Existing temporary siblings of ``target`` of ``kind``."""
    if not target.parent.is_dir():
        return []
    found = []
    for entry in target.parent.iterdir():
        match = _TEMP_NAME.fullmatch(entry.name)
        if match and match["name"] == target.name and match["kind"] == kind:
            found.append(entry)
    return found


@contextmanager
def hold(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (file or directory) for the block: "a live writer owns this"."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield
    finally:
        os.close(fd)  # releases the lock


def is_held(path: Path) -> bool:
    """Whether a live process holds ``path``'s lock (False when it is gone or cannot be opened)."""
    try:
        with hold(path):
            return False
    except BlockingIOError:
        return True
    except OSError:
        return False


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _remove_abandoned(path: Path) -> bool:
    """Remove ``path`` if no live writer holds it and it is old enough; False (no raise) otherwise."""
    try:
        if time.time() - path.lstat().st_mtime < MIN_AGE_S:
            return False
        with hold(path):
            _remove(path)
        return True
    except OSError:  # locked (BlockingIOError), gone, or not ours to remove: leave it
        return False


def sweep_leftovers(target: Path | str) -> list[Path]:
    """Remove ``target``'s temporary siblings left by dead writers; returns what was removed.

    Files and directories being written (``tmp``, ``tmpdir``) go once no live writer holds them. A
    swapped-out backup (``old``) goes only when ``target`` exists: without it, the backup is what
    :func:`sparsekit.artifacts.open_artifact` restores.
    """
    target = Path(target)
    kinds = TEMP_KINDS if target.exists() else ("tmp", "tmpdir")
    return [path for kind in kinds for path in temp_siblings(target, kind) if _remove_abandoned(path)]


def sweep_directory(directory: Path | str) -> list[Path]:
    """Remove every file or directory being written in ``directory`` by a dead writer."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    candidates = [e for e in directory.iterdir()
                  if (m := _TEMP_NAME.fullmatch(e.name)) and m["kind"] != "old"]
    return [path for path in candidates if _remove_abandoned(path)]


def _create_temp(target: Path) -> tuple[Path, int]:
    """Create an empty temporary file beside ``target`` and lock it; returns it and the locked fd.

    Like :func:`tempfile.mkstemp` (``O_EXCL``), but with mode ``0o666`` less the umask, so a new file
    gets the same permissions as a plain ``open(target, "w")`` would give it (a replaced file keeps its
    own: :func:`atomic_path`).
    """
    for _ in range(100):
        tmp = temp_sibling(target, "tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return tmp, fd
    raise FileExistsError(f"no free temporary name beside {target}")


@contextmanager
def atomic_path(target: Path | str, sweep: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on a clean exit move it onto ``target``.

    The parent directory is created if missing, and (``sweep``) leftovers of dead writers of ``target``
    are removed first. The body writes the file at the yielded path (by name: writers that append a
    suffix to the name, such as ``np.save``, need an open file handle). On a clean exit the file is
    fsynced and ``os.replace``-d onto ``target``; on an exception the temporary file is removed,
    ``target`` is left as it was and the exception propagates.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if sweep:
        sweep_leftovers(target)
    tmp, lock = _create_temp(target)
    try:
        yield tmp
        if tmp.is_file():
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            _keep_mode(target, tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        os.close(lock)


def _keep_mode(target: Path, tmp: Path) -> None:
    """Give ``tmp`` the permissions of the ``target`` it replaces, as rewriting the file in place would."""
    try:
        mode = stat.S_IMODE(target.stat().st_mode)
    except FileNotFoundError:
        return
    os.chmod(tmp, mode)


def check_file_target(target: Path | str, source: str) -> None:
    """Raise :class:`~sparsekit.errors.InputError` naming ``source`` unless a file can be written at
    ``target``: it is not a directory and its nearest existing ancestor is one. For commands that check
    their output path before hours of work rather than fail after them."""
    target = Path(target)
    if target.is_dir():
        raise InputError(source, f"{target} is a directory, expected a file path")
    parent = target.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(source, f"{target}: {parent} is not a directory")


def write_text_atomic(target: Path | str, text: str) -> None:
    """Write ``text`` (UTF-8) to ``target`` atomically (see :func:`atomic_path`)."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def exit_on_sigterm() -> None:
    """Make SIGTERM raise ``SystemExit(143)`` in the main thread, as Ctrl-C raises KeyboardInterrupt.

    Called by the ``sparsekit`` entry point (a no-op outside the main thread): a job stopped with
    ``kill`` then unwinds, so every :func:`atomic_path` and :func:`~sparsekit.artifacts.write_artifact`
    in progress removes its temporary files and leaves the targets as they were.
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
