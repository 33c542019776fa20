"""The inventory agent: what this machine is made of, read from udev (pyudev) and sysfs, as a
`netbootd-inventory/1` document (schema.py; this module writes the same shape as plain dicts and
imports nothing but the standard library and pyudev, so the discovery image needs no pydantic).

    python3 -m netbootd.inventory.agent                 # print the document
    python3 -m netbootd.inventory.agent --post URL --token TOKEN
    python3 -m netbootd.inventory.agent --from-cmdline  # netbootd.discovery= / netbootd.events=
                                                        # and netbootd.boot= from /proc/cmdline

udev's properties (ID_SERIAL, ID_WWN, ID_PATH, ID_NET_NAME_PATH, the /dev/disk/by-id links) exist
only where udevd has processed the devices (the discovery image runs `udevadm trigger` and
`settle` first); without them the agent still reports what sysfs says. A TPM 2.0's endorsement
key is read by running tpm2-tools (`tpm2_readpublic`, `tpm2_createek`, or the multi-call `tpm2`)
where they are installed (the discovery image has them); without them, or without an answer,
it is null and the report goes on. Exit status: 0 printed or accepted; 1 the server refused it
or could not be reached; 2 bad arguments.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyudev

AGENT = "netbootd-inventory-agent 1"
SECURE_BOOT_VAR = "SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c"
_VIRTUAL = "/devices/virtual/"


def _read(path: Path | str) -> str | None:
    try:
        return Path(path).read_text(errors="replace").strip() or None
    except OSError:
        return None


def _attr(dev: pyudev.Device, name: str) -> str | None:
    try:
        raw = dev.attributes.get(name)
    except (OSError, KeyError):
        return None
    if raw is None:
        return None
    text = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
    return text.strip() or None


def _prop(dev: pyudev.Device, *names: str) -> str | None:
    for n in names:
        v = dev.properties.get(n)
        if v:
            return str(v)
    return None


def _controller(dev: pyudev.Device) -> pyudev.Device | None:
    """The nearest ancestor that is a controller with a driver (virtio, PCI or USB)."""
    for anc in dev.ancestors:
        if anc.subsystem in ("virtio", "pci", "usb") and anc.driver:
            return anc
    return None


def _links(dev: pyudev.Device, prefix: str) -> list[str]:
    return sorted(link[len(prefix):] for link in dev.device_links if link.startswith(prefix))


def vpd_serial(raw: bytes | None) -> str | None:
    """The unit serial number from a SCSI VPD page 0x80 (sysfs `device/vpd_pg80`: peripheral
    byte, page code 0x80, a big-endian length, then the serial, space/NUL padded)."""
    if raw is None or len(raw) < 4 or raw[1] != 0x80:
        return None
    n = int.from_bytes(raw[2:4], "big")
    text = raw[4:4 + n].decode("ascii", errors="replace").strip(" \x00")
    return text or None


def _read_bytes(path: str) -> bytes | None:
    try:
        return Path(path).read_bytes()
    except OSError:
        return None


def _serial(dev: pyudev.Device) -> str | None:
    """udev's serial (ID_SERIAL_SHORT from scsi_id/ata_id or virtio's `serial`), else what
    sysfs says without udev: virtio-blk's `serial`, a SCSI disk's VPD page 0x80 (the discovery
    image's scsi_id may not have run: its serial was null there)."""
    return (_prop(dev, "ID_SERIAL_SHORT", "ID_SCSI_SERIAL", "ID_SERIAL")
            or _attr(dev, "serial") or _attr(dev, "device/serial")
            or vpd_serial(_read_bytes(f"{dev.sys_path}/device/vpd_pg80")))


def disks(ctx: pyudev.Context) -> list[dict[str, Any]]:
    out = []
    for dev in ctx.list_devices(subsystem="block", DEVTYPE="disk"):
        if _VIRTUAL in dev.sys_path or dev.sys_name.startswith(("loop", "ram", "zram")):
            continue
        size = int(_attr(dev, "size") or 0) * 512
        ctl = _controller(dev)
        rot = _attr(dev, "queue/rotational")
        transport = _prop(dev, "ID_BUS")
        if transport is None:
            if dev.sys_name.startswith("nvme"):
                transport = "nvme"
            elif dev.find_parent("scsi") is not None:
                transport = "scsi"  # what udev's ID_BUS says for it (virtio-scsi too)
            elif ctl is not None and ctl.subsystem == "virtio":
                transport = "virtio"
        by_path = _links(dev, "/dev/disk/by-path/")
        out.append({
            "name": dev.sys_name,
            "model": _prop(dev, "ID_MODEL") or _attr(dev, "device/model"),
            "serial": _serial(dev),
            "wwn": _prop(dev, "ID_WWN_WITH_EXTENSION", "ID_WWN") or _attr(dev, "wwid"),
            "size_bytes": size,
            "rotational": None if rot is None else rot == "1",
            "transport": transport,
            "driver": ctl.driver if ctl is not None else None,
            "by_id": _links(dev, "/dev/disk/by-id/")[:32],
            "by_path": by_path[0] if by_path else None,
        })
    return sorted(out, key=lambda d: d["name"])


def nics(ctx: pyudev.Context) -> list[dict[str, Any]]:
    out = []
    for dev in ctx.list_devices(subsystem="net"):
        if _VIRTUAL in dev.sys_path:
            continue  # lo, bridges, veths: not hardware
        parent = dev.parent
        carrier = _attr(dev, "carrier")
        speed = _attr(dev, "speed")
        out.append({
            "name": dev.sys_name,
            "mac": (_attr(dev, "address") or "").lower(),
            "driver": (parent.driver if parent is not None else None)
            or _prop(dev, "ID_NET_DRIVER"),
            "pci_path": _prop(dev, "ID_PATH"),
            "name_path": _prop(dev, "ID_NET_NAME_PATH"),
            "link": None if carrier is None else carrier == "1",
            "speed_mbps": int(speed) if speed and speed.lstrip("-").isdigit() else None,
        })
    return sorted(out, key=lambda n: n["name"])


def pci(ctx: pyudev.Context) -> list[dict[str, Any]]:
    out = []
    for dev in ctx.list_devices(subsystem="pci"):
        out.append({
            "slot": dev.sys_name,
            "vendor_id": _attr(dev, "vendor") or "",
            "device_id": _attr(dev, "device") or "",
            "class_id": _attr(dev, "class") or "",
            "driver": dev.driver,
            "vendor": _prop(dev, "ID_VENDOR_FROM_DATABASE"),
            "model": _prop(dev, "ID_MODEL_FROM_DATABASE"),
        })
    return sorted(out, key=lambda p: p["slot"])[:512]


def cpu(cpuinfo: str) -> dict[str, Any]:
    model = None
    threads = 0
    cores: set[tuple[str, str]] = set()
    sockets: set[str] = set()
    phys = core = ""
    for line in [*cpuinfo.splitlines(), ""]:
        key, _, value = (s.strip() for s in line.partition(":"))
        if key == "processor":
            threads += 1
        elif key == "model name" and model is None:
            model = value
        elif key == "physical id":
            phys = value
        elif key == "core id":
            core = value
        elif not line.strip() and threads:
            cores.add((phys, core or str(threads)))
            sockets.add(phys)
            phys = core = ""
    return {"model": model, "arch": os.uname().machine, "sockets": max(1, len(sockets)),
            "cores": len(cores) or threads, "threads": threads or (os.cpu_count() or 0)}


def memory(meminfo: str) -> dict[str, Any]:
    for line in meminfo.splitlines():
        if line.startswith("MemTotal:"):
            return {"total_bytes": int(line.split()[1]) * 1024}
    return {"total_bytes": 0}


def system(ctx: pyudev.Context) -> dict[str, Any]:
    try:
        dmi = pyudev.Devices.from_path(ctx, "/devices/virtual/dmi/id")
    except pyudev.DeviceNotFoundError:
        return {}
    names = {"vendor": "sys_vendor", "product": "product_name", "serial": "product_serial",
             "uuid": "product_uuid", "board_vendor": "board_vendor",
             "board_product": "board_name", "board_serial": "board_serial",
             "bios_vendor": "bios_vendor", "bios_version": "bios_version",
             "bios_date": "bios_date"}
    return {k: _attr(dmi, v) for k, v in names.items()}


def firmware(sys_root: Path = Path("/sys")) -> dict[str, Any]:
    efi = sys_root / "firmware" / "efi"
    if not efi.is_dir():
        return {"mode": "bios", "secure_boot": "disabled"}
    try:
        data = (efi / "efivars" / SECURE_BOOT_VAR).read_bytes()
        state = "enabled" if len(data) >= 5 and data[4] == 1 else "disabled"
    except OSError:
        state = "unknown"
    return {"mode": "uefi", "secure_boot": state}


EK_HANDLE = "0x81010001"  # TCG EK Credential Profile: the RSA 2048 EK's persistent handle
PEM_BEGIN, PEM_END = "-----BEGIN PUBLIC KEY-----", "-----END PUBLIC KEY-----"


# searched after $PATH: the discovery image's /init leaves /usr/bin out of it
TOOL_DIRS = ("/usr/local/bin", "/usr/bin", "/bin")


def _tpm2(tool: str) -> list[str] | None:
    """tpm2-tools' `tpm2_<tool>`, or its multi-call `tpm2 <tool>` (the discovery image ships
    only the one binary)."""
    search = os.pathsep.join([*os.environ.get("PATH", "").split(os.pathsep), *TOOL_DIRS])
    path = shutil.which(f"tpm2_{tool}", path=search)
    if path:
        return [path]
    multi = shutil.which("tpm2", path=search)
    return [multi, tool] if multi else None


def pem_sha256(pem: str) -> str:
    """The SHA-256 (hex) of a PEM public key's DER SubjectPublicKeyInfo: `openssl pkey -pubin
    -outform DER | sha256sum`."""
    body = "".join(line for line in pem.strip().splitlines() if not line.startswith("-----"))
    return hashlib.sha256(base64.b64decode(body, validate=True)).hexdigest()


def ek_public(dev: Path = Path("/dev"), timeout: float = 60) -> tuple[str | None, str]:
    """The TPM 2.0's endorsement key, public half, as PEM (SubjectPublicKeyInfo) -- read with
    tpm2-tools from the persistent EK (0x81010001) where the machine was provisioned with one,
    else derived from the endorsement seed with the default RSA template (`tpm2_createek`: the
    same key an EK certificate certifies). (None, why) without tpm2-tools, a TPM device or an
    answer; never raises: a machine without them still reports."""
    readpublic, createek = _tpm2("readpublic"), _tpm2("createek")
    if readpublic is None or createek is None:
        return None, "no tpm2-tools"
    device = next((d for d in (dev / "tpmrm0", dev / "tpm0") if d.exists()), None)
    if device is None:
        return None, "no /dev/tpmrm0 or /dev/tpm0"
    env = {**os.environ, "TPM2TOOLS_TCTI": f"device:{device}"}
    why = ""
    try:
        with tempfile.TemporaryDirectory(prefix="nbd-ek-") as tmp:
            pem, ctx = Path(tmp) / "ek.pem", Path(tmp) / "ek.ctx"
            steps = ([[*readpublic, "-c", EK_HANDLE, "-f", "pem", "-o", str(pem)]],
                     [[*createek, "-c", str(ctx), "-G", "rsa", "-u", str(Path(tmp) / "ek.pub")],
                      [*readpublic, "-c", str(ctx), "-f", "pem", "-o", str(pem)]])
            for argvs in steps:
                for argv in argvs:
                    r = subprocess.run(argv, env=env, capture_output=True, text=True,
                                       timeout=timeout, check=False)
                    if r.returncode != 0:
                        why = f"{Path(argv[0]).name} {argv[1]}: " + " ".join(
                            (r.stderr or r.stdout).split())[:200]
                        break
                else:
                    text = pem.read_text().strip() + "\n"
                    if text.startswith(PEM_BEGIN) and text.rstrip().endswith(PEM_END):
                        pem_sha256(text)  # base64 that decodes, or ValueError
                        return text, ""
                    why = "tpm2_readpublic wrote no PEM public key"
    except (OSError, ValueError, subprocess.SubprocessError) as e:
        why = f"{type(e).__name__}: {e}"
    return None, why or "no EK"


def tpm(sys_root: Path = Path("/sys"), dev: Path = Path("/dev")) -> dict[str, Any]:
    node = sys_root / "class" / "tpm" / "tpm0"
    if not node.exists():
        return {"present": False, "version": None, "ek_public": None, "ek_sha256": None}
    major = _read(node / "tpm_version_major")
    version = {"2": "2.0", "1": "1.2"}.get(major or "")
    pem, why = ek_public(dev) if version == "2.0" else (None, "not a TPM 2.0")
    if pem is None:
        print(f"inventory: TPM EK not read: {why}", file=sys.stderr)
    return {"present": True, "version": version, "ek_public": pem,
            "ek_sha256": pem_sha256(pem) if pem else None}


def collect(ctx: pyudev.Context | None = None) -> dict[str, Any]:
    """This machine's inventory document."""
    ctx = ctx or pyudev.Context()
    return {
        "schema": "netbootd-inventory/1",
        "agent": AGENT,
        "kernel": os.uname().release,
        "system": system(ctx),
        "firmware": firmware(),
        "tpm": tpm(),
        "cpu": cpu(_read("/proc/cpuinfo") or ""),
        "memory": memory(_read("/proc/meminfo") or ""),
        "disks": disks(ctx),
        "nics": nics(ctx),
        "pci": pci(ctx),
    }


def cmdline_args(text: str) -> dict[str, str]:
    return dict(w.split("=", 1) for w in text.split() if "=" in w)


def report_url(args: dict[str, str]) -> str | None:
    """Where to POST: `netbootd.discovery=` (a discovery boot), else the server that
    `netbootd.events=` names (an enrolled host's boot), /api/v1/discovery."""
    if args.get("netbootd.discovery"):
        return args["netbootd.discovery"]
    events = args.get("netbootd.events", "")
    head, sep, _ = events.partition("/api/v1/")
    return head + "/api/v1/discovery" if sep else None


def post(url: str, token: str, doc: dict[str, Any], attempts: int = 5,
         out: Iterable[str] = ()) -> tuple[int, str]:
    """POST the report; (HTTP status, body). Retries a connection failure and a 5xx; a 4xx is
    final (the server's answer to this report)."""
    body = json.dumps({"token": token, "inventory": doc}).encode()
    status, text = 0, "not sent"
    for i in range(attempts):
        req = urllib.request.Request(url, body, {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=15) as resp:
                return resp.status, resp.read(4096).decode(errors="replace")
        except urllib.error.HTTPError as e:
            status, text = e.code, e.read(4096).decode(errors="replace")
            if e.code < 500:
                return status, text
        except OSError as e:
            status, text = 0, str(e)
        time.sleep(min(2 ** i, 10))
    return status, text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="report this machine's hardware inventory")
    ap.add_argument("--post", metavar="URL", help="POST it to netbootd's /api/v1/discovery")
    ap.add_argument("--token", help="the boot's token (netbootd.boot=)")
    ap.add_argument("--from-cmdline", action="store_true",
                    help="URL and token from /proc/cmdline")
    ap.add_argument("--output", type=Path, help="also write the document here")
    a = ap.parse_args(argv)
    doc = collect()
    text = json.dumps(doc, indent=2, sort_keys=True)
    if a.output:
        a.output.write_text(text + "\n")
    url, token = a.post, a.token
    if a.from_cmdline:
        args = cmdline_args(_read("/proc/cmdline") or "")
        url, token = url or report_url(args), token or args.get("netbootd.boot")
    if url is None:
        print(text)
        return 0
    if not token:
        print("inventory: no token (netbootd.boot=): not sent", file=sys.stderr)
        return 2
    status, answer = post(url, token, doc)
    print(f"inventory: POST {url}: {status} {answer.strip()[:200]}", file=sys.stderr)
    return 0 if status == 200 else 1


if __name__ == "__main__":
    sys.exit(main())
