"""Contrastive product quantization: a PQ codebook trained so quantized documents rank well for queries.

The "sparse" half of BiDR (Xiao et al., WWW 2022, "Progressively Optimized Bi-Granular Document
Representation"; in the line of JPQ, Zhan et al. CIKM 2021, and Distill-VQ, Xiao et al. SIGIR 2022).
Start from faiss OPQ+PQ (Ge et al. CVPR 2013; Jégou et al. TPAMI 2011): a fixed orthonormal rotation
``R`` and ``M`` codebooks of ``K = 2^nbits`` centroids over ``dim / M``-d sub-vectors. For a document
vector ``v`` (rotated: ``u = R v``) each sub-vector gets

* a soft assignment ``p = softmax(-||u_m - c_k||^2 / tau)`` over the ``K`` centroids, and
* a hard code ``argmax p`` (the nearest centroid: exactly what faiss encodes),

and the quantized document is the straight-through estimate ``hard + (soft - soft.detach())``: its value
is the hard reconstruction, its gradient is the soft one's. Training is contrastive: the (frozen) query
embedding ``R q`` scores the quantized documents by inner product, and an InfoNCE loss over the query's
positive, the other queries' positives (in-batch) and mined hard negatives moves the centroids. Only the
centroids are trained; the rotation stays that of OPQ, so the result exports back to a faiss
``IndexPreTransform(OPQMatrix, IndexPQ)`` with the same bytes per document (:meth:`ContrastivePQ.to_faiss`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from sparsekit.best_state import BestState
from sparsekit.bounds import count, positive
from sparsekit.errors import InputError


@dataclass
class ContrastivePQConfig:
    """Training of the codebooks (the rotation is fixed)."""

    assign_temperature: float = 0.01   # tau of the soft assignment softmax(-||u - c||^2 / tau)
    score_temperature: float = 0.05    # InfoNCE temperature on query . quantized-document
    negatives: int = 8                 # mined hard negatives per query in each batch
    mine_depth: int = 100              # negatives are drawn from each query's exact top-mine_depth
    batch_size: int = 64
    epochs: int = 8
    lr: float = 1e-3
    seed: int = 0

    def __post_init__(self) -> None:
        positive(self, "assign_temperature", "score_temperature", "lr")
        count(self, 0, "negatives")
        count(self, 1, "mine_depth", "batch_size", "epochs")


class ContrastivePQ(nn.Module):
    """A fixed rotation ``[d_out, dim]`` (``d_out <= dim``: faiss ``OPQ{M}_{d_out}`` reduces the dimension)
    and ``M`` trainable codebooks (``[M, K, d_out / M]``), faiss-compatible."""

    def __init__(self, rotation: torch.Tensor, codebooks: torch.Tensor) -> None:
        super().__init__()
        m, _, dsub = codebooks.shape
        if rotation.ndim != 2 or rotation.shape[0] != m * dsub or rotation.shape[1] < m * dsub:
            raise InputError("rotation", f"expected [{m * dsub}, dim >= {m * dsub}], "
                                         f"got {list(rotation.shape)}")
        self.register_buffer("rotation", rotation.float().contiguous())
        self.codebooks = nn.Parameter(codebooks.float().clone())

    # ---- construction from faiss

    @classmethod
    def train_opq(cls, vectors: np.ndarray, m: int, nbits: int = 8, opq: bool = True,
                  opq_iterations: int = 50, rotated_dim: int | None = None) -> ContrastivePQ:
        """Fit faiss ``OPQ{m},PQ{m}x{nbits}`` (``OPQ{m}_{rotated_dim},...`` when ``rotated_dim`` is given;
        plain PQ when ``opq`` is false) and start from it."""
        import faiss

        from retrieval.index.faiss_index import tune_training

        dim = vectors.shape[1]
        out = rotated_dim or dim
        if out % m:
            raise InputError("m", f"{m} sub-quantizers do not divide dim {out}")
        if out > dim or (out != dim and not opq):
            raise InputError("rotated_dim", f"must be at most {dim} and needs opq=True, got {rotated_dim}")
        rotate = f"OPQ{m}_{out}" if out != dim else f"OPQ{m}"
        factory = f"{rotate},PQ{m}x{nbits}" if opq else f"PQ{m}x{nbits}"
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        tune_training(index, opq_iterations)
        index.train(np.ascontiguousarray(vectors, dtype=np.float32))
        return cls.from_faiss(index)

    @classmethod
    def from_faiss(cls, index: Any) -> ContrastivePQ:
        """Read the rotation (identity without OPQ) and centroids of a trained faiss (OPQ+)PQ index."""
        import faiss

        pq_index = faiss.downcast_index(index.index if hasattr(index, "chain") else index)
        if not isinstance(pq_index, faiss.IndexPQ) or not pq_index.is_trained:
            raise InputError("index", f"expected a trained (OPQ+)PQ index, got {type(pq_index).__name__}")
        pq = pq_index.pq
        dim = pq.M * pq.dsub
        rotation = np.eye(dim, dtype=np.float32)
        if hasattr(index, "chain"):
            if index.chain.size() != 1:
                raise InputError("index", "only one pre-transform (the OPQ rotation) is supported")
            transform = faiss.downcast_VectorTransform(index.chain.at(0))
            if not isinstance(transform, faiss.LinearTransform) or transform.d_out != dim:
                raise InputError("index", f"unsupported pre-transform {type(transform).__name__}")
            rotation = faiss.vector_to_array(transform.A).reshape(dim, transform.d_in)
        centroids = faiss.vector_to_array(pq.centroids).reshape(pq.M, pq.ksub, pq.dsub)
        return cls(torch.from_numpy(rotation.copy()), torch.from_numpy(centroids.copy()))

    def to_faiss(self) -> Any:
        """An empty, trained faiss ``IndexPreTransform(OPQMatrix, IndexPQ)`` (inner product) with these
        centroids: ``add`` then encodes each vector with the same hard codes as :meth:`encode`."""
        import faiss

        m, k, _ = self.codebooks.shape
        transform = faiss.OPQMatrix(self.dim, m, self.rotated_dim)
        faiss.copy_array_to_vector(self.rotation.cpu().numpy().ravel(), transform.A)
        transform.is_trained = True
        pq_index = faiss.IndexPQ(self.rotated_dim, m, int(np.log2(k)), faiss.METRIC_INNER_PRODUCT)
        faiss.copy_array_to_vector(self.codebooks.detach().cpu().numpy().ravel(), pq_index.pq.centroids)
        pq_index.is_trained = True
        return faiss.IndexPreTransform(transform, pq_index)

    # ---- shapes

    @property
    def m(self) -> int:
        return int(self.codebooks.shape[0])

    @property
    def dim(self) -> int:
        """Dimension of the vectors it encodes."""
        return int(self.rotation.shape[1])

    @property
    def rotated_dim(self) -> int:
        """Dimension after the rotation (the codebooks' space)."""
        return int(self.codebooks.shape[0] * self.codebooks.shape[2])

    @property
    def code_bytes(self) -> int:
        """Bytes per encoded vector (as faiss stores it)."""
        return int(np.ceil(self.m * np.log2(self.codebooks.shape[1]) / 8))

    # ---- quantization

    def rotate(self, x: torch.Tensor) -> torch.Tensor:
        """``R x`` for each row (faiss LinearTransform: ``y = A x``)."""
        return x @ self.rotation.T

    def distances(self, u: torch.Tensor) -> torch.Tensor:
        """Squared distances ``[n, M, K]`` of each rotated sub-vector to each centroid."""
        sub = u.view(len(u), self.m, -1)                                   # [n, M, dsub]
        cross = torch.einsum("nmd,mkd->nmk", sub, self.codebooks)
        return (sub * sub).sum(-1, keepdim=True) - 2 * cross + (self.codebooks ** 2).sum(-1)

    def assign(self, x: torch.Tensor, temperature: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
        """Soft assignments ``softmax(-d / tau)`` ``[n, M, K]`` and hard codes ``[n, M]`` of vectors ``x``."""
        dist = self.distances(self.rotate(x))
        return torch.softmax(-dist / temperature, dim=-1), dist.argmin(-1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Rotated reconstructions ``[n, rotated_dim]`` of hard codes ``[n, M]``."""
        picked = self.codebooks[torch.arange(self.m, device=codes.device), codes.long()]  # [n, M, dsub]
        return picked.reshape(len(codes), -1)

    def forward(self, x: torch.Tensor, temperature: float = 0.01) -> torch.Tensor:
        """Straight-through quantization of ``x`` in the rotated space: hard value, soft gradient."""
        probs, codes = self.assign(x, temperature)
        soft = torch.einsum("nmk,mkd->nmd", probs, self.codebooks).reshape(len(x), -1)
        return self.decode(codes) + (soft - soft.detach())

    @torch.no_grad()
    def encode(self, x: np.ndarray | torch.Tensor, batch: int = 65536) -> np.ndarray:
        """Hard codes (uint8 when ``K <= 256``) of the rows of ``x``."""
        x = torch.as_tensor(np.asarray(x, dtype=np.float32), device=self.codebooks.device)
        parts = [self.distances(self.rotate(x[s:s + batch])).argmin(-1) for s in range(0, len(x), batch)]
        codes = torch.cat(parts).cpu().numpy()
        return codes.astype(np.uint8 if self.codebooks.shape[1] <= 256 else np.int32)

    @torch.no_grad()
    def adc_scores(self, queries: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """Inner products ``[q, n]`` of (rotated) queries with the decoded documents."""
        q = self.rotate(torch.as_tensor(np.asarray(queries, dtype=np.float32), device=self.codebooks.device))
        docs = self.decode(torch.as_tensor(codes.astype(np.int64), device=self.codebooks.device))
        return (q @ docs.T).cpu().numpy()


# ---------------------------------------------------------------- training


def mine_negatives(queries: np.ndarray, docs: np.ndarray, positives: Sequence[Sequence[int]], depth: int,
                   chunk: int = 1024) -> np.ndarray:
    """Each query's exact top-``depth`` documents (inner product) that are not its positives (-1 pads)."""
    out = np.full((len(queries), depth), -1, dtype=np.int64)
    for start in range(0, len(queries), chunk):
        scores = queries[start:start + chunk] @ docs.T
        extra = max(map(len, positives[start:start + chunk]), default=0)
        top = np.argsort(-scores, axis=1)[:, :depth + extra]
        for i, row in enumerate(top):
            keep = row[~np.isin(row, positives[start + i])][:depth]
            out[start + i, :len(keep)] = keep
    return out


def contrastive_loss(logits: torch.Tensor, columns: np.ndarray, targets: np.ndarray,
                     positives: Sequence[np.ndarray]) -> torch.Tensor:
    """InfoNCE over candidate columns: row ``b`` must rank column ``targets[b]`` first; the row's other
    positives (``positives[b]``, as corpus rows; ``columns`` maps each column to its corpus row) are
    masked out rather than treated as negatives."""
    other = np.zeros(logits.shape, dtype=bool)
    for b, rows in enumerate(positives):
        other[b] = np.isin(columns, rows)
        other[b, targets[b]] = False
    labels = torch.as_tensor(targets, dtype=torch.long, device=logits.device)
    return nn.functional.cross_entropy(logits.masked_fill(torch.from_numpy(other).to(logits.device),
                                                          float("-inf")), labels)


def sample_batch_rows(batch: np.ndarray, positives: Sequence[np.ndarray], negatives: np.ndarray, count: int,
                      rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One positive per query plus up to ``count`` of its mined negatives: (unique corpus rows, the
    column of each query's positive among them). Every query's rows are negatives for the others."""
    targets = np.array([rng.choice(positives[i]) for i in batch])
    mined = []
    for i in batch:
        pool = negatives[i][negatives[i] >= 0]
        mined.append(rng.choice(pool, min(count, len(pool)), replace=False) if len(pool) else pool)
    rows = np.unique(np.concatenate([targets, *mined]).astype(np.int64))
    return rows, np.searchsorted(rows, targets)


def _batch_loss(model: ContrastivePQ, q: torch.Tensor, docs: torch.Tensor, batch: np.ndarray,
                positives: Sequence[np.ndarray], negatives: np.ndarray, config: ContrastivePQConfig,
                rng: np.random.Generator) -> torch.Tensor:
    rows, targets = sample_batch_rows(batch, positives, negatives, config.negatives, rng)
    quantized = model(docs[torch.from_numpy(rows)], config.assign_temperature)     # [D, dim] rotated
    logits = model.rotate(q[torch.from_numpy(batch)]) @ quantized.T / config.score_temperature
    return contrastive_loss(logits, rows, targets, [positives[i] for i in batch])


def train_contrastive_pq(model: ContrastivePQ, queries: np.ndarray, positives: Sequence[Sequence[int]],
                         docs: np.ndarray, config: ContrastivePQConfig | None = None,
                         dev: Callable[[ContrastivePQ], float] | None = None,
                         progress: bool = True) -> list[dict[str, float]]:
    """Train ``model``'s codebooks in place on (query, positive documents) pairs; return the history.

    ``queries`` are float32 ``[Q, dim]`` query embeddings, ``positives[i]`` the corpus rows judged
    relevant to query ``i``, ``docs`` the ``[N, dim]`` document embeddings. When ``dev`` (higher is
    better, e.g. dev R@100 of the codes) is given it is measured before training and after every
    epoch, and the best codebooks (possibly the initial ones) are kept.
    """
    config = config or ContrastivePQConfig()
    keep = [i for i, p in enumerate(positives) if len(p)]
    if not keep:
        raise InputError("positives", "no query has a positive document")
    pos = [np.asarray(p, dtype=np.int64) for p in positives]
    negatives = mine_negatives(queries, docs, pos, config.mine_depth)
    rng = np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)
    q, d = torch.from_numpy(np.ascontiguousarray(queries, np.float32)), torch.from_numpy(
        np.ascontiguousarray(docs, np.float32))
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    history: list[dict[str, float]] = []
    best = BestState(model)
    if dev:
        start = dev(model)
        best.offer(start, 0)
        history.append({"epoch": 0, "dev": start})
    for epoch in range(1, config.epochs + 1):
        order = rng.permutation(keep)
        losses = []
        for start in tqdm(range(0, len(order), config.batch_size), desc=f"contrastive PQ epoch {epoch}",
                          disable=not progress, leave=False):
            batch = order[start:start + config.batch_size]
            loss = _batch_loss(model, q, d, batch, pos, negatives, config, rng)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        entry = {"epoch": epoch, "loss": float(np.mean(losses))}
        if dev:
            entry["dev"] = dev(model)
            best.offer(entry["dev"], epoch)
        history.append(entry)
    if best.found:
        best.restore()
    return history
