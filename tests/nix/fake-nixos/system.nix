# A "NixOS system" built without nixpkgs (tests only): the attributes netbootd reads from a real
# nixosConfiguration -- config.system.build.{kernel,initialRamdisk,netbootRamdisk,toplevel} and
# config.boot.kernelParams -- made with builtins.derivation and the build host's /bin/sh.
#   version  goes into one store path ("etc"): change it and exactly that path and the
#            toplevel (which refers to it) change
#   npaths   library-like store paths in the toplevel's closure (a chain: each refers to the last)
#   size     bytes of filler per library
{ version ? "1", npaths ? 40, size ? 2048, system ? "x86_64-linux" }:
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
    ${filler 65536 "kernel"} > $out/bzImage
  '';
  initialRamdisk = mk "initrd-linux-6.1-fake" ''
    mkdir -p root $out
    printf '#!/bin/sh\necho stage 1\n' > root/init
    chmod 755 root/init
    (cd root && echo init | cpio -o -H newc --quiet | gzip -n) > $out/initrd
  '';
  toplevel = mk "nixos-system-fake-${version}" ''
    mkdir -p $out
    printf '#!/bin/sh\nexec ${last}/lib/lib0.so\n' > $out/init
    chmod 555 $out/init
    ln -s ${etc}/etc $out/etc
    ln -s ${kernel}/bzImage $out/kernel
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
    boot.kernelParams = [ "console=ttyS0" "loglevel=4" ];
  };
}
