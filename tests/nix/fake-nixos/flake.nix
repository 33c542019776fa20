# `netbootd role build R --flake path:<this dir>#fake`: a flake without inputs (no nixpkgs)
{
  description = "netbootd test fixture: a NixOS-shaped system built without nixpkgs";
  outputs = { self }: {
    nixosConfigurations.fake = import ./system.nix { version = builtins.readFile ./version; };
  };
}
