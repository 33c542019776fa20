# Stage 2 and the toplevel, shaped like NixOS's (nixpkgs nixos/modules/system/boot/stage-2.nix,
# stage-2-init.sh, system/activation/top-level.nix):
#
# - toplevel/init is the stage-2 script with @systemConfig@ set to the toplevel; toplevel has
#   kernel, initrd, kernel-params and etc like NixOS's; evaluating it fails on failed
#   assertions with NixOS's "Failed assertions:" message;
# - stage 2 mounts what stage 1 did not, makes / writable, "activates" (/etc from the system's
#   etc: directories real, files symlinks via /etc/static, as NixOS's setup-etc; /bin/sh), runs
#   boot.postBootCommands, and then -- where NixOS execs systemd -- this test system's stand-in:
#     * what systemd itself does before any unit about the machine-id (machine-id(5)): use
#       `systemd.machine_id=` from the kernel command line, else a first boot's transient id
#       (/run/machine-id bind-mounted read-only over /etc/machine-id);
#     * the NIC drivers of the test kernel (udev's job on NixOS);
#     * the enabled services, in system.build.serviceOrder, each run from its rendered unit file
#       (Environment=, UMask=, ExecStartPre=, ExecStart=; Type=simple in the background); a unit
#       whose requirement failed is not started (`<unit>.requires/`), as systemd does;
#     * `netbootd.action=hold` keeps the VM up (the tests read it over the network), else
#       poweroff.
# Every line it prints for the tests starts with NETBOOTD-TEST: (like the test image's /init).
{ config, lib, pkgs, ... }:

let
  storeDir = builtins.storeDir;
  kernelFile = config.system.boot.loader.kernelFile;
  failedAssertions = map (x: x.message) (lib.filter (x: !x.assertion) config.assertions);

  etc = pkgs.runCommand "etc" { } (''
    mkdir -p $out/etc
  '' + lib.concatStrings (lib.mapAttrsToList (_: e: ''
    mkdir -p "$out/etc/$(dirname ${lib.escapeShellArg e.target})"
    ln -s ${e.source} "$out/etc/"${lib.escapeShellArg e.target}
  '') config.environment.etc));

  kernel = pkgs.runCommand "linux-fake-nixos" { } ''
    mkdir -p $out/lib/modules
    cp ${config.fake.kernel.image} $out/${kernelFile}
    ${lib.optionalString (config.fake.kernel.modules != null)
      "cp -r ${config.fake.kernel.modules}/. $out/lib/modules/"}
  '';

  serviceOrder = pkgs.writeText "service-order"
    (lib.concatMapStrings (u: u + "\n") config.system.build.serviceOrder);

  bootStage2 = pkgs.writeText "stage-2-init" ''
    #!${pkgs.runtimeShell}
    systemConfig=@systemConfig@
    export PATH=${pkgs.coreutils}/bin:${pkgs.busybox}/bin
    say() { echo "NETBOOTD-TEST: $*"; }
    arg() {  # arg NAME: NAME=... from the kernel command line
      for x in $(cat /proc/cmdline); do case "$x" in "$1="*) echo "''${x#"$1="}"; return 0;; esac; done
      return 1
    }

    if [ ! -e /proc/1 ]; then  # stage-2-init.sh: no stage 1 ran
      mkdir -p /proc /sys /dev /run
      mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev
      mount -t tmpfs -o mode=0755 tmpfs /run
    fi
    exec </dev/console >/dev/console 2>&1
    mount -n -o remount,rw none /
    say "STAGE2 <<< NixOS Stage 2 >>> $systemConfig"
    say "ROOT-FS $(stat -f -c %T /)"
    say "STORE $(ls ${storeDir} | grep -c '^[0-9a-z]\{32\}-') paths in ${storeDir}"
    mkdir -m 01777 -p /tmp
    mkdir -m 0755 -p /var /etc /root /bin /nix/var/nix

    # activation: /etc
    ln -sfn "$systemConfig/etc" /etc/static
    (cd /etc/static/ && find -L . -type f) | while read -r f; do
      f=''${f#./}
      mkdir -p "/etc/$(dirname "$f")"
      ln -sfn "/etc/static/$f" "/etc/$f"
    done
    ln -sfn ${pkgs.runtimeShell} /bin/sh
    ln -sfn "$systemConfig" /run/booted-system
    ln -sfn "$systemConfig" /run/current-system
    # Debian's nix in a store that is not /nix/store
    export NIX_STORE_DIR=${storeDir} NIX_STATE_DIR=/nix/var/nix NIX_CONF_DIR=/etc/nix HOME=/root

    # boot.postBootCommands
    (
      ${config.boot.postBootCommands}
    )
    say "POSTBOOT $?"
    say "NIX-VALID $(${config.nix.package}/bin/nix-store -qR "$systemConfig" 2>&1 | grep -c ^/)"

    # systemd's machine-id setup (machine-id(5)), before any unit
    if mid=$(arg systemd.machine_id); then
      printf '%s\n' "$mid" > /run/machine-id
    else
      tr -d - < /proc/sys/kernel/random/uuid > /run/machine-id
    fi
    [ -s /etc/machine-id ] || { : > /etc/machine-id; mount --bind /run/machine-id /etc/machine-id; mount -o remount,bind,ro /etc/machine-id; }
    say "MACHINE-ID $(cat /etc/machine-id)"

    # the NIC drivers (udev on NixOS)
    if [ -f "$systemConfig/kernel-modules/load-order" ]; then
      while read -r m; do
        [ -n "$m" ] && insmod "$systemConfig/kernel-modules/$m.ko" 2>/dev/null
      done < "$systemConfig/kernel-modules/load-order"
    fi
    ip link set lo up

    failed=" "
    start() {  # start UNIT: run its rendered unit file's commands
      local f=/etc/systemd/system/$1 type=simple umask_=0022 start= line v
      local -a env=() pre=()
      while IFS= read -r line; do
        case "$line" in
          Environment=*) v=''${line#Environment=}; v=''${v#\"}; env+=("''${v%\"}") ;;
          ExecStartPre=*) pre+=("''${line#ExecStartPre=}") ;;
          ExecStart=*) start=''${line#ExecStart=} ;;
          Type=*) type=''${line#Type=} ;;
          UMask=*) umask_=''${line#UMask=} ;;
        esac
      done < "$f"
      (
        umask "$umask_"
        for c in "''${pre[@]}"; do env -i "''${env[@]}" $c || exit $?; done
        case "$type" in
          simple|exec) env -i "''${env[@]}" $start & ;;
          *) env -i "''${env[@]}" $start ;;
        esac
      )
    }
    for unit in $(cat ${serviceOrder}); do
      for f in $failed; do
        if [ -e "/etc/systemd/system/$unit.requires/$f" ]; then
          say "UNIT $unit skipped (requires $f, which failed)"
          continue 2
        fi
      done
      if start "$unit"; then
        say "UNIT $unit ok"
        [ "$unit" = netbootd-booted.service ] && say "BOOTED-EVENT-SENT"
      else
        rc=$?
        say "UNIT $unit failed $rc"
        failed="$failed$unit "
      fi
    done
    say "SERVICES-DONE"
    case "$(arg netbootd.action)" in
      hold) while :; do sleep 3600; done ;;
      *) poweroff -f ;;
    esac
  '';
in
{
  system.build = {
    inherit etc kernel bootStage2;
    toplevel =
      if failedAssertions != [ ] then
        throw "\nFailed assertions:\n${lib.concatMapStringsSep "\n" (x: "- ${x}") failedAssertions}"
      else
        lib.showWarnings config.warnings (pkgs.runCommand "nixos-system-${config.networking.hostName}" { } ''
          mkdir -p $out
          sed "s|@systemConfig@|$out|" ${bootStage2} > $out/init
          chmod 555 $out/init
          ln -s ${kernel}/${kernelFile} $out/kernel
          ln -s ${kernel}/lib/modules $out/kernel-modules
          ln -s ${config.system.build.initialRamdisk}/initrd $out/initrd
          ln -s ${etc}/etc $out/etc
          printf '%s' ${lib.escapeShellArg (toString config.boot.kernelParams)} > $out/kernel-params
        '');
  };
}
