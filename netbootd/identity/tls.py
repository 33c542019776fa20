"""netbootd's own certificate authority and HTTPS server certificate, and the key pin.

    <state>/tls/        0700
      ca.key            0600  RSA-2048, signs server certificates (10 years)
      ca.crt            0644  the trust anchor firmware and netbootd-built iPXE are given
                              (`netbootd tls export --format pem|der|esl`)
      server.key        0600  RSA-2048, the HTTPS server's key
      server.crt        0644  signed by ca.key (5 years), leaf + CA (iPXE needs the root sent);
                              SANs: localhost, this host's name, https.names, 127.0.0.1, ::1 and
                              every address netbootd advertises
      ffdhe2048.pem     0600  RFC 7919's ffdhe2048 group (public parameters) for DHE-RSA

**RSA everywhere, one chain.** UEFI HTTPS boot in EDK2 (OVMF 2022.11, measured) offers only
TLS 1.2 with RSA and DHE-RSA suites: no ECDHE, no ECDSA. So firmware clients need an RSA server
key, and Python's default server context needs DHE parameters loaded to share a suite with it
(it has no RSA key exchange). Rather than two chains on one port (OpenSSL can hold an RSA and an
ECDSA certificate in one context, but the key pin in scripts names one key), every client gets
the RSA chain: curl, busybox wget, iPXE and the firmware all speak it. An ECDSA CA made by an
older netbootd is replaced by an RSA one at the next start (nothing trusted it: clients pinned
the server key, and the pin is per boot).

Made on the first `netbootd serve`; re-issued by `serve` (at start and hourly) when it expires
within RENEW_DAYS or does not name an address or name netbootd now advertises
(`policy.tls_reissue` decides); `netbootd tls rotate [--ca]` replaces the server key (and the
CA). A running server notices a new certificate at its next TLS handshake and next script.
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
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from netbootd import policy
from netbootd.errors import NotFound, StoreError
from netbootd.fsutil import private_dir, write_file
from netbootd.model import Release

log = logging.getLogger("netbootd.tls")

CA_KEY, CA_CERT, KEY, CERT = "ca.key", "ca.crt", "server.key", "server.crt"
DH_PARAMS = "ffdhe2048.pem"
CA_DAYS, SERVER_DAYS = 3650, 5 * 365
RENEW_DAYS = 30  # a server certificate expiring sooner than this is re-issued by `serve`
RSA_BITS = 2048  # what EDK2 handshakes fastest under TCG; firmware accepts 2048-4096
# RFC 7919 ffdhe2048 (public, standard parameters): Python's ssl loads DH groups only from a file.
FFDHE2048 = b"""-----BEGIN DH PARAMETERS-----
MIIBCAKCAQEA//////////+t+FRYortKmq/cViAnPTzx2LnFg84tNpWp4TZBFGQz
+8yTnc4kmz75fS/jY2MMddj2gbICrsRhetPfHtXV/WVhJDP1H18GbtCFY2VVPe0a
87VXE15/V8k1mE8McODmi3fipona8+/och3xWKE2rec1MKzKT0g6eXq8CrGCsyT7
YdEIqUuyyOP7uWrat2DX9GgdT0Kj3jlN9K5W7edjcrsZCwenyO4KbXCeAvzhzffi
7MA0BM0oNC9hkXL+nOmFg/+OTxIy7vKBg8P+OxtMb61zO7X8vC7CIAXFjvGDfRaD
ssbzSibBsu/6iGtCOGEoXJf//////////wIBAg==
-----END DH PARAMETERS-----
"""
Key = rsa.RSAPrivateKey
# Python's server default suites (forward-secret AES-GCM/ChaCha20/AES, no SHA-1 MACs), at
# security level 0 for one reason: busybox wget's built-in TLS (what small initramfs clients
# use) sends no signature_algorithms extension, which in TLS 1.2 means "SHA-1 only", and OpenSSL 3
# refuses a SHA-1 handshake signature above level 0 ("no suitable signature algorithm",
# measured). Clients that offer better get SHA-256 or stronger; the suite list keeps out what
# level 0 would otherwise admit (anonymous, NULL, RC4, 3DES, SHA-1 MACs).
CIPHERS = ("@SECLEVEL=0:ECDH+AESGCM:ECDH+CHACHA20:ECDH+AES:DHE+AES:!aNULL:!eNULL:!aDSS:!SHA1:"
           "!AESCCM")


def tls_dir(state_dir: Path) -> Path:
    return state_dir / "tls"


def spki_pin(cert: x509.Certificate) -> str:
    """`sha256//<base64>`: the SHA-256 of the certificate's DER SubjectPublicKeyInfo."""
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256//" + base64.b64encode(hashlib.sha256(spki).digest()).decode()


def _key_pem(key: Key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _new_key() -> Key:
    return rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)


def _new_ca() -> tuple[Key, x509.Certificate]:
    key = _new_key()
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


def wanted_names(addresses: Iterable[str] = (), names: Iterable[str] = ()) -> tuple[str, ...]:
    """Every name and address the server certificate must carry: localhost, this host's name,
    the configured names, loopback and every advertised address (EDK2 checks the URL's host
    against the SANs: an IP URL needs an IP SAN)."""
    host = socket.gethostname()[:63] or "localhost"
    dns = {"localhost", host.lower(), *(n.lower().rstrip(".") for n in names)}
    ips: set[str] = {"127.0.0.1", "::1"}
    for a in addresses:
        try:
            ips.add(str(ipaddress.ip_address(a)))
        except ValueError:
            dns.add(a.lower())
    return tuple(sorted(dns)) + tuple(sorted(ips))


def _sans(wanted: Iterable[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for n in wanted:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            out.append(x509.DNSName(n))
    return out


def _new_server(
    ca_key: Key,
    ca_cert: x509.Certificate,
    addresses: Iterable[str] = (),
    names: Iterable[str] = (),
) -> tuple[Key, x509.Certificate]:
    key = _new_key()
    host = socket.gethostname()[:63] or "localhost"
    sans = _sans(wanted_names(addresses, names))
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
            # digitalSignature (DHE/ECDHE) + keyEncipherment (RSA key exchange)
            x509.KeyUsage(True, False, True, False, False, False, False, False, False),
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


def _load_ca(d: Path) -> tuple[Key, x509.Certificate]:
    try:
        key = serialization.load_pem_private_key((d / CA_KEY).read_bytes(), None)
        cert = x509.load_pem_x509_certificate((d / CA_CERT).read_bytes())
    except OSError as e:
        raise StoreError(f"cannot read the netbootd CA in {d}: {e.strerror}") from None
    except ValueError:
        raise StoreError(f"the netbootd CA in {d} is damaged; `netbootd tls rotate --ca`") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise StoreError(f"{d / CA_KEY} is not an RSA key")
    return key, cert


def _write_server(d: Path, ca_key: Key, ca_cert: x509.Certificate,
                  addresses: Iterable[str], names: Iterable[str] = ()) -> x509.Certificate:
    key, cert = _new_server(ca_key, ca_cert, addresses, names)
    # The key first, then the certificate: a server reloading in between sees a pair that
    # does not match, keeps its old context and tries again at the next handshake.
    write_file(d / KEY, _key_pem(key), 0o600)
    write_file(d / CERT, _pem(cert) + _pem(ca_cert), 0o644)
    return cert


def _write_ca(d: Path) -> None:
    key, cert = _new_ca()
    write_file(d / CA_KEY, _key_pem(key), 0o600)
    write_file(d / CA_CERT, _pem(cert), 0o644)


def _ca_is_rsa(d: Path) -> bool:
    try:
        key = serialization.load_pem_private_key((d / CA_KEY).read_bytes(), None)
    except (OSError, ValueError):
        return False
    return isinstance(key, rsa.RSAPrivateKey)


def _sans_of(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    return tuple(str(v) for v in san.get_values_for_type(x509.DNSName)) + tuple(
        str(v) for v in san.get_values_for_type(x509.IPAddress))


def _server_verdict(d: Path, ca_cert: x509.Certificate, wanted: tuple[str, ...],
                    now: dt.datetime) -> Release:
    try:
        cert = x509.load_pem_x509_certificate((d / CERT).read_bytes())
        serialization.load_pem_private_key((d / KEY).read_bytes(), None)
    except (OSError, ValueError):
        return Release(True, "no usable server certificate")
    return policy.tls_reissue(cert.issuer == ca_cert.subject and _signed_by(cert, ca_cert),
                              cert.not_valid_after_utc.timestamp(), _sans_of(cert), wanted,
                              now.timestamp(), RENEW_DAYS * 86400)


def _signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def ensure(state_dir: Path, addresses: Iterable[str] = (), names: Iterable[str] = (),
           now: dt.datetime | None = None) -> bool:
    """Create the CA and the server certificate if they are missing, replace an ECDSA CA of an
    older netbootd, re-issue the server certificate when the policy says so (expiring, an
    advertised address or name missing, another CA's). True if anything was made."""
    d = private_dir(tls_dir(state_dir))
    made = False
    if not (d / CA_KEY).is_file() or not (d / CA_CERT).is_file() or not _ca_is_rsa(d):
        if (d / CA_KEY).is_file():
            log.warning("replacing netbootd's ECDSA CA with an RSA one (firmware HTTPS boot "
                        "speaks only RSA)")
        _write_ca(d)
        made = True
    if not (d / DH_PARAMS).is_file():
        write_file(d / DH_PARAMS, FFDHE2048, 0o600)
    ca_key, ca_cert = _load_ca(d)
    addresses, names = list(addresses), list(names)
    verdict = _server_verdict(d, ca_cert, wanted_names(addresses, names), now or _now())
    if verdict.ok:
        if (d / CERT).is_file():
            log.info("re-issuing the HTTPS certificate: %s", verdict.reason)
        _write_server(d, ca_key, ca_cert, addresses, names)
        made = True
    return made


def rotate(state_dir: Path, *, ca: bool = False, addresses: Iterable[str] = (),
           names: Iterable[str] = ()) -> str:
    """A new server key and certificate (and CA, with ca=True). Returns the new pin."""
    d = private_dir(tls_dir(state_dir))
    if ca or not (d / CA_KEY).is_file() or not _ca_is_rsa(d):
        _write_ca(d)
    if not (d / DH_PARAMS).is_file():
        write_file(d / DH_PARAMS, FFDHE2048, 0o600)
    ca_key, ca_cert = _load_ca(d)
    return spki_pin(_write_server(d, ca_key, ca_cert, addresses, names))


def ca_certificate(state_dir: Path) -> x509.Certificate:
    """The CA certificate (the trust anchor to export); NotFound before the first start."""
    path = tls_dir(state_dir) / CA_CERT
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError:
        raise NotFound(f"no CA in {path.parent} yet: `netbootd serve` (or `netbootd tls "
                       "rotate --ca`) makes one") from None
    except (OSError, ValueError) as e:
        raise StoreError(f"cannot read the CA certificate {path}: {e}") from None


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
    sans = _sans_of(cert)
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
            # DHE-RSA for EDK2's HTTPS boot (Python's defaults have DHE suites but no group).
            ctx.load_dh_params(str(self.dir / DH_PARAMS))
            ctx.set_ciphers(CIPHERS)
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

