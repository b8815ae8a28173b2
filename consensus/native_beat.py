"""The native heartbeat: a C thread bumps this replica's heartbeat word, fate-shared with Python.

Rule 1: the C thread bumps the word every ``NATIVE_BEAT_INTERVAL_US`` while it is enabled and the
        liveness token is fresh: Python refreshes the token (``touch``) from the heartbeat
        activity and the replication fast path, so a stuck interpreter stops the beat within
        ``NATIVE_TOKEN_TTL_US``; a stopped, crashed or frozen process stops it at once.
Rule 2: the thread does not take the GIL, so GIL hand-offs, the switch interval and the garbage
        collector never delay a live replica's beat; it asks for ``SCHED_FIFO`` priority
        ``NATIVE_BEAT_RT_PRIORITY`` so CPU contention does not either, and runs at normal priority
        when that is refused (``realtime`` says which).
Rule 3: ``disable`` stops the beat before it returns a result to Python's next statement: a pause
        is silent at once. ``stop`` joins the thread before the word's buffer is released.
Rule 4: the helper is compiled at first use with the system C compiler into a cache directory
        (``MU_NATIVE_CACHE`` or ``~/.cache/mu-exchange``); without a compiler, or with
        ``MU_NATIVE_HEARTBEAT=0``, ``NativeBeat.start`` returns ``None`` and the replica keeps the
        Python heartbeat (one log line says why).
Rule 5: only the real runtime uses it: the simulator keeps its simulated heartbeat and detector.
Rule 6: ``raise_thread_priority`` puts the *calling* thread at ``SCHED_FIFO`` (the replica's
        background thread, when the beat itself got real-time priority): a follower's scanner and
        election then run as soon as they wake instead of waiting for a CPU; refused, the thread
        keeps its normal priority (one log line); ``MU_BACKGROUND_RT=0`` does not ask.
Rule 7: ``wait_calm`` is the background activity's calm wait (election Rule 11): the calling
        thread polls, in C and without the GIL, the leader's heartbeat word (in the mapped
        peer region) and a few words that must wake it at once (the leader's ``leading`` word,
        this replica's request slots) every scan period, and returns as soon as the heartbeat
        stood still for one period, a watched word changed or a safety timeout passed. Python
        then scans as before; calm periods cost no interpreter wake-up. Only the real runtime,
        only with a fabric whose remote regions are mapped here (shm); ``MU_CALM_WAIT=0``
        turns it off. It was off by default (2026-12-01 to 12-02) because it deposed live
        leaders under load; the cause was a leader's beat thread whose vCPU stalled, which its
        exact polls noticed more often than Python's scans did, and the standby beat (Rule 9)
        removed it (docs/consensus.md).
Rule 8: the pause relay (``PauseRelay``): a C thread reads the server's control FIFO and, on a
        line that is exactly ``p`` or ``pause``, sets its ``held`` word *before* it forwards the
        bytes, unchanged and in order, to a pipe that Python reads as it read the FIFO. A beat
        that ``follow``s the relay does not beat while ``held`` is set, so a silent pause
        silences the replica within microseconds of the write, however long the interpreter
        takes to run the pause itself (0.2-14 ms after the write in a traced fail-over).
        ``release`` (on resume) clears it. The relay thread asks for the beat's real-time
        priority. Its C struct is never freed (a beat may still point at ``held``); ``stop``
        ends the thread.
Rule 9: the standby beat: where this process may run on two CPUs or more, the beat thread is
        pinned to one of them and a second C thread (same priority) to another; every
        ``NATIVE_STANDBY_INTERVAL_US`` the standby bumps the word only if it did not move for
        a whole period (and a beat is due: enabled, not held, token fresh). A live replica
        whose beat thread's CPU does not run for milliseconds (a vCPU the host did not run,
        a long non-preemptible kernel path: measured here, 2026-12-02, a pinned real-time
        thread on each vCPU under exchange load saw about 1,000 gaps over 3 ms per vCPU in
        200 s, bunched in a bad minute, 80% of them on one vCPU only) still beats at least every
        standby period, far inside ``NATIVE_DEAD_AFTER_US``; a stopped, crashed or paused
        process stops both threads alike. ``MU_NATIVE_STANDBY=0`` starts no standby; with
        one CPU there is none (a thread on the same CPU stalls with it).
Rule 10: the helper's calls that only load or store a word (``touch``, ``enable``, the getters,
        ``release``) are called through ``ctypes.PyDLL`` and keep the GIL: a ctypes call through
        ``CDLL`` releases the GIL and must take it again, and under load that re-take waits
        behind every other runnable thread (up to a switch interval each), which is what a
        pause must not wait for. Calls that block or join a thread (``nb_stop``, ``nf_stop``,
        ``nb_wait_calm``) and the starts release it.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from consensus import constants as c

LOGGER = logging.getLogger("consensus.native")
WAIT_TIMEOUT, WAIT_STILL, WAIT_CHANGED = 0, 1, 2  # wait_calm's outcomes (Rule 7)
WAIT_CHANGES_MAX = 16  # words one wait_calm watches for a change
COMPILE_TIMEOUT_S = 60.0  # gcc on this shared machine takes a second or two; never hang start()

_SOURCE = r"""
#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    volatile uint64_t *word;
    uint64_t interval_ns, ttl_ns;
    volatile uint64_t token_ns;
    volatile int enabled, stopping, realtime;
    volatile uint64_t max_gap_ns, beats, stale;
    volatile uint64_t *volatile hold;  /* Rule 8: no beat while *hold != 0 (NULL: none) */
    int priority;
    pthread_t thread;
    uint64_t standby_ns;  /* Rule 9: the standby's period; 0: no standby thread */
    volatile uint64_t standby_beats;
    int cpu, standby_cpu;  /* the CPUs the two threads are pinned to; -1: not pinned */
    pthread_t standby;
} nb_t;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* 1: a beat is due; 0: disabled or held; -1: enabled but the token is stale (Rule 1) */
static int may_beat(nb_t *h, uint64_t now) {
    uint64_t token = __atomic_load_n(&h->token_ns, __ATOMIC_ACQUIRE);
    volatile uint64_t *hold = __atomic_load_n(&h->hold, __ATOMIC_ACQUIRE);
    if (!__atomic_load_n(&h->enabled, __ATOMIC_ACQUIRE)
            || (hold && __atomic_load_n(hold, __ATOMIC_ACQUIRE)))
        return 0;
    /* token >= now: Python touched it after `now` was read (not stale) */
    return token >= now || now - token < h->ttl_ns ? 1 : -1;
}

static void *run(void *arg) {
    nb_t *h = (nb_t *)arg;
    uint64_t last = now_ns();
    while (!__atomic_load_n(&h->stopping, __ATOMIC_ACQUIRE)) {
        uint64_t now = now_ns();
        if (now - last > h->max_gap_ns) h->max_gap_ns = now - last;
        last = now;
        int due = may_beat(h, now);
        if (due > 0) {
            __atomic_fetch_add(h->word, 1, __ATOMIC_RELEASE);  /* the standby bumps it too */
            h->beats++;
        } else if (due < 0) {
            h->stale++;  /* enabled but the token is stale: a beat withheld (Rule 1) */
        }
        struct timespec ts = {0, (long)h->interval_ns};
        nanosleep(&ts, NULL);
    }
    return NULL;
}

/* Rule 9: on another CPU, bump the word only when it did not move for a whole period. */
static void *standby_run(void *arg) {
    nb_t *h = (nb_t *)arg;
    uint64_t seen = __atomic_load_n(h->word, __ATOMIC_ACQUIRE);
    struct timespec ts = {(time_t)(h->standby_ns / 1000000000ull),
                          (long)(h->standby_ns % 1000000000ull)};
    while (!__atomic_load_n(&h->stopping, __ATOMIC_ACQUIRE)) {
        nanosleep(&ts, NULL);
        uint64_t value = __atomic_load_n(h->word, __ATOMIC_ACQUIRE);
        if (value == seen && may_beat(h, now_ns()) > 0) {
            value = __atomic_add_fetch(h->word, 1, __ATOMIC_RELEASE);
            h->standby_beats++;
        }
        seen = value;
    }
    return NULL;
}

/* Start `fn` on a new thread, at SCHED_FIFO `priority` if > 0 and permitted: 1 when it got
   real-time priority, 0 when it runs at normal priority, -1 when no thread was created. */
static int spawn(pthread_t *thread, void *(*fn)(void *), void *arg, int priority) {
    if (pthread_create(thread, NULL, fn, arg) != 0) return -1;
    struct sched_param sp;
    memset(&sp, 0, sizeof sp);
    sp.sched_priority = priority;
    return priority > 0 && pthread_setschedparam(*thread, SCHED_FIFO, &sp) == 0;
}

static void pin(pthread_t thread, int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    pthread_setaffinity_np(thread, sizeof set, &set);
}

void *nb_start(uint64_t *word, uint64_t interval_ns, uint64_t ttl_ns, int priority,
               uint64_t standby_ns) {
    nb_t *h = calloc(1, sizeof *h);
    if (!h) return NULL;
    h->word = word; h->interval_ns = interval_ns; h->ttl_ns = ttl_ns; h->priority = priority;
    h->token_ns = now_ns();
    h->cpu = h->standby_cpu = -1;
    int cpus[CPU_SETSIZE], n = 0;
    cpu_set_t allowed;
    if (standby_ns > 0 && sched_getaffinity(0, sizeof allowed, &allowed) == 0)
        for (int c = 0; c < CPU_SETSIZE; c++)
            if (CPU_ISSET(c, &allowed)) cpus[n++] = c;
    int realtime = spawn(&h->thread, run, h, priority);
    if (realtime < 0) { free(h); return NULL; }
    h->realtime = realtime;
    if (n >= 2) {  /* Rule 9: two CPUs, one thread pinned to each */
        int k = (int)(getpid() % n);
        h->cpu = cpus[k];
        h->standby_cpu = cpus[(k + 1) % n];
        pin(h->thread, h->cpu);
        h->standby_ns = standby_ns;  /* set before the standby reads it */
        if (spawn(&h->standby, standby_run, h, priority) < 0) h->standby_ns = 0;
        else pin(h->standby, h->standby_cpu);
    }
    return h;
}
uint64_t nb_standby_beats(void *p) { return ((nb_t *)p)->standby_beats; }
int nb_standby_cpu(void *p) { return ((nb_t *)p)->standby_ns ? ((nb_t *)p)->standby_cpu : -1; }
int nb_cpu(void *p) { return ((nb_t *)p)->standby_ns ? ((nb_t *)p)->cpu : -1; }
void nb_set_hold(void *p, volatile uint64_t *hold) {
    __atomic_store_n(&((nb_t *)p)->hold, hold, __ATOMIC_SEQ_CST);
}
void nb_touch(void *p) { __atomic_store_n(&((nb_t *)p)->token_ns, now_ns(), __ATOMIC_RELEASE); }
void nb_enable(void *p, int on) { __atomic_store_n(&((nb_t *)p)->enabled, on, __ATOMIC_SEQ_CST); }
int nb_realtime(void *p) { return ((nb_t *)p)->realtime; }
uint64_t nb_max_gap_ns(void *p) { uint64_t g = ((nb_t *)p)->max_gap_ns;
                                  ((nb_t *)p)->max_gap_ns = 0; return g; }
uint64_t nb_beats(void *p) { return ((nb_t *)p)->beats; }
uint64_t nb_stale(void *p) { return ((nb_t *)p)->stale; }
/* Rule 7: the calm wait, on the calling thread (ctypes releases the GIL). Poll *still every
   period_ns: 1 as soon as it did not change over one period, 2 as soon as one of the n words of
   `changes` differs from its value at the call, 0 after max_ns; *seen = *still's last value. */
int nb_wait_calm(volatile uint64_t *still, volatile uint64_t **changes, int n,
                 uint64_t period_ns, uint64_t max_ns, uint64_t *seen) {
    uint64_t first[16];
    if (n > 16) n = 16;
    for (int i = 0; i < n; i++) first[i] = __atomic_load_n(changes[i], __ATOMIC_ACQUIRE);
    uint64_t last = __atomic_load_n(still, __ATOMIC_ACQUIRE);
    uint64_t deadline = now_ns() + max_ns;
    struct timespec ts = {(time_t)(period_ns / 1000000000ull), (long)(period_ns % 1000000000ull)};
    for (;;) {
        nanosleep(&ts, NULL);
        uint64_t value = __atomic_load_n(still, __ATOMIC_ACQUIRE);
        *seen = value;
        for (int i = 0; i < n; i++)
            if (__atomic_load_n(changes[i], __ATOMIC_ACQUIRE) != first[i]) return 2;
        if (value == last) return 1;
        last = value;
        if (now_ns() >= deadline) return 0;
    }
}
/* Rule 8: the pause relay. A thread reads the control FIFO (fd_in, non-blocking), sets `held`
   on a line that is exactly "p" or "pause" (case and surrounding blanks ignored, as the Python
   parser) BEFORE it forwards the bytes, unchanged and in order, to fd_out (a pipe Python reads).
   The struct is never freed: a beat may still point at `held` after the relay stopped. */
typedef struct {
    int fd_in, fd_out;
    volatile int stopping;
    volatile uint64_t held, pauses;
    pthread_t thread;
} nf_t;

static int nf_is_pause(const char *s, int n) {
    while (n > 0 && isspace((unsigned char)*s)) { s++; n--; }
    while (n > 0 && isspace((unsigned char)s[n - 1])) n--;
    return (n == 1 && (*s == 'p' || *s == 'P')) || (n == 5 && strncasecmp(s, "pause", 5) == 0);
}

static void nf_forward(nf_t *f, const char *buf, ssize_t len) {
    ssize_t off = 0;
    while (off < len && !__atomic_load_n(&f->stopping, __ATOMIC_ACQUIRE)) {
        ssize_t wrote = write(f->fd_out, buf + off, (size_t)(len - off));
        if (wrote > 0) { off += wrote; continue; }
        if (wrote < 0 && errno == EINTR) continue;
        if (wrote < 0 && errno == EAGAIN) {  /* Python reads slowly: wait, stay stoppable */
            struct pollfd out = {f->fd_out, POLLOUT, 0};
            poll(&out, 1, 100);
            continue;
        }
        return;  /* the reader is gone (EPIPE): the server is closing */
    }
}

static void *nf_run(void *arg) {
    nf_t *f = (nf_t *)arg;
    char buf[4096], line[16];
    int n = 0, long_line = 0;
    struct pollfd in = {f->fd_in, POLLIN, 0};
    while (!__atomic_load_n(&f->stopping, __ATOMIC_ACQUIRE)) {
        if (poll(&in, 1, 100) <= 0) continue;
        ssize_t got = read(f->fd_in, buf, sizeof buf);
        if (got <= 0) {
            if (got < 0 && (errno == EAGAIN || errno == EINTR)) continue;
            struct timespec ts = {0, 10000000};  /* EOF or an error: never spin */
            nanosleep(&ts, NULL);
            continue;
        }
        for (ssize_t i = 0; i < got; i++) {
            if (buf[i] == '\n') {
                if (!long_line && nf_is_pause(line, n)) {
                    __atomic_store_n(&f->held, 1, __ATOMIC_SEQ_CST);
                    __atomic_add_fetch(&f->pauses, 1, __ATOMIC_RELAXED);
                }
                n = 0; long_line = 0;
            } else if (n < (int)sizeof line) {
                line[n++] = buf[i];
            } else {
                long_line = 1;
            }
        }
        nf_forward(f, buf, got);
    }
    return NULL;
}

void *nf_start(int fd_in, int fd_out, int priority) {
    nf_t *f = calloc(1, sizeof *f);
    if (!f) return NULL;
    f->fd_in = fd_in; f->fd_out = fd_out;
    if (spawn(&f->thread, nf_run, f, priority) < 0) { free(f); return NULL; }
    return f;
}
volatile uint64_t *nf_held_word(void *p) { return &((nf_t *)p)->held; }
uint64_t nf_held(void *p) { return __atomic_load_n(&((nf_t *)p)->held, __ATOMIC_ACQUIRE); }
uint64_t nf_pauses(void *p) { return ((nf_t *)p)->pauses; }
void nf_release(void *p) { __atomic_store_n(&((nf_t *)p)->held, 0, __ATOMIC_SEQ_CST); }
void nf_stop(void *p) {
    nf_t *f = (nf_t *)p;
    __atomic_store_n(&f->stopping, 1, __ATOMIC_RELEASE);
    pthread_join(f->thread, NULL);
}
void nb_stop(void *p) {
    nb_t *h = (nb_t *)p;
    __atomic_store_n(&h->stopping, 1, __ATOMIC_RELEASE);
    pthread_join(h->thread, NULL);
    if (h->standby_ns) pthread_join(h->standby, NULL);
    free(h);
}
"""

_P, _U64, _INT = ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int
# the helper's functions as ctypes calls them: name -> (return type, argument types)
_SIGNATURES: dict[str, tuple[object, list[object]]] = {
    "nb_start": (_P, [_P, _U64, _U64, _INT, _U64]),
    "nb_touch": (None, [_P]), "nb_stop": (None, [_P]), "nb_enable": (None, [_P, _INT]),
    "nb_realtime": (_INT, [_P]), "nb_cpu": (_INT, [_P]), "nb_standby_cpu": (_INT, [_P]),
    "nb_max_gap_ns": (_U64, [_P]), "nb_beats": (_U64, [_P]), "nb_stale": (_U64, [_P]),
    "nb_standby_beats": (_U64, [_P]), "nb_set_hold": (None, [_P, _P]),
    "nb_wait_calm": (_INT, [_P, _P, _INT, _U64, _U64, ctypes.POINTER(_U64)]),
    "nf_start": (_P, [_INT, _INT, _INT]), "nf_held_word": (_P, [_P]),
    "nf_held": (_U64, [_P]), "nf_pauses": (_U64, [_P]),
    "nf_release": (None, [_P]), "nf_stop": (None, [_P]),
}

# Rule 10: calls that only load or store a word: they keep the GIL (no release, no re-take)
_KEEP_GIL = frozenset({
    "nb_touch", "nb_enable", "nb_realtime", "nb_cpu", "nb_standby_cpu", "nb_max_gap_ns",
    "nb_beats", "nb_stale", "nb_standby_beats", "nb_set_hold",
    "nf_held_word", "nf_held", "nf_pauses", "nf_release",
})
assert _SIGNATURES.keys() >= _KEEP_GIL

_library: ctypes.CDLL | None = None
_unavailable: str | None = None


def _cache_dir() -> Path:
    root = os.environ.get("MU_NATIVE_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "mu-exchange"


def _compile() -> ctypes.CDLL:
    """Build (once per source version) and load the helper; ``OSError`` says why it cannot."""
    digest = hashlib.sha256(_SOURCE.encode()).hexdigest()[:16]
    target = _cache_dir() / f"native_beat-{digest}.so"
    if not target.exists():
        compiler = shutil.which(os.environ.get("CC", "gcc")) or shutil.which("cc")
        if compiler is None:
            raise OSError("no C compiler (gcc/cc) on PATH")
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            source = Path(tmp) / "native_beat.c"
            source.write_text(_SOURCE)
            built = Path(tmp) / target.name
            result = subprocess.run(
                [compiler, "-O2", "-shared", "-fPIC", "-pthread", "-o", str(built), str(source)],
                capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S, check=False)
            if result.returncode != 0:
                raise OSError(f"{compiler} failed: {result.stderr.strip()[:200]}")
            os.replace(built, target)  # atomic: concurrent replicas never load a partial file
    lib = ctypes.CDLL(str(target))
    keeps_gil = ctypes.PyDLL(str(target))  # the same library; its calls keep the GIL (Rule 10)
    for name, (restype, argtypes) in _SIGNATURES.items():
        function = getattr(keeps_gil if name in _KEEP_GIL else lib, name)
        function.restype, function.argtypes = restype, argtypes
        setattr(lib, name, function)
    return lib


def load() -> ctypes.CDLL | None:
    """The helper library, or None (logged once) when it cannot be built (Rule 4)."""
    global _library, _unavailable
    if _library is not None or _unavailable is not None:
        return _library
    if os.environ.get("MU_NATIVE_HEARTBEAT", "1") == "0":
        _unavailable = "disabled by MU_NATIVE_HEARTBEAT=0"
    else:
        try:
            _library = _compile()
        except (OSError, subprocess.SubprocessError) as error:
            _unavailable = str(error)
    if _unavailable is not None:
        LOGGER.warning("native heartbeat unavailable (%s): using the Python heartbeat and the "
                       "%d ms dead-after threshold", _unavailable, c.DEAD_AFTER_US // 1000)
    return _library


def standby_interval_us() -> int:
    """Rule 9: the standby beat's period; 0 (no standby) with ``MU_NATIVE_STANDBY=0``."""
    return 0 if os.environ.get("MU_NATIVE_STANDBY", "1") == "0" else c.NATIVE_STANDBY_INTERVAL_US


def calm_wait_enabled() -> bool:
    """Rule 7: on unless ``MU_CALM_WAIT=0`` (with the standby beat, 10 minutes of 4 closed-loop
    traders counted 0 leader changes, with and without a CPU hog per core; docs/consensus.md)."""
    return os.environ.get("MU_CALM_WAIT", "1") != "0"


def background_priority() -> int:
    """Rule 6: the background thread's ``SCHED_FIFO`` priority; 0 (normal) with
    ``MU_BACKGROUND_RT=0``."""
    return 0 if os.environ.get("MU_BACKGROUND_RT", "1") == "0" else c.BACKGROUND_RT_PRIORITY


def raise_thread_priority(priority: int, what: str) -> bool:
    """Rule 6: move the calling thread to ``SCHED_FIFO`` ``priority``; False if refused."""
    assert priority > 0, priority
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))  # 0: this thread
    except (OSError, AttributeError) as error:
        LOGGER.warning("%s keeps normal priority (SCHED_FIFO %d refused: %s)", what, priority,
                       error)
        return False
    return True


class _Handle:
    """A C object of the helper: ``_ask`` calls one of its integer getters (0 once stopped)."""

    _lib: ctypes.CDLL
    _handle: int | None

    def _ask(self, getter: str) -> int:
        handle = self._handle
        return 0 if handle is None else int(getattr(self._lib, getter)(handle))


class NativeBeat(_Handle):
    """One running C heartbeat thread bumping a u64 word inside a writable buffer."""

    def __init__(self, lib: ctypes.CDLL, handle: int, word: ctypes.c_uint64) -> None:
        self._lib = lib
        self._handle: int | None = handle
        self._word = word  # keeps the buffer exported (mapped) while the thread writes it

    @classmethod
    def start(cls, buf: memoryview, offset: int) -> NativeBeat | None:
        """Start beating the u64 at ``buf[offset:]`` (disabled until ``enable``), or None."""
        lib = load()
        if lib is None:
            return None
        try:
            word = ctypes.c_uint64.from_buffer(buf, offset)
        except (TypeError, ValueError) as error:  # read-only or foreign buffer
            LOGGER.warning("native heartbeat unavailable (%s): Python heartbeat", error)
            return None
        handle = lib.nb_start(ctypes.addressof(word), c.NATIVE_BEAT_INTERVAL_US * 1000,
                              c.NATIVE_TOKEN_TTL_US * 1000, c.NATIVE_BEAT_RT_PRIORITY,
                              standby_interval_us() * 1000)
        if not handle:
            LOGGER.warning("native heartbeat unavailable (thread not created): Python heartbeat")
            return None
        return cls(lib, handle, word)

    def touch(self) -> None:
        """Rule 1: Python is alive; keep beating for another ``NATIVE_TOKEN_TTL_US``."""
        if self._handle is not None:
            self._lib.nb_touch(self._handle)

    def enable(self, on: bool) -> None:
        if self._handle is not None:
            self._lib.nb_enable(self._handle, 1 if on else 0)

    @property
    def realtime(self) -> bool:
        return bool(self._ask("nb_realtime"))

    @property
    def beats(self) -> int:
        return self._ask("nb_beats")

    @property
    def cpus(self) -> tuple[int, int] | None:
        """Rule 9: the CPUs the beat thread and the standby are pinned to; None: no standby."""
        if self._handle is None:
            return None
        main, standby = self._ask("nb_cpu"), self._ask("nb_standby_cpu")
        return None if main < 0 or standby < 0 else (main, standby)

    @property
    def standby_beats(self) -> int:
        """Beats the standby thread gave because the main thread's had not come (Rule 9)."""
        return self._ask("nb_standby_beats")

    @property
    def stale(self) -> int:
        """Beats withheld so far because Python had not refreshed the token (Rule 1)."""
        return self._ask("nb_stale")

    def follow(self, relay: PauseRelay | None) -> None:
        """Rule 8: withhold beats while ``relay`` holds (None: stop following any relay)."""
        if self._handle is not None:
            address = None if relay is None else relay.held_address
            self._lib.nb_set_hold(self._handle, address)

    def take_max_gap_ns(self) -> int:
        """The longest gap between two wake-ups of the thread since the previous call."""
        return self._ask("nb_max_gap_ns")

    def wait_calm(self, still: ctypes.c_uint64, changes: Sequence[ctypes.c_uint64],
                  period_ns: int, max_ns: int) -> tuple[int, int]:
        """Rule 7: block this thread, without the GIL, until ``still`` stood still for one
        ``period_ns`` (``WAIT_STILL``), a word of ``changes`` changed (``WAIT_CHANGED``) or
        ``max_ns`` passed (``WAIT_TIMEOUT``); return that and ``still``'s last value. The
        words must stay mapped meanwhile: the caller holds them (ctypes ``from_buffer``)."""
        assert len(changes) <= WAIT_CHANGES_MAX, len(changes)
        addresses = (ctypes.c_void_p * max(1, len(changes)))(
            *[ctypes.addressof(word) for word in changes])
        seen = ctypes.c_uint64(0)
        outcome = self._lib.nb_wait_calm(ctypes.addressof(still), addresses, len(changes),
                                         period_ns, max_ns, ctypes.byref(seen))
        return int(outcome), int(seen.value)

    def calm_wait(self, leader_region: object, beat_offset: int, leading_offset: int,
                  own: memoryview, own_offsets: Sequence[int], period_ns: int,
                  max_ns: int) -> tuple[int, int] | None:
        """Rule 7 for the background activity: ``wait_calm`` on the leader's heartbeat word
        at ``beat_offset`` of ``leader_region`` (a remote region), waking on its ``leading``
        word or a word of this replica's ``own`` buffer at ``own_offsets`` changing. None when
        it cannot: the region is not mapped here (only shm regions offer ``pin_u64``)."""
        pin = getattr(leader_region, "pin_u64", None)
        if pin is None or len(own_offsets) + 1 > WAIT_CHANGES_MAX:
            return None
        still, leading = pin(beat_offset), pin(leading_offset)
        if still is None or leading is None:
            return None
        words = [leading, *(ctypes.c_uint64.from_buffer(own, offset) for offset in own_offsets)]
        try:
            return self.wait_calm(still, words, period_ns, max_ns)
        finally:
            del still, leading, words  # release the exports: the regions may be unmapped again

    def stop(self) -> None:
        """Rule 3: join the thread, then release the buffer (idempotent)."""
        handle, self._handle = self._handle, None
        if handle is not None:
            self._lib.nb_stop(handle)
        del self._word
        self._word = ctypes.c_uint64(0)


class PauseRelay(_Handle):
    """Rule 8: a C thread between the control FIFO and its Python reader that holds the native
    beat on a pause line before Python sees the line."""

    def __init__(self, lib: ctypes.CDLL, handle: int, read_fd: int, write_fd: int) -> None:
        self._lib = lib
        self._handle: int | None = handle
        self.read_fd = read_fd  # Python reads the FIFO's bytes here, in order
        self._write_fd = write_fd
        self.held_address: int = int(lib.nf_held_word(handle))

    @classmethod
    def start(cls, fifo_fd: int) -> PauseRelay | None:
        """Relay ``fifo_fd`` (non-blocking) through a pipe; None when the helper cannot be
        built (Rule 4): the caller then reads the FIFO itself."""
        lib = load()
        if lib is None:
            return None
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        handle = lib.nf_start(fifo_fd, write_fd, c.NATIVE_BEAT_RT_PRIORITY)
        if not handle:
            os.close(read_fd)
            os.close(write_fd)
            return None
        return cls(lib, handle, read_fd, write_fd)

    @property
    def held(self) -> bool:
        return bool(self._ask("nf_held"))

    @property
    def pauses(self) -> int:
        """Pause lines seen so far."""
        return self._ask("nf_pauses")

    def release(self) -> None:
        """The server resumes: beats may flow again (the replica's own pause state rules)."""
        if self._handle is not None:
            self._lib.nf_release(self._handle)

    def stop(self) -> None:
        """End the thread and close the pipe (idempotent). The hold word stays valid."""
        handle, self._handle = self._handle, None
        if handle is None:
            return
        self._lib.nf_release(handle)
        self._lib.nf_stop(handle)
        for fd in (self.read_fd, self._write_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
