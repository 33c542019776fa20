# NixOS's options that netbootd's modules (and this test system) set or read, with NixOS's
# names, types and defaults, and the NixOS assertions about them that catch the mistakes #12
# found (a configuration without netboot.nix trips grub's "devices" assertion; a system
# user needs a group). Each block names the nixpkgs file it follows.
{ config, lib, pkgs, ... }:

let
  inherit (lib) mkOption types;
  # NixOS allocates ids with update-users-groups.pl; here: in name order from 400
  ids = set: lib.listToAttrs (lib.imap0 (i: x: lib.nameValuePair x.name
    (if (x.uid or x.gid) != null then (x.uid or x.gid) else 400 + i)) (lib.attrValues set));
  uids = ids config.users.users;
  gids = ids config.users.groups;
in
{
  options = {
    # nixos/modules/misc/assertions.nix
    assertions = mkOption {
      type = types.listOf types.unspecified;
      internal = true;
      default = [ ];
    };
    warnings = mkOption {
      type = types.listOf types.str;
      internal = true;
      default = [ ];
    };

    # nixos/modules/system/activation/top-level.nix
    system.build = mkOption {
      default = { };
      type = types.submoduleWith {
        modules = [{ freeformType = with types; lazyAttrsOf (uniq unspecified); }];
      };
    };
    system.stateVersion = mkOption { type = types.str; default = "25.11"; };

    # nixos/modules/system/boot/kernel.nix
    system.boot.loader.kernelFile = mkOption {
      type = types.str;
      default = pkgs.stdenv.hostPlatform.linux-kernel.target;
    };
    boot.kernelParams = mkOption {
      type = types.listOf (types.strMatching ''([^"[:space:]]|"[^"]*")+'');
      default = [ ];
    };
    # (this test system only) the kernel a VM boots: Debian's, with the NIC modules stage 2 loads
    fake.kernel = {
      image = mkOption {
        type = types.path;
        default = pkgs.runCommand "fake-vmlinuz" { } "yes kernel | head -c 65536 > $out";
      };
      modules = mkOption {
        type = types.nullOr types.path;
        default = null;
        description = "A directory of .ko files and their `load-order` (one module a line).";
      };
    };

    # nixos/modules/system/boot/loader/grub/grub.nix (enabled by default on NixOS)
    boot.loader.grub = {
      enable = mkOption { type = types.bool; default = true; };
      devices = mkOption { type = types.listOf types.str; default = [ ]; };
    };

    # nixos/modules/tasks/filesystems.nix
    fileSystems = mkOption {
      default = { };
      type = types.attrsOf (types.submodule ({ name, config, ... }: {
        options = {
          mountPoint = mkOption { type = types.str; default = name; };
          device = mkOption { type = types.nullOr types.str; default = null; };
          fsType = mkOption { type = types.str; default = "auto"; };
          options = mkOption { type = types.listOf types.nonEmptyStr; default = [ "defaults" ]; };
          neededForBoot = mkOption { type = types.bool; default = false; };
        };
        config.device = lib.mkIf (config.fsType == "tmpfs") (lib.mkDefault config.fsType);
      }));
    };

    # nixos/modules/config/users-groups.nix
    users.users = mkOption {
      default = { };
      type = types.attrsOf (types.submodule ({ name, ... }: {
        options = {
          name = mkOption { type = types.str; default = name; };
          uid = mkOption { type = types.nullOr types.int; default = null; };
          group = mkOption { type = types.str; default = ""; };
          isSystemUser = mkOption { type = types.bool; default = false; };
          isNormalUser = mkOption { type = types.bool; default = false; };
          description = mkOption { type = types.str; default = ""; };
          home = mkOption { type = types.path; default = "/var/empty"; };
          createHome = mkOption { type = types.bool; default = false; };
        };
      }));
    };
    users.groups = mkOption {
      default = { };
      type = types.attrsOf (types.submodule ({ name, ... }: {
        options = {
          name = mkOption { type = types.str; default = name; };
          gid = mkOption { type = types.nullOr types.int; default = null; };
        };
      }));
    };

    # nixos/modules/system/etc/etc.nix, nixos/modules/config/system-path.nix
    environment.etc = mkOption {
      default = { };
      type = types.attrsOf (types.submodule ({ name, config, ... }: {
        options = {
          target = mkOption { type = types.str; default = name; };
          text = mkOption { type = types.nullOr types.lines; default = null; };
          source = mkOption { type = types.path; };
          mode = mkOption { type = types.str; default = "symlink"; };
        };
        config.source = lib.mkIf (config.text != null) (lib.mkDefault
          (pkgs.writeText "etc-${lib.replaceStrings [ "/" ] [ "-" ] name}" config.text));
      }));
    };
    environment.systemPackages = mkOption { type = types.listOf types.package; default = [ ]; };

    # nixos/modules/tasks/network-interfaces.nix, services/networking/firewall.nix
    networking.hostName = mkOption { type = types.str; default = "nixos"; };
    networking.useDHCP = mkOption { type = types.bool; default = true; };
    networking.firewall = {
      enable = mkOption { type = types.bool; default = true; };
      allowedTCPPorts = mkOption { type = types.listOf types.port; default = [ ]; };
      allowedUDPPorts = mkOption { type = types.listOf types.port; default = [ ]; };
    };

    # nixos/modules/config/nix.nix
    nix.package = mkOption { type = types.package; default = pkgs.nix; };

    # nixos/modules/system/boot/stage-2.nix
    boot.postBootCommands = mkOption { type = types.lines; default = ""; };
  };

  config = {
    # nixos/modules/config/users-groups.nix's checks (the two that apply here)
    assertions = lib.flatten (lib.mapAttrsToList (name: u: [
      {
        assertion = u.isSystemUser || u.isNormalUser || u.uid != null;
        message = "Exactly one of users.users.${name}.isSystemUser and users.users.${name}.isNormalUser must be set.";
      }
      {
        assertion = u.group != "" && config.users.groups ? ${u.group};
        message = "users.users.${name}.group is unset or not in users.groups.";
      }
    ]) (removeAttrs config.users.users [ "root" ]))
    # nixos/modules/tasks/filesystems.nix
    ++ [{
      assertion = config.fileSystems ? "/";
      message = "The ‘fileSystems’ option does not specify your root file system.";
    }]
    # nixos/modules/system/boot/loader/grub/grub.nix
    ++ [{
      assertion = !config.boot.loader.grub.enable || config.boot.loader.grub.devices != [ ];
      message = "You must set the option ‘boot.loader.grub.devices’ or 'boot.loader.grub.mirroredBoots' to make the system bootable.";
    }];

    users.users.root = { uid = 0; group = "root"; home = "/root"; };
    users.groups.root.gid = 0;
    users.groups.nogroup = { };

    environment.etc = {
      passwd.text = lib.concatMapStrings (u:
        "${u.name}:x:${toString uids.${u.name}}:${toString (gids.${u.group} or 65534)}:"
        + "${u.description}:${u.home}:/bin/sh\n") (lib.attrValues config.users.users);
      group.text = lib.concatMapStrings (g: "${g.name}:x:${toString gids.${g.name}}:\n")
        (lib.attrValues config.users.groups);
      hostname.text = config.networking.hostName + "\n";
      # nixos/modules/tasks/filesystems.nix (what systemd-fstab-generator reads)
      fstab.text = lib.concatMapStrings (fs:
        "${if fs.device == null then "none" else fs.device} ${fs.mountPoint} ${fs.fsType} "
        + "${lib.concatStringsSep "," fs.options} 0 ${if fs.fsType == "tmpfs" then "0" else "2"}\n")
        (lib.attrValues config.fileSystems);
      # the private test store is not /nix/store: Debian's nix is told where it is
      "nix/nix.conf".text = ''
        build-users-group =
        sandbox = false
        substituters =
      '';
    };
  };
}
