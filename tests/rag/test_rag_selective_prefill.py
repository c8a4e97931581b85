"""Selective prefill exactness against the plain HF forward of SmolLM2."""

import pytest
import torch
from conftest import CHUNKS, QUESTION

from retrieval.rag.kv_state import PromptKV
from retrieval.rag.rope import rerotate_keys
from retrieval.rag.selective_prefill import selective_prefill


@pytest.fixture(scope="module")
def prompt(generator):
    layout = generator.layout(QUESTION, CHUNKS)
    ids = torch.tensor(layout.ids)
    with torch.no_grad():
        out = generator.model(ids[None], use_cache=True)
    layers = range(generator.num_layers)
    hf_kv = PromptKV(torch.stack([out.cache.layers[i].keys[0] for i in layers]),
                     torch.stack([out.cache.layers[i].values[0] for i in layers]))
    return layout, ids, out.logits[0, -1], hf_kv


def _empty(generator, tokens: int) -> PromptKV:
    cfg = generator.config
    return PromptKV.empty(generator.num_layers, cfg.num_key_value_heads, tokens, cfg.head_dim, torch.float32,
                          "cpu")


def test_full_selection_equals_hf_forward(generator, prompt) -> None:
    _, ids, logits, hf_kv = prompt
    kv = _empty(generator, len(ids))
    result = selective_prefill(generator.model, ids, kv, torch.arange(len(ids)))
    torch.testing.assert_close(result.logits, logits, rtol=0, atol=1e-4)
    torch.testing.assert_close(kv.keys, hf_kv.keys, rtol=0, atol=1e-4)
    torch.testing.assert_close(kv.values, hf_kv.values, rtol=0, atol=1e-4)
    assert result.computed.all() and result.token_layers == len(ids) * generator.num_layers


def test_zero_recompute_over_exact_cache_equals_hf_forward(generator, prompt) -> None:
    _, ids, logits, hf_kv = prompt
    kv = PromptKV(hf_kv.keys.clone(), hf_kv.values.clone())
    result = selective_prefill(generator.model, ids, kv, torch.tensor([len(ids) - 1]))
    torch.testing.assert_close(result.logits, logits, rtol=0, atol=1e-4)
    assert int(result.logits.argmax()) == int(logits.argmax())
    assert result.token_layers == generator.num_layers


def test_chunk_moved_and_recomputed_equals_full(generator, prompt) -> None:
    """A chunk cached at another position, RoPE-fixed, with its tokens recomputed, equals full recompute."""
    layout, ids, logits, hf_kv = prompt
    start = layout.starts[2]
    end = start + len(layout.chunks[1])
    kv = PromptKV(hf_kv.keys.clone(), hf_kv.values.clone())
    moved = rerotate_keys(hf_kv.keys[:, :, start:end], start, start + 50, generator.inv_freq)
    kv.keys[:, :, start:end] = moved  # as if cached 50 positions later, then moved back
    selected = torch.arange(start, len(ids))  # the moved chunk and everything after it
    result = selective_prefill(generator.model, ids, kv, selected)
    torch.testing.assert_close(result.logits, logits, rtol=0, atol=1e-4)


def test_refine_shrinks_the_selection_and_records_segment_mass(generator, prompt) -> None:
    _, ids, _, hf_kv = prompt
    kv = PromptKV(hf_kv.keys.clone(), hf_kv.values.clone())
    segment_of = torch.zeros(len(ids), dtype=torch.long)
    segment_of[len(ids) // 2:] = 1

    def refine(layer, idx, k, v, k_old, v_old):
        assert k.shape == k_old.shape
        return idx >= len(ids) - 3 if layer == 2 else None

    result = selective_prefill(generator.model, ids, kv, torch.arange(len(ids)), segment_of, refine)
    expected = 2 * len(ids) + 3 * (generator.num_layers - 2)
    assert result.token_layers == expected
    assert result.computed.sum() == 3
    torch.testing.assert_close(result.segment_mass[result.computed].sum(1), torch.ones(3), rtol=0, atol=1e-4)


def test_last_token_must_be_computed(generator, prompt) -> None:
    _, ids, _, hf_kv = prompt
    with pytest.raises(ValueError, match="last prompt token"):
        selective_prefill(generator.model, ids, PromptKV(hf_kv.keys.clone(), hf_kv.values.clone()),
                          torch.tensor([0]))
