"""netbootd's NixOS modules evaluated and built for real, offline: nixpkgs' own `lib` and the
systemd unit types and rendering of nixpkgs (both read from ../shared/vendor/, never copied
here), the NixOS-shaped test system of tests/nix/fake-nixos/nixos/, and Debian's Nix with a
private store (testbed.nixenv). What a test needs:

    system_expr(modules)       the Nix expression of a system made of those module expressions
    evaluate(expr, root)       `nix-instantiate --eval --strict --json` of it
    build(expr, root)          `nix-build` of one derivation -> its store path (builds: several)
    unit_fields, unit_exec     what a rendered unit file says
    missing()                  why this cannot run here (no Nix, no vendored nixpkgs lib)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from testbed import REPO, nixenv


def _vendor() -> Path:
    """Where the vendored sources are: $NETBOOTD_VENDOR, else ../shared/vendor beside this
    checkout (the worktrees' layout), else /work/shared/vendor (a clone elsewhere here)."""
    if os.environ.get("NETBOOTD_VENDOR"):
        return Path(os.environ["NETBOOTD_VENDOR"])
    beside = REPO.parent / "shared" / "vendor"
    return beside if beside.is_dir() else Path("/work/shared/vendor")


VENDOR = _vendor()
NIXPKGS_LIB = VENDOR / "nixpkgs-lib" / "lib"
SYSTEMD_LIB = VENDOR / "nixos-systemd" / "systemd-lib.nix"
KIT = REPO / "tests" / "nix" / "fake-nixos" / "nixos"
SERVER = REPO / "nixos" / "module.nix"
CLIENT = REPO / "nixos" / "client.nix"
# what a server's own configuration has (NixOS checks it): a disk root and a boot loader
SERVER_HOST = ('fileSystems."/" = { device = "/dev/vda1"; fsType = "ext4"; }; '
               'boot.loader.grub.devices = [ "/dev/vda" ];')


def missing() -> str | None:
    why = nixenv.missing()
    if why:
        return why
    for p in (NIXPKGS_LIB / "default.nix", SYSTEMD_LIB):
        if not p.is_file():
            return (f"{p} missing: the vendored nixpkgs lib / systemd lib (set NETBOOTD_VENDOR "
                    "to the directory that has nixpkgs-lib/ and nixos-systemd/)")
    return None


def nix_path(p: Path) -> str:
    """A Nix path literal for an absolute path."""
    assert p.is_absolute() and all(c not in str(p) for c in ' "\\${}'), p
    return str(p)


def system_expr(*modules: str) -> str:
    """A NixOS-shaped system of `modules` (Nix expressions: paths, attribute sets, functions)."""
    listed = " ".join(f"({m})" for m in modules)
    return (f"import {nix_path(KIT)} {{ nixpkgsLib = {nix_path(NIXPKGS_LIB)}; "
            f"systemdLib = {nix_path(SYSTEMD_LIB)}; modules = [ {listed} ]; }}")


def checkout_package(any_user: bool = False) -> str:
    """services.netbootd.package for tests (a Nix expression using `pkgs`): this checkout's
    netbootd, run by the interpreter running the tests (the venv, netbootd installed editable).
    any_user: for a process that is not root, which may not reach that interpreter (a venv's
    python can live under /root): Debian's python3 of the same minor version, with this
    checkout and the venv's libraries on its path."""
    if not any_user:
        return (f'pkgs.writeShellScriptBin "netbootd" '
                f'"exec {nix_path(Path(sys.executable))} -m netbootd \\"$@\\""')
    site = next(Path(p) for p in sys.path if p.endswith("site-packages") and "venv" in p)
    return (f'pkgs.writeShellScriptBin "netbootd" "PYTHONPATH={nix_path(REPO)}:'
            f'{nix_path(site)} exec /usr/bin/python3 -m netbootd \\"$@\\""')


def _env(root: Path) -> dict[str, str]:
    return {**os.environ, **nixenv.env(root)}


def evaluate(expr: str, root: Path, timeout: float = 120) -> object:
    r = subprocess.run(["nix-instantiate", "--eval", "--strict", "--json", "--expr", expr],
                       capture_output=True, text=True, timeout=timeout, env=_env(root))
    if r.returncode != 0:
        raise EvalError(r.stderr)
    return json.loads(r.stdout)


def build(expr: str, root: Path, timeout: float = 600) -> Path:
    (path,) = builds(expr, root, timeout)
    return path


def builds(expr: str, root: Path, timeout: float = 600) -> list[Path]:
    """`nix-build` of a derivation or a list of them: their output paths."""
    r = subprocess.run(["nix-build", "--no-out-link", "--expr", expr], capture_output=True,
                       text=True, timeout=timeout, env=_env(root))
    if r.returncode != 0:
        raise EvalError(r.stderr)
    return [Path(line) for line in r.stdout.split()]


def unit_fields(unit: Path) -> dict[str, list[str]]:
    """A rendered unit file's settings: key -> its values in order (a key may repeat)."""
    out: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        if "=" in line and not line.startswith(("[", "#")):
            k, _, v = line.partition("=")
            out.setdefault(k, []).append(v)
    return out


def unit_exec(unit: Path) -> tuple[list[str], list[str]]:
    """Its ExecStart= as argv, and its Environment= as NAME=value (the vendored renderer writes
    each as a JSON string)."""
    f = unit_fields(unit)
    (start,) = f["ExecStart"]
    return start.split(), [json.loads(v) for v in f.get("Environment", [])]


class EvalError(Exception):
    """Nix refused: the message is Nix's stderr."""
