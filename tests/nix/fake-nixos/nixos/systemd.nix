# systemd.services with nixpkgs' own option types and unit rendering (the vendored excerpt of
# nixos/lib/systemd-lib.nix and systemd-unit-options.nix, passed in as `systemdLib`), written
# out the way NixOS's systemd-lib.nix `generateUnits` does: one file per unit, and the
# wantedBy/requiredBy edges as `<target>.wants/` and `<target>.requires/` symlinks. The result is
# `/etc/systemd/system` of the booted test system and what the tests hand to Debian's
# `systemd-analyze verify`.
#
# `system.build.serviceOrder` is this test system's stand-in for systemd's job ordering (its
# stage 2 starts units in that order): a topological sort, with nixpkgs' lib.toposort, of the
# enabled services by their After=/Before=, with systemd's default dependencies (a service
# without DefaultDependencies=no comes after sysinit.target and basic.target) and the boot
# targets' own order (local-fs-pre < local-fs < sysinit < basic; network < network-online).
{ config, lib, pkgs, systemdLib, ... }:

let
  inherit (lib) mkOption types;
  enabled = lib.filterAttrs (_: s: s.enable) config.systemd.services;
  units = lib.mapAttrs' (n: s: lib.nameValuePair "${n}.service" (systemdLib.serviceToUnit n s))
    enabled;
  defs = lib.mapAttrs' (n: s: lib.nameValuePair "${n}.service" s) enabled;

  link = dir: unit: ''
    mkdir -p "$out/${dir}"
    ln -s "../${unit}" "$out/${dir}/${unit}"
  '';
  unitsDir = pkgs.runCommand "system-units" { } (''
    mkdir -p $out
  '' + lib.concatStrings (lib.mapAttrsToList (name: u: ''
    ln -s ${pkgs.writeText "unit-${lib.replaceStrings [ "@" ] [ "-" ] name}" u.text} $out/${name}
  '' + lib.concatMapStrings (w: link "${w}.wants" name) u.wantedBy
     + lib.concatMapStrings (r: link "${r}.requires" name) u.requiredBy) units));

  # -- the start order of the test system's stage 2
  targetAfter = {
    "local-fs.target" = [ "local-fs-pre.target" ];
    "sysinit.target" = [ "local-fs.target" ];
    "basic.target" = [ "sysinit.target" ];
    "network-online.target" = [ "network.target" ];
    "multi-user.target" = [ "basic.target" ];
  };
  defaultDeps = u: (defs.${u}.unitConfig.DefaultDependencies or true) != false;
  after = u: defs.${u}.after or [ ] ++ (targetAfter.${u} or [ ])
    ++ lib.optionals (defs ? ${u} && defaultDeps u) [ "sysinit.target" "basic.target" ];
  before = u: defs.${u}.before or [ ];
  nodes = lib.unique (lib.attrNames defs ++ lib.attrNames targetAfter
    ++ lib.concatMap (u: after u ++ before u) (lib.attrNames defs));
  sorted = lib.toposort (a: b: lib.elem b (before a) || lib.elem a (after b)) nodes;
in
{
  options.systemd = {
    services = mkOption {
      type = systemdLib.servicesType;
      default = { };
    };
    # nixos/modules/system/boot/systemd/tmpfiles.nix
    tmpfiles.rules = mkOption { type = types.listOf types.str; default = [ ]; };
  };

  config = {
    system.build.units = unitsDir;
    system.build.unitTexts = lib.mapAttrs (_: u: u.text) units;
    system.build.serviceOrder =
      if sorted ? result then lib.filter (n: defs ? ${n}) sorted.result
      else throw "ordering cycle among ${toString (sorted.cycle or [ ])}";
    environment.etc."systemd/system".source = unitsDir;
    environment.etc."tmpfiles.d/00-nixos.conf".text = lib.concatMapStrings (r: r + "\n")
      config.systemd.tmpfiles.rules;
  };
}
