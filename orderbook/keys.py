"""SortedKeys: the sorted set of price-level keys of one book side (replaces a SortedList there).

Rule 1: `_lists` holds non-empty sorted runs whose concatenation is strictly increasing (a set),
        `_maxes[i] == _lists[i][-1]`, and `_len` is the total number of keys.
Rule 2: no run holds more than KEYS_RUN_MAX keys, so an insert or delete moves at most that many
        pointers (a run splits in two when it overflows), whatever the number of levels.
Rule 3: only what a book side needs: add, remove, pop the first, read the first two, iterate in
        order. Typed and free of sortedcontainers, so a mypyc build compiles it (issue 18): a
        call into the pure-Python SortedList from compiled code costs as much as it does in pure
        Python, and a thin book adds or drops a level on about every other command.

Costs: add / remove O(log R + KEYS_RUN_MAX) for R runs (bisect in C, one list memmove);
pop_first O(KEYS_RUN_MAX); first / second / len O(1); iteration O(n).
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Iterable, Iterator
from itertools import chain
from typing import Final

KEYS_RUN_MAX: Final = 512
"""Most keys in one run (Rule 2): memmove of 4 KiB at worst; sortedcontainers uses 1000-2000."""


class SortedKeys:
    """A sorted set of int keys, as runs of at most KEYS_RUN_MAX keys (Rules 1-2)."""

    __slots__ = ("_lists", "_maxes", "_len")

    def __init__(self, keys: Iterable[int] = ()) -> None:
        """Build from any iterable of distinct keys. O(n log n)."""
        ordered = sorted(keys)
        self._lists: list[list[int]] = [ordered[start:start + KEYS_RUN_MAX // 2]
                                        for start in range(0, len(ordered), KEYS_RUN_MAX // 2)]
        self._maxes: list[int] = [run[-1] for run in self._lists]
        self._len = len(ordered)
        assert all(a < b for a, b in zip(ordered, ordered[1:], strict=False)), "duplicate keys"

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[int]:
        """Keys in increasing order; the set must not change during the iteration."""
        return chain.from_iterable(self._lists)

    def first(self) -> int:
        """The smallest key. Precondition: not empty."""
        return self._lists[0][0]

    def second(self) -> int:
        """The second smallest key. Precondition: at least two keys."""
        run = self._lists[0]
        return run[1] if len(run) > 1 else self._lists[1][0]

    def add(self, key: int) -> None:
        """Insert `key`. Precondition: not present."""
        maxes = self._maxes
        self._len += 1
        if not maxes:
            self._lists.append([key])
            maxes.append(key)
            return
        index = bisect_left(maxes, key)
        if index == len(maxes):
            index -= 1
            run = self._lists[index]
            run.append(key)
            maxes[index] = key
        else:
            run = self._lists[index]
            assert run[bisect_left(run, key)] != key, "key already present"
            insort(run, key)
        if len(run) > KEYS_RUN_MAX:
            half = len(run) >> 1
            self._lists.insert(index + 1, run[half:])
            maxes.insert(index + 1, run[-1])
            del run[half:]
            maxes[index] = run[-1]

    def remove(self, key: int) -> None:
        """Delete `key`. Precondition: present."""
        maxes = self._maxes
        index = bisect_left(maxes, key)
        run = self._lists[index]
        position = bisect_left(run, key)
        assert run[position] == key, "key not present"
        del run[position]
        self._len -= 1
        if not run:
            del self._lists[index]
            del maxes[index]
        elif position == len(run):
            maxes[index] = run[-1]

    def pop_first(self) -> int:
        """Delete and return the smallest key. Precondition: not empty."""
        run = self._lists[0]
        key = run.pop(0)
        self._len -= 1
        if not run:
            del self._lists[0]
            del self._maxes[0]
        return key

    def _check(self) -> None:
        """Assert Rules 1-2; never mutates."""
        assert len(self._lists) == len(self._maxes)
        flat = [key for run in self._lists for key in run]
        assert len(flat) == self._len
        assert all(a < b for a, b in zip(flat, flat[1:], strict=False))
        for run, top in zip(self._lists, self._maxes, strict=True):
            assert run and run[-1] == top and len(run) <= KEYS_RUN_MAX
