"""Both NixOS modules built for real (nixpkgs' lib, nixpkgs' systemd unit rendering, Debian's Nix
with a private store; tests/nix/fake-nixos/nixos/) and checked with Debian's systemd:

- `systemd-analyze verify` of every rendered unit, in the boot transaction of multi-user.target
  with the units systemd-fstab-generator makes from the system's own fstab -- no ordering cycle,
  no complaint (the old netbootd-provision ordering is caught by the same check);
- `systemd-analyze security --offline=yes` of netbootd.service and netbootd-roles.service;
- the netbootd-roles unit's own ExecStart, run as systemd would run it (its Environment=): it
  imports a NixOS-shaped role from the generated role file, imports nothing on the second run,
  makes a new generation when `cmdline` changes, applies a changed keepGenerations without one,
  and takes an aarch64 configuration's kernel file (`Image`) from it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed import nixenv, nixos
from testbed.nixos import CLIENT, SERVER, SERVER_HOST, build, system_expr, unit_exec
from testbed.skips import unavailable

SYSTEMD_UNITS = Path("/lib/systemd/system")
FSTAB_GENERATOR = Path("/lib/systemd/system-generators/systemd-fstab-generator")


@pytest.fixture(autouse=True)
def _prerequisites() -> None:
    """A skip, or a failure under NETBOOTD_REQUIRE_E2E=1 (CI must check the units)."""
    why = nixos.missing() or ("" if FSTAB_GENERATOR.exists() else
                              f"{FSTAB_GENERATOR} not found (Debian package systemd)")
    if why:
        unavailable(why)


# a netbooted host: everything the client module has, and a local disk the layout formats
CLIENT_CONFIG = """{ pkgs, ... }: {
  services.netbootd-client = {
    enable = true;
    composedStore = true;
    provision.script = "${pkgs.writeScript "layout" "#!/bin/sh\\necho layout\\n"}";
  };
  services.openssh.enable = true;
  fileSystems."/var/lib" = { device = "/dev/vda1"; fsType = "ext4"; };
  boot.kernelParams = [ "console=ttyS0" ];
  KERNELFILE
}"""


def client(kernel_file: str | None = None) -> str:
    return system_expr(str(CLIENT), CLIENT_CONFIG.replace(
        "KERNELFILE", f'system.boot.loader.kernelFile = "{kernel_file}";' if kernel_file else ""))


def server(state: Path, cmdline: str = "quiet", keep: int = 5) -> str:
    return system_expr(str(SERVER), f"""{{ pkgs, ... }}: {{
      services.netbootd = {{
        enable = true;
        package = {nixos.checkout_package()};
        stateDir = "{state}";
        keepGenerations = {keep};
        roles.web = {{ configuration = {client()}; mode = "compose"; cmdline = "{cmdline}"; }};
        roles.arm = {{ configuration = {client("Image")}; mode = "compose"; }};
      }};
      {SERVER_HOST}
    }}""")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("nix")
    with nixenv.exported(root):  # the CLI the roles script runs uses the same private store
        yield root


def units(expr: str, store: Path) -> Path:
    return build(f"({expr}).config.system.build.units", store)


def fstab_units(expr: str, store: Path, work: Path) -> Path:
    """What systemd-fstab-generator makes of the system's own /etc/fstab."""
    fstab = build(f"({expr}).config.environment.etc.fstab.source", store)
    out = work / "generated"
    for d in ("normal", "early", "late"):
        (out / d).mkdir(parents=True, exist_ok=True)
    subprocess.run([str(FSTAB_GENERATOR), *(str(out / d) for d in ("normal", "early", "late"))],
                   env={**os.environ, "SYSTEMD_FSTAB": str(fstab), "SYSTEMD_PROC_CMDLINE": ""},
                   check=True)
    return out / "normal"


def verify(unit_dir: Path, generated: Path) -> subprocess.CompletedProcess[str]:
    """`systemd-analyze verify` of multi-user.target's start (the boot transaction) and of every
    unit in `unit_dir`, with them and the generated units first on the unit path."""
    ours = sorted(str(p) for p in unit_dir.glob("*.service"))
    return subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(SYSTEMD_UNITS / "multi-user.target"), *ours],
        env={**os.environ, "SYSTEMD_UNIT_PATH": f"{unit_dir}:{generated}:"},
        capture_output=True, text=True, timeout=120)


def test_every_rendered_unit_verifies(store: Path, tmp_path: Path) -> None:
    for name, expr in (("client", client()), ("server", server(tmp_path / "state"))):
        unit_dir = units(expr, store)
        r = verify(unit_dir, fstab_units(expr, store, tmp_path / name))
        out = r.stdout + r.stderr
        assert r.returncode == 0 and "ordering cycle" not in out, out
        mentions = [line for line in out.splitlines() if "netbootd" in line]
        assert mentions == [], out
    names = sorted(p.name for p in units(client(), store).glob("*.service"))
    assert names == ["dhcpcd.service", "netbootd-booted.service", "netbootd-identity.service",
                     "netbootd-provision-report.service", "netbootd-provision.service",
                     "sshd.service"]
    assert sorted(p.name for p in units(server(tmp_path / "state"), store).glob("*.service")) \
        == ["dhcpcd.service", "netbootd-roles.service", "netbootd.service"]


def test_the_check_finds_the_old_provision_ordering_cycle(store: Path, tmp_path: Path) -> None:
    """The ordering netbootd-provision had (after network-online.target, before
    local-fs-pre.target, no default dependencies): Debian's systemd drops a job for it."""
    old = """{ services.netbootd-client = { enable = true; composedStore = true; };
      systemd.services.old-provision = {
        wantedBy = [ "multi-user.target" ]; before = [ "local-fs-pre.target" ];
        wants = [ "network-online.target" ]; after = [ "network-online.target" ];
        unitConfig.DefaultDependencies = false; serviceConfig.Type = "oneshot";
        script = "true"; }; }"""
    expr = system_expr(str(CLIENT), old)
    r = verify(build(f"({expr}).config.system.build.units", store),
               fstab_units(expr, store, tmp_path))
    assert "Found ordering cycle" in r.stderr and "old-provision.service" in r.stderr, r.stderr


def exposure(unit: Path) -> float:
    r = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(unit)],
                       env={**os.environ, "SYSTEMD_UNIT_PATH": f"{unit.parent}:"},
                       capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", r.stdout)
    assert m, r.stdout + r.stderr
    return float(m.group(1))


def test_service_exposure(store: Path, tmp_path: Path) -> None:
    """systemd's own measure of the sandbox (0 best, 10 worst; a service as root with no
    sandboxing is 9.6): netbootd.service may keep its two capabilities and still be "OK"."""
    unit_dir = units(server(tmp_path / "state"), store)
    scores = {u: exposure(unit_dir / u) for u in ("netbootd.service", "netbootd-roles.service")}
    print(f"\nsystemd-analyze security exposure: {scores}")
    assert scores["netbootd.service"] <= 2.5, scores
    assert scores["netbootd-roles.service"] <= 2.0, scores


def run_roles_unit(expr: str, store: Path) -> subprocess.CompletedProcess[str]:
    start, env = unit_exec(units(expr, store) / "netbootd-roles.service")
    unit_env = dict(v.split("=", 1) for v in env)
    return subprocess.run(start, env={**os.environ, **nixenv.env(store), **unit_env},
                          capture_output=True, text=True, timeout=600)


def generations(state: Path, role: str) -> list[dict]:
    r = subprocess.run([sys.executable, "-m", "netbootd", "--state-dir", str(state), "role",
                        "generations", role, "--json"], capture_output=True, text=True,
                       check=True)
    return json.loads(r.stdout)


def test_roles_unit_script_imports_is_idempotent_and_applies_settings(
    store: Path, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    first = run_roles_unit(server(state), store)
    assert first.returncode == 0, first.stderr
    assert "role web: generation 1 is current (compose initrd" in first.stdout, first.stdout
    assert "building '" not in first.stderr  # the server's system built the paths
    (g,) = generations(state, "web")
    toplevel = Path(build(f"({client()}).config.system.build.toplevel", store))
    assert g["toplevel"] == str(toplevel) and g["mode"] == "compose"
    params = (toplevel / "kernel-params").read_text()
    assert params == "console=ttyS0"
    assert g["cmdline"] == f"init={toplevel}/init console=ttyS0 quiet"
    kernel = Path(g["kernel_path"]) / "bzImage"
    assert hashlib.sha256(kernel.read_bytes()).hexdigest() == g["kernel"]
    # the role file: Nix, the paths with their context (so the server's closure holds them)
    script = Path(unit_exec(units(server(state), store) / "netbootd-roles.service")[0][0])
    files = re.findall(r"\S+-netbootd-role-web\.nix", script.read_text())
    assert len(files) == 1 and "role.config = {" in Path(files[0]).read_text()
    refs = subprocess.run(["nix-store", "-q", "--references", files[0]], capture_output=True,
                          text=True, check=True).stdout.split()
    assert {g["kernel_path"], g["initrd_path"], g["toplevel"]} <= set(refs), refs
    # GC roots under the state dir for what it was built from
    assert {p.name for p in (state / "gcroots").iterdir()} >= {
        Path(g[k]).name for k in ("kernel_path", "initrd_path", "toplevel")}

    # the aarch64-shaped role: its kernel file is the configuration's
    (a,) = generations(state, "arm")
    assert sorted(p.name for p in Path(a["kernel_path"]).iterdir()) == ["Image", "lib"]
    image = Path(a["kernel_path"]) / "Image"
    assert hashlib.sha256(image.read_bytes()).hexdigest() == a["kernel"]

    # again, unchanged: nothing new
    second = run_roles_unit(server(state), store)
    assert second.returncode == 0, second.stderr
    assert "role web: unchanged (generation 1 is this build)" in second.stdout
    assert "role arm: unchanged (generation 1 is this build)" in second.stdout
    assert len(generations(state, "web")) == 1

    # a changed cmdline: a new generation of that role only
    third = run_roles_unit(server(state, cmdline="quiet loglevel=7"), store)
    assert third.returncode == 0, third.stderr
    assert "role web: generation 2 is current" in third.stdout
    assert "role arm: unchanged" in third.stdout
    gens = generations(state, "web")
    assert [x["cmdline"].split(" ", 1)[1] for x in gens] == [
        "console=ttyS0 quiet", "console=ttyS0 quiet loglevel=7"]

    # a changed keepGenerations applies without a build
    fourth = run_roles_unit(server(state, cmdline="quiet loglevel=7", keep=1), store)
    assert fourth.returncode == 0, fourth.stderr
    assert "role web: unchanged (generation 2 is this build)" in fourth.stdout
    assert "forgot 1" in fourth.stderr
    assert [x["generation"] for x in generations(state, "web")] == [2]
