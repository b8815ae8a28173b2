"""How the load generator reads a reply: its outcome and whether the order still rests."""

import pytest

from exchange.proto import exchange_pb2 as pb
from traders.load import ACKED, REJECTED, _judge, _outcome


def _reply(order_id, *events):
    made = [pb.OrderEvent(kind=kind, order_id=order, quantity=qty) for kind, order, qty in events]
    return pb.OrderReply(order_id=order_id, log_index=1, events=made)


@pytest.mark.parametrize(("events", "quantity", "judged"), [
    ((("accept", "1.1", 0),), 10, (ACKED, True)),
    ((("accept", "1.1", 0), ("fill", "1.1", 4), ("fill", "2.1", 9)), 10, (ACKED, True)),
    ((("accept", "1.1", 0), ("fill", "1.1", 4), ("fill", "1.1", 6)), 10, (ACKED, False)),
    ((("accept", "1.1", 0), ("cancel", "1.1", 10)), 10, (ACKED, False)),
    ((("cancel", "2.1", 3),), 10, (ACKED, True)),  # another order's cancel
    ((("reject", "1.1", 0),), 10, (REJECTED, False)),
    ((("cancel_reject", "1.5", 0),), 0, (REJECTED, False)),
    ((("accept", "1.1", 0),), 0, (ACKED, False)),  # quantity 0: never resting
])
def test_a_reply_is_judged_in_one_pass(events, quantity, judged):
    """traders.load: outcome and whether the order still rests, read in one pass."""
    reply = _reply("1.1", *events)
    assert _judge(reply, quantity) == judged
    assert _outcome(reply) == judged[0]
