"""`netbootd api-token create|list|revoke`: the admin API's bearer tokens. The token is printed
once, at creation (or written to --output, 0600); the state keeps only its SHA-256."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from netbootd import model, tokens, views
from netbootd.cli.common import load_config, open_store, table
from netbootd.fsutil import write_file
from netbootd.model import TokenScope


def cmd_create(args: argparse.Namespace) -> int:
    name = model.token_name(args.name)
    scope = TokenScope.READ if args.read_only else TokenScope.ADMIN
    store = open_store(load_config(args))
    raw = tokens.api_token(os.urandom(32))
    tok = store.add_api_token(name, tokens.digest(raw), scope)
    if args.output:
        write_file(Path(args.output), (raw + "\n").encode(), 0o600)
        print(f"API token {tok.name} ({tok.scope}) written to {args.output} (0600)")
    else:
        print(raw)
        print(f"(API token {tok.name}, {tok.scope}: shown once; netbootd keeps only its "
              "SHA-256)", file=sys.stderr)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    store = open_store(load_config(args), readonly=True)
    rows: list[dict[str, Any]] = [
        {"name": t.name, "scope": str(t.scope), "created": views.when(t.created),
         "last_used": views.when(t.last_used), "revoked": views.when(t.revoked)}
        for t in store.api_tokens()]
    if args.json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        print("no API tokens: netbootd api-token create --name NAME [--read-only]")
    else:
        print(table([["NAME", "SCOPE", "CREATED", "LAST USED", "REVOKED"]] + [
            [r["name"], r["scope"], r["created"] or "-", r["last_used"] or "never",
             r["revoked"] or "-"] for r in rows]))
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    tok = open_store(load_config(args)).revoke_api_token(model.token_name(args.name))
    print(f"API token {tok.name} revoked: requests with it get 401 from now on")
    return 0


def register(sub: Any) -> None:
    t = sub.add_parser("api-token", help="bearer tokens of the admin API (HTTPS port only)")
    tsub = t.add_subparsers(dest="token_command", required=True, metavar="SUBCOMMAND")
    c = tsub.add_parser("create", help="a new token, printed once (admin unless --read-only)")
    c.add_argument("--name", required=True, help="a name for it (who or what uses it)")
    c.add_argument("--read-only", action="store_true", help="GET requests only (monitoring)")
    c.add_argument("-o", "--output", help="write the token to this file (0600) instead")
    c.set_defaults(func=cmd_create)
    ls = tsub.add_parser("list", help="tokens: name, scope, created, last used, revoked")
    ls.add_argument("--json", action="store_true", help="as JSON (never the tokens)")
    ls.set_defaults(func=cmd_list)
    r = tsub.add_parser("revoke", help="revoke a token (kept in the list, refused from now on)")
    r.add_argument("name", help="the token's name")
    r.set_defaults(func=cmd_revoke)
