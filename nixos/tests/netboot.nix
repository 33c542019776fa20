# NixOS VM test of both modules, for machines that have nixpkgs (`nix flake check`, or
# `nix build .#checks.x86_64-linux.netboot`): a netbootd server (services.netbootd, two roles
# built from NixOS configurations with services.netbootd-client, one per mode) and a site DHCP
# server on a VLAN, and a PXE client per role (QEMU booting from its NIC) that
#   - boots (compose: stage 1 moves the composed store; netboot: NixOS's squashfs),
#   - fetches its identity before sshd: sshd starts after netbootd-identity.service finished,
#     `ssh-keyscan` from the server matches `netbootd keys export known_hosts`, and
#     /etc/machine-id is the identity's (systemd.machine_id= on the command line),
#   - is re-provisioned once: the disk layout ran before the file systems were mounted, the
#     host reported `provisioned`, and the flag is gone.
# NOT RUN by this repository's checks (no nixpkgs offline): there it is only parsed
# (`nix-instantiate --parse`, tests/unit/test_nixos_modules.py). See the README's "NixOS".
{ hostPkgs, lib, ... }:

let
  pkgs = hostPkgs;  # runNixOSTest's test module gets the host's packages as hostPkgs
  system = pkgs.stdenv.hostPlatform.system;
  client = extra: import "${pkgs.path}/nixos/lib/eval-config.nix" {
    inherit system;
    modules = [
      ../client.nix
      "${pkgs.path}/nixos/modules/testing/test-instrumentation.nix"
      ({ pkgs, ... }: {
        services.netbootd-client.enable = true;
        services.netbootd-client.provision.script = "${pkgs.writeShellScript "layout" ''
          set -e
          echo ';' | ${pkgs.util-linux}/bin/sfdisk --wipe always /dev/vda
          ${pkgs.e2fsprogs}/bin/mkfs.ext4 -F -L data /dev/vda1
        ''}";
        fileSystems."/data" = { device = "/dev/disk/by-label/data"; fsType = "ext4"; options = [ "nofail" ]; };
        services.openssh.enable = true;
        networking.useDHCP = true;
        boot.initrd.availableKernelModules = [ "virtio_net" "virtio_pci" "virtio_blk" ];
        boot.kernelParams = [ "console=ttyS0" ];
        system.stateVersion = lib.trivial.release;
      })
      extra
    ];
  };
  hosts = {
    composed = { mac = "52:54:00:12:01:01"; };
    netboot = { mac = "52:54:00:12:01:02"; };
  };
in
{
  name = "netbootd-netboot";

  nodes.server = { pkgs, ... }: {
    imports = [ ../module.nix ];
    virtualisation.vlans = [ 1 ];
    virtualisation.memorySize = 4096;
    networking.interfaces.eth1.ipv4.addresses = [{ address = "192.168.1.1"; prefixLength = 24; }];
    services.dnsmasq = {
      enable = true;  # the site's DHCP server: addresses only, netbootd answers the PXE part
      settings = { port = 0; interface = "eth1"; bind-interfaces = true; dhcp-range = [ "192.168.1.100,192.168.1.199,1h" ]; };
    };
    services.netbootd = {
      enable = true;
      openFirewall = true;
      settings = { interface = "eth1"; advertise_address = "192.168.1.1"; http.port = 80; };
      roles.composed = {
        configuration = client { services.netbootd-client.composedStore = true; };
        mode = "compose";
      };
      roles.netboot = {
        configuration = client ({ modulesPath, ... }: {
          imports = [ "${modulesPath}/installer/netboot/netboot.nix" ];
        });
        mode = "netboot";
      };
    };
    environment.systemPackages = [ pkgs.openssh ];
  };

  testScript = ''
    import json

    server.start()
    server.wait_for_unit("netbootd-roles.service")
    server.wait_for_unit("netbootd.service")
    server.wait_for_open_port(80)
    roles = {r["name"] for r in json.loads(server.succeed("netbootd role list --json"))}
    assert roles == {"composed", "netboot"}, roles
    # the service user, and a second import of the same builds is no new generation
    pid = server.succeed("systemctl show -p MainPID --value netbootd.service").strip()
    assert server.succeed(f"ps -o user= -p {pid}").strip() == "netbootd"
    server.succeed("systemctl restart netbootd-roles.service")
    assert len(json.loads(server.succeed("netbootd role generations composed --json"))) == 1

    def pxe_client(name, mac):
        with open(f"/tmp/{name}.img", "wb") as disk:
            disk.truncate(256 << 20)
        return create_machine({
            "name": name,
            "qemuFlags": "-m 2048 -boot order=n"
            + " -netdev vde,id=lan,sock=$QEMU_VDE_SOCKET_1"
            + f" -device virtio-net-pci,netdev=lan,mac={mac},bootindex=1"
            + f" -drive file=/tmp/{name}.img,if=virtio,format=raw",
        })

    ${lib.concatStrings (lib.mapAttrsToList (name: h: ''
      server.succeed("netbootd enroll ${h.mac} ${name} --hostname ${name}")
      server.succeed("netbootd reprovision ${name}")
      vm = pxe_client("${name}", "${h.mac}")
      vm.start()
      vm.wait_for_unit("multi-user.target")
      vm.wait_for_unit("sshd.service")
      done = int(vm.succeed("systemctl show -p ExecMainExitTimestampMonotonic --value netbootd-identity.service"))
      started = int(vm.succeed("systemctl show -p ExecMainStartTimestampMonotonic --value sshd.service"))
      assert 0 < done <= started, (done, started)
      ip = vm.succeed("ip -4 -o addr show scope global | awk '{print $4}' | cut -d/ -f1 | head -n1").strip()
      scanned = server.succeed(f"ssh-keyscan -t ed25519 {ip} 2>/dev/null | cut -d' ' -f2-").strip()
      server.succeed("netbootd keys export known_hosts -o /tmp/known_hosts")
      known = server.succeed("grep '^${name},' /tmp/known_hosts | grep ssh-ed25519 | cut -d' ' -f2-").strip()
      assert scanned == known, (scanned, known)
      keys = json.loads(server.succeed("netbootd keys list --json"))
      (mine,) = [k for k in keys if k["hostname"] == "${name}"]
      assert vm.succeed("cat /etc/machine-id").strip() == mine["machine_id"]
      vm.succeed("test -b /dev/disk/by-label/data && mountpoint /data")
      events = [e["event"] for e in json.loads(server.succeed("netbootd events ${name} --json"))]
      assert "provisioned" in events, events
      (host,) = [h for h in json.loads(server.succeed("netbootd hosts --json")) if h["hostname"] == "${name}"]
      assert host["state"] == "ok", host
      ${lib.optionalString (name == "composed") ''vm.succeed("nix-store --verify-path /run/current-system")''}
      vm.shutdown()
    '') hosts)}
  '';
}
