"""Helpers for the identity tests: fetch a script, pull the identity with the real curl, unpack
a bundle, and list every form of key material the state directory holds (for log scans)."""

from __future__ import annotations

import base64
import http.client
import io
import re
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from testbed.procs import netns_argv

MAC = "52:54:00:12:34:56"
HYPHEN = MAC.replace(":", "-")


@dataclass
class Offer:
    url: str
    pin: str

    @property
    def token(self) -> str:
        return self.url.rsplit("/", 1)[1]


def get(host: str, port: int, path: str, source: str | None = None) -> tuple[int, bytes]:
    """A plain-HTTP GET, optionally from a chosen source address (127.0.0.2 is loopback too)."""
    conn = http.client.HTTPConnection(host, port, timeout=10,
                                      source_address=(source, 0) if source else None)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def script(host: str, port: int, mac: str = MAC, source: str | None = None) -> str:
    status, body = get(host, port, f"/boot/{mac.replace(':', '-')}.ipxe", source)
    assert status == 200, body
    return body.decode()


def offer(text: str) -> Offer | None:
    url = re.search(r" netbootd\.identity=(\S+)", text)
    pin = re.search(r" netbootd\.pin=(\S+)", text)
    if url is None:
        assert pin is None
        return None
    assert pin is not None
    return Offer(url.group(1), pin.group(1))


@dataclass
class Fetch:
    code: int  # HTTP status, 0 if none
    body: bytes
    rc: int  # curl's exit status (90: pinned key mismatch)
    stderr: str


def curl(url: str, pin: str | None, out: Path, source: str | None = None,
         netns: str | None = None) -> Fetch:
    """The real curl, as a client would run it: -k (no CA) but --pinnedpubkey <pin>."""
    argv = ["curl", "-sS", "-k", "--max-time", "20", "-o", str(out), "-w", "%{http_code}"]
    if pin:
        argv += ["--pinnedpubkey", pin]
    if source:
        argv += ["--interface", source]
    argv = netns_argv(netns, [*argv, url])
    if out.exists():
        out.unlink()
    p = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    code = int(p.stdout.strip() or 0)
    return Fetch(code, out.read_bytes() if out.exists() else b"", p.returncode, p.stderr)


def unpack(bundle: bytes) -> tuple[dict[str, bytes], dict[str, int]]:
    with tarfile.open(fileobj=io.BytesIO(bundle), mode="r:gz") as tar:
        members = tar.getmembers()
        files = {m.name: tar.extractfile(m).read() for m in members if m.isfile()}  # type: ignore[union-attr]
        modes = {m.name: m.mode for m in members}
    return files, modes


def secret_forms(state_dir: Path) -> list[str]:
    """Every way key material from `state_dir` could show up in a text log: whole PEM blocks,
    each base64 line of their bodies, raw private scalars in hex and base64, WireGuard keys,
    the token HMAC secret."""
    forms: set[str] = set()
    pems = [*state_dir.glob("identity/*/*/ssh_host_*_key"), *state_dir.glob("tls/*.key")]
    assert pems, f"no private keys under {state_dir}"
    for f in pems:
        text = f.read_text()
        forms.add(text.strip())
        forms.update(line for line in text.splitlines() if len(line) >= 16 and "-----" not in line)
        key = (serialization.load_ssh_private_key if "OPENSSH" in text
               else serialization.load_pem_private_key)(text.encode(), None)
        try:
            raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                    serialization.NoEncryption())
        except ValueError:  # RSA / EC: the private number
            n = key.private_numbers()
            d = getattr(n, "d", None) or n.private_value
            raw = d.to_bytes((d.bit_length() + 7) // 8, "big")
        forms.update({raw.hex(), base64.b64encode(raw).decode()})
    for f in state_dir.glob("identity/*/*/wireguard.key"):
        b64 = f.read_text().strip()
        forms.update({b64, base64.b64decode(b64).hex()})
    secret = state_dir / "identity" / "token.secret"
    if secret.exists():
        raw = secret.read_bytes()
        forms.update(
            {raw.hex(), base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode()}
        )
    return sorted(forms)


def assert_no_key_material(state_dir: Path, *texts: str | bytes) -> None:
    forms = secret_forms(state_dir)
    for t in texts:
        s = t.decode(errors="replace") if isinstance(t, bytes) else t
        leaked = [f[:24] + "..." for f in forms if f in s]
        assert not leaked, f"key material in a log: {leaked}"
