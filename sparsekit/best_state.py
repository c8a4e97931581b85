"""Model selection on a dev metric: keep the best-scoring state of a module seen so far and restore it
when training ends (the "restore best weights" half of early stopping). Used by every trainer that
chooses an epoch or step on validation data."""

from __future__ import annotations

import copy
import math
from typing import Any

from torch import nn


class BestState:
    """The highest ``score`` offered so far, the step it came at, and a copy of the module's weights."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.score = -math.inf
        self.step: int | None = None
        self._state: dict[str, Any] | None = None

    @property
    def found(self) -> bool:
        """Whether any state has been kept."""
        return self._state is not None

    def offer(self, score: float, step: int) -> bool:
        """Keep the module's current weights when ``score`` beats the best so far, or is the first offer
        (the starting point stays the fallback), or is the first number after NaN; return whether it did."""
        first = self._state is None
        if not (first or score > self.score or (math.isnan(self.score) and not math.isnan(score))):
            return False
        self.score, self.step = score, step
        self._state = copy.deepcopy(self.module.state_dict())
        return True

    def restore(self) -> None:
        """Load the kept weights back into the module."""
        if self._state is None:
            raise RuntimeError("no state was kept: offer() was never called")
        self.module.load_state_dict(self._state)

    def state_dict(self) -> dict[str, Any]:
        """The best score, its step and the kept weights (for a training checkpoint)."""
        return {"score": self.score, "step": self.step, "state": self._state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (the kept weights are not loaded into the module)."""
        self.score, self.step, self._state = float(state["score"]), state["step"], state["state"]
