"""TLS for every gRPC endpoint, and who may use which client id.

Rule 1: a server with ``--tls-cert``/``--tls-key`` serves only TLS on its one port (order entry,
        sessions, market data, status, health and the server-to-server ``Replication``
        service alike); with ``--client-ca`` every caller must present a certificate issued by
        that CA (mutual TLS), checked by gRPC during the handshake, before any handler runs.
Rule 2: a caller's identity is its certificate (``Identity``): its common name, the client ids
        named in it (URIs ``urn:mu-exchange:client:<id>`` or ``...:<first>-<last>``), the ids
        ``--client-map`` gives its common name or any of its SANs, and the server id of a server
        certificate (``urn:mu-exchange:server:<id>``). A request for a client id outside that
        set is refused with PERMISSION_DENIED naming the id (``Authorizer.refusal``), on every
        order-entry RPC and for every order of a session message, before anything of it runs.
Rule 3: with mutual TLS, ``Replication.FetchSnapshot`` (a snapshot holds every trader's orders)
        answers only server certificates; every other RPC needs an authenticated caller, which
        the handshake already guarantees (the ``Exchange`` servicer checks again, health
        checking relies on the handshake alone). Without ``--client-ca``
        nobody is authenticated: TLS then only encrypts and any caller may use any client id, as
        in plaintext.
Rule 4: plaintext is refused on a listen address that is not loopback unless ``--insecure``
        (``check_listen``): one line, exit 2.
Rule 5: server-to-server calls (snapshot fetch, the cold-start gate's status calls) present the
        server's own certificate and verify the peer with ``--peer-ca`` (default ``--client-ca``);
        clients verify the name they dialled (the address in ``SERVER_URIS`` or a leader
        redirect) against the server certificate's SANs.
Rule 6: bad files are one ``ConfigError`` line naming the flag and the file, found at start-up
        (unreadable, not PEM, a key that does not match its certificate), never a traceback.
"""

from __future__ import annotations

import argparse
import ipaddress
import re
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import grpc

from exchange.config import ConfigError

SERVER_URI_PREFIX = "urn:mu-exchange:server:"
CLIENT_URI_PREFIX = "urn:mu-exchange:client:"
PEM_CERT_KEY = "x509_pem_cert"  # the auth-context property holding the peer's certificate
IDENTITY_CACHE_MAX = 4096  # distinct certificates remembered; parsing one costs ~100 us
ID_RANGES_MAX = 1000  # ranges in one id list (a certificate or a client-map line)
CLIENT_ID_MAX = 2**64 - 1  # exchange.state_machine CLIENT_ID_MAX (the wire's uint64)
FILE_BYTES_MAX = 1 << 20  # a PEM or client-map file larger than this is a mistake
_RANGE = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")

IdRanges = tuple[tuple[int, int], ...]


def parse_id_ranges(text: str, what: str = "client ids") -> IdRanges:
    """``"5, 100-199"`` -> ``((5, 5), (100, 199))``; ``ConfigError`` naming ``what``."""
    ranges: list[tuple[int, int]] = []
    for part in text.split(","):
        if not part.strip():
            continue
        match = _RANGE.match(part)
        if match is None:
            raise ConfigError(f"{what}: {part.strip()!r} is not an id or FIRST-LAST")
        first = int(match.group(1))
        last = int(match.group(2) or first)
        if not 1 <= first <= last <= CLIENT_ID_MAX:
            raise ConfigError(f"{what}: {part.strip()!r}: need 1 <= FIRST <= LAST <= 2^64-1")
        ranges.append((first, last))
    if not ranges:
        raise ConfigError(f"{what}: no client id given")
    if len(ranges) > ID_RANGES_MAX:
        raise ConfigError(f"{what}: more than {ID_RANGES_MAX} ranges (ID_RANGES_MAX)")
    return tuple(sorted(ranges))


def format_id_ranges(ranges: IdRanges) -> str:
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges)


def parse_client_map(text: str, source: str) -> dict[str, IdRanges]:
    """A client-map file: ``identity = ids`` lines (ids as ``parse_id_ranges``), ``#`` comments.
    The identity is a certificate's common name or one of its SANs (DNS name, URI, e-mail)."""
    mapping: dict[str, IdRanges] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, ids = line.rpartition("=")
        name = name.strip()
        if not sep or not name:
            raise ConfigError(f"{source}:{number}: expected 'identity = ids', got {raw.strip()!r}")
        ranges = parse_id_ranges(ids, f"{source}:{number}")
        mapping[name] = tuple(sorted(mapping.get(name, ()) + ranges))
    return mapping


def _read(path: str, flag: str) -> bytes:
    try:
        with open(path, "rb") as file:
            data = file.read(FILE_BYTES_MAX + 1)
    except OSError as exc:
        raise ConfigError(f"{flag} {path}: {exc.strerror or exc}") from None
    if len(data) > FILE_BYTES_MAX:
        raise ConfigError(f"{flag} {path}: larger than {FILE_BYTES_MAX} bytes; not a PEM file")
    return data


def _load_certs(data: bytes, path: str, flag: str) -> list[Any]:
    from cryptography import x509

    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ConfigError(f"{flag} {path}: not a PEM certificate") from None
    return certs


def _check_key_pair(cert_pem: bytes, key_pem: bytes, cert_path: str, key_path: str) -> None:
    from cryptography.hazmat.primitives import serialization

    cert = _load_certs(cert_pem, cert_path, "--tls-cert")[0]
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else "unreadable"
        raise ConfigError(f"--tls-key {key_path}: not an unencrypted PEM private key "
                          f"({reason})") from None
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    encoding = serialization.Encoding.DER
    if key.public_key().public_bytes(encoding, public) != \
            cert.public_key().public_bytes(encoding, public):
        raise ConfigError(f"--tls-key {key_path} is not the key of --tls-cert {cert_path}")


@dataclass(frozen=True, slots=True)
class ClientTls:
    """What a client (trader, watcher, launcher, or a server calling a peer) dials with."""

    ca: bytes  # the CA that issued the servers' certificates
    cert: bytes | None = None  # the client certificate (mutual TLS), with ``key``
    key: bytes | None = None

    @classmethod
    def from_files(cls, ca: str | None, cert: str | None, key: str | None) -> ClientTls | None:
        """``--tls-ca/--tls-cert/--tls-key``; None when none is given (plaintext)."""
        if ca is None and cert is None and key is None:
            return None
        if ca is None:
            raise ConfigError("--tls-cert/--tls-key need --tls-ca (the CA that issued the "
                              "servers' certificates)")
        if (cert is None) != (key is None):
            raise ConfigError("--tls-cert and --tls-key go together")
        ca_pem = _read(ca, "--tls-ca")
        _load_certs(ca_pem, ca, "--tls-ca")
        if cert is None or key is None:
            return cls(ca_pem)
        cert_pem, key_pem = _read(cert, "--tls-cert"), _read(key, "--tls-key")
        _check_key_pair(cert_pem, key_pem, cert, key)
        return cls(ca_pem, cert_pem, key_pem)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ClientTls | None:
        """From the flags ``add_client_tls_arguments`` adds."""
        return cls.from_files(args.tls_ca, args.tls_cert, args.tls_key)

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(root_certificates=self.ca, private_key=self.key,
                                            certificate_chain=self.cert)

    def identity(self) -> Identity | None:
        """The identity of this client's own certificate (which ids it may use), if any."""
        return None if self.cert is None else identity_of(self.cert, {})


def add_client_tls_arguments(parser: argparse.ArgumentParser) -> None:
    """``--tls-ca/--tls-cert/--tls-key`` of every client command (traders, watch)."""
    group = parser.add_argument_group(
        "TLS", "connect over TLS (certificates: python -m exchange certs DIR)")
    group.add_argument("--tls-ca", default=None, metavar="FILE",
                       help="the CA that issued the servers' certificates, e.g. DIR/ca.crt")
    group.add_argument("--tls-cert", default=None, metavar="FILE",
                       help="client certificate for mutual TLS, e.g. DIR/trader-alice.crt")
    group.add_argument("--tls-key", default=None, metavar="FILE",
                       help="its private key, e.g. DIR/trader-alice.key")


def client_tls_flags(args: argparse.Namespace) -> list[str]:
    """The flags of ``add_client_tls_arguments`` as given, to pass to a child process."""
    flags: list[str] = []
    for name in ("tls_ca", "tls_cert", "tls_key"):
        value = getattr(args, name, None)
        if value is not None:
            flags += ["--" + name.replace("_", "-"), value]
    return flags


def certificate_ids(tls: ClientTls | None, count: int, flag: str) -> tuple[int, ...]:
    """The first ``count`` client ids ``tls``'s certificate names; () if it names none."""
    identity = None if tls is None else tls.identity()
    if identity is None or not identity.client_ids:
        return ()
    ids: list[int] = []
    for first, last in identity.client_ids:
        ids.extend(range(first, min(last, first + count - len(ids) - 1) + 1))
        if len(ids) >= count:
            return tuple(ids)
    raise ConfigError(f"{flag} {count}: the certificate {identity.name!r} allows only "
                      f"{len(ids)} client ids")


def time_seq() -> int:
    """A first seq above any earlier run's, for a client id reused from run to run (a
    certificate's): microseconds since the epoch (a client sends far fewer than one order a
    microsecond)."""
    return time.time_ns() // 1000


def open_channel(address: str, tls: ClientTls | None,
                 options: Sequence[tuple[str, Any]] = ()) -> grpc.Channel:
    """A channel to ``address``: TLS when ``tls`` is given (verifying ``address``'s host
    against the server's SANs, Rule 5), else plaintext."""
    if tls is None:
        return grpc.insecure_channel(address, options=list(options))
    return grpc.secure_channel(address, tls.credentials(), options=list(options))


def open_aio_channel(address: str, tls: ClientTls | None,
                     options: Sequence[tuple[str, Any]] = ()) -> grpc.aio.Channel:
    """``open_channel`` for the running event loop (``grpc.aio``)."""
    if tls is None:
        return grpc.aio.insecure_channel(address, options=list(options))
    return grpc.aio.secure_channel(address, tls.credentials(), options=list(options))


@dataclass(frozen=True, slots=True)
class Identity:
    """A certificate's identity (Rule 2)."""

    name: str  # the common name, else the first SAN
    names: tuple[str, ...]  # the common name and every DNS/URI/e-mail SAN
    client_ids: IdRanges
    server_id: int | None = None

    def may_use(self, client_id: int) -> bool:
        return any(first <= client_id <= last for first, last in self.client_ids)


def identity_of(cert_pem: bytes, client_map: dict[str, IdRanges]) -> Identity:
    """Read ``cert_pem``'s identity (Rule 2). Raises ``ValueError`` on a certificate that does
    not parse (gRPC verified it, so only a bug gets there)."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    cert = x509.load_pem_x509_certificate(cert_pem)
    names: list[str] = [str(a.value) for a in
                        cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = None
    uris: list[str] = []
    if san is not None:
        uris = [str(u) for u in san.get_values_for_type(x509.UniformResourceIdentifier)]
        names += san.get_values_for_type(x509.DNSName) + uris
        names += san.get_values_for_type(x509.RFC822Name)
    ranges: list[tuple[int, int]] = []
    server_id: int | None = None
    for uri in uris:
        if uri.startswith(CLIENT_URI_PREFIX):
            try:
                ranges += parse_id_ranges(uri[len(CLIENT_URI_PREFIX):])
            except ConfigError:
                continue  # a malformed id list grants nothing
        elif uri.startswith(SERVER_URI_PREFIX) and uri[len(SERVER_URI_PREFIX):].isdigit():
            server_id = int(uri[len(SERVER_URI_PREFIX):])
    for name in names:
        ranges += client_map.get(name, ())
    return Identity(names[0] if names else "(no name)", tuple(names), tuple(sorted(ranges)),
                    server_id)


@dataclass(slots=True)
class Authorizer:
    """Per-RPC checks of a mutual-TLS server (Rules 2-3). Cost: one auth-context read and a dict
    look-up per RPC; a certificate is parsed once (``IDENTITY_CACHE_MAX``)."""

    client_map: dict[str, IdRanges]
    _cache: dict[bytes, Identity] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def caller(self, context: grpc.ServicerContext) -> Identity | None:
        """The caller's identity, or None if it presented no certificate."""
        # grpc-stubs types the values as bytes; they are lists of bytes
        pems = cast("list[bytes] | None", context.auth_context().get(PEM_CERT_KEY))
        if not pems:
            return None
        pem = pems[0]
        identity = self._cache.get(pem)
        if identity is None:
            identity = identity_of(pem, self.client_map)
            with self._lock:
                if len(self._cache) >= IDENTITY_CACHE_MAX:
                    self._cache.clear()
                self._cache[pem] = identity
        return identity

    def refusal(self, caller: Identity | None, client_id: int) -> str:
        """Why ``caller`` may not use ``client_id`` ("" when it may)."""
        if caller is None:
            return "no client certificate: this exchange requires mutual TLS"
        if caller.may_use(client_id):
            return ""
        allowed = format_id_ranges(caller.client_ids) if caller.client_ids else "none"
        text = allowed if len(allowed) <= 80 else allowed[:77] + "..."
        return (f"client id {client_id} is not allowed for certificate {caller.name!r} "
                f"(its client ids: {text})")


@dataclass(frozen=True, slots=True)
class ServerTls:
    """A server's TLS settings, loaded and checked (Rule 6)."""

    cert: bytes
    key: bytes
    client_ca: bytes | None  # mutual TLS when set
    peer: ClientTls | None  # how this server dials its peers (Rule 5); None: no peer CA
    authorizer: Authorizer | None  # set exactly when ``client_ca`` is

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.key, self.cert)], root_certificates=self.client_ca,
            require_client_auth=self.client_ca is not None)


def load_server_tls(cert: str | None, key: str | None, client_ca: str | None,
                    peer_ca: str | None, client_map: str | None) -> ServerTls | None:
    """``--tls-cert/--tls-key/--client-ca/--peer-ca/--client-map``, checked (Rule 6)."""
    if cert is None and key is None:
        for flag, value in (("--client-ca", client_ca), ("--peer-ca", peer_ca),
                            ("--client-map", client_map)):
            if value is not None:
                raise ConfigError(f"{flag} needs --tls-cert and --tls-key")
        return None
    if cert is None or key is None:
        raise ConfigError("--tls-cert and --tls-key go together")
    if client_map is not None and client_ca is None:
        raise ConfigError("--client-map needs --client-ca (identities come from client "
                          "certificates)")
    cert_pem, key_pem = _read(cert, "--tls-cert"), _read(key, "--tls-key")
    _check_key_pair(cert_pem, key_pem, cert, key)
    ca_pem = None
    if client_ca is not None:
        ca_pem = _read(client_ca, "--client-ca")
        _load_certs(ca_pem, client_ca, "--client-ca")
    peer_pem = ca_pem
    if peer_ca is not None:
        peer_pem = _read(peer_ca, "--peer-ca")
        _load_certs(peer_pem, peer_ca, "--peer-ca")
    mapping: dict[str, IdRanges] = {}
    if client_map is not None:
        mapping = parse_client_map(_read(client_map, "--client-map").decode(errors="replace"),
                                   client_map)
    peer = None if peer_pem is None else ClientTls(peer_pem, cert_pem, key_pem)
    authorizer = None if ca_pem is None else Authorizer(mapping)
    return ServerTls(cert_pem, key_pem, ca_pem, peer, authorizer)


def is_loopback(host: str) -> bool:
    """True if every address ``host`` names is a loopback address (a name that does not
    resolve is not loopback)."""
    host = host.strip("[]")
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback
                               for info in infos)


def check_listen(listen: str, tls: ServerTls | None, insecure: bool) -> None:
    """Rule 4: refuse plaintext on a non-loopback listen address unless ``insecure``."""
    if tls is not None or insecure:
        return
    host = listen.rpartition(":")[0]
    if not is_loopback(host):
        raise ConfigError(f"refusing plaintext gRPC on non-loopback address {listen}: anyone "
                          f"who reaches it could trade as any client; pass --tls-cert/--tls-key "
                          f"(and --client-ca; python -m exchange certs makes them) or --insecure")
