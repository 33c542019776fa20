"""EFI signature lists (codec/efi) are byte-identical to virt-firmware's virt-fw-sigdb (the
independent oracle), and `tls export` writes them for netbootd's CA."""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from netbootd.codec import efi
from netbootd.errors import InvalidInput
from netbootd.identity import tls

SIGDB = Path(sys.executable).parent / "virt-fw-sigdb"


def _ca(tmp_path: Path) -> x509.Certificate:
    tls.ensure(tmp_path)
    return tls.ca_certificate(tmp_path)


def test_layout_and_round_trip(tmp_path):
    der = _ca(tmp_path).public_bytes(serialization.Encoding.DER)
    owner = uuid.UUID("a0baa8a3-041d-48a8-bc87-c36d121b5e3d")
    esl = efi.signature_list(der, owner)
    assert esl[:16] == efi.EFI_CERT_X509_GUID.bytes_le
    assert int.from_bytes(esl[16:20], "little") == len(esl) == 28 + 16 + len(der)
    assert efi.parse(esl) == [(efi.EFI_CERT_X509_GUID, owner, der)]
    assert efi.parse(efi.signature_database([der, der], owner)) == [(efi.EFI_CERT_X509_GUID, owner,
                                                               der)] * 2
    with pytest.raises(InvalidInput):
        efi.parse(esl[:-1])
    with pytest.raises(InvalidInput):
        efi.signature_list(b"not der")


@pytest.mark.skipif(not SIGDB.exists(), reason="virt-firmware not installed in this venv")
def test_byte_identical_to_virt_fw_sigdb(tmp_path):
    ca = _ca(tmp_path)
    pem = tmp_path / "ca.pem"
    pem.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    owner = "a0baa8a3-041d-48a8-bc87-c36d121b5e3d"
    subprocess.run([str(SIGDB), "-o", str(tmp_path / "ref.esl"), "--add-cert", owner, str(pem)],
                   check=True, capture_output=True, timeout=60)
    der = ca.public_bytes(serialization.Encoding.DER)
    assert efi.signature_list(der, uuid.UUID(owner)) == (tmp_path / "ref.esl").read_bytes()


@pytest.mark.skipif(shutil.which("cert-to-efi-sig-list") is None, reason="efitools missing")
def test_byte_identical_to_efitools(tmp_path):
    ca = _ca(tmp_path)
    pem = tmp_path / "ca.pem"
    pem.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    owner = "a0baa8a3-041d-48a8-bc87-c36d121b5e3d"
    subprocess.run(["cert-to-efi-sig-list", "-g", owner, str(pem), str(tmp_path / "e.esl")],
                   check=True, capture_output=True, timeout=60)
    der = ca.public_bytes(serialization.Encoding.DER)
    assert efi.signature_list(der, uuid.UUID(owner)) == (tmp_path / "e.esl").read_bytes()


def test_tls_export_formats(tmp_path):
    from netbootd.cli import main

    tls.ensure(tmp_path)
    for fmt in ("pem", "der", "esl"):
        assert main(["--state-dir", str(tmp_path), "tls", "export", "--format", fmt,
                     "-o", str(tmp_path / f"ca.{fmt}")]) == 0
    ca = tls.ca_certificate(tmp_path)
    der = ca.public_bytes(serialization.Encoding.DER)
    assert (tmp_path / "ca.der").read_bytes() == der
    assert x509.load_pem_x509_certificate((tmp_path / "ca.pem").read_bytes()) == ca
    assert efi.parse((tmp_path / "ca.esl").read_bytes())[0][2] == der
    # no private key in any export
    for fmt in ("pem", "der", "esl"):
        assert b"PRIVATE" not in (tmp_path / f"ca.{fmt}").read_bytes()
