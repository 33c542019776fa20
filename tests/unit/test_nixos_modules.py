"""The NixOS modules and the flake, checked offline (no nixpkgs here):
- `nix-instantiate --parse` succeeds on every .nix file in nixos/ and on flake.nix;
- evaluated against a stub `lib`/`pkgs` (mkOption = identity, types as tags), each module
  declares the options the README documents -- the option *structure*, not their semantics,
  which need nixpkgs' module system."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from testbed import REPO, nixenv

NIX_FILES = sorted((REPO / "nixos").glob("**/*.nix")) + [REPO / "flake.nix"]

pytestmark = pytest.mark.skipif(nixenv.missing() is not None, reason=str(nixenv.missing()))

# Just enough of nixpkgs' lib and pkgs to evaluate the modules' `options` (lazily: `config` is
# never forced). An option becomes { _option = true; ... } so the test can tell options apart.
STUB = r"""
let
  tag = name: { _type = name; };
  types = {
    bool = tag "bool"; str = tag "str"; path = tag "path"; package = tag "package";
    unspecified = tag "unspecified"; lines = tag "lines";
    ints = { positive = tag "ints.positive"; };
    attrsOf = t: { _type = "attrsOf"; of = t; };
    nullOr = t: { _type = "nullOr"; of = t; };
    enum = vs: { _type = "enum"; values = vs; };
    submodule = m: { _type = "submodule"; options = m.options; };
  };
  lib = {
    inherit types;
    mkOption = o: o // { _option = true; };
    mkEnableOption = d: { _option = true; type = types.bool; description = d; };
    mkIf = c: v: v; mkMerge = vs: vs; mkDefault = v: v;
    literalExpression = s: s;
    mapAttrs = builtins.mapAttrs;
    mapAttrsToList = f: s: map (n: f n s.${n}) (builtins.attrNames s);
    concatStringsSep = builtins.concatStringsSep;
    escapeShellArg = s: "'" + s + "'";
    optionalString = c: s: if c then s else "";
    optional = c: v: if c then [ v ] else [ ];
  };
  pkgs = {
    formats.toml = _: { type = tag "toml"; generate = n: v: "/toml/${n}"; };
    writeText = n: t: "/text/${n}";
    curl = "/curl"; coreutils = "/cu"; gnutar = "/tar"; gzip = "/gz"; openssh = "/ssh";
    ipxe = "/ipxe";
  };
  config = { services = { netbootd = { }; netbootd-client = { }; openssh.enable = true; }; };
  # option name -> its type tag (and, for submodules, their options)
  describe = opts: builtins.mapAttrs (n: o:
    if o ? _option then
      { type = o.type._type or "?"; default = o.default or null; }
      // (if (o.type._type or "") == "attrsOf" && (o.type.of._type or "") == "submodule"
          then { suboptions = describe o.type.of.options; } else { })
    else describe o) opts;
  m = f: (import f) { inherit config lib pkgs; };
in {
  server = describe (m SERVER).options.services.netbootd;
  client = describe (m CLIENT).options.services.netbootd-client;
  flake = let fl = import FLAKE; in {
    top = builtins.attrNames fl;
    args = builtins.attrNames (builtins.functionArgs fl.outputs);
    modules = builtins.attrNames (fl.outputs {
      self = { }; nixpkgs = { lib.genAttrs = ns: f: { }; legacyPackages = { }; };
    }).nixosModules;
  };
}
"""


@pytest.fixture
def nix_env(tmp_path: Path) -> dict[str, str]:
    import os

    return {**os.environ, **nixenv.env(tmp_path / "nix")}  # no host store is touched


def nix_eval(expr: str, env: dict[str, str]) -> object:
    out = subprocess.run(["nix-instantiate", "--eval", "--strict", "--json", "--expr", expr],
                         capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.parametrize("path", NIX_FILES, ids=[str(p.relative_to(REPO)) for p in NIX_FILES])
def test_parses(path: Path, nix_env: dict[str, str]) -> None:
    r = subprocess.run(["nix-instantiate", "--parse", str(path)], capture_output=True, text=True,
                       timeout=60, env=nix_env)
    assert r.returncode == 0, r.stderr


def test_option_structure_without_nixpkgs(nix_env: dict[str, str]) -> None:
    assert (REPO / "nixos" / "module.nix").is_file() and (REPO / "nixos" / "client.nix").is_file()
    expr = (STUB.replace("SERVER", json.dumps(str(REPO / "nixos" / "module.nix")))
            .replace("CLIENT", json.dumps(str(REPO / "nixos" / "client.nix")))
            .replace("FLAKE", json.dumps(str(REPO / "flake.nix"))))
    # paths in `import "<string>"` need to be paths: turn the JSON strings into path literals
    expr = expr.replace(f'"{REPO}', str(REPO)).replace('.nix"', ".nix")
    v = nix_eval(expr, nix_env)
    assert isinstance(v, dict)
    server, client, flake = v["server"], v["client"], v["flake"]
    assert set(server) == {"enable", "package", "stateDir", "settings", "openFirewall",
                           "keepGenerations", "roles"}
    assert server["settings"]["type"] == "toml" and server["openFirewall"]["default"] is False
    assert server["keepGenerations"]["default"] == 5
    assert server["roles"]["type"] == "attrsOf"
    assert set(server["roles"]["suboptions"]) == {"configuration", "mode", "cmdline"}
    assert server["roles"]["suboptions"]["mode"]["default"] == "netboot"
    assert set(client) == {"enable", "reportBooted", "identity", "provision", "composedStore"}
    assert set(client["identity"]) == {"enable"} and set(client["provision"]) == {"script", "flag"}
    # the client answers to netbootd's default flag (netbootd.model.DEFAULT_PROVISION_FLAG)
    from netbootd.model import DEFAULT_PROVISION_FLAG

    assert client["provision"]["flag"] == {"type": "str", "default": DEFAULT_PROVISION_FLAG}
    assert client["composedStore"]["default"] is False
    assert flake["args"] == ["nixpkgs", "self"]
    assert {"description", "inputs", "outputs"} <= set(flake["top"])
    assert flake["modules"] == ["client", "default", "server"]
