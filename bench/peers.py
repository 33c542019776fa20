"""Starting the servers under test inside a benchmark namespace: netbootd and its peers
(nginx, dnsmasq in proxyDHCP and TFTP mode, tftpd-hpa), each with a config written into the
run's work directory. Every server runs in the foreground as a child of the benchmark (so it is
stopped by its PID), logging to a file, with its own defaults otherwise."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from bench.common import BenchError, log
from testbed import REPO
from testbed.lab import netbootd_cli
from testbed.netns import Env
from testbed.procs import HarnessError, Proc, netns_argv, run, wait_for

DEB_PEERS = ("nginx", "dnsmasq-base", "tftpd-hpa", "atftp", "curl", "iproute2", "ipxe")


def ensure_peers(packages: tuple[str, ...] = DEB_PEERS) -> None:
    """Install the Debian packages of the peers when missing (as root on Debian)."""
    missing = [
        p
        for p in packages
        if "install ok installed"
        not in run(["dpkg-query", "-W", "-f=${Status}", p], check=False).stdout
    ]
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise BenchError(f"missing Debian packages: {' '.join(missing)} (run as root on Debian)")
    log(f"installing Debian packages: {' '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    r = run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
        check=False,
        env=env,
        timeout=600,
    )
    if r.returncode != 0:
        run(["apt-get", "update", "-qq"], env=env, timeout=600)
        run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
            env=env,
            timeout=600,
        )


def pinned(argv: list[str], cpu: int | None) -> list[str]:
    """argv run on one CPU (taskset), or as is."""
    return ["taskset", "-c", str(cpu), *argv] if cpu is not None else argv


def _ns_ok(ns: str, argv: list[str]) -> bool:
    return run(netns_argv(ns, argv), check=False, timeout=10).returncode == 0


def http_ready(ns: str, url: str) -> bool:
    return _ns_ok(ns, ["curl", "-sf", "-o", "/dev/null", "--max-time", "1", "--noproxy", "*", url])


def _wait_up(proc: Proc, cond: object, what: str, timeout: float = 30) -> None:
    def ok() -> bool:
        if not proc.alive():
            raise BenchError(f"{what} exited ({proc.popen.returncode}):\n{proc.log_tail(20)}")
        return bool(cond())  # type: ignore[operator]

    try:
        wait_for(ok, timeout, what, interval=0.1)
    except HarnessError as e:
        raise BenchError(f"{e}\n{proc.log_tail(20)}") from None


# ---------------------------------------------------------------------------------- netbootd


def netbootd(
    env: Env,
    ns: str,
    state: Path,
    name: str = "netbootd",
    *,
    http_port: int = 8080,
    interface: str | None = None,
    dhcp: bool = False,
    tftp_root: Path | None = None,
    tftp_port: int = 69,
    listen_check: str = "127.0.0.1",
    extra: list[str] | tuple[str, ...] = (),
    cpu: int | None = None,
) -> Proc:
    argv = [
        *netbootd_cli(),
        "--state-dir",
        str(state),
        "serve",
        "--http-port",
        str(http_port),
        *extra,
    ]
    if interface:
        argv += ["--interface", interface]
    if not dhcp:
        argv.append("--no-dhcp")
    if tftp_root is None:
        argv.append("--no-tftp")
    else:
        argv += ["--tftp-root", str(tftp_root), "--tftp-port", str(tftp_port)]
    p = env.spawn(name, pinned(argv, cpu), ns=ns, cwd=REPO)
    _wait_up(
        p, lambda: http_ready(ns, f"http://{listen_check}:{http_port}/healthz"), "netbootd /healthz"
    )
    if dhcp:  # its INFO line, or (log level warning) port 67 bound in the namespace
        _wait_up(
            p,
            lambda: "proxyDHCP listening" in p.log_path.read_text(errors="replace")
            or _udp_bound(ns, 67),
            "netbootd proxyDHCP",
        )
    if tftp_root is not None:
        _wait_up(
            p, lambda: "tftp: serving" in p.log_path.read_text(errors="replace"), "netbootd TFTP"
        )
    return p


# ---------------------------------------------------------------------------------- nginx


def nginx(env: Env, ns: str, root: Path, port: int, name: str = "nginx") -> Proc:
    """nginx with Debian's defaults that matter here (sendfile on, tcp_nopush on, access log on,
    worker_processes auto), serving `root` on `port`."""
    d = env.workdir / name
    d.mkdir(exist_ok=True)
    conf = d / "nginx.conf"
    conf.write_text(f"""
user root;
worker_processes auto;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 4096; }}
http {{
    sendfile on;
    tcp_nopush on;
    types_hash_max_size 2048;
    default_type application/octet-stream;
    access_log {d}/access.log;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen {port} reuseport;
        root {root};
        location / {{ }}
    }}
}}
""")
    p = env.spawn(name, ["nginx", "-c", str(conf), "-p", str(d), "-g", "daemon off;"], ns=ns)
    _wait_up(
        p,
        lambda: _ns_ok(
            ns,
            [
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "--max-time",
                "1",
                "--noproxy",
                "*",
                f"http://127.0.0.1:{port}/",
            ],
        ),
        "nginx",
    )
    return p


# ---------------------------------------------------------------------------------- dnsmasq


def dnsmasq_proxy(env: Env, ns: str, net: str, name: str = "dnsmasq-proxy") -> Proc:
    """dnsmasq as a proxyDHCP server only (no DNS, no addresses), like the reference recipe's
    MODE=proxy: `dhcp-range=<net>,proxy` + `pxe-service` lines. It answers ANY PXE client
    (dnsmasq has no per-MAC enrollment; netbootd stays silent for unknown MACs)."""
    d = env.workdir / name
    d.mkdir(exist_ok=True)
    conf = d / "dnsmasq.conf"
    conf.write_text(f"""port=0
interface=eth0
bind-interfaces
user=root
dhcp-range={net},proxy,255.255.255.0
dhcp-userclass=set:ipxe,iPXE
dhcp-match=set:ipxe,175
pxe-service=tag:!ipxe,x86PC,"chainload iPXE",undionly.kpxe
pxe-service=tag:!ipxe,X86-64_EFI,"chainload iPXE",ipxe.efi
pxe-service=tag:ipxe,x86PC,"script",http://{net[:-1]}1:8080/boot.ipxe
pxe-service=tag:ipxe,X86-64_EFI,"script",http://{net[:-1]}1:8080/boot.ipxe
log-facility={d}/dnsmasq.log
""")
    p = env.spawn(name, ["dnsmasq", "-C", str(conf), "-k", f"--pid-file={d}/dnsmasq.pid"], ns=ns)
    _wait_up(p, lambda: "proxy on subnet" in _read(d / "dnsmasq.log"), "dnsmasq proxyDHCP")
    return p


def dnsmasq_tftp(
    env: Env, ns: str, root: Path, name: str = "dnsmasq-tftp", cpu: int | None = None
) -> Proc:
    """dnsmasq's TFTP server on port 69 (its port cannot be changed), no DNS, no DHCP."""
    d = env.workdir / name
    d.mkdir(exist_ok=True)
    conf = d / "dnsmasq.conf"
    conf.write_text(f"""port=0
user=root
enable-tftp
tftp-root={root}
tftp-max=1024
log-facility={d}/dnsmasq.log
""")
    p = env.spawn(
        name, pinned(["dnsmasq", "-C", str(conf), "-k", f"--pid-file={d}/dnsmasq.pid"], cpu), ns=ns
    )
    _wait_up(p, lambda: "TFTP root is" in _read(d / "dnsmasq.log"), "dnsmasq TFTP")
    return p


def tftpd_hpa(
    env: Env, ns: str, root: Path, name: str = "tftpd-hpa", cpu: int | None = None
) -> Proc:
    """tftpd-hpa in the foreground, `--secure` root, on 0.0.0.0:69 of the namespace, as Debian's
    default config does. (With `--address 127.0.0.1:69` this build exits 66 without a word.)"""
    p = env.spawn(
        name,
        pinned(
            ["in.tftpd", "--foreground", "--listen", "--user", "root", "--secure", str(root)], cpu
        ),
        ns=ns,
    )
    _wait_up(p, lambda: _ns_ok(ns, ["sh", "-c", "ss -uln | grep -q ':69 '"]), "tftpd-hpa")
    return p


def _udp_bound(ns: str, port: int) -> bool:
    """Whether a UDP socket in namespace ns is bound to `port` (/proc/net/udp)."""
    text = run(netns_argv(ns, ["cat", "/proc/net/udp"]), check=False).stdout
    return f":{port:04X} " in text


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""
