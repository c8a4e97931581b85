"""Exact, cheap training forward of the max-pooled vocabulary head ("active-entry" gradient).

The sparse document encoder's weight for vocabulary entry ``v`` is
``w_v = log(1 + relu(max_t <h_t, E_v> + b_v))`` over the document's tokens ``t``. Its gradient is
zero wherever ``max_t <h_t, E_v> + b_v <= 0`` and, elsewhere, flows only through the arg-max token.
So the full ``[B, V, L]`` logits are needed only *without* gradient (to find each entry's max and
arg-max, in token chunks); the differentiable part is recomputed for the few hundred active entries
per document as ``<h_{argmax}, E_v> + b_v``. Values and gradients equal the dense computation's (up
to ties in the max), while the backward pass skips two ``[B, V, L]`` matmuls. Our own design for
CPU training; see ``retrieval/encoders/sparse_doc.py`` for the model.
"""

from __future__ import annotations

import torch

from retrieval.encoders.sparse_doc import SparseDocEncoder


@torch.no_grad()
def _max_argmax(embed: torch.Tensor, hidden: torch.Tensor, mask: torch.Tensor, chunk_tokens: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    valid = mask.bool()
    step = max(1, chunk_tokens // max(1, hidden.shape[0]))
    best = arg = None
    for start in range(0, hidden.shape[1], step):
        logits = torch.matmul(embed, hidden[:, start:start + step].transpose(1, 2))  # [B, V, c]
        part = valid[:, start:start + step]
        if not bool(part.all()):
            logits.masked_fill_(~part[:, None, :], float("-inf"))
        values, index = logits.max(dim=-1)
        index += start
        if best is None:
            best, arg = values, index
        else:
            better = values > best
            best = torch.where(better, values, best)
            arg = torch.where(better, index, arg)
    return best, arg


def train_weights(encoder: SparseDocEncoder, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Differentiable term weights [B, V] from frozen-layer ``hidden`` states [B, L, H]."""
    layers = encoder.backbone.encoder.layer[encoder.config.freeze_layers:]
    top = encoder.transform(encoder._run_layers(hidden, mask, layers))
    embed = encoder.head_matrix
    best, arg = _max_argmax(embed, top.detach(), mask, encoder.config.logit_chunk_tokens)
    active = (best + encoder.bias.detach()) > 0
    active &= encoder.keep.bool()[None, :]
    rows, vocab = active.nonzero(as_tuple=True)
    tokens = arg[rows, vocab]
    logits = (top[rows, tokens] * embed[vocab]).sum(-1) + encoder.bias[vocab]
    weights = torch.zeros(hidden.shape[0], embed.shape[0], dtype=logits.dtype, device=logits.device)
    return weights.index_put((rows, vocab), torch.log1p(torch.relu(logits)))
