"""Lucene index builds with Anserini (Lin et al., SIGIR 2021), run as a separate JVM process.

:func:`build_lucene_index` runs Anserini's ``IndexCollection`` with the Java :mod:`~retrieval.engines.jvm`
chose; a failure raises :class:`~retrieval.engines.jvm.LuceneError` with the tail of the JVM log.
:func:`build_bm25_lucene_index` uses the flags of pyserini's BEIR "flat" indexes.

**Impact weights** must be integers (Lucene stores them as term frequencies; see
:mod:`retrieval.engines.impacts`): :func:`build_impact_index` writes them as a ``JsonVectorCollection``
and indexes it with ``-impact -pretokenized``.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from retrieval.engines.impacts import check_impacts
from retrieval.engines.jvm import INCUBATOR_VECTOR, JavaRuntime, LuceneError, anserini_jar, java_runtime
from sparsekit.errors import InputError

INDEX_COLLECTION = "io.anserini.index.IndexCollection"
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_LOG_TAIL_LINES = 40


# --------------------------------------------------------------------------------------------------
# Index building (subprocess)


@dataclass(frozen=True)
class IndexStats:
    """Counters Anserini's IndexCollection reports at the end of a build."""

    indexed: int
    empty: int
    unindexable: int
    skipped: int
    errors: int
    seconds: float


def _log_tail(text: str, lines: int = _LOG_TAIL_LINES) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _counter(log: str, name: str) -> int:
    found = re.findall(rf"\b{name}:\s+(\d[\d,]*)", log)  # Anserini prints "5,183" (locale pinned to en-US)
    return int(found[-1].replace(",", "")) if found else 0


def _jvm_cli_options(runtime: JavaRuntime) -> list[str]:
    opts = ["--add-modules", INCUBATOR_VECTOR] if runtime.has_module(INCUBATOR_VECTOR) else []
    return [*opts, "-Dfile.encoding=UTF-8", "-Duser.language=en", "-Duser.country=US"]


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that asks Linux to SIGKILL the child when this process dies (``None`` elsewhere),
    so a ``kill -9`` of Python does not leave the JVM writing into a build nobody will publish.

    ``prctl`` is looked up here, in the parent: the child, forked from a process that may run JVM and
    torch threads, only makes the call, then exits at once if the parent is already gone."""
    if sys.platform != "linux":
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def in_child() -> None:  # pragma: no cover - runs in the forked child
        prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return in_child


def run_anserini(main_class: str, args: Sequence[str], timeout: float | None = None) -> str:
    """Run ``main_class`` from the Anserini jar in a separate JVM; return its combined log.

    The JVM dies with this process (on Linux), also when it is killed with SIGKILL. Raises
    :class:`LuceneError` with the last lines of the JVM's output when it exits non-zero.
    """
    runtime = java_runtime()
    cmd = [str(runtime.executable), *_jvm_cli_options(runtime), "-cp", str(anserini_jar()), main_class,
           *map(str, args)]
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              errors="replace", timeout=timeout, check=False,
                              preexec_fn=_die_with_parent())
    except subprocess.TimeoutExpired as exc:
        raise LuceneError(f"{main_class} did not finish within {timeout} s") from exc
    except OSError as exc:
        raise LuceneError(f"cannot run {runtime.executable}: {exc}") from exc
    if proc.returncode != 0:
        raise LuceneError(
            f"{main_class} failed (exit code {proc.returncode}) using Java {runtime.version} at "
            f"{runtime.executable}; last lines of its output:\n{_log_tail(proc.stdout)}"
        )
    return proc.stdout


def build_lucene_index(
    input_dir: str | Path,
    index_dir: str | Path,
    *,
    collection: str = "JsonCollection",
    threads: int = 2,
    impact: bool = False,
    pretokenized: bool = False,
    store_positions: bool = False,
    store_docvectors: bool = False,
    store_raw: bool = False,
    optimize: bool = True,
    memory_buffer_mb: int = 1024,
    expected_docs: int | None = None,
    timeout: float | None = None,
) -> IndexStats:
    """Index an Anserini collection folder with ``IndexCollection`` (subprocess; see :func:`run_anserini`).

    ``index_dir`` must not exist yet. With ``expected_docs``, a build that indexed a different number
    of documents raises :class:`LuceneError`; so does any document Anserini reports as an error.
    """
    input_dir, index_dir = Path(input_dir), Path(index_dir)
    if not input_dir.is_dir():
        raise InputError(input_dir, "collection folder not found")
    if index_dir.exists():
        raise LuceneError(f"{index_dir}: index folder already exists")
    if threads < 1:
        raise InputError("threads", f"must be >= 1, got {threads}")
    args = ["-collection", collection, "-generator", "DefaultLuceneDocumentGenerator",
            "-input", input_dir, "-index", index_dir, "-threads", threads,
            "-memoryBuffer", memory_buffer_mb]
    flags = {"-impact": impact, "-pretokenized": pretokenized, "-storePositions": store_positions,
             "-storeDocvectors": store_docvectors, "-storeRaw": store_raw, "-optimize": optimize}
    args += [flag for flag, on in flags.items() if on]
    start = time.perf_counter()
    log = run_anserini(INDEX_COLLECTION, args, timeout=timeout)
    stats = IndexStats(
        indexed=_counter(log, "indexed"), empty=_counter(log, "empty"),
        unindexable=_counter(log, "unindexable"), skipped=_counter(log, "skipped"),
        errors=_counter(log, "errors"), seconds=time.perf_counter() - start,
    )
    if "Total" not in log or not index_dir.is_dir():
        raise LuceneError(f"IndexCollection wrote no index at {index_dir}; last lines:\n{_log_tail(log)}")
    if stats.errors or stats.unindexable:
        raise LuceneError(f"IndexCollection reported {stats.errors} errors and {stats.unindexable} "
                          f"unindexable documents; last lines:\n{_log_tail(log)}")
    if expected_docs is not None and stats.indexed != expected_docs:
        raise LuceneError(f"IndexCollection indexed {stats.indexed} of {expected_docs} documents "
                          f"({stats.empty} empty, {stats.skipped} skipped); last lines:\n{_log_tail(log)}")
    return stats


def build_bm25_lucene_index(
    input_dir: str | Path, index_dir: str | Path, threads: int = 2, expected_docs: int | None = None
) -> IndexStats:
    """A BM25 index of a ``JsonCollection`` folder, with the flags of pyserini's BEIR "flat" indexes.

    ``-storePositions -storeDocvectors -storeRaw``, Anserini's default English analyzer (Porter
    stemmer, Lucene stopwords), merged into one segment.
    """
    return build_lucene_index(input_dir, index_dir, collection="JsonCollection", threads=threads,
                              store_positions=True, store_docvectors=True, store_raw=True,
                              expected_docs=expected_docs)


# --------------------------------------------------------------------------------------------------
# Impact indexes (learned sparse weights as integer term frequencies)


class CollectionWriter:
    """Writes Anserini collection records (one JSON object a line) into ``docs-NNNNN.jsonl`` files.

    A new file starts every ``docs_per_file`` records, so Anserini's indexing threads (one per file)
    have work to share on large corpora. Use as a context manager.
    """

    def __init__(self, out_dir: str | Path, docs_per_file: int = 100_000) -> None:
        self.out_dir = Path(out_dir)
        self.docs_per_file = docs_per_file
        self.count = 0
        self._fh: Any = None

    def __enter__(self) -> CollectionWriter:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        return self

    def write(self, record: Mapping[str, Any]) -> None:
        if self.count % self.docs_per_file == 0:
            self.close()
            path = self.out_dir / f"docs-{self.count // self.docs_per_file:05d}.jsonl"
            self._fh = path.open("w", encoding="utf-8")
        self._fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.count += 1

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_impact_collection(
    docs: Iterable[tuple[str, Mapping[str, int]]], out_dir: str | Path, docs_per_file: int = 100_000
) -> tuple[int, int]:
    """Write ``(doc id, {token: int impact})`` pairs as an Anserini ``JsonVectorCollection``.

    Returns ``(written, empty)``: documents without a positive impact can never match and are not
    written (Anserini would skip them as empty anyway).
    """
    empty = 0
    with CollectionWriter(out_dir, docs_per_file) as out:
        for doc_id, vector in docs:
            if not isinstance(doc_id, str) or not doc_id.strip():
                raise InputError("docs", f"document id must be a non-empty string, got {doc_id!r}")
            vec = check_impacts(vector, f"docs[{doc_id!r}]")
            if vec:
                out.write({"id": doc_id, "contents": "", "vector": vec})
            else:
                empty += 1
    return out.count, empty


def build_impact_index(
    docs: Iterable[tuple[str, Mapping[str, int]]], index_dir: str | Path, threads: int = 2
) -> IndexStats:
    """Lucene impact index (``JsonVectorCollection -impact -pretokenized``) of integer-weighted docs.

    The collection is staged in a temporary folder beside ``index_dir`` and removed afterwards.
    """
    index_dir = Path(index_dir)
    index_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{index_dir.name}.collection-", dir=index_dir.parent) as tmp:
        count, _ = write_impact_collection(docs, tmp)
        return build_lucene_index(tmp, index_dir, collection="JsonVectorCollection", threads=threads,
                                  impact=True, pretokenized=True, expected_docs=count)
