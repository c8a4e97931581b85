"""Atomic publication of single files, so a killed job never leaves a half-written file.

The content is written to a uniquely named temporary file in the target's own directory, fsynced,
then moved onto the target with :func:`os.replace` (atomic on one filesystem). Readers see either
the old file or the complete new one; an exception (or a kill) before the move leaves the target,
and anything already stored there, untouched. For whole directories see
:func:`sparsekit.artifacts.write_artifact`, which names its temporary directories the same way.

**Leftovers.** An exception removes the temporary file, and so does a polite kill (SIGTERM or
Ctrl-C) of a ``sparsekit`` command, which turns the signal into an exit (:func:`exit_on_sigterm`). A
``kill -9`` cannot be caught, so every temporary name carries its owner, ``<host>-<pid>``:
``.<name>.<host>-<pid>.<random>.<kind>``. The next write to the same target removes the leftovers
of owners on this host that are no longer running (:func:`sweep_leftovers`); a live writer's files,
and another host's, are never touched.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TEMP_KINDS = ("tmp", "tmpdir", "old")  # a file being written, a directory being written, a swapped-out backup


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9]", "_", socket.gethostname()) or "host"


def temp_sibling(target: Path, kind: str) -> Path:
    """A fresh name ``.<name>.<host>-<pid>.<random>.<kind>`` beside ``target`` (not created)."""
    if kind not in TEMP_KINDS:
        raise ValueError(f"kind must be one of {TEMP_KINDS}, got {kind!r}")
    return target.with_name(f".{target.name}.{_host()}-{os.getpid()}.{secrets.token_hex(4)}.{kind}")


_TEMP_NAME = re.compile(r"\.(?P<name>.+)\.(?P<host>[A-Za-z0-9_]+)-(?P<pid>\d+)\.[0-9a-f]{8}\."
                        rf"(?P<kind>{'|'.join(TEMP_KINDS)})")


def _temp_entries(directory: Path) -> list[tuple[Path, re.Match[str]]]:
    """Every temporary name in ``directory`` (see the module doc), parsed."""
    if not directory.is_dir():
        return []
    parsed = ((entry, _TEMP_NAME.fullmatch(entry.name)) for entry in directory.iterdir())
    return [(entry, match) for entry, match in parsed if match]


def temp_siblings(target: Path, kind: str) -> list[tuple[Path, str, int]]:
    """Existing ``(path, host, pid)`` temporary siblings of ``target`` of ``kind``."""
    return [(path, m["host"], int(m["pid"])) for path, m in _temp_entries(target.parent)
            if m["name"] == target.name and m["kind"] == kind]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0 only checks that the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, owned by someone else
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _dead_local(host: str, pid: int) -> bool:
    return host == _host() and pid != os.getpid() and not _alive(pid)


def sweep_leftovers(target: Path | str) -> list[Path]:
    """Remove ``target``'s temporary siblings left by dead writers on this host; returns them.

    Files and directories being written (``tmp``, ``tmpdir``) go once their owner is gone. A swapped-out
    backup (``old``) goes only when ``target`` exists: without it, the backup is what
    :func:`sparsekit.artifacts.open_artifact` restores.
    """
    target = Path(target)
    kinds = TEMP_KINDS if target.exists() else ("tmp", "tmpdir")
    removed = [path for kind in kinds for path, host, pid in temp_siblings(target, kind)
               if _dead_local(host, pid)]
    for path in removed:
        _remove(path)
    return removed


def sweep_directory(directory: Path | str) -> list[Path]:
    """Remove every file or directory being written in ``directory`` by a dead writer on this host."""
    removed = [path for path, m in _temp_entries(Path(directory))
               if m["kind"] != "old" and _dead_local(m["host"], int(m["pid"]))]
    for path in removed:
        _remove(path)
    return removed


def _create_temp(target: Path) -> Path:
    """Create an empty temporary file beside ``target`` (see the module doc for its name).

    Like :func:`tempfile.mkstemp` (``O_EXCL``), but with mode ``0o666`` less the umask, so the
    published file gets the same permissions as a plain ``open(target, "w")`` would give it.
    """
    for _ in range(100):
        tmp = temp_sibling(target, "tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"no free temporary name beside {target}")


@contextmanager
def atomic_path(target: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on a clean exit move it onto ``target``.

    The parent directory is created if missing, and leftovers of killed writers of ``target`` are
    swept first. The body writes the file at the yielded path (by name: writers that append a suffix to
    the name, such as ``np.save``, need an open file handle). On a clean exit the file is fsynced and
    ``os.replace``-d onto ``target``; on an exception the temporary file is removed, ``target`` is left
    as it was and the exception propagates.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    sweep_leftovers(target)
    tmp = _create_temp(target)
    try:
        yield tmp
        if tmp.is_file():
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(target: Path | str, text: str) -> None:
    """Write ``text`` (UTF-8) to ``target`` atomically (see :func:`atomic_path`)."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def exit_on_sigterm() -> None:
    """Make SIGTERM raise ``SystemExit(143)`` in the main thread, as Ctrl-C raises KeyboardInterrupt.

    Called by the command-line entry point: a job stopped with ``kill`` then unwinds, so every
    :func:`atomic_path` and :func:`~sparsekit.artifacts.write_artifact` in progress removes its
    temporary files and leaves the targets as they were.
    """
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
