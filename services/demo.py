"""``make demo``: the whole BM25 slice end to end on an embedded default, no external server.

1. Corpus: BEIR SciFact from the data root when present, else the docstrings of the installed
   Python packages (a real corpus every machine has).
2. Build a Lucene BM25 index (k1=0.9, b=0.4) into a temporary directory.
3. Start the gRPC search server in this process on a free loopback port; wait for health SERVING.
4. Send queries through the gRPC client and print ranked results; on SciFact, also BatchSearch the
   whole test split and print NDCG@10 / R@100 / MRR@10.
5. Stop the server gracefully and delete the temporary index.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from retrieval.data.docstrings import write_docstring_corpus
from retrieval.evaluation import evaluate, run_from_hits
from retrieval.index.bm25 import Bm25Index, build_bm25_index
from services.search_client import SearchClient
from services.server import ServerConfig, make_server
from sparsekit.dataroot import dataset_path

console = Console()
DOCSTRING_QUERIES = ("singular value decomposition of a matrix", "read a csv file into a dataframe",
                     "sparse matrix multiplication", "asynchronous event loop sleep")


def _titles(corpus: Path) -> dict[str, str]:
    with open(corpus, encoding="utf-8") as fh:
        docs = map(json.loads, fh)
        return {d["_id"]: d["text"] if d.get("title", "") in ("", d["_id"]) else d["title"] for d in docs}


def _pick_corpus(workdir: Path) -> tuple[str, Path, list[str]]:
    scifact = dataset_path("scifact")
    if scifact and (scifact / "corpus.jsonl").is_file():
        from retrieval.data.beir import load_qrels, load_queries

        qrels = load_qrels(scifact / "qrels" / "test.tsv")
        queries = load_queries(scifact / "queries.jsonl")
        return "scifact", scifact / "corpus.jsonl", [queries[q] for q in sorted(qrels)[:3]]
    corpus = workdir / "docstrings.jsonl"
    with console.status("collecting docstrings of installed packages"):
        n = write_docstring_corpus(corpus)
    console.print(f"no SciFact found; using {n} docstrings of installed packages")
    return "docstrings", corpus, list(DOCSTRING_QUERIES)


def _show(query: str, hits: list[tuple[str, float]], titles: dict[str, str]) -> None:
    table = Table("rank", "doc_id", "score", "title", title=query, title_justify="left")
    for rank, (doc, score) in enumerate(hits, 1):
        table.add_row(str(rank), doc, f"{score:.3f}", titles.get(doc, "")[:70])
    console.print(table)


def _evaluate_scifact(client: SearchClient, name: str) -> None:
    from retrieval.data.beir import load_qrels, load_queries

    scifact = dataset_path("scifact")
    assert scifact is not None
    qrels = load_qrels(scifact / "qrels" / "test.tsv")
    queries = load_queries(scifact / "queries.jsonl")
    qids = sorted(qrels)
    start = time.perf_counter()
    hits = client.batch_search(name, [queries[q] for q in qids], k=100)
    seconds = time.perf_counter() - start
    means = evaluate(qrels, run_from_hits(qids, hits)).means
    console.print(f"SciFact test over gRPC BatchSearch: {len(qids)} queries in {seconds:.1f}s; "
                  + ", ".join(f"{m}={v:.4f}" for m, v in means.items()))


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="sparsekit-demo-") as tmp:
        workdir = Path(tmp)
        name, corpus, queries = _pick_corpus(workdir)
        start = time.perf_counter()
        path = build_bm25_index(corpus, workdir / "index")
        console.print(f"built BM25 index over {name} in {time.perf_counter() - start:.1f}s")
        server, port = make_server({name: Bm25Index.open(path)}, ServerConfig(address="127.0.0.1:0"))
        server.start()
        try:
            with SearchClient(f"127.0.0.1:{port}") as client:
                client.wait_ready()
                console.print(f"gRPC server on 127.0.0.1:{port}; indexes: "
                              f"{[(i.name, i.kind, i.num_docs) for i in client.list_indexes()]}")
                titles = _titles(corpus)
                for query in queries:
                    _show(query, client.search(name, query, k=5), titles)
                if name == "scifact":
                    _evaluate_scifact(client, name)
        finally:
            server.stop(grace=2).wait()
            console.print("server stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
