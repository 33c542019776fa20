"""The NixOS modules evaluated with nixpkgs' REAL lib (../shared/vendor/nixpkgs-lib) and the real
systemd unit types and rendering (../shared/vendor/nixos-systemd), in the NixOS-shaped test
system of tests/nix/fake-nixos/nixos/ (no nixpkgs here: see its default.nix for what is NixOS's
and what is this machine's). Evaluation only, nothing is built; the builds, `systemd-analyze
verify` and the roles unit's own script are tests/integration/test_nixos_units.py.

Every .nix file parses (`nix-instantiate --parse`), the VM test nixos/tests/netboot.nix too:
it needs nixpkgs' NixOS test driver, which is not here."""

from __future__ import annotations

import json
import os
import re
import subprocess
import tomllib
from pathlib import Path

import pytest

from netbootd import model
from netbootd.errors import InvalidInput
from testbed import REPO, nixenv, nixos
from testbed.nixos import CLIENT, SERVER, evaluate, system_expr
from testbed.skips import unavailable

NIX_FILES = sorted([*(REPO / "nixos").glob("**/*.nix"), REPO / "flake.nix",
                    *(REPO / "tests" / "nix").glob("**/*.nix")])



@pytest.fixture(autouse=True)
def _prerequisites() -> None:
    """No Nix or no vendored nixpkgs lib: a skip, a failure under NETBOOTD_REQUIRE_E2E=1 (CI
    must check the modules)."""
    why = nixos.missing()
    if why:
        unavailable(why)

# a role's configuration for the server module's checks: only what they look at
ROLE_CONFIG = ("{ config = { system.build = { netbootRamdisk = \"/x\"; }; "
               "services.netbootd-client.composedStore = true; }; }")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "nix"  # a private store: no host store is touched


def failed(root: Path, *modules: str) -> list[str]:
    """The messages of the failed assertions of a system made of `modules`."""
    v = evaluate(f"let s = {system_expr(*modules)}; in "
                 "map (a: a.message) (builtins.filter (a: !a.assertion) s.config.assertions)", root)
    assert isinstance(v, list)
    return [str(m) for m in v]


def server(settings: str = "") -> tuple[str, str]:
    """The server module, enabled with `settings`, on a host that passes NixOS's own checks;
    its package is this checkout (testbed.nixos.checkout_package)."""
    return f"{SERVER}", (f"{{ pkgs, ... }}: {{ services.netbootd = {{ enable = true; "
                         f"package = {nixos.checkout_package()}; {settings} }}; "
                         f"{nixos.SERVER_HOST} }}")


def nix_string(s: str) -> str:
    return json.dumps(s, ensure_ascii=False).replace("$", "\\$")


@pytest.mark.parametrize("path", NIX_FILES, ids=[str(p.relative_to(REPO)) for p in NIX_FILES])
def test_parses(path: Path, root: Path) -> None:
    r = subprocess.run(["nix-instantiate", "--parse", str(path)], capture_output=True, text=True,
                       timeout=60, env={**os.environ, **nixenv.env(root)})
    assert r.returncode == 0, r.stderr


def test_options_of_both_modules(root: Path) -> None:
    v = evaluate(f"""let s = {system_expr(str(SERVER), str(CLIENT))};
      o = s.options.services; d = x: x.default or null; t = x: x.type.name; in {{
        server = builtins.mapAttrs (n: x: t x) (removeAttrs o.netbootd [ "roles" ]);
        role = builtins.mapAttrs (n: x: t x)
          (removeAttrs (o.netbootd.roles.type.getSubOptions [ ]) [ "_module" ]);
        keep = d o.netbootd.keepGenerations; state = d o.netbootd.stateDir;
        mode = (o.netbootd.roles.type.getSubOptions [ ]).mode.default;
        package = o.netbootd.package.defaultText.text;
        client = builtins.attrNames o.netbootd-client;
        flag = d o.netbootd-client.provision.flag; composed = d o.netbootd-client.composedStore;
      }}""", root)
    assert isinstance(v, dict)
    assert v["server"] == {"enable": "bool", "package": "package", "stateDir": "str",
                           "settings": "either", "openFirewall": "bool",
                           "keepGenerations": "positiveInt"}
    assert v["role"] == {"configuration": "unspecified", "mode": "enum", "cmdline": "str"}
    assert (v["keep"], v["state"], v["mode"]) == (5, "/var/lib/netbootd", "netboot")
    assert v["package"] == "pkgs.callPackage <netbootd>/nixos/package.nix { }"
    assert v["client"] == ["composedStore", "enable", "identity", "provision", "reportBooted"]
    # the flag the client answers to is netbootd's default one
    assert v["flag"] == model.DEFAULT_PROVISION_FLAG and v["composed"] is False


def test_netbootd_service_runs_as_a_system_user_with_two_capabilities(root: Path) -> None:
    """The real rendering (serviceToUnit) of netbootd.service: a non-root user, only the two
    capabilities, no new privileges, a file limit for thousands of clients."""
    v = evaluate(f"""let s = {system_expr(*server())}; in {{
        unit = s.config.system.build.unitTexts."netbootd.service";
        user = s.config.users.users.netbootd; group = s.config.users.groups ? netbootd;
        tmpfiles = s.config.systemd.tmpfiles.rules;
        settings = s.config.services.netbootd.settings;
      }}""", root)
    assert isinstance(v, dict)
    unit = v["unit"]
    lines = set(unit.splitlines())
    # (a list is one line per element, which systemd merges)
    assert {"User=netbootd", "Group=netbootd", "NoNewPrivileges=true", "UMask=0077",
            "AmbientCapabilities=CAP_NET_BIND_SERVICE", "AmbientCapabilities=CAP_NET_RAW",
            "CapabilityBoundingSet=CAP_NET_BIND_SERVICE", "CapabilityBoundingSet=CAP_NET_RAW",
            "LimitNOFILE=65536", "ProtectSystem=strict",
            "ReadWritePaths=/var/lib/netbootd"} <= lines, unit
    assert len([x for x in lines if x.startswith(("AmbientCapabilities=",
                                                  "CapabilityBoundingSet="))]) == 4
    assert re.search(r"^ExecStart=\S+/bin/netbootd --config \S+-netbootd\.toml serve$", unit,
                     re.M), unit
    assert v["user"]["isSystemUser"] is True and v["user"]["group"] == "netbootd" and v["group"]
    assert v["tmpfiles"] == ["d /var/lib/netbootd 0700 netbootd netbootd -",
                             "Z /var/lib/netbootd - netbootd netbootd -"]
    settings = v["settings"]
    assert settings["state_dir"] == "/var/lib/netbootd"
    assert settings["iscsi"] == {"reconcile_interval": 0}
    assert "boot_files" not in settings  # netbootd's defaults: files nixpkgs' ipxe builds


def test_custom_state_dir_is_made_before_the_units(root: Path) -> None:
    v = evaluate(f"""let s = {system_expr(*server('stateDir = "/srv/netboot";'))}; in {{
        rules = s.config.systemd.tmpfiles.rules;
        unit = s.config.system.build.unitTexts."netbootd.service";
      }}""", root)
    assert isinstance(v, dict)
    assert "d /srv/netboot 0700 netbootd netbootd -" in v["rules"]
    assert "ReadWritePaths=/srv/netboot" in v["unit"].splitlines()


NAMES = ["web", "1web", "web.v2", "a_b-c", "a" * 63, "", "Web", "-web", "web/x", "a" * 64,
         "we b", "web\n", "wéb"]


@pytest.mark.parametrize("name", NAMES)
def test_role_names_are_netbootds(name: str, root: Path) -> None:
    """services.netbootd.roles.<name> is refused at evaluation exactly when netbootd would refuse
    the name."""
    try:
        model.role_name(name)
        valid = name.strip() == name  # role_name strips; the module sees the name as written
    except InvalidInput:
        valid = False
    role = f"roles.{nix_string(name)} = {{ configuration = {ROLE_CONFIG}; }};"
    msgs = failed(root, *server(role))
    named = [m for m in msgs if "not a netbootd role name" in m]
    assert (named == []) == valid, (name, msgs)


CMDLINES = ["console=ttyS0 quiet", "a=b,c:d/e+f@g%h~i^j[k]l{m}n(o)p*q!r?s<t>u-v", "x;y", "x$y",
            "x'y", 'x"y', "x\\y", "x\ny", "x#y", "x|y", "x&y"]


@pytest.mark.parametrize("cmdline", CMDLINES)
def test_role_cmdline_is_checked_like_netbootd(cmdline: str, root: Path) -> None:
    try:
        model.cmdline(cmdline)
        valid = True
    except InvalidInput:
        valid = False
    msgs = failed(root, *server(f"roles.web = {{ configuration = {ROLE_CONFIG}; "
                                f"cmdline = {nix_string(cmdline)}; }};"))
    assert (not any(".cmdline: netbootd refuses" in m for m in msgs)) == valid, (cmdline, msgs)


def test_role_modes_need_their_configuration(root: Path) -> None:
    bare = "{ config = { system.build = { }; }; }"
    msgs = failed(root, *server(f"roles.a = {{ configuration = {bare}; mode = \"compose\"; }};"
                                f"roles.b = {{ configuration = {bare}; }};"))
    assert any('roles."a": mode "compose" needs services.netbootd-client.composedStore = true'
               in m for m in msgs), msgs
    assert any('roles."b": mode "netboot" needs system.build.netbootRamdisk: import '
               '(modulesPath + "/installer/netboot/netboot.nix")' in m for m in msgs), msgs
    assert failed(root, *server(f"roles.a = {{ configuration = {ROLE_CONFIG}; "
                                "mode = \"compose\"; };")) == []


def test_composed_store_without_netboot_nix_passes_nixos_assertions(root: Path) -> None:
    """A configuration without netboot.nix: NixOS's grub assertion (devices unset) and its
    root file system assertion fire, unless composedStore sets what compose mode needs."""
    plain = failed(root, str(CLIENT), "{ services.netbootd-client.enable = true; }")
    assert any("boot.loader.grub.devices" in m for m in plain), plain
    assert any("does not specify your root file system" in m for m in plain), plain
    assert failed(root, str(CLIENT), "{ services.netbootd-client = { enable = true; "
                  "composedStore = true; }; }") == []


def test_composed_store_refuses_systemd_stage_1(root: Path) -> None:
    msgs = failed(root, str(CLIENT), "{ services.netbootd-client = { enable = true; "
                  "composedStore = true; }; boot.initrd.systemd.enable = true; }")
    assert msgs == ["services.netbootd-client.composedStore moves the composed store into the "
                    "root file system in scripted stage 1 (boot.initrd.postMountCommands), which "
                    "systemd stage 1 does not run: set boot.initrd.systemd.enable = false in "
                    "this configuration."]


def test_identity_unit_never_writes_machine_id(root: Path) -> None:
    """The identity unit orders itself before every way sshd starts, is required by them, and
    its script reads /etc/machine-id but never writes it (the host takes its machine-id from
    systemd.machine_id= on the command line; a first boot's /etc/machine-id is a read-only
    mount)."""
    v = evaluate(f"""let s = {system_expr(str(CLIENT), "{ services.netbootd-client.enable = true;"
                                          " services.openssh.enable = true; }")};
        i = s.config.systemd.services.netbootd-identity; in {{
          inherit (i) before requiredBy after script;
        }}""", root)
    assert isinstance(v, dict)
    assert v["before"] == ["sshd.service", "sshd.socket", "sshd-keygen.service"]
    assert v["requiredBy"] == ["sshd.service", "sshd.socket"]
    assert v["after"] == ["network-online.target"]
    script = v["script"]
    code = [line.strip() for line in script.splitlines() if not line.strip().startswith("#")]
    uses = [line for line in code if re.search(r"(?<!\$dir)/etc/machine-id", line)]
    assert uses == ['if [ "$(cat /etc/machine-id 2>/dev/null)" != "$want" ]; then',
                    'echo "warning: /etc/machine-id is not the identity\'s $want (no '
                    'systemd.machine_id= on the command line?)" >&2'], uses
    assert not [line for line in code
                if re.search(r"(install|cp|mv|tee|ln|>)[^|;]*\s/etc/machine-id", line)]
    assert 'install -m 0600 "$dir/etc/ssh/ssh_host_${k}_key" /etc/ssh/' in code


def test_package_is_pyprojects(root: Path) -> None:
    """services.netbootd.package defaults to nixos/package.nix (the flake's package), whose
    dependencies are pyproject.toml's."""
    recorder = ("let pkgs' = s.pkgs // { callPackage = s.pkgs.lib.callPackageWith pkgs'; "
                "python3Packages = (builtins.listToAttrs (map (n: { name = n; value = n; }) "
                "[ \"hatchling\" \"aiohttp\" \"scapy\" \"jinja2\" \"pydantic\" \"cryptography\" "
                "\"prometheus-client\" "
                "\"tftpy\" ])) // { buildPythonApplication = a: a // "
                "{ type = \"derivation\"; outPath = \"/recorded\"; }; }; }; in")
    plain = "{ services.netbootd.enable = true; }"  # the package's default
    v = evaluate(f"""let s = {system_expr(str(SERVER), plain)}; in {recorder}
        let p = (s.extendModules {{ modules = [
              {{ _module.args.pkgs = s.pkgs.lib.mkForce pkgs'; }} ]; }})
            .config.services.netbootd.package; in {{
          inherit (p) pname version dependencies build-system; main = p.meta.mainProgram;
        }}""", root)
    assert isinstance(v, dict)
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    deps = sorted(re.split(r"[<>=!~ ]", d, maxsplit=1)[0].lower() for d in project["dependencies"])
    assert sorted(v["dependencies"]) == deps
    assert (v["pname"], v["version"], v["main"]) == ("netbootd", project["version"], "netbootd")
    assert v["build-system"] == ["hatchling"]
