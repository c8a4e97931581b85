"""Contrastive PQ (straight-through codes, faiss export, training) and progressive optimization
(locality-centric batches, query-encoder fine-tuning, the saved encoder)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from retrieval.encoders.dense import load_dense_encoder, save_dense_encoder
from retrieval.index.bigranular import BiGranularConfig, BiGranularIndex, build_bigranular_index
from retrieval.quantization.contrastive_pq import (
    ContrastivePQ,
    ContrastivePQConfig,
    contrastive_loss,
    mine_negatives,
    train_contrastive_pq,
)
from retrieval.training.progressive import (
    ProgressiveConfig,
    QueryCandidateGraph,
    finetune_query_encoder,
    mine_candidates,
)
from sparsekit.errors import InputError

DIM = 16


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def docs() -> np.ndarray:
    return unit(np.random.default_rng(0).normal(size=(600, DIM)))


@pytest.fixture(scope="module")
def plain(docs: np.ndarray) -> ContrastivePQ:
    return ContrastivePQ.train_opq(docs, m=4, nbits=4, opq=False)


def test_straight_through_value_is_the_hard_assignment(plain: ContrastivePQ, docs: np.ndarray) -> None:
    x = torch.from_numpy(docs[:50])
    probs, codes = plain.assign(x, temperature=0.01)
    assert torch.equal(codes, plain.distances(plain.rotate(x)).argmin(-1))
    assert torch.equal(plain(x, 0.01), plain.decode(codes))  # forward value: exactly the hard code
    assert torch.allclose(probs.sum(-1), torch.ones(50, 4))
    assert np.array_equal(plain.encode(docs[:50]), codes.numpy().astype(np.uint8))


def test_backward_reaches_the_codebooks_through_the_soft_assignment(plain: ContrastivePQ,
                                                                    docs: np.ndarray) -> None:
    model = ContrastivePQ(plain.rotation.clone(), plain.codebooks.detach().clone())
    x = torch.from_numpy(docs[:20])
    (model(x, temperature=0.05) @ torch.ones(DIM)).sum().backward()
    grad = model.codebooks.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    _, codes = model.assign(x)
    unused = torch.ones(4, 16, dtype=torch.bool)
    unused[torch.arange(4).repeat(20), codes.flatten()] = False
    assert grad[unused].abs().sum() > 0  # soft gradient also moves centroids no document picked


def test_low_temperature_soft_assignment_approaches_the_hard_one(plain: ContrastivePQ,
                                                                  docs: np.ndarray) -> None:
    x = torch.from_numpy(docs[:30])
    probs, codes = plain.assign(x, temperature=1e-5)
    assert torch.equal(probs.argmax(-1), codes) and (probs.max(-1).values > 0.99).float().mean() > 0.9


def test_faiss_export_encodes_and_scores_like_the_module(docs: np.ndarray) -> None:
    import faiss

    model = ContrastivePQ.train_opq(docs, m=4, nbits=8, opq=True, opq_iterations=5)
    assert np.allclose(model.rotation @ model.rotation.T, np.eye(DIM), atol=1e-4)  # OPQ: orthonormal
    with torch.no_grad():
        model.codebooks.add_(0.01)  # any centroids, not only faiss's own
    index = model.to_faiss()
    index.add(docs)
    stored = faiss.vector_to_array(faiss.downcast_index(index.index).codes).reshape(len(docs), -1)
    assert np.array_equal(stored, model.encode(docs)) and model.code_bytes == 4
    queries = unit(np.random.default_rng(1).normal(size=(5, DIM)))
    scores, rows = index.search(queries, 10)
    adc = model.adc_scores(queries, model.encode(docs))
    assert np.allclose(scores, np.take_along_axis(adc, rows, 1), atol=1e-5)
    assert np.allclose(scores, -np.sort(-adc, axis=1)[:, :10], atol=1e-5)
    again = ContrastivePQ.from_faiss(index)
    assert torch.allclose(again.codebooks, model.codebooks) and torch.allclose(again.rotation, model.rotation)


def test_exported_codes_serve_a_bigranular_index(plain: ContrastivePQ, docs: np.ndarray, tmp_path) -> None:
    ids = [f"d{i}" for i in range(len(docs))]
    path = build_bigranular_index(None, tmp_path / "ix", BiGranularConfig(candidates=50), vectors=(ids, docs),
                                  code_index=plain.to_faiss(), progress=False)
    _, rows = BiGranularIndex.open(path).search_vectors(docs[:10], 1)
    assert np.array_equal(rows[:, 0], np.arange(10))


def test_contrastive_loss_masks_the_other_positives() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, 3.0]])
    columns = np.array([10, 11, 12])
    loss = contrastive_loss(logits, columns, np.array([0, 2]), [np.array([10, 11]), np.array([12])])
    # row 0: column 1 (doc 11) is another positive -> masked; row 1: nothing masked
    expected = (-torch.log_softmax(torch.tensor([2.0, 0.0]), 0)[0]
                - torch.log_softmax(torch.tensor([0.0, 0.0, 3.0]), 0)[2]) / 2
    assert torch.isclose(loss, expected)


def test_mined_negatives_exclude_positives(docs: np.ndarray) -> None:
    queries = docs[:3]
    negatives = mine_negatives(queries, docs, [[0], [1, 5], [2]], depth=10)
    assert negatives.shape == (3, 10)
    assert 0 not in negatives[0] and not {1, 5} & set(negatives[1]) and 2 not in negatives[2]


def _toy_task(docs: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, list[list[int]]]:
    rng = np.random.default_rng(seed)
    targets = rng.choice(len(docs), n, replace=False)
    return unit(docs[targets] + 0.3 * rng.normal(size=(n, DIM))), [[int(t)] for t in targets]


def _recall(model: ContrastivePQ, docs: np.ndarray, queries: np.ndarray, positives, k: int = 10) -> float:
    top = np.argsort(-model.adc_scores(queries, model.encode(docs)), axis=1)[:, :k]
    return float(np.mean([p[0] in row for p, row in zip(positives, top, strict=True)]))


def test_training_keeps_the_best_dev_codebooks(plain: ContrastivePQ, docs: np.ndarray) -> None:
    model = ContrastivePQ(plain.rotation.clone(), plain.codebooks.detach().clone())
    queries, positives = _toy_task(docs, 200, seed=2)
    dev_q, dev_p = _toy_task(docs, 100, seed=3)
    before = _recall(model, docs, dev_q, dev_p)
    config = ContrastivePQConfig(epochs=3, batch_size=32, negatives=4, mine_depth=20, lr=5e-3,
                                 assign_temperature=0.05)
    history = train_contrastive_pq(model, queries, positives, docs, config,
                                   dev=lambda m: _recall(m, docs, dev_q, dev_p), progress=False)
    assert [h["epoch"] for h in history] == [0, 1, 2, 3]
    assert all(np.isfinite(h.get("loss", 0.0)) for h in history)
    assert _recall(model, docs, dev_q, dev_p) == max(h["dev"] for h in history) >= before
    with pytest.raises(InputError, match="positives"):
        train_contrastive_pq(model, queries[:2], [[], []], docs, config, progress=False)


# ---------------------------------------------------------------- progressive optimization


def test_random_walk_batches_are_local_and_cover_every_query_once() -> None:
    # two communities of queries: 0-9 share docs 0-19, 10-19 share docs 100-119
    rng = np.random.default_rng(0)
    candidates = np.stack([rng.choice(20, 5, replace=False) + (0 if q < 10 else 100) for q in range(20)])
    graph = QueryCandidateGraph(candidates)
    for sampling in ("random_walk", "snowball"):
        batches = list(graph.batches(5, sampling, np.random.default_rng(1)))
        assert sorted(q for b in batches for q in b) == list(range(20))
        assert all(len({q < 10 for q in b}) == 1 for b in batches[:2])  # first batches stay in a community
    uniform = list(graph.batches(5, "uniform", np.random.default_rng(1)))
    assert sorted(q for b in uniform for q in b) == list(range(20))


def test_mine_candidates_uses_the_code_search(plain: ContrastivePQ, docs: np.ndarray) -> None:
    index = plain.to_faiss()
    index.add(docs)
    rows = mine_candidates(index.search, docs[:4], 7)
    assert rows.shape == (4, 7) and rows.dtype == np.int64


@pytest.fixture(scope="module")
def minilm():
    from retrieval.encoders.dense import DenseEncoder

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny batches: one thread beats two contended ones (37 s -> 2 s here)
    yield DenseEncoder.from_minilm(max_length=32, device="cpu")
    torch.set_num_threads(threads)


def test_finetuning_updates_the_query_encoder_and_round_trips(minilm, tmp_path) -> None:
    texts = ["cat food", "volcano lava", "ocean tides", "protein folding"]
    docs = minilm.encode(["feline diet for cats", "magma erupts", "sea levels and moons",
                          "molecular dynamics", "stock markets", "football scores"], progress=False)
    before = minilm.encode(texts, progress=False)
    candidates = np.array([[0, 4, 5], [1, 4, 5], [2, 4, 5], [3, 4, 5]])
    config = ProgressiveConfig(steps=2, batch_size=2, negatives=2, lr=1e-4, eval_every=1)
    history = finetune_query_encoder(minilm, texts, [[0], [1], [2], [3]], candidates, lambda rows: docs[rows],
                                     config, dev=lambda enc: 0.0, progress=False)
    assert history[0] == {"step": 0, "dev": 0.0} and history[-1]["best_step"] == 0
    assert np.allclose(minilm.encode(texts, progress=False), before, atol=1e-5)  # dev never improved: kept
    finetune_query_encoder(minilm, texts, [[0], [1], [2], [3]], candidates, lambda rows: docs[rows], config,
                           progress=False)
    after = minilm.encode(texts, progress=False)
    assert not np.allclose(after, before, atol=1e-5)
    loaded = load_dense_encoder(save_dense_encoder(minilm, tmp_path / "enc"), device="cpu")
    assert np.allclose(loaded.encode(texts, progress=False), after, atol=1e-5) and loaded.max_length == 32


def test_a_dimension_reducing_opq_rotation_round_trips_through_faiss(docs: np.ndarray) -> None:
    """``OPQ4_8,PQ4x4`` (the README's small-corpus codes, in miniature): a [8, 16] rotation."""
    from retrieval.index.faiss_index import new_faiss_index, train_and_add

    index = train_and_add(new_faiss_index("OPQ4_8,PQ4x4", DIM, 5), docs, 1000, 0, progress=False)
    model = ContrastivePQ.from_faiss(index)
    assert tuple(model.rotation.shape) == (8, DIM) and model.dim == DIM and model.rotated_dim == 8
    exported = model.to_faiss()
    exported.add(docs)
    queries = docs[:5]
    assert np.array_equal(exported.search(queries, 10)[1], index.search(queries, 10)[1])
    best = model.adc_scores(queries, model.encode(docs)).max(1)
    assert np.allclose(best, index.search(queries, 1)[0][:, 0], atol=1e-4)
    trained = ContrastivePQ.train_opq(docs, m=4, nbits=4, rotated_dim=8, opq_iterations=5)
    assert trained.dim == DIM and trained.rotated_dim == 8 and trained.code_bytes == 2
    with pytest.raises(InputError, match="rotated_dim"):
        ContrastivePQ.train_opq(docs, m=4, nbits=4, rotated_dim=32)
