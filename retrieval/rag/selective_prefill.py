"""Selective prefill: compute the KV of a chosen subset of prompt tokens over an assembled KV cache.

The one prefill every policy uses (CacheBlend, EuroSys 2025, section 4 "selective KV recompute";
Cache-Craft, SIGMOD 2025, section 4). The prompt's KV arrives assembled: cached chunks already
RoPE-fixed in place, positions still to compute holding anything. The selected tokens run through
the model layer by layer with the HF model's own submodules: at layer ``l`` their hidden states give
q/k/v (RMSNorm, projections, rotary embedding at their prompt positions), their k/v overwrite the
layer-``l`` cache, their queries attend over the *whole* layer-``l`` cache with a causal mask (a token
sees every position up to its own, cached or fresh), then ``o_proj`` and the MLP. Tokens not selected
keep their cached KV. Consequences:

- every token selected = a full forward (equals the HF forward to fp32 round-off);
- missed chunks and the question suffix are "all their tokens selected";
- nothing selected but the last token over an exact cache = the HF forward's last-token logits.

A ``refine`` callback may shrink the selection at any layer after seeing the fresh and the cached
k/v of the current selection — CacheBlend's KV-deviation check layer. Optionally the attention mass
of every computed token to every prompt segment is recorded (head- and layer-averaged), which is what
Cache-Craft's chunk statistics are made of.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from retrieval.rag.kv_state import PromptKV

# (layer, selected positions, fresh k, fresh v, cached k, cached v) -> bool mask of positions to keep
Refine = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
                  torch.Tensor | None]


@dataclass
class PrefillResult:
    """What a selective prefill produced besides the filled KV."""

    logits: torch.Tensor          # [vocab] next-token logits after the last prompt token
    computed: torch.Tensor        # [tokens] bool: KV computed in every layer
    token_layers: int             # sum over layers of tokens run through that layer
    segment_mass: torch.Tensor | None  # [tokens, segments] mean attention mass (rows of computed tokens)


@dataclass
class _State:
    idx: torch.Tensor     # prompt positions still being computed
    hidden: torch.Tensor  # [1, len(idx), hidden]


def _attend(attn: nn.Module, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
            idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal attention of queries at positions ``idx`` over the full cache; returns (output, weights)."""
    groups = attn.num_key_value_groups
    k = keys.repeat_interleave(groups, dim=0)
    v = values.repeat_interleave(groups, dim=0)
    scores = torch.matmul(q[0], k.transpose(1, 2)) * attn.scaling
    future = torch.arange(keys.shape[1], device=keys.device)[None, :] > idx[:, None]
    scores = scores.masked_fill(future[None], torch.finfo(scores.dtype).min)
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    out = torch.matmul(weights, v).transpose(0, 1).reshape(1, len(idx), -1)
    return out, weights


def _qkv(layer: nn.Module, hidden: torch.Tensor, cos_sin: tuple[torch.Tensor, torch.Tensor]):
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    attn = layer.self_attn
    x = layer.input_layernorm(hidden)
    shape = (1, hidden.shape[1], -1, attn.head_dim)
    q = attn.q_proj(x).view(shape).transpose(1, 2)
    k = attn.k_proj(x).view(shape).transpose(1, 2)
    v = attn.v_proj(x).view(shape).transpose(1, 2)
    q, k = apply_rotary_pos_emb(q, k, *cos_sin)
    return q, k[0], v[0]


def _cached(kv: PromptKV, layer: int, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return kv.keys[layer][:, idx].clone(), kv.values[layer][:, idx].clone()


def _keep(state: _State, keep: torch.Tensor, q: torch.Tensor, cos_sin: tuple[torch.Tensor, torch.Tensor]):
    """Drop the positions ``~keep`` from the running selection (their KV of this layer stays fresh)."""
    state.idx, state.hidden = state.idx[keep], state.hidden[:, keep]
    return q[:, :, keep], (cos_sin[0][:, keep], cos_sin[1][:, keep])


@torch.no_grad()
def selective_prefill(model: nn.Module, ids: torch.Tensor, kv: PromptKV, selected: torch.Tensor,
                      segment_of: torch.Tensor | None = None, refine: Refine | None = None) -> PrefillResult:
    """Compute the KV of positions ``selected`` (sorted, must include the last one) into ``kv``, in place.

    ``ids``: ``[tokens]`` prompt token ids; positions are ``0..tokens-1``. ``segment_of``: ``[tokens]``
    segment index of every position, to record attention mass per segment. See the module docstring.
    """
    base, device = model.model, kv.keys.device
    tokens = ids.shape[0]
    state = _State(selected.to(device), base.embed_tokens(ids.to(device)[selected][None]))
    mass = torch.zeros(tokens, int(segment_of.max()) + 1, device=device) if segment_of is not None else None
    onehot = nn.functional.one_hot(segment_of.to(device)).float() if segment_of is not None else None
    layers_seen = torch.zeros(tokens, device=device)
    token_layers = 0
    cos_sin = base.rotary_emb(state.hidden, state.idx[None])
    for layer_idx, layer in enumerate(base.layers[: model.config.num_hidden_layers]):
        q, k, v = _qkv(layer, state.hidden, cos_sin)
        cached = _cached(kv, layer_idx, state.idx) if refine is not None else None
        kv.keys[layer_idx][:, state.idx], kv.values[layer_idx][:, state.idx] = k, v
        keep = refine(layer_idx, state.idx, k, v, *cached) if cached is not None else None
        if keep is not None:
            q, cos_sin = _keep(state, keep, q, cos_sin)
        out, weights = _attend(layer.self_attn, q, kv.keys[layer_idx], kv.values[layer_idx], state.idx)
        if mass is not None:
            mass[state.idx] += weights.mean(0) @ onehot
        layers_seen[state.idx] += 1
        token_layers += len(state.idx)
        hidden = state.hidden + layer.self_attn.o_proj(out)
        state.hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
    if state.idx.numel() == 0 or int(state.idx[-1]) != tokens - 1:
        raise ValueError("selective prefill must compute the last prompt token")
    logits = model.lm_head(base.norm(state.hidden[:, -1:]))[0, -1]
    computed = torch.zeros(tokens, dtype=torch.bool, device=device)
    computed[state.idx] = True
    if mass is not None:
        mass = mass / layers_seen.clamp(min=1)[:, None]
    return PrefillResult(logits, computed, token_layers, mass)
