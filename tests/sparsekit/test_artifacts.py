"""Artifact directories: manifest verification and atomic, crash-safe writes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from sparsekit.artifacts import MANIFEST, artifact_format, check_target, open_artifact, write_artifact
from sparsekit.atomic import MIN_AGE_S, hold, is_held, temp_sibling
from sparsekit.errors import ArtifactError


def _write(target: Path, payload: bytes, overwrite: bool = False) -> None:
    with write_artifact(target, format="toy", version=1, params={"p": 1}, overwrite=overwrite) as w:
        w.path("data.bin").write_bytes(payload)
        (w.dir / "sub").mkdir()
        w.path("sub/more.txt").write_text("x")
        w.counts["items"] = len(payload)


def test_manifest_records_files_and_counts(tmp_path: Path) -> None:
    target = tmp_path / "art"
    _write(target, b"abc")
    manifest = open_artifact(target, format="toy", version=1)
    assert manifest.counts == {"items": 3}
    assert set(manifest.files) == {"data.bin", "sub/more.txt"}
    assert manifest.files["data.bin"]["bytes"] == 3
    assert manifest.params == {"p": 1}
    assert not list(tmp_path.glob(".art.*")), "temp dir left behind"


def test_wrong_format_or_version_is_rejected(tmp_path: Path) -> None:
    _write(tmp_path / "art", b"abc")
    with pytest.raises(ArtifactError, match="format is 'toy', expected 'other'"):
        open_artifact(tmp_path / "art", format="other")
    with pytest.raises(ArtifactError, match="format version 1"):
        open_artifact(tmp_path / "art", version=2)


def test_corrupt_missing_and_truncated_files_are_detected(tmp_path: Path) -> None:
    target = tmp_path / "art"
    _write(target, b"abcdef")
    (target / "data.bin").write_bytes(b"abcdeX")  # same size, different bytes
    with pytest.raises(ArtifactError, match="checksum mismatch"):
        open_artifact(target)
    (target / "data.bin").write_bytes(b"ab")
    with pytest.raises(ArtifactError, match="size 2 != manifest 6"):
        open_artifact(target, verify=False)
    (target / "data.bin").unlink()
    with pytest.raises(ArtifactError, match=r"data\.bin: listed in the manifest but missing"):
        open_artifact(target)
    (target / MANIFEST).write_text("{not json")
    with pytest.raises(ArtifactError, match="corrupt manifest"):
        open_artifact(target)
    with pytest.raises(ArtifactError, match="no such artifact directory"):
        open_artifact(tmp_path / "nope")


@pytest.mark.parametrize("edit", [
    lambda m: {**m, "files": "x"},
    lambda m: {**m, "files": {"data.bin": "abc"}},
    lambda m: {**m, "version": "1"},
    lambda m: [m],
])
def test_a_manifest_of_the_wrong_shape_is_named_not_a_crash(tmp_path: Path, edit) -> None:
    target = tmp_path / "art"
    _write(target, b"abc")
    manifest = json.loads((target / MANIFEST).read_text())
    (target / MANIFEST).write_text(json.dumps(edit(manifest)))
    with pytest.raises(ArtifactError, match=r"manifest\.json: corrupt manifest"):
        open_artifact(target)


@pytest.mark.parametrize("dropped", [None, "data.bin", "sub/more.txt"])
def test_a_file_missing_from_the_manifest_is_not_verified(tmp_path: Path, dropped: str | None) -> None:
    """Deleting an entry (or the whole file table) must not switch off the checksum check of that file."""
    target = tmp_path / "art"
    _write(target, b"abc")
    manifest = json.loads((target / MANIFEST).read_text())
    files = {} if dropped is None else {k: v for k, v in manifest["files"].items() if k != dropped}
    (target / MANIFEST).write_text(json.dumps({**manifest, "files": files}))
    (target / "data.bin").write_bytes(b"xyz")
    with pytest.raises(ArtifactError, match="not listed in the manifest"):
        open_artifact(target)


def test_a_file_added_after_the_write_is_named(tmp_path: Path) -> None:
    target = tmp_path / "art"
    _write(target, b"abc")
    (target / "notes.txt").write_text("mine")
    with pytest.raises(ArtifactError, match=r"notes\.txt: not listed in the manifest"):
        open_artifact(target)


def test_existing_artifact_needs_overwrite(tmp_path: Path) -> None:
    _write(tmp_path / "art", b"one")
    with pytest.raises(ArtifactError, match="already exists"):
        _write(tmp_path / "art", b"two")
    _write(tmp_path / "art", b"two", overwrite=True)
    assert (tmp_path / "art" / "data.bin").read_bytes() == b"two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]


def test_a_target_published_by_another_writer_meanwhile_is_kept(tmp_path: Path) -> None:
    """Two builds of one ``--out`` at once: the one that finishes second fails and replaces nothing."""
    target = tmp_path / "art"
    with pytest.raises(ArtifactError, match="another writer"), write_artifact(target, "toy", 1) as slow:
        slow.path("data.bin").write_bytes(b"slow")
        _write(target, b"fast")  # the other writer starts later and publishes first
    assert (target / "data.bin").read_bytes() == b"fast"
    assert open_artifact(target, format="toy").files["data.bin"]["bytes"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]


def test_overwrite_at_publish_still_refuses_a_directory_that_is_not_an_artifact(tmp_path: Path) -> None:
    target = tmp_path / "out"
    with pytest.raises(ArtifactError, match=r"no manifest\.json"), \
            write_artifact(target, "toy", 1, overwrite=True) as w:
        w.path("data.bin").write_bytes(b"x")
        target.mkdir()
        (target / "corpus.jsonl").write_text("{}\n")  # a dataset copied there while the build ran
    assert sorted(p.name for p in target.iterdir()) == ["corpus.jsonl"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_overwrite_never_replaces_what_is_not_an_artifact(tmp_path: Path) -> None:
    """``--overwrite`` aimed at a dataset folder (or the input itself) must not delete it."""
    data = tmp_path / "dataset"
    data.mkdir()
    (data / "corpus.jsonl").write_text("{}\n")
    with pytest.raises(ArtifactError, match=r"no manifest\.json"):
        _write(data, b"x", overwrite=True)
    assert sorted(p.name for p in data.iterdir()) == ["corpus.jsonl"]
    afile = tmp_path / "notes.txt"
    afile.write_text("keep")
    with pytest.raises(ArtifactError, match="is a file"):
        _write(afile, b"x", overwrite=True)
    assert afile.read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset", "notes.txt"]  # no leftovers
    (tmp_path / "empty").mkdir()
    _write(tmp_path / "empty", b"ok", overwrite=True)  # an empty directory holds nothing to lose
    assert artifact_format(tmp_path / "empty") == "toy"


def test_an_output_path_under_a_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "c.csv").write_text("a,b\n")
    with pytest.raises(ArtifactError, match=r"c\.csv is a file"):
        _write(tmp_path / "c.csv" / "idx", b"x")


def test_artifact_format_restores_a_crash_backup_and_names_a_bad_manifest(tmp_path: Path) -> None:
    target = tmp_path / "art"
    _write(target, b"old")
    os.rename(target, temp_sibling(target, "old"))
    time.sleep(0.01)
    assert artifact_format(target) == "toy"  # the cheap read used by search / serve restores it too
    (target / MANIFEST).write_text("[1, 2]")
    with pytest.raises(ArtifactError, match="corrupt manifest"):
        artifact_format(target)
    with pytest.raises(ArtifactError, match="not a Sparsekit artifact"):
        artifact_format(tmp_path)


def test_exception_mid_write_keeps_previous_artifact(tmp_path: Path) -> None:
    target = tmp_path / "art"
    _write(target, b"old")
    with pytest.raises(RuntimeError, match="boom"), \
            write_artifact(target, format="toy", version=1, overwrite=True) as w:
        w.path("data.bin").write_bytes(b"half-written")
        raise RuntimeError("boom")
    assert (target / "data.bin").read_bytes() == b"old"
    open_artifact(target, format="toy")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]


def test_killed_writer_leaves_previous_artifact_intact(tmp_path: Path) -> None:
    """SIGKILL a process in the middle of replacing an artifact: the old one must survive."""
    target = tmp_path / "art"
    _write(target, b"old")
    script = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from sparsekit.artifacts import write_artifact
        with write_artifact(Path({str(target)!r}), format="toy", version=1, overwrite=True) as w:
            w.path("data.bin").write_bytes(b"new" * 1000)
            print("writing", flush=True)
            time.sleep(60)
    """)
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, cwd=repo,
                            env={**os.environ, "PYTHONPATH": str(repo)})
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == b"writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert (target / "data.bin").read_bytes() == b"old"
    open_artifact(target, format="toy", version=1)
    [leftover] = [p for p in tmp_path.iterdir() if p.name != "art"]  # kill -9 cannot be cleaned up at once
    assert leftover.name.endswith(".tmpdir") and f".{proc.pid}." in leftover.name and not is_held(leftover)
    old = time.time() - 10 * MIN_AGE_S
    os.utime(leftover, (old, old))
    _write(target, b"newer", overwrite=True)  # the next write sweeps the dead writer's directory
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]
    assert (target / "data.bin").read_bytes() == b"newer"


def test_crash_between_renames_is_recovered(tmp_path: Path) -> None:
    """A crash after the old artifact was moved aside but before the new one landed."""
    target = tmp_path / "art"
    _write(target, b"old")
    os.rename(target, temp_sibling(target, "old"))
    time.sleep(0.01)
    manifest = open_artifact(target, format="toy")
    assert manifest.counts["items"] == 3
    assert json.loads((target / MANIFEST).read_text())["format"] == "toy"


def test_backup_locked_by_a_live_writer_is_not_restored(tmp_path: Path) -> None:
    """A reader between the two renames of a live publish must not take the old directory back."""
    target = tmp_path / "art"
    _write(target, b"old")
    backup = temp_sibling(target, "old")
    os.rename(target, backup)
    with hold(backup), pytest.raises(ArtifactError):
        open_artifact(target, format="toy")
    assert backup.exists() and not target.exists()
    open_artifact(target, format="toy")  # the writer died: now it is restored
    assert not backup.exists()


def test_a_writer_killed_while_deleting_the_old_version_leaves_nothing_restorable(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The replaced version is deleted under a name :func:`open_artifact` never restores: a half-deleted
    copy must not come back as the artifact after the target is removed."""
    import shutil

    import sparsekit.artifacts

    target = tmp_path / "art"
    _write(target, b"old")

    rmtree = shutil.rmtree

    def killed_mid_delete(path: Path, *args: object, **kwargs: object) -> None:
        if Path(path).name.startswith(".art.") and (Path(path) / "data.bin").is_file():  # the old version
            (Path(path) / "data.bin").unlink()
            raise KeyboardInterrupt  # stands in for the kill
        rmtree(path, *args, **kwargs)

    monkeypatch.setattr(sparsekit.artifacts.shutil, "rmtree", killed_mid_delete)
    with pytest.raises(KeyboardInterrupt):
        _write(target, b"newer", overwrite=True)
    monkeypatch.setattr(sparsekit.artifacts.shutil, "rmtree", rmtree)
    assert open_artifact(target, format="toy").counts["items"] == 5  # the new version is published
    shutil.rmtree(target)
    with pytest.raises(ArtifactError, match="no such artifact"):
        open_artifact(target, format="toy")
    _write(target, b"again")  # no leftover is in the way of a fresh write
    assert open_artifact(target, format="toy").counts["items"] == 5


def test_check_target_refuses_a_path_under_a_file(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("kept")
    with pytest.raises(ArtifactError, match="is a file"):
        check_target(blocker / "deeper" / "model", overwrite=False)
    check_target(tmp_path / "new" / "model", overwrite=False)  # a missing parent is fine: it gets made
    assert blocker.read_text() == "kept"


def test_a_nested_artifacts_manifest_is_checksummed_by_the_outer_one(tmp_path: Path) -> None:
    """A hybrid index holds its first stage, itself an artifact, as a subfolder: its manifest is covered."""
    target = tmp_path / "outer"
    with write_artifact(target, "toy", 1) as w:
        inner = w.path("inner")
        inner.mkdir()
        (inner / MANIFEST).write_text('{"format": "x"}')
    assert "inner/manifest.json" in open_artifact(target).files
    (target / "inner" / MANIFEST).write_text('{"format": "y"}')
    with pytest.raises(ArtifactError, match=r"inner/manifest\.json: checksum mismatch"):
        open_artifact(target)


def test_a_target_inside_a_published_artifact_is_refused(tmp_path: Path) -> None:
    """Writing one (a CF checkpoint under --checkpoint-dir MODEL) would add files MODEL does not list."""
    model = tmp_path / "model"
    with write_artifact(model, "toy", 1) as w:
        w.path("weights.bin").write_bytes(b"w")
    with pytest.raises(ArtifactError, match="inside the artifact"), \
            write_artifact(model / "checkpoint", "ckpt", 1) as w:
        w.path("state.pt").write_bytes(b"s")
    open_artifact(model, "toy", 1)  # still opens


def test_a_manifest_json_that_is_not_ours_does_not_block_writes_below_it(tmp_path: Path) -> None:
    (tmp_path / MANIFEST).write_text('{"name": "my-web-app"}')  # a web app's, a browser extension's
    _write(tmp_path / "runs" / "art", b"x")
    open_artifact(tmp_path / "runs" / "art", format="toy")


def test_symlinks_are_refused_when_writing_and_when_opening(tmp_path: Path) -> None:
    """rglob does not enter a linked directory: its files were neither checksummed nor refused."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "w.npy").write_bytes(b"weights")
    with pytest.raises(ArtifactError, match="symbolic link"), write_artifact(tmp_path / "a", "toy", 1) as w:
        (w.dir / "weights").symlink_to(outside, target_is_directory=True)
    assert not (tmp_path / "a").exists()
    _write(tmp_path / "b", b"x")
    (tmp_path / "b" / "extra").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ArtifactError, match="symbolic link"):
        open_artifact(tmp_path / "b", format="toy")


def test_a_failed_swap_puts_the_old_version_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The second rename of a replace failing used to leave the target missing (only a backup)."""
    import sparsekit.artifacts as artifacts

    target = tmp_path / "art"
    _write(target, b"old")
    real, calls = os.rename, []

    def flaky(src, dst):
        calls.append(Path(dst).name)
        if len(calls) == 2:  # the new version into place
            raise OSError(28, "no space left")
        real(src, dst)

    monkeypatch.setattr(artifacts.os, "rename", flaky)
    with pytest.raises(OSError, match="no space"):
        _write(target, b"new", overwrite=True)
    monkeypatch.undo()
    assert (target / "data.bin").read_bytes() == b"old"


def test_a_replace_that_published_succeeds_even_if_the_old_version_cannot_be_moved_aside(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sparsekit.artifacts as artifacts

    target = tmp_path / "art"
    _write(target, b"old")
    real, calls = os.rename, []

    def flaky(src, dst):
        calls.append(dst)
        if len(calls) == 3:  # the replaced version to its trash name
            raise OSError(28, "no space left")
        real(src, dst)

    monkeypatch.setattr(artifacts.os, "rename", flaky)
    _write(target, b"new", overwrite=True)  # published: no error
    monkeypatch.undo()
    assert (target / "data.bin").read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]  # no backup a later open could restore
