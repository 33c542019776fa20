# A stage 1 shaped like NixOS's scripted one (nixpkgs nixos/modules/system/boot/stage-1.nix and
# stage-1-init.sh), where netbootd's client module meets it:
#
# - its tools live in the initramfs's own /nix/store (`extra-utils`: NixOS copies busybox and
#   util-linux there; here busybox-static) and /init is a symlink to the stage-1 script there;
# - it mounts fileSystems."/" and the neededForBoot ones on /mnt-root, then runs
#   boot.initrd.postMountCommands (as NixOS: after the mounts, before stage 2 is looked for);
# - it finds stage 2 from `init=` on the kernel command line, moves /proc, /sys, /dev and /run
#   into the new root and `switch_root`s (which deletes what is left in the initramfs);
# - boot.initrd.systemd.enable selects NixOS's systemd stage 1, which this test system does not
#   have; like NixOS it refuses the scripted-only hooks then (nixos/modules/system/boot/systemd/
#   initrd.nix asserts they are empty).
# What it leaves out: udev, LVM, fsck, resume, the emergency shell (a failure powers off).
{ config, lib, pkgs, ... }:

let
  inherit (lib) mkOption types;
  cfg = config.boot.initrd;
  extraUtils = pkgs.busybox;
  storeDir = builtins.storeDir;
  mounts = lib.filter (fs: fs.mountPoint == "/" || fs.neededForBoot)
    (lib.sort (a: b: lib.stringLength a.mountPoint < lib.stringLength b.mountPoint)
      (lib.attrValues config.fileSystems));
  mountFS = fs: ''
    mkdir -p "$targetRoot${fs.mountPoint}"
    mount -t ${fs.fsType} -o ${lib.concatStringsSep "," fs.options} ${fs.device} "$targetRoot${fs.mountPoint}" \
      || fail "mounting ${fs.device} on ${fs.mountPoint}"
  '';

  bootStage1 = pkgs.writeScript "stage-1-init" ''
    #!${extraUtils}/bin/ash
    targetRoot=/mnt-root
    export PATH=${extraUtils}/bin
    ln -s ${extraUtils}/bin /bin

    mkdir -p /proc /sys /dev /run /etc
    mount -t proc proc /proc
    mount -t sysfs sysfs /sys
    mount -t devtmpfs devtmpfs /dev
    mount -t tmpfs -o mode=0755 tmpfs /run
    exec </dev/console >/dev/console 2>&1  # (this initramfs has no /dev/console node)

    fail() { echo "NETBOOTD-TEST: STAGE1-FAILED $*"; poweroff -f; }
    echo "NETBOOTD-TEST: STAGE1 <<< NixOS Stage 1 >>> (tools in ${extraUtils})"

    stage2Init=/init
    for o in $(cat /proc/cmdline); do
      case $o in init=*) stage2Init=''${o#init=} ;; esac
    done

    mkdir -p $targetRoot
    ${lib.concatMapStrings mountFS mounts}

    ${cfg.postMountCommands}

    # stage-1-init.sh: stage 2 must be there (or be a symlink) in the new root
    if [ ! -e "$targetRoot/$stage2Init" ] && [ ! -L "$targetRoot/$stage2Init" ]; then
      fail "stage 2 init script ($targetRoot/$stage2Init) not found"
    fi
    echo "NETBOOTD-TEST: STAGE1-DONE $(ls ${storeDir} | wc -l) paths left in the initramfs store"
    mkdir -m 0755 -p $targetRoot/proc $targetRoot/sys $targetRoot/dev $targetRoot/run
    mount --move /proc $targetRoot/proc
    mount --move /sys $targetRoot/sys
    mount --move /dev $targetRoot/dev
    mount --move /run $targetRoot/run
    exec env -i "$(command -v switch_root)" "$targetRoot" "$stage2Init"
    fail "switch_root"
  '';
in
{
  options.boot.initrd = {
    postMountCommands = mkOption { type = types.lines; default = ""; };
    postDeviceCommands = mkOption { type = types.lines; default = ""; };
    systemd.enable = mkOption { type = types.bool; default = false; };
  };

  config = {
    assertions = lib.optionals cfg.systemd.enable (map (name: {
      assertion = cfg.${name} == "";
      message = "systemd stage 1 does not support 'boot.initrd.${name}'. Please convert it to "
        + "analogous systemd units in 'boot.initrd.systemd'.";
    }) [ "postDeviceCommands" "postMountCommands" ]);

    system.build = {
      inherit bootStage1 extraUtils;
      # makeInitrd: the closure of /init's target in the archive's store, /init a symlink to it
      initialRamdisk = pkgs.mkDerivation {
        name = "initrd-fake-nixos";
        builder = "/bin/sh";
        PATH = "/usr/bin:/bin";
        exportReferencesGraph = [ "closure" bootStage1 ];
        args = [ "-c" ''
          mkdir -p root $out
          for p in $(grep '^/' closure | grep -v '[.]drv$' | sort -u); do
            mkdir -p "root$(dirname "$p")" && cp -a "$p" "root$p"
          done
          ln -s ${bootStage1} root/init
          (cd root && find . -mindepth 1 | sort | cpio -o -H newc -R 0:0 --quiet | gzip -n) \
            > $out/initrd
        '' ];
      };
    };
  };
}
