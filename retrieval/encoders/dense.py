"""Dense sentence encoder: all-MiniLM-L6-v2 with mean pooling and L2 normalisation.

Reproduces the sentence-transformers recipe of ``all-MiniLM-L6-v2`` (Reimers & Gurevych,
"Sentence-BERT", EMNLP 2019; modules ``Transformer -> Pooling(mean) -> Normalize``, max 256 tokens)
on the offline backbone of :mod:`retrieval.encoders.backbone`, without importing
sentence-transformers. It is the dense teacher of the heterogeneous ensemble distillation in Geng et
al. 2024 (with BM25 as the sparse teacher), and the dense side of hybrid retrieval. Embeddings are
384-d float32 unit vectors, so the inner product is the cosine similarity.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from retrieval.encoders.backbone import build_backbone, check_max_length, load_backbone, load_tokenizer
from sparsekit.artifacts import open_artifact, write_artifact
from sparsekit.device import default_device
from sparsekit.errors import ArtifactError

if TYPE_CHECKING:
    from transformers import BertModel, PreTrainedTokenizerBase

FORMAT = "dense-query-encoder"  # a saved (fine-tuned) encoder: backbone.json, model.safetensors, tokenizer/
VERSION = 1


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the unmasked token states: [B, L, H] -> [B, H]."""
    mask = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)


class DenseEncoder(nn.Module):
    """MiniLM -> mean pooling -> L2 normalise (the all-MiniLM-L6-v2 sentence embedding)."""

    def __init__(self, backbone: BertModel, tokenizer: PreTrainedTokenizerBase, max_length: int = 256,
                 device: str | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.tokenizer = tokenizer
        check_max_length(max_length, backbone.config.max_position_embeddings)
        self.max_length = max_length
        self.to(device or default_device()).eval()

    @classmethod
    def from_minilm(cls, max_length: int = 256, device: str | None = None) -> DenseEncoder:
        """The pretrained all-MiniLM-L6-v2 sentence encoder (offline)."""
        return cls(load_backbone(), load_tokenizer(), max_length, device)

    @property
    def dim(self) -> int:
        return self.backbone.config.hidden_size

    @property
    def device(self) -> torch.device:
        return self.backbone.embeddings.word_embeddings.weight.device

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Unit-norm sentence embeddings [B, H]."""
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return nn.functional.normalize(mean_pool(hidden, attention_mask), p=2, dim=-1)

    @torch.no_grad()
    def encode(self, texts: Sequence[str], batch_size: int = 64, progress: bool = True) -> np.ndarray:
        """Embed ``texts``: float32 [n, H], unit rows, in input order (batched by length)."""
        texts = list(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        order = np.argsort([-len(t) for t in texts], kind="stable")
        was_training = self.training
        self.eval()
        try:
            for start in tqdm(range(0, len(texts), batch_size), desc="dense encode", unit="batch",
                              disable=not progress):
                index = order[start:start + batch_size]
                batch = self.tokenizer([texts[i] for i in index], padding=True, truncation=True,
                                       max_length=self.max_length, return_tensors="pt")
                emb = self(batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device))
                out[index] = emb.float().cpu().numpy()
        finally:
            self.train(was_training)
        return out


# ---------------------------------------------------------------- saved as an artifact


def save_dense_encoder(encoder: DenseEncoder, path: str | Path, params: dict[str, Any] | None = None,
                       overwrite: bool = False) -> Path:
    """Write ``encoder`` as a ``dense-query-encoder`` artifact (atomic)."""
    from safetensors.torch import save_file

    meta = {"max_length": encoder.max_length, **(params or {})}
    with write_artifact(path, FORMAT, VERSION, params=meta, overwrite=overwrite) as out:
        encoder.backbone.config.to_json_file(str(out.path("backbone.json")))
        state = {k: v.detach().cpu().contiguous() for k, v in encoder.backbone.state_dict().items()}
        save_file(state, str(out.path("model.safetensors")))
        encoder.tokenizer.save_pretrained(str(out.path("tokenizer")))
        out.counts["dim"] = encoder.dim
    return Path(path)


def load_dense_encoder(path: str | Path, device: str | None = None, verify: bool = True) -> DenseEncoder:
    """Open and verify a ``dense-query-encoder`` artifact."""
    from safetensors.torch import load_file

    path = Path(path)
    manifest = open_artifact(path, FORMAT, VERSION, verify=verify)
    backbone = build_backbone(path / "backbone.json")
    try:
        backbone.load_state_dict(load_file(str(path / "model.safetensors")))
    except RuntimeError as exc:
        raise ArtifactError(path / "model.safetensors", f"weights do not fit backbone.json: {exc}") from exc
    max_length = int(manifest.params["max_length"])
    return DenseEncoder(backbone, load_tokenizer(path / "tokenizer"), max_length, device)

