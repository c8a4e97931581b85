"""Console output shared by every CLI command: rich consoles and the one-line error exit (status 2)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from sparsekit.artifacts import check_outside_artifacts, check_target
from sparsekit.errors import ArtifactError, InputError

# stdout prints user data (queries, doc ids, paths) verbatim: no rich markup, so "[/] x" or "ix_[b]" is text
console = Console(markup=False)
err = Console(stderr=True)


def fail(exc: Exception) -> NoReturn:
    """Print ``error: <exc>`` to stderr and exit with status 2 (bad input)."""
    err.print(f"[bold red]error:[/] {escape(str(exc))}")  # escaped: "[nan]" in a message is not markup
    raise typer.Exit(2)


@contextmanager
def naming_options(renamed: Mapping[str, str] | None = None, only_renamed: bool = False) -> Iterator[None]:
    """Re-raise a config's :class:`InputError` under the command-line option of the field it names:
    ``--feature-store``, not the Python field ``feature_store`` (``renamed`` maps fields whose option has
    another name, e.g. ``static_sparsity`` -> ``--static``). ``only_renamed``: errors naming anything
    else (a file, a line) pass unchanged."""
    try:
        yield
    except InputError as exc:
        if only_renamed and exc.source not in (renamed or {}):
            raise
        option = (renamed or {}).get(exc.source, f"--{exc.source.replace('_', '-')}")
        raise InputError(option, exc.reason, exc.line) from exc


def refuse_existing(out: Path, overwrite: bool) -> None:
    """Fail before any work when ``out`` may not be written (not after an hour of training): the rules of
    :func:`sparsekit.artifacts.check_target`."""
    try:
        check_target(out, overwrite)
    except ArtifactError as exc:
        fail(exc)


def refuse_inside_artifact(path: Path | None, option: str) -> None:
    """Fail before any work when ``path`` (a cache, work or report location) is a published artifact or
    lies inside one (:func:`sparsekit.artifacts.check_outside_artifacts`)."""
    if path is None:
        return
    try:
        check_outside_artifacts(path, option)
    except InputError as exc:
        fail(exc)


def refuse_input_as_output(out: Path, **inputs: Path | None) -> None:
    """Fail when ``out`` is one of the command's inputs (``--overwrite`` would replace the input itself);
    ``inputs`` maps option names (``model``) to their paths."""
    for name, path in inputs.items():
        if path is not None and Path(path).resolve() == Path(out).resolve():
            fail(ValueError(f"--out {out} is the --{name.replace('_', '-')} input: write the result "
                            "elsewhere"))


def above(bound: float) -> Callable[[Any], Any]:
    """A typer ``callback`` refusing a value (or any value of a repeated option) that is not > ``bound``:
    for rates and budgets, where ``min=`` would let ``bound`` itself through."""

    def check(value: Any) -> Any:
        values = value if isinstance(value, list | tuple) else [value]
        for v in values:
            if v is not None and not v > bound:  # also refuses nan
                raise typer.BadParameter(f"{v} must be > {bound}")
        return value

    return check
