"""Learned sparse document encoder (SPLADE-style, tied vocabulary head) and its saved bundle.

Implements the document side of Geng et al., "Towards Competitive Search Relevance For
Inference-Free Learned Sparse Retrievers" (2024; OpenSearch ``doc-v2``/``doc-v3``), after SPLADE
(Formal et al., SIGIR 2021): a transformer reads the document, a vocabulary head gives per-token
logits over the 30,522 WordPiece ids, and the document vector is

    w_d(t) = max_{i in tokens, mask_i = 1} log(1 + relu(logit_{i,t}))      (special ids set to 0)

Backbone and head (decisions documented here; see ../shared/docs/METHODS.md):

* Backbone: all-MiniLM-L6-v2 (:mod:`retrieval.encoders.backbone`), which ships no MLM head.
* Head: ``logits = transform(h) @ E^T + bias`` with ``E`` the input word embeddings (tied, not
  copied). ``transform`` defaults to the **identity**: measured on SciFact, the raw MiniLM hidden
  states dotted with ``E`` already rank the document's own and related terms first ("white matter,
  newborn, diffusion" -> white, fiber, newborn, infants, diffusion, ...), while a freshly initialised
  BERT MLM transform (``head="mlm"``: dense + GELU + LayerNorm) scrambles that until trained.
* Bias: a trainable [V] vector initialised to the constant ``bias_init = -3.0``. With bias 0 the
  untrained head is dense (30,517 of 30,522 ids positive). Measured on the first 64 SciFact
  documents (title + text, max_length 256, 235 tokens on average), mean non-zeros per document:
  bias 0 -> 30,517, -2 -> 2,883, -2.5 -> 731, **-3 -> 211**, -3.5 -> 83. -3 gives a SPLADE-like
  starting sparsity (a few hundred terms) while leaving each document's strongest terms active, so
  the ranking loss has gradients from the first step; FLOPS with warm-up takes it from there.
* Pooling: because ``log1p(relu(.))`` is monotone, max-pooling the masked logits and then applying
  the activation is identical (values and gradients) to activating every token first; the
  activation (and the bias, constant over tokens) then runs on [B, V] instead of [B, L, V].
  Padding positions are filled with ``-inf`` before the max, so they never affect a vector.
  [CLS]/[SEP] positions take part in the max (as in SPLADE); the special *ids* are zeroed.
* Lexical prior (``lexical_prior=True``): :mod:`retrieval.encoders.lexical_prior` adds BM25's
  saturated term frequencies of the document's own WordPiece tokens (read up to
  ``lexical_max_length`` tokens), scaled by a trained scalar, so the transformer learns the residual
  over a WordPiece BM25 match (CLEAR-style). :meth:`SparseDocEncoder.encode` adds it; the training
  and dev paths add the same rows from :meth:`SparseDocEncoder.lexical_prior_matrix`. The learned
  weights enter with ``residual_scale`` (1 in stage 1); the query-table stage
  (:mod:`retrieval.training.query_table`) learns that weight together with the query table.
* Cost: the [B, L, V] logits dominate (384 x 30,522 MACs per token). They are computed in chunks
  of ``logit_chunk_tokens`` tokens with a running max, so memory stays bounded in training too
  (``max(dim)`` keeps only indices for backward). ``freeze_layers = N`` freezes the embeddings and
  the lower N layers; :meth:`SparseDocEncoder.lower` then gives hidden states that can be cached and
  fed to :meth:`SparseDocEncoder.upper`. Freezing the embeddings also freezes ``E`` in the tied
  head; the head then learns through its bias (and transform) and the upper layers.
  ``tie_head=False`` gives the head its own trainable copy of ``E`` (initialised equal, so the
  untrained model is unchanged) while the input embeddings stay frozen: every vocabulary entry can
  then learn how it responds to documents, at the cost of 30,522 x 384 more stored weights.

:class:`SparseModel` bundles the document encoder with its :class:`IdfQueryEncoder` and saves both
as one artifact directory, format ``sparse-doc-encoder`` version 1::

    manifest.json      format, params (encoder + query config), counts, checksums
    encoder.json       SparseEncoderConfig
    backbone.json      the BERT architecture (transformers BertConfig)
    model.safetensors  SparseDocEncoder.state_dict(): backbone + head (bias, transform)
    tokenizer/         the WordPiece tokenizer files
    idf.npy, query.json the query weight table and its config
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn
from tqdm import tqdm

from retrieval.encoders.backbone import (
    build_backbone,
    check_max_length,
    load_backbone,
    load_fast_tokenizer,
    load_tokenizer,
    special_token_ids,
)
from retrieval.encoders.idf_query import IdfQueryEncoder
from retrieval.encoders.lexical_prior import fit_avgdl, saturated_tf
from sparsekit.artifacts import open_artifact, write_artifact
from sparsekit.bounds import at_least, count, one_of, within
from sparsekit.device import default_device
from sparsekit.errors import ArtifactError

if TYPE_CHECKING:
    from transformers import BertModel, PreTrainedTokenizerBase

FORMAT = "sparse-doc-encoder"
VERSION = 1
_ENCODER_FILE = "encoder.json"
_BACKBONE_FILE = "backbone.json"
_WEIGHTS_FILE = "model.safetensors"
_TOKENIZER_DIR = "tokenizer"


@dataclass
class SparseEncoderConfig:
    """Document-encoder settings (stored in the artifact)."""

    max_length: int = 256
    head: Literal["identity", "mlm"] = "identity"
    tie_head: bool = True            # False: a trainable copy of E serves as the vocabulary head
    bias_init: float = -3.0
    freeze_layers: int = 0
    logit_chunk_tokens: int = 2048
    lexical_prior: bool = False      # add BM25-saturated term frequencies (retrieval.encoders.lexical_prior)
    lexical_k1: float = 0.9
    lexical_b: float = 0.4
    lexical_avgdl: float = 0.0       # fitted on the training corpus (SparseDocEncoder.fit_lexical_prior)
    lexical_max_length: int = 512    # tokens the prior counts (the transformer reads max_length)
    residual_scale: float = 1.0      # weight of the learned terms beside the prior (query-table stage)

    def __post_init__(self) -> None:
        count(self, 1, "max_length", "logit_chunk_tokens", "lexical_max_length")
        count(self, 0, "freeze_layers")
        at_least(self, 0, "lexical_k1", "lexical_avgdl")
        within(self, 0.0, 1.0, "lexical_b")
        one_of(self, "head", ("identity", "mlm"))


def _mlm_transform(hidden: int, eps: float) -> nn.Module:
    """BERT's MLM-head transform (dense + GELU + LayerNorm), freshly initialised (std 0.02)."""
    dense = nn.Linear(hidden, hidden)
    nn.init.normal_(dense.weight, std=0.02)
    nn.init.zeros_(dense.bias)
    return nn.Sequential(dense, nn.GELU(), nn.LayerNorm(hidden, eps=eps))


def _pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids, mask


def prune(weights: torch.Tensor, top_k: int | None = None, threshold: float = 0.0) -> torch.Tensor:
    """Keep each row's ``top_k`` largest entries (if given) and only entries ``> threshold``."""
    if top_k is not None and top_k < weights.shape[1]:
        values, index = weights.topk(top_k, dim=1)
        weights = torch.zeros_like(weights).scatter_(1, index, values)
    return weights * (weights > threshold)


def to_csr(weights: torch.Tensor) -> sp.csr_matrix:
    """A dense [B, V] tensor as a float32 scipy CSR matrix (zeros dropped, indices sorted)."""
    return sp.csr_matrix(weights.detach().float().cpu().numpy())


class SparseDocEncoder(nn.Module):
    """MiniLM + tied vocabulary head -> max-pooled ``log(1 + relu)`` term weights [B, V]."""

    def __init__(self, backbone: BertModel, tokenizer: PreTrainedTokenizerBase,
                 config: SparseEncoderConfig | None = None, device: str | None = None) -> None:
        super().__init__()
        self.config = config or SparseEncoderConfig()
        self.backbone = backbone
        self.tokenizer = tokenizer
        bert = backbone.config
        check_max_length(self.config.max_length, bert.max_position_embeddings)
        if self.config.head not in ("identity", "mlm"):
            raise ValueError(f"head must be 'identity' or 'mlm', got {self.config.head!r}")
        self.transform = (nn.Identity() if self.config.head == "identity"
                          else _mlm_transform(bert.hidden_size, bert.layer_norm_eps))
        self.bias = nn.Parameter(torch.full((bert.vocab_size,), float(self.config.bias_init)))
        self.head = (None if self.config.tie_head else
                     nn.Parameter(backbone.embeddings.word_embeddings.weight.detach().clone()))
        keep = torch.ones(bert.vocab_size)
        keep[special_token_ids(tokenizer)] = 0.0
        self.register_buffer("keep", keep, persistent=False)
        self.lexical_scale = nn.Parameter(torch.tensor(1.0)) if self.config.lexical_prior else None
        self._freeze(self.config.freeze_layers)
        self.to(device or default_device()).eval()  # inference by default; trainers call .train()

    @classmethod
    def from_minilm(cls, config: SparseEncoderConfig | None = None,
                    device: str | None = None) -> SparseDocEncoder:
        """A fresh (untrained head) encoder on the bundled all-MiniLM-L6-v2."""
        return cls(load_backbone(), load_tokenizer(), config, device)

    def _freeze(self, layers: int) -> None:
        if not 0 <= layers <= len(self.backbone.encoder.layer):
            raise ValueError(f"freeze_layers={layers} outside [0, {len(self.backbone.encoder.layer)}]")
        if layers == 0:
            return
        for module in [self.backbone.embeddings, *self.backbone.encoder.layer[:layers]]:
            module.requires_grad_(False)

    @property
    def head_matrix(self) -> torch.Tensor:
        """The [V, H] vocabulary head: the input word embeddings (tied) or the untied copy."""
        return self.backbone.embeddings.word_embeddings.weight if self.head is None else self.head

    @property
    def vocab_size(self) -> int:
        return self.bias.shape[0]

    @property
    def device(self) -> torch.device:
        return self.bias.device

    # ---- forward ---------------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded ``(input_ids, attention_mask)`` truncated to ``max_length``, on the device."""
        rows = self.tokenizer(list(texts), truncation=True, max_length=self.config.max_length)["input_ids"]
        ids, mask = _pad(rows, self.tokenizer.pad_token_id)
        return ids.to(self.device), mask.to(self.device)

    def _run_layers(self, hidden: torch.Tensor, attention_mask: torch.Tensor,
                    layers: Sequence[nn.Module]) -> torch.Tensor:
        from transformers.masking_utils import create_bidirectional_mask

        mask = create_bidirectional_mask(config=self.backbone.config, inputs_embeds=hidden,
                                         attention_mask=attention_mask)
        for layer in layers:
            hidden = layer(hidden, mask)
        return hidden

    def lower(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Embeddings + the lower ``freeze_layers`` layers: hidden states [B, L, H] (cacheable)."""
        hidden = self.backbone.embeddings(input_ids=input_ids)
        return self._run_layers(hidden, attention_mask,
                                self.backbone.encoder.layer[: self.config.freeze_layers])

    def upper(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The remaining layers, vocabulary head and pooling: learned term weights [B, V]."""
        hidden = self._run_layers(hidden, attention_mask,
                                  self.backbone.encoder.layer[self.config.freeze_layers:])
        return self.pool(hidden, attention_mask)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Learned term weights [B, V] (non-negative, special ids 0), differentiable.

        The lexical prior (if any) is added by :meth:`encode` / :meth:`with_prior`.
        """
        return self.upper(self.lower(input_ids, attention_mask), attention_mask)

    # ---- lexical prior ---------------------------------------------------------------------------
    def lexical_prior(self, texts: Sequence[str]) -> torch.Tensor:
        """BM25-saturated term frequencies [B, V] of ``texts`` (``lexical_max_length`` tokens each)."""
        if self.lexical_scale is None:
            raise ValueError("this encoder has no lexical prior (SparseEncoderConfig.lexical_prior=False)")
        cfg = self.config
        rows = self.tokenizer(list(texts), truncation=True, max_length=cfg.lexical_max_length)["input_ids"]
        ids, mask = _pad(rows, self.tokenizer.pad_token_id)
        return saturated_tf(ids.to(self.device), mask.to(self.device), self.keep, cfg.lexical_k1,
                            cfg.lexical_b, cfg.lexical_avgdl)

    def with_prior(self, weights: torch.Tensor, prior: torch.Tensor | None) -> torch.Tensor:
        """``residual_scale * weights + relu(s) * prior`` with a lexical prior; ``weights`` unchanged
        without one."""
        if self.lexical_scale is None:
            return weights
        if prior is None:
            raise ValueError("this encoder has a lexical prior: pass the documents' prior")
        return self.config.residual_scale * weights + torch.relu(self.lexical_scale) * prior

    @torch.no_grad()
    def lexical_prior_matrix(self, texts: Sequence[str], batch_size: int = 256) -> sp.csr_matrix:
        """:meth:`lexical_prior` of many texts as a float32 CSR matrix [n, V] (computed in batches)."""
        texts = list(texts)
        parts = [to_csr(self.lexical_prior(texts[i:i + batch_size]))
                 for i in range(0, len(texts), batch_size)]
        if not parts:
            return sp.csr_matrix((0, self.vocab_size), dtype=np.float32)
        return sp.vstack(parts, format="csr")

    def fit_lexical_prior(self, texts: Sequence[str]) -> None:
        """Set the lexical prior's ``avgdl`` from ``texts`` (tokenized as the prior reads them)."""
        if self.lexical_scale is None:
            raise ValueError("this encoder has no lexical prior (SparseEncoderConfig.lexical_prior=False)")
        rows = self.tokenizer(list(texts), truncation=True,
                              max_length=self.config.lexical_max_length)["input_ids"]
        self.config.lexical_avgdl = fit_avgdl(rows, special_token_ids(self.tokenizer))

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Masked max over tokens of the head's logits (in token chunks), then ``log(1 + relu)``."""
        hidden = self.transform(hidden)
        embed = self.head_matrix
        valid = attention_mask.bool()
        step = max(1, self.config.logit_chunk_tokens // max(1, hidden.shape[0]))
        pooled = None
        for start in range(0, hidden.shape[1], step):
            logits = torch.matmul(embed, hidden[:, start:start + step].transpose(1, 2))  # [B, V, c]
            part = valid[:, start:start + step]
            if not bool(part.all()):
                logits = logits.masked_fill(~part[:, None, :], float("-inf"))
            # amax is fastest; max(dim) keeps only indices for backward (bounded training memory)
            chunk = logits.max(dim=-1).values if torch.is_grad_enabled() else logits.amax(dim=-1)
            pooled = chunk if pooled is None else torch.maximum(pooled, chunk)
        return torch.log1p(torch.relu(pooled + self.bias)) * self.keep  # bias is constant over tokens

    # ---- export ----------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, texts: Sequence[str], batch_size: int = 32, top_k: int | None = None,
               threshold: float = 0.0, progress: bool = True) -> sp.csr_matrix:
        """Encode ``texts`` to a float32 CSR matrix [n, V], pruned to ``top_k`` / ``> threshold``.

        Texts are bucketed by token length (longest first) to minimise padding; rows come back in
        input order. Runs in eval mode under ``no_grad`` on the encoder's device.
        """
        texts = list(texts)
        if not texts:
            return sp.csr_matrix((0, self.vocab_size), dtype=np.float32)
        rows = self.tokenizer(texts, truncation=True, max_length=self.config.max_length)["input_ids"]
        order = np.argsort([-len(r) for r in rows], kind="stable")
        was_training = self.training
        self.eval()
        parts = []
        try:
            for start in tqdm(range(0, len(rows), batch_size), desc="sparse encode", unit="batch",
                              disable=not progress):
                batch = order[start:start + batch_size]
                ids, mask = _pad([rows[i] for i in batch], self.tokenizer.pad_token_id)
                weights = self(ids.to(self.device), mask.to(self.device))
                if self.lexical_scale is not None:
                    weights = self.with_prior(weights, self.lexical_prior([texts[i] for i in batch]))
                parts.append(to_csr(prune(weights, top_k, threshold)))
        finally:
            self.train(was_training)
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        return sp.vstack(parts, format="csr")[inverse].astype(np.float32, copy=False)

    # ---- persistence -----------------------------------------------------------------------------
    def save(self, path: str | Path, query: IdfQueryEncoder, overwrite: bool = False,
             source: dict[str, Any] | None = None) -> Path:
        """Save this encoder with its query table as a ``sparse-doc-encoder`` artifact."""
        return SparseModel(self, query).save(path, overwrite=overwrite, source=source)

    @classmethod
    def load(cls, path: str | Path, device: str | None = None) -> SparseDocEncoder:
        """The document encoder of a ``sparse-doc-encoder`` artifact."""
        return SparseModel.load(path, device=device).doc


@dataclass
class SparseModel:
    """A trained (or fresh) inference-free sparse retriever: document encoder + query table."""

    doc: SparseDocEncoder
    query: IdfQueryEncoder
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_minilm(cls, config: SparseEncoderConfig | None = None, device: str | None = None,
                    trainable_idf: bool = False) -> SparseModel:
        """Fresh encoder + all-ones query table on the bundled MiniLM (call ``query.fit_idf`` next)."""
        doc = SparseDocEncoder.from_minilm(config, device)
        query = IdfQueryEncoder(load_fast_tokenizer(), trainable=trainable_idf).to(doc.device)
        return cls(doc, query)

    def save(self, path: str | Path, overwrite: bool = False, source: dict[str, Any] | None = None) -> Path:
        """Write the bundle atomically (see the module docstring for the layout)."""
        from safetensors.torch import save_file

        params = {"encoder": asdict(self.doc.config), "query": asdict(self.query.config), **self.extra}
        with write_artifact(path, FORMAT, VERSION, params=params, source=source,
                            overwrite=overwrite) as out:
            out.path(_ENCODER_FILE).write_text(json.dumps(asdict(self.doc.config), indent=2))
            self.doc.backbone.config.to_json_file(str(out.path(_BACKBONE_FILE)))
            state = {k: v.detach().cpu().contiguous() for k, v in self.doc.state_dict().items()}
            save_file(state, str(out.path(_WEIGHTS_FILE)))
            self.doc.tokenizer.save_pretrained(str(out.path(_TOKENIZER_DIR)))
            self.query.write(out.dir)
            out.counts.update(vocab_size=self.doc.vocab_size, idf_docs=self.query.config.num_docs)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path, device: str | None = None, verify: bool = True) -> SparseModel:
        """Open and verify a ``sparse-doc-encoder`` artifact; both halves on ``device``."""
        from safetensors.torch import load_file

        path = Path(path)
        manifest = open_artifact(path, FORMAT, VERSION, verify=verify)
        try:
            config = SparseEncoderConfig(**json.loads((path / _ENCODER_FILE).read_text()))
        except (OSError, ValueError, TypeError) as exc:  # InputError is a ValueError: a bad stored setting
            raise ArtifactError(path / _ENCODER_FILE, f"unreadable encoder config: {exc}") from exc
        backbone = build_backbone(path / _BACKBONE_FILE)
        doc = SparseDocEncoder(backbone, load_tokenizer(path / _TOKENIZER_DIR), config, device="cpu")
        try:
            doc.load_state_dict(load_file(str(path / _WEIGHTS_FILE)))
        except RuntimeError as exc:
            raise ArtifactError(path / _WEIGHTS_FILE, f"weights do not fit the config: {exc}") from exc
        doc.to(device or default_device()).eval()
        query = IdfQueryEncoder.read(path, load_fast_tokenizer(path / _TOKENIZER_DIR)).to(doc.device)
        extra = {k: v for k, v in manifest.params.items() if k not in ("encoder", "query")}
        return cls(doc, query, extra)


def load_query_encoder(path: str | Path, verify: bool = True) -> IdfQueryEncoder:
    """Only the query half of a ``sparse-doc-encoder`` artifact (no transformer is loaded)."""
    path = Path(path)
    open_artifact(path, FORMAT, VERSION, verify=verify)
    return IdfQueryEncoder.read(path, load_fast_tokenizer(path / _TOKENIZER_DIR))
