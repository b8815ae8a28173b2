"""bench-rejoin's reading of a replica's log (kvstores.rejoin_bench): the recovering time of the
last incarnation, the provider's hold and the install figures."""

from kvstores.rejoin_bench import _HELD, _INSTALLED, _line, _recovering_ms

LOG = """\
09:33:30.526 WARNING kvstores.server: server 3: role - -> follower
READY 3 127.0.0.1:55095 pid 3483
09:33:34.904 WARNING kvstores.server: server 3: role - -> recovering
09:33:34.948 WARNING kvstores.snapshot: installed a snapshot of index 401: 400 keys, 13401 bytes \
in 12.5 ms
09:33:35.120 WARNING kvstores.server: server 3: role recovering -> follower
"""


def test_recovering_time_is_that_of_the_last_incarnation():
    assert abs(_recovering_ms(LOG) - 216.0) < 1e-6
    assert _recovering_ms(LOG + "09:40:00.000 WARNING kvstores.server: server 3: role - -> "
                          "recovering\n") == 0.0  # still recovering: no figure


def test_snapshot_lines():
    installed = _INSTALLED.search(LOG)
    assert installed is not None and installed.groups() == ("13401", "12.5")
    held = _HELD.search("took a snapshot of index 9: 3 keys, 100 bytes, local server held for "
                        "1.5 ms")
    assert held is not None and held.groups() == ("3", "100", "1.5")


def test_ratio_line():
    line = _line("install", "ms", [2.0, 4.0], [20.0, 20.0])
    assert "x7.50 (rounds x5.00-x10.00)" in line
    assert _line("snapshot size", "B", [21.0], [900.0], ratio=False).endswith("-")
