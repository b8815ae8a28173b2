"""kvstores.watch: the counts behind WATCH and cas, and the waiters of blocking pops."""

from kvstores.watch import KeyEvents


def test_a_watched_key_changes_only_with_a_later_write_to_it_or_to_an_unknown_key():
    events = KeyEvents()
    events.written([b"a"], [b"a"])  # nobody watches: nothing remembered
    mine: dict[bytes, int] = {}
    events.watch([b"a", b"b"], mine)
    assert not events.changed(mine)
    events.touch([b"c"])
    assert not events.changed(mine)
    events.touch([b"b"])
    assert events.changed(mine)
    other: dict[bytes, int] = {}
    events.watch([b"b"], other)  # watched after that write: unchanged for this one
    assert not events.changed(other)
    events.touch(None)  # FLUSHALL, or a write whose keys are not known
    assert events.changed(other)


def test_unwatch_forgets_keys_nobody_watches():
    events = KeyEvents()
    first: dict[bytes, int] = {}
    second: dict[bytes, int] = {}
    events.watch([b"k"], first)
    events.watch([b"k"], second)
    events.touch([b"k"])
    events.unwatch(first)
    assert first == {} and events.watchers == {b"k": 1} and events.changed(second)
    events.unwatch(second)
    assert events.watchers == {} and not events.active


class _Waiter:
    def __init__(self) -> None:
        self.woken = 0

    def wake(self) -> None:
        self.woken += 1


def test_a_write_wakes_the_longest_waiter_of_each_key_and_none_wakes_all():
    events = KeyEvents()
    first, second, third = _Waiter(), _Waiter(), _Waiter()
    events.wait((b"q",), first)
    events.wait((b"q", b"r"), second)
    events.wait((b"r",), third)
    events.written([b"q"], [b"q"])
    assert (first.woken, second.woken, third.woken) == (1, 0, 0)
    events.stop_waiting((b"q",), first)
    events.written([b"q", b"r"], [b"q", b"r"])
    assert (second.woken, third.woken) == (2, 0)  # head of q and head of r: the same waiter
    events.wake(None)
    assert (first.woken, second.woken, third.woken) == (1, 3, 1)
    events.stop_waiting((b"q", b"r"), second)
    events.stop_waiting((b"r",), third)
    assert events.waiters == {} and not events.active
