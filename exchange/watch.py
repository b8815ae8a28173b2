"""``python -m exchange watch``: a live terminal dashboard of a running cluster.

Rule 1: the watcher only reads, except for its optional probe: it polls every server's
        ``GetStatus`` (in parallel, each call with a deadline, and a slow call is waited for
        across rounds, so a stopped server delays nobody else's row), reads the chosen symbol's
        ``GetBookSnapshot`` and follows its trade tape through ``StreamMarketData``. The probe
        (``--probe-rate``, default ``PROBE_RATE_DEFAULT`` a second) sends immediate-or-cancel
        buy orders of one lot at price ``PROBE_PRICE`` for the first watched symbol (one the
        cluster's instrument list holds): they never rest and trade only against an ask at
        that price, and their latency is a real order's (gRPC + consensus + apply).
Rule 2: no failure of a server reaches the screen as a traceback: every RPC error becomes the
        server's "down" reason or a reconnect; the market-data stream moves to another server
        when its server is paused, down, recovering or failed, and skips updates it already
        showed (it keeps the highest log index seen).
Rule 3: the terminal is always given back: cbreak mode and the alternate screen are undone on
        every exit path (``q``, Ctrl-C, an exception, ``--seconds`` running out).
Rule 4: threads: one poller, one stream reader, the probe, the key reader and rich's refresh
        thread; they share the model under one lock and stop within ``STOP_JOIN_S``.
Rule 5: ``exchange demo --watch`` runs the dashboard as a child process, so that drawing never
        takes the traders' interpreter lock (their latencies are the figures the demo reports).
        The demo feeds it notes and the traders' latencies through a pipe it never blocks on
        (a line the child is too slow to take is dropped and counted); the child ignores Ctrl-C
        and quits when the pipe closes, so the demo alone decides when the run ends; the child
        quitting (``q``) ends the demo's load early. The demo starts its traders once the child
        says it is on the screen (``--ready-fd``), or after ``CHILD_READY_S``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import select
import signal
import subprocess
import sys
import termios
import threading
import time
import tty
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from exchange.config import ConfigError, parse_server_uris
from exchange.convert import BadRequest, check_symbol
from exchange.proto import exchange_pb2 as pb
from exchange.proto import exchange_pb2_grpc as pb_grpc
from exchange.tls import ClientTls, add_client_tls_arguments, open_channel, time_seq
from exchange.watch_model import GOOD_ROLES, ClusterModel, Trade
from exchange.watch_view import LADDER_LEVELS_MAX, render

STATUS_POLL_S = 0.05  # 20 polls a second: leader changes are bounded to about this
STATUS_TIMEOUT_S = 1.0  # a server silent this long counts as down (a loaded 2-core machine
# can hold a healthy server's answer for hundreds of milliseconds)
POLL_WAIT_STEP_S = 0.002
SNAPSHOT_EVERY_POLLS = 2
REFRESH_HZ_DEFAULT = 4.0  # a frame costs ~20 ms of CPU (3 servers, 120x40 cells)
PROBE_RATE_DEFAULT = 10.0
PROBE_RATE_MAX = 200.0
PROBE_PRICE = 1  # Rule 1: an IOC buy this low finds no ask in any real book
PROBE_GIVE_UP_S = 5.0
STREAM_RETRY_S = 0.2
STOP_JOIN_S = 2.0
KEY_POLL_S = 0.1
SVG_WIDTH, SVG_HEIGHT = 120, 46  # taller than a usual terminal: more of the event log
FEED_PAIRS_PER_LINE = 80  # at most 32 bytes a pair: a line stays below PIPE_BUF (4096)
CHILD_EXIT_S = 5.0
CHILD_READY_S = 30.0  # start-up of the dashboard child; seconds on a loaded 2-core machine
DEFAULT_WATCH_SYMBOLS = ("AAPL", "MSFT", "GOOG", "AMZN")
# A restarted server must be seen within a poll or two, not after gRPC's default reconnect
# back-off (1 s growing to 120 s).
CHANNEL_OPTIONS = (("grpc.initial_reconnect_backoff_ms", 100),
                   ("grpc.min_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 500))
KEYS_NEXT = ("\t", "n", "l", "\x1b[C", "+")
KEYS_PREVIOUS = ("\x1b[Z", "p", "h", "\x1b[D", "-")
KEYS_QUIT = ("q", "Q")

LatencyFeed = Callable[[], list[tuple[int, int]]]


def _reason(error: grpc.RpcError) -> str:
    code = error.code() if isinstance(error, grpc.Call) else None
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"no answer in {STATUS_TIMEOUT_S * 1000:.0f} ms"
    if code == grpc.StatusCode.UNAVAILABLE:
        return "unreachable"
    return code.name.lower() if code is not None else "error"


class Watcher:
    """The model plus the threads that feed it (module rules)."""

    def __init__(self, addresses: dict[int, str], symbols: tuple[str, ...],
                 probe_rate: float = 0.0, latency_feed: LatencyFeed | None = None,
                 latency_source: str = "", tls: ClientTls | None = None) -> None:
        assert 0 <= probe_rate <= PROBE_RATE_MAX, probe_rate
        self.tls = tls
        self.addresses = dict(sorted(addresses.items()))
        self.model = ClusterModel(self.addresses, symbols, frozenset())
        self._probe_symbol = symbols[0] if symbols else ""
        self.model.latency_source = latency_source or (
            f"probe ({probe_rate:g}/s)" if probe_rate else "no probe")
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.quit_requested = threading.Event()
        self.subtitle = ""
        self._probe_rate = probe_rate
        self._feed = latency_feed
        self._channels = {i: open_channel(a, tls, CHANNEL_OPTIONS)
                          for i, a in self.addresses.items()}
        self._stubs = {i: pb_grpc.ExchangeStub(c)  # type: ignore[no-untyped-call]
                       for i, c in self._channels.items()}
        self._stream_call: Any = None
        self._stream_server = 0
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        targets: list[tuple[str, Callable[[], None]]] = [
            ("watch-poll", self._poll_loop), ("watch-stream", self._stream_loop)]
        if self._probe_rate and self._probe_symbol:
            targets.append(("watch-probe", self._probe_loop))
        for name, target in targets:
            thread = threading.Thread(target=self._guard, args=(target,), name=name, daemon=True)
            self._threads.append(thread)
            thread.start()

    def stop(self) -> None:
        self.stopping.set()
        with self.lock:
            call = self._stream_call
        if call is not None:
            call.cancel()
        deadline = time.monotonic() + STOP_JOIN_S
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        for channel in self._channels.values():
            channel.close()

    def note(self, text: str) -> None:
        with self.lock:
            self.model.note(time.monotonic_ns(), time.time(), text)

    def key(self, key: str) -> None:
        with self.lock:
            before = self.model.symbol
            if key in KEYS_QUIT:
                self.quit_requested.set()
            elif key in KEYS_NEXT:
                self.model.select_symbol(step=1)
            elif key in KEYS_PREVIOUS:
                self.model.select_symbol(step=-1)
            elif key.isdigit() and key != "0":
                self.model.select_symbol(number=int(key))
            call = self._stream_call if self.model.symbol != before else None
        if call is not None:
            call.cancel()  # the stream reader subscribes to the new symbol

    def renderable(self, height: int) -> Any:
        with self.lock:
            return render(self.model, height, self.subtitle)

    def _guard(self, target: Callable[[], None]) -> None:
        """A thread's body: an unexpected error is shown as an event, not a traceback (Rule 2)."""
        try:
            target()
        except Exception as exc:  # a bug: keep the dashboard up and say what stopped
            if not self.stopping.is_set():
                self.note(f"{threading.current_thread().name} stopped: {exc!r}")

    # ---- polling ---------------------------------------------------------------------------

    def _poll_loop(self) -> None:
        polls = 0
        pending: dict[int, Any] = {}  # replica id -> its GetStatus call still in flight
        try:
            while not self.stopping.is_set():
                began = time.monotonic()
                answers = self._poll(pending, began + STATUS_POLL_S)
                samples = self._feed() if self._feed is not None else []
                with self.lock:
                    self.model.observe(time.monotonic_ns(), time.time(), answers)
                    self.model.add_latencies(samples)
                    moved = self._stream_server and self.model.servers[
                        self._stream_server].role not in GOOD_ROLES
                    call = self._stream_call if moved else None
                if call is not None:
                    call.cancel()  # the stream reader reconnects elsewhere
                if polls % SNAPSHOT_EVERY_POLLS == 0:
                    self._snapshot()
                polls += 1
                self.stopping.wait(max(0.0, STATUS_POLL_S - (time.monotonic() - began)))
        finally:
            for future in pending.values():
                future.cancel()

    def _poll(self, pending: dict[int, Any], deadline: float) -> dict[int, pb.Status | str]:
        """One round of status calls, in parallel (Rule 1): every server without a call in
        flight gets one; the answers (or errors) that arrive by ``deadline`` are returned. A
        slow server's call stays in flight into later rounds, so it delays nobody else's, and
        counts as down only when it fails (``STATUS_TIMEOUT_S``)."""
        request = pb.StatusRequest()
        for replica_id, stub in self._stubs.items():
            if replica_id not in pending:
                pending[replica_id] = stub.GetStatus.future(request, timeout=STATUS_TIMEOUT_S)
        while any(not f.done() for f in pending.values()) and time.monotonic() < deadline:
            time.sleep(POLL_WAIT_STEP_S)
        answers: dict[int, pb.Status | str] = {}
        for replica_id, future in list(pending.items()):
            if future.done():
                del pending[replica_id]
                try:
                    answers[replica_id] = future.result()
                except grpc.RpcError as error:
                    answers[replica_id] = _reason(error)
        return answers

    def _reader(self) -> int:
        """The server to read the book and the trades from (Rule 1): a follower with the least
        lag (it applies within milliseconds of a commit, and reading there leaves the leader's
        state lock to order entry), else the leader; 0 if none answers."""
        with self.lock:
            model = self.model
            good = [s for s in model.servers.values() if s.role in GOOD_ROLES]
            followers = [s for s in good if s.replica_id != model.leader and s.status]
            if followers:
                return max(followers, key=lambda s: (s.status.applied_index if s.status
                                                     else 0, -s.replica_id)).replica_id
            return good[0].replica_id if good else 0

    def _snapshot(self) -> None:
        server = self._reader()
        with self.lock:
            symbol = self.model.symbol
        if not server or not symbol:
            return
        try:
            snapshot = self._stubs[server].GetBookSnapshot(
                pb.BookSnapshotRequest(symbol=symbol, levels=LADDER_LEVELS_MAX),
                timeout=STATUS_TIMEOUT_S)
        except grpc.RpcError:
            return  # the next poll marks the server down if it is
        with self.lock:
            self.model.set_book(snapshot, self.addresses[server])

    # ---- market data ----------------------------------------------------------------------

    def _stream_loop(self) -> None:
        last_index = 0
        while not self.stopping.is_set():
            server = self._reader()
            with self.lock:
                symbol = self.model.symbol
            if not server or not symbol:
                self.stopping.wait(STREAM_RETRY_S)
                continue
            call = self._stubs[server].StreamMarketData(pb.MarketDataRequest(symbols=[symbol]))
            with self.lock:
                self._stream_call, self._stream_server = call, server
            if self.stopping.is_set():  # stop() may have looked for a call just before
                call.cancel()
            floor = last_index  # Rule 2: a lagging server must not repeat trades already shown
            try:
                for update in call:
                    if update.log_index <= floor:
                        continue
                    last_index = max(last_index, update.log_index)
                    if update.HasField("trade"):
                        trade = Trade(time.time(), update.trade.price, update.trade.quantity,
                                      update.log_index)
                        with self.lock:
                            self.model.add_trade(update.symbol, trade)
            except grpc.RpcError:
                pass
            with self.lock:
                self._stream_call, self._stream_server = None, 0
            self.stopping.wait(STREAM_RETRY_S)

    # ---- probe ----------------------------------------------------------------------------

    def _probe_id(self) -> tuple[int, int]:
        """(client id, first seq) of the probe: a random id, or with a client certificate the
        LAST id it names (traders with the same certificate start from its first ids), from a
        time-based seq (exchange.tls ``time_seq``)."""
        identity = None if self.tls is None else self.tls.identity()
        if identity is not None and identity.client_ids:
            return identity.client_ids[-1][1], time_seq()
        return int.from_bytes(os.urandom(5), "big") << 8 | 0xEE, 1

    def _probe_loop(self) -> None:
        from traders.client import ClientError, ClusterConnection, RequestRejected, TraderClient

        connection = ClusterConnection(tuple(self.addresses.values()), self.tls)
        client_id, first_seq = self._probe_id()
        client = TraderClient(connection, client_id, give_up_s=PROBE_GIVE_UP_S,
                              first_seq=first_seq)
        interval = 1.0 / self._probe_rate
        try:
            while not self.stopping.wait(interval):
                start = time.monotonic_ns()
                try:
                    client.submit(self._probe_symbol, pb.BUY, PROBE_PRICE, 1,
                                  immediate_or_cancel=True)
                except RequestRejected as exc:  # e.g. PERMISSION_DENIED: say so, stop probing
                    self.note(f"probe stopped: {exc}")
                    return
                except (ClientError, ValueError):  # ValueError: channel closed at shutdown
                    continue
                end = time.monotonic_ns()
                with self.lock:
                    self.model.add_latencies([(end, end - start)])
        finally:
            connection.close()


@contextlib.contextmanager
def _cbreak(stream: Any) -> Iterator[int | None]:
    """Rule 3: single keys without Enter (Ctrl-C still interrupts); restored on exit."""
    if not stream.isatty():
        yield None
        return
    fd = stream.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield fd
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _read_keys(watcher: Watcher, fd: int) -> None:
    while not watcher.stopping.is_set():
        ready, _, _ = select.select([fd], [], [], KEY_POLL_S)
        if not ready:
            continue
        try:
            data = os.read(fd, 64).decode(errors="replace")
        except OSError:
            return
        if not data:
            return
        for key in _split_keys(data):
            watcher.key(key)


def _split_keys(data: str) -> list[str]:
    """Escape sequences (arrows, shift-tab) as one key each, other characters one by one."""
    keys, index = [], 0
    while index < len(data):
        if data.startswith("\x1b[", index) and index + 2 < len(data):
            keys.append(data[index:index + 3])
            index += 3
        else:
            keys.append(data[index])
            index += 1
    return keys


@contextlib.contextmanager
def dashboard(watcher: Watcher, refresh_hz: float, svg_path: str = "") -> Iterator[Watcher]:
    """Run ``watcher`` on this terminal (alternate screen, keys) until the block ends."""
    from rich.console import Console
    from rich.live import Live

    console = Console()
    watcher.start()
    try:
        with _cbreak(sys.stdin) as fd:
            if fd is not None:
                keys = threading.Thread(target=_read_keys, args=(watcher, fd), daemon=True,
                                        name="watch-keys")
                keys.start()
            with Live(get_renderable=lambda: watcher.renderable(console.size.height),
                      console=console, screen=console.is_terminal,
                      refresh_per_second=refresh_hz, redirect_stdout=False,
                      redirect_stderr=False):
                yield watcher
    finally:
        watcher.stop()
        if svg_path:
            save_svg(watcher, svg_path)


def save_svg(watcher: Watcher, path: str) -> None:
    """The last frame as an SVG of ``SVG_WIDTH`` x ``SVG_HEIGHT`` cells (for screenshots)."""
    from rich.console import Console

    console = Console(record=True, width=SVG_WIDTH, height=SVG_HEIGHT, file=io.StringIO(),
                      force_terminal=True, color_system="truecolor")
    console.print(watcher.renderable(SVG_HEIGHT))
    # rich puts runs of cells in <text> elements; SVG renderers drop their leading spaces
    # unless told to keep them
    svg = console.export_svg(title="python -m exchange watch").replace(
        "<svg ", '<svg xml:space="preserve" ', 1)
    try:
        with open(path, "w", encoding="utf-8") as out:
            out.write(svg)
    except OSError as exc:
        print(f"watch: cannot write {path}: {exc.strerror}", file=sys.stderr)
        return
    print(f"watch: last frame written to {path}")


class DemoDashboard:
    """The dashboard in place of the demo's progress bar (Rule 5): a ``watch`` child process on
    this terminal, fed through a pipe. Offers what the demo uses of tqdm (``write``, ``n``,
    ``set_postfix_str``, ``close``) plus ``quit_requested`` (the child ended: ``q``)."""

    def __init__(self, server_uris: str, feed: LatencyFeed, seconds: float,
                 svg_path: str = "", tls_flags: tuple[str, ...] = ()) -> None:
        read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._write_fd, False)
        ready_read_fd, ready_write_fd = os.pipe()
        command = [sys.executable, "-m", "exchange", "watch", "--server-uris", server_uris,
                   "--probe-rate", "0", "--feed-fd", str(read_fd),
                   "--ready-fd", str(ready_write_fd), *tls_flags]
        if svg_path:
            command += ["--svg", svg_path]
        self._child = subprocess.Popen(command, pass_fds=(read_fd, ready_write_fd))
        os.close(read_fd)
        os.close(ready_write_fd)
        # the load starts once the dashboard is on the screen (or has failed, or is too slow)
        select.select([ready_read_fd], [], [], CHILD_READY_S)
        os.close(ready_read_fd)
        self._feed = feed
        self.seconds = seconds
        self.n = 0.0
        self.dropped = 0

    @property
    def quit_requested(self) -> bool:
        return self._child.poll() is not None

    def _send(self, line: str) -> None:
        data = (line.replace("\n", " ") + "\n").encode()
        try:
            os.write(self._write_fd, data)  # a line is far below PIPE_BUF: written whole or not
        except BlockingIOError:
            self.dropped += 1  # the child is behind; the demo must never wait for it
        except OSError:
            pass  # the child has gone (q); quit_requested says so

    def write(self, text: str) -> None:
        self._send(f"note {text}")

    def set_postfix_str(self, text: str) -> None:
        self._send(f"subtitle demo {self.n:.1f}/{self.seconds:g} s, {text}")
        samples = self._feed()
        for first in range(0, len(samples), FEED_PAIRS_PER_LINE):
            chunk = samples[first:first + FEED_PAIRS_PER_LINE]
            self._send("lat " + " ".join(f"{end} {latency}" for end, latency in chunk))

    def close(self) -> None:
        os.close(self._write_fd)  # end of feed: the child quits and gives the terminal back
        try:
            self._child.wait(CHILD_EXIT_S)
        except subprocess.TimeoutExpired:
            self._child.kill()
            self._child.wait()
        if self.dropped:
            print(f"demo: the dashboard fell behind; {self.dropped} feed lines were dropped "
                  "(the demo's own figures are complete)")


def _read_feed(watcher: Watcher, fd: int) -> None:
    """Rule 5, the child's side: ``note TEXT``, ``subtitle TEXT``, ``lat END LAT END LAT ...``
    (monotonic ns, the same clock in both processes); end of file = quit."""
    with os.fdopen(fd, encoding="utf-8", errors="replace") as feed:
        for line in feed:
            kind, _, rest = line.rstrip("\n").partition(" ")
            if kind == "note":
                watcher.note(rest)
            elif kind == "subtitle":
                watcher.subtitle = f"  {rest}"
            elif kind == "lat":
                numbers = [int(x) for x in rest.split() if x.isdigit()]
                pairs = list(zip(numbers[::2], numbers[1::2], strict=False))
                with watcher.lock:
                    watcher.model.add_latencies(pairs)
    watcher.quit_requested.set()


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    watch = commands.add_parser(
        "watch",
        help="live terminal dashboard: cluster roles, book ladder, trades, load, events",
        description="Watch a running cluster live: each server's role, indexes, lag, health "
        "and digests; the book ladder and trade tape of one symbol; orders/s and latency "
        "percentiles; leader changes, pauses and restarts. Keys: tab/n/right and "
        "shift-tab/p/left switch symbol, 1-9 pick one, q quits (so does Ctrl-C). Example: "
        "SERVER_URIS=1=127.0.0.1:31851,2=127.0.0.1:31852,3=127.0.0.1:31853 python -m exchange "
        "watch",
    )
    watch.add_argument("--server-uris", default=None, metavar="1=HOST:PORT,...",
                       help="every server's gRPC address by replica id (env SERVER_URIS)")
    watch.add_argument("--symbol", default=DEFAULT_WATCH_SYMBOLS[0],
                       help="symbol shown first (default %(default)s)")
    watch.add_argument("--probe-rate", type=float, default=PROBE_RATE_DEFAULT,
                       help="latency probe: IOC buys of one lot at price "
                       f"{PROBE_PRICE} a second on the first watched symbol (default "
                       f"{PROBE_RATE_DEFAULT:g}; 0 = no probe, the "
                       "watcher then only reads)")
    watch.add_argument("--refresh-hz", type=float, default=REFRESH_HZ_DEFAULT,
                       help=f"screen refreshes a second (default {REFRESH_HZ_DEFAULT:g})")
    watch.add_argument("--seconds", type=float, default=0.0,
                       help="quit after this long (default 0 = until q or Ctrl-C)")
    watch.add_argument("--svg", default="", metavar="FILE",
                       help="at exit, write the last frame as an SVG screenshot "
                       f"({SVG_WIDTH}x{SVG_HEIGHT} cells)")
    add_client_tls_arguments(watch)
    watch.add_argument("--feed-fd", type=int, default=-1, help=argparse.SUPPRESS)  # demo
    watch.add_argument("--ready-fd", type=int, default=-1, help=argparse.SUPPRESS)  # demo


def run(args: argparse.Namespace) -> int:
    raw = args.server_uris if args.server_uris is not None else os.environ.get("SERVER_URIS", "")
    if not raw.strip():
        raise ConfigError("no servers: pass --server-uris 1=host:port,... or set SERVER_URIS")
    addresses = parse_server_uris(raw)
    if not 0 <= args.probe_rate <= PROBE_RATE_MAX:
        raise ConfigError(f"--probe-rate {args.probe_rate:g}: must be 0..{PROBE_RATE_MAX:g}")
    if not 0.5 <= args.refresh_hz <= 30:
        raise ConfigError(f"--refresh-hz {args.refresh_hz:g}: must be 0.5..30")
    if args.seconds < 0:
        raise ConfigError(f"--seconds {args.seconds:g}: must be >= 0")
    try:
        check_symbol(args.symbol, required=True)
    except BadRequest as exc:
        raise ConfigError(f"--symbol: {exc}") from None
    symbols = (args.symbol, *(s for s in DEFAULT_WATCH_SYMBOLS if s != args.symbol))
    tls = ClientTls.from_args(args)
    if args.feed_fd >= 0:  # the demo's dashboard: the demo decides when to stop (Rule 5)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        watcher = Watcher(addresses, symbols, latency_source="traders", tls=tls)
        threading.Thread(target=_read_feed, args=(watcher, args.feed_fd), daemon=True,
                         name="watch-feed").start()
    else:
        watcher = Watcher(addresses, symbols, probe_rate=args.probe_rate, tls=tls)
    deadline = time.monotonic() + args.seconds if args.seconds else float("inf")
    with dashboard(watcher, args.refresh_hz, args.svg):
        if args.ready_fd >= 0:  # the demo waits for this before it starts its traders
            os.write(args.ready_fd, b"ready\n")
            os.close(args.ready_fd)
        while not watcher.quit_requested.wait(KEY_POLL_S):
            if time.monotonic() >= deadline:
                break
    return 0
