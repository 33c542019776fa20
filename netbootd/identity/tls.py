"""netbootd's own certificate authority and HTTPS server certificate, and the key pin.

    <state>/tls/        0700
      ca.key            0600  ECDSA P-256, signs server certificates (10 years)
      ca.crt            0644
      server.key        0600  ECDSA P-256, the HTTPS server's key
      server.crt        0644  signed by ca.key (5 years); SANs: localhost, this host's name,
                              127.0.0.1 and the advertised address known when it was made

Made on the first `netbootd serve`; `netbootd tls rotate [--ca]` replaces the server key (and
the CA). Clients do not need the CA: the kernel command line carries the SHA-256 pin of the
server key (`netbootd.pin=sha256//<base64>`, curl's --pinnedpubkey format), and a client that
checks it (`curl -k --pinnedpubkey ...`) talks to this server's key and nothing else. A running
server notices a rotated certificate at its next TLS handshake and next rendered script.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import logging
import socket
import ssl
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from netbootd.errors import NotFound, StoreError
from netbootd.fsutil import private_dir, write_file

log = logging.getLogger("netbootd.tls")

CA_KEY, CA_CERT, KEY, CERT = "ca.key", "ca.crt", "server.key", "server.crt"
CA_DAYS, SERVER_DAYS = 3650, 5 * 365


def tls_dir(state_dir: Path) -> Path:
    return state_dir / "tls"


def spki_pin(cert: x509.Certificate) -> str:
    """`sha256//<base64>`: the SHA-256 of the certificate's DER SubjectPublicKeyInfo."""
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256//" + base64.b64encode(hashlib.sha256(spki).digest()).decode()


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _new_ca() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "netbootd"),
        x509.NameAttribute(NameOID.COMMON_NAME, f"netbootd CA {socket.gethostname()[:40]}"),
    ])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _new_server(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    addresses: Iterable[str] = (),
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    host = socket.gethostname()[:63] or "localhost"
    sans: list[x509.GeneralName] = [x509.DNSName("localhost")]
    if host != "localhost":
        sans.append(x509.DNSName(host))
    ips = {"127.0.0.1", "::1", *addresses}
    for a in sorted(ips):
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(a)))
        except ValueError:
            continue
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "netbootd"),
            x509.NameAttribute(NameOID.COMMON_NAME, host),
        ]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=SERVER_DAYS))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False),
            critical=True
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _load_ca(d: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    try:
        key = serialization.load_pem_private_key((d / CA_KEY).read_bytes(), None)
        cert = x509.load_pem_x509_certificate((d / CA_CERT).read_bytes())
    except OSError as e:
        raise StoreError(f"cannot read the netbootd CA in {d}: {e.strerror}") from None
    except ValueError:
        raise StoreError(f"the netbootd CA in {d} is damaged; `netbootd tls rotate --ca`") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise StoreError(f"{d / CA_KEY} is not an EC key")
    return key, cert


def _write_server(d: Path, ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate,
                  addresses: Iterable[str]) -> x509.Certificate:
    key, cert = _new_server(ca_key, ca_cert, addresses)
    # The key first, then the certificate: a server reloading in between sees a pair that
    # does not match, keeps its old context and tries again at the next handshake.
    write_file(d / KEY, _key_pem(key), 0o600)
    write_file(d / CERT, _pem(cert) + _pem(ca_cert), 0o644)
    return cert


def ensure(state_dir: Path, addresses: Iterable[str] = ()) -> bool:
    """Create the CA and the server certificate if they are missing. True if anything was made."""
    d = private_dir(tls_dir(state_dir))
    made = False
    if not (d / CA_KEY).is_file() or not (d / CA_CERT).is_file():
        key, cert = _new_ca()
        write_file(d / CA_KEY, _key_pem(key), 0o600)
        write_file(d / CA_CERT, _pem(cert), 0o644)
        for stale in (KEY, CERT):  # a server certificate from another CA is replaced too
            (d / stale).unlink(missing_ok=True)
        made = True
    if not (d / KEY).is_file() or not (d / CERT).is_file():
        ca_key, ca_cert = _load_ca(d)
        _write_server(d, ca_key, ca_cert, addresses)
        made = True
    return made


def rotate(state_dir: Path, *, ca: bool = False, addresses: Iterable[str] = ()) -> str:
    """A new server key and certificate (and CA, with ca=True). Returns the new pin."""
    d = private_dir(tls_dir(state_dir))
    if ca or not (d / CA_KEY).is_file():
        key, cert = _new_ca()
        write_file(d / CA_KEY, _key_pem(key), 0o600)
        write_file(d / CA_CERT, _pem(cert), 0o644)
    ca_key, ca_cert = _load_ca(d)
    return spki_pin(_write_server(d, ca_key, ca_cert, addresses))


@dataclass(frozen=True)
class Info:
    pin: str
    subject: str
    sans: tuple[str, ...]
    not_after: dt.datetime
    ca_subject: str
    ca_sha256: str  # fingerprint of the CA certificate, for operators who want to check it


def info(state_dir: Path) -> Info:
    d = tls_dir(state_dir)
    try:
        cert = x509.load_pem_x509_certificate((d / CERT).read_bytes())
        ca = x509.load_pem_x509_certificate((d / CA_CERT).read_bytes())
    except FileNotFoundError:
        raise NotFound(f"no TLS certificate in {d} yet: `netbootd serve` makes one on "
                       "start") from None
    except (OSError, ValueError) as e:
        raise StoreError(f"cannot read the TLS certificate in {d}: {e}") from None
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        sans = tuple(str(v) for v in san.get_values_for_type(x509.DNSName)) + tuple(
            str(v) for v in san.get_values_for_type(x509.IPAddress)
        )
    except x509.ExtensionNotFound:
        sans = ()
    return Info(
        pin=spki_pin(cert),
        subject=cert.subject.rfc4514_string(),
        sans=sans,
        not_after=cert.not_valid_after_utc,
        ca_subject=ca.subject.rfc4514_string(),
        ca_sha256=ca.fingerprint(hashes.SHA256()).hex(":"),
    )


class ServerTls:
    """The HTTPS server's SSL context and pin, following rotations of the files on disk."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = tls_dir(state_dir)
        self._lock = threading.Lock()
        self._stamp: bytes | None = None
        ctx, pin, stamp = self._load()
        self._ctx, self._pin, self._stamp = ctx, pin, stamp
        # aiohttp gets this one context; its SNI callback (called for every handshake, with or
        # without a server name) switches the connection to the current one.
        self.context = ctx
        ctx.sni_callback = self._on_handshake

    def _files_stamp(self) -> bytes:
        # The content, not mtimes: two writes within one clock tick share an mtime. The files
        # are a few hundred bytes; reading them per handshake costs nothing at netboot rates.
        files = (self.dir / KEY).read_bytes() + (self.dir / CERT).read_bytes()
        return hashlib.sha256(files).digest()

    def _load(self) -> tuple[ssl.SSLContext, str, bytes]:
        try:
            stamp = self._files_stamp()
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.load_cert_chain(self.dir / CERT, self.dir / KEY)
            cert = x509.load_pem_x509_certificate((self.dir / CERT).read_bytes())
        except (OSError, ssl.SSLError, ValueError) as e:
            raise StoreError(f"cannot load the TLS certificate and key in {self.dir}: "
                             f"{e}") from None
        return ctx, spki_pin(cert), stamp

    def refresh(self) -> None:
        try:
            stamp = self._files_stamp()
        except OSError:
            return
        if stamp == self._stamp:
            return
        with self._lock:
            if stamp == self._stamp:
                return
            try:
                ctx, pin, stamp = self._load()
            except StoreError as e:
                log.warning("keeping the current TLS certificate: %s", e)
                return
            self._ctx, self._pin, self._stamp = ctx, pin, stamp
            log.info("TLS certificate reloaded, pin %s", pin)

    def _on_handshake(self, sslobj: ssl.SSLObject, server_name: str | None,
                      ctx: ssl.SSLContext) -> None:
        self.refresh()
        current = self._ctx
        if current is not ctx:
            sslobj.context = current

    @property
    def pin(self) -> str:
        self.refresh()
        return self._pin


def ca_cert_path(state_dir: Path) -> Path:
    return tls_dir(state_dir) / CA_CERT


def key_files(state_dir: Path) -> list[Path]:
    d = tls_dir(state_dir)
    return [d / CA_KEY, d / KEY]

