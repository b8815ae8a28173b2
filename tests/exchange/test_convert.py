"""Request validation: every bad field is INVALID_ARGUMENT material with a message."""

import pytest

from exchange.convert import (
    BadRequest,
    cancel_command,
    event_dict,
    event_message,
    replace_command,
    submit_command,
)
from exchange.proto import exchange_pb2 as pb
from orderbook import AddOrder, Filled, Side


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
