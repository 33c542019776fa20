# services.netbootd: the netbootd server on NixOS.
#
#   services.netbootd = {
#     enable = true;
#     openFirewall = true;
#     settings = { interface = "eth0"; http.port = 80; };   # rendered to netbootd.toml
#     roles.web = { configuration = self.nixosConfigurations.web; mode = "compose"; };
#   };
#
# `netbootd serve` runs as the system user `netbootd` with CAP_NET_BIND_SERVICE and CAP_NET_RAW
# only. Each role's kernel, initrd(s) and toplevel are built with the server's system (they are in
# its closure, through one generated file per role); at boot, and when that file changes,
# `netbootd-roles.service` imports them (`netbootd role build <role> --file <role file> --attr
# role --if-changed`: nothing is built, and a role whose newest generation is that build with
# those settings is left alone). Enrolling hosts stays an operator action: the `netbootd` command
# this module installs runs as the service user when root calls it.
{ config, lib, pkgs, ... }:

let
  inherit (lib) mkEnableOption mkIf mkOption types literalExpression;
  cfg = config.services.netbootd;
  toml = pkgs.formats.toml { };
  configFile = toml.generate "netbootd.toml" cfg.settings;
  user = "netbootd";
  exe = "${cfg.package}/bin/netbootd";
  cli = "${exe} --config ${configFile}";

  # netbootd.model's role_name and cmdline rules (tests/unit/test_nixos_eval.py compares them)
  roleNameRegex = "[a-z0-9][a-z0-9_.-]{0,62}";
  cmdlineRegex = "[][A-Za-z0-9 ._,:=/+@%~^{}()*!?<>-]*";

  initrdAttr = mode: if mode == "compose" then "initialRamdisk" else "netbootRamdisk";

  # What `netbootd role build --file <file> --attr role` reads: the built paths as
  # { outPath = "..."; } (no drvPath: nothing left to build), the kernel file name and the kernel
  # parameters, written as Nix. The strings keep their context, so the file -- and through it
  # the server's closure -- refers to every path of the role.
  str = s: lib.strings.escapeNixString "${s}";
  roleFile = name: role:
    let
      c = role.configuration.config;
      b = c.system.build;
      initrd = initrdAttr role.mode;
    in
    pkgs.writeText "netbootd-role-${name}.nix" ''
      # netbootd role ${name} (${role.mode}): a NixOS configuration built with this system
      {
        role.config = {
          system.build.kernel.outPath = ${str b.kernel};
          system.build.${initrd}.outPath = ${str b.${initrd}};
          system.build.toplevel.outPath = ${str b.toplevel};
          system.boot.loader.kernelFile = ${str c.system.boot.loader.kernelFile};
          boot.kernelParams = [ ${lib.concatMapStringsSep " " str c.boot.kernelParams} ];
        };
      }
    '';

  importRole = name: role: lib.escapeShellArgs ([
    exe "--config" "${configFile}" "role" "build" name
    "--file" "${roleFile name role}" "--attr" "role"
    "--mode" role.mode "--keep" (toString cfg.keepGenerations) "--if-changed"
  ] ++ lib.optionals (role.cmdline != "") [ "--cmdline" role.cmdline ]);

  # The operator's `netbootd`: as root, it runs as the service user, so what the CLI writes
  # (the database, identities, artifacts) stays the service's.
  wrapper = pkgs.writeShellScriptBin "netbootd" ''
    if [ "$(${pkgs.coreutils}/bin/id -u)" = 0 ]; then
      exec ${pkgs.util-linux}/bin/setpriv --reuid=${user} --regid=${user} --init-groups \
        -- ${exe} "$@"
    fi
    exec ${exe} "$@"
  '';

  httpPort = cfg.settings.http.port or 80;
  httpsPort = cfg.settings.https.port or 443;

  # in line with nixpkgs' pixiecore and nix-netboot-serve modules, plus systemd's sandboxing
  # (`systemd-analyze security netbootd.service`: tests/unit/test_nixos_units.py)
  hardening = {
    User = user;
    Group = user;
    NoNewPrivileges = true;
    UMask = "0077";
    ProtectSystem = "strict";
    ReadWritePaths = [ cfg.stateDir ];
    ProtectHome = true;
    PrivateTmp = true;
    PrivateDevices = true;
    DevicePolicy = "closed";
    ProtectKernelTunables = true;
    ProtectKernelModules = true;
    ProtectKernelLogs = true;
    ProtectControlGroups = true;
    ProtectClock = true;
    ProtectHostname = true;
    ProtectProc = "invisible";
    RestrictNamespaces = true;
    RestrictRealtime = true;
    RestrictSUIDSGID = true;
    LockPersonality = true;
    RemoveIPC = true;
    SystemCallArchitectures = "native";
    SystemCallFilter = [ "@system-service" "~@privileged" ];
    SystemCallErrorNumber = "EPERM";  # a filtered call fails, it does not kill the service
    # (no MemoryDenyWriteExecute: libffi closures, which ctypes and cffi use, need it off)
  };
in
{
  options.services.netbootd = {
    enable = mkEnableOption "netbootd, the network-boot server (proxyDHCP, TFTP, HTTP/HTTPS)";

    package = mkOption {
      type = types.package;
      default = pkgs.callPackage ./package.nix { };
      defaultText = literalExpression "pkgs.callPackage <netbootd>/nixos/package.nix { }";
      description = "The netbootd package (the flake's `packages.<system>.netbootd`).";
    };

    stateDir = mkOption {
      type = types.str;
      default = "/var/lib/netbootd";
      description = ''
        Database, artifacts, compose cache, GC roots of the roles' builds, host identities and
        the CA; owned by the `netbootd` user (created at boot if missing).
      '';
    };

    settings = mkOption {
      type = toml.type;
      default = { };
      example = literalExpression ''{ interface = "eth0"; http.port = 80; }'';
      description = ''
        netbootd's configuration, rendered to TOML (see the README's "Configuration"; every key
        of netbootd.toml). `state_dir` defaults to `stateDir`, `tftp.root` to nixpkgs' iPXE
        (whose ipxe.efi and undionly.kpxe are netbootd's default boot files), and
        `iscsi.reconcile_interval` to 0 (tgtd's control socket is root's).
      '';
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Open UDP 67 and 4011 (proxyDHCP), 69 (TFTP) and the HTTP and HTTPS ports.";
    };

    keepGenerations = mkOption {
      type = types.ints.positive;
      default = 5;
      description = "Generations kept per role when a role is imported (`--keep`).";
    };

    roles = mkOption {
      default = { };
      example = literalExpression ''{ web = { configuration = self.nixosConfigurations.web; mode = "compose"; }; }'';
      description = ''
        Roles built from NixOS configurations, imported when the server starts and whenever
        their build or settings change (a changed `cmdline` or `mode` is a new generation).
        Names as netbootd's (lower-case a-z, 0-9, '_', '.', '-'; up to 63 characters).
      '';
      type = types.attrsOf (types.submodule {
        options = {
          configuration = mkOption {
            type = types.unspecified;
            description = "A NixOS system (`nixosConfigurations.<name>`, i.e. lib.nixosSystem's result).";
          };
          mode = mkOption {
            type = types.enum [ "netboot" "compose" ];
            default = "netboot";
            description = ''
              netboot: the configuration's netbootRamdisk (it must import NixOS's
              `installer/netboot/netboot.nix`). compose: its initialRamdisk + one cached archive
              per store path of the toplevel's closure; the configuration must set
              `services.netbootd-client.composedStore = true` (client.nix).
            '';
          };
          cmdline = mkOption {
            type = types.str;
            default = "";
            description = "Appended to init=<toplevel>/init and boot.kernelParams.";
          };
        };
      });
    };
  };

  config = mkIf cfg.enable {
    assertions = lib.concatLists (lib.mapAttrsToList (name: role: [
      {
        assertion = builtins.match roleNameRegex name != null;
        message = "services.netbootd.roles.\"${name}\": not a netbootd role name (lower-case a-z, 0-9, '_', '.', '-'; starting with a letter or digit; up to 63 characters).";
      }
      {
        assertion = builtins.match cmdlineRegex role.cmdline != null;
        message = "services.netbootd.roles.\"${name}\".cmdline: netbootd refuses newlines, '$', ';', '&', '|', '#', quotes and backslashes on a kernel command line.";
      }
      {
        assertion = role.mode != "compose"
          || (role.configuration.config.services.netbootd-client.composedStore or false);
        message = "services.netbootd.roles.\"${name}\": mode \"compose\" needs services.netbootd-client.composedStore = true in its configuration (import netbootd's nixosModules.client).";
      }
      {
        assertion = role.mode != "netboot"
          || role.configuration.config.system.build ? netbootRamdisk;
        message = "services.netbootd.roles.\"${name}\": mode \"netboot\" needs system.build.netbootRamdisk: import (modulesPath + \"/installer/netboot/netboot.nix\") in its configuration.";
      }
    ]) cfg.roles);

    services.netbootd.settings = {
      state_dir = lib.mkDefault cfg.stateDir;
      tftp.root = lib.mkDefault "${pkgs.ipxe}";
      iscsi.reconcile_interval = lib.mkDefault 0;
    };

    users.users.${user} = {
      isSystemUser = true;
      group = user;
      home = cfg.stateDir;
      description = "netbootd daemon user";
    };
    users.groups.${user} = { };

    # the state directory, also a custom one, exists and is the service user's before the
    # units start (ReadWritePaths= needs it); `Z` takes over state an older root service left
    systemd.tmpfiles.rules = [
      "d ${cfg.stateDir} 0700 ${user} ${user} -"
      "Z ${cfg.stateDir} - ${user} ${user} -"
    ];

    environment.systemPackages = [ wrapper ];
    environment.etc."netbootd/netbootd.toml".source = configFile;

    networking.firewall = mkIf cfg.openFirewall {
      allowedUDPPorts = [ 67 69 4011 ];
      allowedTCPPorts = [ httpPort httpsPort ];
    };

    systemd.services.netbootd = {
      description = "netbootd network-boot server";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      after = [ "network-online.target" ];
      serviceConfig = hardening // {
        ExecStart = "${cli} serve";
        Restart = "on-failure";
        # proxyDHCP needs port 67 and raw packets (ARP checks, binding to the interface);
        # TFTP and HTTP(S) ports below 1024. Nothing else.
        AmbientCapabilities = [ "CAP_NET_BIND_SERVICE" "CAP_NET_RAW" ];
        CapabilityBoundingSet = [ "CAP_NET_BIND_SERVICE" "CAP_NET_RAW" ];
        RestrictAddressFamilies = [ "AF_INET" "AF_INET6" "AF_UNIX" "AF_NETLINK" "AF_PACKET" ];
        # (not for netbootd-roles: Nix sets its stack size with setrlimit)
        SystemCallFilter = hardening.SystemCallFilter ++ [ "~@resources" ];
        # thousands of clients: a TFTP transfer holds two sockets and its file, HTTP connections
        LimitNOFILE = 65536;
      };
    };

    systemd.services.netbootd-roles = mkIf (cfg.roles != { }) {
      description = "netbootd: import the roles built with this system";
      wantedBy = [ "multi-user.target" ];
      before = [ "netbootd.service" ];
      wants = [ "nix-daemon.socket" ];
      after = [ "nix-daemon.socket" ];
      path = [ config.nix.package ];  # nix-instantiate, nix-store -qR / --dump-db / --add-root
      environment.HOME = cfg.stateDir;  # Nix's cache
      serviceConfig = hardening // {
        Type = "oneshot";
        RemainAfterExit = true;
        CapabilityBoundingSet = "";
        RestrictAddressFamilies = [ "AF_UNIX" ];  # the nix daemon
      };
      script = lib.concatStringsSep "\n" (lib.mapAttrsToList importRole cfg.roles);
    };
  };
}
