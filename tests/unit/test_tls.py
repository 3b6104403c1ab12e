"""The cluster CA, its certificates, and TLS handshakes run in memory (no sockets)."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import stat
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import given
from hypothesis import strategies as st

from store import tls
from store.errors import AuthError, ConfigError


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One CA with a master and an osd certificate, shared read-only by the tests."""
    directory = tmp_path_factory.mktemp("cluster") / "tls"
    tls.init_ca(directory, master_names=["master.example", "10.1.2.3"])
    tls.issue(directory, "osd.1", role="osd")
    return directory


@pytest.fixture(scope="module")
def other_cluster(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("other") / "tls"
    tls.init_ca(directory)
    tls.issue(directory, "osd.1", role="osd")
    return directory


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


# --- in-memory handshakes --------------------------------------------------------------


@dataclass
class Handshake:
    client: ssl.SSLObject
    server: ssl.SSLObject
    client_error: ssl.SSLError | None = None
    server_error: ssl.SSLError | None = None

    @property
    def ok(self) -> bool:
        return self.client_error is None and self.server_error is None


def handshake(
    client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext, server_hostname: str | None = None
) -> Handshake:
    """Run a handshake over two memory BIO pairs, then one round trip of data.

    The round trip matters for TLS 1.3: the client completes before the server has
    judged the client certificate, and learns of a refusal only by reading.
    """
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_side=False, server_hostname=server_hostname)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    result = Handshake(client, server)
    c_done = s_done = False

    def shuttle() -> None:
        s_in.write(c_out.read())
        c_in.write(s_out.read())

    for _ in range(20):
        if not c_done and result.client_error is None:
            try:
                client.do_handshake()
                c_done = True
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError as err:
                result.client_error = err
        shuttle()
        if not s_done and result.server_error is None:
            try:
                server.do_handshake()
                s_done = True
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError as err:
                result.server_error = err
        shuttle()
        if (c_done or result.client_error) and (s_done or result.server_error):
            break
    if c_done and s_done:
        client.write(b"ping")
        shuttle()
        assert server.read() == b"ping"
        server.write(b"pong")
        shuttle()
        assert client.read() == b"pong"
    elif c_done and result.client_error is None:
        # A server-side refusal reaches the client as an alert on its next read.
        shuttle()
        try:
            client.read()
        except ssl.SSLError as err:
            result.client_error = err
    return result


def osd_client(
    directory: Path, name: str = "osd.1", check_hostname: bool = False
) -> ssl.SSLContext:
    paths = tls.TlsPaths.in_dir(directory, name)
    return tls.client_context(paths.ca, paths.cert, paths.key, check_hostname=check_hostname)


def master_server(directory: Path, client_certs: str) -> ssl.SSLContext:
    paths = tls.TlsPaths.in_dir(directory, "master")
    return tls.server_context(paths.cert, paths.key, paths.ca, client_certs)  # type: ignore[arg-type]


# --- init ------------------------------------------------------------------------------


def test_init_writes_four_files_keys_private(tmp_path: Path) -> None:
    directory = tmp_path / "tls"
    tls.init_ca(directory)
    for name in ("ca.crt", "ca.key", "master.crt", "master.key"):
        assert (directory / name).is_file(), name
    assert mode(directory) == 0o700
    assert mode(directory / "ca.key") == 0o600
    assert mode(directory / "master.key") == 0o600
    assert not list(directory.glob(".*")), "temporary files left behind"


def test_init_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    tls.init_ca(tmp_path)
    before = (tmp_path / "ca.crt").read_bytes()
    with pytest.raises(ConfigError, match="--force"):
        tls.init_ca(tmp_path)
    assert (tmp_path / "ca.crt").read_bytes() == before
    tls.init_ca(tmp_path, force=True)
    assert (tmp_path / "ca.crt").read_bytes() != before


def test_init_rejects_bad_master_name_before_writing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nor a valid DNS name"):
        tls.init_ca(tmp_path / "tls", master_names=["bad name!"])
    assert not (tmp_path / "tls").exists()


def test_ca_certificate_extensions(cluster: Path) -> None:
    ca = load_cert(cluster / "ca.crt")
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign
    lifetime = ca.not_valid_after_utc - ca.not_valid_before_utc
    assert datetime.timedelta(days=3650) <= lifetime <= datetime.timedelta(days=3660)
    ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = ca.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ski.digest


def test_master_certificate_sans(cluster: Path) -> None:
    import socket

    cert = load_cert(cluster / "master.crt")
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    dns = san.get_values_for_type(x509.DNSName)
    ips = san.get_values_for_type(x509.IPAddress)
    assert {"localhost", "master.example"} <= set(dns)
    if tls.is_dns_name(socket.gethostname()):
        assert socket.gethostname() in dns
    assert {
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
        ipaddress.ip_address("10.1.2.3"),
    } <= set(ips)
    assert "10.1.2.3" not in dns
    ou = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    assert [a.value for a in ou] == ["store-master"]


# --- issue -----------------------------------------------------------------------------


def test_issue_without_ca_names_init_command(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="store tls init"):
        tls.issue(tmp_path, "osd.1")
    assert not (tmp_path / "osd.1.key").exists()


def test_issued_leaf_certificate(cluster: Path) -> None:
    cert_path, key_path = tls.issue(cluster, "osd.7", sans=["10.0.0.7", "disk7.example"])
    assert (cert_path, key_path) == (cluster / "osd.7.crt", cluster / "osd.7.key")
    assert mode(key_path) == 0o600
    cert = load_cert(cert_path)
    ca = load_cert(cluster / "ca.crt")
    assert cert.issuer == ca.subject
    cert.verify_directly_issued_by(ca)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "osd.7"
    ou = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    assert [a.value for a in ou] == ["store-osd"]
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["osd.7", "disk7.example"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.7")]
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and not usage.key_cert_sign
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ca_ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ca_ski.digest
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert datetime.timedelta(days=1825) <= lifetime <= datetime.timedelta(days=1830)
    again, _ = tls.issue(cluster, "osd.8")
    assert load_cert(again).serial_number != cert.serial_number


def test_issue_name_that_is_no_hostname_gets_no_own_san(cluster: Path) -> None:
    cert_path, _ = tls.issue(cluster, "osd_9", sans=["h9.example"], role="gateway")
    cert = load_cert(cert_path)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["h9.example"]
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "osd_9"


def test_issue_key_is_private_even_when_replacing_a_loose_file(cluster: Path) -> None:
    loose = cluster / "osd.20.key"
    loose.write_bytes(b"old")
    loose.chmod(0o644)
    tls.issue(cluster, "osd.20")
    assert mode(loose) == 0o600
    assert loose.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")


@pytest.mark.parametrize("name", ["", "../escape", "a/b", ".hidden", "ca", "CA", "x" * 65])
def test_issue_refuses_unusable_names(cluster: Path, name: str) -> None:
    with pytest.raises(ConfigError, match="not usable"):
        tls.issue(cluster, name)


def test_issue_refuses_unknown_role_and_bad_san(cluster: Path) -> None:
    with pytest.raises(ConfigError, match="unknown role"):
        tls.issue(cluster, "osd.30", role="admin")
    with pytest.raises(ConfigError, match="neither an IP address"):
        tls.issue(cluster, "osd.30", sans=["under_score.example"])
    assert not (cluster / "osd.30.crt").exists()


@given(st.ip_addresses())
def test_addresses_become_ip_sans(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    assert tls._general_names([str(address)]) == [x509.IPAddress(address)]


@given(
    st.from_regex(
        r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\.[a-z]([a-z0-9-]{0,20}[a-z0-9])?){0,3}",
        fullmatch=True,
    )
)
def test_hostnames_become_dns_sans(name: str) -> None:
    assert tls._general_names([name, name]) == [x509.DNSName(name)]


def is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


# Text with a character no host name has, that is not an address either ("::" is one).
@given(
    st.text(min_size=1).filter(lambda s: any(c in s for c in " _/*:@!\x00") and not is_address(s))
)
def test_other_text_is_refused_as_san(text: str) -> None:
    with pytest.raises(ConfigError):
        tls._general_names([text])


# --- handshakes ------------------------------------------------------------------------


@pytest.mark.parametrize("client_certs", ["required", "optional"])
def test_daemon_and_master_mutual_handshake(cluster: Path, client_certs: str) -> None:
    result = handshake(osd_client(cluster), master_server(cluster, client_certs))
    assert result.ok, (result.client_error, result.server_error)
    assert tls.peer_identity(result.server) == tls.PeerIdentity("osd.1", "osd")
    assert tls.peer_identity(result.client) == tls.PeerIdentity("master", "master")
    assert result.client.version() == "TLSv1.3"


def test_master_as_client_of_daemon(cluster: Path) -> None:
    osd = tls.TlsPaths.in_dir(cluster, "osd.1")
    server = tls.server_context(osd.cert, osd.key, osd.ca, "required")
    result = handshake(osd_client(cluster, "master"), server)
    assert result.ok, (result.client_error, result.server_error)
    assert tls.peer_identity(result.server) == tls.PeerIdentity("master", "master")
    assert tls.peer_identity(result.client) == tls.PeerIdentity("osd.1", "osd")


@pytest.mark.parametrize("client_certs", ["required", "optional"])
def test_certificate_from_other_ca_is_refused(
    cluster: Path, other_cluster: Path, client_certs: str
) -> None:
    stranger = tls.TlsPaths.in_dir(other_cluster, "osd.1")
    # The stranger trusts our CA, so only the server's judgement can stop it.
    client_ctx = tls.client_context(cluster / "ca.crt", stranger.cert, stranger.key, False)
    result = handshake(client_ctx, master_server(cluster, client_certs))
    assert isinstance(result.server_error, ssl.SSLCertVerificationError)
    assert result.client_error is not None


def test_client_refuses_server_from_other_ca(cluster: Path, other_cluster: Path) -> None:
    result = handshake(osd_client(other_cluster), master_server(cluster, "optional"))
    assert isinstance(result.client_error, ssl.SSLCertVerificationError)


def test_certificate_less_client_accepted_by_optional(cluster: Path) -> None:
    client_ctx = tls.client_context(cluster / "ca.crt")
    result = handshake(client_ctx, master_server(cluster, "optional"), "localhost")
    assert result.ok, (result.client_error, result.server_error)
    assert tls.peer_identity(result.server) is None
    assert tls.peer_identity(result.client) == tls.PeerIdentity("master", "master")


def test_certificate_less_client_refused_by_required(cluster: Path) -> None:
    client_ctx = tls.client_context(cluster / "ca.crt")
    result = handshake(client_ctx, master_server(cluster, "required"), "localhost")
    assert result.server_error is not None
    assert "certificate" in str(result.server_error).lower()
    assert result.client_error is not None


@pytest.mark.parametrize("hostname", ["localhost", "127.0.0.1", "::1", "master.example"])
def test_hostname_check_accepts_master_names(cluster: Path, hostname: str) -> None:
    client_ctx = tls.client_context(cluster / "ca.crt")
    result = handshake(client_ctx, master_server(cluster, "optional"), hostname)
    assert result.ok, (result.client_error, result.server_error)


def test_hostname_check_refuses_other_name(cluster: Path) -> None:
    client_ctx = tls.client_context(cluster / "ca.crt")
    result = handshake(client_ctx, master_server(cluster, "optional"), "other.example")
    assert isinstance(result.client_error, ssl.SSLCertVerificationError)
    assert "other.example" in str(result.client_error)
    unchecked = tls.client_context(cluster / "ca.crt", check_hostname=False)
    assert handshake(unchecked, master_server(cluster, "optional"), "other.example").ok


def test_contexts_refuse_tls12(cluster: Path) -> None:
    server = master_server(cluster, "optional")
    client = tls.client_context(cluster / "ca.crt")
    assert server.minimum_version == client.minimum_version == ssl.TLSVersion.TLSv1_3
    client.minimum_version = ssl.TLSVersion.TLSv1_2
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    assert not handshake(client, server, "localhost").ok


# --- contexts and paths: configuration errors ------------------------------------------


def test_context_errors_are_config_errors(cluster: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cert and key"):
        tls.client_context(cluster / "ca.crt", cert=cluster / "osd.1.crt")
    with pytest.raises(ConfigError, match=r"missing\.crt"):
        tls.client_context(tmp_path / "missing.crt")
    with pytest.raises(ConfigError, match=r"osd\.1\.crt"):
        tls.server_context(
            cluster / "osd.1.crt", cluster / "master.key", cluster / "ca.crt", "required"
        )
    with pytest.raises(ConfigError, match="client_certs"):
        tls.server_context(
            cluster / "master.crt",
            cluster / "master.key",
            cluster / "ca.crt",
            "sometimes",  # type: ignore[arg-type]
        )


def test_tls_paths_check_names_missing_file_and_command(cluster: Path, tmp_path: Path) -> None:
    paths = tls.TlsPaths.in_dir(cluster, "osd.1")
    assert paths == tls.TlsPaths(cluster / "ca.crt", cluster / "osd.1.crt", cluster / "osd.1.key")
    paths.check()
    with pytest.raises(ConfigError, match=r"ca\.crt.*store tls init --dir"):
        tls.TlsPaths.in_dir(tmp_path, "osd.3").check()
    (tmp_path / "ca.crt").write_bytes((cluster / "ca.crt").read_bytes())
    with pytest.raises(ConfigError, match=r"osd\.3\.crt.*store tls issue osd\.3 --dir"):
        tls.TlsPaths.in_dir(tmp_path, "osd.3").check()
    with pytest.raises(ConfigError, match=r"master\.crt.*store tls init --dir"):
        tls.TlsPaths.in_dir(tmp_path, "master").check()


class FakePeer:
    def __init__(self, subject: tuple[tuple[tuple[str, str], ...], ...] | None) -> None:
        self.subject = subject

    def getpeercert(self) -> dict[str, object] | None:
        return None if self.subject is None else {"subject": self.subject}


def test_peer_identity_refuses_certificate_without_role() -> None:
    no_role = FakePeer(((("commonName", "osd.1"),),))
    with pytest.raises(AuthError, match="store role"):
        tls.peer_identity(no_role)  # type: ignore[arg-type]
    foreign_unit = FakePeer(((("organizationalUnitName", "ops"),), (("commonName", "x"),)))
    with pytest.raises(AuthError):
        tls.peer_identity(foreign_unit)  # type: ignore[arg-type]
    assert tls.peer_identity(FakePeer(None)) is None  # type: ignore[arg-type]


# --- command line ----------------------------------------------------------------------


def test_cli_init_and_issue(tmp_path: Path) -> None:
    runner = CliRunner()
    directory = tmp_path / "tls"
    result = runner.invoke(tls.tls_group, ["init", "--dir", str(directory), "--name", "m.example"])
    assert result.exit_code == 0, result.output
    for name in ("ca.crt", "ca.key", "master.crt", "master.key"):
        assert str(directory / name) in result.output
    san = load_cert(directory / "master.crt").extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert "m.example" in san.value.get_values_for_type(x509.DNSName)

    result = runner.invoke(tls.tls_group, ["init", "--dir", str(directory)])
    assert result.exit_code != 0
    assert "--force" in result.output

    result = runner.invoke(
        tls.tls_group,
        ["issue", "gw.1", "--dir", str(directory), "--san", "10.9.9.9", "--role", "gateway"],
    )
    assert result.exit_code == 0, result.output
    assert str(directory / "gw.1.crt") in result.output
    assert str(directory / "gw.1.key") in result.output
    ou = load_cert(directory / "gw.1.crt").subject.get_attributes_for_oid(
        NameOID.ORGANIZATIONAL_UNIT_NAME
    )
    assert [a.value for a in ou] == ["store-gateway"]


def test_cli_issue_without_ca_fails_clearly(tmp_path: Path) -> None:
    result = CliRunner().invoke(tls.tls_group, ["issue", "osd.1", "--dir", str(tmp_path)])
    assert result.exit_code == 1
    assert "store tls init" in result.output
