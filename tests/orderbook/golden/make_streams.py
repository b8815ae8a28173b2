"""Regenerate the golden streams:
`python tests/orderbook/golden/make_streams.py --driver PATH --fixed-driver PATH2`.

Rule 1: streams are seeded and avoid the documented differences from Liquibook
        (docs/orderbook.md): no replace below the filled quantity, unique ids per add. Limit,
        market, AON, IOC, FOK, cancels and replaces (price and quantity, of live, filled and
        unknown orders) are all in. `stream_N` has no stop orders and is compared with
        Liquibook as is; `stops_N` has stop orders and is compared with PATH2, the same driver
        built against Liquibook with only the documented stop differences changed (trigger
        direction, acceptance order of a triggered batch, cancel of a triggered IOC remainder);
        the reason text of a replace of a waiting stop is normalized to Liquibook's.
Rule 2: PATH is a Liquibook replay driver built outside this repository (Liquibook's headers are
        not vendored here): it reads `add ID SIDE PRICE QTY STOP AON IOC` / `cancel ID` /
        `replace ID DELTA PRICE` lines and prints events in the replay's JSON-lines format.
        Its output is stored as stream_N.liquibook.jsonl next to the input stream_N.jsonl.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
from pathlib import Path

from orderbook import AddOrder, CancelOrder, Command, Market, ReplaceOrder, Side

HERE = Path(__file__).resolve().parent
COMMANDS_PER_STREAM = 400
PLAIN = {"stream_1": (1, 0.3), "stream_2": (2, 0.3), "stream_3": (3, 0.7), "stream_4": (4, 0.7)}
"""name: (seed, AON share) of the stop-free streams."""
STOPS = {"stops_1": (11, 0.3), "stops_2": (12, 0.6)}
"""name: (seed, AON share) of the streams with 25% stop orders."""
STOP_SHARE = 0.25


def make_stream(seed: int, aon_share: float = 0.3, stop_share: float = 0.0) -> list[Command]:
    """A seeded stream; our engine runs alongside to keep replace deltas >= -open (Rule 1)."""
    rng = random.Random(seed)
    market = Market()
    used: list[str] = []
    stream: list[Command] = []
    for number in range(COMMANDS_PER_STREAM):
        roll = rng.random()
        cmd: Command
        if roll < 0.12 and used:
            cmd = CancelOrder(rng.choice(used + ["ghost"]))
        elif roll < 0.24 and used:
            order_id = rng.choice(used)
            book = market.book("AAPL")
            order = book.order(order_id) if book is not None else None
            low = -order.open_qty if order is not None else -5
            delta = rng.randint(low, 8)
            cmd = ReplaceOrder(order_id, delta, rng.choice([0, 0, rng.randint(95, 105)]))
        else:
            order_id = f"g{number}"
            used.append(order_id)
            price = 0 if rng.random() < 0.1 else rng.randint(95, 105)
            stop = rng.randint(95, 105) if rng.random() < stop_share else 0
            cmd = AddOrder(order_id, "AAPL", rng.choice([Side.BUY, Side.SELL]), price,
                           rng.randint(1, 30), stop, rng.random() < aon_share,
                           rng.random() < 0.15)
        market.apply(cmd)
        stream.append(cmd)
    return stream


def to_json(cmd: Command) -> str:
    if isinstance(cmd, AddOrder):
        fields = {"op": "add", "id": cmd.order_id, "side": cmd.side.name.lower(),
                  "price": cmd.price, "qty": cmd.qty, "aon": cmd.aon, "ioc": cmd.ioc}
        if cmd.stop:
            fields["stop"] = cmd.stop
        return json.dumps(fields)
    if isinstance(cmd, CancelOrder):
        return json.dumps({"op": "cancel", "id": cmd.order_id})
    return json.dumps({"op": "replace", "id": cmd.order_id, "qty_delta": cmd.qty_delta,
                       "price": cmd.price})


def to_driver(cmd: Command) -> str:
    if isinstance(cmd, AddOrder):
        return (f"add {cmd.order_id} {cmd.side.name.lower()} {cmd.price} {cmd.qty} {cmd.stop} "
                f"{int(cmd.aon)} {int(cmd.ioc)}")
    if isinstance(cmd, CancelOrder):
        return f"cancel {cmd.order_id}"
    return f"replace {cmd.order_id} {cmd.qty_delta} {cmd.price}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--driver", required=True, help="Liquibook replay driver executable")
    parser.add_argument("--fixed-driver", required=True,
                        help="the driver built with the documented stop differences applied")
    args = parser.parse_args()
    jobs = [(name, seed, aon, 0.0, args.driver) for name, (seed, aon) in PLAIN.items()]
    jobs += [(name, seed, aon, STOP_SHARE, args.fixed_driver)
             for name, (seed, aon) in STOPS.items()]
    for name, seed, aon_share, stop_share, driver in jobs:
        stream = make_stream(seed, aon_share, stop_share)
        (HERE / f"{name}.jsonl").write_text("".join(to_json(c) + "\n" for c in stream))
        result = subprocess.run([driver], input="".join(to_driver(c) + "\n" for c in stream),
                                capture_output=True, text=True, check=True, timeout=60)
        (HERE / f"{name}.expected.jsonl").write_text(result.stdout)

if __name__ == "__main__":
    main()
