"""The sparse encoder's lexical prior: BM25-saturated WordPiece term frequencies (hand-computed)."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from retrieval.encoders import (
    IdfQueryEncoder,
    SparseDocEncoder,
    SparseEncoderConfig,
    SparseModel,
    load_backbone,
    load_tokenizer,
)
from retrieval.encoders.lexical_prior import fit_avgdl, saturated_tf
from retrieval.training.active_head import train_weights

DOCS = ["Insulin resistance in type 2 diabetes: insulin signalling fails.",
        "Vitamin D deficiency and the risk of fractures in the elderly."]


def test_saturated_tf_hand_computed() -> None:
    keep = torch.tensor([0.0, 1.0, 1.0, 1.0, 1.0])        # id 0 is special
    ids = torch.tensor([[1, 1, 2, 0], [3, 0, 0, 0]])       # doc 0: tf(1)=2, tf(2)=1, one special
    mask = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0]])
    got = saturated_tf(ids, mask, keep, k1=0.9, b=0.4, avgdl=2.0)
    norm0, norm1 = 0.9 * (1 - 0.4 + 0.4 * 3 / 2.0), 0.9 * (1 - 0.4 + 0.4 * 1 / 2.0)
    want = torch.zeros(2, 5)
    want[0, 1] = 2 * 1.9 / (2 + norm0)
    want[0, 2] = 1 * 1.9 / (1 + norm0)
    want[1, 3] = 1 * 1.9 / (1 + norm1)
    assert torch.allclose(got, want, atol=1e-6)
    with pytest.raises(ValueError, match="avgdl"):
        saturated_tf(ids, mask, keep, 0.9, 0.4, avgdl=0.0)


def test_fit_avgdl_skips_special_ids() -> None:
    assert fit_avgdl([[101, 5, 6, 102], [101, 7, 102]], special_ids=[101, 102]) == 1.5
    with pytest.raises(ValueError):
        fit_avgdl([], [0])


@pytest.fixture(scope="module")
def prior_encoder() -> SparseDocEncoder:
    cfg = SparseEncoderConfig(max_length=64, freeze_layers=4, lexical_prior=True)
    enc = SparseDocEncoder(copy.deepcopy(load_backbone()), load_tokenizer(), cfg, device="cpu")
    enc.fit_lexical_prior(DOCS)
    return enc


def test_scores_equal_wordpiece_bm25_when_the_learned_part_is_off(prior_encoder) -> None:
    enc = prior_encoder
    query = IdfQueryEncoder.from_minilm().fit_idf(DOCS)
    with torch.no_grad():
        saved = enc.bias.clone()
        enc.bias.fill_(-1e4)                                  # the head contributes nothing
        try:
            docs = enc.encode(DOCS, progress=False).toarray()
        finally:
            enc.bias.copy_(saved)
    tok = enc.tokenizer
    rows = [[t for t in tok(d)["input_ids"] if t not in tok.all_special_ids] for d in DOCS]
    avgdl = np.mean([len(r) for r in rows])
    assert enc.config.lexical_avgdl == pytest.approx(avgdl)
    ids, _ = query.encode("insulin signalling in diabetes")
    table = query.table()
    for i, row in enumerate(rows):
        bm25 = 0.0
        for t in ids:
            tf = row.count(int(t))
            bm25 += table[t] * tf * 1.9 / (tf + 0.9 * (1 - 0.4 + 0.4 * len(row) / avgdl)) if tf else 0.0
        assert float(docs[i, ids] @ table[ids]) == pytest.approx(bm25, rel=1e-5)
    assert docs[0, ids] @ table[ids] > docs[1, ids] @ table[ids]  # the diabetes document wins


def test_prior_paths_agree_and_padding_never_changes_a_vector(prior_encoder) -> None:
    enc = prior_encoder
    alone = enc.encode(DOCS[:1], progress=False).toarray()[0]
    batched = enc.encode([*DOCS, "x"], batch_size=3, progress=False).toarray()[0]
    assert np.abs(alone - batched).max() < 1e-5 and (alone >= 0).all()
    ids, mask = enc.tokenize(DOCS)
    prior = enc.lexical_prior(DOCS)
    encoded = torch.from_numpy(enc.encode(DOCS, progress=False).toarray())
    with torch.no_grad():
        low = enc.lower(ids, mask)
        assert torch.allclose(enc.with_prior(enc.upper(low, mask), prior), encoded, atol=1e-5)
        assert torch.allclose(enc.with_prior(train_weights(enc, low, mask), prior), encoded, atol=1e-4)
        with pytest.raises(ValueError, match="prior"):
            enc.with_prior(enc.upper(low, mask), None)
    matrix = enc.lexical_prior_matrix(DOCS, batch_size=1)
    assert np.abs(matrix.toarray() - prior.numpy()).max() < 1e-6
    enc.train()
    enc.with_prior(train_weights(enc, low, mask), prior).sum().backward()
    enc.eval()
    assert enc.lexical_scale.grad is not None and float(enc.lexical_scale.grad) > 0


def test_prior_round_trips_through_the_artifact(prior_encoder, tmp_path: Path) -> None:
    query = IdfQueryEncoder.from_minilm().fit_idf(DOCS)
    with torch.no_grad():
        prior_encoder.lexical_scale.fill_(0.7)
    path = SparseModel(prior_encoder, query).save(tmp_path / "model")
    loaded = SparseModel.load(path, device="cpu")
    assert loaded.doc.config == prior_encoder.config
    assert float(loaded.doc.lexical_scale.detach()) == pytest.approx(0.7)
    before = prior_encoder.encode(DOCS, progress=False)
    after = loaded.doc.encode(DOCS, progress=False)
    assert abs(before - after).max() < 1e-6
    assert math.isclose(loaded.doc.config.lexical_avgdl, prior_encoder.config.lexical_avgdl)


def test_fit_without_a_prior_is_a_clear_error() -> None:
    enc = SparseDocEncoder(copy.deepcopy(load_backbone()), load_tokenizer(),
                           SparseEncoderConfig(max_length=16), device="cpu")
    assert enc.lexical_scale is None
    with pytest.raises(ValueError, match="no lexical prior"):
        enc.fit_lexical_prior(DOCS)


def test_residual_scale_weighs_the_learned_terms_beside_the_prior(prior_encoder) -> None:
    enc = prior_encoder
    prior = enc.lexical_prior(DOCS)
    with torch.no_grad():
        learned = enc(*enc.tokenize(DOCS))
        full = enc.encode(DOCS, progress=False).toarray()
        enc.config.residual_scale = 0.25
        try:
            scaled = enc.encode(DOCS, progress=False).toarray()
        finally:
            enc.config.residual_scale = 1.0
    base = (torch.relu(enc.lexical_scale) * prior).detach().numpy()
    assert np.abs((scaled - base) - 0.25 * (full - base)).max() < 1e-5
    assert (learned > 0).any()  # the residual is not empty, so the scale is exercised
