"""Translation between the gRPC messages and the matching engine's commands and events.

Rule 1: every request is validated before it reaches consensus; a bad one raises ``BadRequest`` with
        a message naming the field (the service answers INVALID_ARGUMENT). Nothing malformed is
        ever proposed, so the replicated log holds only commands the engine can decode.
Rule 2: the exchange assigns new orders the id ``"<client_id>.<seq>"``; cancel and replace accept
        only ids of the requesting client's own orders.
Rule 3: events travel in the flat form of ``Event.to_dict()``: well-known keys go to typed fields,
        every other key to ``extra`` (stringified), so no engine field is lost.
Rule 4: replies are built in place (``_build_reply``): the upb runtime copies a message that is
        built apart and then added to a list or another message, so a session's reports are
        added to their response and their events to them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from exchange.proto import exchange_pb2 as pb
from exchange.state_machine import CLIENT_ID_MAX, SEQ_MAX, Reply
from orderbook import (
    Accepted,
    AddOrder,
    BboChanged,
    Cancelled,
    CancelOrder,
    CancelRejected,
    Command,
    DepthChanged,
    Event,
    Filled,
    Rejected,
    Replaced,
    ReplaceOrder,
    ReplaceRejected,
    Side,
    Trade,
    encode_command,
)
from orderbook.codec import encode_add
from orderbook.constants import ORDER_ID_BYTES_MAX, PRICE_TICKS_MAX, SYMBOL_BYTES_MAX
from orderbook.constants import QTY_MAX as QUANTITY_MAX

_ID_KEYS = ("id", "order_id")
_CONTRA_KEYS = ("contra", "contra_id", "contra_order_id")
_QTY_KEYS = ("qty", "quantity")


class BadRequest(ValueError):
    """A request field is invalid; the message says which and why."""


def order_id_for(client_id: int, seq: int) -> str:
    return f"{client_id}.{seq}"


def _check_ids(client_id: int, seq: int) -> None:
    if not 1 <= client_id <= CLIENT_ID_MAX:
        raise BadRequest(f"client_id must be a positive integer, got {client_id}")
    if not 1 <= seq <= SEQ_MAX:
        raise BadRequest(f"seq must be a positive integer, got {seq}")


def check_symbol(symbol: str, required: bool) -> None:
    if not symbol:
        if required:
            raise BadRequest("symbol is required")
        return
    if len(symbol.encode()) > SYMBOL_BYTES_MAX:
        raise BadRequest(f"symbol {symbol!r} is longer than {SYMBOL_BYTES_MAX} bytes")
    if not symbol.isprintable() or symbol.strip() != symbol:
        raise BadRequest(f"symbol {symbol!r} must be printable without surrounding spaces")


def _check_own_order(client_id: int, order_id: str) -> None:
    if not order_id:
        raise BadRequest("order_id is required")
    if len(order_id.encode()) > ORDER_ID_BYTES_MAX:
        raise BadRequest(f"order_id is longer than {ORDER_ID_BYTES_MAX} bytes")
    if not order_id.startswith(f"{client_id}."):
        raise BadRequest(f"order {order_id!r} is not an order of client {client_id}")


def _check_range(name: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise BadRequest(f"{name} must be in [{low}, {high}], got {value}")


def _encodable(command: Command) -> Command:
    """Raise ``BadRequest`` if the engine's codec cannot carry ``command`` (Rule 1)."""
    _encoded(command)
    return command


def _encoded(command: Command) -> bytes:
    try:
        return encode_command(command)
    except (ValueError, OverflowError) as exc:
        raise _unencodable(exc) from None


def _unencodable(exc: Exception) -> BadRequest:
    """Rule 1: the codec refused a request's values (orderbook.codec Rule 2)."""
    return BadRequest(f"request cannot be encoded: {exc}")


def submit_command(request: pb.SubmitOrderRequest) -> tuple[int, int, Command]:
    client_id, seq, command = _submit(request)
    return client_id, seq, _encodable(command)


def _submit(request: pb.SubmitOrderRequest) -> tuple[int, int, Command]:
    client_id, seq, symbol, sell, price, quantity, stop = _submit_fields(request)
    command = AddOrder(
        order_id=order_id_for(client_id, seq),
        symbol=symbol,
        side=Side.SELL if sell else Side.BUY,
        price=price,
        qty=quantity,
        stop=stop,
        aon=request.all_or_none,
        ioc=request.immediate_or_cancel,
    )
    return client_id, seq, command


def _submit_fields(request: pb.SubmitOrderRequest) -> tuple[int, int, str, bool, int, int, int]:
    """The checked fields of a submit (Rule 1): ``(client_id, seq, symbol, sell, price,
    quantity, stop_price)``."""
    client_id, seq, symbol = request.client_id, request.seq, request.symbol
    _check_ids(client_id, seq)
    check_symbol(symbol, required=True)
    side = request.side
    if side == pb.BUY:
        sell = False
    elif side == pb.SELL:
        sell = True
    else:
        raise BadRequest("side must be BUY or SELL")
    price, quantity, stop = request.price, request.quantity, request.stop_price
    _check_range("price", price, 0, PRICE_TICKS_MAX)
    _check_range("quantity", quantity, 1, QUANTITY_MAX)
    _check_range("stop_price", stop, 0, PRICE_TICKS_MAX)
    return client_id, seq, symbol, sell, price, quantity, stop


def _submit_encoded(request: pb.SubmitOrderRequest) -> tuple[int, int, bytes, str]:
    """``_submit`` then ``_encoded`` without building the ``AddOrder`` (the session's hot path,
    orderbook.codec Rule 5): the same checks, the same bytes."""
    client_id, seq, symbol, sell, price, quantity, stop = _submit_fields(request)
    try:
        body = encode_add(order_id_for(client_id, seq), symbol, sell, price, quantity, stop,
                          request.all_or_none, request.immediate_or_cancel)
    except (ValueError, OverflowError) as exc:
        raise _unencodable(exc) from None
    return client_id, seq, body, symbol


def cancel_command(request: pb.CancelRequest) -> tuple[int, int, Command]:
    client_id, seq, command = _cancel(request)
    return client_id, seq, _encodable(command)


def _cancel(request: pb.CancelRequest) -> tuple[int, int, Command]:
    _check_ids(request.client_id, request.seq)
    _check_own_order(request.client_id, request.order_id)
    check_symbol(request.symbol, required=False)
    command = CancelOrder(order_id=request.order_id, symbol=request.symbol or None)
    return request.client_id, request.seq, command


def replace_command(request: pb.ReplaceRequest) -> tuple[int, int, Command]:
    client_id, seq, command = _replace(request)
    return client_id, seq, _encodable(command)


def _replace(request: pb.ReplaceRequest) -> tuple[int, int, Command]:
    _check_ids(request.client_id, request.seq)
    _check_own_order(request.client_id, request.order_id)
    check_symbol(request.symbol, required=False)
    _check_range("quantity_delta", request.quantity_delta, -QUANTITY_MAX, QUANTITY_MAX)
    _check_range("new_price", request.new_price, 0, PRICE_TICKS_MAX)
    if request.quantity_delta == 0 and request.new_price == 0:
        raise BadRequest("replace changes nothing: give quantity_delta and/or new_price")
    command = ReplaceOrder(
        order_id=request.order_id,
        qty_delta=request.quantity_delta,
        price=request.new_price,
        symbol=request.symbol or None,
    )
    return request.client_id, request.seq, command


def session_order(order: pb.SessionOrder) -> tuple[int, int, bytes, str | None]:
    """``(client_id, seq, encoded command, symbol named or None)`` of one OrderSession order;
    ``BadRequest`` if bad."""
    kind = order.WhichOneof("request")
    if kind == "submit":
        return _submit_encoded(order.submit)
    if kind == "cancel":
        client_id, seq, command = _cancel(order.cancel)
    elif kind == "replace":
        client_id, seq, command = _replace(order.replace)
    else:
        raise BadRequest("session order carries no submit, cancel or replace")
    return client_id, seq, _encoded(command), command.symbol


def session_ids(order: pb.SessionOrder) -> tuple[int, int]:
    """``(client_id, seq)`` of a session order as sent (0, 0 when it carries no request)."""
    kind = order.WhichOneof("request")
    if kind is None:
        return 0, 0
    request = getattr(order, kind)
    return int(request.client_id), int(request.seq)


def event_message(event: Event) -> pb.OrderEvent:
    """The flat protobuf form of one engine event (Rule 3). The order-level events, which every
    reply carries, are built directly (the same message ``event_message_from_dict`` builds from
    ``to_dict()``, a test pins it); the others go through their dict."""
    build = _ORDER_EVENT_BUILDERS.get(type(event))
    if build is not None:
        return build(pb.OrderEvent, event)
    return event_message_from_dict(event.to_dict())


# Each builder calls ``make`` with the event's fields: ``pb.OrderEvent`` to build a free-standing
# message, or a reply's ``events.add`` to build it in place (Rule 4).
_OrderEventBuilder = Callable[[Callable[..., pb.OrderEvent], Any], pb.OrderEvent]
_ORDER_EVENT_BUILDERS: dict[type, _OrderEventBuilder] = {
    Accepted: lambda make, e: make(kind="accept", order_id=e.order_id),
    Rejected: lambda make, e: make(kind="reject", order_id=e.order_id, reason=e.reason),
    Filled: lambda make, e: make(kind="fill", order_id=e.order_id, contra_order_id=e.contra_id,
                                 price=e.price, quantity=e.qty),
    Cancelled: lambda make, e: make(kind="cancel", order_id=e.order_id, quantity=e.qty),
    CancelRejected: lambda make, e: make(kind="cancel_reject", order_id=e.order_id,
                                         reason=e.reason),
    Replaced: lambda make, e: make(kind="replace", order_id=e.order_id, quantity=e.qty,
                                   price=e.price),
    ReplaceRejected: lambda make, e: make(kind="replace_reject", order_id=e.order_id,
                                          reason=e.reason),
}


def event_message_from_dict(fields: Mapping[str, object]) -> pb.OrderEvent:
    message = pb.OrderEvent()
    for key, value in fields.items():
        if key in ("event", "kind", "type"):
            message.kind = str(value)
        elif key in _ID_KEYS:
            message.order_id = str(value)
        elif key in _CONTRA_KEYS:
            message.contra_order_id = str(value)
        elif key == "symbol" and isinstance(value, str):
            message.symbol = value
        elif key == "price" and isinstance(value, int):
            message.price = value
        elif key in _QTY_KEYS and isinstance(value, int):
            message.quantity = value
        elif key == "reason":
            message.reason = str(value)
        else:
            message.extra[key] = str(value)
    return message


def market_data_message(index: int, event: Event, conflated: bool = False) -> pb.MarketDataUpdate:
    """The protobuf form of one market-data event (Trade, BboChanged or DepthChanged)."""
    if isinstance(event, Trade):
        trade = pb.TradeUpdate(price=event.price, quantity=event.qty)
        return pb.MarketDataUpdate(log_index=index, symbol=event.symbol, trade=trade)
    if isinstance(event, BboChanged):
        bbo = pb.BboUpdate(
            bid_price=event.bid,
            bid_quantity=event.bid_qty,
            ask_price=event.ask,
            ask_quantity=event.ask_qty,
        )
        return pb.MarketDataUpdate(log_index=index, symbol=event.symbol, bbo=bbo,
                                   conflated=conflated)
    assert isinstance(event, DepthChanged), event
    depth = pb.DepthUpdate(bids=price_levels(event.bids), asks=price_levels(event.asks))
    return pb.MarketDataUpdate(log_index=index, symbol=event.symbol, depth=depth,
                               conflated=conflated)


def price_levels(levels: Iterable[tuple[int, int, int]]) -> list[pb.PriceLevel]:
    return [pb.PriceLevel(price=p, quantity=q, order_count=n) for p, q, n in levels]


def reply_message(reply: Reply, replica_id: int, unsolicited: bool = False) -> pb.OrderReply:
    return _build_reply(pb.OrderReply, reply, replica_id, unsolicited)


def session_response(answers: Iterable[Reply], unsolicited: Iterable[Reply],
                     replica_id: int) -> pb.SessionResponse:
    """One order-session message: a report per answer, then the unsolicited fills (Rule 4)."""
    response = pb.SessionResponse()
    add = response.reports.add
    for reply in answers:
        _build_reply(add, reply, replica_id, False)
    for reply in unsolicited:
        _build_reply(add, reply, replica_id, True)
    return response


def _build_reply(make: Callable[..., pb.OrderReply], reply: Reply, replica_id: int,
                 unsolicited: bool) -> pb.OrderReply:
    """Rule 4: ``make`` is ``pb.OrderReply`` or a response's ``reports.add``; the events are
    added to the reply in place: the upb runtime copies a message that is built apart and then
    put in a list or another message (building a session's reports apart cost twice as many
    instructions)."""
    message = make(client_id=reply.client_id, seq=reply.seq, order_id=reply.order_id,
                   log_index=reply.log_index, duplicate=reply.duplicate, replica_id=replica_id,
                   unsolicited=unsolicited)
    events = message.events
    add = events.add
    builders = _ORDER_EVENT_BUILDERS
    for event in reply.events:
        build = builders.get(type(event))
        if build is not None:
            build(add, event)
        else:
            events.append(event_message_from_dict(event.to_dict()))
    if reply.error:
        add(kind="rejected", order_id=reply.order_id, reason=reply.error)
    return message


def event_dict(message: pb.OrderEvent) -> dict[str, object]:
    """The inverse of ``event_message``, for clients that print or log events."""
    fields: dict[str, object] = {"event": message.kind}
    if message.order_id:
        fields["id"] = message.order_id
    if message.contra_order_id:
        fields["contra"] = message.contra_order_id
    if message.symbol:
        fields["symbol"] = message.symbol
    if message.price:
        fields["price"] = message.price
    if message.quantity:
        fields["qty"] = message.quantity
    if message.reason:
        fields["reason"] = message.reason
    fields.update(message.extra)
    return fields
