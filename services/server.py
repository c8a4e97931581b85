"""The gRPC server of Sparsekit: SearchService, plus RecommendService and GenerateService when given,
with the standard health service (SERVING once everything is loaded) and server reflection.

:func:`make_server` builds it (not started) on one address; ``sparsekit serve`` and the demo use it.
:func:`drain` stops it the way load balancers expect: health turns NOT_SERVING while requests are still
answered, then in-flight requests get a grace period.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from concurrent import futures
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from retrieval.index import SearchIndex
from services.api import generate_pb2, generate_pb2_grpc, recommend_pb2_grpc, search_pb2_grpc
from services.recommend_service import SERVICE_NAME as RECOMMEND_SERVICE
from services.recommend_service import RecommendServicer
from services.search_service import SERVICE_NAME as SEARCH_SERVICE
from services.search_service import SearchServicer
from services.search_validation import SearchLimits
from sparsekit.bounds import count
from sparsekit.errors import InputError

if TYPE_CHECKING:  # the Generate service pulls in transformers: imported only where it is served
    from services.generate_service import GenerateServicer

GENERATE_SERVICE = generate_pb2.DESCRIPTOR.services_by_name["GenerateService"].full_name


@dataclass
class ServerConfig:
    """How to serve: address, worker threads and request limits."""

    address: str = "127.0.0.1:50051"
    workers: int = 4
    engine_threads: int = 1  # threads of each BatchSearch engine batch (index.batch_search)
    limits: SearchLimits = field(default_factory=SearchLimits)

    def __post_init__(self) -> None:
        _check_address(self.address)
        count(self, 1, "workers", "engine_threads")


def make_server(indexes: Mapping[str, SearchIndex], config: ServerConfig | None = None,
                recommend: RecommendServicer | None = None,
                generate: GenerateServicer | None = None,
                health_servicer: health.HealthServicer | None = None) -> tuple[grpc.Server, int]:
    """Build (not start) a server with Search (+ Recommend, + Generate when given) + health + reflection;
    return it and its bound port. Pass ``health_servicer`` to keep a handle for :func:`drain`."""
    config = config or ServerConfig()
    size = config.limits.max_message_bytes
    generating = generate.limits.max_pending if generate is not None else 0
    server = grpc.server(
        # Generate's admitted requests get threads of their own: waiting generations never starve Search
        futures.ThreadPoolExecutor(max_workers=config.workers + generating),
        # no SO_REUSEPORT: a second server on a port in use must fail, not share it silently
        options=[("grpc.max_receive_message_length", size),
                 ("grpc.max_send_message_length", config.limits.max_response_bytes),
                 ("grpc.so_reuseport", 0)],
    )
    search_pb2_grpc.add_SearchServiceServicer_to_server(
        SearchServicer(indexes, config.limits, config.engine_threads), server)
    services = [SEARCH_SERVICE]
    if recommend is not None:
        recommend_pb2_grpc.add_RecommendServiceServicer_to_server(recommend, server)
        services.append(RECOMMEND_SERVICE)
    if generate is not None:
        generate_pb2_grpc.add_GenerateServiceServicer_to_server(generate, server)
        services.append(GENERATE_SERVICE)
    health_servicer = health_servicer or health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in (*services, ""):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection((*services, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    try:
        port = server.add_insecure_port(config.address)
    except RuntimeError as exc:  # grpc raises this when the port is taken or the host cannot be bound
        raise OSError(f"cannot bind {config.address}: {exc}") from exc
    if port == 0:
        raise OSError(f"cannot bind {config.address}")
    return server, port


def _check_address(address: str) -> None:
    """``host:port`` with a port in 0..65535 (0: any free port); grpc would otherwise wrap the port."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise InputError("address", f"expected host:port with a port in 0..65535, got {address!r}")


def drain(server: grpc.Server, health_servicer: health.HealthServicer, drain_s: float = 1.0,
          grace_s: float = 5.0) -> None:
    """Stop ``server`` gracefully: every service's health turns NOT_SERVING (for good) and requests are
    still answered for ``drain_s`` seconds, so health-checking load balancers route new traffic elsewhere;
    then new requests are refused and those in flight get ``grace_s`` seconds to finish."""
    if drain_s < 0 or grace_s < 0:
        raise ValueError(f"drain_s and grace_s must be >= 0, got {drain_s}, {grace_s}")
    health_servicer.enter_graceful_shutdown()
    time.sleep(drain_s)
    server.stop(grace=grace_s).wait()
