"""The embedding-table interface every CTR model reads its feature vectors through.

A table maps global feature ids (int64, per-field offsets already applied, as in the libFM / BARS
CTR layout) to ``dim``-dimensional vectors. Compressed tables from the VLDB 2024 benchmark
("Experimental Analysis of Large-scale Learnable Vector Storage Compression": hashing, QR, TT-Rec,
pruning, ...) are drop-in subclasses, PyG style: a subclass implements :meth:`EmbeddingTable.lookup`
and, when it has constructor options beyond the convention, :meth:`EmbeddingTable.options`.

Conventions:

- Constructor ``Table(num_features, dim, budget=1.0, *, field_dims=None, **options)``. ``budget`` is
  the fraction of the full table's bytes (``num_features * dim * 4``) the table may store, index
  overhead included; :meth:`EmbeddingTable.memory_bytes` reports what it really stores.
- ``field_dims`` (cardinality per field, summing to ``num_features``) gives the per-field offsets:
  field ``f`` owns ids ``offsets[f] .. offsets[f] + field_dims[f] - 1``. Without it the table is one
  shared id space. :class:`FieldwiseTable` builds one sub-table per field instead of one shared one.
- ``forward(ids)`` takes a LongTensor ``[B, F]`` of global ids (column ``f`` holds field ``f``) and
  returns ``[B, F, dim]``; it checks the id range (one min/max) and raises
  :class:`~sparsekit.errors.InputError` naming ``"feature ids"``. ``lookup`` takes ids of any shape.
- Every subclass registers under its ``kind`` so :func:`build_table` can rebuild it from
  :meth:`EmbeddingTable.config` when a saved model is loaded.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from sparsekit.errors import InputError

FLOAT_BYTES = 4
TABLES: dict[str, type[EmbeddingTable]] = {}
BUDGET_SLACK = 1.02  # a table may store up to 2% over its budget (rounding to whole rows / codes)


class BudgetError(InputError):
    """The method cannot represent the table within the requested budget (e.g. its fixed parts alone
    exceed it). The benchmark records such a (method, budget) cell as infeasible."""


def _field_dims(num_features: int, field_dims: Sequence[int] | None) -> tuple[int, ...] | None:
    if field_dims is None:
        return None
    dims = tuple(int(d) for d in field_dims)
    if not dims or min(dims) < 1:
        raise InputError("field_dims", f"every field needs at least one feature, got {dims}")
    if sum(dims) != num_features:
        raise InputError(
            "field_dims", f"cardinalities sum to {sum(dims)}, expected num_features={num_features}"
        )
    return dims


class EmbeddingTable(nn.Module, ABC):
    """Abstract table: global feature ids ``[B, F]`` -> vectors ``[B, F, dim]``."""

    kind: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("kind"):  # only a class naming its own kind (a subclass must not take over)
            TABLES[cls.kind] = cls

    def __init__(
        self, num_features: int, dim: int, budget: float = 1.0, *, field_dims: Sequence[int] | None = None
    ) -> None:
        super().__init__()
        if num_features < 1:
            raise InputError("num_features", f"must be >= 1, got {num_features}")
        if dim < 1:
            raise InputError("dim", f"must be >= 1, got {dim}")
        if not 0.0 < budget <= 1.0:
            raise InputError("budget", f"must be in (0, 1], got {budget}")
        self.num_features = int(num_features)
        self.dim = int(dim)
        self.budget = float(budget)
        self.field_dims = _field_dims(self.num_features, field_dims)
        if self.field_dims is not None:
            starts = torch.tensor((0, *self.field_dims[:-1]), dtype=torch.int64).cumsum(0)
            self.register_buffer("field_offsets", starts, persistent=False)

    @property
    def num_fields(self) -> int | None:
        return None if self.field_dims is None else len(self.field_dims)

    @abstractmethod
    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        """Vectors ``[*ids.shape, dim]`` of checked global feature ids of any shape."""

    def options(self) -> dict[str, Any]:
        """Constructor options beyond ``(num_features, dim, budget, field_dims)``; JSON-serializable."""
        return {}

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        self.check_ids(ids)
        out = self.lookup(ids)
        if self.training:
            self.observe(ids, out)
        return out

    # Training hooks (called by recsys.training.ctr.train_ctr); no-ops unless a method needs them.

    def observe(self, ids: torch.Tensor, out: torch.Tensor) -> None:
        """Called in training mode with the ids a lookup read and the vectors it returned (part of the
        autograd graph): methods that learn from which rows are read (OptEmbed's hit counts, AdaptEmbed's
        gradient norms) do it here, so a wrapper such as :class:`FieldwiseTable` passes it on."""

    @property
    def settled(self) -> bool:
        """Whether the table already computes what :meth:`finalize` will serve, i.e. no search or pruning
        phase is left. The trainer keeps checkpoints, and counts early-stopping patience, only from then
        on, so the served table is the one validation chose (not a pre-pruning model pruned afterwards)."""
        return True

    @property
    def lossy_finalize(self) -> bool:
        """Whether :meth:`finalize` changes what the table computes (post-training compression, e.g.
        dedup's k-means). The trainer then validates every epoch on a finalized copy, so early stopping
        and the kept checkpoint judge the table that will serve."""
        return False

    def penalty(self) -> torch.Tensor | None:
        """An extra loss term added at every training step (e.g. a sparsity regulariser), or ``None``."""
        return None

    def after_step(self, step: int, total_steps: int) -> None:
        """Called after optimizer step ``step`` (1-based) of ``total_steps`` (e.g. a pruning schedule)."""

    def resume_at(self, step: int, total_steps: int) -> None:
        """Called once when a training run resumes from a checkpoint taken after step ``step``: restore
        schedule state kept outside the state dict (the state dict itself is already loaded)."""

    def finalize(self) -> EmbeddingTable:
        """The table that serves after training (e.g. pruned rows packed as CSR); its stored size meets
        the budget. Called once, on the best checkpoint."""
        return self

    def check_ids(self, ids: torch.Tensor) -> None:
        """Raise :class:`InputError` ("feature ids") unless ``ids`` is an in-range integer ``[B, F]``."""
        if ids.dtype != torch.int64 or ids.dim() != 2:
            raise InputError(
                "feature ids", f"expected an int64 [batch, fields] tensor, got {ids.dtype} {tuple(ids.shape)}"
            )
        if self.field_dims is not None and ids.shape[1] != len(self.field_dims):
            raise InputError("feature ids", f"expected {len(self.field_dims)} fields, got {ids.shape[1]}")
        if ids.numel() == 0:
            return
        low, high = int(ids.min()), int(ids.max())
        if low < 0 or high >= self.num_features:
            bad = low if low < 0 else high
            raise InputError("feature ids", f"id {bad} is out of range [0, {self.num_features})")

    def columns_are_fields(self, ids: torch.Tensor, fields: torch.Tensor) -> bool:
        """Whether ``ids`` is ``[B, F]`` with column ``f`` holding field ``f``'s ids (``fields`` =
        :meth:`field_of`), so a per-column path may serve it."""
        if ids.dim() != 2 or ids.shape[1] != len(self.field_dims or ()):
            return False
        return bool((fields == torch.arange(ids.shape[1], device=ids.device)).all())

    def field_of(self, ids: torch.Tensor) -> torch.Tensor:
        """The field index of each global id (all zeros for a shared table without fields)."""
        if self.field_dims is None:
            return torch.zeros_like(ids)
        return torch.bucketize(ids, self.field_offsets, right=True) - 1

    def memory_bytes(self) -> int:
        """Every byte the table stores: parameters and buffers (index overhead included)."""
        tensors = [*self.parameters(), *self.buffers()]
        return sum(t.numel() * t.element_size() for t in tensors)

    def full_bytes(self) -> int:
        """Bytes of the uncompressed float32 table, the denominator of ``budget``."""
        return self.num_features * self.dim * FLOAT_BYTES

    def budget_bytes(self) -> int:
        """The most bytes this table may store: ``budget * full_bytes()``."""
        return int(self.budget * self.full_bytes())

    def room_bytes(self) -> int:
        """Bytes of the budget left for a method's own storage once what the table already stores (the
        field offsets) is paid; :class:`BudgetError` when that alone exceeds the budget."""
        room = self.budget_bytes() - self.memory_bytes()
        if room < 0:
            raise BudgetError(self.kind or type(self).__name__,
                              f"the {self.memory_bytes()} bytes of field offsets alone exceed the budget of "
                              f"{self.budget_bytes()} bytes")
        return room

    def check_budget(self) -> None:
        """Raise :class:`BudgetError` when :meth:`memory_bytes` exceeds the budget (with the 2% slack)."""
        used, allowed = self.memory_bytes(), self.budget_bytes()
        if used > BUDGET_SLACK * allowed:
            raise BudgetError(self.kind or type(self).__name__,
                              f"stores {used} bytes, over {BUDGET_SLACK:g} x the budget of {allowed} bytes")

    def config(self) -> dict[str, Any]:
        """What :func:`build_table` needs to rebuild this table (weights come from the state dict)."""
        return {
            "kind": self.kind,
            "num_features": self.num_features,
            "dim": self.dim,
            "budget": self.budget,
            "field_dims": None if self.field_dims is None else list(self.field_dims),
            **self.options(),
        }

    def extra_repr(self) -> str:
        fields = "" if self.field_dims is None else f", fields={len(self.field_dims)}"
        return f"num_features={self.num_features}, dim={self.dim}, budget={self.budget:g}{fields}"


TableFactory = Callable[..., EmbeddingTable]


class FieldwiseTable(EmbeddingTable):
    """One sub-table per field (built by ``table`` with the same ``dim``), within one budget.

    Below budget 1, every sub-table gets the same fraction of its own full size: what the budget leaves
    once this table's field offsets are paid (so the whole, offsets included, meets ``budget``).

    Ids stay global; each field's sub-table sees local ids ``0 .. field_dims[f] - 1`` (``forward`` also checks
    that column ``f`` holds only field ``f``'s ids). The training hooks (``settled``, ``penalty``,
    ``after_step``, ``resume_at``, ``finalize``) reach every sub-table, so sub-tables that search, prune or
    quantize train and serve as they would alone; ``config`` records each sub-table's own config.
    """

    kind = "fieldwise"

    def __init__(
        self,
        num_features: int,
        dim: int,
        budget: float = 1.0,
        *,
        field_dims: Sequence[int] | None = None,
        table: str | TableFactory = "full",
        table_options: dict[str, Any] | None = None,
        tables: Sequence[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(num_features, dim, budget, field_dims=field_dims)
        if self.field_dims is None:
            raise InputError("field_dims", "a field-wise table needs the field cardinalities")
        self.table_kind = table if isinstance(table, str) else getattr(table, "kind", "")
        self.table_options = dict(table_options or {})
        if tables is not None:  # rebuilt from config(): each sub-table as it was (e.g. finalized)
            self.tables = nn.ModuleList(self._rebuild(tables))
            return
        factory = table_class(table) if isinstance(table, str) else table
        share = self._share()
        self.tables = nn.ModuleList(factory(n, dim, share, **self.table_options) for n in self.field_dims)

    def _share(self) -> float:
        """Each sub-table's budget: the fraction left once the field offsets are paid; at budget 1 (the
        uncompressed reference, the denominator itself, as for :class:`FullTable`) the whole of it."""
        return 1.0 if self.budget >= 1.0 else self.room_bytes() / self.full_bytes()

    def _rebuild(self, configs: Sequence[dict[str, Any]]) -> list[EmbeddingTable]:
        if len(configs) != len(self.field_dims) or any(
            c.get("num_features") != n for c, n in zip(configs, self.field_dims, strict=False)
        ):
            raise InputError("tables", f"need one sub-table config per field of {list(self.field_dims)}")
        return [build_table(config) for config in configs]

    def options(self) -> dict[str, Any]:
        return {"table": self.table_kind or self.tables[0].kind, "table_options": self.table_options,
                "tables": [t.config() for t in self.tables]}

    def check_ids(self, ids: torch.Tensor) -> None:
        """As the base class, and column ``f`` must hold field ``f``'s ids: each field has its own
        sub-table, so an id in another field's column would read (or wrap into) the wrong rows."""
        super().check_ids(ids)
        if ids.numel() == 0:
            return
        local = ids - self.field_offsets
        low, high = local.amin(dim=0), local.amax(dim=0)
        sizes = torch.tensor(self.field_dims, device=ids.device)
        bad = ((low < 0) | (high >= sizes)).nonzero(as_tuple=True)[0]
        if bad.numel():
            f = int(bad[0])
            start = int(self.field_offsets[f])
            raise InputError("feature ids", f"column {f} holds ids outside field {f}'s range "
                                            f"[{start}, {start + self.field_dims[f]})")

    @property
    def settled(self) -> bool:
        return all(t.settled for t in self.tables)

    @property
    def lossy_finalize(self) -> bool:
        return any(t.lossy_finalize for t in self.tables)

    def penalty(self) -> torch.Tensor | None:
        terms = [p for p in (t.penalty() for t in self.tables) if p is not None]
        return sum(terms[1:], terms[0]) if terms else None

    def after_step(self, step: int, total_steps: int) -> None:
        for t in self.tables:
            t.after_step(step, total_steps)

    def resume_at(self, step: int, total_steps: int) -> None:
        for t in self.tables:
            t.resume_at(step, total_steps)

    def finalize(self) -> EmbeddingTable:
        """Every sub-table's serving table (self when none changes); :class:`BudgetError` when the whole,
        field offsets included, is over budget (training tables may be larger: searches keep full rows)."""
        served = [t.finalize() for t in self.tables]
        table = self
        if any(s is not t for s, t in zip(served, self.tables, strict=True)):
            table = FieldwiseTable(self.num_features, self.dim, self.budget, field_dims=self.field_dims,
                                   table=self.table_kind, table_options=self.table_options,
                                   tables=[s.config() for s in served])
            table.tables = nn.ModuleList(served)
            table = table.to(self.field_offsets.device)
        if table.budget < 1.0:
            table.check_budget()
        return table

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        self.check_ids(ids)  # column f holds field f's ids
        return self._lookup(ids, observe=self.training)

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        return self._lookup(ids, observe=False)

    def _lookup(self, ids: torch.Tensor, observe: bool) -> torch.Tensor:
        """Each field's ids through its sub-table (which ``observe``-s its own lookups when asked)."""
        fields = self.field_of(ids)
        local = ids - self.field_offsets[fields]
        by_column = self.columns_are_fields(ids, fields)
        keys = [local[:, f] if by_column else local[fields == f] for f in range(len(self.tables))]
        parts = [t.lookup(key) for key, t in zip(keys, self.tables, strict=True)]
        if observe:
            for key, part, t in zip(keys, parts, self.tables, strict=True):
                t.observe(key, part)
        if by_column:  # one column per field: no scatter
            return torch.stack(parts, dim=1)
        out = parts[0].new_empty(*ids.shape, self.dim)  # the sub-tables' dtype (some store only buffers)
        for f, part in enumerate(parts):
            out[fields == f] = part.to(out.dtype)
        return out


def table_class(kind: str) -> type[EmbeddingTable]:
    """The registered table class of ``kind`` (a class registers when its module is imported)."""
    from embeddings.registry import import_all  # every method module registers its kinds on import

    import_all()

    if kind not in TABLES:
        raise InputError("kind", f"unknown embedding table kind {kind!r} (known: {sorted(TABLES)})")
    return TABLES[kind]


def build_table(config: dict[str, Any]) -> EmbeddingTable:
    """Rebuild a table from :meth:`EmbeddingTable.config`; its weights come from the state dict."""
    options = dict(config)
    return table_class(options.pop("kind"))(**options)
