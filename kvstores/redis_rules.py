"""Which redis commands a replicated front end may run, and how each one travels.

Rule 1: an allow-list decides: a command not named here is refused with an error naming it. Every
        write in ``WRITES`` has the same effect on every replica given the same prior state, so
        applying the committed log in order keeps the local servers identical.
Rule 2: a write whose effect depends on the moment it is applied is made deterministic by the
        leader before it is proposed: relative expiries (``EXPIRE``, ``PEXPIRE``, ``SETEX``,
        ``PSETEX``, ``SET ... EX|PX``, ``GETEX ... EX|PX``) become absolute ones (``PEXPIREAT``,
        ``... PXAT``) from the leader's clock, and a stream id the server would generate
        (``XADD key *``) gets the leader's clock as its milliseconds (``<ms>-*``: every replica
        then picks the same sequence number from the same stream). ``SPOP key [count]``
        becomes an ``EVAL`` of ``SPOP_SCRIPT``, run where the log applies it: it pops the
        smallest members in byte order instead of random ones (any members are a valid
        ``SPOP``; these are the same on every replica), at the cost of sorting the set (O(n
        log n)). The rest of that kind is refused (see ``REFUSED``).
Rule 3: commands with effects outside the data set or per-connection state (functions,
        scripts that ``kvstores.scripts`` cannot show to act the same on every replica,
        blocking other than ``kvstores.blocking``'s list pops, admin, ``SELECT`` of another
        db, ``AUTH``) are refused, because every client shares one connection to the local
        server. ``SPOP_SCRIPT`` is a write whatever ``kvstores.scripts`` says (a forwarding
        follower sends a ``SPOP`` rewritten, as the leader would propose it).
        ``MULTI``/``EXEC``/``DISCARD`` are kept per connection by the front end and a
        transaction travels as one block (``kvstores.transaction``). A subscribe makes the
        client's connection a subscriber with its own connection to the local server
        (``Route.SUBSCRIBE``, ``kvstores.pubsub``); a blocking pop waits in the front end
        (``Route.BLOCK``, ``kvstores.blocking``); ``EVALSHA`` and ``SCRIPT`` use the front
        end's script cache (``Route.EVALSHA``, ``Route.SCRIPT``).
Rule 4: reads (``READS``) never go through consensus: the leader serves them from its local
        server after every write it has applied; a follower from its own (possibly behind) server.
Rule 5: ``classify`` and ``written_keys`` are pure: the clock is passed in.
Rule 6: ``HELLO [2|3] [SETNAME name]`` (what redis-py sends on every connect; protocol 3 is its
        default since 8.0) is answered by the front end as redis-server answers it, in the
        protocol it selects; the connection keeps that protocol (``Route.HELLO``, ``hello``). A
        RESP3 client's commands run while the shared connection to the local server speaks RESP3
        (``kvstores.pipe`` Rule 8), so its replies are exactly redis-server's RESP3 replies.
        ``AUTH`` inside ``HELLO`` is refused like ``AUTH``; ``CLIENT SETNAME``/``SETINFO`` are
        accepted and not kept (client libraries send them on connect), other ``CLIENT``
        subcommands are refused.
Rule 7: ``WATCH`` and ``UNWATCH`` are the front end's (``Route.WATCH``): it knows every write
        this server submits and which keys it may change (``written_keys``), and counts the
        log entries applied here that it did not propose (``kvstores.pipe`` Rule 10); an
        ``EXEC`` after a ``WATCH`` is aborted (a null reply, as redis answers it) when either
        may have changed a watched key since (``kvstores.frontend`` Rule 7).
"""

from __future__ import annotations

import re
from enum import IntEnum

from kvstores import scripts
from kvstores.resp import bulk, encode_command, error, simple


class Route(IntEnum):
    READ = 0  # forward to the local server
    WRITE = 1  # propose through consensus, then every replica applies it
    REPLY = 2  # answered by the front end with the given bytes
    QUIT = 3  # answer +OK and close
    STATUS = 4  # the front end's own status (KVSTORES STATUS)
    SIDE = 5  # after every command sent before it: on a separate connection (memcached metadump)
    FORWARDER = 6  # this connection is another server's forwarder (kvstores.forward Rule 5)
    HELLO = 7  # answered by the front end with ``hello``, which may switch the protocol
    MULTI = 8  # starts a transaction (kvstores.transaction)
    EXEC = 9  # ends one: its commands travel as one block
    DISCARD = 10  # drops one
    SUBSCRIBE = 11  # makes the connection a subscriber (kvstores.pubsub)
    WATCH = 12  # WATCH or UNWATCH: the front end keeps the connection's watched keys (Rule 7)
    CAS = 13  # memcached cas: checked by the leader's front end, then a set (kvstores.mctext)
    BLOCK = 14  # BLOCKING_POPS: attempts until one pops (kvstores.blocking)
    EVALSHA = 15  # EVALSHA[_RO]: the front end's script cache gives the body (kvstores.scripts)
    SCRIPT = 16  # SCRIPT LOAD|EXISTS|FLUSH: the front end's script cache


def _names(text: str) -> frozenset[bytes]:
    return frozenset(name.encode() for name in text.split())


BLOCKING_POPS = _names("BLPOP BRPOP BLMOVE BRPOPLPUSH BLMPOP BZPOPMIN BZPOPMAX BZMPOP")
WRITES = _names(
    "SET SETNX MSET MSETNX GETSET GETDEL APPEND SETRANGE INCR DECR INCRBY DECRBY INCRBYFLOAT "
    "DEL UNLINK RENAME RENAMENX COPY PERSIST EXPIREAT PEXPIREAT "
    "HSET HSETNX HMSET HDEL HINCRBY HINCRBYFLOAT "
    "LPUSH RPUSH LPUSHX RPUSHX LPOP RPOP LSET LINSERT LREM LTRIM LMOVE RPOPLPUSH LMPOP "
    "SADD SREM SMOVE SINTERSTORE SUNIONSTORE SDIFFSTORE "
    "ZADD ZINCRBY ZREM ZREMRANGEBYRANK ZREMRANGEBYSCORE ZREMRANGEBYLEX ZPOPMIN ZPOPMAX ZMPOP "
    "ZRANGESTORE ZUNIONSTORE ZINTERSTORE ZDIFFSTORE "
    "SETBIT BITOP BITFIELD PFADD PFMERGE PFCOUNT GEOADD GEOSEARCHSTORE "
    "XDEL XTRIM FLUSHDB FLUSHALL PUBLISH SPUBLISH"
)
# PFCOUNT is here because it may rewrite the HyperLogLog's cached cardinality (redis flags it as
# a write): applied everywhere, the stored bytes stay equal.

READS = _names(
    "GET MGET STRLEN GETRANGE SUBSTR EXISTS TYPE TTL PTTL EXPIRETIME PEXPIRETIME KEYS SCAN "
    "DBSIZE RANDOMKEY DUMP LCS TOUCH "
    "HGET HMGET HGETALL HKEYS HVALS HLEN HEXISTS HSTRLEN HSCAN HRANDFIELD "
    "LRANGE LLEN LINDEX LPOS "
    "SMEMBERS SISMEMBER SMISMEMBER SCARD SRANDMEMBER SSCAN SINTER SUNION SDIFF SINTERCARD "
    "ZRANGE ZRANGEBYSCORE ZREVRANGE ZREVRANGEBYSCORE ZRANGEBYLEX ZREVRANGEBYLEX ZRANK "
    "ZREVRANK ZSCORE ZMSCORE ZCARD ZCOUNT ZLEXCOUNT ZSCAN ZRANDMEMBER ZINTER ZUNION ZDIFF "
    "ZINTERCARD GETBIT BITCOUNT BITPOS BITFIELD_RO SORT_RO "
    "XRANGE XREVRANGE XLEN GEOPOS GEODIST GEOHASH GEOSEARCH GEORADIUS_RO "
    "GEORADIUSBYMEMBER_RO INFO COMMAND TIME LASTSAVE OBJECT PUBSUB "
    "UNSUBSCRIBE PUNSUBSCRIBE SUNSUBSCRIBE"
)
# PUBLISH is a write so that every replica's subscribers get the message (kvstores.pubsub Rule
# 1); an unsubscribe on a connection that subscribed to nothing only answers (a subscriber's
# travel on its own connection, pubsub Rule 2).

_BLOCKING = "blocking commands are not replicated"
_SCRIPT = "functions are not replicated (only EVAL scripts are, kvstores.scripts)"
_ADMIN = "administrative commands would act on one replica only"
_CONN = "per-connection state is not kept: every client shares one connection to the local server"
REFUSED: dict[bytes, str] = {
    name: reason
    for names, reason in (
        ("WAIT WAITAOF XREADGROUP", _BLOCKING),
        ("FCALL FCALL_RO FUNCTION", _SCRIPT),
        ("DEBUG SAVE BGSAVE BGREWRITEAOF SHUTDOWN REPLICAOF SLAVEOF FAILOVER CLUSTER "
         "MIGRATE MOVE SWAPDB RESTORE RESTORE-ASKING LATENCY SLOWLOG ACL MODULE "
         "SYNC PSYNC MONITOR XGROUP XACK XCLAIM XAUTOCLAIM "
         "XSETID XINFO XPENDING LOLWUT", _ADMIN),
        ("AUTH RESET READONLY READWRITE ASKING", _CONN),
    )
    for name in _names(names)
}
assert not WRITES & READS
assert not REFUSED.keys() & (WRITES | READS)

_PLAIN = {name: Route.WRITE for name in WRITES} | {name: Route.READ for name in READS}
# kvstores.scripts Rule 1: what a writing script may call (scripts.check refuses the
# nondeterministic ones among them by name)
_SCRIPT_SAFE = WRITES | READS | _names("EXPIRE PEXPIRE SETEX PSETEX GETEX PING ECHO")
OK = simple("OK")


def refuse(name: bytes, reason: str) -> bytes:
    text = name.decode("utf-8", errors="replace")
    return error(f"ERR kvstores: '{text}' is not supported by the replicated server: {reason}")


def wrong_args(name: bytes) -> bytes:
    """redis-server's arity error for ``name``."""
    return error(f"ERR wrong number of arguments for '{name.decode(errors='replace').lower()}' "
                 "command")


def _positive_int(arg: bytes) -> int | None:
    try:
        value = int(arg)
    except ValueError:
        return None
    return value if value > 0 else None


def _options_expiry(args: list[bytes], raw: bytes, now_ms: int,
                    first_option: int) -> tuple[Route, bytes]:
    """A write whose options from ``first_option`` on may hold ``EX s`` or ``PX ms``: that
    relative expiry becomes ``PXAT <absolute ms>`` (Rule 2)."""
    for position in range(first_option, len(args) - 1):
        option = args[position].upper()
        if option in (b"EX", b"PX"):
            amount = _positive_int(args[position + 1])
            if amount is None:
                return Route.WRITE, raw  # redis refuses it the same way everywhere
            at_ms = now_ms + (amount * 1000 if option == b"EX" else amount)
            rewritten = args[:position] + [b"PXAT", b"%d" % at_ms] + args[position + 2 :]
            return Route.WRITE, encode_command(rewritten)
    return Route.WRITE, raw


def _set(args: list[bytes], raw: bytes, now_ms: int) -> tuple[Route, bytes]:
    """SET key value [...] [EX s | PX ms]."""
    return _options_expiry(args, raw, now_ms, 3)


def _expire(args: list[bytes], raw: bytes, now_ms: int) -> tuple[Route, bytes]:
    """EXPIRE/PEXPIRE key amount [NX|XX|GT|LT] -> PEXPIREAT key absolute-ms [flag]."""
    if len(args) < 3:
        return Route.REPLY, wrong_args(args[0])
    try:
        amount = int(args[2])
    except ValueError:
        return Route.WRITE, raw
    scale = 1000 if args[0].upper() == b"EXPIRE" else 1
    return Route.WRITE, encode_command(
        [b"PEXPIREAT", args[1], b"%d" % (now_ms + amount * scale)] + args[3:])


def _setex(args: list[bytes], raw: bytes, now_ms: int) -> tuple[Route, bytes]:
    """SETEX/PSETEX key amount value -> SET key value PXAT absolute-ms."""
    if len(args) != 4:
        return Route.REPLY, wrong_args(args[0])
    amount = _positive_int(args[2])
    if amount is None:
        return Route.WRITE, raw
    scale = 1000 if args[0].upper() == b"SETEX" else 1
    return Route.WRITE, encode_command(
        [b"SET", args[1], args[3], b"PXAT", b"%d" % (now_ms + amount * scale)])


def _getex(args: list[bytes], raw: bytes, now_ms: int) -> tuple[Route, bytes]:
    """GETEX key [EX s | PX ms | EXAT | PXAT | PERSIST]: a write (it may change the expiry)."""
    return _options_expiry(args, raw, now_ms, 2)


SPOP_SCRIPT = b"""local members = redis.pcall('SMEMBERS', KEYS[1])
if members.err then return members end
table.sort(members)
if #ARGV == 0 then
  if #members == 0 then return false end
  redis.call('SREM', KEYS[1], members[1])
  return members[1]
end
local popped = {}
for i = 1, math.min(tonumber(ARGV[1]), #members) do popped[i] = members[i] end
for first = 1, #popped, 1000 do
  redis.call('SREM', KEYS[1], unpack(popped, first, math.min(first + 999, #popped)))
end
return popped"""
"""Rule 2's deterministic ``SPOP``: the smallest members in byte order (the server runs in the C
locale, ``kvstores.backend`` Rule 4); ``redis.pcall`` so that a key of another type answers
redis-server's own ``WRONGTYPE`` error."""
_COUNT = re.compile(rb"0|[1-9][0-9]{0,18}")  # redis's strict integer syntax, non-negative
_OUT_OF_RANGE = error("ERR value is out of range, must be positive")


def _spop(args: list[bytes], raw: bytes, now_ms: int) -> tuple[Route, bytes]:
    """SPOP key [count] -> EVAL SPOP_SCRIPT 1 key [count] (Rule 2); redis's errors for bad
    arguments are answered here, since nothing would change."""
    if len(args) < 2:
        return Route.REPLY, wrong_args(args[0])
    if len(args) > 3:
        return Route.REPLY, error("ERR syntax error")
    if len(args) == 3 and (_COUNT.fullmatch(args[2]) is None or int(args[2]) >= 1 << 63):
        return Route.REPLY, _OUT_OF_RANGE
    return Route.WRITE, encode_command([b"EVAL", SPOP_SCRIPT, b"1", *args[1:]])


def _eval(args: list[bytes], raw: bytes, now_ms: int) -> tuple[Route, bytes]:
    """EVAL and EVAL_RO (``kvstores.scripts`` Rules 1-2); ``SPOP_SCRIPT`` is a write (a
    forwarded SPOP arrives already rewritten, Rule 3)."""
    name = args[0].upper()
    if len(args) < 3:
        return Route.REPLY, wrong_args(name)
    body = args[1]
    if body == SPOP_SCRIPT or name == b"EVAL_RO" or scripts.reads_only(body):
        return (Route.WRITE if body == SPOP_SCRIPT else Route.READ), raw
    reason = scripts.check(body, _SCRIPT_SAFE)
    if reason:
        return Route.REPLY, refuse(b"EVAL", "a script that writes runs on every replica, so "
                                            f"it must act the same on each: {reason}")
    return Route.WRITE, raw


def _script(args: list[bytes], raw: bytes, now_ms: int) -> tuple[Route, bytes]:
    """EVALSHA[_RO] and SCRIPT LOAD|EXISTS|FLUSH use the front end's cache (kvstores.scripts
    Rule 3); the other SCRIPT subcommands would act on one replica."""
    name = args[0].upper()
    if name in (b"EVALSHA", b"EVALSHA_RO"):
        return (Route.EVALSHA, raw) if len(args) >= 3 else (Route.REPLY, wrong_args(name))
    sub = args[1].upper() if len(args) > 1 else b""
    if sub in (b"LOAD", b"EXISTS", b"FLUSH"):
        return Route.SCRIPT, raw
    return Route.REPLY, refuse(b"SCRIPT " + sub if sub else b"SCRIPT", _ADMIN)


def _maybe_store(args: list[bytes], raw: bytes, now_ms: int) -> tuple[Route, bytes]:
    """SORT, GEORADIUS, GEORADIUSBYMEMBER: a write with ``STORE``/``STOREDIST`` (redis sorts a
    stored set's ``BY nosort`` too, for its own replicas; ``ALPHA`` compares bytes in the local
    servers' C locale), else a read."""
    for arg in args[2:]:
        if arg.upper() in (b"STORE", b"STOREDIST"):
            return Route.WRITE, raw
    return Route.READ, raw


def _memory(args: list[bytes], raw: bytes, now_ms: int) -> tuple[Route, bytes]:
    """MEMORY USAGE|STATS|DOCTOR|MALLOC-STATS|HELP read the local server (``redis-cli
    --memkeys`` asks MEMORY USAGE of every key); MEMORY PURGE would act on one replica only."""
    if len(args) >= 2 and args[1].upper() in (b"USAGE", b"STATS", b"DOCTOR", b"MALLOC-STATS",
                                              b"HELP"):
        return Route.READ, raw
    return Route.REPLY, refuse(b"MEMORY " + args[1].upper() if len(args) >= 2 else b"MEMORY",
                               _ADMIN)


def _xread(args: list[bytes], raw: bytes, now_ms: int) -> tuple[Route, bytes]:
    """XREAD without BLOCK is a read; with BLOCK it would hold the shared connection."""
    for arg in args[1:]:  # the options come before STREAMS
        option = arg.upper()
        if option == b"STREAMS":
            break
        if option == b"BLOCK":
            return Route.REPLY, refuse(b"XREAD BLOCK", _BLOCKING)
    return Route.READ, raw


def _config(args: list[bytes], raw: bytes, now_ms: int) -> tuple[Route, bytes]:
    """CONFIG GET reads the local server's settings (redis-benchmark asks at start); the rest
    of CONFIG would change one replica only."""
    if len(args) >= 3 and args[1].upper() == b"GET":
        return Route.READ, raw
    return Route.REPLY, refuse(b"CONFIG", _ADMIN)


def _xadd(args: list[bytes], raw: bytes, now_ms: int) -> tuple[Route, bytes]:
    """XADD with an explicit id is deterministic, and so is ``<ms>-*`` (the sequence number
    follows from the stream); ``*`` becomes ``<leader's clock ms>-*`` (Rule 2)."""
    position = 2
    upper = [arg.upper() for arg in args[: min(len(args), 9)]]
    if position < len(upper) and upper[position] == b"NOMKSTREAM":
        position += 1
    if position < len(upper) and upper[position] in (b"MAXLEN", b"MINID"):
        position += 1
        if position < len(args) and args[position] in (b"=", b"~"):
            position += 1
        position += 1
        if position < len(upper) and upper[position] == b"LIMIT":
            position += 2
    if position >= len(args):
        return Route.REPLY, wrong_args(args[0])
    if args[position] == b"*":
        return Route.WRITE, encode_command(
            args[:position] + [b"%d-*" % now_ms] + args[position + 1 :])
    return Route.WRITE, raw


def _local(args: list[bytes], raw: bytes, now_ms: int) -> tuple[Route, bytes]:
    """Commands the front end answers itself."""
    name = args[0].upper()
    if name == b"PING":
        return Route.REPLY, (simple("PONG") if len(args) == 1 else bulk(args[1]))
    if name == b"ECHO":
        return Route.REPLY, (bulk(args[1]) if len(args) == 2 else wrong_args(name))
    if name == b"QUIT":
        return Route.QUIT, OK
    if name == b"SELECT":
        if len(args) == 2 and args[1] == b"0":
            return Route.REPLY, OK
        return Route.REPLY, refuse(b"SELECT", "only database 0 is served")
    if name == b"HELLO":
        return Route.HELLO, raw
    if name in (b"MULTI", b"EXEC", b"DISCARD"):
        if len(args) != 1:
            return Route.REPLY, wrong_args(name)
        return (Route.MULTI if name == b"MULTI" else Route.EXEC if name == b"EXEC"
                else Route.DISCARD), raw
    if name in (b"SUBSCRIBE", b"PSUBSCRIBE", b"SSUBSCRIBE"):
        return Route.SUBSCRIBE, raw
    if name in BLOCKING_POPS:
        return Route.BLOCK, raw
    if name in (b"WATCH", b"UNWATCH"):
        if name == b"WATCH" and len(args) < 2:
            return Route.REPLY, wrong_args(name)
        return Route.WATCH, raw
    if name == b"CLIENT":
        sub = args[1].upper() if len(args) > 1 else b""
        if (sub == b"SETNAME" and len(args) == 3) or (sub == b"SETINFO" and len(args) == 4):
            return Route.REPLY, OK  # accepted, not kept (Rule 6): one shared connection
        return Route.REPLY, refuse(b"CLIENT " + sub if sub else b"CLIENT", _CONN)
    if name == b"KVSTORES":
        sub = args[1].upper() if len(args) > 1 else b""
        if sub == b"DIGEST":
            # DEBUG DIGEST of the local server (enabled for its private socket only): after
            # every write applied before it, so equal digests mean equal data sets.
            return Route.READ, encode_command([b"DEBUG", b"DIGEST"])
        if sub == b"STATUS":
            return Route.STATUS, b""
        if sub == b"FORWARDER":
            return Route.FORWARDER, OK
        return Route.REPLY, error("ERR usage: KVSTORES STATUS | KVSTORES DIGEST")
    raise AssertionError(name)


# Rule 7: where the keys a write may change sit in its arguments: (first, last, step), a
# negative last counting from the end (redis's COMMAND INFO key positions, narrowed to the
# destination where the others are only read).
_WRITTEN_SPANS: dict[bytes, tuple[int, int, int]] = {
    **{name: (1, 1, 1) for name in _names(
        "SET SETNX GETSET GETDEL APPEND SETRANGE INCR DECR INCRBY DECRBY INCRBYFLOAT PERSIST "
        "EXPIREAT PEXPIREAT EXPIRE PEXPIRE SETEX PSETEX GETEX HSET HSETNX HMSET HDEL HINCRBY "
        "HINCRBYFLOAT LPUSH RPUSH LPUSHX RPUSHX LPOP RPOP LSET LINSERT LREM LTRIM SADD SREM "
        "SPOP SINTERSTORE SUNIONSTORE SDIFFSTORE ZADD ZINCRBY ZREM ZREMRANGEBYRANK "
        "ZREMRANGEBYSCORE ZREMRANGEBYLEX ZPOPMIN ZPOPMAX ZRANGESTORE ZUNIONSTORE ZINTERSTORE "
        "ZDIFFSTORE SETBIT BITFIELD PFADD PFMERGE GEOADD GEOSEARCHSTORE XADD XDEL XTRIM")},
    **{name: (1, 2, 1) for name in _names("RENAME RENAMENX LMOVE RPOPLPUSH SMOVE")},
    **{name: (1, -1, 1) for name in _names("DEL UNLINK PFCOUNT")},
    **{name: (1, -1, 2) for name in _names("MSET MSETNX")},
    b"BITOP": (2, 2, 1),
    b"COPY": (2, 2, 1),
}
_NO_KEYS = frozenset((b"PUBLISH", b"SPUBLISH"))


def written_keys(args: list[bytes]) -> list[bytes] | None:
    """Rule 7: the keys the write ``args`` (as the client sent it) may change; None when that
    is not known or is every key (FLUSHALL, an unexpected command): a watcher of any key must
    then assume its key changed."""
    name = args[0].upper()
    if name in _NO_KEYS:
        return []
    if name == b"EVAL":  # SPOP_SCRIPT 1 key [count] (Rule 2); another script: any key
        return args[3:4] if len(args) > 3 and args[1] == SPOP_SCRIPT else None
    if name in (b"LMPOP", b"ZMPOP"):  # numkeys key [key ...] ...
        count = _positive_int(args[1]) if len(args) > 1 else None
        return args[2:2 + count] if count is not None else None
    if name in (b"SORT", b"GEORADIUS", b"GEORADIUSBYMEMBER"):
        stores = [args[i + 1] for i in range(2, len(args) - 1)
                  if args[i].upper() in (b"STORE", b"STOREDIST")]
        return stores
    span = _WRITTEN_SPANS.get(name)
    if span is None:
        return None
    first, last, step = span
    if last < 0:
        last += len(args)
    return args[first:last + 1:step]


def woken_keys(args: list[bytes], written: list[bytes] | None) -> list[bytes] | None:
    """The keys whose blocked clients the write ``args`` wakes (``kvstores.watch`` Rule 3):
    ``written``, except that a script wakes its declared keys only."""
    if written is None and args[0].upper() == b"EVAL" and len(args) > 2 and args[2].isdigit():
        return args[3:3 + int(args[2])]
    return written


RESP3_WRAP = (encode_command([b"HELLO", b"3"]), encode_command([b"HELLO", b"2"]))
"""The commands that switch the shared connection to RESP3 and back (pipe Rule 8)."""
HELLO_SERVER_VERSION = b"7.0.0"  # what HELLO reports: the command set served is redis 7's


def hello(args: list[bytes], protocol: int) -> tuple[int, bytes]:
    """Rule 6: ``HELLO [protover [SETNAME name]]`` on a connection speaking ``protocol``: the
    protocol the connection speaks afterwards and redis-server's reply, in that protocol
    (a RESP3 map or a RESP2 array). Errors leave the protocol as it was."""
    if len(args) >= 2:
        try:
            version = int(args[1])
        except ValueError:
            return protocol, error("ERR Protocol version is not an integer or out of range")
        if version not in (2, 3):
            return protocol, error("NOPROTO unsupported protocol version")
    else:
        version = protocol
    options = [arg.upper() for arg in args[2:]]
    position = 0
    while position < len(options):
        option = options[position]
        if option == b"AUTH":
            return protocol, refuse(b"HELLO AUTH", _CONN)
        if option == b"SETNAME" and position + 1 < len(options):
            position += 2  # accepted; the name is not kept (one shared connection, Rule 3)
            continue
        text = args[2 + position].decode(errors="replace")
        return protocol, error(f"ERR Syntax error in HELLO option '{text}'")
    fields = [(b"server", bulk(b"redis")), (b"version", bulk(HELLO_SERVER_VERSION)),
              (b"proto", b":%d\r\n" % version), (b"id", b":0\r\n"),
              (b"mode", bulk(b"standalone")), (b"role", bulk(b"master")),
              (b"modules", b"*0\r\n")]
    header = b"%%%d\r\n" % len(fields) if version == 3 else b"*%d\r\n" % (2 * len(fields))
    return version, header + b"".join(bulk(key) + value for key, value in fields)


_SPECIAL = {
    b"SET": _set,
    b"EXPIRE": _expire,
    b"PEXPIRE": _expire,
    b"SETEX": _setex,
    b"PSETEX": _setex,
    b"XADD": _xadd,
    b"GETEX": _getex,
    b"CONFIG": _config,
    b"MEMORY": _memory,
    b"XREAD": _xread,
    b"SPOP": _spop,
    b"SORT": _maybe_store,
    b"GEORADIUS": _maybe_store,
    b"GEORADIUSBYMEMBER": _maybe_store,
    b"EVAL": _eval,
    b"EVAL_RO": _eval,
    b"EVALSHA": _script,
    b"EVALSHA_RO": _script,
    b"SCRIPT": _script,
    b"PING": _local,
    b"ECHO": _local,
    b"QUIT": _local,
    b"SELECT": _local,
    b"KVSTORES": _local,
    b"HELLO": _local,
    b"CLIENT": _local,
    b"MULTI": _local,
    b"EXEC": _local,
    b"DISCARD": _local,
    b"UNWATCH": _local,
    b"WATCH": _local,
    b"SUBSCRIBE": _local,
    b"BLPOP": _local,
    b"BRPOP": _local,
    b"BLMOVE": _local,
    b"BRPOPLPUSH": _local,
    b"BZPOPMIN": _local,
    b"BZPOPMAX": _local,
    b"BLMPOP": _local,
    b"BZMPOP": _local,
    b"PSUBSCRIBE": _local,
    b"SSUBSCRIBE": _local,
}
assert not _SPECIAL.keys() & REFUSED.keys()


def classify(args: list[bytes], raw: bytes, now_ms: int) -> tuple[Route, bytes]:
    """(route, bytes) for one command: the bytes to forward or propose, or the reply to send.

    ``now_ms`` is the leader's clock (unix ms), used only to make relative expiries absolute.
    """
    assert args
    name = args[0]
    route = _PLAIN.get(name)
    if route is None:
        name = name.upper()
        route = _PLAIN.get(name)
    if route is not None and name not in _SPECIAL:
        return route, raw
    special = _SPECIAL.get(name)
    if special is not None:
        return special(args, raw, now_ms)
    reason = REFUSED.get(name)
    if reason is not None:
        return Route.REPLY, refuse(name, reason)
    return Route.REPLY, error(
        f"ERR kvstores: unknown or unsupported command '{name.decode(errors='replace')}'")
