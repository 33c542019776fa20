# The two NixOS services netbootd's client units are ordered against, with the unit
# dependencies and ordering of nixpkgs' modules, and programs this machine has:
#
# - networking.useDHCP: nixos/modules/services/networking/dhcpcd.nix's `dhcpcd.service`
#   (wanted by multi-user.target and network-online.target, before network-online.target, with
#   default dependencies: after sysinit.target, i.e. after local-fs.target). NixOS runs dhcpcd
#   (Type=forking); here busybox's udhcpc takes one lease (what the test image's /init does).
# - services.openssh: nixos/modules/services/networking/ssh/sshd.nix's `sshd.service` (after
#   network.target; preStart makes the host keys that are missing, then `sshd -D -f
#   /etc/ssh/sshd_config`). The daemon is Debian's openssh-server, without PAM (NixOS: UsePAM yes),
#   and it needs its privilege separation directory /run/sshd.
{ config, lib, pkgs, ... }:

let
  inherit (lib) mkIf mkOption types;
  cfg = config.services.openssh;
in
{
  options.services.openssh = {
    enable = mkOption { type = types.bool; default = false; };
    ports = mkOption { type = types.listOf types.port; default = [ 22 ]; };
    hostKeys = mkOption {
      type = types.listOf types.attrs;
      default = [
        { type = "rsa"; bits = 4096; path = "/etc/ssh/ssh_host_rsa_key"; }
        { type = "ed25519"; path = "/etc/ssh/ssh_host_ed25519_key"; }
      ];
    };
  };

  config = lib.mkMerge [
    (mkIf config.networking.useDHCP {
      systemd.services.dhcpcd = {
        description = "DHCP Client";
        wantedBy = [ "multi-user.target" "network-online.target" ];
        wants = [ "network.target" ];
        before = [ "network-online.target" ];
        path = [ pkgs.busybox ];
        serviceConfig = {
          Type = "oneshot";
          RemainAfterExit = true;
          ExecStart = "${pkgs.busybox}/bin/udhcpc -i eth0 -s "
            + "${../../../../images/test-initramfs/rootfs/usr/share/udhcpc/default.script}"
            + " -n -q -t 10 -T 2 -f";
        };
      };
    })

    (mkIf cfg.enable {
      users.users.sshd = { isSystemUser = true; group = "sshd"; description = "SSH privilege separation user"; };
      users.groups.sshd = { };
      environment.etc."ssh/sshd_config".text = ''
        UsePAM no
        ${lib.concatMapStrings (p: "Port ${toString p}\n") cfg.ports}
        ${lib.concatMapStrings (k: "HostKey ${k.path}\n") cfg.hostKeys}
        PidFile /run/sshd.pid
        PermitRootLogin prohibit-password
        PasswordAuthentication no
      '';
      systemd.services.sshd = {
        description = "SSH Daemon";
        wantedBy = [ "multi-user.target" ];
        after = [ "network.target" ];
        stopIfChanged = false;
        path = [ pkgs.openssh ];
        preStart = ''
          exec >&2
          mkdir -m 0755 -p /etc/ssh /run/sshd
          ${lib.concatMapStrings (k: ''
            if ! [ -f "${k.path}" ]; then
              ssh-keygen -t "${k.type}" ${lib.optionalString (k ? bits) "-b ${toString k.bits}"} -f "${k.path}" -N ""
            fi
          '') cfg.hostKeys}
        '';
        serviceConfig = {
          ExecStart = "${pkgs.openssh}/bin/sshd -D -e -f /etc/ssh/sshd_config";
          KillMode = "process";
          Restart = "always";
          Type = "simple";
        };
      };
    })
  ];
}
