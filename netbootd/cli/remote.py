"""The CLI acting on a remote server through its admin API (`--server https://host:8443
--token-file FILE --ca-sha256 HEX`, or NETBOOTD_SERVER / NETBOOTD_TOKEN_FILE /
NETBOOTD_CA_SHA256): the commands that support it fetch the same JSON the local views make
(netbootd/views.py) and print it with the same printers, so the output is the same.

The server's CA is pinned by its SHA-256 (`netbootd tls show` on the server: `ca_sha256`): the
CA certificate is fetched from /api/v1/ca.pem, checked against the pin, and the real request is
then verified against it (hostname included). Or give the CA itself (`--ca-file`, from `netbootd
tls export`). The token file should be 0600; the token is sent only as a bearer header.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from netbootd.errors import ConfigError, InvalidInput, NetbootdError

TIMEOUT = 30.0


def wanted(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "server", None) or os.environ.get("NETBOOTD_SERVER"))


def _opt(args: argparse.Namespace, name: str, env: str) -> str | None:
    v = getattr(args, name, None)
    return str(v) if v else os.environ.get(env) or None


def _server(args: argparse.Namespace) -> str:
    url = _opt(args, "server", "NETBOOTD_SERVER") or ""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise InvalidInput(f"--server: {url!r} is not an https:// URL (the admin API is served "
                           "over HTTPS only)")
    return url.rstrip("/")


def _token(args: argparse.Namespace) -> str:
    path = _opt(args, "token_file", "NETBOOTD_TOKEN_FILE")
    if not path:
        raise InvalidInput("--server needs --token-file FILE (or NETBOOTD_TOKEN_FILE): a token "
                           "from `netbootd api-token create` on the server")
    try:
        token = Path(path).read_text().strip()
    except OSError as e:
        raise ConfigError(f"cannot read token file {path}: {e.strerror}") from None
    if not token:
        raise ConfigError(f"token file {path} is empty")
    return token


def _context(args: argparse.Namespace, base: str) -> ssl.SSLContext:
    ca_file = _opt(args, "ca_file", "NETBOOTD_CA_FILE")
    if ca_file:
        return ssl.create_default_context(cafile=ca_file)
    pin = (_opt(args, "ca_sha256", "NETBOOTD_CA_SHA256") or "").lower().replace(":", "")
    if not pin:
        raise InvalidInput("--server needs the server's CA: --ca-sha256 HEX (`netbootd tls "
                           "show` on the server) or --ca-file FILE (`netbootd tls export`)")
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE  # only to fetch the CA, which the pin then checks
    try:
        with urllib.request.urlopen(f"{base}/api/v1/ca.pem", timeout=TIMEOUT,
                                    context=insecure) as r:
            pem = r.read().decode()
    except (OSError, urllib.error.URLError) as e:
        raise NetbootdError(f"cannot reach {base}: {e}") from None
    der = ssl.PEM_cert_to_DER_cert(pem)
    got = hashlib.sha256(der).hexdigest()
    if got != pin:
        raise NetbootdError(f"{base}: its CA is sha256 {got}, not the pinned {pin}: refusing "
                            "to talk to it")
    return ssl.create_default_context(cadata=pem)


def request(args: argparse.Namespace, method: str, path: str,
            query: dict[str, str | None] | None = None, body: object = None) -> Any:
    base = _server(args)
    q = urllib.parse.urlencode({k: v for k, v in (query or {}).items() if v is not None})
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"{base}{path}{'?' + q if q else ''}", data=data, method=method,
                                 headers={"Authorization": f"Bearer {_token(args)}",
                                          "Accept": "application/json",
                                          "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT, context=_context(args, base)) as r:
            return json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        try:
            why = json.loads(e.read()).get("error", e.reason)
        except (ValueError, AttributeError):
            why = e.reason
        raise NetbootdError(f"{base}: {e.code} {why}") from None
    except (OSError, urllib.error.URLError) as e:
        raise NetbootdError(f"cannot reach {base}: {e}") from None


def get(args: argparse.Namespace, path: str, query: dict[str, str | None] | None = None) -> Any:
    return request(args, "GET", path, query)


def stream(args: argparse.Namespace, path: str,
           query: dict[str, str | None]) -> Iterator[dict[str, Any]]:
    """Server-sent events from `path` (the API's `events?follow=1`), one dict per event."""
    base = _server(args)
    q = urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
    req = urllib.request.Request(f"{base}{path}?{q}", headers={
        "Authorization": f"Bearer {_token(args)}", "Accept": "text/event-stream"})
    try:
        with urllib.request.urlopen(req, timeout=None, context=_context(args, base)) as r:
            for raw in r:
                line = raw.decode().rstrip("\n")
                if line.startswith("data: "):
                    yield json.loads(line[6:])
    except urllib.error.HTTPError as e:
        raise NetbootdError(f"{base}: {e.code} {e.reason}") from None
    except (OSError, urllib.error.URLError) as e:
        raise NetbootdError(f"cannot reach {base}: {e}") from None


def quote(part: str) -> str:
    return urllib.parse.quote(part, safe="")


def print_lines(answer: Any) -> int:
    """A write command's answer (actions.Outcome.json()): print its lines, as locally."""
    lines = answer.get("messages") if isinstance(answer, dict) else None
    if not isinstance(lines, list):
        raise NetbootdError("the server's answer has no messages")
    print("\n".join(str(x) for x in lines))
    return 0
