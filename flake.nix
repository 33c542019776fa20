# netbootd as a flake: the package (nixos/package.nix), the server module (services.netbootd),
# the client module for netbooted hosts (services.netbootd-client) and a NixOS VM test of both
# (nixos/tests/netboot.nix: `nix flake check` on x86_64-linux). Offline, this repository checks
# the modules with nixpkgs' real lib and systemd unit types (tests/unit/test_nixos_modules.py,
# tests/integration/test_nixos_units.py); building the package and the VM test need nixpkgs
# (see README "NixOS").
{
  description = "netbootd: network-boot and provisioning server (proxyDHCP, TFTP, HTTP)";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-24.05";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAll = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in
    {
      packages = forAll (pkgs: rec {
        netbootd = pkgs.callPackage ./nixos/package.nix { };
        default = netbootd;
      });

      overlays.default = final: prev: { netbootd = final.callPackage ./nixos/package.nix { }; };

      # services.netbootd.package defaults to the same package (nixos/package.nix)
      nixosModules = {
        server = ./nixos/module.nix;
        client = ./nixos/client.nix;
        default = self.nixosModules.server;
      };

      checks.x86_64-linux.netboot =
        nixpkgs.legacyPackages.x86_64-linux.testers.runNixOSTest ./nixos/tests/netboot.nix;
    };
}
