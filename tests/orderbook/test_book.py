"""One test per matching rule (Liquibook semantics), each through the checking Harness."""

from __future__ import annotations

from orderbook import Market
from tests.orderbook.helpers import BUY, SELL, Harness, accept, cancel, fill


def test_orders_that_do_not_cross_rest_best_first() -> None:
    h = Harness()
    assert h.add("b1", BUY, 99, 10) == [accept("b1")]
    h.add("b2", BUY, 98, 5)
    h.add("s1", SELL, 101, 7)
    h.add("s2", SELL, 101, 3)
    assert h.depth() == ([(99, 10, 1), (98, 5, 1)], [(101, 10, 2)])


def test_price_then_time_priority_and_trade_at_resting_price() -> None:
    h = Harness()
    h.add("a", SELL, 101, 10)
    h.add("b", SELL, 100, 10)
    h.add("c", SELL, 100, 10)
    assert h.add("x", BUY, 102, 25) == [accept("x"), *fill("x", "b", 100, 10),
                                        *fill("x", "c", 100, 10), *fill("x", "a", 101, 5)]
    assert h.depth() == ([], [(101, 5, 1)])


def test_partial_fill_rests_the_remainder() -> None:
    h = Harness()
    h.add("s", SELL, 100, 10)
    assert h.add("b", BUY, 100, 25) == [accept("b"), *fill("b", "s", 100, 10)]
    assert h.depth() == ([(100, 15, 1)], [])


def test_market_order_sweeps_levels() -> None:
    h = Harness()
    h.add("s1", SELL, 100, 10)
    h.add("s2", SELL, 101, 10)
    assert h.add("m", BUY, 0, 15) == [accept("m"), *fill("m", "s1", 100, 10),
                                      *fill("m", "s2", 101, 5)]


def test_unfilled_market_order_rests_and_trades_at_inbound_price() -> None:
    h = Harness()
    assert h.add("m", BUY, 0, 10) == [accept("m")]
    assert h.depth() == ([], [])  # market orders are not part of depth (Liquibook)
    assert h.add("s", SELL, 105, 4) == [accept("s"), *fill("s", "m", 105, 4)]


def test_market_against_market_trades_at_last_trade_price() -> None:
    h = Harness()
    h.add("s0", SELL, 100, 1)
    h.add("b0", BUY, 100, 1)
    h.add("m1", BUY, 0, 10)
    assert h.add("m2", SELL, 0, 10) == [accept("m2"), *fill("m2", "m1", 100, 10)]


def test_market_against_market_without_a_last_trade_price_does_not_trade() -> None:
    h = Harness()
    h.add("m1", BUY, 0, 10)
    assert h.add("m2", SELL, 0, 10) == [accept("m2")]
    assert h.market.order_count() == 2


def test_resting_aon_too_big_is_skipped_not_blocking() -> None:
    h = Harness()
    h.add("a", SELL, 100, 50, aon=True)
    h.add("s", SELL, 101, 10)
    assert h.add("b", BUY, 101, 20) == [accept("b"), *fill("b", "s", 101, 10)]
    assert h.depth() == ([(101, 10, 1)], [(100, 50, 1)])  # crossed, blocked by the AON


def test_resting_aon_fills_whole_when_inbound_covers_it() -> None:
    h = Harness()
    h.add("a", SELL, 100, 50, aon=True)
    assert h.add("b", BUY, 100, 60) == [accept("b"), *fill("b", "a", 100, 50)]
    assert h.depth() == ([(100, 10, 1)], [])


def test_inbound_aon_fills_across_several_orders() -> None:
    h = Harness()
    h.add("s1", SELL, 100, 10)
    h.add("s2", SELL, 101, 10)
    assert h.add("b", BUY, 101, 20, aon=True) == [accept("b"), *fill("b", "s1", 100, 10),
                                                  *fill("b", "s2", 101, 10)]


def test_inbound_aon_that_cannot_fill_rests_whole() -> None:
    h = Harness()
    h.add("s1", SELL, 100, 10)
    assert h.add("b", BUY, 100, 20, aon=True) == [accept("b")]
    assert h.depth() == ([(100, 20, 1)], [(100, 10, 1)])


def test_skipped_aon_gets_a_chance_when_the_inbound_rests() -> None:
    # Liquibook's check_deferred_aons: the resting AON bid matches both asks once s2 rests.
    h = Harness()
    h.add("s1", SELL, 100, 10)
    h.add("b", BUY, 100, 20, aon=True)
    assert h.add("s2", SELL, 100, 10) == [accept("s2"), *fill("b", "s1", 100, 10),
                                          *fill("b", "s2", 100, 10)]
    assert h.market.order_count() == 0


def test_aon_against_aon() -> None:
    h = Harness()
    h.add("a", SELL, 100, 10, aon=True)
    assert h.add("b", BUY, 100, 5, aon=True) == [accept("b")]  # neither can fill the other
    assert h.add("c", BUY, 100, 10, aon=True) == [accept("c"), *fill("c", "a", 100, 10)]


def test_aon_collects_deferred_orders_before_a_later_one() -> None:
    h = Harness()
    h.add("s1", SELL, 100, 6)
    h.add("s2", SELL, 100, 6)
    h.add("s3", SELL, 100, 6)
    assert h.add("b", BUY, 100, 15, aon=True) == [accept("b"), *fill("b", "s1", 100, 6),
                                                  *fill("b", "s2", 100, 6),
                                                  *fill("b", "s3", 100, 3)]


def test_ioc_remainder_is_cancelled() -> None:
    h = Harness()
    h.add("s", SELL, 100, 10)
    assert h.add("b", BUY, 100, 15, ioc=True) == [accept("b"), *fill("b", "s", 100, 10),
                                                  cancel("b", 5)]
    assert h.add("c", BUY, 100, 15, ioc=True) == [accept("c"), cancel("c", 15)]
    assert h.depth() == ([], [])


def test_aon_plus_ioc_is_fill_or_kill() -> None:
    h = Harness()
    h.add("s", SELL, 100, 10)
    assert h.add("b", BUY, 100, 15, aon=True, ioc=True) == [accept("b"), cancel("b", 15)]
    assert h.add("c", BUY, 100, 10, aon=True, ioc=True) == [accept("c"),
                                                            *fill("c", "s", 100, 10)]


def _trade_at(h: Harness, price: int, tag: str) -> None:
    h.add(f"{tag}s", SELL, price, 1)
    h.add(f"{tag}b", BUY, price, 1)


def test_stop_before_any_trade_goes_straight_to_the_book() -> None:
    h = Harness()
    assert h.add("st", BUY, 105, 10, stop=103) == [accept("st")]
    assert h.depth() == ([(105, 10, 1)], [])


def test_buy_stop_waits_then_triggers_when_trade_reaches_it() -> None:
    h = Harness()
    _trade_at(h, 100, "t0")
    h.add("ask", SELL, 103, 10)
    assert h.add("st", BUY, 0, 5, stop=102) == [accept("st")]
    assert h.depth() == ([], [(103, 10, 1)])  # waiting off-book
    h.add("t1s", SELL, 102, 1)
    assert h.add("t1b", BUY, 102, 1) == [accept("t1b"), *fill("t1b", "t1s", 102, 1),
                                         *fill("st", "ask", 103, 5)]


def test_sell_stop_triggers_when_price_falls_to_it() -> None:
    h = Harness()
    _trade_at(h, 100, "t0")
    h.add("bid", BUY, 97, 10)
    assert h.add("st", SELL, 96, 5, stop=98) == [accept("st")]
    _trade_at(h, 99, "t1")
    assert h.depth() == ([(97, 10, 1)], [])
    h.add("t2b", BUY, 98, 1)
    assert h.add("t2s", SELL, 98, 1) == [accept("t2s"), *fill("t2s", "t2b", 98, 1),
                                         *fill("st", "bid", 97, 5)]


def test_stop_already_reached_goes_to_the_book() -> None:
    h = Harness()
    _trade_at(h, 100, "t0")
    h.add("st", BUY, 99, 5, stop=100)
    assert h.depth() == ([(99, 5, 1)], [])


def test_triggered_stops_enter_in_acceptance_order() -> None:
    h = Harness()
    _trade_at(h, 100, "t0")
    h.add("ask", SELL, 110, 5)
    h.add("st1", BUY, 0, 5, stop=103)  # accepted first, higher stop
    h.add("st2", BUY, 0, 5, stop=102)
    h.add("t1s", SELL, 104, 1)
    events = h.add("t1b", BUY, 104, 1)
    assert events[4:] == [*fill("st1", "ask", 110, 5)]  # st1 first although st2's stop is lower
    assert h.market.order_count() == 1  # st2 rests as a market order


def test_stop_triggers_cascade() -> None:
    h = Harness()
    _trade_at(h, 100, "t0")
    h.add("a1", SELL, 102, 1)
    h.add("a2", SELL, 104, 1)
    h.add("st1", BUY, 0, 1, stop=101)  # its trade at 102 triggers st2
    h.add("st2", BUY, 0, 1, stop=102)
    h.add("t1s", SELL, 101, 1)
    events = h.add("t1b", BUY, 101, 1)
    assert events[4:] == [*fill("st1", "a1", 102, 1), *fill("st2", "a2", 104, 1)]
    book = h.market.book("X")
    assert book is not None and book.last_trade_price == 104


def test_triggered_ioc_stop_remainder_is_cancelled() -> None:
    h = Harness()
    _trade_at(h, 100, "t0")
    h.add("st", BUY, 0, 5, stop=101, ioc=True)
    h.add("t1s", SELL, 101, 1)
    assert h.add("t1b", BUY, 101, 1)[4:] == [cancel("st", 5)]


def test_cancel_waiting_stop() -> None:
    h = Harness()
    _trade_at(h, 100, "t0")
    h.add("st", BUY, 0, 5, stop=102)
    assert h.cancel("st") == [cancel("st", 5)]
    assert h.market.order_count() == 0


def test_replace_waiting_stop_is_rejected() -> None:
    h = Harness()
    _trade_at(h, 100, "t0")
    h.add("st", BUY, 0, 5, stop=102)
    assert h.replace("st", 1) == [{"event": "replace_reject", "id": "st",
                                   "reason": "stop order has not triggered yet"}]


def test_cancel_reports_open_quantity_and_frees_the_id() -> None:
    h = Harness()
    h.add("b", BUY, 100, 10)
    h.add("s", SELL, 100, 4)
    assert h.cancel("b") == [cancel("b", 6)]
    assert h.cancel("b") == [{"event": "cancel_reject", "id": "b", "reason": "not found"}]
    assert h.add("b", BUY, 100, 1) == [accept("b")]  # ids are unique among live orders only


def test_cancel_of_filled_order_is_rejected() -> None:
    h = Harness()
    h.add("b", BUY, 100, 10)
    h.add("s", SELL, 100, 10)
    assert h.cancel("b") == [{"event": "cancel_reject", "id": "b", "reason": "not found"}]


def test_replace_loses_time_priority_even_for_a_decrease() -> None:
    h = Harness()
    h.add("a", BUY, 100, 10)
    h.add("b", BUY, 100, 10)
    assert h.replace("a", -5) == [{"event": "replace", "id": "a", "qty": 5, "price": 100}]
    assert h.add("s", SELL, 100, 10) == [accept("s"), *fill("s", "b", 100, 10)]


def test_replace_with_new_price_rematches() -> None:
    h = Harness()
    h.add("b", BUY, 99, 10)
    h.add("s", SELL, 101, 4)
    assert h.replace("b", 0, 101) == [{"event": "replace", "id": "b", "qty": 10, "price": 101},
                                      *fill("b", "s", 101, 4)]
    assert h.depth() == ([(101, 6, 1)], [])


def test_replace_increase_and_down_to_the_filled_quantity() -> None:
    h = Harness()
    h.add("b", BUY, 100, 10)
    h.add("s", SELL, 100, 4)
    assert h.replace("b", 5) == [{"event": "replace", "id": "b", "qty": 15, "price": 100}]
    assert h.depth() == ([(100, 11, 1)], [])
    assert h.replace("b", -11) == [{"event": "replace", "id": "b", "qty": 4, "price": 100},
                                   cancel("b", 0)]
    assert h.market.order_count() == 0


def test_replace_below_filled_quantity_is_rejected() -> None:
    h = Harness()
    h.add("b", BUY, 100, 10)
    h.add("s", SELL, 100, 4)
    assert h.replace("b", -7) == [{"event": "replace_reject", "id": "b",
                                   "reason": "replace would lower quantity below filled quantity"}]
    assert h.depth() == ([(100, 6, 1)], [])


def test_replace_of_filled_order_is_rejected() -> None:
    h = Harness()
    h.add("b", BUY, 100, 10)
    h.add("s", SELL, 100, 10)
    assert h.replace("b", 5) == [{"event": "replace_reject", "id": "b", "reason": "not found"}]


def test_replace_size_change_lets_an_aon_match() -> None:
    h = Harness()
    h.add("a", SELL, 100, 20, aon=True)
    h.add("b", BUY, 100, 10)
    assert h.replace("a", -10) == [{"event": "replace", "id": "a", "qty": 10, "price": 100},
                                   *fill("a", "b", 100, 10)]


def test_event_order_of_one_command_with_market_data() -> None:
    h = Harness()
    h.add("s1", SELL, 100, 5)
    h.add("s2", SELL, 101, 5)
    events = [e.to_dict()["event"] for e in h.market.apply(
        __import__("orderbook").AddOrder("b", "X", BUY, 101, 15, ioc=True))]
    assert events == ["accept", "fill", "fill", "trade", "fill", "fill", "trade", "cancel",
                      "depth_change", "bbo"]


def test_depth_and_bbo_events() -> None:
    from orderbook import AddOrder, BboChanged, DepthChanged

    market = Market()
    events = market.apply(AddOrder("b1", "X", BUY, 100, 10))
    assert events[1:] == [DepthChanged("X", ((100, 10, 1),), ()), BboChanged("X", 100, 10, 0, 0)]
    events = market.apply(AddOrder("b2", "X", BUY, 99, 10))  # below the best: no BBO change
    assert events[1:] == [DepthChanged("X", ((99, 10, 1),), ())]
    events = market.apply(AddOrder("s1", "X", SELL, 99, 15))
    assert events[-2:] == [DepthChanged("X", ((100, 0, 0), (99, 5, 1)), ()),
                           BboChanged("X", 99, 5, 0, 0)]


def test_book_queries() -> None:
    h = Harness()
    h.add("b1", BUY, 100, 10)
    h.add("b2", BUY, 99, 10)
    h.add("s1", SELL, 102, 3)
    book = h.market.book("X")
    assert book is not None
    assert book.bbo() == (100, 10, 102, 3)
    assert book.depth(1) == ([(100, 10, 1)], [(102, 3, 1)])
    assert [o.order_id for o in book.resting_orders()] == ["b1", "b2", "s1"]
    assert book.order("b2") is not None and book.order("zz") is None
    assert h.market.book("Y") is None


def test_replaced_order_trades_at_its_old_price_during_the_replace() -> None:
    # Liquibook's create_trade reads the order object's price, updated only after matching.
    h = Harness()
    _trade_at(h, 100, "t0")
    h.add("b", BUY, 105, 30, aon=True)
    h.add("c", SELL, 0, 7)
    h.add("a", SELL, 0, 10, aon=True)
    assert h.replace("a", 13, 104) == [{"event": "replace", "id": "a", "qty": 23, "price": 104},
                                       *fill("b", "c", 105, 7), *fill("b", "a", 105, 23)]
