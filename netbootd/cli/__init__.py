"""The `netbootd` command: one module per command group, each registering its own subparsers.

`main()` is the only place that exits: a NetbootdError becomes its message and status 2. The
command modules never exit and never print tracebacks for operator errors.

    serve.py      serve
    roles.py      role add|list|build|generations|switch|rollback|set, pin, images gc, build-image
    stemcell.py   role mode, nfs ..., iscsi ...
    hosts.py      enroll, unenroll, hosts, reprovision, status
    keys.py       keys ...
    tls.py        tls show|rotate|export
    chain.py      role chain, secureboot init|export
    events.py     events
    explain.py    explain
    common.py     what they share (config, store, host lookup, durations, tables)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from netbootd import __version__
from netbootd.cli import chain, events, explain, hosts, keys, roles, serve, stemcell, tls
from netbootd.cli.common import SYSTEM_CONFIG
from netbootd.errors import NetbootdError


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="netbootd",
                                description="Network-boot and provisioning server.")
    p.add_argument("--version", action="version", version=f"netbootd {__version__}")
    p.add_argument("--state-dir", type=Path, help="state directory (env NETBOOTD_STATE_DIR; "
                   "default /var/lib/netbootd)")
    p.add_argument("--config", type=Path, help="TOML config file (env NETBOOTD_CONFIG; "
                   f"default {SYSTEM_CONFIG} if present)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve.register(sub)
    role_sub = roles.register(sub)
    stemcell.register(sub, role_sub)
    chain.register(sub, role_sub)
    roles.register_images(sub)
    hosts.register(sub)
    keys.register(sub)
    tls.register(sub)
    events.register(sub)
    explain.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except NetbootdError as e:
        print(f"netbootd: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
