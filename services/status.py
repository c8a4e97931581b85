"""Mapping of Sparsekit errors onto gRPC status codes, shared by every servicer.

InputError -> INVALID_ARGUMENT, NotFoundError -> NOT_FOUND, ArtifactError -> FAILED_PRECONDITION,
a :class:`RequestError` carries its own code; anything else is an engine fault,
logged and answered INTERNAL with only what failed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import grpc

from sparsekit.errors import ArtifactError, InputError, NotFoundError

log = logging.getLogger(__name__)
T = TypeVar("T")


class RequestError(Exception):
    """A rejected request: the gRPC status code and a message that names the field."""

    def __init__(self, code: grpc.StatusCode, field: str, message: str) -> None:
        self.code = code
        self.field = field
        super().__init__(f"{field}: {message}")


def status_of(exc: Exception) -> grpc.StatusCode:
    """The gRPC status for a Sparsekit error (INTERNAL for anything unexpected)."""
    if isinstance(exc, RequestError):
        return exc.code
    if isinstance(exc, InputError):
        return grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(exc, NotFoundError):
        return grpc.StatusCode.NOT_FOUND
    if isinstance(exc, ArtifactError):
        return grpc.StatusCode.FAILED_PRECONDITION
    return grpc.StatusCode.INTERNAL


def guarded(context: grpc.ServicerContext, fn: Callable[[], T], what: str) -> T:
    """Run ``fn``; abort the RPC with the mapped status and a message naming the field on failure."""
    try:
        return fn()
    except (RequestError, InputError, NotFoundError, ArtifactError) as exc:
        context.abort(status_of(exc), str(exc))
    except Exception as exc:  # an engine fault: log it, tell the client only what failed
        log.exception("%s failed", what)
        context.abort(grpc.StatusCode.INTERNAL, internal_message(what, exc))
    raise AssertionError("unreachable: context.abort raises")


def internal_message(what: str, exc: Exception) -> str:
    """The client's text for an engine fault: what failed and the error's type, not its message (which
    may hold engine internals, e.g. Java exception text or server paths: those go to the server log)."""
    return f"{what} failed ({type(exc).__name__}; details in the server log)"
