# services.netbootd: the netbootd server on NixOS.
#
#   services.netbootd = {
#     enable = true;
#     openFirewall = true;
#     settings = { interface = "eth0"; http.port = 80; };   # rendered to netbootd.toml
#     roles.web = { configuration = self.nixosConfigurations.web; mode = "compose"; };
#   };
#
# Each role's kernel, initrd(s) and toplevel are built with the server's system (they are in its
# closure); at boot `netbootd-roles.service` imports every role whose current generation is not
# already that toplevel (`netbootd role build --file <roles.nix> --attr <role>`, which builds
# nothing: the paths exist). Enrolling hosts stays an operator action (`netbootd enroll`).
{ config, lib, pkgs, ... }:

let
  inherit (lib) mkEnableOption mkIf mkOption types literalExpression;
  cfg = config.services.netbootd;
  toml = pkgs.formats.toml { };
  configFile = toml.generate "netbootd.toml" cfg.settings;
  cli = "${cfg.package}/bin/netbootd --config ${configFile}";

  # What `netbootd role build --file` reads: per role, the built paths as { outPath = ...; }
  # (no drvPath: nothing left to build). builtins.toJSON keeps the string context, so the JSON
  # file -- and through it the server's closure -- holds every role's store paths.
  roleOutputs = lib.mapAttrs (name: role:
    let c = role.configuration.config; b = c.system.build; in {
      config = {
        system.build = {
          kernel.outPath = "${b.kernel}";
          toplevel.outPath = "${b.toplevel}";
        } // (if role.mode == "compose"
              then { initialRamdisk.outPath = "${b.initialRamdisk}"; }
              else { netbootRamdisk.outPath = "${b.netbootRamdisk}"; });
        boot.kernelParams = c.boot.kernelParams;
      };
    }) cfg.roles;
  rolesJson = pkgs.writeText "netbootd-roles.json" (builtins.toJSON roleOutputs);
  rolesNix = pkgs.writeText "netbootd-roles.nix" ''
    builtins.fromJSON (builtins.readFile ${rolesJson})
  '';

  importRole = name: role: ''
    want=${lib.escapeShellArg "${role.configuration.config.system.build.toplevel}"}
    if ${cli} role generations ${lib.escapeShellArg name} --json 2>/dev/null \
        | grep -qF "\"toplevel\": \"$want\""; then
      echo "role ${name}: $want already imported"
    else
      ${cli} role build ${lib.escapeShellArg name} --file ${rolesNix} \
        --attr ${lib.escapeShellArg name} --mode ${role.mode} \
        --keep ${toString cfg.keepGenerations} \
        ${lib.optionalString (role.cmdline != "") "--cmdline ${lib.escapeShellArg role.cmdline}"}
    fi
  '';

  httpPort = cfg.settings.http.port or 80;
  httpsPort = cfg.settings.https.port or 443;
in
{
  options.services.netbootd = {
    enable = mkEnableOption "netbootd, the network-boot server (proxyDHCP, TFTP, HTTP/HTTPS)";

    package = mkOption {
      type = types.package;
      description = "The netbootd package (the flake's `packages.<system>.netbootd`).";
    };

    stateDir = mkOption {
      type = types.str;
      default = "/var/lib/netbootd";
      description = "Database, artifacts, compose cache, host identities and the CA.";
    };

    settings = mkOption {
      type = toml.type;
      default = { };
      example = literalExpression ''{ interface = "eth0"; http.port = 80; boot_files.uefi = "snponly.efi"; }'';
      description = ''
        netbootd's configuration, rendered to TOML (see the README's "Configuration"; every key
        of netbootd.toml). `state_dir` defaults to `stateDir`, `tftp.root` to iPXE's binaries.
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
      description = "Roles built from NixOS configurations, imported when the server starts.";
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
              netboot: the configuration's netbootRamdisk (it must import netboot-minimal or
              the netboot module). compose: its initialRamdisk + one cached archive per store
              path of the toplevel's closure; the configuration must enable
              `services.netbootd-client.composedStore` (client.nix).
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
    services.netbootd.settings = {
      state_dir = lib.mkDefault cfg.stateDir;
      tftp.root = lib.mkDefault "${pkgs.ipxe}";
    };

    environment.systemPackages = [ cfg.package ];
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
      serviceConfig = {
        ExecStart = "${cli} serve";
        Restart = "on-failure";
        StateDirectory = lib.mkIf (cfg.stateDir == "/var/lib/netbootd") "netbootd";
        StateDirectoryMode = "0700";
        # proxyDHCP needs raw packets and port 67; TFTP/HTTP(S) need ports below 1024
        AmbientCapabilities = [ "CAP_NET_BIND_SERVICE" "CAP_NET_RAW" ];
        ProtectSystem = "strict";
        ReadWritePaths = [ cfg.stateDir ];
        PrivateTmp = true;
      };
    };

    systemd.services.netbootd-roles = mkIf (cfg.roles != { }) {
      description = "netbootd: import the roles built with this system";
      wantedBy = [ "multi-user.target" ];
      before = [ "netbootd.service" ];
      path = [ config.nix.package ];  # nix-store -qR / --dump-db for compose mode
      serviceConfig.Type = "oneshot";
      script = lib.concatStringsSep "\n" (lib.mapAttrsToList importRole cfg.roles);
    };
  };
}
