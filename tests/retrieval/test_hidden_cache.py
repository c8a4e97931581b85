"""The frozen-layer cache of sparse training (``retrieval/training/hidden_cache.py``): reused when intact,
recomputed with a warning when its file is damaged."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from retrieval.training.hidden_cache import build_hidden_cache


class _Tokenizer:
    pad_token_id = 0

    def __call__(self, texts: list[str], truncation: bool, max_length: int) -> dict:
        return {"input_ids": [[1 + len(w) for w in t.split()][:max_length] for t in texts]}


class _Encoder:
    """The few attributes the cache uses: a whitespace tokenizer and a 'lower stack' that embeds ids."""

    def __init__(self) -> None:
        self.config = SimpleNamespace(max_length=8, freeze_layers=2)
        self.backbone = SimpleNamespace(config=SimpleNamespace(hidden_size=3))
        self.tokenizer = _Tokenizer()
        self.device = torch.device("cpu")
        self.calls = 0

    def lower(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return ids[..., None].float().expand(-1, -1, 3) * mask[..., None]


@pytest.fixture
def encoder() -> _Encoder:
    return _Encoder()


def test_a_damaged_cache_file_is_recomputed(encoder: _Encoder, tmp_path: Path) -> None:
    texts = ["a bb ccc", "dddd"]
    first = build_hidden_cache(texts, encoder, tmp_path, progress=False)
    assert build_hidden_cache(texts, encoder, tmp_path, progress=False).hidden.shape == first.hidden.shape
    assert encoder.calls == 1  # the second call read the cache
    (cache,) = [p for p in tmp_path.glob("hidden-*.npy") if not p.name.endswith(".len.npy")]
    cache.write_bytes(cache.read_bytes()[:100])  # truncated behind our back
    with pytest.warns(UserWarning, match="unreadable hidden-state cache"):
        again = build_hidden_cache(texts, encoder, tmp_path, progress=False)
    assert encoder.calls == 2
    np.testing.assert_array_equal(again.hidden, first.hidden)
    np.testing.assert_array_equal(np.load(cache), first.hidden)  # and the file is whole again


def test_an_edit_anywhere_in_the_corpus_gets_a_new_cache(encoder: _Encoder, tmp_path: Path) -> None:
    texts = [f"doc {i} " + "w" * (i % 7 + 1) for i in range(200)]
    build_hidden_cache(texts, encoder, tmp_path, progress=False)
    calls = encoder.calls
    edited = [*texts[:100], "an edited middle document", *texts[101:]]
    again = build_hidden_cache(edited, encoder, tmp_path, progress=False)
    assert encoder.calls > calls  # computed, not read from the first corpus's cache
    assert len(list(tmp_path.glob("hidden-*.len.npy"))) == 2
    np.testing.assert_array_equal(again.lengths[100], 4)  # the edited text's own tokens, not the old ones
