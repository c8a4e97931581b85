"""Atomic publication of single files, so a killed job never leaves a half-written file.

The content is written to a uniquely named temporary file in the target's own directory, fsynced,
then moved onto the target with :func:`os.replace` (atomic on one filesystem). Readers see either
the old file or the complete new one; an exception (or a kill) before the move leaves the target,
and anything already stored there, untouched. For whole directories see
:func:`sparsekit.artifacts.write_artifact`.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _create_temp(target: Path) -> Path:
    """Create an empty, uniquely named ``.<name>.<random>.tmp`` beside ``target``.

    Like :func:`tempfile.mkstemp` (``O_EXCL``), but with mode ``0o666`` less the umask, so the
    published file gets the same permissions as a plain ``open(target, "w")`` would give it.
    """
    for _ in range(100):
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
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

    The parent directory is created if missing. The body writes the file at the yielded path (by
    name: writers that append a suffix to the name, such as ``np.save``, need an open file handle).
    On a clean exit the file is fsynced and ``os.replace``-d onto ``target``; on an exception the
    temporary file is removed, ``target`` is left as it was and the exception propagates.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
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
