"""Service registration that answers an undecodable request body with INVALID_ARGUMENT.

Rule 1: a request whose bytes do not parse as the method's protobuf message is answered with
        INVALID_ARGUMENT naming the method, never INTERNAL ("Exception deserializing request!",
        what grpcio says when a request deserializer raises) and never reaches the servicer.
Rule 2: the generated ``add_*Servicer_to_server`` functions stay the only description of the
        services: ``add_checked`` runs one against a recorder, then registers the same handlers
        with a deserializer that never raises (it returns an ``Undecodable`` marker) and a
        behaviour that aborts on the marker, for every request cardinality (unary and stream).
Rule 3: a handler written for the event loop (``async def``, an async generator, a request stream
        read with ``async for``) gets the same checks as a coroutine, so a servicer may mix
        loop handlers with thread handlers (the server runs the latter on its worker threads).
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeAlias

import grpc

_INVALID = grpc.StatusCode.INVALID_ARGUMENT
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"  # subscriptable in the stubs only


class UndecodableRequest(ValueError):
    """Raised by a checked request stream at an undecodable message: a servicer that reads the
    stream on another thread turns it into INVALID_ARGUMENT itself (exchange.service does)."""


class Undecodable:
    """What the checked deserializer returns for bytes that do not parse (Rule 1)."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _safe_deserializer(parse: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def deserialize(data: bytes) -> Any:
        try:
            return parse(data)
        except Exception as exc:  # noqa: BLE001 - protobuf raises DecodeError and others
            return Undecodable(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    return deserialize


def _message(method: str, request: Undecodable) -> str:
    return f"{method}: the request body is not a valid protobuf message ({request.reason})"


def _refuse(context: grpc.ServicerContext, method: str, request: Undecodable) -> None:
    context.abort(_INVALID, _message(method, request))


def _checked_stream(requests: Iterator[Any], method: str) -> Iterator[Any]:
    for request in requests:
        if isinstance(request, Undecodable):
            raise UndecodableRequest(_message(method, request))
        yield request


async def _checked_stream_async(requests: AsyncIterator[Any],
                                 method: str) -> AsyncIterator[Any]:
    async for request in requests:
        if isinstance(request, Undecodable):
            raise UndecodableRequest(_message(method, request))
        yield request


def _checked_async_handler(method: str, h: Any, deserializer: Callable[[bytes], Any]) -> Handler:
    """Rule 3: the event loop's unary, server-streaming and bidirectional handlers (the
    ones served)."""
    if h.unary_stream is not None:
        inner_us = h.unary_stream

        async def unary_stream(request: Any, context: Any) -> AsyncIterator[Any]:
            if isinstance(request, Undecodable):
                await context.abort(_INVALID, _message(method, request))
            async for response in inner_us(request, context):
                yield response
        return h._replace(request_deserializer=deserializer, unary_stream=unary_stream)  # type: ignore[no-any-return]
    if h.unary_unary is not None:
        inner_uu = h.unary_unary

        async def unary_unary(request: Any, context: Any) -> Any:
            if isinstance(request, Undecodable):
                await context.abort(_INVALID, _message(method, request))
            return await inner_uu(request, context)
        return h._replace(request_deserializer=deserializer, unary_unary=unary_unary)  # type: ignore[no-any-return]
    inner_ss = h.stream_stream
    assert inner_ss is not None and inspect.isasyncgenfunction(inner_ss), method

    async def stream_stream(requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        try:
            async for response in inner_ss(_checked_stream_async(requests, method), context):
                yield response
        except UndecodableRequest as exc:
            await context.abort(_INVALID, str(exc))
    return h._replace(request_deserializer=deserializer, stream_stream=stream_stream)  # type: ignore[no-any-return]


def _checked_handler(method: str, handler: Handler) -> Handler:
    """``handler`` with the Rule 1 deserializer and behaviour."""
    h: Any = handler
    if h.request_deserializer is None:
        return handler
    deserializer = _safe_deserializer(h.request_deserializer)
    behaviour = h.unary_unary or h.unary_stream or h.stream_unary or h.stream_stream
    if inspect.iscoroutinefunction(behaviour) or inspect.isasyncgenfunction(behaviour):
        return _checked_async_handler(method, h, deserializer)
    if h.unary_unary is not None:
        inner_uu = h.unary_unary

        def unary_unary(request: Any, context: grpc.ServicerContext) -> Any:
            if isinstance(request, Undecodable):
                _refuse(context, method, request)
            return inner_uu(request, context)
        return h._replace(request_deserializer=deserializer, unary_unary=unary_unary)  # type: ignore[no-any-return]
    if h.unary_stream is not None:
        inner_us = h.unary_stream

        def unary_stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            if isinstance(request, Undecodable):
                _refuse(context, method, request)
            yield from inner_us(request, context)
        return h._replace(request_deserializer=deserializer, unary_stream=unary_stream)  # type: ignore[no-any-return]
    if h.stream_unary is not None:
        inner_su = h.stream_unary

        def stream_unary(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
            try:
                return inner_su(_checked_stream(requests, method), context)
            except UndecodableRequest as exc:
                context.abort(_INVALID, str(exc))
        return h._replace(request_deserializer=deserializer, stream_unary=stream_unary)  # type: ignore[no-any-return]
    inner_ss = h.stream_stream
    assert inner_ss is not None, method

    def stream_stream(requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
        try:
            yield from inner_ss(_checked_stream(requests, method), context)
        except UndecodableRequest as exc:
            context.abort(_INVALID, str(exc))
    return h._replace(request_deserializer=deserializer, stream_stream=stream_stream)  # type: ignore[no-any-return]


class _Recorder:
    """Stands in for a grpc.Server while a generated ``add_*_to_server`` runs (Rule 2)."""

    def __init__(self) -> None:
        self.services: list[tuple[str, dict[str, Handler]]] = []

    def add_generic_rpc_handlers(self, handlers: object) -> None:
        pass  # the same handlers arrive through add_registered_method_handlers

    def add_registered_method_handlers(self, service: str,
                                       handlers: dict[str, Handler]) -> None:
        self.services.append((service, handlers))


def add_checked(add: Callable[[Any, Any], None], servicer: object,
                server: grpc.Server | grpc.aio.Server) -> None:
    """``add(servicer, server)`` (a generated registration) with Rule 1 for every method."""
    recorder = _Recorder()
    add(servicer, recorder)
    assert recorder.services, "the registration registered nothing"
    for service, handlers in recorder.services:
        checked = {name: _checked_handler(f"{service}/{name}", handler)
                   for name, handler in handlers.items()}
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, checked),))
        server.add_registered_method_handlers(service, checked)  # type: ignore[union-attr]
