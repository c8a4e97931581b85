"""Console output shared by every CLI command: rich consoles and the one-line error exit (status 2)."""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console

console = Console()
err = Console(stderr=True)


def fail(exc: Exception) -> NoReturn:
    """Print ``error: <exc>`` to stderr and exit with status 2 (bad input)."""
    err.print(f"[bold red]error:[/] {exc}")
    raise typer.Exit(2)
