# services.netbootd-client: for NixOS hosts that network-boot from netbootd.
#
# netbootd's iPXE script puts these on the kernel command line (see the README):
#   netbootd.events=URL     POST {"event": "...", "token": "<netbootd.boot>"} here
#   netbootd.boot=TOKEN     this boot's token: sent with every event (netbootd records the boot's
#                           id with it); `provisioned` is only accepted with it
#   netbootd.identity=URL   a single-use HTTPS URL of the host's identity bundle (tar.gz)
#   netbootd.pin=sha256//…  the server key's pin, for curl --pinnedpubkey
#   systemd.machine_id=ID   with the identity: the host's machine-id, which systemd itself sets
#                           before any unit runs (not a secret; machine-id(5))
#   netbootd.provision_disks=1  the one-shot re-provision flag (`netbootd reprovision <host>`; a
#                           role may name its own, `netbootd role set <role> --provision-flag`):
#                           run the disk layout on this boot, then report `provisioned`
#
#   imports = [ netbootd.nixosModules.client ];
#   services.netbootd-client = {
#     enable = true;
#     provision.script = "${disko-script}";   # or any script: runs when the flag is on
#     composedStore = true;                    # the role is built with --mode compose
#   };
{ config, lib, pkgs, ... }:

let
  inherit (lib) mkEnableOption mkIf mkMerge mkOption types;
  cfg = config.services.netbootd-client;
  storeDir = builtins.storeDir;  # /nix/store (the tests' private stores are elsewhere)

  # netbootd_arg NAME: the value of NAME=... on the kernel command line
  helpers = ''
    netbootd_arg() {
      for x in $(cat /proc/cmdline); do
        case "$x" in "$1="*) echo "''${x#"$1="}"; return 0 ;; esac
      done
      return 1
    }
    netbootd_event() {  # netbootd_event NAME [JSON fields, e.g. ,"ed25519":"SHA256:..."]
      url=$(netbootd_arg netbootd.events) || { echo "no netbootd.events= on the command line"; return 0; }
      token=$(netbootd_arg netbootd.boot) && token=",\"token\":\"$token\"" || token=""
      ${pkgs.curl}/bin/curl -fsS --retry 5 --retry-connrefused --max-time 20 \
        -H 'Content-Type: application/json' -d "{\"event\":\"$1\"$token''${2:-}}" "$url"
    }
    netbootd_flag() {  # netbootd_flag WORD: is exactly WORD on the kernel command line?
      for x in $(cat /proc/cmdline); do [ "$x" = "$1" ] && return 0; done
      return 1
    }
  '';
in
{
  options.services.netbootd-client = {
    enable = mkEnableOption "reporting to netbootd and taking the host identity it hands out";

    reportBooted = mkOption {
      type = types.bool;
      default = true;
      description = "POST the `booted` event once the network is up (netbootd hosts: last_boot).";
    };

    identity.enable = mkOption {
      type = types.bool;
      default = true;
      description = ''
        Before sshd starts (sshd.service, sshd.socket, sshd-keygen.service; sshd requires it):
        fetch the identity bundle from `netbootd.identity=` (HTTPS, server key pinned by
        `netbootd.pin=`), install the SSH host keys, /etc/hostid and the WireGuard key, and
        report `identity-installed`. The machine-id comes with the same boot's kernel command
        line (`systemd.machine_id=`, which systemd applies before any unit); the unit only
        compares it, since /etc/machine-id is a read-only mount on a first boot. Without
        `netbootd.identity=` (identity not armed) nothing happens and the keys already on the
        host stay.
      '';
    };

    provision = {
      script = mkOption {
        type = types.nullOr types.path;
        default = null;
        example = lib.literalExpression ''"''${config.system.build.diskoScript}"'';
        description = ''
          The disk layout (a disko script, or any executable). Runs only when the kernel command
          line carries `provision.flag` (netbootd puts it there after `netbootd reprovision`),
          before local file systems are mounted (before local-fs-pre.target, after udev settled;
          no network then). Once the network is up, netbootd-provision-report posts
          `provision-started`, then `provisioned` (with this boot's token: that clears the flag
          on the server) or `provision-failed`; the flag stays until a boot reports
          `provisioned`, at most `provision.max_boots` boots on the server's side (a boot that
          never reaches the network counts too).
        '';
      };
      flag = mkOption {
        type = types.str;
        default = "netbootd.provision_disks=1";
        example = "homelab.provision_disks=true";
        description = ''
          The kernel parameter that asks for the disk layout: netbootd's default, or the role's
          own (`netbootd role set <role> --provision-flag ...`); the two must match.
        '';
      };
    };

    inventory = {
      enable = mkOption {
        type = types.bool;
        default = false;
        description = ''
          At every boot, once the network is up and udev has settled, report this machine's
          hardware inventory to netbootd (netbootd's agent, netbootd/inventory/agent.py:
          pyudev + sysfs, the netbootd-inventory/1 document) with this boot's token, to the
          server `netbootd.events=` names (`POST /api/v1/discovery`). netbootd keeps it in the
          host's inventory history (`netbootd hosts show`, `hosts hardware --nix`) with what
          changed. The boot goes on whatever the answer.
        '';
      };
      python = mkOption {
        type = types.package;
        default = pkgs.python3.withPackages (ps: [ ps.pyudev ]);
        defaultText = lib.literalExpression "pkgs.python3.withPackages (ps: [ ps.pyudev ])";
        description = "The Python the agent runs with (the standard library + pyudev).";
      };
      tpm2Tools = mkOption {
        type = types.nullOr types.package;
        default = pkgs.tpm2-tools;
        defaultText = lib.literalExpression "pkgs.tpm2-tools";
        description = ''
          tpm2-tools on the agent's PATH: a TPM 2.0's endorsement key is reported
          (`tpm.ek_public`, `tpm.ek_sha256`). null: the EK is not read (reported as null).
        '';
      };
    };

    composedStore = mkOption {
      type = types.bool;
      default = false;
      description = ''
        The role is built with `netbootd role build --mode compose`: the initrd is NixOS's stage 1
        followed by one archive per store path of the system's closure, which the kernel unpacks
        into the initramfs's store. With this on: the root file system is a tmpfs (unless
        `fileSystems."/"` says otherwise), GRUB is off, stage 1 moves the store paths listed in
        the composed `nix-path-registration` into the root -- one path at a time, so the memory
        peak is the store plus its largest path; a path stage 1 itself runs from (one its /init
        names) is copied, and stage 1's own paths are never touched -- and stage 2 registers
        them (`nix-store --load-db`) and sets the system profile, as netboot.nix does.
        Scripted stage 1 only (`boot.initrd.systemd.enable = false`; asserted).
      '';
    };
  };

  config = mkIf cfg.enable (mkMerge [
    (mkIf cfg.reportBooted {
      systemd.services.netbootd-booted = {
        description = "Tell netbootd this host booted";
        wantedBy = [ "multi-user.target" ];
        wants = [ "network-online.target" ];
        after = [ "network-online.target" ];
        serviceConfig.Type = "oneshot";
        script = helpers + ''
          netbootd_event booted
        '';
      };
    })

    (mkIf cfg.inventory.enable {
      systemd.services.netbootd-inventory = {
        description = "Report this machine's hardware inventory to netbootd";
        wantedBy = [ "multi-user.target" ];
        wants = [ "network-online.target" "systemd-udev-settle.service" ];
        after = [ "network-online.target" "systemd-udev-settle.service" ];
        serviceConfig.Type = "oneshot";
        path = lib.optional (cfg.inventory.tpm2Tools != null) cfg.inventory.tpm2Tools;
        # the agent is one file of the standard library + pyudev: no netbootd package here
        script = ''
          ${cfg.inventory.python}/bin/python3 ${../netbootd/inventory/agent.py} --from-cmdline \
            || echo "inventory not reported (exit $?)" >&2
        '';
      };
    })

    (mkIf cfg.identity.enable {
      systemd.services.netbootd-identity = {
        description = "Install the host identity from netbootd";
        wantedBy = [ "multi-user.target" ];
        # sshd never starts with keys that are not the host's while its identity is armed: the
        # unit succeeds when nothing is armed, and fails when the armed identity cannot be had.
        # sshd.socket/sshd@ (startWhenNeeded) and sshd-keygen (which makes missing keys) too.
        requiredBy = lib.optionals config.services.openssh.enable [ "sshd.service" "sshd.socket" ];
        before = [ "sshd.service" "sshd.socket" "sshd-keygen.service" ];
        wants = [ "network-online.target" ];
        after = [ "network-online.target" ];
        serviceConfig = { Type = "oneshot"; RemainAfterExit = true; UMask = "0077"; };
        path = [ pkgs.coreutils pkgs.gnutar pkgs.gzip pkgs.openssh ];
        script = helpers + ''
          url=$(netbootd_arg netbootd.identity) || { echo "identity not armed: keeping the keys here"; exit 0; }
          pin=$(netbootd_arg netbootd.pin)
          dir=$(mktemp -d)
          trap 'rm -rf "$dir"' EXIT
          # -k: netbootd's own CA signs the certificate; the SPKI pin is what authenticates it
          ${pkgs.curl}/bin/curl -fsS -k --pinnedpubkey "$pin" --retry 3 --max-time 30 \
            -o "$dir/identity.tar.gz" "$url"
          tar -C "$dir" -xzf "$dir/identity.tar.gz"
          install -d -m 0755 /etc/ssh
          for k in ed25519 rsa; do
            install -m 0600 "$dir/etc/ssh/ssh_host_''${k}_key" /etc/ssh/
            install -m 0644 "$dir/etc/ssh/ssh_host_''${k}_key.pub" /etc/ssh/
          done
          # The machine-id is not written here: systemd set it before any unit ran, from
          # systemd.machine_id= on the kernel command line (netbootd's script carries it with the
          # identity); on a first boot /etc/machine-id is a read-only mount of /run/machine-id.
          want=$(cat "$dir/etc/machine-id")
          if [ "$(cat /etc/machine-id 2>/dev/null)" != "$want" ]; then
            echo "warning: /etc/machine-id is not the identity's $want (no systemd.machine_id= on the command line?)" >&2
          fi
          install -m 0644 "$dir/etc/hostid" /etc/hostid
          install -d -m 0700 /etc/wireguard
          install -m 0600 "$dir/etc/wireguard/private.key" /etc/wireguard/private.key
          install -m 0644 "$dir/etc/wireguard/public.key" /etc/wireguard/public.key
          fp=$(ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub | cut -d' ' -f2)
          netbootd_event identity-installed ",\"ed25519\":\"$fp\""
        '';
      };
    })

    (mkIf (cfg.provision.script != null) {
      # Two units, so that nothing is ordered both after the network and before the local file
      # systems (the network comes after sysinit.target, which is after local-fs.target): the
      # disk layout runs early, without network, and writes its outcome to /run; the report
      # goes out once the network is up.
      systemd.services.netbootd-provision = {
        description = "Disk layout requested by netbootd (${cfg.provision.flag})";
        wantedBy = [ "local-fs.target" ];
        wants = [ "local-fs-pre.target" "systemd-udev-settle.service" ];
        before = [ "local-fs-pre.target" "shutdown.target" ];
        after = [ "systemd-udev-settle.service" ];
        conflicts = [ "shutdown.target" ];
        unitConfig.DefaultDependencies = false;
        serviceConfig = { Type = "oneshot"; RemainAfterExit = true; };
        script = helpers + ''
          netbootd_flag ${lib.escapeShellArg cfg.provision.flag} || { echo "no re-provision flag"; exit 0; }
          mkdir -p /run/netbootd
          echo started > /run/netbootd/provision
          if ${cfg.provision.script}; then
            echo provisioned > /run/netbootd/provision
          else
            rc=$?
            echo "failed $rc" > /run/netbootd/provision
            exit $rc
          fi
        '';
      };
      systemd.services.netbootd-provision-report = {
        description = "Report the outcome of the disk layout to netbootd";
        wantedBy = [ "multi-user.target" ];
        wants = [ "network-online.target" ];
        after = [ "network-online.target" "netbootd-provision.service" ];
        serviceConfig.Type = "oneshot";
        script = helpers + ''
          state=$(cat /run/netbootd/provision 2>/dev/null) || { echo "no disk layout on this boot"; exit 0; }
          netbootd_event provision-started || true
          case "$state" in
            provisioned) netbootd_event provisioned ;;
            "failed "*) netbootd_event provision-failed ",\"exit\":''${state#failed }" ;;
            *) netbootd_event provision-failed ",\"reason\":\"the disk layout did not finish\"" ;;
          esac
        '';
      };
    })

    (mkIf cfg.composedStore {
      assertions = [{
        assertion = !config.boot.initrd.systemd.enable;
        message = "services.netbootd-client.composedStore moves the composed store into the root "
          + "file system in scripted stage 1 (boot.initrd.postMountCommands), which systemd stage 1 "
          + "does not run: set boot.initrd.systemd.enable = false in this configuration.";
      }];
      fileSystems."/" = lib.mkDefault { device = "none"; fsType = "tmpfs"; options = [ "mode=0755" ]; };
      boot.loader.grub.enable = lib.mkDefault false;
      boot.initrd.postMountCommands = mkIf (!config.boot.initrd.systemd.enable) ''
        # netbootd compose mode (services.netbootd-client.composedStore): the kernel unpacked
        # one archive per store path of the system into this initramfs's store; move the paths
        # the composed nix-path-registration lists into the root file system, one at a time.
        # A path stage 1 itself runs from (named in /init) is copied, never moved.
        netbootd_reg=${storeDir}/nix-path-registration
        if [ -f "$netbootd_reg" ]; then
          netbootd_keep=" $(grep -o '${storeDir}/[0-9a-z]\{32\}-[0-9A-Za-z+._?=-]*' "$(readlink -f /init)" | sort -u | tr '\n' ' ') "
          mkdir -m 0755 -p "$targetRoot${storeDir}"
          for p in $(awk '
              state == 0 { print; state = 1; next }
              state < 4 { state++; next }
              state == 4 { refs = $1 + 0; state = refs > 0 ? 5 : 0; next }
              { if (--refs == 0) state = 0 }' "$netbootd_reg"); do
            [ -e "$p" ] && [ ! -e "$targetRoot$p" ] || continue
            case "$netbootd_keep" in
              *" $p "*) cp -a "$p" "$targetRoot${storeDir}/" ;;
              *) mv "$p" "$targetRoot${storeDir}/" ;;
            esac
          done
          mv "$netbootd_reg" "$targetRoot${storeDir}/"
        fi
      '';
      boot.postBootCommands = ''
        # netbootd compose mode: register the store paths stage 1 brought, and the system
        # profile nixos-rebuild needs (as netboot.nix does for its squashfs)
        if [ -f ${storeDir}/nix-path-registration ]; then
          ${config.nix.package.out}/bin/nix-store --load-db < ${storeDir}/nix-path-registration
          rm -f ${storeDir}/nix-path-registration
        fi
        touch /etc/NIXOS
        ${config.nix.package.out}/bin/nix-env -p /nix/var/nix/profiles/system --set /run/current-system
      '';
    })
  ]);
}
