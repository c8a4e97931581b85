"""Bad command-line input fails before any work, with a message naming the option or path (exit 2)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from services.cli import app
from services.server import ServerConfig, make_server
from sparsekit.errors import InputError

runner = CliRunner()


@pytest.mark.parametrize("args, option", [
    (["index", "--corpus", "c", "--out", "o", "--batch-size", "-2"], "--batch-size"),
    (["index", "--corpus", "c", "--out", "o", "--kind", "sparse", "--top-k", "0"], "--top-k"),
    (["index", "--corpus", "c", "--out", "o", "--nprobe", "-1"], "--nprobe"),
    (["index", "--corpus", "c", "--out", "o", "--b", "1.5"], "--b"),
    (["search", "--index", "i", "-k", "0", "q"], "-k"),
    (["train", "ctr", "--data", "frappe", "--out", "o", "--threads", "0"], "--threads"),
    (["train", "ctr", "--data", "frappe", "--out", "o", "--lr", "-1"], "--lr"),
    (["train", "ctr", "--data", "frappe", "--out", "o", "--lr", "nan"], "--lr"),
    (["train", "cf", "--data", "d", "--out", "o", "--time-budget-s", "-1"], "--time-budget-s"),
    (["train", "cf", "--data", "d", "--out", "o", "--epochs", "0"], "--epochs"),
    (["train", "sparse", "--data", "d", "--out", "o", "--max-length", "0"], "--max-length"),
    (["train", "sparse", "--data", "d", "--out", "o", "--queries-per-step", "0"], "--queries-per-step"),
    (["train", "sparse", "--data", "d", "--out", "o", "--dev-fraction", "1"], "--dev-fraction"),
    (["train", "query-table", "--model", "m", "--out", "o", "--lr", "0.1", "--lr", "-3"], "--lr"),
    (["train", "gcn", "--data", "d", "--hidden", "0"], "--hidden"),
    (["serve", "--index", "a=i", "--engine-threads", "0"], "--engine-threads"),
    (["compress", "ctr", "--model", "m", "--calib", "frappe", "--out", "o", "--rank", "0"], "--rank"),
    (["compress", "ctr", "--model", "m", "--calib", "frappe", "--out", "o", "--calib-rows", "-5"],
     "--calib-rows"),
    (["rag", "ask", "--rag", "r", "--k", "0", "q"], "-k' / '--k"),
    (["rag", "ask", "--rag", "r", "-k", "0", "q"], "-k' / '--k"),  # -k as in search and eval
    (["rag", "ask", "--rag", "r", "-k", "101", "q"], "-k' / '--k"),  # before the model loads
])
def test_out_of_range_numbers_are_refused_naming_the_option(args: list[str], option: str, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert f"Invalid value for '{option}'" in result.output
    assert list(tmp_path.iterdir()) == []  # nothing was written


@pytest.mark.parametrize("args, message", [
    (["train", "sparse", "--data", "d", "--out", "o", "--distill", "bogus"], "--distill: must be one of"),
    (["train", "sparse", "--data", "d", "--out", "o", "--pseudo-queries", "x"], "--pseudo-queries: must"),
    (["serve", "--index", "a=i", "--address", "bogus"], "--address: expected host:port"),
])
def test_config_errors_name_the_option_not_the_python_field(args: list[str], message: str, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # the configs' checks named "distill", "pseudo_queries", "address"
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())
    assert list(tmp_path.iterdir()) == []


def test_overwrite_does_not_replace_the_input_corpus(tmp_path: Path) -> None:
    corpus = tmp_path / "beir"
    corpus.mkdir()
    (corpus / "corpus.jsonl").write_text('{"_id": "d1", "title": "", "text": "apples are red"}\n')
    result = runner.invoke(app, ["index", "--corpus", str(corpus), "--out", str(corpus), "--overwrite"])
    assert result.exit_code == 2
    assert "not a Sparsekit artifact" in result.output
    assert sorted(p.name for p in corpus.iterdir()) == ["corpus.jsonl"]


def test_serve_refuses_a_bad_address_and_a_repeated_name(tmp_path: Path) -> None:
    for address in ("notanaddress", "127.0.0.1:99999", ":5000"):
        result = runner.invoke(app, ["serve", "--index", f"a={tmp_path}", "--address", address])
        assert result.exit_code == 2
        assert "expected host:port" in result.output
    result = runner.invoke(app, ["serve", "--index", f"a={tmp_path}", "--index", f"a={tmp_path}"])
    assert result.exit_code == 2
    assert "given twice" in result.output
    for option, value in (("--rag-policy", "prefix"), ("--rag-cache-dir", str(tmp_path / "kv"))):
        result = runner.invoke(app, ["serve", "--index", f"a={tmp_path}", option, value])
        assert result.exit_code == 2
        assert "pass --rag" in result.output  # not silently ignored
    assert not (tmp_path / "kv").exists()


def test_a_port_in_use_is_not_shared() -> None:
    first, port = make_server({}, ServerConfig(address="127.0.0.1:0"))
    first.start()
    try:
        with pytest.raises(OSError, match=f"cannot bind 127.0.0.1:{port}"):
            make_server({}, ServerConfig(address=f"127.0.0.1:{port}"))
    finally:
        first.stop(0)


def test_server_config_checks_its_address() -> None:
    with pytest.raises(InputError, match="address"):
        ServerConfig(address="localhost")


def test_train_sparse_on_a_missing_folder_leaves_nothing_behind(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["train", "sparse", "--data", "nope", "--out", "model"])
    assert result.exit_code == 2
    assert "not a BEIR folder" in result.output
    assert list(tmp_path.iterdir()) == []  # no model.work/ either


def test_an_empty_question_is_refused_before_the_model_loads(tmp_path: Path) -> None:
    result = runner.invoke(app, ["rag", "ask", "--rag", str(tmp_path / "none"), "   "])
    assert result.exit_code == 2
    assert "question: empty" in result.output


def test_error_text_in_brackets_is_printed_not_read_as_markup(tmp_path: Path) -> None:
    result = runner.invoke(app, ["bench", "embeddings", "--out", str(tmp_path / "s"), "--budgets", "nan"])
    assert result.exit_code == 2
    assert "got [nan]" in result.output


def test_bench_out_under_a_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "c.csv").write_text("a\n")
    result = runner.invoke(app, ["bench", "embeddings", "--out", str(tmp_path / "c.csv" / "s"),
                                 "--methods", "hashing", "--budgets", "0.1", "--seeds", "0"])
    assert result.exit_code == 2
    assert "Not a directory" in result.output


def test_the_cli_knows_the_backbone_depth() -> None:
    from retrieval.encoders.backbone import NUM_LAYERS
    from services.commands.sparse import BACKBONE_LAYERS

    assert BACKBONE_LAYERS == NUM_LAYERS


def test_freeze_layers_beyond_the_backbone_is_refused_first(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["train", "sparse", "--data", "d", "--out", "m", "--freeze-layers", "99"])
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert "Invalid value for '--freeze-layers'" in text and "less than or equal to 6" in text
    assert list(tmp_path.iterdir()) == []


def test_eval_names_the_qrels_or_queries_file_at_fault(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # short relative paths: the console does not wrap the message
    data = Path("beir")
    (data / "qrels").mkdir(parents=True)
    (data / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n")
    (data / "queries.jsonl").write_text('{"_id": "q1", "text": "x"}\n')
    result = runner.invoke(app, ["eval", "--index", "ix", "--data", str(data)])
    assert result.exit_code == 2
    assert "test.tsv: no judgements" in result.output
    with (data / "qrels" / "test.tsv").open("a") as fh:
        fh.write("q9\td1\t1\n")
    result = runner.invoke(app, ["eval", "--index", "ix", "--data", str(data)])
    assert result.exit_code == 2
    assert "queries.jsonl: 1 queries judged in" in result.output


def test_eval_qps_leaves_out_the_first_call_warm_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first search of a freshly opened index pays one-off costs (numba cache load, JVM start);
    queries/s measures the batch after a warm-up query."""
    import json
    import time

    import retrieval.index

    class SlowFirstCall:
        kind, calls = "fake", 0

        def batch_search(self, texts: list[str], k: int, threads: int = 1) -> list[list[tuple[str, float]]]:
            SlowFirstCall.calls += 1
            if SlowFirstCall.calls == 1:
                time.sleep(1.0)
            return [[("d1", 1.0)] for _ in texts]

    monkeypatch.setattr(retrieval.index, "open_index", lambda path: SlowFirstCall())
    data = tmp_path / "beir"
    (data / "qrels").mkdir(parents=True)
    (data / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td1\t1\n")
    (data / "queries.jsonl").write_text('{"_id": "q1", "text": "x"}\n{"_id": "q2", "text": "y"}\n')
    result = runner.invoke(app, ["eval", "--index", "ix", "--data", str(data), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["ndcg@10"] == 1.0 and summary["qps"] > 50


@pytest.mark.parametrize("first, args, expected", [
    ("bm25", ["--k1", "2.0", "--b", "1.0", "--threads", "1"], {"k1": 2.0, "b": 1.0, "threads": 1}),
    ("sparse", ["--model", "m", "--quantization", "none", "--top-k", "64"],
     {"model": Path("m"), "quantization": "none", "top_k": 64, "batch_size": 32}),
])
def test_hybrid_index_passes_the_first_stage_its_own_options(monkeypatch: pytest.MonkeyPatch, first: str,
                                                             args: list[str], expected: dict) -> None:
    """``index --kind hybrid --first-stage bm25 --k1 2`` builds its BM25 first stage with k1 2 (the
    first-stage options used to be dropped silently)."""
    import retrieval.index

    seen: dict = {}

    def build(kind: str, corpus: Path, out: Path, **params: object) -> Path:
        seen.update(params)
        return Path(out)

    monkeypatch.setattr(retrieval.index, "build_index", build)
    result = runner.invoke(app, ["index", "--corpus", "c", "--out", "o", "--kind", "hybrid",
                                 "--first-stage", first, *args])
    assert result.exit_code == 0, result.output
    assert seen["first_stage"] == first and seen["first_stage_params"] == expected


def test_search_prints_queries_and_doc_ids_verbatim(monkeypatch: pytest.MonkeyPatch) -> None:
    """Square brackets in a query or a doc id are text, not rich markup ("[/] x" used to crash the print
    after the search had run, and "[b]" vanished)."""
    import retrieval.index

    class Found:
        def search(self, text: str, k: int) -> list[tuple[str, float]]:
            return [("doc[/]1", 1.0), ("[b]doc2", 0.5)]

    monkeypatch.setattr(retrieval.index, "open_index", lambda path: Found())
    result = runner.invoke(app, ["search", "--index", "ix", "[/] role of [b] cells"])
    assert result.exit_code == 0, result.output
    assert "[/] role of [b] cells" in result.output
    assert "doc[/]1" in result.output and "[b]doc2" in result.output


def test_eval_warns_when_the_index_was_built_from_another_corpus(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import retrieval.index
    from sparsekit.artifacts import fingerprint, write_artifact

    class Index:
        kind = "fake"

        def batch_search(self, texts: list[str], k: int, threads: int = 1) -> list[list[tuple[str, float]]]:
            return [[("d1", 1.0)] for _ in texts]

    monkeypatch.setattr(retrieval.index, "open_index", lambda path: Index())
    monkeypatch.chdir(tmp_path)  # short paths: the console does not wrap the warning
    for name, text in (("a", "one"), ("b", "other")):
        (Path(name) / "qrels").mkdir(parents=True)
        (Path(name) / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
        (Path(name) / "queries.jsonl").write_text('{"_id": "q1", "text": "x"}\n')
        (Path(name) / "corpus.jsonl").write_text(f'{{"_id": "d1", "text": "{text}"}}\n')
    with write_artifact(Path("ix"), "fake", 1, source=fingerprint([Path("a/corpus.jsonl")])) as w:
        w.path("data.bin").write_bytes(b"x")
    result = runner.invoke(app, ["eval", "--index", "ix", "--data", "a", "--json"])
    assert result.exit_code == 0 and "another corpus" not in result.output
    result = runner.invoke(app, ["eval", "--index", "ix", "--data", "b", "--json"])
    assert result.exit_code == 0
    assert "warning: ix was built from another corpus than b/corpus.jsonl" in result.output


@pytest.mark.parametrize("command", [["train", "ctr", "--data", "frappe"], ["train", "cf", "--data", "d"],
                                     ["train", "sparse", "--data", "d"],
                                     ["compress", "ctr", "--model", "m", "--calib", "frappe", "--rank", "2"]])
def test_an_unwritable_output_is_refused_before_training(command: list[str], tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("kept")
    (tmp_path / "dataset").mkdir()
    (tmp_path / "dataset" / "data.csv").write_text("kept")
    for out, why in [(blocker / "model", "is a file"), (tmp_path / "dataset", "no manifest.json")]:
        result = runner.invoke(app, [*command, "--out", str(out), "--overwrite"])
        assert result.exit_code == 2 and why in " ".join(result.output.split()), result.output
    assert blocker.read_text() == "kept" and (tmp_path / "dataset" / "data.csv").read_text() == "kept"


def test_an_infinite_query_table_rate_is_refused_cleanly(tmp_path: Path) -> None:
    args = ["train", "query-table", "--model", str(tmp_path), "--out", str(tmp_path / "o"), "--lr", "inf"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "--lr: every value must be a positive number" in result.output


def test_train_sparse_with_a_work_dir_that_is_a_file_exits_2(tmp_path: Path) -> None:
    data = tmp_path / "beir"
    (data / "qrels").mkdir(parents=True)
    (data / "corpus.jsonl").write_text('{"_id": "d1", "title": "", "text": "apples"}\n')
    (data / "queries.jsonl").write_text('{"_id": "q1", "text": "apples"}\n')
    (data / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    work = tmp_path / "work"
    work.write_text("kept")
    result = runner.invoke(app, ["train", "sparse", "--data", str(data), "--out", str(tmp_path / "m"),
                                 "--work-dir", str(work)])
    assert result.exit_code == 2 and "error" in result.output
    assert work.read_text() == "kept"


def test_version_prints_the_version_manifests_record_and_runs_no_command() -> None:
    from sparsekit import __version__
    from sparsekit.artifacts import Manifest

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"sparsekit {__version__}" == Manifest("f", 1).producer


def test_rag_ask_refuses_a_cache_dir_it_could_not_use_before_the_model_loads(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    result = runner.invoke(app, ["rag", "ask", "q", "--rag", str(tmp_path / "nope"), "--cache-dir",
                                 str(tmp_path / "afile")])
    assert result.exit_code == 2 and "--cache-dir:" in result.output and "is a file" in result.output
    result = runner.invoke(app, ["rag", "ask", "q", "--rag", str(tmp_path / "nope"), "--cache-dir",
                                 str(tmp_path / "kv"), "--disk-mb", "0"])
    assert result.exit_code == 2 and "--disk-mb 0 turns the disk tier off" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


@pytest.mark.parametrize("out, checkpoints", [("m", "m"), ("m", "m/ckpt"), ("c/checkpoint", "c"),
                                              ("c/checkpoint/m", "c")])
def test_train_cf_refuses_checkpoints_nested_with_out_before_training(out: str, checkpoints: str,
                                                                      tmp_path: Path) -> None:
    # the model could never be saved into an OUT holding the checkpoint: refused before any epoch
    result = runner.invoke(app, ["train", "cf", "--data", str(tmp_path / "missing"), "--out",
                                 str(tmp_path / out), "--checkpoint-dir", str(tmp_path / checkpoints)])
    assert result.exit_code == 2
    assert "--checkpoint-dir" in result.output and "overlap" in " ".join(result.output.split())
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command, args, message", [
    ("cf", ["--model", "foo"], "--model: unknown CF model 'foo'"),
    ("cf", ["--static"], "--static: needs a density"),
    ("cf", ["--model", "neumf", "--layers", "0"], "--layers: NeuMF needs"),
    ("ctr", ["--model", "foo"], "--model: unknown CTR model 'foo'"),
    ("ctr", ["--min-epochs", "5", "--max-epochs", "2"], "--min-epochs: 5"),
    ("gcn", ["--feature-store", "gpu"], "--feature-store: unknown mode 'gpu'"),
    ("gcn", ["--model", "gat"], "--model: unknown GCN model 'gat'"),
    ("gcn", ["--fanouts", "10,0"], "--fanouts: need one positive integer"),
])
def test_train_refuses_a_bad_config_by_option_before_loading_data(command: str, args: list[str], message: str,
                                                                  tmp_path: Path) -> None:
    """The data is missing: the config error must come first (it used to follow the data load and name the
    Python field, e.g. "static_sparsity")."""
    data = str(tmp_path / ("missing.csv" if command == "ctr" else "missing"))
    out = [] if command == "gcn" else ["--out", str(tmp_path / "m")]
    result = runner.invoke(app, ["train", command, "--data", data, *out, *args])
    assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output


def test_train_gcn_says_when_a_split_is_too_small_to_evaluate(tmp_path: Path) -> None:
    graph = tmp_path / "g"
    result = runner.invoke(app, ["generate", "graph", "--out", str(graph), "--nodes", "80", "--edges", "400",
                                 "--dim", "4", "--classes", "2"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["train", "gcn", "--data", str(graph), "--epochs", "1", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "not evaluated on an empty val and test split" in " ".join(result.output.split())


@pytest.mark.parametrize("args, message", [
    (["--min-epochs", "5", "--max-epochs", "2"], "--min-epochs: 5 exceeds max_epochs 2"),
    (["--model", "foo"], "--model: unknown CTR model(s) ['foo']"),
    (["--first-order", "half"], "--first-order: one of"),
])
def test_bench_embeddings_refuses_a_bad_config_by_option_before_loading_data(args: list[str], message: str,
                                                                              tmp_path: Path) -> None:
    """The dataset is missing: the sweep config's error comes first, under the option's name."""
    result = runner.invoke(app, ["bench", "embeddings", "--dataset", str(tmp_path / "missing.csv"),
                                 "--out", str(tmp_path / "sweep"), *args])
    assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output
    assert not (tmp_path / "sweep").exists()


@pytest.mark.parametrize("dataset, message", [
    ("bogus", "--dataset: 'bogus' is neither a dataset"),
    ("missing.csv", "--dataset: no such table file"),
])
def test_bench_embeddings_refuses_a_bad_dataset_before_creating_the_folder(dataset: str, message: str,
                                                                           tmp_path: Path) -> None:
    # the error named the field "data", and the sweep folder was created before the data failed to load
    result = runner.invoke(app, ["bench", "embeddings", "--dataset", dataset, "--out", str(tmp_path / "s")])
    assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output
    assert not (tmp_path / "s").exists()


def _artifact(path: Path) -> Path:
    from sparsekit.artifacts import write_artifact

    with write_artifact(path, "toy", 1) as w:
        w.path("data.bin").write_bytes(b"x")
    return path


@pytest.mark.parametrize("args, option", [
    (["bench", "embeddings", "--dataset", "frappe", "--out", "{ix}"], "--out"),
    (["bench", "embeddings", "--dataset", "frappe", "--out", "{ix}/sweep"], "--out"),
    (["index", "--kind", "dense", "--corpus", "c", "--out", "{tmp}/o", "--cache-dir", "{ix}"], "--cache-dir"),
    (["rag", "ask", "--rag", "r", "--cache-dir", "{ix}/kv", "q"], "--cache-dir"),
    (["serve", "--rag", "r", "--rag-cache-dir", "{ix}/kv"], "--rag-cache-dir"),
    (["train", "gcn", "--data", "d", "--report", "{ix}/report.json"], "--report"),
    (["train", "sparse", "--data", "d", "--out", "{tmp}/o", "--work-dir", "{ix}"], "--work-dir"),
])
def test_writing_into_a_published_artifact_is_refused_before_any_work(args: list[str], option: str,
                                                                      tmp_path: Path) -> None:
    """Files a cache, report or sweep writes there are ones its manifest does not list: it would no
    longer open (an index stopped opening after `bench embeddings --out INDEX`)."""
    ix = _artifact(tmp_path / "ix")
    args = [a.format(ix=ix, tmp=tmp_path) for a in args]
    result = runner.invoke(app, args)
    output = " ".join(result.output.split())  # rich wraps long lines
    assert result.exit_code == 2, output
    assert option in output and "Sparsekit artifact" in output
    assert sorted(p.name for p in ix.iterdir()) == ["data.bin", "manifest.json"]


@pytest.mark.parametrize("args", [
    ["compress", "ctr", "--model", "{m}", "--calib", "frappe", "--rank", "2", "--out", "{m}", "--overwrite"],
    ["train", "query-table", "--model", "{m}", "--out", "{m}", "--overwrite"],
])
def test_the_input_model_is_never_the_output(args: list[str], tmp_path: Path) -> None:
    model = _artifact(tmp_path / "model")
    result = runner.invoke(app, [a.format(m=model) for a in args])
    output = " ".join(result.output.split())
    assert result.exit_code == 2 and "is the --model input" in output, output
    assert (model / "data.bin").read_bytes() == b"x"


def test_a_graph_too_big_for_this_machine_is_refused_before_any_work(tmp_path: Path) -> None:
    for size, option in ((["--nodes", "100000000000", "--edges", "10"], "nodes/edges: "),
                         (["--nodes", "1000", "--edges", "10", "--dim", "100000000000"], "dim: ")):
        result = runner.invoke(app, ["generate", "graph", "--out", str(tmp_path / "g"), *size])
        assert result.exit_code == 2 and option in " ".join(result.output.split()), result.output
        assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("args, flags", [
    (["--model", "m"], "--model: not read by --kind bm25"),  # forgot --kind sparse
    (["--kind", "dense", "--k1", "2", "--b", "0.9"], "--k1, --b: not read by --kind dense"),
    (["--kind", "hybrid", "--first-stage", "some/index", "--quantization", "uint16"], "--quantization: not"),
])
def test_index_options_of_another_kind_are_refused(args: list[str], flags: str, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import retrieval.index

    monkeypatch.setattr(retrieval.index, "build_index", lambda *a, **kw: pytest.fail("built an index"))
    result = runner.invoke(app, ["index", "--corpus", "c", "--out", str(tmp_path / "o"), *args])
    assert result.exit_code == 2 and flags in " ".join(result.output.split()), result.output


def test_the_console_script_prints_warnings_as_one_line() -> None:
    """Not Python's ``path/cf.py:97: UserWarning: ...`` plus the source line of the call."""
    from services.cli import _one_line_warning

    text = _one_line_warning(UserWarning("runs/ck/checkpoint: starting over"), UserWarning, "cf.py", 97)
    assert text == "warning: runs/ck/checkpoint: starting over\n"


def test_index_errors_name_the_option_not_the_python_field(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"_id": "d1", "title": "", "text": "protein folding"}\n')
    result = runner.invoke(app, ["index", "--kind", "hybrid", "--fusion", "nope", "--corpus", str(corpus),
                                 "--out", str(tmp_path / "o")])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: --fusion: must be one of"), result.output
