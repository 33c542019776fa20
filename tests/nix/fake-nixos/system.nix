# A "NixOS system" built without nixpkgs or its lib (tests only; usable from a flake without
# inputs): the attributes netbootd reads from a real nixosConfiguration --
# config.system.build.{kernel,initialRamdisk,netbootRamdisk,toplevel}, config.boot.kernelParams
# and config.system.boot.loader.kernelFile -- made with builtins.derivation and the build host's
# /bin/sh. Shaped like NixOS where netbootd looks: the kernel is `<kernel>/<kernelFile>`, the
# stage-1 initrd keeps its tools in its own /nix/store (an "extra-utils" path its /init runs
# from), the toplevel has `init`. (../nixos/ is the NixOS-shaped module system that evaluates
# netbootd's modules with nixpkgs' real lib; this file stays lib-free.)
#   version  goes into one store path ("etc"): change it and exactly that path and the
#            toplevel (which refers to it) change
#   npaths   library-like store paths in the toplevel's closure (a chain: each refers to the last)
#   size     bytes of filler per library
#   kernelFile  the kernel's file name (NixOS: bzImage on x86_64, Image on aarch64)
{ version ? "1", npaths ? 40, size ? 2048, system ? "x86_64-linux", kernelFile ? "bzImage" }:
let
  mk = name: script: builtins.derivation {
    inherit name system;
    builder = "/bin/sh";
    args = [ "-c" script ];
    PATH = "/usr/bin:/bin";
  };
  # deterministic filler: a line repeated, cut to size
  filler = n: tag: "yes '${tag} filler line for a fake library' | head -c ${toString n}";
  libs = builtins.genList (i: i) npaths;
  lib = i: mk "lib${toString i}-1.0" ''
    mkdir -p $out/lib
    ${filler size "lib${toString i}"} > $out/lib/lib${toString i}.so
    ${if i > 0 then "echo ${lib (i - 1)} > $out/lib/needs" else "true"}
    chmod 555 $out/lib/lib${toString i}.so
    ln -s lib${toString i}.so $out/lib/lib${toString i}.so.1
  '';
  last = lib (npaths - 1);
  etc = mk "etc" ''
    mkdir -p $out/etc
    printf '%s\n' '${version}' > $out/etc/version
  '';
  kernel = mk "linux-6.1-fake" ''
    mkdir -p $out
    ${filler 65536 "kernel"} > $out/${kernelFile}
  '';
  extraUtils = mk "extra-utils" ''
    mkdir -p $out/bin
    printf '#!/bin/sh\necho fake tool\n' > $out/bin/switch_root
    chmod 555 $out/bin/switch_root
  '';
  bootStage1 = mk "stage-1-init" ''
    printf '#!${extraUtils}/bin/ash\necho stage 1\nexec ${extraUtils}/bin/switch_root\n' > $out
    chmod 555 $out
  '';
  # /init -> the stage-1 script; its closure (the script, extra-utils) in the initrd's store
  initialRamdisk = builtins.derivation {
    name = "initrd-linux-6.1-fake";
    inherit system;
    builder = "/bin/sh";
    PATH = "/usr/bin:/bin";
    exportReferencesGraph = [ "closure" bootStage1 ];
    args = [ "-c" ''
      mkdir -p root $out
      for p in $(grep '^/' closure | grep -v '[.]drv$' | sort -u); do
        mkdir -p "root$(dirname "$p")" && cp -a "$p" "root$p"
      done
      ln -s ${bootStage1} root/init
      (cd root && find . -mindepth 1 | sort | cpio -o -H newc --quiet | gzip -n) > $out/initrd
    '' ];
  };
  toplevel = mk "nixos-system-fake-${version}" ''
    mkdir -p $out
    printf '#!/bin/sh\nexec ${last}/lib/lib0.so\n' > $out/init
    chmod 555 $out/init
    ln -s ${etc}/etc $out/etc
    ln -s ${kernel}/${kernelFile} $out/kernel
    echo ${last} > $out/libs
  '';
  netbootRamdisk = mk "initrd-netboot-fake" ''
    mkdir -p root $out
    echo ${toplevel} > root/closure-of
    (cd root && echo closure-of | cpio -o -H newc --quiet | gzip -n) > netboot.cpio.gz
    cat ${initialRamdisk}/initrd netboot.cpio.gz > $out/initrd
  '';
in {
  config = {
    system.build = { inherit kernel initialRamdisk netbootRamdisk toplevel; };
    system.boot.loader.kernelFile = kernelFile;
    boot.kernelParams = [ "console=ttyS0" "loglevel=4" ];
  };
}
