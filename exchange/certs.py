"""``python -m exchange certs DIR``: a development CA, server and trader certificates.

Rule 1: the files are named for what they are: ``ca.crt``/``ca.key``, ``server-<id>.crt``/``.key``,
        ``trader-<name>.crt``/``.key``; every private key is written 0600 (created so, never
        world-readable for a moment), certificates 0644.
Rule 2: a directory that already holds ``ca.crt`` and ``ca.key`` keeps its CA: new certificates are
        issued by it, so certificates made earlier stay valid (adding a trader later works). The
        CA is never replaced silently; ``--new-ca`` starts over.
Rule 3: identities (``exchange.tls`` reads them back): a server certificate carries the URI
        ``urn:mu-exchange:server:<id>`` and the SANs its clients verify (``localhost``,
        ``127.0.0.1``, ``::1``, this machine's host name, ``--hosts``); a trader certificate
        carries ``urn:mu-exchange:client:<first>-<last>``, the client ids it may use. Server
        certificates are also client certificates (server-to-server calls present them).
Rule 4: trader id blocks never overlap: ``client-ids.txt`` in DIR lists what was issued (it is also
        a valid ``--client-map`` file) and a new trader gets the next free block.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from exchange.config import ConfigError
from exchange.tls import (
    CLIENT_URI_PREFIX,
    SERVER_URI_PREFIX,
    format_id_ranges,
    parse_client_map,
    parse_id_ranges,
)

CA_DAYS = 3650
LEAF_DAYS = 825  # the longest validity browsers accept; a development CA needs no more
IDS_PER_TRADER_DEFAULT = 1000
SERVERS_DEFAULT = 3
SERVERS_MAX = 255  # exchange.config REPLICA_ID_MAX
TRADERS_DEFAULT = "alice,bob"
CLIENT_IDS_FILE = "client-ids.txt"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
KEY_MODE = 0o600
CERT_MODE = 0o644

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey
    from cryptography.hazmat.primitives.asymmetric.types import (
        CertificateIssuerPrivateKeyTypes,
        PrivateKeyTypes,
    )


@dataclass(frozen=True, slots=True)
class Issued:
    path: Path
    what: str


def _new_key() -> EllipticCurvePrivateKey:
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` created with ``mode`` (Rule 1): a key is never readable by
    others, not even between create and chmod."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
    finally:
        os.close(fd)


def _key_pem(key: PrivateKeyTypes) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())


class Authority:
    """The development CA: its key and certificate, and issuing under it."""

    def __init__(self, key: CertificateIssuerPrivateKeyTypes, cert: x509.Certificate) -> None:
        self.key = key
        self.cert = cert

    @classmethod
    def create(cls, name: str) -> Authority:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.x509.oid import NameOID

        key = _new_key()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                   .public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
                   .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                   .add_extension(x509.KeyUsage(
                       digital_signature=True, content_commitment=False, key_encipherment=False,
                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True))
        cert = builder.sign(key, hashes.SHA256())
        return cls(key, cert)

    @classmethod
    def load(cls, cert_path: Path, key_path: Path) -> Authority:
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec, rsa

        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigError(f"cannot load the CA in {cert_path.parent}: {exc} (pass --new-ca "
                              f"to make a new one, which invalidates every certificate it "
                              f"issued)") from None
        if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):  # SHA-256 signs
            raise ConfigError(f"{key_path}: a {type(key).__name__} cannot sign certificates")
        return cls(key, cert)

    def issue(self, common_name: str, sans: list[x509.GeneralName], server: bool
              ) -> tuple[bytes, bytes]:
        """(certificate PEM, key PEM) of a new leaf certificate."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        assert sans, common_name
        key = _new_key()
        now = datetime.datetime.now(datetime.UTC)
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
        if server:
            usages.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
                   .issuer_name(self.cert.subject)
                   .public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=LEAF_DAYS))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.SubjectAlternativeName(sans), critical=False)
                   .add_extension(x509.ExtendedKeyUsage(usages), critical=False))
        cert = builder.sign(self.key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)

    def cert_pem(self) -> bytes:
        from cryptography.hazmat.primitives import serialization

        return self.cert.public_bytes(serialization.Encoding.PEM)


def host_names(extra: list[str]) -> list[x509.GeneralName]:
    """The SANs every server certificate carries (Rule 3): loopback, this host, ``extra``."""
    from cryptography import x509

    names = ["localhost", socket.gethostname(), *extra]
    sans: list[x509.GeneralName] = []
    seen: set[str] = set()
    for raw in ["127.0.0.1", "::1", *names]:
        name = raw.strip()
        if not name or name in seen:
            continue
        seen.add(name)
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name))
    return sans


def parse_traders(text: str, taken: dict[str, str], block: int) -> list[tuple[str, str]]:
    """``alice,bob=5,carol=100-199`` -> [(name, id ranges)]: an explicit range, the one issued
    before (``taken``), or the next free block of ``block`` ids (Rule 4)."""
    top = 0
    for ranges in taken.values():
        top = max([top, *(last for _, last in parse_id_ranges(ranges))])
    result: list[tuple[str, str]] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, _, ids = item.partition("=")
        name = name.strip()
        if not NAME_PATTERN.match(name):
            raise ConfigError(f"--traders: {name!r} is not a usable name (letters, digits, "
                              f"'_', '.', '-'; at most 63 characters)")
        if ids.strip():
            parse_id_ranges(ids)  # raises ConfigError naming the problem
            ranges = ids.strip()
        elif name in taken:
            ranges = taken[name]
        else:
            first = (top // block + 1) * block
            ranges, top = f"{first}-{first + block - 1}", first + block - 1
        result.append((name, ranges))
    if len({name for name, _ in result}) != len(result):
        raise ConfigError(f"--traders {text!r} names a trader twice")
    return result


def _read_taken(directory: Path) -> dict[str, str]:
    path = directory / CLIENT_IDS_FILE
    if not path.exists():
        return {}
    try:
        mapping = parse_client_map(path.read_text(), str(path))
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    return {name: format_id_ranges(ids) for name, ids in mapping.items()}


def make_certs(directory: Path, servers: int, traders: str, hosts: list[str], block: int,
               new_ca: bool) -> list[Issued]:
    """Create or extend a certificate directory (module rules); return what was written."""
    from cryptography import x509

    ca_cert, ca_key = directory / "ca.crt", directory / "ca.key"
    keep_ca = ca_cert.exists() and ca_key.exists() and not new_ca
    taken = _read_taken(directory) if keep_ca else {}
    trader_list = parse_traders(traders, taken, block)  # bad input: nothing written
    directory.mkdir(parents=True, exist_ok=True)
    issued: list[Issued] = []
    if keep_ca:
        authority = Authority.load(ca_cert, ca_key)
        issued.append(Issued(ca_cert, "the existing CA (kept; pass --new-ca to replace it)"))
    else:
        authority = Authority.create(f"mu-exchange development CA ({socket.gethostname()})")
        _write(ca_key, _key_pem(authority.key), KEY_MODE)
        _write(ca_cert, authority.cert_pem(), CERT_MODE)
        issued.append(Issued(ca_cert, "new CA: clients verify servers and servers verify "
                             "clients with it (--tls-ca, --client-ca)"))
    sans = host_names(hosts)
    for replica_id in range(1, servers + 1):
        uri = x509.UniformResourceIdentifier(f"{SERVER_URI_PREFIX}{replica_id}")
        cert, key = authority.issue(f"server-{replica_id}", [*sans, uri], server=True)
        issued += _write_pair(directory, f"server-{replica_id}", cert, key,
                              f"server {replica_id} (--tls-cert/--tls-key)")
    for name, ranges in trader_list:
        uri = x509.UniformResourceIdentifier(f"{CLIENT_URI_PREFIX}{ranges}")
        cert, key = authority.issue(name, [uri], server=False)
        issued += _write_pair(directory, f"trader-{name}", cert, key,
                              f"trader {name}: client ids {ranges}")
        taken[name] = ranges
    if trader_list:
        lines = ["# identity (certificate CN) = client ids it may use; a valid --client-map file",
                 *(f"{name} = {ranges}" for name, ranges in sorted(taken.items()))]
        _write(directory / CLIENT_IDS_FILE, ("\n".join(lines) + "\n").encode(), CERT_MODE)
        issued.append(Issued(directory / CLIENT_IDS_FILE, "every trader's client ids"))
    return issued


def _write_pair(directory: Path, stem: str, cert: bytes, key: bytes, what: str) -> list[Issued]:
    _write(directory / f"{stem}.key", key, KEY_MODE)
    _write(directory / f"{stem}.crt", cert, CERT_MODE)
    return [Issued(directory / f"{stem}.crt", what)]


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    certs = commands.add_parser(
        "certs", help="make a development CA, server and trader certificates (TLS)",
        description="Make a development certificate authority in DIR (or reuse the one there) "
        "and issue server and trader certificates with it: ca.crt/ca.key, server-<id>.crt/.key, "
        "trader-<name>.crt/.key (keys 0600) and client-ids.txt. Server certificates name "
        "localhost, 127.0.0.1, ::1, this host and --hosts, so clients verify them at any of "
        "those addresses; each trader certificate names the client ids its holder may use. "
        "Example: python -m exchange certs ./certs --traders alice,bob --hosts exch1.example",
    )
    certs.add_argument("dir", metavar="DIR", help="where to write (created if missing)")
    certs.add_argument("--servers", type=int, default=SERVERS_DEFAULT, metavar="N",
                       help=f"server certificates for ids 1..N (default {SERVERS_DEFAULT}; 0 = "
                       "none)")
    certs.add_argument("--traders", default=TRADERS_DEFAULT, metavar="NAME[=IDS],...",
                       help="trader certificates to make (default %(default)s); IDS is an id or "
                       "FIRST-LAST; default: the next free block of --ids-per-trader ids "
                       "('' = none)")
    certs.add_argument("--ids-per-trader", type=int, default=IDS_PER_TRADER_DEFAULT,
                       metavar="K", help="client ids per trader (default %(default)s)")
    certs.add_argument("--hosts", default="", metavar="HOST,...",
                       help="more host names or IP addresses the servers are reached at")
    certs.add_argument("--new-ca", action="store_true",
                       help="replace an existing CA (every certificate it issued stops working)")


def run(args: argparse.Namespace) -> int:
    if not 0 <= args.servers <= SERVERS_MAX:
        raise ConfigError(f"--servers {args.servers}: must be in 0..{SERVERS_MAX}")
    if args.ids_per_trader < 1:
        raise ConfigError(f"--ids-per-trader {args.ids_per_trader}: need at least 1")
    directory = Path(args.dir)
    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"{directory} exists and is not a directory")
    hosts = [h.strip() for h in args.hosts.split(",") if h.strip()]
    try:
        issued = make_certs(directory, args.servers, args.traders, hosts, args.ids_per_trader,
                            args.new_ca)
    except OSError as exc:
        raise ConfigError(f"cannot write in {directory}: {exc}") from None
    for item in issued:
        print(f"{item.path}  {item.what}")
    print(f"keys (*.key) are readable by their owner only; keep {directory / 'ca.key'} secret")
    return 0
