"""Post-training low-rank compression of CTR models by Atomic Feature Mimicking (AFM, KDD 2024).

AFM compresses a layer by mimicking its *output features* rather than its weights. One calibration
pass (no gradients, float64 accumulators) records, for each target layer output ``y``, its mean ``mu``
and covariance ``C = E[y y^T] - mu mu^T``; ``U_k`` holds the top-``k`` eigenvectors of ``C`` (``k``
given, or the smallest reaching an explained-variance ``energy``). Then ``y ~ U_k U_k^T y +
(I - U_k U_k^T) mu``:

- **Linear** ``y = W x + b`` becomes :class:`LowRankLinear`: ``down`` (``W1 = U_k^T W``,
  ``b1 = U_k^T b``) then ``up`` (``W2 = U_k``, ``b2 = (I - U_k U_k^T) mu``). Parameters drop from
  ``out*in + out`` to ``k*(in + 1) + out*(k + 1)``.
- **Embedding table** ``E``: ``E' = (E - mu^T) U_k`` is stored at ``k`` dims (:class:`LowRankTable`) and
  projected back at lookup, ``e = U_k e' + mu``. When the table has fields, ``mu`` and ``U_k`` are per
  field (one calibration statistic per column), with one ``k`` for all fields.

**What is folded** (``fold=True``): an up-projection is merged into the layer that consumes it only when
nothing but dropout/identity sits between them, because a nonlinearity or an interaction (ReLU, FM,
cross, dot products) does not commute with it.

1. A target ``Linear`` directly followed, inside the same ``nn.Sequential``, by another ``Linear``
   (dropout/identity in between) keeps only ``down``; the next layer becomes ``W_next U_k`` with bias
   ``b_next + W_next b2``. In the CTR models' MLPs a ReLU follows every hidden ``Linear``, so this does
   not fire there (it does in plain linear stacks).
2. A compressed embedding table whose model feeds the flattened embeddings straight into a deep tower
   (``model.deep_input`` is :class:`~recsys.models.ctr.mlp.DeepInput` and ``model.deep[0]`` is the first FC
   layer: DeepFM, Wide&Deep, parallel DCNv2) has the up-projection folded into that FC layer: the
   tower reads the ``F * k`` codes, with ``W'_f = W_f U_f`` per field block and ``b' = b + sum_f W_f mu_f``
   (into ``down`` when the first FC layer is itself compressed). The FM / cross / dot-product paths
   still read the projected-back ``U_k e' + mu`` vectors. DLRM's top MLP also reads the dot products,
   so it is not folded.

:func:`compress` returns a compressed copy carrying ``lowrank_spec`` (a JSON-able description of the
new module shapes) so :func:`restructure` can rebuild it before loading a saved state dict.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from embeddings.table import FLOAT_BYTES, BudgetError, EmbeddingTable
from recsys.models.ctr.mlp import DeepInput
from sparsekit.errors import InputError

_PASS_THROUGH = (nn.Dropout, nn.Identity)
_ROW_CHUNK = 1 << 16


class LowRankLinear(nn.Module):
    """``up(down(x))``: ``down`` maps ``in_features -> rank``, ``up`` maps ``rank -> out_features``."""

    def __init__(self, in_features: int, rank: int, out_features: int) -> None:
        super().__init__()
        self.in_features, self.rank, self.out_features = in_features, rank, out_features
        self.down = nn.Linear(in_features, rank)
        self.up = nn.Linear(rank, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))


def _table_rank(num_features: int, dim: int, groups: int, room: int) -> int:
    """The largest rank (at most ``dim``) whose float32 rows + per-group basis and mean fit ``room`` bytes;
    0 when not even rank 1 does."""
    per_rank, fixed = (num_features + groups * dim) * FLOAT_BYTES, groups * dim * FLOAT_BYTES
    return max(0, min(dim, (room - fixed) // per_rank))


class LowRankTable(EmbeddingTable):
    """AFM-compressed table: codes ``weight [V, k]``, per-field ``basis [G, dim, k]`` and ``mean [G, dim]``.

    ``lookup`` returns ``basis_g @ code + mean_g``; :meth:`codes` returns the ``k``-dim codes. ``rank``
    defaults to the largest that fits ``budget`` (field offsets included; :class:`BudgetError` when not
    even rank 1 does); an explicit ``rank`` is taken as given.
    """

    kind = "afm-lowrank"

    def __init__(
        self,
        num_features: int,
        dim: int,
        budget: float = 1.0,
        *,
        field_dims: Sequence[int] | None = None,
        rank: int | None = None,
    ) -> None:
        super().__init__(num_features, dim, budget, field_dims=field_dims)
        groups = self.num_fields or 1
        if rank is None:
            rank = _table_rank(num_features, dim, groups, self.room_bytes())
            if rank < 1:
                raise BudgetError(self.kind, f"rank-1 codes of {num_features} features plus the basis and "
                                             f"mean of {groups} field(s) exceed {self.room_bytes()} bytes")
        self.rank = int(rank)
        if not 1 <= self.rank <= dim:
            raise InputError("rank", f"must be in [1, {dim}], got {self.rank}")
        self.weight = nn.Parameter(torch.zeros(num_features, self.rank))
        self.basis = nn.Parameter(torch.zeros(groups, dim, self.rank))
        self.mean = nn.Parameter(torch.zeros(groups, dim))

    def options(self) -> dict[str, Any]:
        return {"rank": self.rank}

    def codes(self, ids: torch.Tensor) -> torch.Tensor:
        """The stored ``k``-dim codes ``[*ids.shape, k]``."""
        return self.weight[ids]

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        z = self.weight[ids]
        if self.basis.shape[0] == 1:
            return z @ self.basis[0].T + self.mean[0]
        groups = self.field_of(ids)
        if self.columns_are_fields(ids, groups):
            return torch.einsum("bfk,fdk->bfd", z, self.basis) + self.mean  # one column per field
        return torch.einsum("...k,...dk->...d", z, self.basis[groups]) + self.mean[groups]


class CodeInput(nn.Module):
    """Deep-tower input of a folded model: the table's flattened ``k``-dim codes ``[B, F * k]``."""

    def forward(self, table: LowRankTable, ids: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return table.codes(ids).flatten(1)


@dataclass
class LayerStats:
    """Float64 running sums of a layer output, per group (one group, or one per table field)."""

    total: torch.Tensor
    outer: torch.Tensor
    count: int = 0
    _eig: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, repr=False)

    def add(self, y: torch.Tensor) -> None:
        """``y``: ``[N, G, d]`` samples (``G`` groups)."""
        y = y.detach().to(torch.float64)
        self.total += y.sum(dim=0)
        self.outer += torch.einsum("ngd,nge->gde", y, y)
        self.count += y.shape[0]
        self._eig = None

    @property
    def mean(self) -> torch.Tensor:
        return self.total / self.count

    @property
    def covariance(self) -> torch.Tensor:
        mu = self.mean
        cov = self.outer / self.count - mu[:, :, None] * mu[:, None, :]
        return 0.5 * (cov + cov.transpose(1, 2))

    def eigen(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Eigenvalues ``[G, d]`` (descending, clipped at 0) and eigenvectors ``[G, d, d]`` (columns)."""
        if self._eig is None:
            values, vectors = torch.linalg.eigh(self.covariance)
            self._eig = values.flip(-1).clamp_min(0.0), vectors.flip(-1)
        return self._eig

    def rank_for(self, energy: float) -> int:
        """Smallest ``k`` whose top-``k`` eigenvalues explain ``energy`` of the variance (max over groups)."""
        values = self.eigen()[0]
        share = values.cumsum(-1) / values.sum(-1, keepdim=True).clamp_min(1e-300)
        return int(((share < energy - 1e-12).sum(-1) + 1).clamp_max(values.shape[-1]).max())

    def basis(self, rank: int) -> torch.Tensor:
        """``U_k``: ``[G, d, k]`` top-``k`` eigenvectors."""
        return self.eigen()[1][:, :, :rank]


@dataclass
class Calibration:
    """Output statistics of each target layer from one calibration pass."""

    stats: dict[str, LayerStats]
    rows: int


def default_targets(model: nn.Module) -> list[str]:
    """Every ``nn.Linear`` with more than one output (the logit layers stay), in module order."""
    return [name for name, m in model.named_modules() if type(m) is nn.Linear and m.out_features > 1]


def _grouped(module: nn.Module, output: torch.Tensor) -> torch.Tensor:
    """Layer output as ``[N, G, d]``: per-column groups for a fielded table, else one group."""
    if isinstance(module, EmbeddingTable) and module.num_fields is not None:
        return output.reshape(-1, module.num_fields, module.dim)
    return output.reshape(-1, 1, output.shape[-1])


def _check_targets(model: nn.Module, targets: Sequence[str]) -> None:
    names = dict(model.named_modules())
    for name in targets:
        if name not in names:
            raise InputError("targets", f"no module named {name!r} in {type(model).__name__}")
        if type(names[name]) is not nn.Linear and not isinstance(names[name], EmbeddingTable):
            raise InputError("targets", f"{name!r} is a {type(names[name]).__name__}, not a Linear or table")


def _first_tensor(batch: Any) -> torch.Tensor:
    return batch[0] if isinstance(batch, tuple | list) else batch


@torch.no_grad()
def calibrate(
    model: nn.Module, batches: Iterable[Any], targets: Sequence[str] | None = None, progress: bool = False
) -> Calibration:
    """One forward pass over ``batches`` (feature-id tensors, or tuples starting with one) recording the
    mean and covariance of each target's output (float64 accumulators, eval mode, no gradients)."""
    targets = list(default_targets(model) if targets is None else targets)
    _check_targets(model, targets)
    stats: dict[str, LayerStats] = {}
    hooks = []
    for name in targets:
        module = model.get_submodule(name)

        def hook(mod: nn.Module, _inp: Any, out: torch.Tensor, name: str = name) -> None:
            y = _grouped(mod, out)
            if name not in stats:
                g, d = y.shape[1], y.shape[2]
                stats[name] = LayerStats(
                    torch.zeros(g, d, dtype=torch.float64, device=y.device),
                    torch.zeros(g, d, d, dtype=torch.float64, device=y.device),
                )
            stats[name].add(y)

        hooks.append(module.register_forward_hook(hook))
    was_training, rows = model.training, 0
    model.eval()
    try:
        for batch in tqdm(batches, desc="AFM calibration", unit="batch", disable=not progress):
            ids = _first_tensor(batch)
            model(ids)
            rows += ids.shape[0]
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    if rows == 0:
        raise InputError("calib", "the calibration data is empty")
    silent = [name for name in targets if name not in stats]
    if silent:  # e.g. a first-order table, which the models read through lookup(), not forward()
        raise InputError("targets", f"{', '.join(silent)} produced no output during calibration (the model "
                                    "does not call it as a module), so it cannot be compressed")
    return Calibration({name: stats[name] for name in targets}, rows)


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def _next_linear(model: nn.Module, name: str) -> str | None:
    """The ``nn.Linear`` right after ``name`` in its ``nn.Sequential`` (only dropout/identity between)."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if not isinstance(parent, nn.Sequential):
        return None
    keys = list(parent._modules)
    for key in keys[keys.index(child) + 1 :]:
        module = parent._modules[key]
        if isinstance(module, _PASS_THROUGH):
            continue
        if type(module) is nn.Linear:
            return f"{parent_name}.{key}" if parent_name else key
        return None
    return None


def _linear(weight: torch.Tensor, bias: torch.Tensor, like: nn.Linear) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0]).to(device=like.weight.device, dtype=like.weight.dtype)
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(bias)
    return layer


def _compress_linear(model: nn.Module, name: str, stats: LayerStats, rank: int, fold: bool) -> dict[str, Any]:
    layer: nn.Linear = model.get_submodule(name)
    u = stats.basis(rank)[0]
    mu = stats.mean[0]
    w, b = layer.weight.detach().to(torch.float64), layer.bias.detach().to(torch.float64)
    down = _linear(u.T @ w, u.T @ b, layer)
    b2 = mu - u @ (u.T @ mu)
    nxt = _next_linear(model, name) if fold else None
    spec = {
        "kind": "linear",
        "in": layer.in_features,
        "rank": rank,
        "out": layer.out_features,
        "folded_into": nxt,
    }
    if nxt is None:
        low = LowRankLinear(layer.in_features, rank, layer.out_features).to(
            layer.weight.device, layer.weight.dtype
        )
        low.down = down
        low.up = _linear(u, b2, layer)
        _set_module(model, name, low)
        return spec
    following: nn.Linear = model.get_submodule(nxt)
    wn, bn = following.weight.detach().to(torch.float64), following.bias.detach().to(torch.float64)
    _set_module(model, name, down)
    _set_module(model, nxt, _linear(wn @ u, bn + wn @ b2, following))
    return spec


def _table_matrix(table: EmbeddingTable) -> torch.Tensor:
    """All ``num_features`` rows of a table as float64 (looked up in chunks)."""
    rows = []
    with torch.no_grad():
        for lo in range(0, table.num_features, _ROW_CHUNK):
            ids = torch.arange(lo, min(lo + _ROW_CHUNK, table.num_features), device=_device(table))
            rows.append(table.lookup(ids).to(torch.float64))
    return torch.cat(rows)


def _device(module: nn.Module) -> torch.device:
    tensor = next(iter([*module.parameters(), *module.buffers()]), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def _deep_first_linear(model: nn.Module) -> str | None:
    """Name of the ``nn.Linear`` that reads the flattened embeddings (for folding), if the model has one."""
    if not isinstance(getattr(model, "deep_input", None), DeepInput):
        return None
    deep = getattr(model, "deep", None)
    if not isinstance(deep, nn.Sequential) or len(deep) == 0:
        return None
    if type(deep[0]) is nn.Linear:
        return "deep.0"
    return "deep.0.down" if isinstance(deep[0], LowRankLinear) else None


def _compress_table(model: nn.Module, name: str, stats: LayerStats, rank: int, fold: bool) -> dict[str, Any]:
    table: EmbeddingTable = model.get_submodule(name)
    basis, mu = stats.basis(rank), stats.mean
    matrix = _table_matrix(table)
    groups = table.field_of(torch.arange(table.num_features, device=matrix.device))
    codes = torch.einsum("nd,ndk->nk", matrix - mu[groups], basis[groups])
    low = LowRankTable(table.num_features, table.dim, field_dims=table.field_dims, rank=rank)
    low = low.to(device=matrix.device, dtype=_dtype(table))
    with torch.no_grad():
        low.weight.copy_(codes)
        low.basis.copy_(basis)
        low.mean.copy_(mu)
    low.budget = min(1.0, low.memory_bytes() / low.full_bytes())
    _set_module(model, name, low)
    target = _deep_first_linear(model) if fold and name == "embedding" else None
    spec = {"kind": "table", "rank": rank, "folded_into": target}
    if target is not None:
        _fold_into_tower(model, target, basis, mu)
        model.deep_input = CodeInput()
    return spec


def _dtype(module: nn.Module) -> torch.dtype:
    """The module's float parameter dtype; float32 for one that stores only buffers (quantized tables)."""
    return next((p.dtype for p in module.parameters() if p.is_floating_point()), torch.float32)


def _fold_into_tower(model: nn.Module, name: str, basis: torch.Tensor, mu: torch.Tensor) -> None:
    """``W'_f = W_f U_f`` per field block and ``b' = b + sum_f W_f mu_f`` (``basis [G, d, k]``)."""
    layer: nn.Linear = model.get_submodule(name)
    d = basis.shape[1]
    w = layer.weight.detach().to(torch.float64).reshape(layer.out_features, -1, d)
    fields = w.shape[1]
    basis, mu = basis.expand(fields, -1, -1), mu.expand(fields, -1)
    folded = torch.einsum("hfd,fdk->hfk", w, basis).reshape(layer.out_features, -1)
    bias = layer.bias.detach().to(torch.float64) + torch.einsum("hfd,fd->h", w, mu)
    _set_module(model, name, _linear(folded, bias, layer))


def choose_ranks(
    calibration: Calibration, rank: int | dict[str, int] | None = None, energy: float | None = None
) -> dict[str, int]:
    """Per-target rank: ``rank`` (an int for all, capped at each output width, or a dict) or ``energy``."""
    if (rank is None) == (energy is None):
        raise InputError("rank", "give exactly one of rank= or energy=")
    if energy is not None and not 0.0 < energy <= 1.0:
        raise InputError("energy", f"must be in (0, 1], got {energy}")
    ranks = {}
    for name, stats in calibration.stats.items():
        width = stats.total.shape[-1]
        if energy is not None:
            ranks[name] = stats.rank_for(energy)
            continue
        k = rank.get(name, width) if isinstance(rank, dict) else rank
        if k < 1:
            raise InputError("rank", f"must be >= 1, got {k} for {name!r}")
        ranks[name] = min(int(k), width)
    return ranks


def compress(
    model: nn.Module,
    calib: Calibration | Iterable[Any],
    *,
    rank: int | dict[str, int] | None = None,
    energy: float | None = None,
    targets: Sequence[str] | None = None,
    fold: bool = True,
    progress: bool = False,
) -> nn.Module:
    """A compressed copy of ``model`` (the original is untouched).

    ``calib`` is a :class:`Calibration` (reuse one pass across a rank sweep) or calibration batches.
    ``targets`` are module names of ``nn.Linear`` layers or embedding tables (default
    :func:`default_targets`: every ``Linear`` but the logit layers; add ``"embedding"`` for the table).
    The copy's ``lowrank_spec`` records per target the rank and what its up-projection folded into.
    """
    if getattr(model, "lowrank_spec", None):
        raise InputError("model", "already compressed: compress the original model instead")
    if not isinstance(calib, Calibration):
        calib = calibrate(model, calib, targets, progress)
    elif targets is not None and list(targets) != list(calib.stats):
        calib = Calibration({t: calib.stats[t] for t in targets if t in calib.stats}, calib.rows)
        if len(calib.stats) != len(targets):
            raise InputError("targets", "the calibration has no statistics for some targets")
    ranks = choose_ranks(calib, rank, energy)
    out = copy.deepcopy(model)
    spec: dict[str, Any] = {}
    linears = [n for n in calib.stats if not isinstance(out.get_submodule(n), EmbeddingTable)]
    tables = [n for n in calib.stats if n not in linears]
    for name in linears:
        spec[name] = _compress_linear(out, name, calib.stats[name], ranks[name], fold)
    for name in tables:
        spec[name] = _compress_table(out, name, calib.stats[name], ranks[name], fold)
    out.lowrank_spec = spec
    return out


def restructure(model: nn.Module, spec: dict[str, Any]) -> nn.Module:
    """Give an uncompressed model the module shapes of ``spec`` (weights left to ``load_state_dict``).

    Tables are not replaced here: the caller builds the model with the saved (low-rank) table.
    """
    for name, entry in spec.items():
        if entry["kind"] == "linear":
            layer = model.get_submodule(name)
            like = dict(device=layer.weight.device, dtype=layer.weight.dtype)
            if entry["folded_into"] is None:
                _set_module(model, name, LowRankLinear(entry["in"], entry["rank"], entry["out"]).to(**like))
            else:
                following = model.get_submodule(entry["folded_into"])
                _set_module(model, name, nn.Linear(entry["in"], entry["rank"]).to(**like))
                _set_module(
                    model, entry["folded_into"], nn.Linear(entry["rank"], following.out_features).to(**like)
                )
        elif entry["folded_into"] is not None:
            layer = model.get_submodule(entry["folded_into"])
            fields = layer.in_features // model.get_submodule(name).dim
            new = nn.Linear(fields * entry["rank"], layer.out_features).to(
                layer.weight.device, layer.weight.dtype
            )
            _set_module(model, entry["folded_into"], new)
            model.deep_input = CodeInput()
    model.lowrank_spec = spec
    return model


def affected_layers(spec: dict[str, Any]) -> list[str]:
    """Names (valid in the original and the compressed model) of every layer compression changed."""
    names = []
    for name, entry in spec.items():
        for n in (name, entry["folded_into"]):
            if n is not None:
                n = n.removesuffix(".down")
                if n not in names:
                    names.append(n)
    return names


def parameter_count(model: nn.Module, layers: Sequence[str]) -> int:
    """Parameters in the named modules (each tensor counted once)."""
    seen: dict[int, int] = {}
    for name in layers:
        for p in model.get_submodule(name).parameters():
            seen[id(p)] = p.numel()
    return sum(seen.values())
