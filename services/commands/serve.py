"""CLI for serving: ``sparsekit serve`` runs the gRPC Search, Recommend and Generate services (with
health and reflection) over indexes, recommenders, CTR models and a RAG corpus until SIGINT / SIGTERM.

Python API: :func:`services.server.make_server`.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Annotated

import typer

from services.commands.output import console, fail, naming_options
from services.commands.rag import POLICY_HELP, open_pipeline
from sparsekit.artifacts import check_outside_artifacts
from sparsekit.errors import SparsekitError


def _named(specs: list[str], option: str) -> dict[str, Path]:
    out = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--{option} {spec!r}: expected NAME=DIR")
        if name in out:
            raise ValueError(f"--{option} {spec!r}: the name {name!r} is given twice")
        out[name] = Path(path)
    return out


def _generate_servicer(rag_corpus: Path, policy: str, cache_dir: Path | None):
    from services.generate_service import GenerateServicer

    return GenerateServicer(open_pipeline(rag_corpus, policy, cache_dir, host_mb=512, disk_mb=4096,
                                              gguf=None, k=5))


def serve_command(
    index: Annotated[list[str], typer.Option(
        help="NAME=DIR of an index to serve; repeat for several.")] = [],  # noqa: B006
    recommender: Annotated[list[str], typer.Option(help="NAME=DIR of a CF model or DSL sparse export "
                                                        "(RecommendService.Recommend).")] = [],  # noqa: B006
    ctr: Annotated[list[str], typer.Option(help="NAME=DIR of a CTR model, original or AFM-compressed "
                                                "(RecommendService.ScoreCTR).")] = [],  # noqa: B006
    rag_corpus: Annotated[Path | None, typer.Option("--rag", help="A RAG corpus (`sparsekit rag build`) to "
                                                                  "answer from (GenerateService).")] = None,
    rag_policy: Annotated[str, typer.Option(help=POLICY_HELP)] = "cache-craft",
    rag_cache_dir: Annotated[Path | None, typer.Option(help="Disk tier of the chunk cache (default: none, "
                                                            "RAM tiers only).")] = None,
    address: Annotated[str, typer.Option(help="host:port to bind.")] = "127.0.0.1:50051",
    workers: Annotated[int, typer.Option(min=1, help="gRPC worker threads.")] = 4,
    engine_threads: Annotated[int, typer.Option(min=1, help="Threads of each BatchSearch engine batch "
                                                            "(index.batch_search).")] = 1,
    drain_s: Annotated[float, typer.Option(min=0, help="On SIGINT/SIGTERM: seconds health reports "
                                                       "NOT_SERVING while requests are still answered, "
                                                       "before in-flight ones get 5 s to finish.")] = 1.0,
) -> None:
    """Serve indexes and models over gRPC (SearchService, RecommendService, GenerateService, health,
    reflection) until SIGINT/SIGTERM."""
    from grpc_health.v1.health import HealthServicer

    from retrieval.index import open_index
    from services.recommend_service import RecommendServicer, load_ctr, load_recommender
    from services.server import ServerConfig, drain, make_server

    try:
        if not (index or recommender or ctr or rag_corpus):
            raise ValueError("nothing to serve: pass --index, --recommender, --ctr and/or --rag")
        if rag_corpus is None and (rag_cache_dir is not None or rag_policy != "cache-craft"):
            raise ValueError("--rag-policy and --rag-cache-dir configure --rag's generator: pass --rag")
        if rag_cache_dir is not None:
            check_outside_artifacts(rag_cache_dir, "--rag-cache-dir")
        # a bad --address fails before any loading
        with naming_options({"address": "--address", "workers": "--workers",
                             "engine_threads": "--engine-threads"}, only_renamed=True):
            config = ServerConfig(address=address, workers=workers, engine_threads=engine_threads)
        indexes = {name: open_index(path) for name, path in _named(index, "index").items()}
        recs = {name: load_recommender(path) for name, path in _named(recommender, "recommender").items()}
        ctrs = {name: load_ctr(path) for name, path in _named(ctr, "ctr").items()}
        recommend = RecommendServicer(recs, ctrs) if recs or ctrs else None
        generate = _generate_servicer(rag_corpus, rag_policy, rag_cache_dir) if rag_corpus else None
        health = HealthServicer()
        server, port = make_server(indexes, config, recommend, generate, health)
    except (SparsekitError, ValueError, OSError) as exc:
        fail(exc)
    server.start()
    host = address.rsplit(":", 1)[0]
    served = sorted(indexes) + sorted(recs) + sorted(ctrs) + ([f"rag:{rag_corpus}"] if rag_corpus else [])
    console.print(f"serving {served} on {host}:{port} (Ctrl-C to stop)")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    console.print(f"draining: health NOT_SERVING for {drain_s:g} s, then 5 s for requests in flight")
    drain(server, health, drain_s, grace_s=5.0)
    console.print("stopped")
