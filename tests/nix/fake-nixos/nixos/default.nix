# A NixOS-shaped module system for netbootd's tests: nixpkgs' REAL `lib` (evalModules, types,
# toposort) and the REAL systemd unit option types and rendering (an excerpt of nixpkgs'
# nixos/lib/systemd-*.nix), both read from ../shared/vendor/ and passed in by the test, plus
# NixOS's option names and behaviour for what netbootd's modules set and read (./base.nix,
# shaped after the nixpkgs files each option cites). There is no nixpkgs here: packages are this
# machine's Debian programs (./pkgs.nix), and the system it builds boots through a stage 1 and a
# stage 2 shaped like NixOS's (./stage-1.nix, ./stage-2.nix) -- enough for a QEMU VM to boot
# netbootd's compose mode and run the client module's own commands and units.
#
#   import ./default.nix { nixpkgsLib = <vendor>/nixpkgs-lib/lib;
#                          systemdLib = <vendor>/nixos-systemd/systemd-lib.nix;
#                          modules = [ ../../../../nixos/client.nix { ... } ]; }
#   -> what lib.nixosSystem returns: { config, options, pkgs, ... }
{ nixpkgsLib, systemdLib, modules ? [ ], system ? "x86_64-linux" }:

let
  lib = import nixpkgsLib;
  pkgs = import ./pkgs.nix { inherit lib system; };
  sd = import systemdLib { inherit lib pkgs; systemdPackage = pkgs.systemd; };
in
lib.evalModules {
  specialArgs = { modulesPath = toString ./.; };
  modules = [
    ./base.nix
    ./systemd.nix
    ./services.nix
    ./stage-1.nix
    ./stage-2.nix
    { _module.args = { inherit pkgs; systemdLib = sd; }; }
  ] ++ modules;
}
// { inherit pkgs; }
