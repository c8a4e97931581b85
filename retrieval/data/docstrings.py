"""A real text corpus present on every machine: docstrings of installed Python packages.

The demo's fallback when no BEIR dataset is around. Source files are parsed with :mod:`ast` (no
imports, so nothing runs), and each module, class and function docstring of at least
``min_chars`` becomes one BEIR document: ``_id`` = dotted name, ``title`` = the name,
``text`` = the docstring.
"""

from __future__ import annotations

import ast
import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path

from sparsekit.atomic import atomic_path

DEFAULT_PACKAGES = ("numpy", "scipy", "torch", "polars", "grpc", "sklearn", "json", "asyncio", "email")


def _package_root(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _docstrings(tree: ast.Module, module: str) -> Iterator[tuple[str, str]]:
    if doc := ast.get_docstring(tree):
        yield module, doc
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            if node.name.startswith("_"):
                continue
            if doc := ast.get_docstring(node):
                yield f"{module}.{node.name}", doc


def iter_docstring_docs(packages: tuple[str, ...] = DEFAULT_PACKAGES, min_chars: int = 80,
                        limit: int = 20000) -> Iterator[dict[str, str]]:
    """Yield BEIR-style documents from the docstrings of ``packages`` (those installed)."""
    seen: set[str] = set()
    for pkg in packages:
        root = _package_root(pkg)
        if root is None:
            continue
        for path in sorted(root.rglob("*.py")):
            if "test" in path.parts[-2] or path.name.startswith("test"):
                continue
            module = ".".join((pkg, *path.relative_to(root).with_suffix("").parts)).removesuffix(".__init__")
            try:
                tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
            except (SyntaxError, ValueError):
                continue
            for name, doc in _docstrings(tree, module):
                if len(doc) < min_chars or name in seen:
                    continue
                seen.add(name)
                yield {"_id": name, "title": name, "text": " ".join(doc.split())}
                if len(seen) >= limit:
                    return


def write_docstring_corpus(out: Path, **kwargs: object) -> int:
    """Write the docstring corpus as ``out`` (BEIR corpus.jsonl); return the document count."""
    count = 0
    with atomic_path(out) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for doc in iter_docstring_docs(**kwargs):  # type: ignore[arg-type]
            fh.write(json.dumps(doc, ensure_ascii=False) + "\n")
            count += 1
    if count == 0:
        raise RuntimeError("no docstrings found in the installed packages")
    return count
