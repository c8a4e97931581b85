"""RoPE re-rotation: cached keys moved to a new position equal keys computed there."""

import pytest
import torch

from retrieval.rag.rope import rerotate_keys


def _hf_rope(keys: torch.Tensor, start: int, inv_freq: torch.Tensor) -> torch.Tensor:
    """Keys rotated the way the HF Llama rotary embedding does it (float32 angles, rotate_half)."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    pos = torch.arange(start, start + keys.shape[-2])
    freqs = pos[:, None].float() * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    _, k = apply_rotary_pos_emb(keys, keys, emb.cos()[None], emb.sin()[None])
    return k


@pytest.mark.parametrize(("p0", "p1"), [(0, 300), (700, 5), (40, 7000), (123, 123)])
def test_rerotation_matches_fresh_rotation(p0: int, p1: int) -> None:
    torch.manual_seed(0)
    inv_freq = 1.0 / (100000.0 ** (torch.arange(0, 64, 2).float() / 64))
    raw = torch.randn(1, 3, 40, 64) * 8  # pre-RoPE keys, magnitudes like the model's
    moved = rerotate_keys(_hf_rope(raw, p0, inv_freq), p0, p1, inv_freq)
    torch.testing.assert_close(moved, _hf_rope(raw, p1, inv_freq), rtol=0, atol=1e-5)


def test_values_do_not_move_and_dtype_is_kept() -> None:
    keys = torch.randn(2, 3, 5, 64, dtype=torch.float16)
    out = rerotate_keys(keys, 3, 9, torch.ones(32))
    assert out.dtype == torch.float16 and out.shape == keys.shape
    assert rerotate_keys(keys, 4, 4, torch.ones(32)) is keys


def test_model_keys_of_a_chunk_re_rotated_equal_fresh_keys(generator) -> None:
    ids = torch.tensor(generator.encode_chunk("Aspirin inhibits cyclooxygenase and reduces inflammation."))

    def keys_at(start: int) -> torch.Tensor:
        with torch.no_grad():
            cache = generator.model(ids[None], position_ids=torch.arange(start, start + len(ids))[None],
                                    use_cache=True).cache
        return torch.stack([cache.layers[i].keys[0] for i in range(generator.num_layers)])

    at5, at900 = keys_at(5), keys_at(900)
    moved = rerotate_keys(at5, 5, 900, generator.inv_freq)
    # layer 0: the only position dependence is the rotation itself -> fp32 round-off
    torch.testing.assert_close(moved[0], at900[0], rtol=0, atol=1e-5)
    # deeper layers also carry fp32 noise of the position-dependent forward (values show the same drift)
    assert (moved - at900).abs().max() < 5e-5 * max(1.0, float(at900.abs().max()) / 10)
