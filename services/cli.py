"""The ``sparsekit`` command line: build indexes, search, evaluate, serve, train, compress, benchmark.

This module only wires the commands, which live in ``services/commands/`` (one module per area).
Every command documents itself (``sparsekit COMMAND --help``). Long work shows progress bars.
Errors in user input exit with status 2 and a one-line message naming the file/line or field.
"""

from __future__ import annotations

import sys
import warnings

import typer

from services.commands import bench, cf, ctr, gcn, rag, search, serve, sparse
from sparsekit import __version__
from sparsekit.atomic import exit_on_sigterm

app = typer.Typer(
    help="Sparsekit: sparse retrieval and recommendation embeddings. "
         "Build indexes, search them, evaluate on BEIR data and serve them over gRPC.",
    no_args_is_help=True,
    add_completion=False,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"sparsekit {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="Print the sparsekit version and exit."),
) -> None:
    """Options that apply before any command."""


app.command("index")(search.index_command)
app.command("search")(search.search_command)
app.command("eval")(search.eval_command)
app.command("serve")(serve.serve_command)

train_app = typer.Typer(help="Train models: sparse (learned sparse), query-table, cf, ctr, gcn.",
                        no_args_is_help=True)
app.add_typer(train_app, name="train")
train_app.command("sparse")(sparse.train_sparse_command)
train_app.command("query-table")(sparse.train_query_table_command)
train_app.command("gcn")(gcn.train_gcn_command)
train_app.command("cf")(cf.train_cf_command)
train_app.command("ctr")(ctr.train_ctr_command)

compress_app = typer.Typer(help="Compress trained models.", no_args_is_help=True)
app.add_typer(compress_app, name="compress")
compress_app.command("ctr")(ctr.compress_ctr_command)

bench_app = typer.Typer(help="Benchmark sweeps.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")
bench_app.command("embeddings")(bench.bench_embeddings_command)

generate_app = typer.Typer(help="Generate synthetic data for benchmarks.", no_args_is_help=True)
app.add_typer(generate_app, name="generate")
generate_app.command("graph")(gcn.generate_graph_command)

rag_app = typer.Typer(help="Retrieval-augmented generation with the Cache-Craft chunk cache.",
                      no_args_is_help=True)
app.add_typer(rag_app, name="rag")
rag_app.command("build")(rag.build_command)
rag_app.command("ask")(rag.ask_command)


@app.command()
def demo() -> None:
    """Run the end-to-end demo (index -> gRPC server -> queries -> evaluation), as `make demo` does."""
    from services.demo import main

    sys.exit(main())


def main() -> None:
    """The ``sparsekit`` console script: ``kill`` (SIGTERM) unwinds like Ctrl-C, so an interrupted write
    removes its temporary files, then the typer app runs."""
    exit_on_sigterm()
    warnings.formatwarning = _one_line_warning
    app()


def _one_line_warning(message: Warning | str, category: type[Warning], *args: object,
                      **kwargs: object) -> str:
    """A warning as ``warning: <message>`` for users, not Python's file:line plus the source line."""
    return f"warning: {message}\n"


if __name__ == "__main__":
    main()
