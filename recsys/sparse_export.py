"""Sparse export of trained CF models, so that dynamic sparse training (DSL, Wang et al. WSDM 2024) saves
real bytes, and top-k serving from the export.

The DSL reference code keeps dense masked tensors, which saves nothing. Here each of a model's
:meth:`~recsys.models.cf.CFModel.sparse_parameters` is stored in a row-variable CSR layout: ``indptr``
(int32), column ``indices`` in the smallest integer type that holds them (uint8 up to 256 columns,
int16 up to 32,768, else int32) and float32 ``values``. Other parameters (biases) are stored dense. The
model's stored bytes count the index overhead (indptr + indices) too; the train interactions, which
dense and sparse serving need alike to exclude seen items, are stored beside and counted apart.

Serving (:func:`load_sparse`): for MF a batch's user vectors are expanded from their CSR rows and scored
against the item matrix (expanded once at load); top-k then excludes seen items. For LightGCN the stored
tables are the sparse *ego* embeddings and the propagation over the stored train graph runs once at load
time (option (a) of the design: exact, so served scores equal the trained model's; sparsifying the
propagated embeddings instead would change the scores). NeuMF is rebuilt from its expanded weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from recsys.id_vocab import IdVocab
from recsys.models.cf import CFModel, Recommender, Scorer
from recsys.training.cf import build_model
from sparsekit.artifacts import Manifest, open_artifact, write_artifact
from sparsekit.device import default_device
from sparsekit.errors import ArtifactError

FORMAT, VERSION = "cf-sparse", 1
_PARTS = ("indptr", "indices", "values")


def index_dtype(num_cols: int) -> np.dtype:
    """Smallest integer type for column indices below ``num_cols``."""
    if num_cols <= 1 << 8:
        return np.dtype(np.uint8)
    if num_cols <= 1 << 15:
        return np.dtype(np.int16)
    return np.dtype(np.int32)


@dataclass
class CSRTable:
    """A row-sparse float32 matrix: row ``r`` holds ``values[indptr[r]:indptr[r+1]]`` at those ``indices``."""

    indptr: np.ndarray
    indices: np.ndarray
    values: np.ndarray
    shape: tuple[int, int]

    @classmethod
    def from_dense(cls, dense: np.ndarray) -> CSRTable:
        """The nonzero entries of a 2-D array (masked entries of a sparse-trained tensor are exact zeros)."""
        matrix = sp.csr_matrix(np.asarray(dense, dtype=np.float32))
        matrix.sort_indices()
        indptr_type = np.int32 if matrix.nnz < 2**31 else np.int64
        return cls(matrix.indptr.astype(indptr_type), matrix.indices.astype(index_dtype(dense.shape[1])),
                   matrix.data.astype(np.float32), (int(dense.shape[0]), int(dense.shape[1])))

    @property
    def nbytes(self) -> int:
        """Stored bytes including the index overhead."""
        return int(self.indptr.nbytes + self.indices.nbytes + self.values.nbytes)

    @property
    def nnz(self) -> int:
        return int(self.values.size)

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """Dense float32 ``[len(ids), cols]`` expansion of the rows ``ids``."""
        starts = self.indptr[ids].astype(np.int64)
        lengths = self.indptr[ids + 1].astype(np.int64) - starts
        out = np.zeros((len(ids), self.shape[1]), dtype=np.float32)
        row = np.repeat(np.arange(len(ids)), lengths)
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        pos = np.repeat(starts - offsets, lengths) + np.arange(row.size)
        out[row, self.indices[pos].astype(np.int64)] = self.values[pos]
        return out

    def to_dense(self) -> np.ndarray:
        return self.rows(np.arange(self.shape[0]))


def _write_csr(directory: Path, name: str, table: CSRTable) -> None:
    for part in _PARTS:
        np.save(directory / f"{name}.{part}.npy", getattr(table, part))


def _read_csr(directory: Path, name: str, shape: tuple[int, int]) -> CSRTable:
    table = CSRTable(*(np.load(directory / f"{name}.{part}.npy") for part in _PARTS), shape=tuple(shape))
    sizes = {int(table.indptr[-1]), table.values.size, table.indices.size}
    if table.indptr.size != shape[0] + 1 or len(sizes) != 1:
        raise ArtifactError(directory / name, f"inconsistent CSR arrays for shape {tuple(shape)}")
    return table


def _interactions_table(matrix: sp.csr_matrix) -> CSRTable:
    matrix = sp.csr_matrix(matrix, dtype=np.float32)
    matrix.sort_indices()
    indices = matrix.indices.astype(np.int32)
    return CSRTable(matrix.indptr.astype(np.int64), indices, np.ones(indices.size, np.float32), matrix.shape)


def export_sparse(
    model: CFModel, path: str | Path, overwrite: bool = False, ids: IdVocab | None = None
) -> Manifest:
    """Write ``model`` (and its raw ``ids``, when given) as a ``cf-sparse`` artifact; returns its manifest
    (``counts``: ``stored_bytes``, ``dense_bytes`` (all parameters as float32), ``interaction_bytes`` and
    ``nnz.<table>``)."""
    sparse_names = set(model.sparse_parameters())
    state = {name: t.detach().cpu().float().numpy() for name, t in model.state_dict().items()}
    tables = {name: CSRTable.from_dense(state[name]) for name in sorted(sparse_names)}
    dense = {name: array for name, array in state.items() if name not in sparse_names}
    params = {"kind": model.kind, "hparams": model.hparams(), "num_users": model.num_users,
              "num_items": model.num_items, "tables": {n: list(t.shape) for n, t in tables.items()},
              "dense": sorted(dense)}
    seen = _interactions_table(model.interactions)
    with write_artifact(path, FORMAT, VERSION, params=params, overwrite=overwrite) as writer:
        for name, table in tables.items():
            _write_csr(writer.dir, name, table)
        for name, array in dense.items():
            np.save(writer.path(f"{name}.npy"), array)
        _write_csr(writer.dir, "interactions", seen)
        if ids is not None:
            ids.write(writer)
        writer.counts["stored_bytes"] = sum(t.nbytes for t in tables.values()) + sum(
            a.nbytes for a in dense.values())
        writer.counts["dense_bytes"] = sum(a.size * 4 for a in state.values())
        writer.counts["interaction_bytes"] = seen.nbytes
        writer.counts.update({f"nnz.{name}": t.nnz for name, t in tables.items()})
        manifest = writer.manifest
    return manifest


class SparseRecommender(Recommender):
    """Top-k serving from a ``cf-sparse`` artifact (see the module docstring for how each model scores)."""

    def __init__(self, manifest: Manifest, tables: dict[str, CSRTable], dense: dict[str, np.ndarray],
                 seen: sp.csr_matrix, device: torch.device) -> None:
        p = manifest.params
        self.kind: str = p["kind"]
        self.tables = tables
        scorer = self._mf_scorer(device) if self.kind == "mf" else self._model_scorer(p, dense, seen, device)
        super().__init__(scorer, p["num_users"], p["num_items"], seen, device)

    def _mf_scorer(self, device: torch.device) -> Scorer:
        users = self.tables["user_emb"]
        items = torch.from_numpy(self.tables["item_emb"].to_dense()).to(device)

        def score(batch: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(users.rows(batch.cpu().numpy())).to(device) @ items.T

        return score

    def _model_scorer(self, p: dict[str, Any], dense: dict[str, np.ndarray], seen: sp.csr_matrix,
                      device: torch.device) -> Scorer:
        model = build_model(p["kind"], p["num_users"], p["num_items"], seen, **p["hparams"])
        state = {n: torch.from_numpy(t.to_dense()) for n, t in self.tables.items()}
        state |= {n: torch.from_numpy(a) for n, a in dense.items()}
        model.load_state_dict(state)
        return model.to(device).eval().scorer()


def load_sparse(path: str | Path, device: str | None = None) -> SparseRecommender:
    """Open a ``cf-sparse`` artifact (checksums verified) for top-k serving with ``recommend``."""
    path = Path(path)
    manifest = open_artifact(path, format=FORMAT, version=VERSION)
    p = manifest.params
    tables = {name: _read_csr(path, name, tuple(shape)) for name, shape in p["tables"].items()}
    dense = {name: np.load(path / f"{name}.npy") for name in p["dense"]}
    inter = _read_csr(path, "interactions", (p["num_users"], p["num_items"]))
    seen = sp.csr_matrix((inter.values, inter.indices, inter.indptr), shape=inter.shape)
    return SparseRecommender(manifest, tables, dense, seen, torch.device(device or default_device()))
