"""Request validation of the gRPC SearchService: every rejection names the offending field.

:class:`SearchLimits` bound what one request may ask for; the gRPC transport itself bounds the
message size (4 MiB by default, RESOURCE_EXHAUSTED past it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import grpc

from services.api import search_pb2
from services.status import RequestError


@dataclass(frozen=True)
class SearchLimits:
    """Per-request bounds enforced by the search service."""

    max_k: int = 1000
    default_k: int = 10
    max_batch: int = 256
    max_query_chars: int = 8192
    max_sparse_terms: int = 4096
    max_message_bytes: int = 4 * 1024 * 1024

    @property
    def max_response_bytes(self) -> int:
        """Largest response the server sends (4x a request: a full batch of top-1000 hits exceeds
        gRPC's 4 MiB default; :class:`~services.search_client.SearchClient` accepts as much)."""
        return 4 * self.max_message_bytes


def _invalid(field: str, message: str) -> RequestError:
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, field, message)


def validate_sparse(vec: search_pb2.SparseVector, field: str, limits: SearchLimits) -> None:
    """Parallel arrays of equal length, indices strictly increasing, values finite."""
    if len(vec.indices) != len(vec.values):
        raise _invalid(field, f"indices ({len(vec.indices)}) and values ({len(vec.values)}) differ in length")
    if not vec.indices:
        raise _invalid(field, "empty sparse vector")
    if len(vec.indices) > limits.max_sparse_terms:
        raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED, field,
                           f"{len(vec.indices)} terms exceeds the limit of {limits.max_sparse_terms}")
    for pos in range(1, len(vec.indices)):
        if vec.indices[pos] <= vec.indices[pos - 1]:
            raise _invalid(f"{field}.indices[{pos}]", "indices must be strictly increasing (sorted, unique)")
    for pos, value in enumerate(vec.values):
        if not math.isfinite(value):
            raise _invalid(f"{field}.values[{pos}]", f"value {value} is not finite")


def validate_search(req: search_pb2.SearchRequest, limits: SearchLimits, field: str = "request") -> int:
    """Check one SearchRequest; return the effective k."""
    if not req.index:
        raise _invalid(f"{field}.index", "missing index name")
    which = req.WhichOneof("query")
    if which is None:
        raise _invalid(f"{field}.query", "set either text or sparse")
    if which == "text":
        if not req.text.strip():
            raise _invalid(f"{field}.text", "empty query text")
        if len(req.text) > limits.max_query_chars:
            raise _invalid(f"{field}.text", f"{len(req.text)} characters exceeds {limits.max_query_chars}")
    else:
        validate_sparse(req.sparse, f"{field}.sparse", limits)
    k = req.k or limits.default_k
    if k > limits.max_k:
        raise _invalid(f"{field}.k", f"k={k} exceeds the maximum of {limits.max_k}")
    return k


def validate_batch(req: search_pb2.BatchSearchRequest, limits: SearchLimits) -> list[int]:
    """Check a BatchSearchRequest; return the effective k of each request."""
    if not req.requests:
        raise _invalid("requests", "empty batch")
    if len(req.requests) > limits.max_batch:
        raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED, "requests",
                           f"{len(req.requests)} queries exceeds the batch limit of {limits.max_batch}")
    return [validate_search(r, limits, f"requests[{i}]") for i, r in enumerate(req.requests)]
