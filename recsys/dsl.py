"""Dynamic Sparse Learning (Wang et al., "Dynamic Sparse Learning: A Novel Paradigm for Efficient
Recommendation", WSDM 2024; shuyao-wang/DSL): training sparse from scratch at a constant parameter budget.

Each chosen tensor gets a uniform random mask with exactly ``round(density * numel)`` active entries.
After every optimizer step the masked weights and their optimizer state (Adam ``exp_avg`` and
``exp_avg_sq``, SGD momentum: every state tensor shaped like the weight) are zeroed. Every ``delta_t``
steps each tensor drops the ``n`` smallest-magnitude active weights and regrows the ``n`` inactive ones
with the largest gradient magnitude (RigL-style; regrown weights start at 0 with zeroed optimizer
state), so its number of active entries never changes while rows end up with different numbers of
active dimensions. ``n`` is the prune fraction times the active count, the fraction cosine-annealed
from 0.5 to 0.005 over training. With ``dynamic=False`` the random masks never change: the static
random sparsity baseline.

The regrowth gradient: the reference uses the last mini-batch's gradient. An embedding table's
mini-batch gradient is zero on every row the batch did not touch (most users of a BPR batch), so by
default (``accumulate_grad``) the score is the sum of the mini-batch gradients since the last mask
update, an estimate of the full gradient that covers every row seen in the window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sparsekit.bounds import count
from sparsekit.errors import InputError


@dataclass
class DSLConfig:
    """Target ``density`` (fraction of active weights per tensor) and the prune/regrow schedule."""

    density: float
    total_steps: int
    delta_t: int = 100
    prune_start: float = 0.5
    prune_end: float = 0.005
    dynamic: bool = True
    accumulate_grad: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.density <= 1.0:
            raise InputError("density", f"must be in (0, 1], got {self.density}")
        count(self, 1, "delta_t", "total_steps")
        if not 0.0 <= self.prune_end <= self.prune_start <= 1.0:
            raise InputError("prune_start/prune_end", f"need 0 <= end <= start <= 1, got "
                             f"{self.prune_start} -> {self.prune_end}")


def prune_fraction(step: int, total_steps: int, start: float = 0.5, end: float = 0.005) -> float:
    """Cosine-annealed prune fraction: ``start`` at step 0, ``end`` at ``total_steps`` and after."""
    progress = min(max(step / total_steps, 0.0), 1.0)
    return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * progress))


def random_mask(shape: torch.Size | tuple[int, ...], density: float, generator: torch.Generator,
                device: torch.device | str = "cpu") -> torch.Tensor:
    """A bool mask with exactly ``max(1, round(density * numel))`` uniformly chosen active entries."""
    numel = math.prod(shape)
    active = max(1, round(density * numel))
    mask = torch.zeros(numel, dtype=torch.bool)
    mask[torch.randperm(numel, generator=generator)[:active]] = True
    return mask.view(shape).to(device)


def prune_regrow(weight: torch.Tensor, grad: torch.Tensor | None, mask: torch.Tensor,
                 fraction: float) -> torch.Tensor:
    """The new mask: drop the smallest-|w| ``fraction`` of active entries, regrow as many by largest |grad|.

    Candidates for regrowth are the entries inactive after dropping; the active count is unchanged.
    """
    flat = mask.flatten()
    count = round(fraction * int(flat.sum()))
    if count == 0:
        return mask.clone()
    magnitude = torch.where(flat, weight.detach().abs().flatten(), torch.inf)
    new = flat.clone()
    new[torch.topk(magnitude, count, largest=False).indices] = False
    grad_abs = torch.zeros_like(magnitude) if grad is None else grad.detach().abs().flatten().float()
    new[torch.topk(torch.where(new, -torch.inf, grad_abs), count).indices] = True
    return new.view_as(mask)


class DynamicSparsity:
    """Masks a set of parameters (and their optimizer state) during training; call :meth:`step` after
    every ``optimizer.step()``.

    Works for any model: pass the tensors to sparsify, e.g. ``model.sparse_parameters()``.
    """

    def __init__(self, params: dict[str, nn.Parameter], optimizer: torch.optim.Optimizer | None,
                 config: DSLConfig) -> None:
        if not params:
            raise InputError("params", "no parameters to sparsify")
        self.params = params
        self.optimizer = optimizer
        self.config = config
        self.steps = 0
        generator = torch.Generator().manual_seed(config.seed)
        self._set_masks({name: random_mask(p.shape, config.density, generator, p.device)
                         for name, p in params.items()})
        accumulate = config.dynamic and config.accumulate_grad
        self._grad_sums = {name: torch.zeros_like(p) for name, p in params.items()} if accumulate else {}
        self.apply_masks()

    def _state_tensors(self, param: nn.Parameter) -> list[torch.Tensor]:
        if self.optimizer is None or param not in self.optimizer.state:
            return []
        return [t for t in self.optimizer.state[param].values()
                if isinstance(t, torch.Tensor) and t.shape == param.shape]

    @torch.no_grad()
    def _keep(self, name: str, keep: torch.Tensor) -> None:
        """Multiply the weight and its optimizer state by ``keep`` (a mask; bool is converted)."""
        param = self.params[name]
        keep = keep.to(param.dtype)
        param.mul_(keep)
        for state in self._state_tensors(param):
            state.mul_(keep)

    def _set_masks(self, masks: dict[str, torch.Tensor]) -> None:
        self.masks = masks
        self._keep_factors = {name: m.to(self.params[name].dtype) for name, m in masks.items()}

    def apply_masks(self) -> None:
        """Zero the masked weights and their optimizer state."""
        for name, keep in self._keep_factors.items():
            self._keep(name, keep)

    def update_masks(self) -> None:
        """Prune and regrow every tensor at the current scheduled fraction; regrown entries restart at 0."""
        cfg = self.config
        fraction = prune_fraction(self.steps, cfg.total_steps, cfg.prune_start, cfg.prune_end)
        masks = {}
        for name, mask in self.masks.items():
            param = self.params[name]
            masks[name] = prune_regrow(param, self._grad_sums.get(name, param.grad), mask, fraction)
            self._keep(name, masks[name] & mask)
        self._set_masks(masks)
        for grad_sum in self._grad_sums.values():
            grad_sum.zero_()

    def step(self) -> bool:
        """Count one optimizer step, prune/regrow when due, then mask; True when the masks changed."""
        self.steps += 1
        with torch.no_grad():
            for name, grad_sum in self._grad_sums.items():
                if self.params[name].grad is not None:
                    grad_sum.add_(self.params[name].grad)
        cfg = self.config
        due = cfg.dynamic and self.steps % cfg.delta_t == 0 and self.steps < cfg.total_steps
        if due:
            self.update_masks()
        self.apply_masks()
        return due

    def active_counts(self) -> dict[str, int]:
        """Number of active entries of each masked tensor."""
        return {name: int(mask.sum()) for name, mask in self.masks.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "masks": {name: m.cpu() for name, m in self.masks.items()},
                "grad_sums": {name: g.cpu() for name, g in self._grad_sums.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = set(self.masks) - set(state["masks"])
        if missing:
            raise InputError("dsl state", f"no masks for {sorted(missing)}")
        self.steps = int(state["steps"])
        self._set_masks({name: state["masks"][name].to(self.params[name].device).bool()
                         for name in self.masks})
        for name, grad_sum in self._grad_sums.items():
            grad_sum.copy_(state["grad_sums"][name])
        self.apply_masks()
