"""Error types that name the offending input.

Every loader, reader and service raises one of these so that a user sees *which* file, line or
field was wrong. The gRPC layer maps them onto status codes (see ``services/status.py``).
"""

from __future__ import annotations

from pathlib import Path


class SparsekitError(Exception):
    """Base class of every error Sparsekit raises on purpose."""


class InputError(SparsekitError, ValueError):
    """Malformed input: names the source (file or field) and, when known, the line."""

    def __init__(self, source: str | Path, message: str, line: int | None = None) -> None:
        self.source = str(source)
        self.line = line
        self.reason = message
        where = f"{self.source}:{line}" if line is not None else self.source
        super().__init__(f"{where}: {message}")

    def __reduce__(self) -> tuple[type, tuple[str, str, int | None]]:
        """Pickle by constructor arguments, so the error crosses process boundaries (worker pools)."""
        return type(self), (self.source, self.reason, self.line)


class ArtifactError(SparsekitError):
    """A missing, corrupt or mismatched artifact directory."""

    def __init__(self, path: str | Path, message: str) -> None:
        self.path = str(path)
        self.reason = message
        super().__init__(f"{self.path}: {message}")

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        """Pickle by constructor arguments, so the error crosses process boundaries (worker pools)."""
        return type(self), (self.path, self.reason)


class TrainingDiverged(SparsekitError, ArithmeticError):
    """Training produced non-finite predictions at every validated epoch (e.g. a learning rate too high)."""


class NotFoundError(SparsekitError, KeyError):
    """An unknown id or name (index, user, document)."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else "not found"
