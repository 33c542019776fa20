"""VM boot time: netbootd vs the reference recipe's dnsmasq + python http.server.

Reuses the end-to-end lab (testbed.lab, testbed.vm: namespaces, bridge, the site's plain DHCP
server with an IPv6 RA, QEMU with SeaBIOS + the NIC's iPXE ROM, the test image) for both sides;
only the server namespace differs:

  netbootd   `netbootd serve` (proxyDHCP + TFTP + HTTP), the test role added, the VM's MAC enrolled;
  baseline   dnsmasq as proxyDHCP + TFTP with the reference recipe's MODE=proxy config, and
             `python3 -m http.server`'s handler (plus a 200 for the booted event) serving the same
             kernel and initramfs, with netbootd's own rendered script for that VM as boot.ipxe
             (same kernel command line).

Both are timed the same way: QEMU start -> the guest's serial line saying it sent its booted
event. Boots alternate netbootd / baseline so machine load falls on both alike.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from bench.common import median
from testbed import REPO
from testbed.lab import HTTP_PORT, NET, PREFIX, ROLE, SRV_IP, Lab, Netbootd, Site, build_image, log
from testbed.netns import cleanup_stale, http_get
from testbed.procs import HarnessError, tail, wait_for
from testbed.skips import missing_prerequisites
from testbed.vm import (
    MARK_BOOT_FAILED,
    MARK_BOOTED,
    VM,
    BootFailed,
    diagnostics,
    parse_time,
)

BOOT_TIMEOUT = 240.0


def _baseline_server(lab: Lab, image: dict[str, str], workdir: Path) -> Path:
    """dnsmasq (proxyDHCP + TFTP, reference MODE=proxy) and the http.server in lab.ns_srv."""
    srv = SRV_IP
    www, tftp = workdir / "http", workdir / "tftp"
    www.mkdir(parents=True)
    tftp.mkdir()
    (www / "vmlinuz").symlink_to(image["vmlinuz"])
    (www / "initrd0").symlink_to(image["initramfs"])
    for f in ("undionly.kpxe", "ipxe.efi"):
        (tftp / f).write_bytes(Path("/usr/lib/ipxe", f).read_bytes())
    conf = workdir / "dnsmasq.conf"
    conf.write_text(f"""port=0
interface=eth0
bind-interfaces
user=root
log-dhcp
dhcp-range={NET}.0,proxy,255.255.255.0
dhcp-userclass=set:ipxe,iPXE
dhcp-match=set:ipxe,175
enable-tftp
tftp-root={tftp}
pxe-service=tag:!ipxe,x86PC,"chainload iPXE",undionly.kpxe
pxe-service=tag:!ipxe,X86-64_EFI,"chainload iPXE",ipxe.efi
pxe-service=tag:ipxe,x86PC,"e2e",http://{srv}:{HTTP_PORT}/boot.ipxe
pxe-service=tag:ipxe,X86-64_EFI,"e2e",http://{srv}:{HTTP_PORT}/boot.ipxe
log-facility={workdir}/dnsmasq.log
""")
    lab.spawn(
        "baseline-dnsmasq",
        ["dnsmasq", "-C", str(conf), "-k", f"--pid-file={workdir}/dnsmasq.pid"],
        ns=lab.ns_srv,
    )
    lab.spawn(
        "baseline-http",
        [
            "python3",
            "-u",
            str(REPO / "bench" / "baseline_http.py"),
            "--bind",
            srv,
            "--port",
            str(HTTP_PORT),
            "--directory",
            str(www),
        ],
        ns=lab.ns_srv,
    )
    wait_for(
        lambda: _ok(lab.ns_srv, f"http://{srv}:{HTTP_PORT}/vmlinuz"),
        15,
        "the baseline http.server",
    )
    wait_for(
        lambda: "TFTP root is" in tail(workdir / "dnsmasq.log", 50), 15, "the baseline dnsmasq"
    )
    return www


def _ok(ns: str, url: str) -> bool:
    try:
        return http_get(ns, url, timeout=1.0)[0] == 200
    except OSError:
        return False


def _baseline_script(nb_ns: str, mac: str) -> str:
    """netbootd's rendered script for `mac`, pointed at the baseline's files."""
    status, body = http_get(nb_ns, f"http://{SRV_IP}:{HTTP_PORT}/boot/{mac.replace(':', '-')}.ipxe")
    if status != 200:
        raise HarnessError(f"netbootd answered {status} for the script of {mac}")
    text = body.decode()
    text = re.sub(
        r"http://\S+/artifacts/[0-9a-f]{64}/kernel",
        f"http://{SRV_IP}:{HTTP_PORT}/vmlinuz",
        text,
    )
    text = re.sub(
        r"http://\S+/artifacts/[0-9a-f]{64}/(initrd\d+)",
        rf"http://{SRV_IP}:{HTTP_PORT}/\1",
        text,
    )
    return text


def _wait_marker(vm: VM, timeout: float) -> float:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        m = vm.first_line_with(MARK_BOOTED)
        if m:
            return float(m[0])
        failed = vm.first_line_with(MARK_BOOT_FAILED)
        if failed:
            raise BootFailed(f"the guest could not send its booted event: {failed[1].strip()}")
        if vm.exited():
            raise BootFailed("QEMU exited before the guest sent its booted event")
        time.sleep(0.1)
    raise BootFailed(f"no booted event within {timeout:.0f}s of QEMU start")


def _confirm_booted(nb: Netbootd, mac: str, timeout: float = 10.0) -> None:
    """netbootd's own state must show the boot (last_boot), as the e2e tests require."""
    end = time.monotonic() + timeout
    while True:
        host = nb.host(mac)
        if host and parse_time(host.get("last_boot")) is not None:
            return
        if time.monotonic() > end:
            raise BootFailed(
                f"the guest sent its booted event, but netbootd shows no last_boot for {mac}: "
                f"{host}"
            )
        time.sleep(0.5)


def _phases(vm: VM, total: float) -> dict[str, float | None]:
    """Where a boot's time went, from the serial console: until iPXE runs the script (firmware,
    DHCP, proxyDHCP), script -> the initramfs' /init (kernel + initrd download, kernel start),
    /init -> booted event sent (guest DHCP, the POST)."""
    script = vm.first_line_with(f"-> {ROLE} generation")
    init = vm.first_line_with("NETBOOTD-TEST: init started")
    t_script = float(script[0]) if script else None
    t_init = float(init[0]) if init else None
    return {
        "to_script": t_script,
        "script_to_init": t_init - t_script
        if t_init is not None and t_script is not None
        else None,
        "init_to_booted": total - t_init if t_init is not None else None,
    }


def compare(workdir: Path, boots: int, client: str = "bios") -> dict[str, Any]:
    why = missing_prerequisites(uefi=False)
    if why:
        return {"broken": "VM boot prerequisites missing: " + "; ".join(why)}
    cleanup_stale(PREFIX, log)
    workdir.mkdir(parents=True, exist_ok=True)
    image = build_image(workdir / "image")
    out: dict[str, Any] = {
        "netbootd_s": [],
        "baseline_s": [],
        "client": client,
        "image": {k: v for k, v in image.items() if k in ("kernel_version", "kernel_package")},
    }
    site = lab = None
    try:
        site = Site.start(workdir / "netbootd", image)
        lab = Lab(workdir / "baseline").up()
        www = _baseline_server(lab, image, workdir / "baseline-srv")
        for i in range(boots):
            mac = f"52:54:00:be:00:{i:02x}"
            site.nb.enroll(mac, ROLE, hostname=f"bench{i}")
            (www / "boot.ipxe").write_text(_baseline_script(site.lab.ns_srv, mac))
            for side in ("netbootd", "baseline"):
                vm = (
                    site.vm(f"nb{i}", mac, client)
                    if side == "netbootd"
                    else VM(lab, f"base{i}", mac, client)
                ).start()
                try:
                    # Both sides are timed by the serial marker alone: polling `netbootd hosts`
                    # during the boot (as the harness's wait_booted does) starts a CLI process a
                    # second, CPU the TCG guest is then missing on a 2-core machine.
                    seconds = _wait_marker(vm, BOOT_TIMEOUT)
                    if side == "netbootd":
                        _confirm_booted(site.nb, mac)
                except BootFailed as e:
                    diag = diagnostics(
                        site.lab if side == "netbootd" else lab,
                        site.nb if side == "netbootd" else None,
                        vm,
                    )
                    out["broken"] = f"{side} boot {i + 1} failed: {e}\n{diag[-3000:]}"
                    return out
                finally:
                    vm.stop(grace=3)
                out[f"{side}_s"].append(round(seconds, 2))
                out.setdefault(f"{side}_phases", []).append(_phases(vm, seconds))
                log(f"vm boot {i + 1}/{boots} via {side}: {seconds:.1f}s")
    finally:
        if site is not None:
            site.close()
        if lab is not None:
            lab.close()
    out["netbootd_median_s"] = median(out["netbootd_s"])
    out["baseline_median_s"] = median(out["baseline_s"])
    out["ratio"] = (
        out["netbootd_median_s"] / out["baseline_median_s"] if out["baseline_median_s"] else None
    )
    out["netbootd_label"] = "netbootd serve (proxyDHCP + TFTP + HTTP)"
    out["baseline_label"] = "dnsmasq proxyDHCP + TFTP, python http.server"
    out["method"] = (
        f"{boots} boots per side, alternating, of QEMU (TCG: this machine's KVM cannot run "
        "firmware) with SeaBIOS + the virtio NIC's iPXE ROM, in the e2e harness's namespaces (site "
        "DHCP server + IPv6 RA in both). Same Debian kernel "
        f"({out['image'].get('kernel_version', '?')}) and test initramfs (images/test-initramfs), "
        "same kernel command line (netbootd's rendered script, re-pointed at the baseline's "
        "files). Time = QEMU start -> the guest's serial line saying its booted event was sent."
    )
    return out
