"""Request validation: every bad field is INVALID_ARGUMENT material with a message."""

import pytest

from exchange.convert import (
    BadRequest,
    cancel_command,
    event_dict,
    event_message,
    replace_command,
    reply_message,
    session_order,
    session_response,
    submit_command,
)
from exchange.proto import exchange_pb2 as pb
from exchange.state_machine import Reply
from orderbook import (
    Accepted,
    AddOrder,
    Cancelled,
    CancelRejected,
    Filled,
    Rejected,
    Replaced,
    ReplaceRejected,
    Side,
    Trade,
    encode_command,
)


def _submit(**changes):
    fields = dict(client_id=3, seq=4, symbol="AAPL", side=pb.BUY, price=100, quantity=10)
    fields.update(changes)
    return pb.SubmitOrderRequest(**fields)


def test_valid_submit_gets_exchange_assigned_order_id():
    client_id, seq, command = submit_command(_submit(immediate_or_cancel=True))
    assert (client_id, seq) == (3, 4)
    assert command == AddOrder("3.4", "AAPL", Side.BUY, 100, 10, 0, False, True)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"client_id": 0}, "client_id"),
        ({"seq": 0}, "seq"),
        ({"symbol": ""}, "symbol"),
        ({"symbol": "X" * 17}, "symbol"),
        ({"side": pb.SIDE_UNSPECIFIED}, "side"),
        ({"price": -1}, "price"),
        ({"quantity": 0}, "quantity"),
        ({"stop_price": -5}, "stop_price"),
    ],
)
def test_bad_submit(changes, message):
    with pytest.raises(BadRequest, match=message):
        submit_command(_submit(**changes))


def test_cancel_and_replace_only_own_orders():
    with pytest.raises(BadRequest, match="not an order of client 3"):
        cancel_command(pb.CancelRequest(client_id=3, seq=1, order_id="4.1"))
    with pytest.raises(BadRequest, match="changes nothing"):
        replace_command(pb.ReplaceRequest(client_id=3, seq=1, order_id="3.1"))
    _, _, command = replace_command(
        pb.ReplaceRequest(client_id=3, seq=2, order_id="3.1", quantity_delta=-5)
    )
    assert command.order_id == "3.1"


def test_event_round_trip():
    message = event_message(Filled("1.1", "2.1", 100, 5))
    assert (message.kind, message.order_id, message.contra_order_id) == ("fill", "1.1", "2.1")
    assert event_dict(message) == Filled("1.1", "2.1", 100, 5).to_dict()


@pytest.mark.parametrize("order", [
    pb.SessionOrder(submit=pb.SubmitOrderRequest(client_id=3, seq=4, symbol="AAPL", side=pb.SELL,
                                                 price=100, quantity=10, stop_price=90,
                                                 all_or_none=True)),
    pb.SessionOrder(submit=pb.SubmitOrderRequest(client_id=3, seq=5, symbol="MSFT", side=pb.BUY,
                                                 quantity=10, immediate_or_cancel=True)),
    pb.SessionOrder(cancel=pb.CancelRequest(client_id=3, seq=6, order_id="3.4")),
    pb.SessionOrder(cancel=pb.CancelRequest(client_id=3, seq=7, order_id="3.4", symbol="AAPL")),
    pb.SessionOrder(replace=pb.ReplaceRequest(client_id=3, seq=8, order_id="3.4",
                                              quantity_delta=-2, new_price=101)),
])
def test_a_session_order_encodes_like_the_unary_request(order):
    """A session's submit is encoded without building an AddOrder (orderbook.codec Rule 5): the
    same ids, bytes and symbol as the unary path's command."""
    request = getattr(order, order.WhichOneof("request"))
    unary = {"submit": submit_command, "cancel": cancel_command,
             "replace": replace_command}[order.WhichOneof("request")]
    client_id, seq, command = unary(request)
    assert session_order(order) == (client_id, seq, encode_command(command), command.symbol)


@pytest.mark.parametrize(("changes", "message"), [
    ({"client_id": 0}, "client_id"), ({"side": pb.SIDE_UNSPECIFIED}, "side"),
    ({"quantity": 0}, "quantity"), ({"symbol": "X" * 17}, "symbol"),
])
def test_a_bad_session_submit_says_what_the_unary_one_says(changes, message):
    with pytest.raises(BadRequest, match=message):
        session_order(pb.SessionOrder(submit=_submit(**changes)))


_EVENTS = (Accepted("3.4"), Filled("3.4", "2.1", 100, 5), Cancelled("3.4", 5),
           Rejected("3.4", "no"), Replaced("3.4", 7, 101), CancelRejected("3.4", "gone"),
           ReplaceRejected("3.4", "gone"), Trade("AAPL", 100, 5))


def _built_apart(reply, replica_id, unsolicited):
    """The reply as it was built before convert Rule 4: each event apart, then the message."""
    events = [event_message(event) for event in reply.events]
    if reply.error:
        events.append(pb.OrderEvent(kind="rejected", order_id=reply.order_id, reason=reply.error))
    return pb.OrderReply(client_id=reply.client_id, seq=reply.seq, order_id=reply.order_id,
                         events=events, log_index=reply.log_index, duplicate=reply.duplicate,
                         replica_id=replica_id, unsolicited=unsolicited)


def test_replies_built_in_place_equal_replies_built_apart():
    replies = [Reply(3, 4, "3.4", _EVENTS, 12), Reply(3, 5, "3.5", (), 13, error="bad"),
               Reply(3, 4, "3.4", _EVENTS[:2], 12, duplicate=True), Reply(0, 0, "", (), 14)]
    for reply in replies:
        assert reply_message(reply, 2) == _built_apart(reply, 2, False)
    response = session_response(replies[:2], replies[2:], 3)
    assert response == pb.SessionResponse(
        reports=[_built_apart(r, 3, False) for r in replies[:2]]
        + [_built_apart(r, 3, True) for r in replies[2:]])
    assert response.SerializeToString() == pb.SessionResponse(
        reports=[reply_message(r, 3) for r in replies[:2]]
        + [reply_message(r, 3, unsolicited=True) for r in replies[2:]]).SerializeToString()
