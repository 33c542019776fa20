"""`netbootd serve`: run the servers (the only long-running command)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from typing import Any

from netbootd import logfmt
from netbootd.cli.common import load_config


def cmd_serve(args: argparse.Namespace) -> int:
    # The servers (aiohttp and all) load only for `serve`: the other commands start faster.
    from netbootd.app import Netbootd

    overrides: dict[str, Any] = {
        "interface": args.interface,
        "advertise_address": args.advertise_address,
        "http.port": args.http_port,
        "https.port": args.https_port,
        "tftp.port": args.tftp_port,
        "tftp.root": args.tftp_root,
    }
    if args.no_dhcp:
        overrides["dhcp.enabled"] = False
    if args.no_tftp:
        overrides["tftp.enabled"] = False
    if args.no_https:
        overrides["https.enabled"] = False
    cfg = load_config(args, overrides)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logfmt.formatter(args.log_format or cfg.log_format))
    logging.basicConfig(level="DEBUG" if args.verbose else cfg.log_level.upper(),
                        handlers=[handler])
    for noisy in ("scapy", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    daemon = Netbootd.build(cfg)
    asyncio.run(daemon.run())
    return 0


def register(sub: Any) -> None:
    s = sub.add_parser("serve", help="run the proxyDHCP, TFTP and HTTP servers")
    s.add_argument("--interface", help="network interface to serve on (its IPv4 is advertised)")
    s.add_argument("--advertise-address", help="IPv4 address clients reach netbootd at")
    s.add_argument("--http-port", type=int, help="plain-HTTP port (default http.port, 80)")
    s.add_argument("--https-port", type=int, help="HTTPS port (identity bundles); default 443 "
                   "as root, else 8443")
    s.add_argument("--no-https", action="store_true",
                   help="no HTTPS: host identities are then not offered")
    s.add_argument("--tftp-port", type=int, help="TFTP port (default tftp.port, 69)")
    s.add_argument("--tftp-root", help="directory with iPXE binaries (default /usr/lib/ipxe)")
    s.add_argument("--no-dhcp", action="store_true", help="do not run the proxyDHCP responder")
    s.add_argument("--no-tftp", action="store_true", help="do not run the TFTP server")
    s.add_argument("--log-format", choices=["auto", "text", "journal", "json"],
                   help="log lines: text, journal (systemd priorities, no timestamp), json "
                   "(one object per line); default log_format, auto: journal under systemd")
    s.set_defaults(func=cmd_serve)
