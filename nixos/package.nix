# The netbootd package: `pkgs.callPackage ./package.nix { }` (what flake.nix's
# packages.<system>.netbootd is, and services.netbootd.package's default). Its dependencies
# are pyproject.toml's [project] dependencies (checked by tests/unit/test_nixos_modules.py).
{ lib, python3Packages }:

python3Packages.buildPythonApplication {
  pname = "netbootd";
  version = "0.1.0";
  pyproject = true;
  src = lib.cleanSource ./..;
  build-system = [ python3Packages.hatchling ];
  dependencies = with python3Packages; [ aiohttp scapy jinja2 pydantic cryptography
    prometheus-client ];
  # `role build` runs the Nix CLI: services.netbootd puts nix on its unit's PATH
  doCheck = false;
  meta = {
    description = "Network-boot and provisioning server: proxyDHCP, TFTP, HTTP(S), per-host iPXE";
    license = lib.licenses.mit;
    mainProgram = "netbootd";
    platforms = lib.platforms.linux;
  };
}
