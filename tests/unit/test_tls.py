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
from cryptography.hazmat.primitives import serialization

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
    assert modes == {"ca.key": 0o600, "ca.crt": 0o644, "server.key": 0o600, "server.crt": 0o644}
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
        assert key.key_size == 256


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
