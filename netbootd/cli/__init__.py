"""The `netbootd` command: one module per command group, each registering its own subparsers.

`main()` is the only place that exits: a NetbootdError becomes its message and status 2. The
command modules never exit and never print tracebacks for operator errors.

    serve.py      serve
    roles.py      role add|list|build|generations|switch|rollback|set, pin, images gc, build-image
    stemcell.py   role mode, nfs ..., iscsi ...
    hosts.py      enroll, unenroll, hosts, reprovision (--reboot), status
    discovery.py  discovered, discover rule ..., hosts show, hosts hardware [--nix]
    power.py      bmc set|show|remove, power on|off|cycle|status, boot-once
    keys.py       keys ...
    tls.py        tls show|rotate|export
    ipxe.py       ipxe build|show|off (netbootd's own iPXE)
    chain.py      role chain, secureboot init|export
    events.py     events
    explain.py    explain
    bulk.py       enroll --from hosts.csv|hosts.json
    ops.py        install --systemd, backup, restore
    completion.py completion bash
    common.py     what they share (config, store, host lookup, durations, tables)

Global options (`--state-dir`, `--config`, `-v`) are accepted before or after the subcommand;
a closed standard output (`netbootd hosts | head -1`) ends the command quietly.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from netbootd import __version__
from netbootd.cli import (
    api_cli,
    chain,
    completion,
    discovery,
    events,
    explain,
    hosts,
    ipxe,
    keys,
    ops,
    power,
    remote,
    roles,
    serve,
    stemcell,
    tls,
)
from netbootd.cli.common import SYSTEM_CONFIG
from netbootd.errors import InvalidInput, NetbootdError
from netbootd.store.migrations import MIGRATIONS

GLOBAL_OPTIONS: list[tuple[tuple[str, ...], dict[str, Any]]] = [
    (("--state-dir",), {"dest": "state_dir", "type": Path, "metavar": "DIR",
                        "help": "state directory (env NETBOOTD_STATE_DIR; default "
                        "/var/lib/netbootd)"}),
    (("--config",), {"dest": "config", "type": Path, "metavar": "FILE",
                     "help": f"TOML config file (env NETBOOTD_CONFIG; default {SYSTEM_CONFIG} "
                     "if present)"}),
    (("-v", "--verbose"), {"dest": "verbose", "action": "store_true",
                           "help": "debug logging"}),
    (("--server",), {"dest": "server", "metavar": "URL",
                     "help": "act on this netbootd's admin API (https://host:port; env "
                     "NETBOOTD_SERVER) instead of the local state"}),
    (("--token-file",), {"dest": "token_file", "metavar": "FILE",
                         "help": "bearer token for --server (env NETBOOTD_TOKEN_FILE)"}),
    (("--ca-sha256",), {"dest": "ca_sha256", "metavar": "HEX",
                        "help": "the server's CA fingerprint, pinned (`netbootd tls show`; "
                        "env NETBOOTD_CA_SHA256)"}),
    (("--ca-file",), {"dest": "ca_file", "metavar": "FILE",
                      "help": "or the server's CA certificate (`netbootd tls export`)"}),
]

# commands that can act on a remote server (--server): the rest need the state directory
REMOTE = {"hosts", "status", "events", "role list", "role show", "role generations",
          "keys list", "reprovision", "enroll", "unenroll", "role switch", "role rollback",
          "keys arm", "power", "boot-once", "bmc show"}


def _add_globals(p: argparse.ArgumentParser, top: bool) -> None:
    """The global options on `p`; below the top they default to SUPPRESS, so an option given
    before the subcommand is not reset by the subparser's default."""
    for flags, kw in GLOBAL_OPTIONS:
        free = [f for f in flags if f not in p._option_string_actions]
        if free:
            opts: dict[str, Any] = dict(kw)
            if not top:
                opts["default"] = argparse.SUPPRESS
            p.add_argument(*free, **opts)
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            # a parser that dispatches must not read `tls rotate --ca` as an abbreviation of
            # a global option (--ca-sha256, --ca-file): only leaf parsers abbreviate
            p.allow_abbrev = False
            for child in set(action.choices.values()):
                _add_globals(child, False)


def version() -> str:
    return f"netbootd {__version__} (state schema {len(MIGRATIONS)})"


def parser() -> argparse.ArgumentParser:
    # no abbreviations at the top: the global options are on every subparser too, and `tls
    # rotate --ca` must reach its subparser instead of being an ambiguous --ca-sha256/--ca-file
    p = argparse.ArgumentParser(prog="netbootd", allow_abbrev=False,
                                description="Network-boot and provisioning server.")
    p.add_argument("--version", action="version", version=version(),
                   help="the version and the state schema it reads and writes")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve.register(sub)
    role_sub = roles.register(sub)
    stemcell.register(sub, role_sub)
    chain.register(sub, role_sub)
    roles.register_images(sub)
    hosts.register(sub)
    discovery.register(sub)
    power.register(sub)
    keys.register(sub)
    tls.register(sub)
    ipxe.register(sub)
    events.register(sub)
    explain.register(sub)
    ops.register(sub)
    api_cli.register(sub)
    completion.register(sub)
    _add_globals(p, True)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if remote.wanted(args):
            what = " ".join(x for x in (args.command, getattr(args, "role_command", None),
                                        getattr(args, "keys_command", None),
                                        getattr(args, "bmc_command", None)) if x)
            if what not in REMOTE:
                raise InvalidInput(f"`{what}` works on the local state only (not with "
                                   f"--server); remote: {', '.join(sorted(REMOTE))}")
        rc = int(args.func(args))
        sys.stdout.flush()
        return rc
    except NetbootdError as e:
        print(f"netbootd: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # the reader went away (`netbootd hosts | head -1`): no traceback, and no second
        # error when Python flushes stdout at exit
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a command a pipe closed on
