"""The cluster's certificate authority and the TLS contexts built on it.

Theory of operation
-------------------
A cluster trusts exactly one private CA, made by `store tls init` and kept in one
directory (`ca.crt`, `ca.key`). Every master and storage daemon holds a leaf
certificate signed by it; the leaf's subject carries the holder's name (CN) and its
role (OU `store-<role>`: master, osd or gateway). Contexts built here trust that CA
alone, never the system store, so "chains to our CA" is what "verified" means.

Two ways of checking who is on the other end:

* Clients reach the master by a host name or address, so their context checks the
  host name against the master certificate's SAN (`localhost`, the loopback
  addresses, the machine's host name and any `--name` given to `store tls init`).
* Daemons reach each other by the addresses in the cluster map, which say nothing
  a certificate could vouch for. They verify the chain with `check_hostname=False`
  and then decide on `peer_identity()` — the verified CN and role.

The master serves daemons (with certificates) and clients (with keys only) on one
port, so its server context asks for a client certificate without requiring one
("optional"). A certificate that *is* presented must still chain to the CA: OpenSSL
refuses the handshake otherwise, exactly as in "required" mode. Callers decide what
a certificate-less peer may do by `peer_identity()` returning None.

Contexts demand TLS 1.3. In TLS 1.3 the client finishes its side of the handshake
before the server has judged the client certificate, so a refused client sees the
failure on its first read, not in its handshake.

Keys are ECDSA P-256 (cheap handshakes). Every file is written to a fresh temporary
file created with its final mode — 0600 for keys, so a key is never readable by
others, not even for an instant — and renamed into place.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import secrets
import socket
import ssl
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import click
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from store.errors import AuthError, ConfigError

ROLES = ("master", "osd", "gateway")
ROLE_PREFIX = "store-"
CA_CERT = "ca.crt"
CA_KEY = "ca.key"
MASTER_NAME = "master"

CA_LIFETIME = datetime.timedelta(days=3653)  # ten years, leap days included
LEAF_LIFETIME = datetime.timedelta(days=1827)  # five years
# Backdated so that a certificate issued on one host is already valid on a peer
# whose clock runs a little behind.
CLOCK_SKEW = datetime.timedelta(minutes=5)

_DNS_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
# Names become file names in the CA directory: no separators, no dot files.
_LEAF_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class PeerIdentity:
    """Who the verified certificate on the other end of a TLS connection belongs to."""

    name: str
    role: str


@dataclass(frozen=True)
class TlsPaths:
    """Where one participant's CA certificate, own certificate and key live."""

    ca: Path
    cert: Path
    key: Path

    @classmethod
    def in_dir(cls, directory: Path, name: str) -> TlsPaths:
        directory = Path(directory)
        return cls(directory / CA_CERT, directory / f"{name}.crt", directory / f"{name}.key")

    def check(self) -> None:
        """Raise ConfigError naming the first missing file and the command that makes it."""
        name = self.cert.stem
        directory = self.cert.parent
        for path in (self.ca, self.cert, self.key):
            if path.is_file():
                continue
            if path == self.ca or name == MASTER_NAME:
                remedy = f"store tls init --dir {directory}"
            else:
                remedy = f"store tls issue {name} --dir {directory}"
            raise ConfigError(f"TLS file {path} is missing: create it with `{remedy}`")


# --- names -----------------------------------------------------------------------------


def is_dns_name(text: str) -> bool:
    if not text or len(text) > 253:
        return False
    return all(_DNS_LABEL.fullmatch(label) for label in text.split("."))


def _ip_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _general_names(names: Iterable[str]) -> list[x509.GeneralName]:
    """SAN entries for `names`: addresses as IP SANs, the rest as DNS SANs, no duplicates."""
    entries: list[x509.GeneralName] = []
    for text in names:
        address = _ip_address(text)
        entry: x509.GeneralName
        if address is not None:
            entry = x509.IPAddress(address)
        elif is_dns_name(text):
            entry = x509.DNSName(text)
        else:
            raise ConfigError(
                f"{text!r} is neither an IP address nor a valid DNS name; "
                "a subject alternative name must be one or the other"
            )
        if entry not in entries:
            entries.append(entry)
    return entries


def _check_leaf_name(name: str) -> None:
    if not _LEAF_NAME.fullmatch(name) or name.lower() == "ca":
        raise ConfigError(
            f"certificate name {name!r} is not usable: use 1-64 letters, digits, '.', '_' "
            "or '-', starting with a letter or digit, and not 'ca'"
        )


# --- files -----------------------------------------------------------------------------


def _write_file(path: Path, data: bytes, mode: int) -> None:
    # Created with its final mode under a temporary name, then renamed: the file is
    # never visible with looser permissions, nor half written.
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_file(path, pem, 0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    _write_file(path, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def _make_dir(directory: Path) -> None:
    if not directory.exists():
        directory.mkdir(parents=True, mode=0o700)
        directory.chmod(0o700)  # mkdir's mode is filtered by the umask
    elif not directory.is_dir():
        raise ConfigError(f"{directory} exists and is not a directory")


def _load_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert_path, key_path = directory / CA_CERT, directory / CA_KEY
    if not cert_path.is_file() or not key_path.is_file():
        raise ConfigError(
            f"no certificate authority in {directory} (need {CA_CERT} and {CA_KEY}): "
            f"run `store tls init --dir {directory}` first"
        )
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (ValueError, TypeError, OSError) as err:
        raise ConfigError(f"cannot load the certificate authority in {directory}: {err}") from err
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{key_path} is not an ECDSA key")
    if key.public_key() != cert.public_key():
        raise ConfigError(f"{key_path} is not the key of {cert_path}")
    return cert, key


# --- certificates ----------------------------------------------------------------------


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _key_usage(ca: bool) -> x509.KeyUsage:
    # ECDSA keys only sign: in TLS 1.3 handshakes, and for a CA, certificates and CRLs.
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _make_ca_cert(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    # A random suffix keeps the subjects of two clusters' CAs apart, which makes
    # "signed by the other cluster" errors readable.
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "store"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"store cluster CA {secrets.token_hex(4)}"),
        ]
    )
    now = _now()
    public = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )


def _make_leaf_cert(
    name: str,
    role: str,
    sans: list[x509.GeneralName],
    key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
) -> x509.Certificate:
    now = _now()
    # A leaf outliving its CA would only fail later and more confusingly.
    not_after = min(now + LEAF_LIFETIME, ca_cert.not_valid_after_utc)
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "store"),
                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ROLE_PREFIX + role),
                    x509.NameAttribute(NameOID.COMMON_NAME, name),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def init_ca(directory: Path, master_names: Sequence[str] = (), force: bool = False) -> None:
    """Create the cluster CA and the master's certificate in `directory`.

    Writes ca.crt, ca.key, master.crt and master.key. Refuses to replace an existing
    CA unless `force`: every certificate it signed would stop being trusted.
    """
    directory = Path(directory)
    # Validate before touching anything, so a typo leaves no half-made CA behind.
    master_sans = _master_sans(master_names)
    if not force and ((directory / CA_CERT).exists() or (directory / CA_KEY).exists()):
        raise ConfigError(
            f"a certificate authority already exists in {directory}; replacing it makes "
            "every certificate it signed untrusted. Pass --force to replace it anyway"
        )
    _make_dir(directory)
    ca_key = _new_key()
    _write_key(directory / CA_KEY, ca_key)
    _write_cert(directory / CA_CERT, _make_ca_cert(ca_key))
    issue(directory, MASTER_NAME, master_sans, role="master")


def _master_sans(extra_names: Sequence[str]) -> list[str]:
    _general_names(extra_names)  # raises on a bad name the operator typed
    names = ["localhost", "127.0.0.1", "::1"]
    hostname = socket.gethostname()
    # The machine's own name is a convenience; one that is no valid DNS name is skipped.
    if is_dns_name(hostname):
        names.append(hostname)
    names.extend(extra_names)
    return names


def issue(
    directory: Path, name: str, sans: Sequence[str] = (), role: str = "osd"
) -> tuple[Path, Path]:
    """Issue a leaf certificate for `name`, signed by the CA in `directory`.

    CN is `name`; the SAN holds `name` itself when it is a DNS name or an IP address,
    then `sans`. Writes NAME.crt and NAME.key (replacing earlier ones) and returns
    their paths.
    """
    directory = Path(directory)
    _check_leaf_name(name)
    if role not in ROLES:
        raise ConfigError(f"unknown role {role!r}: use one of {', '.join(ROLES)}")
    own = [name] if is_dns_name(name) or _ip_address(name) is not None else []
    general_names = _general_names([*own, *sans])
    ca_cert, ca_key = _load_ca(directory)
    key = _new_key()
    cert = _make_leaf_cert(name, role, general_names, key, ca_cert, ca_key)
    paths = TlsPaths.in_dir(directory, name)
    _write_key(paths.key, key)
    _write_cert(paths.cert, cert)
    return paths.cert, paths.key


# --- SSL contexts ----------------------------------------------------------------------


def _load_verify(ctx: ssl.SSLContext, ca: Path) -> None:
    try:
        ctx.load_verify_locations(cafile=os.fspath(ca))
    except (OSError, ssl.SSLError) as err:
        raise ConfigError(f"cannot load CA certificate {ca}: {err}") from err


def _load_chain(ctx: ssl.SSLContext, cert: Path, key: Path) -> None:
    try:
        ctx.load_cert_chain(certfile=os.fspath(cert), keyfile=os.fspath(key))
    except (OSError, ssl.SSLError) as err:
        raise ConfigError(f"cannot load certificate {cert} with key {key}: {err}") from err


def server_context(
    cert: Path, key: Path, ca: Path, client_certs: Literal["required", "optional"]
) -> ssl.SSLContext:
    """A TLS 1.3 server context presenting `cert`, trusting only `ca` for client certs.

    "required" refuses clients without a certificate; "optional" admits them (see
    peer_identity) but still refuses a presented certificate that does not chain to `ca`.
    """
    modes = {"required": ssl.CERT_REQUIRED, "optional": ssl.CERT_OPTIONAL}
    if client_certs not in modes:
        raise ConfigError(f"client_certs must be 'required' or 'optional', not {client_certs!r}")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    _load_chain(ctx, cert, key)
    _load_verify(ctx, ca)
    ctx.verify_mode = modes[client_certs]
    return ctx


def client_context(
    ca: Path, cert: Path | None = None, key: Path | None = None, check_hostname: bool = True
) -> ssl.SSLContext:
    """A TLS 1.3 client context trusting only `ca`; presents `cert`/`key` when given.

    The server's certificate is always verified against `ca`; `check_hostname=False`
    (for daemon-to-daemon links) only skips matching the SAN against the address dialled.
    """
    if (cert is None) != (key is None):
        raise ConfigError("a client certificate needs its key: give both cert and key, or neither")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = check_hostname
    ctx.verify_mode = ssl.CERT_REQUIRED
    _load_verify(ctx, ca)
    if cert is not None and key is not None:
        _load_chain(ctx, cert, key)
    return ctx


def peer_identity(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> PeerIdentity | None:
    """The CN and role of the peer's verified certificate; None if it presented none.

    Raises AuthError for a verified certificate that names no store role: it chains
    to the CA but was not made by `store tls`, so nothing should be granted to it.
    """
    # The parsed form is only filled in for a certificate that passed verification.
    cert = ssl_object.getpeercert()
    if not cert:
        return None
    common_names: list[str] = []
    units: list[str] = []
    subject = cert.get("subject", ())
    for rdn in subject if isinstance(subject, tuple) else ():
        for pair in rdn:
            if not isinstance(pair, tuple) or len(pair) != 2:
                continue
            attr, value = pair
            if attr == "commonName":
                common_names.append(value)
            elif attr == "organizationalUnitName":
                units.append(value)
    roles = [unit.removeprefix(ROLE_PREFIX) for unit in units if unit.startswith(ROLE_PREFIX)]
    if len(common_names) != 1 or len(roles) != 1:
        raise AuthError(
            "the peer's certificate does not name exactly one holder and one store role "
            f"(CN {common_names}, OU {units}); issue it with `store tls issue`"
        )
    return PeerIdentity(name=common_names[0], role=roles[0])


# --- command line ----------------------------------------------------------------------

tls_group = click.Group("tls", help="Manage the cluster's certificate authority.")

_dir_option = click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("tls"),
    show_default=True,
    help="Directory holding the CA and the certificates.",
)


@tls_group.command("init")
@_dir_option
@click.option(
    "--name",
    "names",
    multiple=True,
    metavar="NAME",
    help="Extra host name or address of the master (repeatable).",
)
@click.option("--force", is_flag=True, help="Replace an existing CA.")
def init_command(directory: Path, names: tuple[str, ...], force: bool) -> None:
    """Create the cluster CA and the master's certificate."""
    try:
        init_ca(directory, names, force=force)
    except ConfigError as err:
        raise click.ClickException(str(err)) from err
    master = TlsPaths.in_dir(directory, MASTER_NAME)
    for path in (directory / CA_CERT, directory / CA_KEY, master.cert, master.key):
        click.echo(f"wrote {path}")


@tls_group.command("issue")
@click.argument("name")
@_dir_option
@click.option(
    "--san", "sans", multiple=True, metavar="S", help="Extra host name or address (repeatable)."
)
@click.option("--role", type=click.Choice(ROLES), default="osd", show_default=True)
def issue_command(name: str, directory: Path, sans: tuple[str, ...], role: str) -> None:
    """Issue a certificate for NAME, signed by the cluster CA."""
    try:
        cert, key = issue(directory, name, sans, role=role)
    except ConfigError as err:
        raise click.ClickException(str(err)) from err
    click.echo(f"wrote {cert}")
    click.echo(f"wrote {key}")
