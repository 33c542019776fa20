"""`make fuzz`: the long hostile-LAN run (issue #13), figures to bench/results/fuzz.md + .json.

    python -m bench.fuzz [--quick] [--seconds N] [--only dhcp,tftp,http,flood,db,amp,props,kill]

What it measures, against whatever the code of this checkout does (other engineers are changing
the DHCP pre-filter, the rate limits and the retention while this is written: the figures are
the code's, not targets):

- packets per protocol sent by the fuzzers of testbed/fuzz.py (mutated valid requests,
  truncations, random bytes, the issue's hostile cases) at `netbootd serve` in a namespace;
  crashes (the daemon died: must be 0), tracebacks in its log (all, and those with a netbootd
  frame), RSS before/after, whether each valid client is answered afterwards;
- valid-client answer rate under a DHCP junk flood (the issue's 20,000 packets/s), and the
  flood rate the generator reached on this machine;
- DB growth per 10,000 unauthenticated requests (booted with a 15 KB field, provisioned with a
  bad token, the armed host's script, an identity URL with a made-up token);
- TFTP amplification toward sources that never ACK: bytes sent back per request byte, from 64
  addresses with one RRQ each (spoofed sources) and from one address with 64;
- the codec property tests with the `fuzz` Hypothesis profile, and the kill -9 suite with more
  kills (pytest, as subprocesses; their summary lines are recorded).

Root only (namespaces). Everything is bounded by count and time; the namespaces are the
bench's own (nbdfuzz-<pid>-<starttime>-...), removed at the end and after a killed run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import time
from typing import Any

from bench.common import machine_info
from testbed import REPO, fuzz
from testbed.netns import Env, cleanup_stale, in_netns, ip
from testbed.procs import logger

PREFIX = "nbdfuzz"
RESULTS = REPO / "bench" / "results"
log = logger("fuzz")


def protocol_run(lab: fuzz.FuzzLab, protocol: str, seconds: float, packets: int,
                 rng: random.Random) -> dict[str, Any]:
    rss0, tb0, udp0 = lab.rss_kb(), lab.tracebacks(), lab.udp_counters()
    t0 = time.monotonic()
    sent = fuzz.blast(lab, protocol, rng, packets, seconds)
    took = time.monotonic() - t0
    time.sleep(2)  # let it drain
    answered = {p: any(probe(lab) for _ in range(5)) for p, probe in fuzz.PROBES.items()}
    tb1, udp1 = lab.tracebacks(), lab.udp_counters()
    return {
        "udp_delivered": udp1["delivered"] - udp0["delivered"] if protocol != "http" else None,
        "udp_dropped_rcvbuf": udp1["dropped"] - udp0["dropped"] if protocol != "http" else None,
        "packets": sum(s.packets for s in sent), "bytes": sum(s.bytes for s in sent),
        "seconds": round(took, 1), "send_errors": sum(s.errors for s in sent),
        "alive": lab.alive, "tracebacks": tb1[0] - tb0[0], "netbootd_tracebacks": tb1[1] - tb0[1],
        "peer_gone_tracebacks": tb1[2] - tb0[2],
        "rss_kb_before": rss0, "rss_kb_after": lab.rss_kb() if lab.alive else None,
        "valid_clients_answered": answered,
    }


def flood_run(lab: fuzz.FuzzLab, rate: float, seconds: float, probes: int) -> dict[str, Any]:
    """The flood twice: probes from an enrolled MAC the junk never names (fuzz.ARMED), then
    from the one a third of the junk spoofs (fuzz.ENROLLED: its mutated requests are answered
    like its own, so its probes compete with them, and the replies to them, all broadcast to
    port 68, fill the probing socket too)."""
    out: dict[str, Any] = {}
    for key, mac in (("unspoofed", fuzz.ARMED), ("spoofed", fuzz.ENROLLED)):
        udp0, cli0 = lab.udp_counters(), lab.udp_counters(lab.cli)
        run = _flood(lab, rate, seconds, probes, mac)
        udp1, cli1 = lab.udp_counters(), lab.udp_counters(lab.cli)
        run["udp_delivered"] = udp1["delivered"] - udp0["delivered"]
        run["udp_dropped_rcvbuf"] = udp1["dropped"] - udp0["dropped"]
        run["client_udp_delivered"] = cli1["delivered"] - cli0["delivered"]
        run["client_udp_dropped_rcvbuf"] = cli1["dropped"] - cli0["dropped"]
        out[key] = run
    return out


def _flood(lab: fuzz.FuzzLab, rate: float, seconds: float, probes: int, mac: str
           ) -> dict[str, Any]:
    """A DHCP junk flood at `rate`/s for `seconds` on port 67 from one thread of the client
    namespace, while another sends `probes` valid DISCOVERs of enrolled host `mac`."""
    import threading

    box: dict[str, Any] = {}

    def flood() -> None:
        rng = random.Random(20000)
        box["sent"] = fuzz.blast_udp(lab, 67, fuzz.dhcp_junk(rng), int(rate * seconds),
                                     seconds, rate=rate)

    t = threading.Thread(target=flood)
    t.start()
    time.sleep(min(1.0, seconds / 4))
    got = fuzz.dhcp_probes(lab, probes, wait=3.0, mac=mac)
    t.join()
    sent = box["sent"]
    return {"target_rate": rate, "achieved_rate": round(sent.packets / max(sent.seconds, 1e-9)),
            "flood_packets": sent.packets, "probes": probes, "answered": got,
            "answer_rate": round(got / probes, 3), "alive": lab.alive}


def db_run(lab: fuzz.FuzzLab, count: int, seconds: float) -> dict[str, Any]:
    before = lab.db_bytes()
    sent = fuzz.unauthenticated(lab, count, seconds)
    time.sleep(1)
    after = lab.db_bytes()
    per_10k = (after - before) * 10_000 / max(sent.packets, 1)
    return {"requests": sent.packets, "errors": sent.errors, "seconds": round(sent.seconds, 1),
            "db_bytes_before": before, "db_bytes_after": after,
            "growth_per_10k_bytes": round(per_10k), "alive": lab.alive}


def amplification(lab: fuzz.FuzzLab, sources: int, per_source: int, watch: float) -> dict:
    """RRQs (22 bytes, no options: the first reply is a 516-byte DATA) that are never ACKed;
    bytes received back within `watch` seconds, per byte sent."""
    addrs = [f"10.213.9.{10 + i}" for i in range(sources)]
    for a in addrs:
        ip("addr", "add", f"{a}/24", "dev", "eth0", ns=lab.cli)

    def go() -> dict[str, Any]:
        socks = []
        sent = got = packets_back = 0
        rrq = fuzz.tftp_rrq(fuzz.TFTP_FILE.encode())
        for a in addrs:
            for _ in range(per_source):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.bind((a, 0))
                s.setblocking(False)
                s.sendto(rrq, (fuzz.SRV_IP, 69))
                sent += len(rrq)
                socks.append(s)
        end = time.monotonic() + watch
        while time.monotonic() < end:
            time.sleep(0.05)
            for s in socks:
                while True:
                    try:
                        got += len(s.recv(70000))
                        packets_back += 1
                    except BlockingIOError:
                        break
        for s in socks:
            s.close()
        return {"sources": sources, "requests_per_source": per_source,
                "request_bytes": sent, "bytes_back": got, "packets_back": packets_back,
                "amplification": round(got / sent, 1),
                "packets_back_per_request": round(packets_back / (sources * per_source), 2)}

    try:
        return in_netns(lab.cli, go)
    finally:
        for a in addrs:
            ip("addr", "del", f"{a}/24", "dev", "eth0", ns=lab.cli)


def pytest_run(args: list[str], env: dict[str, str], timeout: float) -> dict[str, Any]:
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
                       cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True,
                       timeout=timeout, check=False)
    lines = [x for x in p.stdout.splitlines() if x.strip()]
    return {"args": args, "env": env, "returncode": p.returncode,
            "summary": lines[-1] if lines else "", "seconds": round(time.monotonic() - t0, 1)}


def write(results: dict[str, Any]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "fuzz.json").write_text(json.dumps(results, indent=1) + "\n")
    out = [f"# netbootd hostile-LAN fuzz run (issue #13){' (quick)' if results['quick'] else ''}",
           "", f"{results['when']} · `make fuzz` · netbootd {results['commit']} · took "
           f"{results['took_s']:.0f} s", "",
           "Figures of this checkout's code; everything ran on this machine, fuzzers and "
           "daemon sharing its cores, in namespaces the run created.", ""]
    m = results["machine"]
    out += ["| machine |  |", "|---|---|", *(f"| {k} | {v} |" for k, v in m.items()), ""]
    runs = results.get("protocols", {})
    if runs:
        out += ["## Fuzz per protocol", "",
                "| protocol | packets sent | delivered / dropped by the kernel (full buffer) "
                "| seconds | daemon died | tracebacks: all / netbootd frames / peer gone in a "
                "handler | RSS before -> after | valid DHCP / TFTP / HTTP client answered after |",
                "|---|---|---|---|---|---|---|---|"]
        for p, r in runs.items():
            ans = " / ".join("yes" if r["valid_clients_answered"][k] else "**no**"
                             for k in ("dhcp", "tftp", "http"))
            udp = ("(connections)" if r["udp_delivered"] is None else
                   f"{r['udp_delivered']:,} / {r['udp_dropped_rcvbuf']:,}")
            out.append(f"| {p} | {r['packets']:,} | {udp} | {r['seconds']} | "
                       f"{'**yes**' if not r['alive'] else 'no'} | {r['tracebacks']} / "
                       f"{r['netbootd_tracebacks']} / {r['peer_gone_tracebacks']} | "
                       f"{r['rss_kb_before'] / 1024:.1f} -> "
                       f"{(r['rss_kb_after'] or 0) / 1024:.1f} MiB | {ans} |")
        crashes = sum(1 for r in runs.values() if not r["alive"])
        out += ["", f"Crashes (daemon deaths): **{crashes}**. Tracebacks: any in the daemon's "
                "log during the run; 'netbootd frames': those with a frame of netbootd's own "
                "code; 'peer gone': a handler whose client disconnected (each should be 0).", ""]
    if "flood" in results:
        out += ["## Valid clients under a DHCP junk flood", "",
                "Valid DISCOVERs of an enrolled host sent during a junk flood on port 67 (a "
                "third of the junk is mutated requests of enrolled host fz1's MAC, which pass "
                "the pre-filter and, when still valid, are answered like its own: broadcast "
                "replies to port 68). Run 1 probes as enrolled host fz2, whose MAC the junk "
                "never names; run 2 as fz1, the spoofed one. Client drops: datagrams the "
                "client namespace's kernel dropped for a full receive buffer (replies to the "
                "spoofed requests fill the probing socket too).", "",
                "| probing as | flood target / reached | flood packets | delivered to the "
                "server / dropped there (full buffer) | delivered to the client / dropped "
                "there | **answered** | daemon alive |", "|---|---|---|---|---|---|---|"]
        for key, f in results["flood"].items():
            out.append(f"| {key} | {f['target_rate']:,.0f}/s / {f['achieved_rate']:,}/s | "
                       f"{f['flood_packets']:,} | {f['udp_delivered']:,} / "
                       f"{f['udp_dropped_rcvbuf']:,} | {f['client_udp_delivered']:,} / "
                       f"{f['client_udp_dropped_rcvbuf']:,} | **{f['answered']}/{f['probes']} "
                       f"({f['answer_rate']:.1%})** | {f['alive']} |")
        out.append("")
    if "db" in results:
        d = results["db"]
        out += ["## DB growth from unauthenticated requests", "",
                f"{d['requests']:,} requests ({d['errors']} errors) in {d['seconds']} s: "
                f"database {d['db_bytes_before']:,} -> {d['db_bytes_after']:,} bytes "
                f"(+WAL): **{d['growth_per_10k_bytes']:,} bytes per 10,000 requests**.", ""]
    if "amplification" in results:
        out += ["## TFTP toward sources that never ACK", "",
                "| sources x requests | request bytes | bytes back | packets back per request "
                "| amplification |", "|---|---|---|---|---|"]
        for a in results["amplification"]:
            out.append(f"| {a['sources']} x {a['requests_per_source']} | {a['request_bytes']:,} "
                       f"| {a['bytes_back']:,} | {a['packets_back_per_request']} | "
                       f"x{a['amplification']} |")
        before = results.get("amplification_before")
        if before:
            out += ["", f"Before (7fc1555, measured the same way): {before}"]
        out.append("")
    for key, title in (("properties", "Codec property tests (Hypothesis `fuzz` profile)"),
                       ("kill", "kill -9 fault suite")):
        if key in results:
            r = results[key]
            out += [f"## {title}", "", f"`{' '.join(r['args'])}` with {r['env']}: "
                    f"`{r['summary']}` (exit {r['returncode']}, {r['seconds']} s)", ""]
    (RESULTS / "fuzz.md").write_text("\n".join(out))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="seconds, not minutes (a smoke run)")
    ap.add_argument("--seconds", type=float, default=30.0, help="fuzz time per protocol")
    ap.add_argument("--only", default="dhcp,tftp,http,flood,db,amp,props,kill")
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("bench.fuzz needs root (network namespaces)", file=sys.stderr)
        return 2
    only = set(a.only.split(","))
    secs = 3.0 if a.quick else a.seconds
    t0 = time.monotonic()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                            capture_output=True, text=True, check=False).stdout.strip()
    results: dict[str, Any] = {"quick": a.quick, "when": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                       time.gmtime()),
                               "commit": commit or "?", "machine": machine_info()}
    cleanup_stale(PREFIX)
    env = Env(PREFIX, stop_timeout=10.0)
    try:
        lab = fuzz.start(env)
        rng = random.Random(13)
        protocols = {}
        for p, packets in (("dhcp", 2_000_000), ("tftp", 500_000), ("http", 100_000)):
            if p in only:
                log(f"fuzzing {p} for {secs:.0f} s")
                protocols[p] = protocol_run(lab, p, secs, packets, rng)
                log(f"{p}: {protocols[p]}")
        if protocols:
            results["protocols"] = protocols
        if "flood" in only:
            log("valid clients under a 20,000/s DHCP junk flood")
            results["flood"] = flood_run(lab, 20_000, 5 if a.quick else 15, 100 if a.quick
                                         else 300)
        if "db" in only:
            log("10,000 unauthenticated requests")
            results["db"] = db_run(lab, 1_000 if a.quick else 10_000, 60 if a.quick else 600)
        if "amp" in only:
            log("TFTP amplification")
            results["amplification"] = [amplification(lab, 64, 1, 8.0),
                                         amplification(lab, 1, 64, 8.0)]
            results["amplification_before"] = os.environ.get("NETBOOTD_AMP_BEFORE", "")
        results["rss_kb_end"] = lab.rss_kb() if lab.alive else None
        results["alive_at_end"] = lab.alive
        results["daemon_log_lines"] = len(lab.log.read_text(errors="replace").splitlines())
    finally:
        env.close()
    if "props" in only:
        log("codec properties, Hypothesis fuzz profile")
        results["properties"] = pytest_run(
            ["tests/unit/test_codec_properties.py"],
            {"NETBOOTD_HYPOTHESIS": "fuzz",
             "NETBOOTD_FUZZ_EXAMPLES": "300" if a.quick else "5000"}, 3600)
    if "kill" in only:
        log("kill -9 suite")
        results["kill"] = pytest_run(["-ra", "tests/integration/test_kill9_faults.py"],
                                     {"NETBOOTD_FAULT_KILLS": "3" if a.quick else "10"}, 3600)
    results["took_s"] = time.monotonic() - t0
    if not a.no_write:
        write(results)
        log(f"wrote {RESULTS / 'fuzz.md'} and fuzz.json")
    print(json.dumps({k: results[k] for k in results if k != "machine"}, indent=1))
    bad = [p for p, r in results.get("protocols", {}).items()
           if not r["alive"] or r["netbootd_tracebacks"] or not all(
               r["valid_clients_answered"].values())]
    return 1 if bad or not results.get("alive_at_end", True) else 0


if __name__ == "__main__":
    sys.exit(main())
