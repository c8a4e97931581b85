"""OptEmbed: learnable row pruning and a dimension supernet (Lyu et al., "OptEmbed: Learning Optimal
Embedding Table for Click-through Rate Prediction", CIKM 2022).

Supernet training: a feature's row is kept while its L1 norm exceeds its field's learnable threshold
``t_f`` (``mask = step(||e_x||_1 - t_f)``, trained through the long-tailed straight-through estimator
of dynamic sparse training, with the penalty ``alpha * sum_f exp(-t_f)`` pushing thresholds up), and in
every training lookup each (sample, field) keeps only a random prefix ``e_x[:d]``, ``d ~ U{1..dim}``,
so every prefix width is trained at once (weight sharing). OptEmbed then searches one width per field
(an evolutionary search on validation AUC) and retrains with the pruned rows at those widths.

Design choices (and where they depart from the paper):

- Widths are chosen without validation data, which the table never sees, and jointly with the rows:
  the learned thresholds say which rows may stay, but at small budgets far fewer values fit than the
  learned rows times one dimension. The objective is the kept share of ``sum_x hits_x * ||e_x[:w]||^2``
  (the expected squared input each lookup still receives; ``hits`` counts training lookups, so a 7-row
  field read by every sample outweighs a rare item). Each field keeps its ``k`` best candidate rows by
  that measure (``k`` halving from all of them) at width ``w``: the pair maximising the objective minus
  ``lambda * k * w``, with ``lambda`` bisected until the budget's weight count holds (a Lagrangian
  relaxation of the multiple-choice knapsack), then any room left is filled greedily. A field may end
  with no rows (all-zero vectors). The nested-prefix supernet makes leading dimensions the informative
  ones, which is what a prefix width keeps.
- Search and retraining share one run: after ``search_fraction`` of the trainer's total steps the row
  mask and the widths are fixed and training continues with them (the paper retrains from scratch). A
  checkpoint restored from before that point is fixed in :meth:`OptEmbedTable.finalize`.
- Budget: the kept rows at their field's width are stored as :class:`~embeddings.csr_rows.SparseRowsTable`
  (CSR / COO with the index counted), so the weight count is what
  :func:`~embeddings.csr_rows.sparse_budget` allows; :class:`BudgetError` only when not one weight fits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from embeddings.csr_rows import SparseRowsTable, sparse_budget
from embeddings.table import EmbeddingTable
from kernels.row_lookup import lookup_rows
from sparsekit.errors import InputError


class LongTailStep(torch.autograd.Function):
    """``1[x > 0]`` forward; the long-tailed estimator (2 - 4|x| up to 0.4, then 0.4 up to 1) backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return (x > 0).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        a = x.abs()
        slope = torch.where(a <= 0.4, 2 - 4 * a, torch.where(a <= 1.0, 0.4, 0.0))
        return grad * slope


class OptEmbedTable(EmbeddingTable):
    """Rows pruned by learned field thresholds; per-field widths chosen on a nested-prefix supernet."""

    kind = "optembed"

    def __init__(
        self,
        num_features: int,
        dim: int,
        budget: float = 1.0,
        *,
        field_dims: Sequence[int] | None = None,
        alpha: float = 1e-5,
        search_fraction: float = 0.1,
        init_std: float = 1e-4,
    ) -> None:
        super().__init__(num_features, dim, budget, field_dims=field_dims)
        if alpha < 0:
            raise InputError("alpha", f"must be >= 0, got {alpha}")
        if not 0.0 <= search_fraction <= 1.0:
            raise InputError("search_fraction", f"must be in [0, 1], got {search_fraction}")
        self.layout, self.max_nnz = sparse_budget(self)
        self.alpha, self.search_fraction = float(alpha), float(search_fraction)
        self.init_std = float(init_std)
        fields = self.num_fields or 1
        self.weight = nn.Parameter(torch.randn(num_features, dim) * self.init_std)
        self.threshold = nn.Parameter(torch.zeros(fields))
        self.register_buffer("row_keep", torch.ones(num_features, dtype=torch.bool))
        self.register_buffer("widths", torch.full((fields,), -1, dtype=torch.int64))
        self.register_buffer("hits", torch.zeros(num_features))

    def options(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "search_fraction": self.search_fraction, "init_std": self.init_std}

    @property
    def fixed(self) -> bool:
        return bool((self.widths >= 0).all())

    @property
    def settled(self) -> bool:
        return self.fixed

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        rows = lookup_rows(self.weight, ids)
        fields = self.field_of(ids)
        slot = torch.arange(self.dim, device=ids.device)
        if self.fixed:
            prefix = slot < self.widths[fields][..., None]
            return rows * (prefix & self.row_keep[ids][..., None])
        keep = LongTailStep.apply(rows.abs().sum(-1) - self.threshold[fields])
        rows = rows * keep[..., None]
        if self.training:
            width = torch.randint(1, self.dim + 1, ids.shape, device=ids.device)
            rows = rows * (slot < width[..., None])
        return rows

    def observe(self, ids: torch.Tensor, out: torch.Tensor) -> None:
        if not self.fixed:
            self.hits.index_add_(0, ids.reshape(-1), torch.ones(ids.numel(), device=ids.device))

    def penalty(self) -> torch.Tensor | None:
        if self.fixed or self.alpha == 0:
            return None
        return self.alpha * torch.exp(-self.threshold).sum()

    @torch.no_grad()
    def after_step(self, step: int, total_steps: int) -> None:
        if not self.fixed and step >= self.search_fraction * total_steps:
            self.fix()

    def _all_fields(self) -> torch.Tensor:
        return self.field_of(torch.arange(self.num_features, device=self.weight.device))

    @torch.no_grad()
    def fix(self) -> None:
        """Choose each field's kept rows (among those above its threshold) and width within the budget."""
        fields = self._all_fields()
        candidates = self.weight.abs().sum(1) > self.threshold[fields]
        weighted = self.weight.pow(2) * self.hits[:, None]
        ranked, counts, values = [], [], []
        for f in range(len(self.widths)):
            rows = (candidates & (fields == f)).nonzero(as_tuple=True)[0]
            rows = rows[weighted[rows].sum(1).argsort(descending=True)]
            levels = row_levels(rows.numel())
            energy = weighted[rows].cumsum(1).cumsum(0).cpu()  # [k, w]: best k rows, first w dims
            ranked.append(rows)
            counts.append(levels)
            values.append(energy[torch.tensor(levels, dtype=torch.int64) - 1] if levels else energy[:0])
        plan = allocate(counts, values, self.max_nnz)
        self.row_keep.zero_()
        for rows, levels, (level, width) in zip(ranked, counts, plan, strict=True):
            if width > 0:
                self.row_keep[rows[: levels[level]]] = True
        self.widths.copy_(torch.tensor([width for _, width in plan]))

    def finalize(self) -> EmbeddingTable:
        if not self.fixed:
            self.fix()
        slot = torch.arange(self.dim, device=self.weight.device)
        prefix = slot < self.widths[self._all_fields()][:, None]
        dense = self.weight.detach() * (prefix & self.row_keep[:, None])
        return SparseRowsTable.from_dense(dense, self.budget, field_dims=self.field_dims)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, keep={self.max_nnz} ({self.layout}), widths={self.widths.tolist()}"


def row_levels(count: int) -> list[int]:
    """Row counts a field may keep: ``count``, halved down to 1."""
    levels = []
    while count > 0:
        levels.append(count)
        count //= 2
    return levels


def allocate(
    counts: Sequence[Sequence[int]], values: Sequence[torch.Tensor], capacity: int
) -> list[tuple[int, int]]:
    """Per field ``(level, width)``: keep ``counts[f][level]`` rows at ``width`` (0: nothing), maximising
    ``sum values[f][level, width - 1]`` with ``sum counts * width <= capacity``, by bisecting the price
    ``lambda`` per stored value of the Lagrangian relaxation (each field then picks independently), then
    spending what is left on the upgrade of best gain per extra value until none fits."""

    def pick(price: float) -> list[tuple[int, int]]:
        plan = []
        for levels, value in zip(counts, values, strict=True):
            if not levels:
                plan.append((0, 0))
                continue
            cost = torch.tensor(levels, dtype=value.dtype)[:, None] * torch.arange(1, value.shape[1] + 1)
            gain = value - price * cost
            best = int(gain.argmax())
            level, width = divmod(best, value.shape[1])
            plan.append((level, width + 1) if float(gain.flatten()[best]) > 0 else (0, 0))
        return plan

    def used(plan: list[tuple[int, int]]) -> int:
        chosen = zip(counts, plan, strict=True)
        return sum(levels[level] * width for levels, (level, width) in chosen if width)

    if used(pick(0.0)) <= capacity:
        return pick(0.0)
    low, high = 0.0, max((float(v.max()) for v in values if v.numel()), default=0.0) + 1.0
    for _ in range(100):
        mid = (low + high) / 2
        low, high = (low, mid) if used(pick(mid)) <= capacity else (mid, high)
    plan = pick(high)
    return _fill(plan, counts, values, capacity - used(plan))


def _fill(
    plan: list[tuple[int, int]], counts: Sequence[Sequence[int]], values: Sequence[torch.Tensor], room: int
) -> list[tuple[int, int]]:
    """Greedily upgrade fields (any better (level, width) whose extra values fit in ``room``)."""
    plan = list(plan)
    while True:
        best = None
        for f, (levels, value) in enumerate(zip(counts, values, strict=True)):
            level, width = plan[f]
            now_cost = levels[level] * width if width else 0
            now_value = float(value[level, width - 1]) if width else 0.0
            for lv, count in enumerate(levels):
                for w in range(1, value.shape[1] + 1):
                    extra = count * w - now_cost
                    gain = float(value[lv, w - 1]) - now_value
                    if 0 < extra <= room and gain > 0 and (best is None or gain / extra > best[0]):
                        best = (gain / extra, f, (lv, w), extra)
        if best is None:
            return plan
        _, f, choice, extra = best
        plan[f] = choice
        room -= extra
