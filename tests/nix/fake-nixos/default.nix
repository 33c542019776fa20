# `netbootd role build R --file default.nix --attr fake`
{ npaths ? 40 }:
{
  fake = import ./system.nix { version = builtins.readFile ./version; inherit npaths; };
  # what an aarch64 configuration says: config.system.boot.loader.kernelFile = "Image"
  # (built for this machine: only the names matter to netbootd)
  fakeImage = import ./system.nix {
    version = builtins.readFile ./version; inherit npaths; kernelFile = "Image";
  };
}
