"""Cached hidden states of the frozen lower layers of the sparse document encoder.

CPU training of a MiniLM-based sparse encoder is dominated by the transformer and the vocabulary head
(../shared/docs/METHODS.md: ~55 s per 64-document step when everything trains). With the embeddings and
the lower ``freeze_layers`` layers frozen, their output for each corpus document never changes, so it is
computed once, stored as float32 ``[N, max_length, H]`` (exactly what inference computes) plus the
lengths in memory-mappable ``.npy`` files, and training runs only the upper layers and the head.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from retrieval.encoders.sparse_doc import SparseDocEncoder
from sparsekit.atomic import atomic_path


@dataclass
class HiddenCache:
    """Lower-layer outputs of every document: ``hidden[i, :lengths[i]]`` is document ``i``."""

    hidden: np.ndarray   # float32 [N, L, H] (memmap when loaded from disk)
    lengths: np.ndarray  # int32 [N]

    def batch(self, rows: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden states and attention mask of ``rows``, trimmed to their longest document."""
        length = int(self.lengths[rows].max())
        hidden = torch.from_numpy(np.ascontiguousarray(self.hidden[rows, :length]))
        mask = (torch.arange(length)[None, :] < torch.from_numpy(self.lengths[rows])[:, None]).long()
        return hidden.to(device), mask.to(device)


def _key(texts: list[str], encoder: SparseDocEncoder) -> str:
    """The settings and every text (an edit anywhere in the corpus gets a new cache)."""
    cfg = encoder.config
    digest = hashlib.sha256(json.dumps([cfg.max_length, cfg.freeze_layers, len(texts), "f32"]).encode())
    for text in texts:
        digest.update(json.dumps(text).encode())
    return digest.hexdigest()[:16]


@torch.no_grad()
def build_hidden_cache(texts: list[str], encoder: SparseDocEncoder, work_dir: Path | None,
                       batch_size: int = 32, progress: bool = True) -> HiddenCache:
    """Compute (or load from ``work_dir``) the lower-layer hidden states of ``texts``."""
    key = _key(texts, encoder)
    path = work_dir / f"hidden-{key}.npy" if work_dir else None
    if path is not None and path.exists() and path.with_suffix(".len.npy").exists():
        try:
            return HiddenCache(np.load(path, mmap_mode="r"), np.load(path.with_suffix(".len.npy")))
        except (OSError, ValueError, EOFError) as exc:  # truncated or damaged outside our atomic writes
            warnings.warn(f"{path}: unreadable hidden-state cache ({exc}); recomputing it", stacklevel=2)
    rows = encoder.tokenizer(texts, truncation=True, max_length=encoder.config.max_length)["input_ids"]
    lengths = np.array([len(r) for r in rows], dtype=np.int32)
    hidden = np.zeros((len(rows), int(lengths.max()), encoder.backbone.config.hidden_size), np.float32)
    for start in tqdm(range(0, len(rows), batch_size), desc="caching frozen layers", disable=not progress):
        chunk = rows[start:start + batch_size]
        ids, mask = _pad(chunk, encoder.tokenizer.pad_token_id)
        out = encoder.lower(ids.to(encoder.device), mask.to(encoder.device))
        for j, row in enumerate(chunk):
            hidden[start + j, : len(row)] = out[j, : len(row)].cpu().numpy()
    if path is not None:
        work_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(path.with_suffix(".len.npy")) as tmp, open(tmp, "wb") as fh:
            np.save(fh, lengths)
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:  # a handle: np.save would append .npy
            np.save(fh, hidden)
    return HiddenCache(hidden, lengths)


def _pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return ids, mask
