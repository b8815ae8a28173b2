"""``python -m traders shell``: an interactive trader (also scriptable through stdin).

Rule 1: a bad command line prints one ``error:`` line and the shell goes on; only ``quit``, EOF or
        Ctrl-C end it.
Rule 2: order entry goes through one OrderSession (``traders.session``; ``--unary`` uses the
        unary ``TraderClient``), with the same retry and exactly-once rules as the load generator;
        reads (book, status, watch) go to the current leader guess.
Rule 3: with a session, fills of this trader's resting orders caused by other traders arrive as
        unsolicited reports; the shell prints them (``fill (unsolicited) ...``) as they come in
        with the answer to a command, and ``fills`` waits a moment for any.

Commands::

    buy SYMBOL QTY [PRICE] [stop=P] [aon] [ioc]     PRICE omitted or 0 = market order
    sell SYMBOL QTY [PRICE] [stop=P] [aon] [ioc]
    cancel ORDER_ID
    replace ORDER_ID [qty=+N|-N] [price=P]
    book SYMBOL [LEVELS]
    watch SYMBOL [SECONDS]                           market data (trades, BBO, depth); Ctrl-C stops
    fills                                            unsolicited fills of resting orders (session)
    status                                           every server's role, indexes and digests
    quit
"""

from __future__ import annotations

import cmd
import sys
from typing import TextIO

import grpc

from exchange.proto import exchange_pb2 as pb
from exchange.tls import ClientTls
from traders.client import ClientError, ClusterConnection, TraderClient
from traders.session import SessionClient

WATCH_SECONDS_DEFAULT = 10.0
WATCH_SECONDS_MAX = 3600.0
READ_TIMEOUT_S = 2.0
FILLS_WAIT_S = 0.5  # how long ``fills`` listens


class ShellError(ValueError):
    """A command line the shell cannot understand; the message says how to write it."""


def _int(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ShellError(f"{what} must be an integer, got {text!r}") from None


def format_event(event: pb.OrderEvent) -> str:
    parts = [event.kind, event.order_id]
    if event.contra_order_id:
        parts.append(f"contra={event.contra_order_id}")
    if event.price:
        parts.append(f"price={event.price}")
    if event.quantity:
        parts.append(f"qty={event.quantity}")
    if event.reason:
        parts.append(f"reason={event.reason!r}")
    parts.extend(f"{k}={v}" for k, v in sorted(event.extra.items()))
    return " ".join(p for p in parts if p)


def format_update(update: pb.MarketDataUpdate) -> str:
    kind = update.WhichOneof("update")
    head = f"[{update.log_index}] {update.symbol}"
    if kind == "trade":
        return f"{head} trade {update.trade.quantity} @ {update.trade.price}"
    if kind == "bbo":
        b = update.bbo
        return f"{head} bbo {b.bid_quantity} @ {b.bid_price} / {b.ask_quantity} @ {b.ask_price}"
    levels = " ".join(
        f"{side}:{lv.price}x{lv.quantity}({lv.order_count})"
        for side, group in (("bid", update.depth.bids), ("ask", update.depth.asks))
        for lv in group
    )
    return f"{head} depth {levels}"


class TraderShell(cmd.Cmd):
    intro = "mu-exchange trader shell; type help or ? for commands."
    prompt = "trader> "

    def __init__(self, client: TraderClient, stdout: TextIO = sys.stdout,
                 session: SessionClient | None = None) -> None:
        super().__init__(stdout=stdout)
        self.client = client
        self.session = session
        self.use_rawinput = sys.stdin.isatty()

    def _session_call(self, order: pb.SessionOrder) -> None:
        """Send one order on the session and print its answer and any unsolicited fills."""
        session = self.session
        assert session is not None
        seq = getattr(order, order.WhichOneof("request") or "submit").seq
        session.send([order])
        while seq in session.unanswered:
            for report in session.receive():
                self._print_report(report)

    def _print_report(self, reply: pb.OrderReply) -> None:
        if reply.unsolicited:
            for event in reply.events:
                self.say(f"fill (unsolicited, log {reply.log_index}) {format_event(event)}")
            return
        invalid = [e for e in reply.events if e.kind == "rejected"] if not reply.log_index else []
        if invalid:  # refused before execution: the unary call's INVALID_ARGUMENT
            self.say(f"error: {invalid[0].reason.removeprefix('invalid request: ')}")
            return
        self._print_reply(reply)

    def say(self, text: str) -> None:
        self.stdout.write(text + "\n")
        self.stdout.flush()

    def onecmd(self, line: str) -> bool:
        try:
            return super().onecmd(line)
        except ShellError as exc:
            self.say(f"error: {exc}")
        except ClientError as exc:
            self.say(f"error: {exc}")
        except grpc.RpcError as exc:
            code = exc.code().name if isinstance(exc, grpc.Call) else "UNKNOWN"
            details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
            self.say(f"error: {code}: {details}")
        return False

    def default(self, line: str) -> None:
        self.say(f"error: unknown command {line.split()[0]!r}; type help")

    def emptyline(self) -> bool:
        return False

    def _order(self, side: pb.Side, arg: str) -> None:
        words = arg.split()
        if len(words) < 2:
            raise ShellError("usage: buy|sell SYMBOL QTY [PRICE] [stop=P] [aon] [ioc]")
        symbol, quantity = words[0], _int(words[1], "QTY")
        price = stop = 0
        aon = ioc = False
        for word in words[2:]:
            if word == "aon":
                aon = True
            elif word == "ioc":
                ioc = True
            elif word.startswith("stop="):
                stop = _int(word[5:], "stop")
            else:
                price = _int(word, "PRICE")
        if self.session is not None:
            self._session_call(self.session.submit_order(symbol, side, price, quantity, stop,
                                                         aon, ioc))
            return
        result = self.client.submit(symbol, side, price, quantity, stop, aon, ioc)
        self._print_reply(result.reply)

    def _print_reply(self, reply: pb.OrderReply) -> None:
        tag = " (duplicate)" if reply.duplicate else ""
        self.say(f"order {reply.order_id} seq {reply.seq} log {reply.log_index} "
                 f"server {reply.replica_id}{tag}")
        for event in reply.events:
            self.say(f"  {format_event(event)}")

    def do_buy(self, arg: str) -> None:
        """buy SYMBOL QTY [PRICE] [stop=P] [aon] [ioc]: buy (no PRICE = market order)"""
        self._order(pb.BUY, arg)

    def do_sell(self, arg: str) -> None:
        """sell SYMBOL QTY [PRICE] [stop=P] [aon] [ioc]: sell (no PRICE = market order)"""
        self._order(pb.SELL, arg)

    def do_cancel(self, arg: str) -> None:
        """cancel ORDER_ID: cancel one of your orders"""
        words = arg.split()
        if len(words) != 1:
            raise ShellError("usage: cancel ORDER_ID")
        if self.session is not None:
            self._session_call(self.session.cancel_order(words[0]))
            return
        self._print_reply(self.client.cancel(words[0]).reply)

    def do_replace(self, arg: str) -> None:
        """replace ORDER_ID [qty=+N|-N] [price=P]: change quantity and/or price"""
        words = arg.split()
        if not words:
            raise ShellError("usage: replace ORDER_ID [qty=+N|-N] [price=P]")
        delta = price = 0
        for word in words[1:]:
            if word.startswith("qty="):
                delta = _int(word[4:], "qty")
            elif word.startswith("price="):
                price = _int(word[6:], "price")
            else:
                raise ShellError(f"unexpected {word!r}; use qty=+N|-N and/or price=P")
        if self.session is not None:
            self._session_call(self.session.replace_order(words[0], delta, price))
            return
        self._print_reply(self.client.replace(words[0], delta, price).reply)

    def do_fills(self, arg: str) -> None:
        """fills: print fills of your resting orders that other traders caused (session only)"""
        if self.session is None:
            raise ShellError("fills needs a session (the shell runs without --unary)")
        for report in self.session.poll(FILLS_WAIT_S):
            self._print_report(report)

    def do_book(self, arg: str) -> None:
        """book SYMBOL [LEVELS]: the order book as the leader sees it"""
        words = arg.split()
        if not 1 <= len(words) <= 2:
            raise ShellError("usage: book SYMBOL [LEVELS]")
        levels = _int(words[1], "LEVELS") if len(words) == 2 else 10
        connection = self.client.connection
        stub = connection.stub(connection.leader_guess)
        snap = stub.GetBookSnapshot(pb.BookSnapshotRequest(symbol=words[0], levels=levels),
                                    timeout=READ_TIMEOUT_S)
        self.say(f"{snap.symbol} (server {snap.replica_id}, applied {snap.applied_index}, "
                 f"last trade {snap.last_trade_price})")
        for ask in reversed(snap.asks):
            self.say(f"  ask {ask.price:>10} {ask.quantity:>10} ({ask.order_count})")
        self.say("  ----")
        for bid in snap.bids:
            self.say(f"  bid {bid.price:>10} {bid.quantity:>10} ({bid.order_count})")

    def do_watch(self, arg: str) -> None:
        """watch SYMBOL [SECONDS]: stream trades, BBO and depth changes (Ctrl-C stops)"""
        words = arg.split()
        if not 1 <= len(words) <= 2:
            raise ShellError("usage: watch SYMBOL [SECONDS]")
        seconds = float(_int(words[1], "SECONDS")) if len(words) == 2 else WATCH_SECONDS_DEFAULT
        seconds = min(max(seconds, 0.0), WATCH_SECONDS_MAX)
        connection = self.client.connection
        stub = connection.stub(connection.leader_guess)
        stream = stub.StreamMarketData(
            pb.MarketDataRequest(symbols=[words[0]], include_depth=True), timeout=seconds
        )
        self.say(f"watching {words[0]} for {seconds:.0f} s")
        try:
            for update in stream:
                self.say(format_update(update))
        except grpc.RpcError as exc:
            if not isinstance(exc, grpc.Call) or exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                raise
        except KeyboardInterrupt:
            stream.cancel()
        self.say("watch ended")

    def do_status(self, arg: str) -> None:
        """status: every server's role, leader, indexes and digests"""
        for address in self.client.connection.addresses:
            try:
                s = self.client.connection.status(address, READ_TIMEOUT_S)
            except grpc.RpcError as exc:
                code = exc.code().name if isinstance(exc, grpc.Call) else "UNKNOWN"
                self.say(f"  {address}: unreachable ({code})")
                continue
            self.say(f"  {address}: server {s.replica_id} {s.role} leader {s.leader_id} "
                     f"commit {s.commit_index} applied {s.applied_index} "
                     f"digest {s.state_digest[:16]}")

    def do_quit(self, arg: str) -> bool:
        """quit: leave the shell"""
        return True

    do_EOF = do_quit  # noqa: N815 (cmd.Cmd's name for end of input)


def run_shell(addresses: tuple[str, ...], client_id: int, first_seq: int = 1,
              unary: bool = False, tls: ClientTls | None = None) -> int:
    connection = ClusterConnection(addresses, tls)
    session = None if unary else SessionClient(connection, client_id, first_seq=first_seq)
    shell = TraderShell(TraderClient(connection, client_id, first_seq=first_seq),
                        session=session)
    mode = "unary calls" if unary else "an order session"
    shell.say(f"client id {client_id}, first seq {first_seq}; servers {', '.join(addresses)}; "
              f"{mode}")
    try:
        shell.cmdloop()
    except KeyboardInterrupt:
        shell.say("\ninterrupted; bye")
    finally:
        if session is not None:
            session.close()
        connection.close()
    return 0


__all__ = ["TraderShell", "format_event", "format_update", "run_shell"]
