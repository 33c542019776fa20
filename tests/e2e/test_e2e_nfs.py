"""A real VM boots the common stem-cell initramfs, mounts the shared read-only NFS store and its own
writable directory from nfs-ganesha (run here with the config `netbootd nfs exports` renders),
switches into its role's toplevel, reads the role's marker from the store and writes a file that
lands in its own host directory on the server -- and not in another host's.

The role's "system" is built with Nix in a private store (like test_e2e_composed.py): a busybox
store path and a toplevel whose `init` (run by the stem-cell initramfs with switch_root) prints the
marker file next to it, writes /persist/hello-<hostname>.txt, checks that the store overlay takes
writes (tmpfs upper) and POSTs `booted`. A second role shares the busybox path: `nfs sync` copies
it once (deduplicated by store path).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from testbed import REPO, nixenv
from testbed.lab import ROLE_CMDLINE, SRV_IP, Site
from testbed.netns import in_netns
from testbed.procs import tail, wait_for
from testbed.skips import missing_tools, require, unavailable
from testbed.vm import BootFailed, clean_console, diagnostics, wait_booted

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

A, B = "52:54:00:e2:9f:0a", "52:54:00:e2:9f:0b"
STEM_BUILDER = REPO / "images" / "stem-cell" / "build.py"


def nix_add(path: Path) -> str:
    return subprocess.run(["nix-store", "--add", str(path)], capture_output=True, text=True,
                          check=True).stdout.strip()


def nix_string(text: str) -> str:
    """A Nix string literal: JSON's escapes are Nix's, plus `${` must not interpolate."""
    return json.dumps(text).replace("${", "\\${")


TOPLEVEL_INIT = """#!@bb@/bin/busybox sh
# The role's system: what the stem-cell initramfs switches into (PID 1).
B=@bb@/bin/busybox
. /run/netbootd-stem.env
arg() { $B sed -n "s/.* $1=\\([^ ]*\\).*/\\1/p" /proc/cmdline | $B head -n1; }
HN=$(arg netbootd.hostname)
EV=$(arg netbootd.events)
TOKEN=$(arg netbootd.boot)
$B hostname "$HN"
echo "NETBOOTD-TEST: STEM-ROLE $($B cat $NETBOOTD_TOPLEVEL/role)"
echo "NETBOOTD-TEST: STEM-UPPER $NETBOOTD_UPPER"
echo "hello from $HN" > /persist/hello-$HN.txt && echo "NETBOOTD-TEST: PERSIST-WRITTEN"
if echo x > $NETBOOTD_STORE_DIR/written-by-$HN 2>/dev/null; then
    echo "NETBOOTD-TEST: STORE-OVERLAY-WRITABLE"
fi
$B sync
if $B wget -q -O /tmp/reply --header 'Content-Type: application/json' \\
        --post-data "{\\"event\\":\\"booted\\",\\"token\\":\\"$TOKEN\\"}" "$EV"; then
    echo "NETBOOTD-TEST: BOOTED-EVENT-SENT"
else
    echo "NETBOOTD-TEST: BOOTED-EVENT-FAILED"
fi
$B umount /persist
$B poweroff -f
"""


def toplevel(work: Path, bb: str, name: str, marker: str) -> str:
    """A toplevel derivation: init + role marker, referring to the busybox store path."""
    init = TOPLEVEL_INIT.replace("@bb@", bb)
    builder = (  # the derivation's shell script: writes $out/init and the role marker
        "B=$bb/bin/busybox; $B mkdir $out && printf '%s' \"$init\" > $out/init && "
        "$B chmod 755 $out/init && printf '%s\\n' \"$marker\" > $out/role"
    )
    nix = work / f"{name}.nix"
    nix.write_text(f"""builtins.derivation {{
  name = "{name}"; system = builtins.currentSystem; builder = "/bin/sh";
  bb = builtins.storePath {json.dumps(bb)};
  init = {nix_string(init)}; marker = {nix_string(marker)};
  args = [ "-c" {nix_string(builder)} ];
}}
""")
    out = subprocess.run(
        ["nix-build", "--no-out-link", str(nix)], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@dataclass
class NfsSite:
    site: Site
    work: Path
    stem: dict[str, str]
    bb: str


@pytest.fixture(scope="module")
def nfs(e2e_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[NfsSite]:
    require(missing_tools({"ganesha.nfsd": "nfs-ganesha, nfs-ganesha-vfs"}))
    why = nixenv.missing()
    if why:
        unavailable(why)
    work = tmp_path_factory.mktemp("nfs")
    r = subprocess.run(
        [sys.executable, str(STEM_BUILDER), str(work / "stem")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if r.returncode == 2:
        unavailable(r.stderr.strip())
    assert r.returncode == 0, r.stderr
    stem = json.loads((work / "stem" / "build.json").read_text())
    # nix-store here and the CLI's `nfs sync` (nix-store -qR) use the private store
    with nixenv.exported(work / "nix"):
        bbdir = work / "busybox"
        (bbdir / "bin").mkdir(parents=True)
        shutil.copy2("/bin/busybox", bbdir / "bin" / "busybox")
        with Site.start(work, e2e_env) as site:
            yield NfsSite(site, work, stem, nix_add(bbdir))


def _port_open(addr: str, port: int) -> bool:
    try:
        with socket.create_connection((addr, port), timeout=0.5):
            return True
    except OSError:
        return False


def test_stem_cell_boots_from_the_nfs_store(nfs: NfsSite, boot_timer) -> None:
    site, nb, work = nfs.site, nfs.site.nb, nfs.work
    marker = f"role-marker-{os.urandom(4).hex()}"
    top1 = toplevel(work, nfs.bb, "stem-toplevel-one", marker)
    top2 = toplevel(work, nfs.bb, "stem-toplevel-two", "another role")
    kernel, initrd = Path(nfs.stem["vmlinuz"]), Path(nfs.stem["initramfs"])
    for role, top in (("stem-one", top1), ("stem-two", top2)):
        nb.role_add(role, kernel, [initrd], ROLE_CMDLINE)  # the same initramfs for both roles
        nb.cli("role", "mode", role, "nfs-store", "--toplevel", top)
    out1 = nb.cli("nfs", "sync", "stem-one")
    assert "2 store paths: 0 already in the NFS store, 2 copied" in out1, out1
    out2 = nb.cli("nfs", "sync", "stem-two")  # shares busybox with stem-one
    assert "2 store paths: 1 already in the NFS store, 1 copied" in out2, out2
    nb.cli("enroll", A, "stem-one", "--hostname", "stem-a", "--no-identity")
    nb.cli("enroll", B, "stem-one", "--hostname", "stem-b", "--no-identity")

    # ganesha in the server namespace with exactly what netbootd renders
    conf = work / "ganesha.conf"
    nb.cli("nfs", "exports", "--format", "ganesha", "-o", str(conf))
    nfs_root = nb.state_dir / "nfs"
    host_a, host_b = (nfs_root / "hosts" / m.replace(":", "-") for m in (A, B))
    assert host_a.is_dir() and host_b.is_dir()  # made when the exports were rendered
    text = conf.read_text()
    assert f'Path = "{nfs_root}/store";' in text and f'Path = "{host_a}";' in text
    ganesha = site.lab.spawn(
        "ganesha",
        [
            "ganesha.nfsd",
            "-F",
            "-f",
            str(conf),
            "-L",
            str(site.lab.workdir / "ganesha.log"),
            "-p",
            str(site.lab.workdir / "ganesha.pid"),
            "-N",
            "NIV_EVENT",
        ],
        ns=site.lab.ns_srv,
    )
    wait_for(
        lambda: in_netns(site.lab.ns_srv, lambda: _port_open(SRV_IP, 2049)) or not ganesha.alive(),
        20,
        "nfs-ganesha to listen on 2049",
        interval=0.2,
    )
    assert ganesha.alive(), tail(site.lab.workdir / "ganesha.log")

    explained = nb.cli("explain", A, "--advertise-address", SRV_IP)
    assert (
        f"netbootd.nfs.server={SRV_IP} netbootd.nfs.store={nfs_root}/store "
        f"netbootd.nfs.host={host_a} netbootd.nfs.upper=tmpfs netbootd.toplevel={top1}" in explained
    ), explained

    vm = site.vm("stem-a", A, "bios").start()
    try:
        result = wait_booted(nb, vm, timeout=150)
    except BootFailed as e:
        vm.stop()
        pytest.fail(
            f"{e}\n{diagnostics(site.lab, nb, vm)}\n---- ganesha log\n"
            f"{tail(site.lab.workdir / 'ganesha.log')}",
            pytrace=False,
        )
    vm.stop(grace=10)
    evidence = diagnostics(site.lab, nb, vm)
    console = clean_console(vm.console())
    assert f"netbootd-stem: store {SRV_IP}:{nfs_root}/store mounted read-only" in console, evidence
    assert f"NETBOOTD-TEST: STEM-ROLE {marker}" in console, evidence  # read from the NFS store
    assert "NETBOOTD-TEST: STEM-UPPER tmpfs" in console, evidence
    assert "NETBOOTD-TEST: PERSIST-WRITTEN" in console, evidence
    assert "NETBOOTD-TEST: STORE-OVERLAY-WRITABLE" in console, evidence

    # the per-host file is in A's directory on the server, and nowhere else
    assert (host_a / "hello-stem-a.txt").read_text() == "hello from stem-a\n"
    assert list(host_b.iterdir()) == []
    assert not list((nfs_root / "store").rglob("written-by-*"))  # overlay writes stayed in tmpfs
    served = [line for line in nb.log_lines_about(A) if "served script" in line]
    assert served and "role=stem-one" in served[-1] and "mode=nfs-store" in served[-1]
    boot_timer(result.seconds, "[bios; stem-cell initramfs -> NFS store + host dir -> toplevel]")
