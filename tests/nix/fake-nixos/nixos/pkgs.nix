# The package set of the NixOS-shaped test system: no nixpkgs here, so every package is this
# machine's Debian programs copied into the (private, per-test) Nix store by
# images/test-initramfs/hosttool.py, their loader and library path rewritten (patchelf) to
# `debian-libs`, one store path holding every library they load -- the way nixpkgs' programs
# find glibc by store path. So a unit's `${pkgs.curl}/bin/curl` runs here and inside a test VM,
# and `nix-store -qR` of a system lists what it really needs.
#
# What nixpkgs has and this does not: the builders are only what netbootd's modules and the
# vendored systemd lib call (writeText, writeShellScriptBin with overrideAttrs, runCommand,
# formats.toml), `systemd` is Debian's systemctl and systemd-cat only (unit scripts may call
# them; the test VM runs no systemd) and `util-linux` its setpriv and mount.
{ lib, system ? "x86_64-linux" }:

let
  hosttool = ../../../../images/test-initramfs/hosttool.py;
  python = "/usr/bin/python3"; # Debian's, with python3-tomli-w (Makefile DEB_PKGS)

  # builtins.derivation + stdenv.mkDerivation's overrideAttrs (the systemd lib renames its
  # job scripts with it)
  mkDerivation = attrs:
    let drv = derivation ({ inherit system; } // attrs);
    in drv // { overrideAttrs = f: mkDerivation (attrs // f attrs); };

  runCommand = name: env: script: mkDerivation ({
    inherit name;
    builder = "/bin/sh";
    args = [ "-c" script ];
    PATH = "/usr/bin:/bin";
  } // env);

  writeTextFile = { name, text, executable ? false, destination ? "" }:
    runCommand name { inherit text; passAsFile = [ "text" ]; } ''
      target="$out${destination}"
      mkdir -p "$(dirname "$target")"
      cp "$textPath" "$target"
      ${lib.optionalString executable ''chmod 555 "$target"''}
    '';

  hostTool = name: args: mkDerivation {
    inherit name;
    builder = python;
    args = [ hosttool ] ++ args;
    PATH = "/usr/bin:/bin";
  };

  # what each package is made of (the arguments of hosttool.py)
  tools = {
    bash = [ "--bin" "/bin/bash" ];
    coreutils = [ "--deb" "coreutils" ];
    findutils = [ "--deb" "findutils" ];
    gnugrep = [ "--deb" "grep" ];
    gnused = [ "--deb" "sed" ];
    gnutar = [ "--deb" "tar" ];
    gzip = [ "--deb" "gzip" ];
    curl = [ "--deb" "curl" ];
    openssh = [ "--deb" "openssh-client" "--deb" "openssh-server" ];
    nix = [ "--deb" "nix-bin" ];
    systemd = [ "--bin" "/bin/systemctl" "--bin" "/usr/bin/systemd-cat" ];
    util-linux = [ "--bin" "/usr/bin/setpriv" "--bin" "/bin/mount" ];
  };
  debianLibs = hostTool "debian-libs" ([ "--libs-only" ] ++ lib.concatLists (lib.attrValues tools));
  fromDebian = name: args: hostTool "debian-${name}" ([ "--libs" "${debianLibs}/lib" ] ++ args);

  self = lib.mapAttrs fromDebian tools // rec {
    inherit lib mkDerivation runCommand writeTextFile debianLibs;
    callPackage = lib.callPackageWith self;
    stdenv.hostPlatform = { inherit system; linux-kernel.target = "bzImage"; };

    runtimeShell = "${self.bash}/bin/bash";
    writeText = name: text: writeTextFile { inherit name text; };
    writeScript = name: text: writeTextFile { inherit name text; executable = true; };
    writeShellScript = name: text: writeScript name "#!${runtimeShell}\n${text}";
    writeShellScriptBin = name: text: writeTextFile {
      inherit name;
      executable = true;
      destination = "/bin/${name}";
      text = "#!${runtimeShell}\n${text}";
    };

    # busybox-static: the NixOS-shaped stage 1's tools (as NixOS's extra-utils are busybox)
    busybox = runCommand "debian-busybox-static" { } ''
      mkdir -p $out/bin
      cp /bin/busybox $out/bin/busybox
      for a in $($out/bin/busybox --list); do
        [ -e "$out/bin/$a" ] || ln -s busybox "$out/bin/$a"
      done
    '';

    # Debian's iPXE binaries (nixpkgs' ipxe builds ipxe.efi and undionly.kpxe too)
    ipxe = runCommand "debian-ipxe" { } ''
      mkdir -p $out
      for f in /usr/lib/ipxe/*; do [ -f "$f" ] && cp -L "$f" $out/; done
    '';

    # pkgs.formats.toml as nixpkgs' pkgs-lib/formats.nix has it: the same value type; the file
    # written by tomli_w (nixpkgs: remarshal's json2toml, not packaged by Debian 12)
    formats.toml = { }: {
      type =
        let
          valueType = with lib.types; oneOf [
            bool int float str path (attrsOf valueType) (listOf valueType)
          ] // { description = "TOML value"; };
        in
        valueType;
      generate = name: value: mkDerivation {
        inherit name;
        builder = python;
        value = builtins.toJSON value;
        passAsFile = [ "value" ];
        args = [ "-c" ''
          import json, os, tomli_w
          with open(os.environ["valuePath"]) as f, open(os.environ["out"], "w") as o:
              o.write(tomli_w.dumps(json.load(f)))
        '' ];
      };
    };
  };
in
self
