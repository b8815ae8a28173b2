"""The dashboard's picture: rich renderables drawn from a ``ClusterModel``.

Rule 1: drawing reads the model and never changes it; the caller holds the watcher's lock.
Rule 2: the layout fits the terminal: fixed rows for the header, the cluster and the figures,
        the ladder gets ``LADDER_LEVELS_MAX`` levels a side at most and fewer on a short
        terminal, the event log takes what is left (at least ``EVENT_ROWS_MIN`` rows).
Rule 3: what is not known is shown as such: "down" with the reason for a server that did not
        answer, "-" for a figure without data; nothing is invented.
"""

from __future__ import annotations

import math
import time

from rich.console import Group, RenderableType
from rich.layout import Layout
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from exchange.proto import exchange_pb2 as pb
from exchange.watch_model import ClusterModel, ServerView, sparkline

LADDER_LEVELS_MAX = 8
LADDER_LEVELS_MIN = 3
EVENT_ROWS_MIN = 4
METRICS_ROWS = 4  # two lines of figures + the border
TAPE_WIDTH = 34
PRICE_WIDTH = 10
BAR_WIDTH_MAX = 16
ROLE_STYLES = {
    "leader": "bold green", "standalone": "bold green", "follower": "cyan",
    "recovering": "yellow", "paused": "bold red", "failed": "bold red", "down": "bold red",
}
EVENT_STYLES = {
    "leader": "bold magenta", "noleader": "bold red", "pause": "red", "resume": "green",
    "down": "bold red", "up": "green", "restart": "yellow", "recovering": "yellow",
    "recovered": "green", "failed": "bold red", "note": "white",
}


def ladder_levels(height: int, servers: int) -> int:
    """Levels per side that fit a terminal ``height`` rows high (Rule 2)."""
    fixed = 1 + _cluster_rows(servers) + METRICS_ROWS + EVENT_ROWS_MIN + 4
    return max(LADDER_LEVELS_MIN, min(LADDER_LEVELS_MAX, (height - fixed) // 2))


def _cluster_rows(servers: int) -> int:
    return servers + 4  # border 2, header 1, digest line 1


def render(model: ClusterModel, height: int, subtitle: str) -> RenderableType:
    recovering = sum(1 for s in model.servers.values() if s.role == "recovering")
    levels = ladder_levels(height, len(model.servers))
    layout = Layout()
    layout.split_column(
        Layout(_header(model, subtitle), name="header", size=1),
        Layout(_cluster(model), name="cluster", size=_cluster_rows(len(model.servers))
               + recovering),
        Layout(name="market", size=2 * levels + 4),
        Layout(_metrics(model), name="metrics", size=METRICS_ROWS),
        Layout(_events(model, max(EVENT_ROWS_MIN, height)), name="events"),
    )
    layout["market"].split_row(
        Layout(_ladder(model, levels), name="ladder"),
        Layout(_tape(model, 2 * levels + 2), name="tape", size=TAPE_WIDTH),
    )
    return layout


def _header(model: ClusterModel, subtitle: str) -> Text:
    text = Text.assemble(("mu-exchange watch", "bold"), f"  {len(model.servers)} servers  ")
    leader = f"leader {model.leader}" if model.leader is not None else "NO LEADER"
    text.append(leader, style="bold green" if model.leader is not None else "bold red")
    text.append(f"  {time.strftime('%H:%M:%S')}{subtitle}  symbol ")
    for index, symbol in enumerate(model.symbols[:9]):
        style = "reverse bold" if index == model.symbol_index else "dim"
        text.append(f"{index + 1}:{symbol}", style=style)
        text.append(" ")
    text.append("  keys: ←/→ symbol, q quit", style="dim")
    text.no_wrap = True
    text.overflow = "ellipsis"
    return text


def _server_row(model: ClusterModel, server: ServerView, commit: int) -> list[Text | str]:
    role = server.role
    role_text = Text(role, style=ROLE_STYLES.get(role, ""))
    if server.down or server.status is None:
        return [str(server.replica_id), server.address, role_text, "-", "-", "-", "-",
                Text(server.down or "no answer", style="red"), "-"]
    status = server.status
    lag = max(0, commit - int(status.applied_index))
    health = {"paused": Text("paused (FIFO)", style="red"),
              "failed": Text(f"failed: {status.error}", style="bold red"),
              "recovering": Text("catching up", style="yellow")}.get(role, Text("ok", "green"))
    verdict = model.digest_verdict
    digest = status.state_digest[:12]
    if verdict is not None and server.replica_id in verdict.servers:
        digest += " =" if verdict.equal else " DIFFERS"
    return [str(server.replica_id), server.address, role_text,
            str(status.leader_id or "-"), f"{status.commit_index:,}", f"{status.applied_index:,}",
            Text(f"{lag:,}", style="yellow" if lag > 1000 else ""), health, digest]


def _recovery_line(server: ServerView) -> Text:
    status = server.status
    assert status is not None
    total, done = status.recovery_bytes_total, status.recovery_bytes_done
    bar_width = 24
    filled = bar_width * done // total if total else 0
    snapshot = (f"snapshot @ index {status.recovery_snapshot_index:,}"
                if status.recovery_snapshot_index else "snapshot index not known yet")
    size = f"{done / 1e6:.1f}/{total / 1e6:.1f} MB" if total else f"{done / 1e6:.1f} MB"
    return Text.assemble(
        f"  server {server.replica_id} recovering: {snapshot}  ",
        ("█" * filled + "░" * (bar_width - filled), "yellow"),
        f" {size}, {status.recovery_entries_left:,} log entries left",
    )


def _cluster(model: ClusterModel) -> Panel:
    table = Table(box=None, expand=True, pad_edge=False, show_edge=False)
    for name, justify in (("id", "right"), ("address", "left"), ("role", "left"),
                          ("leader", "right"), ("commit", "right"), ("applied", "right"),
                          ("lag", "right"), ("health", "left"), ("state digest", "left")):
        table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    commit = model.commit_index()
    for server in model.servers.values():
        table.add_row(*_server_row(model, server, commit))
    lines: list[RenderableType] = [table]
    for server in model.servers.values():
        if server.role == "recovering":
            lines.append(_recovery_line(server))
    verdict = model.digest_verdict
    if verdict is None:
        lines.append(Text("digests: no two servers reported the same applied index yet", "dim"))
    else:
        servers = ", ".join(str(i) for i in verdict.servers)
        word = ("equal", "green") if verdict.equal else ("DIFFERENT", "bold red")
        lines.append(Text.assemble("state digests at applied index ", f"{verdict.index:,}",
                                   f" (servers {servers}): ", word))
    return Panel(Group(*lines), title="cluster", title_align="left", padding=(0, 1))


def _ladder_row(level: pb.PriceLevel | None, largest: int, bid: bool) -> Text:
    """One ladder line in fixed-width columns (plain lines draw several times faster than a
    rich Table, and the dashboard redraws them every frame)."""
    if level is None:
        return Text("")
    bar = "■" * max(1, BAR_WIDTH_MAX * level.quantity // largest)
    style = "green" if bid else "red"
    if bid:
        return Text.assemble(f"{level.order_count:>6} {level.quantity:>9,} ",
                             (f"{bar:>{BAR_WIDTH_MAX}}", style), " ",
                             (f"{level.price:^{PRICE_WIDTH}}", style))
    return Text.assemble(" " * (17 + BAR_WIDTH_MAX), (f"{level.price:^{PRICE_WIDTH}}", style),
                         " ", (f"{bar:<{BAR_WIDTH_MAX}}", style),
                         f" {level.quantity:<9,} {level.order_count:<6}")


def _ladder(model: ClusterModel, levels: int) -> Panel:
    book = model.book
    title = f"book {model.symbol}" if model.symbol else "book"
    if book is None:
        return Panel(Text("waiting for a snapshot...", style="dim"), title=title,
                     title_align="left")
    asks = list(book.asks[:levels])
    bids = list(book.bids[:levels])
    largest = max((level.quantity for level in asks + bids), default=1) or 1
    header = (f"{'orders':>6} {'bid qty':>9} {'':>{BAR_WIDTH_MAX}} {'price':^{PRICE_WIDTH}} "
              f"{'':<{BAR_WIDTH_MAX}} {'ask qty':<9} {'orders':<6}")
    lines = [Text(header, style="bold")]
    lines += [Text("")] * (levels - len(asks))
    lines += [_ladder_row(level, largest, bid=False) for level in reversed(asks)]
    spread = (f"spread {asks[0].price - bids[0].price}" if asks and bids
              else "one side empty" if asks or bids else "empty book")
    lines.append(Text(" " * (17 + BAR_WIDTH_MAX) + f"{spread:^{PRICE_WIDTH}}", style="dim"))
    lines += [_ladder_row(level, largest, bid=True) for level in bids]
    last = f", last {book.last_trade_price}" if book.last_trade_price else ""
    subtitle = f"server {book.replica_id} @ index {book.applied_index:,}{last}"
    return Panel(Group(*lines), title=title, title_align="left", subtitle=subtitle,
                 subtitle_align="right")


def _tape(model: ClusterModel, rows: int) -> Panel:
    trades = list(model.tape.get(model.symbol, ()))[-rows:]
    lines = [Text(f"{'time':<12} {'price':>9} {'qty':>7}", style="bold")]
    previous = None
    shown = []
    for trade in trades:
        tick = "" if previous is None or trade.price == previous else (
            "▲" if trade.price > previous else "▼")
        style = "green" if tick == "▲" else "red" if tick == "▼" else ""
        clock = time.strftime("%H:%M:%S", time.localtime(trade.wall_s))
        shown.append(Text.assemble(f"{clock}.{int(trade.wall_s * 1000) % 1000:03d} ",
                                   (f"{tick + str(trade.price):>9}", style),
                                   f" {trade.quantity:>7,}"))
        previous = trade.price
    lines += shown[::-1] or [Text("no trades yet", style="dim")]
    return Panel(Group(*lines), title="trades", title_align="left")


def _metrics(model: ClusterModel) -> Panel:
    width = 48
    rates = model.order_rates()
    now = model.orders_per_s()
    count, p50, p90, p99, top = model.latency_percentiles_us()
    figures = Table.grid(padding=(0, 1), expand=True)
    figures.add_column(no_wrap=True, ratio=1)
    figures.add_column(no_wrap=True, width=width)
    peak = max((r for r in rates if not math.isnan(r)), default=0.0)
    figures.add_row(f"orders/s {now:9,.0f} (peak {peak:,.0f})",
                    Text(sparkline(rates, width), style="blue"))
    if count:
        line = (f"{model.latency_source} latency p50 {_ms(p50)} p90 {_ms(p90)} p99 {_ms(p99)} "
                f"max {_ms(top)}")
    else:
        line = f"latency ({model.latency_source}): no answers in the last 5 s"
    figures.add_row(Text(line, overflow="ellipsis", no_wrap=True),
                    Text(sparkline(model.p99_history_us(), width), style="red"))
    return Panel(figures, title="load (last 5 s; sparklines: 60 s, p99 in red)",
                 title_align="left")


def _ms(value_us: float) -> str:
    return f"{value_us / 1000:.2f}ms" if value_us >= 1000 else f"{value_us:.0f}us"


def _events(model: ClusterModel, rows: int) -> Panel:
    lines = []
    for event in list(model.events)[-rows:][::-1]:
        clock = time.strftime("%H:%M:%S", time.localtime(event.wall_s))
        stamp = f"{clock}.{int(event.wall_s * 1000) % 1000:03d} "
        lines.append(Text.assemble(stamp, (event.line(), EVENT_STYLES.get(event.kind, ""))))
    if not lines:
        lines.append(Text("no events yet", style="dim"))
    return Panel(Group(*lines), title="events (newest first)", title_align="left")
