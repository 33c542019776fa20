"""netbootd's CA and server certificate: made once, 0600 keys, the pin as openssl computes it,
rotation, and a running context that follows a rotation."""

from __future__ import annotations

import base64
import hashlib
import shutil
import stat
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from netbootd.identity import tls


def _openssl_pin(cert_pem: bytes) -> str:
    pub = subprocess.run(["openssl", "x509", "-pubkey", "-noout"], input=cert_pem,
                         capture_output=True, check=True, timeout=30).stdout
    der = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "der"], input=pub,
                         capture_output=True, check=True, timeout=30).stdout
    return "sha256//" + base64.b64encode(hashlib.sha256(der).digest()).decode()


def test_ensure_once_modes_and_chain(tmp_path):
    assert tls.ensure(tmp_path, ["192.168.77.1"]) is True
    d = tls.tls_dir(tmp_path)
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    assert tls.ensure(tmp_path, ["192.168.77.1"]) is False, "made once, then kept"
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in d.iterdir()}
    assert modes == {"ca.key": 0o600, "ca.crt": 0o644, "server.key": 0o600, "server.crt": 0o644,
                     "ffdhe2048.pem": 0o600}  # public parameters, kept like the keys
    ca = x509.load_pem_x509_certificate((d / "ca.crt").read_bytes())
    cert = x509.load_pem_x509_certificate((d / "server.crt").read_bytes())
    cert.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "192.168.77.1" in {str(a) for a in sans.get_values_for_type(x509.IPAddress)}
    info = tls.info(tmp_path)
    assert info.pin == tls.spki_pin(cert) and "192.168.77.1" in info.sans


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
def test_pin_is_curls_pinnedpubkey_hash(tmp_path):
    tls.ensure(tmp_path)
    pem = (tls.tls_dir(tmp_path) / "server.crt").read_bytes()
    assert tls.info(tmp_path).pin == _openssl_pin(pem)


def test_rotate_changes_key_and_pin_keeps_ca(tmp_path):
    tls.ensure(tmp_path)
    d = tls.tls_dir(tmp_path)
    ca_before = (d / "ca.crt").read_bytes()
    pin1 = tls.info(tmp_path).pin
    pin2 = tls.rotate(tmp_path)
    assert pin2 != pin1 and tls.info(tmp_path).pin == pin2
    assert (d / "ca.crt").read_bytes() == ca_before
    tls.rotate(tmp_path, ca=True)
    assert (d / "ca.crt").read_bytes() != ca_before
    ca = x509.load_pem_x509_certificate((d / "ca.crt").read_bytes())
    x509.load_pem_x509_certificate((d / "server.crt").read_bytes()).verify_directly_issued_by(ca)
    for name in ("ca.key", "server.key"):
        assert stat.S_IMODE((d / name).stat().st_mode) == 0o600
        key = serialization.load_pem_private_key((d / name).read_bytes(), None)
        assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048  # firmware: RSA


def test_server_context_follows_rotation(tmp_path):
    tls.ensure(tmp_path)
    st = tls.ServerTls(tmp_path)
    pin1 = st.pin
    first = st._ctx
    new_pin = tls.rotate(tmp_path)
    assert st.pin == new_pin != pin1 and st._ctx is not first
    # a half-written rotation (a key without its certificate) is not picked up
    d = tls.tls_dir(tmp_path)
    (d / "server.key").write_bytes((d / "ca.key").read_bytes())
    assert st.pin == new_pin


def test_info_before_first_start(tmp_path):
    with pytest.raises(Exception, match="no TLS certificate"):
        tls.info(tmp_path)


def test_sans_name_every_advertised_address_and_name(tmp_path):
    tls.ensure(tmp_path, ["192.168.77.1", "10.0.0.7"], ["boot.example.org"])
    sans = set(tls.info(tmp_path).sans)
    assert {"192.168.77.1", "10.0.0.7", "127.0.0.1", "localhost", "boot.example.org"} <= sans
    pin = tls.info(tmp_path).pin
    assert tls.ensure(tmp_path, ["192.168.77.1", "10.0.0.7"], ["boot.example.org"]) is False
    # a newly advertised address re-issues the certificate (same CA, new key)
    ca = (tls.tls_dir(tmp_path) / "ca.crt").read_bytes()
    assert tls.ensure(tmp_path, ["192.168.77.9"]) is True
    assert "192.168.77.9" in tls.info(tmp_path).sans and tls.info(tmp_path).pin != pin
    assert (tls.tls_dir(tmp_path) / "ca.crt").read_bytes() == ca


def test_reissued_before_expiry(tmp_path):
    import datetime as dt

    tls.ensure(tmp_path)
    cert = x509.load_pem_x509_certificate((tls.tls_dir(tmp_path) / "server.crt").read_bytes())
    soon = cert.not_valid_after_utc - dt.timedelta(days=tls.RENEW_DAYS - 1)
    early = cert.not_valid_after_utc - dt.timedelta(days=tls.RENEW_DAYS + 1)
    assert tls.ensure(tmp_path, now=early) is False
    assert tls.ensure(tmp_path, now=soon) is True
    new = x509.load_pem_x509_certificate((tls.tls_dir(tmp_path) / "server.crt").read_bytes())
    assert new.serial_number != cert.serial_number


def test_an_older_ecdsa_ca_is_replaced_by_rsa(tmp_path):
    d = tls.tls_dir(tmp_path)
    d.mkdir(mode=0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    (d / "ca.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                 serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()))
    (d / "ca.crt").write_bytes(b"old")
    assert tls.ensure(tmp_path) is True
    ca = tls.ca_certificate(tmp_path)
    assert isinstance(ca.public_key(), rsa.RSAPublicKey)
    x509.load_pem_x509_certificate((d / "server.crt").read_bytes()).verify_directly_issued_by(ca)


def test_context_speaks_what_edk2_offers(tmp_path):
    """OVMF's ClientHello (decoded in the reference capture) offers TLS 1.2 with DHE-RSA and RSA
    suites only: a client limited to those must complete a handshake with the server context."""
    import socket
    import ssl
    import threading

    tls.ensure(tmp_path, ["127.0.0.1"])
    server = tls.ServerTls(tmp_path)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    client.set_ciphers("DHE-RSA-AES256-GCM-SHA384:DHE-RSA-AES128-GCM-SHA256")
    client.load_verify_locations(tls.ca_cert_path(tmp_path))
    a, b = socket.socketpair()
    out: dict[str, object] = {}

    def serve() -> None:
        with server.context.wrap_socket(a, server_side=True) as s:
            out["cipher"] = s.cipher()

    t = threading.Thread(target=serve)
    t.start()
    with client.wrap_socket(b, server_hostname="127.0.0.1") as c:
        cipher = c.cipher()
    t.join(5)
    assert cipher is not None and cipher[0].startswith("DHE-RSA-") and cipher[1] == "TLSv1.2"
    fp = tls.ca_certificate(tmp_path).fingerprint(hashes.SHA256()).hex(":")
    assert fp == tls.info(tmp_path).ca_sha256
