"""The trader client's fail-over rules that need no server (traders.client Rule 4)."""

from __future__ import annotations

from traders import client as tc


def test_next_untried_skips_servers_that_failed_in_this_request():
    connection = tc.ClusterConnection(("a:1", "b:2", "c:3"))
    try:
        assert tc._next_untried(connection, "a:1", {}) == "b:2"
        assert tc._next_untried(connection, "b:2", {"c:3": 1}) == "a:1"
        assert tc._next_untried(connection, "c:3", {"a:1": 1}) == "b:2"
        failed = {"a:1": 1, "b:2": 2, "c:3": 3}
        assert tc._next_untried(connection, "a:1", failed) == "b:2"  # all failed: plain next
        assert failed == {}, "and the failures are forgotten"
    finally:
        connection.close()


def test_back_off_constants_keep_their_order():
    assert tc.BACKOFF_INITIAL_S <= tc.BACKOFF_MAX_S <= tc.BACKOFF_SLOW_MAX_S
    assert tc.BACKOFF_MAX_S < tc.FAILED_FORGET_S <= tc.BACKOFF_FAST_WINDOW_S
