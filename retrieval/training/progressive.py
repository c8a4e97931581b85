"""Progressive optimization of the dense query encoder against candidates mined with the trained codes.

BiDR (Xiao et al., WWW 2022, "Progressively Optimized Bi-Granular Document Representation for Scalable
Embedding Based Retrieval"): the compact codes are trained first (global discrimination, see
:mod:`retrieval.quantization.contrastive_pq`); each training query's candidates are then mined with
those codes, exactly as the bi-granular index retrieves them at serving time, and the dense model is
trained only to rank the query's positives above *those* candidates (local discrimination), since the
exact re-score never sees anything else. Documents stay fixed (their vectors are on disk and indexed),
so only the query encoder (MiniLM, :class:`~retrieval.encoders.dense.DenseEncoder`) is fine-tuned and
nothing is re-indexed.

Locality-centric sampling: queries and their candidates form a bipartite graph; a batch is built by a
random walk (query -> one of its candidates -> another query that has that candidate -> ...) or by
snowball sampling (breadth-first over queries that share candidates), so the other queries' candidates,
used as in-batch negatives, are close to each query's own.

The fine-tuned encoder is saved as a ``dense-query-encoder`` artifact (``backbone.json``,
``model.safetensors``, ``tokenizer/``); dense and bi-granular indexes copy it in and load it with
:func:`retrieval.encoders.dense.load_dense_encoder`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import torch
from tqdm import tqdm

from retrieval.encoders.dense import DenseEncoder
from retrieval.quantization.contrastive_pq import contrastive_loss, sample_batch_rows
from sparsekit.best_state import BestState
from sparsekit.bounds import count, one_of, positive
from sparsekit.errors import InputError

Sampling = Literal["random_walk", "snowball", "uniform"]


@dataclass
class ProgressiveConfig:
    """Fine-tuning of the query encoder against code-mined candidates."""

    candidates: int = 100        # code candidates mined per training query
    steps: int = 300
    batch_size: int = 16         # queries per batch
    negatives: int = 15          # mined candidates per query added to the batch's document set
    lr: float = 1e-5
    temperature: float = 0.05
    sampling: Sampling = "random_walk"
    max_length: int = 64         # query tokens
    eval_every: int = 50
    seed: int = 0

    def __post_init__(self) -> None:
        count(self, 1, "candidates", "steps", "batch_size", "max_length", "eval_every")
        count(self, 0, "negatives")
        positive(self, "lr", "temperature")
        one_of(self, "sampling", get_args(Sampling))


def mine_candidates(search: Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]],
                    queries: np.ndarray, depth: int) -> np.ndarray:
    """Each query's top-``depth`` rows by ``search`` (e.g. a code index's ``search``); ``-1`` pads."""
    _, rows = search(np.ascontiguousarray(queries, dtype=np.float32), depth)
    return np.asarray(rows, dtype=np.int64)


class QueryCandidateGraph:
    """The bipartite graph of queries and their mined candidates, sampled into local batches."""

    def __init__(self, candidates: np.ndarray) -> None:
        self.candidates = [row[row >= 0] for row in np.asarray(candidates)]
        by_doc: dict[int, list[int]] = {}
        for q, row in enumerate(self.candidates):
            for d in row.tolist():
                by_doc.setdefault(d, []).append(q)
        self.queries_of = {d: np.asarray(qs) for d, qs in by_doc.items()}

    def neighbours(self, query: int) -> np.ndarray:
        """Queries sharing at least one candidate with ``query``."""
        if not len(self.candidates[query]):
            return np.zeros(0, dtype=np.int64)
        return np.unique(np.concatenate([self.queries_of[d] for d in self.candidates[query].tolist()]))

    def _walk(self, start: int, size: int, free: set[int], rng: np.random.Generator) -> list[int]:
        batch, current = [start], start
        for _ in range(20 * size):
            if len(batch) == size or not len(self.candidates[current]):
                break
            doc = int(rng.choice(self.candidates[current]))
            nxt = int(rng.choice(self.queries_of[doc]))
            current = nxt
            if nxt in free and nxt not in batch:
                batch.append(nxt)
        return batch

    def _snowball(self, start: int, size: int, free: set[int], rng: np.random.Generator) -> list[int]:
        batch, frontier = [start], [start]
        while frontier and len(batch) < size:
            around = [int(q) for q in rng.permutation(self.neighbours(frontier.pop(0)))
                      if int(q) in free and int(q) not in batch]
            take = around[:size - len(batch)]
            batch.extend(take)
            frontier.extend(take)
        return batch

    def batches(self, size: int, sampling: Sampling, rng: np.random.Generator,
                among: Sequence[int] | None = None) -> Iterator[list[int]]:
        """Batches covering every query of ``among`` once (one pass); walks restart at a random
        unused query when they get stuck, so the last batches may be less local."""
        free = set(range(len(self.candidates)) if among is None else among)
        while free:
            pool = np.fromiter(free, dtype=np.int64)
            if sampling == "uniform":
                batch = [int(q) for q in rng.choice(pool, min(size, len(pool)), replace=False)]
            else:
                batch = []
                while len(batch) < size and len(free) > len(batch):
                    start = int(rng.choice([q for q in pool if q not in batch]))
                    grow = self._walk if sampling == "random_walk" else self._snowball
                    batch.extend(q for q in grow(start, size - len(batch), free - set(batch), rng)
                                 if q not in batch)
            free.difference_update(batch)
            yield batch


def _encode(encoder: DenseEncoder, texts: list[str], max_length: int) -> torch.Tensor:
    batch = encoder.tokenizer(texts, padding=True, truncation=True, max_length=max_length,
                              return_tensors="pt")
    return encoder(batch["input_ids"].to(encoder.device), batch["attention_mask"].to(encoder.device))


def finetune_query_encoder(encoder: DenseEncoder, queries: Sequence[str], positives: Sequence[Sequence[int]],
                           candidates: np.ndarray, doc_vectors: Callable[[np.ndarray], np.ndarray],
                           config: ProgressiveConfig | None = None,
                           dev: Callable[[DenseEncoder], float] | None = None,
                           progress: bool = True) -> list[dict[str, float]]:
    """Fine-tune ``encoder`` in place: each query must rank its positives above its mined ``candidates``.

    ``positives[i]`` / ``candidates[i]`` are corpus rows for query ``i``; ``doc_vectors(rows)`` returns
    their fixed float32 vectors (e.g. :meth:`VectorStore.gather`). With ``dev`` (higher is better) the
    encoder is scored before training and every ``eval_every`` steps, and the best state is kept.
    """
    config = config or ProgressiveConfig()
    if len(queries) != len(positives) or len(queries) != len(candidates):
        raise InputError("queries", "queries, positives and candidates must have the same length")
    pos = [np.asarray(p, dtype=np.int64) for p in positives]
    usable = [i for i, p in enumerate(pos) if len(p)]
    if not usable:
        raise InputError("positives", "no query has a positive document")
    candidates = np.asarray(candidates)
    mined = np.stack([np.where(np.isin(row, pos[i]), -1, row) for i, row in enumerate(candidates)])
    graph = QueryCandidateGraph(candidates)
    rng = np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)
    optimizer = torch.optim.AdamW([p for p in encoder.parameters() if p.requires_grad], lr=config.lr)
    history: list[dict[str, float]] = []
    best = BestState(encoder)
    if dev:
        start = dev(encoder)
        best.offer(start, 0)
        history.append({"step": 0, "dev": start})
    step, losses = 0, []
    bar = tqdm(total=config.steps, desc="progressive query fine-tuning", disable=not progress)
    encoder.train()
    while step < config.steps:
        for batch in graph.batches(config.batch_size, config.sampling, rng, among=usable):
            if step == config.steps:
                break
            index = np.asarray(batch)
            rows, targets = sample_batch_rows(index, pos, mined, config.negatives, rng)
            docs = torch.from_numpy(doc_vectors(rows)).to(encoder.device)
            logits = _encode(encoder, [queries[i] for i in batch], config.max_length) @ docs.T
            loss = contrastive_loss(logits / config.temperature, rows, targets, [pos[i] for i in batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            losses.append(loss.item())
            bar.update(1)
            if dev and (step % config.eval_every == 0 or step == config.steps):
                encoder.eval()
                score = dev(encoder)
                encoder.train()
                history.append({"step": step, "loss": float(np.mean(losses)), "dev": score})
                losses = []
                best.offer(score, step)
    bar.close()
    encoder.eval()
    if best.found:
        best.restore()
        history.append({"best_step": best.step, "dev": best.score})
    return history
