"""Artifact directories: ``manifest.json`` + files, written atomically, verified on open.

Every index, model or table Sparsekit writes is a directory (../shared/docs/DESIGN.md §4). The manifest
records the format name and version, the parameters and source-data fingerprint that produced it,
counts, and a SHA-256 + size for every file. Writers build the directory under a hidden temporary name
beside the target and rename it into place only after every file and the manifest are flushed, so a
killed job leaves no half-written artifact and never touches the published one. Replacing an existing
artifact swaps directories with two renames; should a crash land between them, the next
:func:`open_artifact` restores the previous version from its backup. A writer holds a lock on its
temporary directory (``.<name>.<pid>.<random>.tmpdir``), so the next write of the same target can remove
what a ``kill -9``-ed writer left (:func:`sparsekit.atomic.sweep_leftovers`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sparsekit import __version__
from sparsekit.atomic import hold, is_held, sweep_leftovers, temp_sibling, temp_siblings
from sparsekit.errors import ArtifactError, InputError

MANIFEST = "manifest.json"
_CHUNK = 1 << 20
log = logging.getLogger(__name__)


@dataclass
class Manifest:
    """The contents of ``manifest.json``."""

    format: str
    version: int
    params: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    created: str = ""
    producer: str = f"sparsekit {__version__}"

    def source_checksums(self) -> set[str]:
        """The SHA-256 of every source file the artifact records (see :func:`fingerprint`)."""
        return {m["sha256"] for m in self.source.values()
                if isinstance(m, dict) and isinstance(m.get("sha256"), str)}

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any], path: Path) -> Manifest:
        if not isinstance(data, dict):
            raise ArtifactError(path, f"corrupt manifest: a JSON object expected, not {type(data).__name__}")
        missing = [k for k in ("format", "version", "files") if k not in data]
        if missing:
            raise ArtifactError(path, f"manifest lacks required field(s) {missing}")
        files = data["files"]
        if not isinstance(files, dict) or not all(_file_entry(k, m) for k, m in files.items()):
            raise ArtifactError(path, "corrupt manifest: 'files' must map each file to its bytes and sha256")
        if not isinstance(data["format"], str) or not isinstance(data["version"], int):
            raise ArtifactError(path, "corrupt manifest: 'format' must be a string and 'version' an integer")
        if not all(isinstance(data.get(k, {}), dict) for k in ("params", "source", "counts")):
            raise ArtifactError(path, "corrupt manifest: 'params', 'source' and 'counts' must be objects")
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


def _file_entry(name: Any, meta: Any) -> bool:
    """Whether ``name: meta`` is a manifest file entry: a path and ``{"bytes": int, "sha256": str}``."""
    return (isinstance(name, str) and isinstance(meta, dict) and isinstance(meta.get("bytes"), int)
            and isinstance(meta.get("sha256"), str))


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def fingerprint(paths: list[Path]) -> dict[str, Any]:
    """A source-data fingerprint: name, size and SHA-256 of each input file."""
    return {str(p.name): {"bytes": p.stat().st_size, "sha256": sha256_file(p)} for p in paths}


class ArtifactWriter:
    """Handle given to the body of :func:`write_artifact`: a temp ``dir`` plus manifest fields."""

    def __init__(self, tmp_dir: Path, manifest: Manifest) -> None:
        self.dir = tmp_dir
        self.manifest = manifest

    @property
    def counts(self) -> dict[str, int]:
        return self.manifest.counts

    def path(self, name: str) -> Path:
        """Path of file ``name`` inside the artifact being written."""
        return self.dir / name


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
    fd = os.open(root, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _entries(root: Path) -> Iterator[Path]:
    """Every path under ``root``, sorted; :class:`ArtifactError` for a symlink or a special file (``rglob``
    does not descend into a linked directory: its files would be neither checksummed nor refused)."""
    for path in sorted(root.rglob("*")):
        if path.is_symlink() or not (path.is_file() or path.is_dir()):
            what = "a symbolic link" if path.is_symlink() else "not a regular file or directory"
            raise ArtifactError(path, f"is {what}: an artifact holds only its own files")
        yield path


def _file_table(root: Path) -> dict[str, dict[str, Any]]:
    table = {}
    for path in _entries(root):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and rel != MANIFEST:  # a nested artifact's manifest is a file like any other
            table[rel] = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
    return table


def _publish(tmp: Path, target: Path, overwrite: bool) -> None:
    """Move ``tmp`` to ``target``; an existing target is swapped out, then deleted.

    The target is checked again here, not only when the write started: another writer may have
    published it meanwhile, and without ``overwrite`` that artifact is kept and this write fails.
    The old directory stays locked (:func:`sparsekit.atomic.hold`) while it is a backup, so a reader
    arriving between the two renames does not restore it: it fails (no such artifact) and may retry.
    Once the new target is in place the backup is renamed to a name that is never restored before it
    is deleted, so a writer killed mid-delete leaves a partial directory that is only swept, never
    brought back.
    """
    if target.exists():
        if not overwrite:
            raise ArtifactError(target, "was created by another writer while this one ran; nothing was "
                                        "replaced (pass overwrite=True / --overwrite to replace it)")
        check_target(target, overwrite)
    else:
        try:
            os.rename(tmp, target)  # fails on a non-empty directory another writer just published
            return
        except OSError as exc:
            if not target.exists():
                raise
            if not overwrite:
                raise ArtifactError(target, "was created by another writer while this one ran; nothing "
                                            "was replaced (pass overwrite=True / --overwrite)") from exc
    backup = temp_sibling(target, "old")
    try:
        with hold(target):
            os.rename(target, backup)
            try:
                os.rename(tmp, target)
            except OSError:  # the old version goes straight back: the target never stays missing
                os.rename(backup, target)
                raise
            _discard(backup, target)
    except BlockingIOError as exc:
        raise ArtifactError(target, "another process is replacing it right now") from exc


def _discard(backup: Path, target: Path) -> None:
    """Delete the replaced version once the new one is in place: renamed first to a name that is never
    restored, then removed. Best effort: the write has succeeded, so a failure here is logged, not
    raised (and the backup is removed directly, so a later open cannot bring the old version back)."""
    try:
        trash = temp_sibling(target, "tmpdir")
        os.rename(backup, trash)
    except OSError as exc:
        log.warning("%s: could not move the replaced version aside (%s); deleting it in place", target, exc)
        trash = backup
    shutil.rmtree(trash, ignore_errors=True)


@contextmanager
def write_artifact(
    target: str | Path,
    format: str,
    version: int,
    params: dict[str, Any] | None = None,
    source: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Iterator[ArtifactWriter]:
    """Write an artifact directory atomically.

    The body writes files into ``writer.dir`` (a hidden temp directory beside ``target``). On a
    clean exit the manifest (with checksums) is written, everything is fsynced and the directory is
    renamed to ``target``. On an exception, or a kill, ``target`` is left exactly as it was; leftovers of
    killed writers of ``target`` are removed first.
    """
    target = Path(target)
    check_target(target, overwrite)
    _make_parent(target)
    sweep_leftovers(target)
    tmp = temp_sibling(target, "tmpdir")
    tmp.mkdir()
    manifest = Manifest(format=format, version=version, params=dict(params or {}),
                        source=dict(source or {}))
    try:
        with hold(tmp):  # marks the directory as in use until it is published or removed
            yield ArtifactWriter(tmp, manifest)
            manifest.files = _file_table(tmp)
            manifest.created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            (tmp / MANIFEST).write_text(manifest.to_json())
            _fsync_tree(tmp)
            _publish(tmp, target, overwrite)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def check_target(target: Path, overwrite: bool) -> None:
    """Refuse a target that exists unless ``overwrite``, and never replace what is not an artifact.

    ``--overwrite`` swaps out a previous Sparsekit artifact (a directory holding ``manifest.json``) or an
    empty directory; a file, or a directory of anything else (a dataset, the input itself), is refused, so
    a wrong ``--out`` cannot delete data.
    """
    _recover(target)
    _refuse_inside_artifact(target)
    if not target.exists():
        existing = next(p for p in target.absolute().parents if p.exists())
        if not existing.is_dir():
            raise ArtifactError(target, f"cannot be created: {existing} is a file")
        return
    if not overwrite:
        raise ArtifactError(target, "already exists (pass overwrite=True / --overwrite to replace it)")
    if not target.is_dir():
        raise ArtifactError(target, "is a file, not an artifact directory: refusing to replace it")
    if not (target / MANIFEST).is_file() and any(target.iterdir()):
        raise ArtifactError(target, f"is a directory with no {MANIFEST} (not a Sparsekit artifact): refusing "
                                    "to replace it; choose another output path or remove it yourself")


def _refuse_inside_artifact(target: Path) -> None:
    """Refuse a target inside a published artifact: its files would be ones that artifact's manifest does
    not list, so the artifact would no longer open (a ``--checkpoint-dir`` pointed at a model folder).
    Nested artifacts are written into the outer one's temporary directory, which has no manifest yet."""
    parent = _enclosing_artifact(target.absolute().parent)
    if parent is not None:
        raise ArtifactError(target, f"is inside the artifact {parent}, whose manifest would not list it "
                                    "(that artifact would then fail to open): write it elsewhere")


def open_if_present(path: str | Path, format: str, version: int) -> Manifest | None:
    """:func:`open_artifact`, or ``None`` when nothing is at ``path`` (a backup a kill mid-replace left is
    restored first, so it counts as present): for checkpoints a run resumes from when they exist."""
    try:
        return open_artifact(path, format=format, version=version)
    except ArtifactError:
        if Path(path).exists():
            raise
        return None


def check_outside_artifacts(path: str | Path, source: str) -> None:
    """:class:`InputError` naming ``source`` when ``path`` is a published artifact or lies inside one:
    files written there (a cache, a report, a sweep folder) are ones its manifest does not list, so the
    artifact would no longer open. For options that name a directory or file to write into."""
    path = Path(path)
    folder = _enclosing_artifact(path.absolute())
    if folder is not None:
        where = "is" if folder == path.absolute() else f"is inside {folder}, which is"
        raise InputError(source, f"{path} {where} a Sparsekit artifact: writing there would add files "
                                 "its manifest does not list (it would then fail to open); choose "
                                 "another path")


def _enclosing_artifact(folder: Path) -> Path | None:
    """``folder`` or its nearest ancestor holding a Sparsekit manifest, if any."""
    return next((f for f in (folder, *folder.parents) if _is_manifest(f / MANIFEST)), None)


def _is_manifest(path: Path) -> bool:
    """``path`` is a Sparsekit manifest (``format``, ``version``, ``files``), not any ``manifest.json``
    (a web app's, a browser extension's)."""
    if not path.is_file():
        return False
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and {"format", "version", "files"} <= data.keys()


def _make_parent(target: Path) -> None:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        raise ArtifactError(target, f"cannot create its parent directory: {exc.filename} is a file") from exc


def artifact_format(path: str | Path) -> str:
    """The ``format`` of an artifact directory, read from its manifest without the checksum pass
    (a backup left by a crash mid-replace is restored first, as in :func:`open_artifact`)."""
    path = Path(path)
    _recover(path)
    mpath = path / MANIFEST
    if not mpath.is_file():
        raise ArtifactError(path, f"not a Sparsekit artifact directory (no {MANIFEST})")
    try:
        data = json.loads(mpath.read_text())
        return str(data["format"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ArtifactError(mpath, f"corrupt manifest: {exc!r}") from exc


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return -1.0


def recover(target: str | Path) -> None:
    """Put back an artifact that a crash mid-replace left only as its backup (readers that look for
    ``manifest.json`` themselves call this first; :func:`open_artifact` does it already)."""
    _recover(Path(target))


def _recover(target: Path) -> None:
    """Restore a backup left by a crash between the two renames of :func:`_publish`.

    A backup still locked by a live writer is skipped (that writer is about to publish). Backups named
    by earlier versions (``.<name>.old-<hex>``) count too.
    """
    if target.exists():
        return
    backups = [*temp_siblings(target, "old"), *target.parent.glob(f".{target.name}.old-*")]
    backups = sorted((b for b in backups if not is_held(b)), key=_mtime)
    if backups:
        with contextlib.suppress(OSError):  # another reader restored it first, or a writer published
            os.rename(backups[-1], target)


def _check_all_listed(path: Path, manifest: Manifest) -> None:
    """Refuse files the manifest does not list: a file whose entry was deleted would go unverified."""
    for fpath in _entries(path):
        rel = fpath.relative_to(path).as_posix()
        if fpath.is_file() and rel != MANIFEST and rel not in manifest.files:
            raise ArtifactError(fpath, "not listed in the manifest, so its checksum cannot be verified "
                                       "(a corrupt manifest, or a file added after the write: remove it, "
                                       "or rebuild)")


def open_artifact(
    path: str | Path, format: str | None = None, version: int | None = None, verify: bool = True
) -> Manifest:
    """Read and check an artifact's manifest.

    Checks the format name and version when given, that every listed file exists with its recorded
    size, and (``verify=True``) its SHA-256, and that every file in the directory is listed. Raises
    :class:`ArtifactError` naming the path and the problem otherwise.
    """
    path = Path(path)
    _recover(path)
    if not path.is_dir():
        raise ArtifactError(path, "no such artifact directory")
    mpath = path / MANIFEST
    if not mpath.is_file():
        raise ArtifactError(path, f"missing {MANIFEST}: not a Sparsekit artifact, or an unfinished write")
    try:
        data = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(mpath, f"corrupt manifest: {exc}") from exc
    manifest = Manifest.from_dict(data, mpath)
    if format is not None and manifest.format != format:
        raise ArtifactError(path, f"format is {manifest.format!r}, expected {format!r}")
    if version is not None and manifest.version != version:
        raise ArtifactError(path, f"format version {manifest.version}, this build reads {version}: "
                                  "rebuild it")
    _check_all_listed(path, manifest)
    for rel, meta in manifest.files.items():
        fpath = path / rel
        if not fpath.is_file():
            raise ArtifactError(fpath, "listed in the manifest but missing")
        if fpath.stat().st_size != meta["bytes"]:
            raise ArtifactError(fpath, f"size {fpath.stat().st_size} != manifest {meta['bytes']} (corrupt)")
        if verify and sha256_file(fpath) != meta["sha256"]:
            raise ArtifactError(fpath, "checksum mismatch (corrupt)")
    return manifest
