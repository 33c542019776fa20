"""A VM boots a NixOS-shaped system in compose mode through the client module's own commands,
fetches its identity and runs sshd with the delivered host key.

The system is tests/nix/fake-nixos/nixos/ evaluated with nixpkgs' real lib and netbootd's
nixos/client.nix (composedStore, identity, openssh): its packages are Debian's programs in a
private Nix store, its kernel Debian's with the test image's NIC modules. `netbootd role build
--mode compose` builds it through the real CLI: initrds = [the NixOS-shaped stage 1, whose tools
(busybox as extra-utils) live in the initramfs /nix/store, + leader, one gzip archive per store
path of the toplevel's closure, registration]. Then the VM (SeaBIOS + iPXE):

- stage 1 mounts a tmpfs root and runs the client module's boot.initrd.postMountCommands, as
  evaluated (it moves the registered store paths into the root and copies the one stage 1 runs
  from), and switch_roots into init= from netbootd's command line;
- stage 2 runs the module's boot.postBootCommands (`nix-store --load-db` with Debian's nix),
  sets the machine-id the way systemd does (systemd.machine_id= from the command line), and runs
  the rendered units in their order: dhcpcd (udhcpc), netbootd-identity (the module's script:
  curl --pinnedpubkey, install), sshd (Debian's openssh-server), netbootd-booted;
- the server's namespace runs `ssh-keyscan` against the VM: the keys are the ones `netbootd keys
  export known_hosts` names for it.
"""

from __future__ import annotations

import gzip
import json
import re
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from netbootd.codec import cpio
from testbed import nixenv, nixos
from testbed.lab import Site
from testbed.procs import netns_argv
from testbed.skips import unavailable
from testbed.vm import BootFailed, diagnostics, parse_time, wait_booted

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

MAC = "52:54:00:e2:00:2a"
ROLE = "e2e-nixos"
HOST = "composed"


@pytest.fixture(scope="module")
def nix_store(tmp_path_factory: pytest.TempPathFactory):
    why = nixos.missing()
    if why:  # like the other e2e prerequisites: a skip, a failure under NETBOOTD_REQUIRE_E2E=1
        unavailable(why)
    with nixenv.exported(tmp_path_factory.mktemp("nix")) as env:  # the harness's CLI runs use it
        yield env


def kernel_dir(e2e_env: dict[str, str], work: Path) -> tuple[Path, Path]:
    """Debian's kernel (the test image's) and its NIC modules with their load order, taken from
    the test initramfs (lib/modules/*.ko, lib/modules/load-order)."""
    modules = work / "modules"
    modules.mkdir(parents=True)
    for e in cpio.parse(gzip.decompress(Path(e2e_env["initramfs"]).read_bytes())):
        if e is not None and e.name.startswith("lib/modules/") and stat.S_ISREG(e.mode):
            (modules / Path(e.name).name).write_bytes(e.data)
    assert (modules / "load-order").read_text().split(), "no NIC modules in the test image"
    return Path(e2e_env["vmlinuz"]), modules


def system_file(work: Path, vmlinuz: Path, modules: Path) -> Path:
    config = f"""{{ pkgs, ... }}: {{
      services.netbootd-client = {{ enable = true; composedStore = true; }};
      services.openssh.enable = true;
      networking.hostName = "{HOST}";
      boot.kernelParams = [ "console=ttyS0" ];
      fake.kernel = {{ image = {vmlinuz}; modules = {modules}; }};
    }}"""
    f = work / "system.nix"
    f.write_text(f"{{ nixos = {nixos.system_expr(str(nixos.CLIENT), config)}; }}\n")
    return f


def store_paths(root: str, *args: str) -> list[str]:
    r = subprocess.run(["nix-store", *args, root], capture_output=True, text=True, check=True)
    return r.stdout.split()


def test_nixos_compose_boot_identity_and_sshd(
    e2e_env: dict[str, str], nix_store: dict[str, str], site: Site, boot_timer: Any,
    tmp_path: Path,
) -> None:
    vmlinuz, modules = kernel_dir(e2e_env, tmp_path)
    system = system_file(tmp_path, vmlinuz, modules)
    t0 = time.monotonic()
    out = site.nb.cli("role", "build", ROLE, "--file", str(system), "--attr", "nixos",
                      "--mode", "compose", "--cmdline", "netbootd.action=hold", timeout=900)
    built_in = time.monotonic() - t0
    assert f"role {ROLE}: generation 1 is current (compose initrd" in out
    (gen,) = json.loads(site.nb.cli("role", "generations", ROLE, "--json"))
    toplevel = gen["toplevel"]
    closure = store_paths(toplevel, "-qR")
    assert f"{len(closure)} store paths: 0 cached, {len(closure)} compressed" in out
    stage1 = store_paths(str(Path(nixos.build(
        f"(import {system}).nixos.config.system.build.bootStage1",
        Path(nix_store["NIX_STORE_DIR"]).parent))), "-qR")
    busybox = next(p for p in stage1 if p.endswith("-debian-busybox-static"))
    assert busybox in closure  # stage 1's tools are in the system's closure too: copied, not moved

    site.nb.enroll(MAC, ROLE, hostname=HOST)  # generates the identity and arms it
    (keys,) = [k for k in json.loads(site.nb.cli("keys", "list", "--json"))
               if k["hostname"] == HOST]
    vm = site.vm(HOST, MAC, "bios", memory_mb=1024).start()
    try:
        result = wait_booted(site.nb, vm, timeout=300)
        ip = result.host["last_boot_ip"]
        scanned = keyscan(site, ip)
        deadline = time.monotonic() + 60
        while vm.first_line_with("NETBOOTD-TEST: SERVICES-DONE") is None:
            if time.monotonic() > deadline:
                raise BootFailed("the guest's units did not all start")
            time.sleep(0.5)
    except BootFailed as e:
        vm.stop()
        pytest.fail(f"{e}\n{diagnostics(site.lab, site.nb, vm)}", pytrace=False)
    finally:
        vm.stop(grace=0)
    evidence = diagnostics(site.lab, site.nb, vm)

    # stage 1: its tools in the initramfs store; the client's commands moved the system's store
    assert vm.first_line_with("NETBOOTD-TEST: STAGE1 <<< NixOS Stage 1 >>>"), evidence
    assert vm.marker("STAGE1-DONE") == f"{len(stage1)} paths left in the initramfs store"
    assert vm.first_line_with("STAGE1-FAILED") is None, evidence
    # stage 2: a tmpfs root holding the whole closure, registered by the module's commands
    assert vm.marker("STAGE2 <<< NixOS Stage 2 >>>") == toplevel
    assert vm.marker("ROOT-FS") == "tmpfs"
    assert vm.marker("STORE") == f"{len(closure)} paths in {nix_store['NIX_STORE_DIR']}"
    assert vm.marker("POSTBOOT") == "0"
    assert vm.marker("NIX-VALID") == str(len(closure))
    # the machine-id is the identity's, from systemd.machine_id= on netbootd's command line
    assert vm.marker("MACHINE-ID") == keys["machine_id"]
    # the units, in their order; identity before sshd
    ran = [line for _, line in vm.lines if "NETBOOTD-TEST: UNIT " in line]
    assert [r.split("UNIT ", 1)[1].strip() for r in ran] == [
        "dhcpcd.service ok", "netbootd-booted.service ok", "netbootd-identity.service ok",
        "sshd.service ok"], ran
    assert "identity-installed" in [e["event"] for e in events(site)]

    # sshd serves the delivered host keys: ssh-keyscan from the server's namespace
    kh = tmp_path / "known_hosts"
    site.nb.cli("keys", "export", "known_hosts", "-o", str(kh))
    exported = {tuple(line.split()[1:3]) for line in kh.read_text().splitlines()
                if line.startswith(f"{HOST},")}
    assert len(exported) == 2 and scanned == exported, (scanned, exported)
    installed = next(e for e in events(site) if e["event"] == "identity-installed")
    assert installed["detail"]["ed25519"] == keys["ssh_ed25519_fingerprint"]
    assert parse_time(result.host["last_boot"]) is not None
    boot_timer(result.seconds, f"[bios; NixOS-shaped compose: {len(closure)} store paths, "
                               f"role build {built_in:.0f}s]")


def keyscan(site: Site, ip: str) -> set[tuple[str, str]]:
    """(type, key) of what sshd at `ip` offers, asked from the server's namespace."""
    for _ in range(30):
        r = subprocess.run(netns_argv(site.lab.ns_srv, ["ssh-keyscan", "-T", "5", "-t",
                                                        "ed25519,rsa", ip]),
                           capture_output=True, text=True, timeout=60)
        keys = {tuple(line.split()[1:3]) for line in r.stdout.splitlines()
                if re.match(r"^\S+ ssh-(ed25519|rsa) ", line)}
        if len(keys) == 2:
            return keys
        time.sleep(2)
    raise BootFailed(f"ssh-keyscan {ip} found no sshd: {r.stderr.strip()}")


def events(site: Site) -> list[dict[str, Any]]:
    return list(json.loads(site.nb.cli("events", HOST, "--json")))
