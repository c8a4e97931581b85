"""Sparse-encoder training: the exact active-entry head, batching, and a tiny train -> index -> search."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from retrieval.encoders.sparse_doc import SparseDocEncoder, SparseEncoderConfig
from retrieval.training.active_head import train_weights
from retrieval.training.sparse import SparseTrainConfig, split_train_dev, train_sparse_encoder
from retrieval.training.teachers import TeacherConfig
from sparsekit.errors import ArtifactError, InputError

TEXTS = ["Aspirin lowers the risk of heart attack in older adults.",
         "Vitamin D deficiency is linked to weak bones and fractures.",
         "Sleep deprivation impairs memory consolidation in mice."]


@pytest.fixture(scope="module")
def encoder() -> SparseDocEncoder:
    cfg = SparseEncoderConfig(max_length=32, freeze_layers=4)
    return SparseDocEncoder.from_minilm(cfg, device="cpu").double()


def _grads(enc: SparseDocEncoder, weights: torch.Tensor) -> dict[str, torch.Tensor]:
    enc.zero_grad()
    probe = torch.arange(weights.shape[1], dtype=weights.dtype).sin()
    (weights * probe).sum().backward()
    return {n: p.grad.clone() for n, p in enc.named_parameters() if p.grad is not None}


def test_active_head_matches_dense_values_and_gradients(encoder: SparseDocEncoder) -> None:
    ids, mask = encoder.tokenize(TEXTS)
    with torch.no_grad():
        low = encoder.lower(ids, mask)
    dense = encoder.upper(low, mask)
    g_dense = _grads(encoder, dense)
    active = train_weights(encoder, low, mask)
    g_active = _grads(encoder, active)
    assert torch.allclose(dense, active, atol=1e-10)
    assert set(g_dense) == set(g_active) and "bias" in g_dense
    for name, grad in g_dense.items():
        if name.endswith("attention.self.key.bias"):  # mathematically zero: softmax shift-invariance
            continue
        rel = (grad - g_active[name]).norm() / grad.norm().clamp_min(1e-30)
        assert rel < 1e-8, name


def test_split_train_dev_is_deterministic_and_disjoint() -> None:
    qids = [f"q{i}" for i in range(50)]
    train, dev = split_train_dev(qids, 0.2, seed=3)
    assert len(dev) == 10 and not set(train) & set(dev) and set(train) | set(dev) == set(qids)
    assert split_train_dev(list(reversed(qids)), 0.2, seed=3) == (train, dev)
    assert split_train_dev(qids, 0.2, seed=4) != (train, dev)


TOPICS = {
    "aspirin": ("Aspirin and cardiovascular events", "Low dose aspirin reduces heart attack risk."),
    "vitamin": ("Vitamin D and bone health", "Vitamin D supplements prevent fractures in elderly."),
    "sleep": ("Sleep and memory", "Sleep loss disrupts hippocampal memory consolidation."),
    "insulin": ("Insulin resistance", "Obesity causes insulin resistance and type 2 diabetes."),
    "malaria": ("Malaria vaccines", "The RTS,S vaccine protects children from malaria infection."),
    "statin": ("Statins and cholesterol", "Statins lower LDL cholesterol and mortality."),
}


def _tiny_beir(root: Path) -> None:
    docs, queries, qrels = [], [], ["query-id\tcorpus-id\tscore"]
    for topic, (title, text) in TOPICS.items():
        for j in range(3):
            docs.append({"_id": f"{topic}{j}", "title": title, "text": f"{text} Study {j} of {topic}."})
        for j in range(2):
            queries.append({"_id": f"{topic}-q{j}", "text": f"{text.split()[0]} {topic} claim {j}"})
            qrels.append(f"{topic}-q{j}\t{topic}{j}\t1")
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (root / "qrels" / "train.tsv").write_text("\n".join(qrels) + "\n")
    assert len(docs) == 18 and len(queries) == 12


def test_tiny_train_index_search_end_to_end(tmp_path: Path) -> None:
    from retrieval.index import build_index, open_index

    data = tmp_path / "beir"
    _tiny_beir(data)
    cfg = SparseTrainConfig(
        data=str(data), out=str(tmp_path / "model"), work_dir=str(tmp_path / "work"), dev_fraction=0.25,
        encoder=SparseEncoderConfig(max_length=32, freeze_layers=4), teachers=TeacherConfig(depth=4),
        epochs=1, queries_per_step=3, candidates_per_query=4, progress=False, device="cpu", seed=1)
    model_dir = train_sparse_encoder(cfg)
    manifest = json.loads((model_dir / "manifest.json").read_text())
    training = manifest["params"]["training"]
    assert training["steps"] == 3 and len(training["dev"]) == 2  # 9 train queries / 3; dev before + after
    assert np.isfinite(training["last_loss"])
    index = open_index(build_index("sparse", data / "corpus.jsonl", tmp_path / "index", model=model_dir,
                                   batch_size=8))
    assert index.kind == "sparse" and index.num_docs == 18
    hits = index.search("malaria vaccine for children", 3)
    assert hits and hits[0][0].startswith("malaria")
    assert index.batch_search(["malaria vaccine for children"], 3) == [hits]
    _check_lucene_export(tmp_path, index)
    _check_grpc(index, hits)
    with pytest.raises(ArtifactError, match="already exists"):
        train_sparse_encoder(cfg)


def test_a_shorter_rerun_does_not_take_a_longer_runs_checkpoint(tmp_path: Path) -> None:
    """The checkpoint key leaves out ``max_steps`` (so a run can be extended); a rerun asking for fewer
    steps than the checkpoint holds trains afresh (it used to return the longer run's state as its own)."""
    data = tmp_path / "beir"
    _tiny_beir(data)
    cfg = SparseTrainConfig(
        data=str(data), out=str(tmp_path / "model"), work_dir=str(tmp_path / "work"), dev_fraction=0.25,
        encoder=SparseEncoderConfig(max_length=32, freeze_layers=4), teachers=TeacherConfig(depth=4),
        epochs=1, queries_per_step=3, candidates_per_query=4, progress=False, device="cpu", seed=1,
        dev_eval_start=False, checkpoint_every=1)
    long = json.loads((train_sparse_encoder(cfg) / "manifest.json").read_text())["params"]["training"]
    short_cfg = dataclasses.replace(cfg, max_steps=1, overwrite=True)
    short = json.loads((train_sparse_encoder(short_cfg) / "manifest.json").read_text())["params"]["training"]
    assert (long["steps"], short["steps"]) == (3, 1) and len(short["dev"]) == 1


@pytest.mark.parametrize(("make", "match"), [
    (lambda: SparseTrainConfig(data="d", out="o", encoder=SparseEncoderConfig(freeze_layers=0)),
     "encoder.freeze_layers.*cach"),  # the cached embeddings would go stale while the tied head trains
    (lambda: SparseTrainConfig(data="d", out="o",
                               encoder=SparseEncoderConfig(max_length=1024, freeze_layers=4)),
     "encoder.max_length.*512 positions"),
    (lambda: TeacherConfig(dense_max_length=513), "dense_max_length.*512 positions"),
    (lambda: SparseDocEncoder.from_minilm(SparseEncoderConfig(max_length=600), device="cpu"),
     "max_length.*512 positions"),
])
def test_settings_the_backbone_cannot_run_are_refused_up_front(make, match: str) -> None:
    with pytest.raises(InputError, match=match):
        make()


def test_too_few_training_queries_for_one_step_is_refused(tmp_path: Path) -> None:
    """9 training queries and queries_per_step=10: no step could run, so nothing is trained or saved."""
    data = tmp_path / "beir"
    _tiny_beir(data)
    cfg = SparseTrainConfig(data=str(data), out=str(tmp_path / "model"), work_dir=str(tmp_path / "work"),
                            dev_fraction=0.25, queries_per_step=10, progress=False, device="cpu")
    with pytest.raises(InputError, match=r"train\.tsv: 9 training queries .* queries_per_step=10"):
        train_sparse_encoder(cfg)
    assert not (tmp_path / "model").exists()


def _check_lucene_export(tmp_path: Path, native) -> None:
    """The same vectors on Lucene (impact index) give the same top-10 as the native engine."""
    from retrieval.index import open_index
    from retrieval.index.impact_export import export_impact_index

    lucene = open_index(export_impact_index(tmp_path / "index", tmp_path / "lucene"))
    try:
        for query in ("aspirin heart attack", "vitamin D fractures", "insulin diabetes obesity"):
            ours = [d for d, _ in native.search(query, 10)]
            theirs = [d for d, _ in lucene.search(query, 10)]
            assert set(ours[:3]) == set(theirs[:3]), query
            assert len(set(ours) & set(theirs)) >= 0.8 * len(ours), query
        queries = ["aspirin heart attack", "vitamin D fractures", "insulin diabetes obesity"]
        assert lucene.batch_search(queries, 10, threads=2) == [lucene.search(q, 10) for q in queries]
        terms, values = lucene.query.encode("aspirin heart attack")
        assert lucene.search_sparse(terms, values, 10) == lucene.search("aspirin heart attack", 10)
        with pytest.raises(InputError, match=r"query\.indices\[1\]: term id .* out of range"):
            lucene.search_sparse([int(terms[0]), len(lucene.vocab)], [1.0, 1.0], 10)
        t = int(terms[0])  # a repeated id adds up, as in the native engine
        assert lucene.search_sparse([t, t], [0.5, 0.5], 10) == lucene.search_sparse([t], [1.0], 10)
        with pytest.raises(InputError, match=r"query\.values: .*beyond Lucene's integer impacts"):
            lucene.search_sparse([t], [1e30], 10)
    finally:
        lucene.close()


def _check_grpc(index, hits) -> None:
    """The gRPC Search service serves the learned-sparse index: text and raw sparse queries."""
    import grpc

    from services.api import search_pb2, search_pb2_grpc
    from services.server import ServerConfig, make_server

    server, port = make_server({"tiny": index}, ServerConfig(address="127.0.0.1:0"))
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = search_pb2_grpc.SearchServiceStub(channel)
            req = search_pb2.SearchRequest(index="tiny", text="malaria vaccine for children", k=3,
                                           mode=search_pb2.SEARCH_MODE_SPARSE)
            resp = stub.Search(req, timeout=30)
            assert [(h.doc_id, round(h.score, 4)) for h in resp.hits] == [(d, round(s, 4)) for d, s in hits]
            indices, values = index.encode_queries(["malaria vaccine for children"])[0]
            raw = search_pb2.SparseVector(indices=indices.tolist(), values=values.tolist())
            resp = stub.Search(search_pb2.SearchRequest(index="tiny", sparse=raw, k=3), timeout=30)
            assert [h.doc_id for h in resp.hits] == [d for d, _ in hits]
            bad = search_pb2.SparseVector(indices=[10**6], values=[1.0])
            with pytest.raises(grpc.RpcError) as info:
                stub.Search(search_pb2.SearchRequest(index="tiny", sparse=bad, k=3), timeout=30)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        server.stop(grace=None)


def test_untied_head_starts_equal_and_learns(tmp_path: Path) -> None:
    from retrieval.encoders.sparse_doc import SparseModel

    tied = SparseDocEncoder.from_minilm(SparseEncoderConfig(max_length=32, freeze_layers=4), device="cpu")
    model = SparseModel.from_minilm(SparseEncoderConfig(max_length=32, freeze_layers=4, tie_head=False),
                                    device="cpu")
    untied = model.doc
    ids, mask = tied.tokenize(TEXTS)
    with torch.no_grad():
        assert torch.equal(tied(ids, mask), untied(ids, mask))
        low = untied.lower(ids, mask)
    train_weights(untied, low, mask).sum().backward()
    assert untied.head.grad is not None and untied.head.grad.abs().sum() > 0
    assert untied.backbone.embeddings.word_embeddings.weight.grad is None  # input embeddings frozen
    with torch.no_grad():
        untied.head.add_(0.01)
    model.save(tmp_path / "m")
    again = SparseModel.load(tmp_path / "m", device="cpu").doc
    assert torch.equal(again.head, untied.head)
    assert torch.allclose(again(ids, mask), untied(ids, mask))


def test_title_pseudo_queries_come_from_the_corpus_only() -> None:
    from retrieval.data.beir import Doc
    from retrieval.training.sparse import PSEUDO, title_queries

    corpus = {"d1": Doc("d1", "Aspirin lowers heart risk", "x"), "d2": Doc("d2", "Short", "y")}
    assert title_queries(corpus) == {f"{PSEUDO}d1": "Aspirin lowers heart risk"}


def test_tiny_training_with_the_lexical_prior(tmp_path: Path) -> None:
    """Training, dev evaluation and indexing add the prior the same way (dev metrics == index metrics)."""
    from retrieval.encoders import SparseModel
    from retrieval.index import build_index, open_index

    data = tmp_path / "beir"
    _tiny_beir(data)
    cfg = SparseTrainConfig(
        data=str(data), out=str(tmp_path / "model"), work_dir=str(tmp_path / "work"), dev_fraction=0.25,
        encoder=SparseEncoderConfig(max_length=32, freeze_layers=4, lexical_prior=True),
        teachers=TeacherConfig(depth=4), epochs=1, queries_per_step=3, candidates_per_query=4,
        progress=False, device="cpu", seed=1)
    model_dir = train_sparse_encoder(cfg)
    model = SparseModel.load(model_dir, device="cpu")
    assert model.doc.config.lexical_prior and model.doc.config.lexical_avgdl > 0
    scale = float(model.doc.lexical_scale.detach())
    assert scale != 1.0  # the prior's scale is trained
    training = json.loads((model_dir / "manifest.json").read_text())["params"]["training"]
    index = open_index(build_index("sparse", data / "corpus.jsonl", tmp_path / "index", model=model_dir,
                                   batch_size=8))
    hits = index.search("malaria vaccine for children", 3)
    assert hits and hits[0][0].startswith("malaria")
    from retrieval.data.beir import load_corpus
    from retrieval.training.teachers import doc_contents

    contents = [doc_contents(d) for d in load_corpus(data / "corpus.jsonl").values()]
    docs = model.doc.encode(contents, progress=False)
    assert training["dev"][-1]["avg_doc_nnz"] == pytest.approx(docs.getnnz(axis=1).mean(), rel=1e-3)
    import scipy.sparse as sp

    from retrieval.training.dev_eval import document_cache

    cached = sp.load_npz(document_cache(model_dir, contents, tmp_path / "work"))  # left for stage 2
    np.testing.assert_allclose(cached.toarray(), docs.toarray(), rtol=1e-5, atol=1e-6)


def test_query_table_stage_keeps_the_encoder_and_its_best_dev_table(tmp_path: Path) -> None:
    """Stage 2 trains the query table and the residual weight, on the stage-1 split and caches, and keeps
    its best dev epoch; the encoder's weights do not change."""
    from retrieval.data.beir import load_corpus, load_qrels, load_queries
    from retrieval.encoders import SparseModel
    from retrieval.training.dev_eval import evaluate_dev
    from retrieval.training.query_table import QueryTableConfig, train_query_table
    from retrieval.training.teachers import doc_contents

    data = tmp_path / "beir"
    _tiny_beir(data)
    stage1 = train_sparse_encoder(SparseTrainConfig(
        data=str(data), out=str(tmp_path / "model"), work_dir=str(tmp_path / "work"), dev_fraction=0.25,
        encoder=SparseEncoderConfig(max_length=32, freeze_layers=4, lexical_prior=True),
        teachers=TeacherConfig(depth=4), epochs=1, queries_per_step=3, candidates_per_query=4,
        progress=False, device="cpu", seed=1, dev_eval=False))
    cfg = QueryTableConfig(model=str(stage1), out=str(tmp_path / "model2"), work_dir=str(tmp_path / "work"),
                           epochs=3, lrs=(0.5, 0.05), batch_queries=4, progress=False)
    before = SparseModel.load(stage1, device="cpu")
    after = SparseModel.load(train_query_table(cfg), device="cpu")
    record = after.extra["query_table"]
    assert [(h["lr"], h["epoch"]) for h in record["dev"]] == [
        (0.0, 0), (0.5, 1), (0.5, 2), (0.5, 3), (0.05, 1), (0.05, 2), (0.05, 3)]
    assert record["train_queries"] == 9
    best = max(record["dev"], key=lambda h: h["ndcg@10"])  # the first of equals: the IDF table wins ties
    assert record["kept"] == {k: best[k] for k in ("lr", "epoch", "residual_scale")}
    assert record["dev"][0]["residual_scale"] == 1.0
    assert len({h["residual_scale"] for h in record["dev"]}) > 1  # the weight is learned
    assert after.doc.config.residual_scale == best["residual_scale"]
    for name, tensor in before.doc.state_dict().items():
        assert torch.equal(tensor, after.doc.state_dict()[name]), name
    moved = not np.array_equal(before.query.table(), after.query.table())
    assert moved == (best["epoch"] > 0)
    corpus, queries = load_corpus(data / "corpus.jsonl"), load_queries(data / "queries.jsonl")
    docs = after.doc.encode([doc_contents(d) for d in corpus.values()], progress=False)
    dev = after.extra["training"]["dev_queries"]
    got = evaluate_dev(after, docs, list(corpus), queries, load_qrels(data / "qrels" / "train.tsv"), dev)
    assert got["ndcg@10"] == pytest.approx(best["ndcg@10"], abs=1e-4)
    with pytest.raises(ArtifactError, match="already exists"):
        train_query_table(cfg)
    fixed = SparseModel.load(train_query_table(dataclasses.replace(
        cfg, out=str(tmp_path / "model3"), learn_residual_scale=False)), device="cpu")
    assert {h["residual_scale"] for h in fixed.extra["query_table"]["dev"]} == {1.0}
    assert fixed.doc.config.residual_scale == 1.0
    # a model saved with another residual weight (as stage 2 saves it) splits back into the same parts
    from retrieval.training.query_table import document_parts, stage_data

    reweighted = SparseModel.load(stage1, device="cpu")
    reweighted.doc.config.residual_scale = 0.3
    saved = reweighted.save(tmp_path / "model-g")
    parts = document_parts(reweighted, saved, stage_data(reweighted, tmp_path / "work", progress=False),
                           tmp_path / "work", progress=False)
    contents = [doc_contents(d) for d in corpus.values()]
    assert parts.residual is not None and parts.residual.nnz > 0
    assert abs(parts.combine(0.3) - reweighted.doc.encode(contents, progress=False)).max() < 1e-5
    assert abs(parts.combine(1.0) - before.doc.encode(contents, progress=False)).max() < 1e-5


def test_query_table_teacher_target_ignores_candidate_padding() -> None:
    """Teacher-cache rows are padded to a common width with score 0; the stage-2 target min-max
    normalises each teacher over the query's real candidates only, as stage 1 does."""
    import scipy.sparse as sp

    from retrieval.encoders import IdfQueryEncoder
    from retrieval.training.query_table import DocumentParts, _tensors
    from retrieval.training.teachers import TeacherCache

    cache = TeacherCache(query_ids=["q1"], candidates=np.array([[0, 1, 2, -1]], np.int32),
                         bm25=np.array([[3.0, 1.0, 2.0, 0.0]], np.float32),
                         dense=np.array([[0.8, 0.4, 0.6, 0.0]], np.float32),
                         positives=np.array([[True, False, False, False]]))
    model = dataclasses.make_dataclass("M", ["query"])(IdfQueryEncoder.from_minilm())
    docs = DocumentParts(sp.csr_matrix((3, model.query.vocab_size), dtype=np.float32))
    teacher = _tensors(model, docs, cache, {"q1": "aspirin"}, ["q1"]).teacher
    # bm25 -> [1, 0, .5], dense -> [1, 0, .5]: mean x 30 (dense min over the real candidates is 0.4)
    assert torch.allclose(teacher[0, :3], torch.tensor([30.0, 0.0, 15.0]))


def test_a_training_query_without_a_negative_candidate_is_named() -> None:
    from retrieval.training.sparse import _Batcher
    from retrieval.training.teachers import TeacherCache

    cache = TeacherCache(query_ids=["q1", "q2"], candidates=np.array([[0, 1, -1], [0, 1, 2]], np.int32),
                         bm25=np.zeros((2, 3), np.float32), dense=np.zeros((2, 3), np.float32),
                         positives=np.array([[True, True, False], [True, False, False]]))
    config = SparseTrainConfig(data="d", out="o")
    _Batcher(cache, ["q2"], config)  # q2 has negatives
    with pytest.raises(InputError, match=r"^qrels: training query 'q1': every candidate"):
        _Batcher(cache, ["q1", "q2"], config)


def test_query_table_refuses_a_stage_one_model_without_dev_queries(tmp_path: Path) -> None:
    """dev_fraction=0 in stage 1: stage 2 has nothing to select on, and says so (not 'qrels is empty')."""
    from retrieval.training.query_table import QueryTableConfig, train_query_table

    data = tmp_path / "beir"
    _tiny_beir(data)
    stage1 = train_sparse_encoder(SparseTrainConfig(
        data=str(data), out=str(tmp_path / "model"), work_dir=str(tmp_path / "work"), dev_fraction=0.0,
        encoder=SparseEncoderConfig(max_length=32, freeze_layers=4), teachers=TeacherConfig(depth=4),
        epochs=1, queries_per_step=3, candidates_per_query=4, max_steps=1, progress=False, device="cpu"))
    cfg = QueryTableConfig(model=str(stage1), out=str(tmp_path / "model2"), work_dir=str(tmp_path / "work"),
                           epochs=1, lrs=(0.1,), progress=False)
    with pytest.raises(InputError, match=r"model: stage 1 held out no dev queries \(dev_fraction=0.0"):
        train_query_table(cfg)
    assert not (tmp_path / "model2").exists()


def test_query_table_runs_from_another_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stage 1 run with relative paths (as in the README) and its own --work-dir: stage 2, run from another
    directory without --work-dir, finds the data and reuses stage 1's caches instead of rebuilding them."""
    from retrieval.training import query_table
    from retrieval.training.query_table import QueryTableConfig, train_query_table

    (tmp_path / "a").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    _tiny_beir(Path("beir"))
    stage1 = train_sparse_encoder(SparseTrainConfig(
        data="beir", out="model", work_dir="caches", dev_fraction=0.25,
        encoder=SparseEncoderConfig(max_length=32, freeze_layers=4), teachers=TeacherConfig(depth=4),
        epochs=1, queries_per_step=3, candidates_per_query=4, max_steps=1, progress=False, device="cpu"))
    monkeypatch.chdir(tmp_path)
    used = []
    real = query_table.stage_data
    monkeypatch.setattr(query_table, "stage_data", lambda m, work, progress: used.append(work) or real(
        m, work, progress))
    train_query_table(QueryTableConfig(model=str(Path("a") / stage1), out="model2", epochs=1, lrs=(0.1,),
                                       progress=False))
    assert used == [tmp_path / "a" / "caches"]
    assert not (tmp_path / "a" / "model.work").exists()


def test_teacher_cache_key_covers_the_judgements_and_the_document_text() -> None:
    """An edited label or document must not reuse the teachers mined from the old data."""
    from retrieval.data.beir import Doc
    from retrieval.training.teachers import _cache_key

    corpus = {"d1": Doc("d1", "Cats", "Cats purr."), "d2": Doc("d2", "Dogs", "Dogs bark.")}
    queries, qrels, config = {"q1": "what purrs"}, {"q1": {"d1": 1}}, TeacherConfig()
    key = _cache_key(corpus, queries, qrels, config)
    assert _cache_key(dict(corpus), dict(queries), {"q1": {"d1": 1}}, TeacherConfig()) == key
    assert _cache_key(corpus, queries, {"q1": {"d2": 1}}, config) != key
    assert _cache_key({**corpus, "d2": Doc("d2", "Dogs", "Dogs howl.")}, queries, qrels, config) != key
    assert _cache_key(corpus, {"q1": "what barks"}, qrels, config) != key
