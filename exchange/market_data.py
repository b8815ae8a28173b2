"""Fan-out of market data (trades, BBO and depth changes) to streaming subscribers.

Rule 1: ``publish`` is called by the apply path (the consensus pump) and never blocks: each
        subscriber has a bounded queue; a subscriber that falls ``SUBSCRIBER_QUEUE_MAX`` updates
        behind is cut off (its stream ends with RESOURCE_EXHAUSTED) instead of slowing the exchange
        down.
Rule 2: updates reach each subscriber in log order, with the log index that produced them.
Rule 3: ``close`` ends every stream (server shutdown); subscribing after close is refused.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable
from dataclasses import dataclass

from exchange.state_machine import MarketDataEvent
from orderbook import DepthChanged

SUBSCRIBER_QUEUE_MAX = 10_000  # updates buffered per subscriber before it is cut off
SUBSCRIBERS_MAX_DEFAULT = 8  # concurrent streams per server (each holds a gRPC worker thread)


@dataclass(frozen=True, slots=True)
class Update:
    index: int
    symbol: str
    event: MarketDataEvent


class StreamEnded(Exception):
    """The stream was cut off; the message says why (slow consumer, server shutdown)."""


class Subscription:
    """One subscriber's queue; iterate with ``next_update``."""

    def __init__(self, symbols: frozenset[str], include_depth: bool) -> None:
        self.symbols = symbols  # empty = every symbol
        self.include_depth = include_depth
        self._queue: queue.Queue[Update | StreamEnded] = queue.Queue(SUBSCRIBER_QUEUE_MAX + 1)
        self.ended = False

    def wants(self, symbol: str, event: MarketDataEvent) -> bool:
        if self.symbols and symbol not in self.symbols:
            return False
        return self.include_depth or not isinstance(event, DepthChanged)

    def offer(self, update: Update) -> bool:
        """Queue ``update``; False (and the stream is ended) when the subscriber is too slow."""
        if self.ended:
            return False
        if self._queue.qsize() >= SUBSCRIBER_QUEUE_MAX:
            self.end(StreamEnded(f"subscriber fell {SUBSCRIBER_QUEUE_MAX} updates behind"))
            return False
        self._queue.put_nowait(update)
        return True

    def end(self, reason: StreamEnded) -> None:
        if not self.ended:
            self.ended = True
            self._queue.put_nowait(reason)

    def next_update(self, timeout_s: float) -> Update | None:
        """The next update, ``None`` after ``timeout_s`` without one; raises ``StreamEnded``."""
        try:
            item = self._queue.get(timeout=timeout_s)
        except queue.Empty:
            return None
        if isinstance(item, StreamEnded):
            raise item
        return item


class MarketDataHub:
    """The set of live subscriptions of one server."""

    def __init__(self, subscribers_max: int = SUBSCRIBERS_MAX_DEFAULT) -> None:
        assert subscribers_max >= 1, subscribers_max
        self.subscribers_max = subscribers_max
        self._lock = threading.Lock()
        self._subscriptions: list[Subscription] = []
        self._closed = False

    def subscribe(self, symbols: Iterable[str], include_depth: bool) -> Subscription:
        with self._lock:
            if self._closed:
                raise StreamEnded("server is shutting down")
            if len(self._subscriptions) >= self.subscribers_max:
                raise StreamEnded(
                    f"too many market-data streams (max {self.subscribers_max} per server)"
                )
            subscription = Subscription(frozenset(symbols), include_depth)
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
