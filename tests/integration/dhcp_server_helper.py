"""Run the real `DhcpServer` as a process (e.g. under `ip netns exec`) for integration tests.

    python dhcp_server_helper.py --state DIR [--interface eth0] [--enroll MAC ...] [--arm64 FILE]
        [--log-level INFO]

Creates a role in a fresh store under DIR, enrolls the given MACs, starts `DhcpServer`, prints
`READY <dhcp-port> <pxe-port>` on stdout, logs (DEBUG) to stderr, and stops cleanly on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from netbootd.config import Config
from netbootd.model import Artifact, MacAddress
from netbootd.servers.dhcp import DhcpServer
from netbootd.store import Store


def make_store(state: Path, macs: list[str]) -> Store:
    store = Store(state)
    kernel = Artifact("a" * 64, 1000)
    initrd = Artifact("b" * 64, 2000)
    store.add_generation("test", kernel, [initrd], "console=ttyS0", "import")
    for mac in macs:
        store.enroll(MacAddress.parse(mac), "test")
    return store


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--state", type=Path, required=True)
    p.add_argument("--interface")
    p.add_argument("--advertise")
    p.add_argument("--listen", default="0.0.0.0")
    p.add_argument("--dhcp-port", type=int, default=67)
    p.add_argument("--pxe-port", type=int, default=4011)
    p.add_argument("--http-port", type=int, default=8080)
    p.add_argument("--arm64")
    p.add_argument("--enroll", action="append", default=[])
    p.add_argument("--log-level", default="DEBUG")
    a = p.parse_args()

    logging.basicConfig(
        level=a.log_level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    store = make_store(a.state, a.enroll)
    cfg = Config.model_validate(
        {
            "state_dir": str(a.state),
            "interface": a.interface,
            "advertise_address": a.advertise,
            "dhcp": {"listen": a.listen, "port": a.dhcp_port, "pxe_port": a.pxe_port},
            "http": {"port": a.http_port},
            "boot_files": {"arm64": a.arm64},
        }
    )
    server = DhcpServer(cfg, store)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    ports = server.ports
    print(f"READY {ports['dhcp']} {ports['pxe']}", flush=True)
    await stop.wait()
    await server.stop()
    store.close()


if __name__ == "__main__":
    asyncio.run(main())
