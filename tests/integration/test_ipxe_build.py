"""`netbootd ipxe build` for real: make on the vendored iPXE snapshot (testbed/ipxebuild.py:
compiled once in tests/e2e/.cache/ipxe-work, later runs relink), the CA's fingerprint and the
embedded script inside the binary, the cache, staleness after `tls rotate --ca` (or a new
address or HTTPS port) and the rebuild (by hand, and the one `tls rotate --ca` makes), and the
built files served by a running `netbootd serve` over HTTP and TFTP (loopback)."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tftpy

from netbootd.ipxe.served import ServedIpxe
from netbootd.servers.tftp import TftpServer
from testbed import ipxebuild
from testbed.lab import Netbootd
from testbed.skips import require

pytestmark = [pytest.mark.timeout(int(ipxebuild.BUILD_TIMEOUT) + 300)]

ADDRESS = "10.77.0.1"
MAC = "52:54:00:14:b0:01"


def _fingerprint(nb: Netbootd) -> bytes:
    pem = nb.cli("tls", "export", "--format", "der", "-o", str(nb.state_dir / "ca.der"))
    assert pem == ""
    return hashlib.sha256((nb.state_dir / "ca.der").read_bytes()).digest()


def _show(nb: Netbootd) -> tuple[int, dict]:
    r = subprocess.run([sys.executable, "-m", "netbootd", "--state-dir", str(nb.state_dir),
                        "ipxe", "show", "--json"], capture_output=True, text=True, check=False)
    return r.returncode, json.loads(r.stdout)


def test_build_cache_rotation_and_rebuild(tmp_path: Path) -> None:
    require(ipxebuild.missing())
    nb = Netbootd(tmp_path / "state")
    t0 = time.monotonic()
    m = ipxebuild.build(nb, ADDRESS, "x86_64-efi", "bios")
    first = time.monotonic() - t0
    assert set(m["targets"]) == {"x86_64-efi", "bios"} and m["address"] == ADDRESS
    d = Path(m["directory"])
    efi = (d / "ipxe.efi").read_bytes()
    assert efi[:2] == b"MZ" and (d / "undionly.kpxe").stat().st_size > 30_000
    fpr = _fingerprint(nb)
    assert m["ca_sha256"] == fpr.hex()
    assert fpr in efi  # TRUST=: the CA's SHA-256 is the binary's root of trust
    assert f"chain https://{ADDRESS}/boot/${{netX/mac:hexhyp}}.ipxe".encode() in efi
    assert hashlib.sha256(efi).hexdigest() == m["targets"]["x86_64-efi"]["sha256"]
    print(f"\nfirst build {first:.1f}s: {json.dumps(m['targets'])}")

    t0 = time.monotonic()
    again = ipxebuild.build(nb, ADDRESS, "x86_64-efi", "bios")
    assert again["cached"] and again["key"] == m["key"] and time.monotonic() - t0 < 30
    rc, shown = _show(nb)
    assert rc == 0 and shown["served"] and shown["build"] == m["key"]
    (tmp_path / "vmlinuz").write_bytes(b"kernel")
    (tmp_path / "initrd").write_bytes(b"initrd")
    nb.role_add("web", tmp_path / "vmlinuz", [tmp_path / "initrd"], "console=ttyS0")
    nb.enroll(MAC, "web")
    explain = nb.cli("explain", MAC, "--arch", "uefi", "--advertise-address", ADDRESS)
    assert "offered netbootd-ipxe/ipxe.efi" in explain, explain
    assert f"iPXE binaries: netbootd's build {m['key']}" in explain, explain
    assert "offered netbootd-ipxe/undionly.kpxe" in nb.cli("explain", MAC, "--advertise-address",
                                                           ADDRESS)

    assert "no longer served" in nb.cli("tls", "rotate", "--ca", "--no-ipxe-rebuild")
    rc, shown = _show(nb)
    assert rc == 1 and not shown["served"] and "rotated" in shown["stale"]
    explain = nb.cli("explain", MAC, "--arch", "uefi", "--advertise-address", ADDRESS)
    assert "offered ipxe.efi" in explain and f"build {m['key']} is stale" in explain, explain

    t0 = time.monotonic()  # without --source: the last build's source, the new CA
    out = nb.cli("ipxe", "build", "--address", ADDRESS, "--https-port", "443", "--target",
                 "x86_64-efi", "--target", "bios", "--work-dir", str(ipxebuild.WORK), "--json",
                 timeout=ipxebuild.BUILD_TIMEOUT)
    rebuilt = json.loads(out)
    relink = time.monotonic() - t0
    new_fpr = _fingerprint(nb)
    assert rebuilt["key"] != m["key"] and rebuilt["ca_sha256"] == new_fpr.hex()
    new_efi = (Path(rebuilt["directory"]) / "ipxe.efi").read_bytes()
    assert new_fpr in new_efi and fpr not in new_efi
    rc, shown = _show(nb)
    assert rc == 0 and shown["served"] and shown["build"] == rebuilt["key"]
    print(f"rebuild after CA rotation (objects kept): {relink:.1f}s")

    # `tls rotate --ca` rebuilds it by itself: same source, targets, address and work directory
    t0 = time.monotonic()
    out = nb.cli("tls", "rotate", "--ca", timeout=ipxebuild.BUILD_TIMEOUT)
    third_fpr = _fingerprint(nb)
    rc, shown = _show(nb)
    assert rc == 0 and shown["served"] and shown["ca_sha256"] == third_fpr.hex(), (out, shown)
    assert f"rebuilt netbootd's iPXE for the new CA: build {shown['build']}" in out, out
    assert shown["address"] == ADDRESS and set(shown["files"]) == {
        "netbootd-ipxe/ipxe.efi", "netbootd-ipxe/undionly.kpxe"}
    third = Path(shown["files"]["netbootd-ipxe/ipxe.efi"]).read_bytes()  # kpxe: compressed
    assert third_fpr in third and new_fpr not in third
    print(f"`tls rotate --ca` with its rebuild: {time.monotonic() - t0:.1f}s")


def test_a_build_chaining_elsewhere_is_stale(tmp_path: Path) -> None:
    """A build whose embedded script chains to an address or HTTPS port netbootd no longer
    serves on is not served (`ipxe show` exits 1, explain says why), like one for an old CA."""
    require(ipxebuild.missing())
    nb = Netbootd(tmp_path / "state")
    m = ipxebuild.build(nb, ADDRESS, "bios", https_port=8443)
    config = tmp_path / "netbootd.toml"
    for toml, served in ((f'advertise_address = "{ADDRESS}"\n[https]\nport = 8443\n', True),
                         ('advertise_address = "10.77.0.9"\n[https]\nport = 8443\n', False),
                         (f'advertise_address = "{ADDRESS}"\n[https]\nport = 443\n', False),
                         (f'advertise_address = "{ADDRESS}"\n[https]\nenabled = false\n',
                          False)):
        config.write_text(toml)
        r = subprocess.run([sys.executable, "-m", "netbootd", "--config", str(config),
                            "--state-dir", str(nb.state_dir), "ipxe", "show", "--json"],
                           capture_output=True, text=True, check=False)
        shown = json.loads(r.stdout)
        assert shown["build"] == m["key"] and shown["served"] is served, (toml, shown)
        assert r.returncode == (0 if served else 1)
        if not served:
            assert shown["stale"] and ("chains to" in shown["stale"]
                                       or "HTTPS is off" in shown["stale"]), shown


async def _tftp_get(state: Path, tmp_path: Path, name: str) -> bytes:
    """The TFTP server as `serve` builds it (root + the build as an overlay), on loopback."""
    root = tmp_path / "tftp-root"
    root.mkdir(exist_ok=True)
    srv = TftpServer(root, "127.0.0.1", 0, overlay=ServedIpxe(state).path)
    await srv.start()
    try:
        out = io.BytesIO()
        client = tftpy.TftpClient("127.0.0.1", srv.port, options={"blksize": 1468})
        await asyncio.to_thread(client.download, name, out, timeout=2, retries=2)
        return out.getvalue()
    finally:
        await srv.stop()


def test_serve_hands_out_the_build_over_http_and_tftp(tmp_path: Path) -> None:
    """A running server serves the current build by its netbootd-ipxe/ names over HTTP (and
    the TFTP server, with `serve`'s overlay, over TFTP) until the CA rotates."""
    require(ipxebuild.missing())
    from tests.conftest import Cli, start_daemon, stop_daemon

    cli = Cli(tmp_path / "state")
    nb = Netbootd(cli.state_dir)
    d = start_daemon(cli, tmp_path / "serve.log")
    try:
        # chaining to another HTTPS port than serve's: stale, not served
        ipxebuild.build(nb, ADDRESS, "x86_64-efi", https_port=d.https_port + 1)
        time.sleep(1.2)
        assert d.get("/ipxe/netbootd-ipxe/ipxe.efi")[0] == 404
        m = ipxebuild.build(nb, ADDRESS, "x86_64-efi", https_port=d.https_port)
        efi = (Path(m["directory"]) / "ipxe.efi").read_bytes()
        time.sleep(1.2)
        status, headers, body = d.get("/ipxe/netbootd-ipxe/ipxe.efi")
        assert status == 200 and body == efi and headers["Content-Type"] == "application/efi"
        assert d.get("/ipxe/netbootd-ipxe/manifest.json")[0] == 404
        assert asyncio.run(_tftp_get(cli.state_dir, tmp_path, "netbootd-ipxe/ipxe.efi")) == efi
        assert asyncio.run(_tftp_get(cli.state_dir, tmp_path, "/netbootd-ipxe/ipxe.efi")) == efi
        # now stale: the distro names again, nothing at ours
        nb.cli("tls", "rotate", "--ca", "--no-ipxe-rebuild")
        time.sleep(1.2)
        assert d.get("/ipxe/netbootd-ipxe/ipxe.efi")[0] == 404
        log = (tmp_path / "serve.log").read_text()
        assert "serving netbootd's iPXE build" in log and "is stale" in log
        assert "it chains to HTTPS port" in log
        # a rotation with its rebuild: the running server hands out the new build
        nb.cli("tls", "rotate", "--ca", timeout=ipxebuild.BUILD_TIMEOUT)
        time.sleep(1.2)
        status, _, body = d.get("/ipxe/netbootd-ipxe/ipxe.efi")
        assert status == 200 and body[:2] == b"MZ" and body != efi
        assert _fingerprint(nb) in body
    finally:
        stop_daemon(d)
