"""Fixtures shared by unit and integration tests."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from testbed.procs import stop_popen

REPO = Path(__file__).resolve().parent.parent


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Cli:
    state_dir: Path
    transcript: list[str] = field(default_factory=list)  # every stdout + stderr, for log scans

    def run(self, *args: str, check: bool = True, **kw) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "NETBOOTD_STATE_DIR": str(self.state_dir)}
        env.pop("NETBOOTD_CONFIG", None)
        p = subprocess.run(
            [sys.executable, "-m", "netbootd", *args],
            capture_output=True, text=True, env=env, timeout=60, **kw,
        )
        self.transcript += [p.stdout, p.stderr]
        if check and p.returncode != 0:
            raise AssertionError(f"netbootd {' '.join(args)} failed ({p.returncode}):\n{p.stderr}")
        return p

    def json(self, *args: str):
        return json.loads(self.run(*args, "--json").stdout)


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path / "state")


@pytest.fixture
def role_files(tmp_path: Path) -> tuple[Path, Path]:
    k, i = tmp_path / "vmlinuz", tmp_path / "initrd.img"
    k.write_bytes(os.urandom(1 << 20))
    i.write_bytes(os.urandom(300_000))
    return k, i


@dataclass
class Daemon:
    proc: subprocess.Popen[str]
    port: int
    log: Path
    https_port: int = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def https_base(self) -> str:
        return f"https://127.0.0.1:{self.https_port}"

    def get(self, path: str, headers: dict[str, str] | None = None):
        req = urllib.request.Request(self.base + path, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, r.headers, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers, e.read()

    def post_json(self, path: str, body: object):
        data = json.dumps(body).encode() if not isinstance(body, bytes) else body
        req = urllib.request.Request(self.base + path, data=data, method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")


def start_daemon(
    cli: Cli, log: Path, *extra: str, config: Path | None = None, verbose: bool = False
) -> Daemon:
    """`netbootd serve` (HTTP + HTTPS on ephemeral ports, no DHCP/TFTP) as a subprocess,
    returned once /healthz answers. Stop it with stop_daemon()."""
    port, https_port = free_port(), free_port()
    env = {**os.environ, "NETBOOTD_STATE_DIR": str(cli.state_dir)}
    env.pop("NETBOOTD_CONFIG", None)
    glob = (["--config", str(config)] if config else []) + (["-v"] if verbose else [])
    with log.open("w") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "netbootd", *glob, "serve", "--no-dhcp", "--no-tftp",
             "--http-port", str(port), "--https-port", str(https_port), *extra],
            stdout=f, stderr=subprocess.STDOUT, env=env, text=True,
        )
    d = Daemon(proc, port, log, https_port)
    deadline = time.monotonic() + 20
    while True:
        try:
            if d.get("/healthz")[0] == 200:
                break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise AssertionError(f"netbootd did not start:\n{log.read_text()}")
        time.sleep(0.05)
    return d


def stop_daemon(d: Daemon) -> None:
    stop_popen(d.proc, 10)


@pytest.fixture
def browser() -> Iterator[Any]:
    """Debian's headless Chromium (testbed/browser.py), quit after the test."""
    from testbed.browser import chromium

    driver = chromium()
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def daemon(cli: Cli, tmp_path: Path) -> Iterator[Daemon]:
    """The real `netbootd serve` (HTTP + HTTPS, loopback, ephemeral ports) as a subprocess."""
    d = start_daemon(cli, tmp_path / "serve.log")
    try:
        yield d
    finally:
        stop_daemon(d)
