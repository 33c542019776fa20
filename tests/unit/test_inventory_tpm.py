"""The TPM's endorsement key in the inventory (issue 16): the schema takes a PEM public key and
its SHA-256 (they must agree), refuses anything else, names a changed EK, and the checked-in
JSON Schema says the same; the agent reports null -- never fails -- without tpm2-tools, without
a TPM device, or when a tool fails, and reads the PEM tpm2-tools writes. (The real TPM: swtpm in
tests/e2e/test_e2e_discovery.py.)"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import stat
from pathlib import Path

import jsonschema
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from netbootd.errors import InvalidInput
from netbootd.inventory import agent, schema
from tests.unit.test_inventory import DOC


def _pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> tuple[str, str]:
    pub = key.public_key()
    pem = pub.public_bytes(serialization.Encoding.PEM,
                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    der = pub.public_bytes(serialization.Encoding.DER,
                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return pem, hashlib.sha256(der).hexdigest()


RSA_PEM, RSA_SHA = _pem(rsa.generate_private_key(65537, 2048))
EC_PEM, EC_SHA = _pem(ec.generate_private_key(ec.SECP384R1()))


def doc(tpm: dict[str, object]) -> dict[str, object]:
    d = copy.deepcopy(DOC)
    d["tpm"] = tpm
    return d


def test_an_ek_pem_and_its_fingerprint_are_kept_and_valid_json_schema() -> None:
    js = json.loads(schema.SCHEMA_FILE.read_text())
    for pem, sha in ((RSA_PEM, RSA_SHA), (EC_PEM, EC_SHA)):
        d = doc({"present": True, "version": "2.0", "ek_public": pem, "ek_sha256": sha})
        jsonschema.validate(d, js)
        inv = schema.parse(d)
        assert inv.tpm.ek_public == pem and inv.tpm.ek_sha256 == sha
        assert schema.load(inv.canonical()) == inv
        assert schema.summary(inv)["tpm_ek_sha256"] == sha
        assert agent.pem_sha256(pem) == sha  # the agent's fingerprint is the schema's
    # a document without them (every one stored before the EK was read) is still valid
    jsonschema.validate(doc({"present": True, "version": "2.0", "ek_public": None}), js)
    assert schema.parse(doc({"present": True, "version": "2.0"})).tpm.ek_sha256 is None


@pytest.mark.parametrize("tpm, why", [
    ({"present": True, "ek_public": RSA_PEM, "ek_sha256": EC_SHA}, "not the SHA-256"),
    ({"present": True, "ek_public": RSA_PEM}, "not the SHA-256"),
    ({"present": True, "ek_sha256": RSA_SHA}, "ek_sha256 without ek_public"),
    ({"present": True, "ek_public": "not a key", "ek_sha256": RSA_SHA}, "pattern"),
    ({"present": True, "ek_public": RSA_PEM.replace("PUBLIC KEY", "PRIVATE KEY"),
      "ek_sha256": RSA_SHA}, "pattern"),
    ({"present": True, "ek_public": RSA_PEM + "\x1b[2J", "ek_sha256": RSA_SHA}, "pattern"),
    ({"present": True, "ek_public": "-----BEGIN PUBLIC KEY-----\n" + ("A" * 76 + "\n") * 60
      + "-----END PUBLIC KEY-----\n", "ek_sha256": RSA_SHA}, "4096"),
    ({"present": True, "ek_public": RSA_PEM, "ek_sha256": RSA_SHA.upper()}, "pattern"),
])
def test_anything_else_is_refused(tpm: dict[str, object], why: str) -> None:
    with pytest.raises(InvalidInput, match=why):
        schema.parse(doc(tpm))


def test_a_changed_ek_is_a_change() -> None:
    a = schema.parse(doc({"present": True, "version": "2.0", "ek_public": RSA_PEM,
                          "ek_sha256": RSA_SHA}))
    b = schema.parse(doc({"present": True, "version": "2.0", "ek_public": EC_PEM,
                          "ek_sha256": EC_SHA}))
    assert schema.changes(a, b) == [f"TPM EK: sha256 {RSA_SHA[:16]}... -> {EC_SHA[:16]}..."]
    assert schema.changes(a, a) == []
    unread = schema.parse(doc({"present": True, "version": "2.0"}))
    assert schema.changes(a, unread) == []  # not read this time is not another TPM


def _sysfs(tmp: Path, major: str = "2") -> Path:
    node = tmp / "sys" / "class" / "tpm" / "tpm0"
    node.mkdir(parents=True)
    (node / "tpm_version_major").write_text(major + "\n")
    return tmp / "sys"


def _tools(tmp: Path, script: str) -> Path:
    """Fake tpm2-tools first on PATH: `tpm2` (`script` its body) and tpm2_readpublic and
    tpm2_createek as links to it, as Debian installs them."""
    bindir = tmp / "bin"
    bindir.mkdir()
    tool = bindir / "tpm2"
    tool.write_text("#!/bin/sh\n" + script)
    tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    for name in ("tpm2_readpublic", "tpm2_createek"):
        (bindir / name).symlink_to("tpm2")
    return bindir


def test_agent_without_tools_or_device_reports_null(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    sys_root = _sysfs(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(agent, "TOOL_DIRS", ())  # this machine's own tpm2-tools out of sight
    got = agent.tpm(sys_root, tmp_path / "dev")
    assert got == {"present": True, "version": "2.0", "ek_public": None, "ek_sha256": None}
    assert "TPM EK not read: no tpm2-tools" in capsys.readouterr().err
    monkeypatch.setenv("PATH", str(_tools(tmp_path, "exit 0\n")))
    (tmp_path / "dev").mkdir()
    assert agent.tpm(sys_root, tmp_path / "dev")["ek_public"] is None
    assert "no /dev/tpmrm0 or /dev/tpm0" in capsys.readouterr().err
    assert agent.tpm(tmp_path / "nothing", tmp_path / "dev") == {
        "present": False, "version": None, "ek_public": None, "ek_sha256": None}


def test_agent_reads_the_persistent_ek_else_creates_it(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    sys_root = _sysfs(tmp_path)
    dev = tmp_path / "dev"
    dev.mkdir()
    (dev / "tpmrm0").touch()
    log = tmp_path / "calls"
    pem = tmp_path / "key.pem"
    pem.write_text(RSA_PEM)
    # readpublic of the persistent handle fails (no EK provisioned); createek + readpublic of
    # its context writes the PEM; every call logs its TCTI and arguments
    bindir = _tools(tmp_path, f"""echo "$TPM2TOOLS_TCTI $(basename "$0") $*" >> {log}
case "$(basename "$0") $*" in
  *0x81010001*) echo "ERROR: Esys_TR_FromTPMPublic(0x18B) handle" >&2; exit 1 ;;
  *createek*) exit 0 ;;
  *readpublic*) while [ "$1" != -o ]; do shift; done; cp {pem} "$2" ;;
esac
""")
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    got = agent.tpm(sys_root, dev)
    assert got["ek_public"] == RSA_PEM and got["ek_sha256"] == RSA_SHA, got
    calls = log.read_text().splitlines()
    assert [c.split()[:2] for c in calls] == [
        [f"device:{dev}/tpmrm0", "tpm2_readpublic"], [f"device:{dev}/tpmrm0", "tpm2_createek"],
        [f"device:{dev}/tpmrm0", "tpm2_readpublic"]], calls
    assert "-c 0x81010001 -f pem" in calls[0] and "-G rsa" in calls[1]
    schema.parse(doc(got))  # what the agent writes, the server takes

    # a tool that fails every time, or writes something that is not a PEM key: null, said why
    for body in ("echo 'ERROR: no TPM' >&2; exit 3\n",
                 'while [ "$1" != -o ]; do shift; done; echo junk > "$2"\n'):
        (bindir / "tpm2").write_text("#!/bin/sh\n" + body)
        assert agent.tpm(sys_root, dev)["ek_public"] is None
        assert "TPM EK not read" in capsys.readouterr().err
