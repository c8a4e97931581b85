"""Inference-free query encoder: WordPiece tokens weighted by a per-token IDF table.

Implements the query side of Geng et al., "Towards Competitive Search Relevance For Inference-Free
Learned Sparse Retrievers" (2024; the OpenSearch ``doc-v2``/``doc-v3`` models): no transformer runs
at query time. A query is tokenized with the same WordPiece vocabulary as the document encoder,
special tokens are dropped, and the *binary* bag of its unique token ids is weighted by a table
``idf[t]`` (relu'd at use), so ``score(q, d) = sum_{t in q} relu(idf[t]) * w_d(t)``.

IDF formula (decided here; the paper only says "IDF"): the BM25 / Lucene form

    idf(t) = log(1 + (N - df(t) + 0.5) / (df(t) + 0.5))

over a corpus of ``N`` documents. It is positive for every token (a query never becomes empty;
stop-words get tiny weights: on SciFact ``the`` 0.004, ``of`` 0.002 against a median of 9.2, as in
the public table, 0.135 against 8.23), monotone in ``df``, equal to the IDF of the BM25 baseline it
is compared against, and gives tokens absent from the corpus the largest weight ``log(2N + 2)``
(documents may still carry them through expansion). Document frequencies count each token once per
document over the *whole* document (no truncation), without special tokens. Before
:meth:`IdfQueryEncoder.fit_idf` the table is all ones: the "plain" binary query of the ablation.

The table is a ``torch.nn.Parameter``; with ``trainable=True`` the ranking loss trains it through the
batched :meth:`IdfQueryEncoder.forward`. :meth:`IdfQueryEncoder.encode` is the serving path: numpy in,
``(indices, values)`` out, sorted by token id.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import tokenizers
import torch
from torch import nn

from retrieval.encoders.backbone import load_fast_tokenizer, special_token_ids
from sparsekit.bounds import count
from sparsekit.errors import ArtifactError

TABLE_FILE = "idf.npy"
CONFIG_FILE = "query.json"
_FIT_CHUNK = 2048


@dataclass
class IdfQueryConfig:
    """How the table was made: ``num_docs`` is N of the IDF fit (0 = never fitted, all ones)."""

    vocab_size: int
    trainable: bool = False
    num_docs: int = 0
    formula: str = "bm25: log(1 + (N - df + 0.5) / (df + 0.5))"

    def __post_init__(self) -> None:
        count(self, 1, "vocab_size")
        count(self, 0, "num_docs")


def bm25_idf(df: np.ndarray, num_docs: int) -> np.ndarray:
    """BM25/Lucene IDF ``log(1 + (N - df + 0.5) / (df + 0.5))`` as float32; positive for df <= N."""
    df = np.asarray(df, dtype=np.float64)
    return np.log1p((num_docs - df + 0.5) / (df + 0.5)).astype(np.float32)


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


class IdfQueryEncoder(nn.Module):
    """Binary bag of WordPiece ids times a relu'd per-token weight table (``weight``, shape [V])."""

    def __init__(self, tokenizer: tokenizers.Tokenizer, vocab_size: int | None = None,
                 trainable: bool = False) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        size = vocab_size or tokenizer.get_vocab_size()
        self.config = IdfQueryConfig(vocab_size=size, trainable=trainable)
        self.weight = nn.Parameter(torch.ones(size), requires_grad=trainable)
        special = torch.tensor(special_token_ids(tokenizer), dtype=torch.long)
        self.register_buffer("special_ids", special, persistent=False)
        self._special_np = np.zeros(size, dtype=bool)
        self._special_np[special.numpy()] = True
        self._zero_special()

    @classmethod
    def from_minilm(cls, trainable: bool = False) -> IdfQueryEncoder:
        """An encoder over the bundled all-MiniLM-L6-v2 WordPiece vocabulary, table all ones."""
        return cls(load_fast_tokenizer(), trainable=trainable)

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    def _zero_special(self) -> None:
        with torch.no_grad():
            self.weight[self.special_ids] = 0.0

    # ---- fitting -------------------------------------------------------------------------------
    def document_frequencies(self, corpus: Iterable[str] | Iterable[Sequence[int]]) -> tuple[np.ndarray, int]:
        """``(df [V] int64, N)``: in how many documents each token id occurs; texts or id lists."""
        df = np.zeros(self.vocab_size, dtype=np.int64)
        n = 0
        for chunk in _chunks(corpus, _FIT_CHUNK):
            if isinstance(chunk[0], str):
                ids = [e.ids for e in self.tokenizer.encode_batch(chunk, add_special_tokens=False)]
            else:
                ids = [list(doc) for doc in chunk]
            uniq = [np.unique(np.asarray(x, dtype=np.int64)) for x in ids]
            flat = np.concatenate(uniq) if uniq else np.zeros(0, dtype=np.int64)
            if flat.size and (flat.min() < 0 or flat.max() >= self.vocab_size):
                raise ValueError(f"token id out of range [0, {self.vocab_size}) in the corpus")
            df += np.bincount(flat, minlength=self.vocab_size)
            n += len(chunk)
        return df, n

    def fit_idf(self, corpus: Iterable[str] | Iterable[Sequence[int]]) -> IdfQueryEncoder:
        """Set the table to the BM25 IDF of ``corpus`` (texts, or token-id lists); returns ``self``."""
        df, n = self.document_frequencies(corpus)
        if n == 0:
            raise ValueError("fit_idf needs at least one document")
        self.set_table(bm25_idf(df, n))
        self.config.num_docs = n
        return self

    def set_table(self, table: np.ndarray | torch.Tensor) -> None:
        """Replace the weight table (length V); special tokens are forced to zero."""
        values = torch.as_tensor(np.asarray(table, dtype=np.float32))
        if values.shape != (self.vocab_size,):
            raise ValueError(f"table has shape {tuple(values.shape)}, expected ({self.vocab_size},)")
        with torch.no_grad():
            self.weight.copy_(values.to(self.weight.device))
        self._zero_special()

    # ---- serving (numpy) -----------------------------------------------------------------------
    def table(self) -> np.ndarray:
        """The relu'd weight table as float32 numpy [V] (special tokens 0)."""
        table = np.maximum(self.weight.detach().float().cpu().numpy(), 0.0)
        table[self._special_np] = 0.0
        return table

    def binary_table(self) -> np.ndarray:
        """1 for every non-special token: with it, :meth:`encode_packed` gives each query's bag of ids."""
        return (~self._special_np).astype(np.float32)

    def encode(self, query: str) -> tuple[np.ndarray, np.ndarray]:
        """``(indices int64, values float32)`` of one query: unique non-special ids, sorted, weight > 0."""
        return self.encode_batch([query])[0]

    def encode_batch(self, queries: Sequence[str], table: np.ndarray | None = None
                     ) -> list[tuple[np.ndarray, np.ndarray]]:
        """:meth:`encode` for many queries (one batched tokenizer call)."""
        offsets, terms, values = self.encode_packed(queries, table)
        return [(terms[a:b], values[a:b]) for a, b in itertools.pairwise(offsets.tolist())]

    def encode_packed(self, queries: Sequence[str], table: np.ndarray | None = None
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Many queries packed: query b is ``terms[offsets[b]:offsets[b + 1]]`` (int64, sorted, unique)
        with float32 ``values``, as :meth:`encode` gives it. One tokenizer call, then vectorised
        de-duplication and table lookup over the whole batch; ``table`` defaults to :meth:`table`.
        """
        table = self.table() if table is None else table
        encs = self.tokenizer.encode_batch_fast(list(queries), add_special_tokens=False)  # no offsets
        lengths = np.fromiter((len(e.ids) for e in encs), dtype=np.int64, count=len(encs))
        flat = np.fromiter(itertools.chain.from_iterable(e.ids for e in encs), dtype=np.int64,
                           count=int(lengths.sum()))
        keys = np.unique(np.repeat(np.arange(len(encs), dtype=np.int64), lengths) * self.vocab_size + flat)
        rows, terms = np.divmod(keys, self.vocab_size)
        values = table[terms]
        keep = values > 0.0
        offsets = np.zeros(len(encs) + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows[keep], minlength=len(encs)), out=offsets[1:])
        return offsets, terms[keep], values[keep]

    # ---- training (torch) ----------------------------------------------------------------------
    def tokenize(self, queries: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded ``(input_ids, attention_mask)`` [B, L] long tensors on the table's device."""
        encs = self.tokenizer.encode_batch(list(queries), add_special_tokens=False)
        length = max((len(e.ids) for e in encs), default=0) or 1
        ids = torch.zeros(len(encs), length, dtype=torch.long)
        mask = torch.zeros(len(encs), length, dtype=torch.long)
        for row, enc in enumerate(encs):
            ids[row, : len(enc.ids)] = torch.tensor(enc.ids, dtype=torch.long)
            mask[row, : len(enc.ids)] = 1
        return ids.to(self.weight.device), mask.to(self.weight.device)

    def bag_of_words(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Binary [B, V] float: 1 where a (non-special, unmasked) token occurs in the query."""
        bow = torch.zeros(input_ids.shape[0], self.vocab_size, device=input_ids.device)
        bow.scatter_reduce_(1, input_ids, attention_mask.to(bow.dtype), reduce="amax")
        bow[:, self.special_ids.to(bow.device)] = 0.0
        return bow

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Sparse-as-dense query vectors [B, V] = bag_of_words * relu(weight) (differentiable in weight)."""
        return self.bag_of_words(input_ids, attention_mask) * torch.relu(self.weight)

    # ---- persistence (files inside an artifact written by retrieval.encoders.sparse_doc) --------
    def write(self, directory: str | Path) -> None:
        """Write ``idf.npy`` (float32 [V], raw table) and ``query.json`` into ``directory``."""
        directory = Path(directory)
        np.save(directory / TABLE_FILE, self.weight.detach().float().cpu().numpy())
        (directory / CONFIG_FILE).write_text(json.dumps(asdict(self.config), indent=2, sort_keys=True))

    @classmethod
    def read(cls, directory: str | Path, tokenizer: tokenizers.Tokenizer) -> IdfQueryEncoder:
        """Inverse of :meth:`write`; the tokenizer must be the one the table was fitted with."""
        directory = Path(directory)
        try:
            config = IdfQueryConfig(**json.loads((directory / CONFIG_FILE).read_text()))
            table = np.load(directory / TABLE_FILE)
        except (OSError, ValueError, TypeError) as exc:
            raise ArtifactError(directory, f"unreadable IDF query table: {exc}") from exc
        encoder = cls(tokenizer, vocab_size=config.vocab_size, trainable=config.trainable)
        encoder.set_table(table)
        encoder.config = config
        return encoder
