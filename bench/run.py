"""`make bench` / `make bench-quick`: netbootd beside the servers users would otherwise run.

    python -m bench [--quick] [--only http,dhcp,flood,tftp,storm,vm] [--profile] [--out FILE]
                    [--keep]

Sections (each in network namespaces this run creates, named nbdbench-<pid>-<start>-..., and
removes at the end -- also on failure and Ctrl-C; a killed run's leftovers are removed at the
start of the next):

  http   64 clients x a 256 MiB initrd: netbootd vs nginx (same file, same inode), loopback;
         per-MAC iPXE scripts with 10,000 enrolled hosts: capacity and fixed-rate p50/p99
         (nginx serving the same scripts as static files, for reference)
  dhcp   firmware PXE DISCOVERs from 10,000 enrolled MACs over a veth pair: rising rates until
         replies are lost; p50/p99 at 1000/s; netbootd vs dnsmasq in proxy mode, 3 rounds
         alternating
  flood  valid enrolled clients' DISCOVERs (1,000/s) during a 20,000/s DHCP junk flood (random
         and unknown MACs, non-PXE DHCP, malformed packets: bench/dhcpflood.py), netbootd vs
         dnsmasq, 3 rounds alternating: answer rate, kernel drops, server CPU, log lines
  tftp   1 MiB (ipxe.efi-sized) and 32 MiB files, blksize 1468, with and without windowsize:
         netbootd vs dnsmasq vs tftpd-hpa (atftp client)
  storm  200 and 500 simulated PXE clients at once: DHCP -> 4011 -> TFTP -> iPXE DHCP ->
         script -> kernel -> initrd, against netbootd over a veth pair
  vm     median of 3 QEMU boots via netbootd vs the reference recipe's dnsmasq + python
         http.server, same kernel and initrd (the e2e lab: testbed/lab.py)

Writes a markdown report (bench/results/latest.md) and the raw numbers beside it (.json).
Exit status 1 when a benchmark broke (no replies, a download mismatch, a server that would not
start, a failed VM boot); missed goals are reported, not failures.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import peers
from bench.common import (
    PREFIX,
    BenchError,
    cpu_seconds_of,
    log,
    mac_for,
    machine_info,
    median,
    random_file,
    tool,
    tree_pids,
)
from testbed import REPO
from testbed.lab import netbootd_cli
from testbed.netns import Env, cleanup_stale, veth
from testbed.procs import OWNER, HarnessError, environ, netns_argv, run

MiB = 1 << 20


@dataclass
class Profile:
    name: str
    http_size: int = 256 * MiB
    http_clients: int = 64
    http_reps: int = 5
    hosts: int = 10_000
    script_rate: float = 500.0
    script_seconds: float = 10.0
    script_closed_seconds: float = 5.0
    dhcp_latency_rate: float = 1000.0
    dhcp_latency_seconds: float = 5.0
    dhcp_rates: str = (
        "500,1000,2000,4000,8000,12000,16000,20000,24000,28000,32000,40000,48000,56000,64000"
    )
    dhcp_step_seconds: float = 2.0
    dhcp_rounds: int = 3  # ladders per server, alternating which goes first
    dhcp_quiet_ladder: bool = True  # one more ladder: netbootd without its INFO line per answer
    flood_rate: float = 20_000.0  # junk packets/s (bench/dhcpflood.py MIX)
    flood_valid_rate: float = 1000.0  # valid enrolled clients' DISCOVERs/s during the flood
    flood_seconds: float = 10.0
    flood_rounds: int = 3
    tftp_files: tuple[tuple[str, int], ...] = (("ipxe.efi", 1 * MiB), ("big-32MiB.bin", 32 * MiB))
    tftp_reps: tuple[int, ...] = (15, 5)
    storm_clients: tuple[int, ...] = (200, 500)
    storm_kernel: int = 8 * MiB
    storm_initrd: int = 32 * MiB
    vm_boots: int = 3
    profile_seconds: float = 8.0


FULL = Profile("full")
QUICK = Profile(
    "quick",
    http_size=16 * MiB,
    http_clients=8,
    http_reps=1,
    hosts=1000,
    script_rate=200.0,
    script_seconds=2.0,
    script_closed_seconds=2.0,
    dhcp_latency_seconds=1.0,
    dhcp_rates="500,1000,2000,4000",
    dhcp_step_seconds=0.5,
    dhcp_rounds=1,
    dhcp_quiet_ladder=False,
    flood_seconds=2.0,
    flood_rounds=1,
    tftp_files=(("ipxe.efi", 1 * MiB),),
    tftp_reps=(3,),
    storm_clients=(20,),
    storm_kernel=1 * MiB,
    storm_initrd=4 * MiB,
    vm_boots=0,
    profile_seconds=3.0,
)

SECTIONS = ("http", "dhcp", "flood", "tftp", "storm", "vm")
NET = "10.213"  # the benchmark's veth networks (inside its own namespaces only)
SRV_IP = f"{NET}.0.1"
ROLE = "bench"


def _serve_extra() -> list[str]:
    """Options to pass `netbootd serve` so only the server under test runs (HTTPS, when this
    netbootd has it, is not part of these benchmarks)."""
    helptext = run([*netbootd_cli(), "serve", "--help"], cwd=REPO).stdout
    return ["--no-https"] if "--no-https" in helptext else []


class Bench:
    def __init__(self, prof: Profile, args: argparse.Namespace) -> None:
        self.p = prof
        self.args = args
        self.env = Env(PREFIX, keep=args.keep, stop_timeout=5.0, log=log)
        self.results: dict[str, Any] = {}
        self.broken: list[tuple[str, str]] = []
        self.durations: dict[str, float] = {}
        self.extra = _serve_extra()
        self.profiles: dict[str, Any] = {}

    # -- helpers ---------------------------------------------------------------------------

    def netbootd(self, ns: str, state: Path, name: str, **kw: Any) -> Any:
        return peers.netbootd(self.env, ns, state, name, extra=self.extra, **kw)

    def role(self, state: Path, kernel: Path, initrd: Path, hosts: int) -> dict[str, Any]:
        """`netbootd role add` (the CLI, as an operator does) + `hosts` enrolled via the
        Store API."""
        t = time.monotonic()
        run(
            [
                *netbootd_cli(),
                "--state-dir",
                str(state),
                "role",
                "add",
                ROLE,
                "--kernel",
                str(kernel),
                "--initrd",
                str(initrd),
                "--cmdline",
                "console=ttyS0 quiet",
            ],
            cwd=REPO,
            timeout=600,
        )
        t_role = time.monotonic() - t
        r = run(
            [
                sys.executable,
                "-m",
                "bench.enroll",
                "--state-dir",
                str(state),
                "--role",
                ROLE,
                "--hosts",
                str(hosts),
            ],
            cwd=REPO,
            timeout=600,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        return {"role_add_s": round(t_role, 2), **json.loads(r.stdout.strip().splitlines()[-1])}

    def profile_run(self, key: str, pid: int, areas: Any, work: Any) -> None:
        """py-spy netbootd (pid) while work() runs; the summary lands in self.profiles[key]."""
        from bench import profile

        if profile.py_spy() is None:
            self.profiles[key] = {"error": "py-spy not installed"}
            return
        raw = self.env.workdir / f"profile-{key}.raw"
        rec = profile.Recorder(pid, raw)
        time.sleep(0.5)
        t = time.monotonic()
        try:
            info = work()
        finally:
            rec.stop()
        summary = profile.summarize(raw, areas)
        summary["seconds"] = round(time.monotonic() - t, 1)
        summary["work"] = info
        self.profiles[key] = summary
        keep = REPO / "bench" / "results" / f"profile-{key}.txt"
        if self.args.save_profiles:
            shutil.copy(raw, keep)

    def want_profile(self, missed: bool) -> bool:
        return self.args.profile or (missed and self.p.name == "full" and not self.args.no_profile)

    # -- http --------------------------------------------------------------------------------

    def http(self) -> None:
        p, env = self.p, self.env
        ns = env.netns("http")
        d = env.workdir / "http"
        d.mkdir()
        kernel = random_file(d / "vmlinuz", 8 * MiB)
        initrd = random_file(d / "initrd.img", p.http_size)
        sha = _sha256(initrd)
        state = d / "state"
        setup = self.role(state, kernel, initrd, p.hosts)
        nb = self.netbootd(ns, state, "netbootd-http", http_port=8080)
        # The URL a booting host is given: from its rendered script.
        script = _ns_get(ns, f"http://127.0.0.1:8080/boot/{mac_for(0).replace(':', '-')}.ipxe")
        m = re.search(r"^initrd (?:--name \S+ )?(\S+)", script, re.MULTILINE)
        if not m:
            raise BenchError(f"no initrd line in netbootd's script:\n{script}")
        nb_url = m.group(1)
        www = d / "www"
        (www / "boot").mkdir(parents=True)
        art = state / "artifacts" / sha[:2] / sha
        os.link(art, www / "initrd0")  # nginx serves the very same inode
        for i in range(p.hosts):  # the same scripts, pre-rendered, as static files
            mac = mac_for(i)
            (www / "boot" / f"{mac.replace(':', '-')}.ipxe").write_text(
                script.replace(mac_for(0), mac)
            )
        ng = peers.nginx(env, ns, www, 8081)
        servers = {"netbootd": (nb_url, nb), "nginx": ("http://127.0.0.1:8081/initrd0", ng)}
        for name, (url, _proc) in servers.items():
            v = tool(ns, "httpload", "verify", "--url", url, "--sha256", sha, timeout=120)
            if not v["ok"]:
                raise BenchError(
                    f"{name} served {v['bytes']} bytes with sha256 {v['sha256'][:16]}..., "
                    f"expected {p.http_size} with {sha[:16]}... (status {v['status']})"
                )
        runs: dict[str, list[dict[str, Any]]] = {"netbootd": [], "nginx": []}
        for rep in range(p.http_reps):
            order = ["netbootd", "nginx"] if rep % 2 == 0 else ["nginx", "netbootd"]
            for name in order:
                url, proc = servers[name]
                c0 = cpu_seconds_of(tree_pids(proc.pid))
                r = tool(
                    ns,
                    "httpload",
                    "download",
                    "--url",
                    url,
                    "--clients",
                    str(p.http_clients),
                    "--size",
                    str(p.http_size),
                    "--timeout",
                    "600",
                    timeout=700,
                )
                r["server_cpu_s"] = cpu_seconds_of(tree_pids(proc.pid)) - c0
                if r["error_count"]:
                    raise BenchError(
                        f"{name}: {r['error_count']} of {p.http_clients} downloads failed: "
                        f"{r['errors'][:3]}"
                    )
                runs[name].append(r)
                log(f"http {name} rep {rep + 1}: {r['throughput_Bps'] / 1e9:.2f} GB/s")
        med = {n: median(r["throughput_Bps"] for r in runs[n]) for n in runs}
        # Each round measures both servers back to back: the median of the per-round ratios is
        # robust against the machine's load drifting between rounds.
        paired = [
            a["throughput_Bps"] / b["throughput_Bps"]
            for a, b in zip(runs["netbootd"], runs["nginx"], strict=True)
        ]
        gen_bytes = sum(r["bytes"] for n in runs for r in runs[n])
        gen_cpu = sum(r["generator_cpu_s"] for n in runs for r in runs[n])
        res: dict[str, Any] = {
            "setup": setup,
            "size": p.http_size,
            "clients": p.http_clients,
            "runs": runs,
            "median_Bps": med,
            "ratio": median(paired),
            "ratio_of_medians": med["netbootd"] / med["nginx"] if med["nginx"] else None,
            "paired_ratios": paired,
            "url": nb_url,
            "generator_ceiling_Bps": gen_bytes / gen_cpu if gen_cpu else None,
        }
        macs = d / "macs.txt"
        macs.write_text("".join(mac_for(i).replace(":", "-") + "\n" for i in range(p.hosts)))
        closed = tool(
            ns,
            "httpload",
            "closed",
            "--base",
            "http://127.0.0.1:8080",
            "--macs",
            str(macs),
            "--conns",
            "16",
            "--duration",
            str(p.script_closed_seconds),
            timeout=p.script_closed_seconds + 60,
        )
        if closed["error_count"] or not closed["ok"]:
            raise BenchError(f"netbootd script requests failed: {closed['errors'][:3]}")
        rate = {}
        for name, base in (
            ("netbootd", "http://127.0.0.1:8080"),
            ("nginx", "http://127.0.0.1:8081"),
        ):
            r = tool(
                ns,
                "httpload",
                "rate",
                "--base",
                base,
                "--macs",
                str(macs),
                "--rate",
                str(p.script_rate),
                "--duration",
                str(p.script_seconds),
                "--conns",
                "16",
                timeout=p.script_seconds + 60,
            )
            if r["error_count"] or not r["ok"]:
                raise BenchError(
                    f"{name} script requests failed: {r['error_count']} errors, e.g. "
                    f"{r['errors'][:3]}"
                )
            rate[name] = r
            log(
                f"scripts {name} at {p.script_rate:.0f}/s: p50 {r['p50_ms']:.2f} ms p99 "
                f"{r['p99_ms']:.2f} ms"
            )
        res["scripts"] = {"closed": closed, "rate": rate}
        self.results["http"] = res
        if self.want_profile(bool(res["ratio"] and res["ratio"] < 0.95)):
            url, proc = servers["netbootd"]
            self.profile_run(
                "http-artifacts",
                nb.pid,
                _areas("HTTP"),
                lambda: tool(
                    ns,
                    "httpload",
                    "download",
                    "--url",
                    url,
                    "--clients",
                    str(p.http_clients),
                    "--size",
                    str(p.http_size),
                    timeout=700,
                ),
            )
        if self.args.profile or self.p.name == "full":
            self.profile_run(
                "http-scripts",
                nb.pid,
                _areas("HTTP"),
                lambda: tool(
                    ns,
                    "httpload",
                    "closed",
                    "--base",
                    "http://127.0.0.1:8080",
                    "--macs",
                    str(macs),
                    "--conns",
                    "16",
                    "--duration",
                    str(self.p.profile_seconds),
                    timeout=self.p.profile_seconds + 60,
                ),
            )
        env.stop(nb)
        env.stop(ng)

    # -- dhcp --------------------------------------------------------------------------------

    def dhcp(self) -> None:
        p, env = self.p, self.env
        srv, cli = env.netns("dhcpsrv"), env.netns("dhcpcli")
        veth(srv, cli, f"{SRV_IP}/16", f"{NET}.0.2/16")
        d = env.workdir / "dhcp"
        d.mkdir()
        state = d / "state"
        setup = self.role(
            state, random_file(d / "vmlinuz", MiB), random_file(d / "initrd", MiB), p.hosts
        )
        res: dict[str, Any] = {"setup": setup, "rounds": []}
        starts = self._dhcp_servers(srv, state)
        # Rounds alternate which server goes first; each round measures both back to back, and
        # the ratio reported is the median of the per-round ratios (the machine is shared).
        runs: dict[str, list[dict[str, Any]]] = {"netbootd": [], "dnsmasq": []}
        for rnd in range(p.dhcp_rounds):
            order = ["netbootd", "dnsmasq"] if rnd % 2 == 0 else ["dnsmasq", "netbootd"]
            for name in order:
                proc = starts[name](f"{rnd}")
                runs[name].append(self._dhcp_run(
                    cli, srv, proc.pid, name, expect_file="ipxe.efi" if name == "netbootd" else None
                ))
                env.stop(proc)
            a, b = runs["netbootd"][-1], runs["dnsmasq"][-1]
            res["rounds"].append({
                "netbootd": a["max_rate_no_loss"], "dnsmasq": b["max_rate_no_loss"],
                "ratio": a["max_rate_no_loss"] / b["max_rate_no_loss"]
                if b["max_rate_no_loss"] else None,
            })
        for name, rr in runs.items():  # the round with the median max rate stands for the server
            res[name] = sorted(rr, key=lambda r: r["max_rate_no_loss"])[(len(rr) - 1) // 2]
            res[name]["max_rates"] = [r["max_rate_no_loss"] for r in rr]
        ratios = [r["ratio"] for r in res["rounds"] if r["ratio"] is not None]
        res["ratio"] = median(ratios) if ratios else None
        if p.dhcp_quiet_ladder:
            # what the INFO line per answer costs: netbootd once more with log_level warning
            conf = d / "quiet.toml"
            conf.write_text('log_level = "warning"\n')
            proc = _with_env(
                {"NETBOOTD_CONFIG": str(conf)},
                lambda: self.netbootd(
                    srv, state, "netbootd-dhcp-quiet", interface="eth0", dhcp=True,
                    listen_check=SRV_IP
                ),
            )
            res["netbootd_quiet"] = self._dhcp_run(cli, srv, proc.pid, "netbootd (warning)",
                                                   expect_file="ipxe.efi")
            env.stop(proc)
        self.results["dhcp"] = res
        lat = res["netbootd"]["latency"]
        missed = (res["ratio"] or 0) < 1.0 or not (lat["p99_ms"] < 5.0)
        if self.want_profile(missed):
            nb = self.netbootd(
                srv,
                state,
                "netbootd-dhcp-profile",
                interface="eth0",
                dhcp=True,
                listen_check=SRV_IP,
            )
            rate = max(500.0, min(2000.0, res["netbootd"]["max_rate_no_loss"] or 1000.0))
            self.profile_run(
                "dhcp",
                nb.pid,
                _areas("DHCP"),
                lambda: tool(
                    cli,
                    "dhcpload",
                    "--hosts",
                    str(p.hosts),
                    "--latency-rate",
                    str(rate),
                    "--latency-seconds",
                    str(p.profile_seconds),
                    "--rates",
                    "none",
                    timeout=p.profile_seconds + 60,
                )["latency"],
            )
            env.stop(nb)
            try:
                res["micro_us"] = json.loads(
                    run(
                        [sys.executable, "-m", "bench.micro", "--hosts", str(p.hosts)],
                        cwd=REPO,
                        timeout=300,
                    )
                    .stdout.strip()
                    .splitlines()[-1]
                )
            except (HarnessError, ValueError, IndexError) as e:
                res["micro_us"] = {"error": str(e)[:300]}

    def _dhcp_servers(self, srv: str, state: Path) -> dict[str, Any]:
        """name -> start(tag) of each proxyDHCP server under test (one at a time: port 67)."""
        return {
            "netbootd": lambda tag: self.netbootd(
                srv, state, f"netbootd-dhcp-{tag}", interface="eth0", dhcp=True,
                listen_check=SRV_IP
            ),
            "dnsmasq": lambda tag: peers.dnsmasq_proxy(
                self.env, srv, f"{NET}.0.0", name=f"dnsmasq-proxy-{tag}"
            ),
            # netbootd as it runs where it cannot load its eBPF filter (no CAP_BPF)
            "netbootd-userspace": lambda tag: _with_env(
                {"NETBOOTD_DHCP_BPF": "0"},
                lambda: self.netbootd(
                    srv, state, f"netbootd-dhcp-us-{tag}", interface="eth0", dhcp=True,
                    listen_check=SRV_IP
                ),
            ),
        }

    # -- flood -------------------------------------------------------------------------------

    def flood(self) -> None:
        """Valid clients during a junk flood (bench/dhcpflood.py), each server in turn, rounds
        alternating which goes first."""
        p, env = self.p, self.env
        srv, cli = env.netns("floodsrv"), env.netns("floodcli")
        veth(srv, cli, f"{SRV_IP}/16", f"{NET}.0.2/16")
        d = env.workdir / "flood"
        d.mkdir()
        state = d / "state"
        setup = self.role(
            state, random_file(d / "vmlinuz", MiB), random_file(d / "initrd", MiB), p.hosts
        )
        starts = self._dhcp_servers(srv, state)
        names = ["netbootd", "netbootd-userspace", "dnsmasq"]
        runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
        for rnd in range(p.flood_rounds):
            order = names[rnd % 3 :] + names[: rnd % 3]  # each server goes first once
            for name in order:
                proc = starts[name](f"flood-{rnd}")
                log_file = proc.log_path if name.startswith("netbootd") else (
                    env.workdir / f"dnsmasq-proxy-flood-{rnd}" / "dnsmasq.log")
                time.sleep(0.5)
                lines0 = _lines(log_file)
                pids = tree_pids(proc.pid)
                c0, u0, t0 = cpu_seconds_of(pids), _udp_errors(srv), time.monotonic()
                w0 = _sched_wait(proc.pid)
                r = tool(
                    cli, "dhcpflood", "--hosts", str(p.hosts), "--flood-rate", str(p.flood_rate),
                    "--valid-rate", str(p.flood_valid_rate), "--seconds", str(p.flood_seconds),
                    timeout=p.flood_seconds + 120,
                )
                r["server_cpu_s"] = cpu_seconds_of(pids) - c0
                r["server_cpu_share"] = r["server_cpu_s"] / r["send_s"] if r["send_s"] else None
                r["server_udp_rcvbuf_errors"] = _udp_errors(srv) - u0
                r["server_cpu_wait_ms"] = (_sched_wait(proc.pid) - w0) / 1e6
                r["tool_wall_s"] = time.monotonic() - t0
                r["load_average"] = Path("/proc/loadavg").read_text().split()[0]
                r["log_lines"] = _lines(log_file) - lines0
                env.stop(proc)
                if name.startswith("netbootd"):
                    r["server_drops"] = _drop_summaries(log_file)
                if r["bad"]:
                    raise BenchError(f"{name}: {r['bad']} bad replies under the flood")
                runs[name].append(r)
                log(
                    f"flood {name} round {rnd + 1}: {r['achieved_rate']:,.0f} packets/s sent, "
                    f"{r['answer_rate']:.1%} of {r['valid_sent']} valid answered, kernel drops "
                    f"{r['server_udp_rcvbuf_errors']}, server CPU {r['server_cpu_share']:.0%}"
                )
        out: dict[str, Any] = {"runs": runs, "median": {}}
        for name, rr in runs.items():
            out["median"][name] = {
                k: median(float(r[k]) for r in rr if r.get(k) is not None)
                for k in ("answer_rate", "achieved_rate", "server_udp_rcvbuf_errors",
                          "server_cpu_share", "p50_ms", "p99_ms", "log_lines", "junk_replies",
                          "server_cpu_wait_ms", "generator_cpu_s")
            }
        out["setup"] = setup
        self.results["flood"] = out
        if min((r["answer_rate"] or 0) for r in runs["netbootd"]) == 0:
            raise BenchError("netbootd answered no valid client under the flood")

    def _dhcp_run(
        self, cli: str, srv: str, pid: int, name: str, expect_file: str | None
    ) -> dict[str, Any]:
        p = self.p
        common = ["--hosts", str(p.hosts)]
        # 1. latency at a fixed rate, alone, with the server's CPU-wait (schedstat) and CPU
        # time around it
        w0 = _sched_wait(pid)
        c0 = cpu_seconds_of(tree_pids(pid))
        lat_run = tool(
            cli,
            "dhcpload",
            *common,
            "--latency-rate",
            str(p.dhcp_latency_rate),
            "--latency-seconds",
            str(p.dhcp_latency_seconds),
            "--rates",
            "none",
            timeout=p.dhcp_latency_seconds + 120,
        )
        lat_run["latency"]["server_cpu_wait_ms"] = (_sched_wait(pid) - w0) / 1e6
        replied = lat_run["latency"]["replies"] + (lat_run["warmup"] or {}).get("replies", 0)
        lat_run["latency"]["server_cpu_us_per_reply"] = (
            (cpu_seconds_of(tree_pids(pid)) - c0) / replied * 1e6 if replied else None
        )
        time.sleep(0.5)
        # 2. the rising ladder
        before = _udp_errors(srv)
        r = tool(
            cli,
            "dhcpload",
            *common,
            "--latency-seconds",
            "0",
            "--warmup",
            "0",
            "--rates",
            p.dhcp_rates,
            "--step-seconds",
            str(p.dhcp_step_seconds),
            timeout=900,
        )
        r["server_udp_rcvbuf_errors"] = _udp_errors(srv) - before
        r["latency"] = lat = lat_run["latency"]
        r["warmup"] = lat_run["warmup"]
        for k, v in lat_run["files"].items():
            r["files"][k] = r["files"].get(k, 0) + v
        r["bad"] += lat_run["bad"]
        if not lat["replies"]:
            raise BenchError(f"{name}: no replies to {lat['sent']} DISCOVERs")
        if r["bad"]:
            raise BenchError(f"{name}: {r['bad']} replies with the wrong chaddr or message type")
        if expect_file is not None and set(r["files"]) != {expect_file}:
            raise BenchError(f"{name}: replies name {r['files']}, expected only {expect_file}")
        log(
            f"dhcp {name}: max {r['max_rate_no_loss']:.0f}/s without loss ({r['stopped']}); at "
            f"{lat['rate']:.0f}/s p50 {lat['p50_ms']:.2f} ms p99 {lat['p99_ms']:.2f} ms"
        )
        return r

    # -- tftp --------------------------------------------------------------------------------

    def tftp(self) -> None:
        p, env = self.p, self.env
        ns = env.netns("tftp")
        root = env.workdir / "tftp-root"
        root.mkdir()
        files = []
        for name, size in p.tftp_files:
            files.append((name, size, _sha256(random_file(root / name, size))))
        (root / "tiny.bin").write_bytes(b"x")
        cpu = (os.cpu_count() or 1) - 1  # server and client share one CPU: see bench/tftpload.py
        servers = [
            (
                "netbootd",
                lambda: self.netbootd(
                    ns,
                    env.workdir / "tftp-state",
                    "netbootd-tftp",
                    tftp_root=root,
                    http_port=8080,
                    cpu=cpu,
                ),
            ),
            ("dnsmasq", lambda: peers.dnsmasq_tftp(env, ns, root, cpu=cpu)),
            ("tftpd-hpa", lambda: peers.tftpd_hpa(env, ns, root, cpu=cpu)),
        ]
        res: dict[str, Any] = {"files": [(n, s) for n, s, _ in files], "runs": {}, "cpu": cpu}
        for sname, start in servers:
            proc = start()
            res["runs"][sname] = {}
            for (fname, size, sha), reps in zip(files, p.tftp_reps, strict=True):
                for ws in (None, 8):
                    a = [
                        "--file",
                        fname,
                        "--size",
                        str(size),
                        "--sha256",
                        sha,
                        "--reps",
                        str(reps),
                        "--floor-file",
                        "tiny.bin",
                        "--cpu",
                        str(cpu),
                    ]
                    if ws:
                        a += ["--windowsize", str(ws)]
                    r = tool(ns, "tftpload", *a, timeout=600)
                    if not r["verified"]:
                        raise BenchError(
                            f"{sname}: {fname} arrived as {r['got_bytes']} bytes that do not match"
                        )
                    res["runs"][sname][f"{fname}|{ws or '-'}"] = r
                    log(
                        f"tftp {sname} {fname} ws={ws or '-'}: {r['median_s'] * 1e3:.1f} ms "
                        f"(granted {r['granted']})"
                    )
            if sname == "netbootd" and self.want_profile(True) and len(files) > 1:
                fname, size, sha = files[-1]
                targs = ["--file", fname, "--size", str(size), "--sha256", sha, "--reps", "3"]
                targs += ["--cpu", str(cpu)]
                self.profile_run(
                    "tftp",
                    proc.pid,
                    _areas("TFTP"),
                    lambda targs=targs: tool(ns, "tftpload", *targs, timeout=300),
                )
            env.stop(proc)
        self.results["tftp"] = res

    # -- storm -------------------------------------------------------------------------------

    def storm(self) -> None:
        p, env = self.p, self.env
        srv, cli = env.netns("stormsrv"), env.netns("stormcli")
        veth(srv, cli, f"{SRV_IP}/16", f"{NET}.0.2/16")
        from bench.storm import client_ip

        n_max = max(p.storm_clients)
        batch = env.workdir / "storm-addrs"
        batch.write_text("".join(f"addr add {client_ip(i)}/16 dev eth0\n" for i in range(n_max)))
        run(["ip", "-n", cli, "-batch", str(batch)])
        d = env.workdir / "storm"
        d.mkdir()
        state = d / "state"
        setup = self.role(
            state,
            random_file(d / "vmlinuz", p.storm_kernel),
            random_file(d / "initrd", p.storm_initrd),
            max(n_max, p.hosts),
        )
        troot = d / "tftp"
        troot.mkdir()
        src = Path("/usr/lib/ipxe/undionly.kpxe")
        if not src.exists():
            raise BenchError("/usr/lib/ipxe/undionly.kpxe missing (Debian package ipxe)")
        shutil.copy(src, troot / "undionly.kpxe")
        nb = self.netbootd(
            srv,
            state,
            "netbootd-storm",
            interface="eth0",
            dhcp=True,
            listen_check=SRV_IP,
            tftp_root=troot,
        )
        res: dict[str, Any] = {
            "setup": setup,
            "kernel": p.storm_kernel,
            "initrd": p.storm_initrd,
            "tftp_file": ("undionly.kpxe", src.stat().st_size),
            "runs": {},
        }
        for n in p.storm_clients:
            before = _udp_errors(srv)
            r = tool(
                cli,
                "storm",
                "--server",
                SRV_IP,
                "--clients",
                str(n),
                "--tftp-sha256",
                _sha256(troot / "undionly.kpxe"),
                "--kernel-size",
                str(p.storm_kernel),
                "--initrd-size",
                str(p.storm_initrd),
                "--timeout",
                "600",
                timeout=700,
            )
            r["server_udp_rcvbuf_errors"] = _udp_errors(srv) - before
            res["runs"][str(n)] = r
            log(
                f"storm {n}: {r['ok']} booted, {r['failed']} failed {r['failed_by_step']}, "
                f"{r['wall_s']:.1f} s, retransmissions {r['retransmits']}"
            )
            if r["ok"] == 0 or (self.p.name == "quick" and r["failed"]):
                raise BenchError(f"storm of {n}: {r['failed']} clients failed: {r['examples']}")
        env.stop(nb)
        self.results["storm"] = res

    # -- vm ----------------------------------------------------------------------------------

    def vm(self) -> None:
        from bench import vmboot

        self.results["vm"] = vmboot.compare(self.env.workdir / "vm", self.p.vm_boots)
        if self.results["vm"].get("broken"):
            raise BenchError(self.results["vm"]["broken"])


def _areas(kind: str) -> Any:
    from bench import profile

    return {"DHCP": profile.AREAS_DHCP, "TFTP": profile.AREAS_TFTP, "HTTP": profile.AREAS_HTTP}[
        kind
    ]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 * MiB):
            h.update(chunk)
    return h.hexdigest()


def _ns_get(ns: str, url: str) -> str:
    return run(netns_argv(ns, ["curl", "-sf", "--noproxy", "*", "--max-time", "10", url])).stdout


def _with_env(extra: dict[str, str], fn: Any) -> Any:
    """fn() with `extra` in os.environ (what a server spawned by it inherits)."""
    with environ(extra):
        return fn()


def _udp_errors(ns: str) -> int:
    """Udp RcvbufErrors in namespace ns: datagrams the kernel dropped because a socket's receive
    buffer was full."""
    text = run(netns_argv(ns, ["cat", "/proc/net/snmp"])).stdout
    rows = [line.split() for line in text.splitlines() if line.startswith("Udp:")]
    return int(rows[1][rows[0].index("RcvbufErrors")])


def _lines(path: Path | None) -> int:
    try:
        return path.read_bytes().count(b"\n") if path is not None else 0
    except OSError:
        return 0


def _drop_summaries(path: Path | None) -> dict[str, int]:
    """The totals of netbootd's "proxyDHCP dropped N datagrams ...: reason n, ..." lines."""
    out: dict[str, int] = {}
    text = path.read_text(errors="replace") if path is not None else ""
    for m in re.finditer(r"proxyDHCP dropped \d+ datagrams[^:]*: ([^\n(]*)", text):
        for part in m.group(1).split(","):
            reason, _, n = part.strip().rpartition(" ")
            if n.isdigit():
                out[reason] = out.get(reason, 0) + int(n)
    return out


def _sched_wait(pid: int) -> int:
    """Nanoseconds the process's threads have waited on a run queue (for a CPU), /proc schedstat."""
    total = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError, IndexError, ValueError):
                total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[1])
    except OSError:
        pass
    return total


def _git_state() -> str:
    head = run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], check=False).stdout.strip()
    dirty = run(
        ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no", "--", "netbootd"],
        check=False,
    ).stdout.strip()
    return head + (" + uncommitted changes in netbootd/" if dirty else "")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--quick", action="store_true", help="small sizes, few clients, no VM boot (CI)"
    )
    ap.add_argument("--only", help=f"comma-separated subset of {','.join(SECTIONS)}")
    ap.add_argument("--skip", help="comma-separated sections to leave out")
    ap.add_argument("--profile", action="store_true", help="py-spy netbootd in every section")
    ap.add_argument(
        "--no-profile", action="store_true", help="no py-spy, even where a goal is missed"
    )
    ap.add_argument(
        "--save-profiles", action="store_true", help="keep raw py-spy stacks in bench/results/"
    )
    ap.add_argument(
        "--out",
        type=Path,
        help="markdown report (default bench/results/latest.md; quick: bench/results/quick.md)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, configs)")
    ap.add_argument(
        "--no-install", action="store_true", help="do not apt-get install missing peers"
    )
    ap.add_argument(
        "--vm-boots", type=int, help="VM boots per side (full: 3, quick: 0 = no VM section)"
    )
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench: needs root (network namespaces, raw sockets, ports 67/69)", file=sys.stderr)
        return 2
    prof = QUICK if args.quick else FULL
    chosen = [
        s
        for s in (args.only.split(",") if args.only else SECTIONS)
        if s not in (args.skip or "").split(",")
    ]
    unknown = set(chosen) - set(SECTIONS)
    if unknown:
        ap.error(f"unknown sections: {', '.join(sorted(unknown))}")
    if "vm" in chosen and args.vm_boots is not None:
        prof.vm_boots = args.vm_boots
    if prof.vm_boots == 0 and "vm" in chosen:
        chosen.remove("vm")
    out = args.out or REPO / "bench" / "results" / ("quick.md" if args.quick else "latest.md")
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    t_all = time.monotonic()
    for ns in cleanup_stale(PREFIX, log):
        log(f"removed leftover {ns}")
    if not args.no_install:
        peers.ensure_peers()
    machine = machine_info()
    machine["netbootd"] = _git_state()
    bench = Bench(prof, args)
    log(f"{prof.name} run {OWNER}: sections {', '.join(chosen)}; work dir {bench.env.workdir}")
    interrupted = False
    try:
        for name in chosen:
            t = time.monotonic()
            log(f"== {name}")
            try:
                getattr(bench, name)()
            except HarnessError as e:  # BenchError, or a command or a wait of testbed's
                bench.broken.append((name, str(e)))
                log(f"{name} BROKEN: {e}")
            except Exception as e:  # noqa: BLE001 (any failure of a section is reported; the run goes on)
                bench.broken.append((name, f"{type(e).__name__}: {e}"))
                log(f"{name} BROKEN: {type(e).__name__}: {e}")
                traceback.print_exc()
            finally:
                bench.durations[name] = time.monotonic() - t
                for p in list(bench.env.procs):  # a section's servers never outlive it
                    bench.env.stop(p)
                bench.env.drop_namespaces()
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted: cleaning up")
    finally:
        bench.env.close()
    total = time.monotonic() - t_all
    from bench import report

    data = {
        "profile": asdict(prof),
        "machine": machine,
        "results": bench.results,
        "broken": bench.broken,
        "durations": bench.durations,
        "total_s": total,
        "profiles": bench.profiles,
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "sections": chosen,
    }
    text = report.render(data)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    out.with_suffix(".json").write_text(json.dumps(data, indent=1, default=str))
    print(text)
    log(f"wrote {out} ({total:.0f} s)")
    if interrupted:
        return 130
    if bench.broken:
        for name, why in bench.broken:
            print(f"bench: {name} broke: {why}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
