"""Fan-out of market data (trades, BBO and depth changes) to streaming subscribers.

Rule 1: ``publish`` is called by the apply path and never blocks: each subscriber has its own
        bounded queue, and a slow subscriber never slows the exchange down.
Rule 2: updates reach each subscriber in log order, with the log index that produced them.
Rule 3: trades are never dropped or merged. A subscriber more than ``CONFLATE_AFTER`` updates
        behind gets its BBO and depth updates conflated: a new BBO of a symbol replaces the
        symbol's BBO still queued, a new depth change is merged with the symbol's queued one
        (newer levels win) and takes its place at the tail; the update that absorbed others is
        marked ``conflated`` and the subscription counts what it absorbed. A subscriber with
        ``SUBSCRIBER_QUEUE_MAX`` trades queued is cut off (its stream ends with
        RESOURCE_EXHAUSTED): losing trades silently is never an option.
Rule 4: ``close`` ends every stream (server shutdown); subscribing after close is refused.
Rule 5: ``next_updates`` never blocks; a subscription's ``on_ready`` (when given) is called when
        its queue stops being empty and when it ends: the reader on the event loop waits for it
        (``exchange.loop_signal``) and then reads.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from exchange.limits import SUBSCRIBER_QUEUE_MAX, SUBSCRIBERS_MAX_DEFAULT, limit_message
from exchange.state_machine import MarketDataEvent
from orderbook import DepthChanged, Trade

CONFLATE_AFTER = 1_000  # queued updates after which BBO/depth updates are conflated
MARKET_DATA_BATCH_MAX = 500  # updates in one MarketDataBatch message
assert CONFLATE_AFTER < SUBSCRIBER_QUEUE_MAX


@dataclass(frozen=True, slots=True)
class Update:
    index: int
    symbol: str
    event: MarketDataEvent


class StreamEnded(Exception):
    """The stream was cut off; the message says why (slow consumer, server shutdown)."""


class _Queued:
    """A queued update; ``alive`` is cleared when it is taken or superseded (Rule 3)."""

    __slots__ = ("alive", "conflated", "update")

    def __init__(self, update: Update, conflated: bool) -> None:
        self.update = update
        self.alive = True
        self.conflated = conflated


def _merge_levels(
    old: tuple[tuple[int, int, int], ...], new: tuple[tuple[int, int, int], ...], best_high: bool
) -> tuple[tuple[int, int, int], ...]:
    levels = {level[0]: level for level in old}
    levels.update((level[0], level) for level in new)
    return tuple(sorted(levels.values(), key=lambda level: level[0], reverse=best_high))


def merge_depth(old: DepthChanged, new: DepthChanged) -> DepthChanged:
    """One depth change equivalent to ``old`` then ``new`` (levels of ``new`` win)."""
    assert old.symbol == new.symbol
    return DepthChanged(new.symbol, _merge_levels(old.bids, new.bids, True),
                        _merge_levels(old.asks, new.asks, False))


class Subscription:
    """One subscriber's queue; read with ``next_updates``."""

    def __init__(self, symbols: frozenset[str], include_depth: bool,
                 on_ready: Callable[[], None] | None = None) -> None:
        self.symbols = symbols  # empty = every symbol
        self.include_depth = include_depth
        self.on_ready = on_ready  # Rule 5
        self._lock = threading.Lock()
        self._items: deque[_Queued] = deque()
        self._live = 0  # alive items in _items
        self._trades = 0  # trades in _items
        self._latest: dict[tuple[type, str], _Queued] = {}  # newest BBO/depth per symbol
        self._end: StreamEnded | None = None
        self.conflated_count = 0  # updates absorbed into later ones (Rule 3)
        self.ended = False

    def wants(self, symbol: str, event: MarketDataEvent) -> bool:
        if self.symbols and symbol not in self.symbols:
            return False
        return self.include_depth or type(event) is not DepthChanged

    def offer(self, update: Update) -> bool:
        """Queue ``update`` (Rule 3); False (and the stream is ended) when it must be cut off."""
        with self._lock:
            if self.ended:
                return False
            kind = type(update.event)
            conflated = False
            if kind is Trade:
                if self._trades >= SUBSCRIBER_QUEUE_MAX:
                    self._end_locked(StreamEnded(
                        f"subscriber fell {SUBSCRIBER_QUEUE_MAX} trades behind"))
                    return False
                self._trades += 1
            elif self._live >= CONFLATE_AFTER:
                old = self._latest.get((kind, update.symbol))
                if old is not None and old.alive:
                    old.alive = False
                    self._live -= 1
                    self.conflated_count += 1
                    conflated = True
                    if kind is DepthChanged:
                        event = merge_depth(old.update.event, update.event)  # type: ignore[arg-type]
                        update = Update(update.index, update.symbol, event)
            item = _Queued(update, conflated)
            if kind is not Trade:
                self._latest[(kind, update.symbol)] = item
            items = self._items
            items.append(item)
            self._live += 1
            if len(items) > 2 * SUBSCRIBER_QUEUE_MAX:  # bound the superseded entries too
                self._items = deque(i for i in items if i.alive)
            if self._live == 1 and self.on_ready is not None:
                self.on_ready()
            return True

    def end(self, reason: StreamEnded) -> None:
        with self._lock:
            self._end_locked(reason)

    def _end_locked(self, reason: StreamEnded) -> None:
        if not self.ended:
            self.ended = True
            self._end = reason
            if self.on_ready is not None:
                self.on_ready()

    def next_updates(self, count_max: int) -> list[tuple[Update, bool]]:
        """Up to ``count_max`` ``(update, conflated)`` queued now, in log order (Rule 5: empty
        when none); raises ``StreamEnded`` once none are left."""
        assert count_max >= 1
        with self._lock:
            out: list[tuple[Update, bool]] = []
            items = self._items
            while items and len(out) < count_max:
                item = items.popleft()
                if not item.alive:
                    continue
                item.alive = False
                self._live -= 1
                if type(item.update.event) is Trade:
                    self._trades -= 1
                out.append((item.update, item.conflated))
            if not out and self._end is not None:
                raise self._end
            return out


class MarketDataHub:
    """The set of live subscriptions of one server."""

    def __init__(self, subscribers_max: int = SUBSCRIBERS_MAX_DEFAULT) -> None:
        assert subscribers_max >= 1, subscribers_max
        self.subscribers_max = subscribers_max
        self._lock = threading.Lock()
        self._subscriptions: list[Subscription] = []
        self._closed = False

    def subscribe(self, symbols: Iterable[str], include_depth: bool,
                  on_ready: Callable[[], None] | None = None) -> Subscription:
        with self._lock:
            if self._closed:
                raise StreamEnded("server is shutting down")
            if len(self._subscriptions) >= self.subscribers_max:
                raise StreamEnded(limit_message(
                    "SUBSCRIBERS_MAX_DEFAULT", self.subscribers_max,
                    "market-data streams on this server (--grpc-workers / 4)"))
            subscription = Subscription(frozenset(symbols), include_depth, on_ready)
            self._subscriptions = [*self._subscriptions, subscription]
            return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            self._subscriptions = [s for s in self._subscriptions if s is not subscription]

    @property
    def subscriber_count(self) -> int:
        return len(self._subscriptions)

    def publish(self, updates: Iterable[Update]) -> None:
        """Offer ``updates`` (in log order) to every interested subscriber.

        Cost: O(updates x subscribers). Callers skip building updates when ``subscriber_count`` is 0
        (the common case on the hot path).
        """
        subscriptions = self._subscriptions  # copy-on-write list: safe to iterate unlocked
        if not subscriptions:
            return
        dead: list[Subscription] = []
        for update in updates:
            for subscription in subscriptions:
                if subscription.wants(update.symbol, update.event) and not subscription.offer(
                    update
                ):
                    dead.append(subscription)
        for subscription in dead:
            self.unsubscribe(subscription)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            subscriptions, self._subscriptions = self._subscriptions, []
        for subscription in subscriptions:
            subscription.end(StreamEnded("server is shutting down"))
