# netbootd as a flake: the package, the server module (services.netbootd) and the client module
# for netbooted hosts (services.netbootd-client). Verified offline only by `nix-instantiate
# --parse` (tests/unit/test_nixos_modules.py); building needs nixpkgs (see README "NixOS").
{
  description = "netbootd: network-boot and provisioning server (proxyDHCP, TFTP, HTTP)";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-24.05";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAll = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
      package = pkgs: pkgs.python3Packages.buildPythonApplication {
        pname = "netbootd";
        version = "0.1.0";
        pyproject = true;
        src = nixpkgs.lib.cleanSource ./.;
        build-system = [ pkgs.python3Packages.hatchling ];
        dependencies = with pkgs.python3Packages; [
          aiohttp scapy tftpy jinja2 pydantic cryptography
        ];
        # `role build` runs the Nix CLI; the server module puts nix on the service's PATH
        doCheck = false;
        meta.mainProgram = "netbootd";
      };
    in
    {
      packages = forAll (pkgs: { netbootd = package pkgs; default = package pkgs; });

      overlays.default = final: prev: { netbootd = package final; };

      nixosModules = {
        server = { pkgs, lib, ... }: {
          imports = [ ./nixos/module.nix ];
          services.netbootd.package = lib.mkDefault self.packages.${pkgs.system}.netbootd;
        };
        client = ./nixos/client.nix;
        default = self.nixosModules.server;
      };
    };
}
