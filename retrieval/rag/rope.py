"""RoPE position fix for reused KV: re-rotate cached (post-RoPE) keys to their new positions.

Cache-Craft (SIGMOD 2025) and CacheBlend (EuroSys 2025) reuse a chunk's KV at a position other than
the one it was computed at. Llama applies rotary embeddings (Su et al., RoFormer) to the keys before
they enter the cache, with the ``rotate_half`` convention: ``k' = k * cos(p w) + rotate_half(k) *
sin(p w)``. Rotations compose, so moving a key from position ``p0`` to ``p1`` is one more rotation by
``(p1 - p0) w``; values carry no position and are copied unchanged.

To match a key computed fresh at ``p1`` to fp32 round-off, the angles are the ones the model itself
uses — ``float32(p * w)`` for the old and the new position — and their difference, cos, sin and the
rotation are evaluated in float64 before casting back.
"""

from __future__ import annotations

import torch


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """Llama's ``rotate_half``: ``[x1, x2] -> [-x2, x1]`` over the last dimension."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _angles(positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """The model's float32 RoPE angles per position and frequency, as float64."""
    return (positions.float()[:, None] * inv_freq.float()[None, :]).double()


def rerotate_keys(keys: torch.Tensor, old_start: int, new_start: int, inv_freq: torch.Tensor) -> torch.Tensor:
    """Keys ``[..., n, head_dim]`` computed at positions ``old_start..`` moved to ``new_start..``."""
    if old_start == new_start:
        return keys
    n = keys.shape[-2]
    old = torch.arange(old_start, old_start + n, device=keys.device)
    new = torch.arange(new_start, new_start + n, device=keys.device)
    delta = _angles(new, inv_freq.to(keys.device)) - _angles(old, inv_freq.to(keys.device))
    emb = torch.cat((delta, delta), dim=-1)
    k64 = keys.double()
    return (k64 * emb.cos() + rotate_half(k64) * emb.sin()).to(keys.dtype)
