# services.netbootd-client: for NixOS hosts that network-boot from netbootd.
#
# netbootd's iPXE script puts these on the kernel command line (see the README):
#   netbootd.events=URL     POST {"event": "...", "token": "<netbootd.boot>"} here
#   netbootd.boot=TOKEN     this boot's token: sent with every event (netbootd records the boot's
#                           id with it); `provisioned` is only accepted with it
#   netbootd.identity=URL   a single-use HTTPS URL of the host's identity bundle (tar.gz)
#   netbootd.pin=sha256//…  the server key's pin, for curl --pinnedpubkey
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
        Before sshd starts: fetch the identity bundle from `netbootd.identity=` (HTTPS, server key
        pinned by `netbootd.pin=`), install the SSH host keys, /etc/machine-id, /etc/hostid and
        the WireGuard key, and report `identity-installed`. Without the parameter (identity not
        armed) nothing happens and the keys already on the host stay.
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
          before local file systems are mounted. The host reports `provision-started`, then
          `provisioned` (with this boot's token: that clears the flag on the server) or
          `provision-failed`; the flag stays until a boot reports `provisioned`, at most
          `provision.max_boots` boots on the server's side.
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

    composedStore = mkOption {
      type = types.bool;
      default = false;
      description = ''
        The role is built with `netbootd role build --mode compose`: the initrd is NixOS's stage 1
        followed by one archive per store path of the system's closure. Stage 1 mounts a tmpfs
        root and moves the store from the initramfs into it (path by path, so the peak memory is
        the store plus its largest path), and stage 2 registers it from
        /nix/store/nix-path-registration.
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

    (mkIf cfg.identity.enable {
      systemd.services.netbootd-identity = {
        description = "Install the host identity from netbootd";
        wantedBy = [ "multi-user.target" ];
        before = [ "sshd.service" ];
        requiredBy = lib.optional config.services.openssh.enable "sshd.service";
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
          install -m 0644 "$dir/etc/machine-id" /etc/machine-id
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
      systemd.services.netbootd-provision = {
        description = "Disk layout requested by netbootd (${cfg.provision.flag})";
        wantedBy = [ "multi-user.target" ];
        before = [ "local-fs-pre.target" ];
        wants = [ "network-online.target" ];
        after = [ "network-online.target" ];
        unitConfig.DefaultDependencies = false;
        serviceConfig = { Type = "oneshot"; RemainAfterExit = true; };
        script = helpers + ''
          netbootd_flag ${lib.escapeShellArg cfg.provision.flag} || { echo "no re-provision flag"; exit 0; }
          netbootd_event provision-started || true
          if ${cfg.provision.script}; then
            netbootd_event provisioned
          else
            rc=$?
            netbootd_event provision-failed ",\"exit\":$rc" || true
            exit $rc
          fi
        '';
      };
    })

    (mkIf cfg.composedStore {
      fileSystems."/" = lib.mkDefault { device = "none"; fsType = "tmpfs"; options = [ "mode=0755" ]; };
      boot.initrd.postMountCommands = ''
        # netbootd compose mode: the closure arrived as archives in the initramfs under /nix/store;
        # move it into the real root, one store path at a time.
        mkdir -p "$targetRoot/nix/store"
        for p in /nix/store/*; do
          [ -e "$targetRoot$p" ] || mv "$p" "$targetRoot/nix/store/"
        done
      '';
      boot.postBootCommands = ''
        if [ -f /nix/store/nix-path-registration ]; then
          ${config.nix.package.out}/bin/nix-store --load-db < /nix/store/nix-path-registration
          rm -f /nix/store/nix-path-registration
        fi
      '';
    })
  ]);
}
