"""The markdown report of one benchmark run (bench/results/latest.md)."""

from __future__ import annotations

import math
from typing import Any

MiB = 1 << 20


def _f(x: Any, digits: int = 2, unit: str = "") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:,.{digits}f}{unit}"


def _gb(bps: Any) -> str:
    return "n/a" if not bps else f"{bps / 1e9:.2f} GB/s"


def _size(n: int) -> str:
    return f"{n / MiB:g} MiB" if n >= MiB else f"{n / 1024:.0f} KiB"


def _dur(s: float) -> str:
    return f"{int(s // 60)}m{s % 60:04.1f}s" if s >= 60 else f"{s:.1f}s"


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return out + [""]


def goals(d: dict[str, Any]) -> list[list[str]]:
    r = d["results"]
    rows: list[list[str]] = []

    def met(ok: bool | None) -> str:
        return "n/a" if ok is None else ("yes" if ok else "**no**")

    if "http" in r:
        h = r["http"]
        ratio = h["ratio"]
        rows.append(
            [
                "HTTP artifacts vs nginx",
                ">= 0.95x",
                (
                    f"{_f(ratio)}x (median of {len(h.get('paired_ratios', []))} back-to-back "
                    f"rounds; median rates {_gb(h['median_Bps']['netbootd'])} vs "
                    f"{_gb(h['median_Bps']['nginx'])})"
                ),
                met(ratio >= 0.95 if ratio else None),
            ]
        )
    if "dhcp" in r:
        x = r["dhcp"]
        ratio = x["ratio"]
        rounds = x.get("rounds") or []
        rows.append(
            [
                "proxyDHCP max rate vs dnsmasq",
                ">= 1.0x",
                f"{_f(ratio)}x ({x['netbootd']['max_rate_no_loss']:,.0f}/s vs "
                f"{x['dnsmasq']['max_rate_no_loss']:,.0f}/s"
                + (f"; median of {len(rounds)} rounds' ratios" if len(rounds) > 1 else "")
                + ")",
                met(ratio >= 1.0 if ratio is not None else None),
            ]
        )
        lat = x["netbootd"]["latency"]
        rows.append(
            [
                f"proxyDHCP p99 at {lat['rate']:,.0f}/s",
                "< 5 ms",
                f"{_f(lat['p99_ms'])} ms (dnsmasq {_f(x['dnsmasq']['latency']['p99_ms'])} ms)",
                met(lat["p99_ms"] < 5.0),
            ]
        )
    if "flood" in r:
        f = r["flood"]["median"]
        nb, dm, us = f["netbootd"], f.get("dnsmasq"), f.get("netbootd-userspace")
        p = d["profile"]
        rows.append(
            [
                f"Valid clients answered during a {p['flood_rate']:,.0f}/s junk flood",
                ">= 99%",
                f"{nb['answer_rate']:.1%} (median of {len(r['flood']['runs']['netbootd'])}; "
                + (f"without its kernel filter {us['answer_rate']:.1%}; " if us else "")
                + f"dnsmasq {dm['answer_rate']:.1%})"
                if dm
                else f"{nb['answer_rate']:.1%}",
                met(nb["answer_rate"] >= 0.99),
            ]
        )
    if "tftp" in r:
        t = r["tftp"]["runs"]
        for fname, size in r["tftp"]["files"]:
            key = f"{fname}|-"
            if "netbootd" in t and "dnsmasq" in t and key in t["netbootd"]:
                a, b = t["netbootd"][key]["median_s"], t["dnsmasq"][key]["median_s"]
                ratio = a / b if a and b else None
                rows.append(
                    [
                        f"TFTP {_size(size)} time vs dnsmasq",
                        "<= 1.0x",
                        f"{_f(ratio)}x ({a * 1e3:,.0f} ms vs {b * 1e3:,.0f} ms)",
                        met(ratio <= 1.0 if ratio else None),
                    ]
                )
    if "storm" in r:
        for n, s in r["storm"]["runs"].items():
            rows.append(
                [
                    f"Boot storm, {n} clients",
                    "0 failures",
                    f"{s['failed']} failed",
                    met(s["failed"] == 0),
                ]
            )
    if "vm" in r and r["vm"].get("ratio") is not None:
        v = r["vm"]
        rows.append(
            [
                "VM boot vs dnsmasq + http.server",
                "<= 1.05x",
                (
                    f"{_f(v['ratio'])}x ({_f(v['netbootd_median_s'], 1)} s "
                    f"vs {_f(v['baseline_median_s'], 1)} s)"
                ),
                met(v["ratio"] <= 1.05),
            ]
        )
    return rows


def render(d: dict[str, Any]) -> str:
    p, m, r = d["profile"], d["machine"], d["results"]
    mode = "`make bench`" if p["name"] == "full" else "`make bench-quick`"
    L: list[str] = [f"# netbootd benchmarks ({p['name']} run)", ""]
    L.append(
        f"{d['date']} · {mode} · netbootd {m.get('netbootd', '?')} · took {_dur(d['total_s'])} "
        f"({', '.join(f'{k} {_dur(v)}' for k, v in d['durations'].items())})"
    )
    L.append("")
    if p["name"] != "full":
        L.append(
            "_A quick run: sizes and counts are far too small for these numbers to mean anything; "
            "it checks that every benchmark still works. Goals are judged on `make bench`'s full "
            "run._"
        )
        L.append("")
    if d["broken"]:
        L.append("**Broken benchmarks** (the run exits 1):")
        L += [f"- {name}: {why}" for name, why in d["broken"]]
        L.append("")
    L += ["## Machine", ""]
    L += _table(["", ""], [[k, v] for k, v in m.items()])
    L += [
        (
            "Everything ran on this one machine, in the same run, in network namespaces the "
            "benchmark created; the load generators share its cores with the server under test (so "
            "do other users of the machine: compare ratios, not absolute numbers)."
        ),
        "",
    ]
    g = goals(d)
    if g:
        L += ["## Goals", ""]
        L += _table(["Goal", "Target", "Measured", "Met"], g)
    if "http" in r:
        L += _http(r["http"], p)
    if "dhcp" in r:
        L += _dhcp(r["dhcp"], p)
    if "flood" in r:
        L += _flood(r["flood"], p)
    if "tftp" in r:
        L += _tftp(r["tftp"])
    if "storm" in r:
        L += _storm(r["storm"], r.get("http"))
    if "vm" in r:
        L += _vm(r["vm"])
    if d.get("profiles"):
        L += _profiles(d["profiles"], r.get("dhcp", {}).get("micro_us"))
    L += [
        "## Reproduce",
        "",
        "    make bench         # this table (installs nginx, dnsmasq, tftpd-hpa, atftp; root)",
        "    make bench-quick   # the CI smoke run (< 2 min): small sizes, few clients, no VM",
        "    .venv/bin/python -m bench --only dhcp --profile   # one section, with py-spy",
        "",
    ]
    return "\n".join(L)


def _http(h: dict[str, Any], p: dict[str, Any]) -> list[str]:
    L = [
        "## HTTP artifacts",
        "",
        (
            f"{h['clients']} concurrent clients each download one {_size(h['size'])} initrd, "
            f"{len(h['runs']['netbootd'])} round(s) per server, alternating; netbootd's URL is the "
            "one its rendered script names (`/artifacts/<sha256>/initrd0`), nginx serves the same "
            "file (a hard link: same inode, same page cache). Loopback inside a namespace. Every "
            "response is checked (status, length, bytes); one download per server is also checked "
            "by sha256."
        ),
        "",
    ]
    rows = []
    for name in ("netbootd", "nginx"):
        runs = h["runs"][name]
        gib = sum(x["bytes"] for x in runs) / (1 << 30)
        cpu = sum(x["server_cpu_s"] for x in runs)
        rows.append(
            [
                name,
                _gb(h["median_Bps"][name]),
                ", ".join(f"{x['throughput_Bps'] / 1e9:.2f}" for x in runs),
                f"{cpu / gib:.2f}" if gib else "n/a",
                f"{_f(max(x['client_time_max_s'] for x in runs), 1)} s",
            ]
        )
    L += _table(
        ["Server", "Median aggregate", "Runs (GB/s)", "Server CPU s per GiB", "Slowest client"],
        rows,
    )
    L += [
        (
            f"Ratio netbootd / nginx: **{_f(h['ratio'])}x** (median of the per-round ratios "
            f"{', '.join(_f(x) for x in h.get('paired_ratios', []))}; ratio of the medians "
            f"{_f(h.get('ratio_of_medians'))}x). Load generator: `bench/httpload.py`, one process, "
            "bodies spliced socket -> pipe -> /dev/null (no copy to user space); its own ceiling, "
            f"bytes per CPU-second it used, is {_gb(h['generator_ceiling_Bps'])} per core, above "
            "what it measured, so it is not the limit."
        ),
        "",
    ]
    s = h["scripts"]
    c = s["closed"]
    L += [
        "### Per-MAC iPXE scripts",
        "",
        (
            f"{h['setup']['hosts']:,} hosts enrolled (Store API, {h['setup']['enroll_s']} s). "
            "Requests for random enrolled MACs (`/boot/<mac>.ipxe`) over 16 keep-alive "
            f"connections. Capacity (closed loop): **{c['req_per_s']:,.0f} req/s** (p50 "
            f"{_f(c['p50_ms'])} ms, p99 {_f(c['p99_ms'])} ms). At a fixed {p['script_rate']:,.0f} "
            f"req/s for {p['script_seconds']:g} s (open loop, latency from the time each request "
            "was due, wrk2-style):"
        ),
        "",
    ]
    rows = []
    for name, x in s["rate"].items():
        what = (
            "renders per request"
            if name == "netbootd"
            else "the same scripts as static files (reference)"
        )
        rows.append(
            [
                f"{name} ({what})",
                f"{x['ok']:,}",
                _f(x["p50_ms"]),
                _f(x["p90_ms"]),
                _f(x["p99_ms"]),
                _f(x["max_ms"]),
                str(x["error_count"]),
            ]
        )
    L += _table(["Server", "OK", "p50 ms", "p90 ms", "p99 ms", "max ms", "Errors"], rows)
    return L


def _dhcp(x: dict[str, Any], p: dict[str, Any]) -> list[str]:
    L = [
        "## proxyDHCP",
        "",
        (
            "Firmware PXE DISCOVERs (OVMF's options, arch 7, broadcast from 0.0.0.0:68) from "
            f"{x['setup']['hosts']:,} distinct enrolled MACs, sent as pre-built raw frames over a "
            "veth pair between two namespaces, replies matched by xid and chaddr; latency = kernel "
            "receive timestamp of the reply - send time. Rates rise until a step loses more than "
            "1% of replies (a lossy step is retried once). dnsmasq (`dhcp-range=<net>,proxy` + "
            "`pxe-service`, as in the reference recipe) answers any PXE client; netbootd only "
            "enrolled MACs -- all MACs here are enrolled. Both log each reply (their default)."
        ),
        "",
    ]
    rows = []
    for name in [n for n in ("netbootd", "dnsmasq", "netbootd_quiet") if n in x]:
        y = x[name]
        lat = y["latency"]
        files = ", ".join(f"{k} ({v:,})" for k, v in y["files"].items())
        rows.append(
            [
                "netbootd, log level warning (no INFO line per answer)"
                if name == "netbootd_quiet"
                else name,
                f"{y['max_rate_no_loss']:,.0f}/s",
                f"{y['peak_reply_rate']:,.0f}/s",
                _f(lat["p50_ms"], 3),
                _f(lat["p99_ms"], 3),
                _f(lat["max_ms"], 1),
                str(lat.get("over_5ms", "?")),
                f"{lat['loss']:.1%}",
                _f(lat.get("server_cpu_wait_ms"), 0),
                _f(lat.get("server_cpu_us_per_reply"), 1),
                y["stopped"],
                str(y["server_udp_rcvbuf_errors"]),
                files,
            ]
        )
    L += _table(
        [
            "Server",
            "Max rate, <1% loss",
            "Peak replies/s",
            f"p50 ms @{p['dhcp_latency_rate']:g}/s",
            "p99 ms",
            "max ms",
            "replies > 5 ms",
            "loss",
            "server waited for a CPU, ms",
            "server CPU µs per reply (1,000/s step + warm-up)",
            "Ladder stopped",
            "Server UDP drops (ladder)",
            "Boot file in replies",
        ],
        rows,
    )
    slow = x["netbootd"]["latency"].get("slowest") or []
    if slow:
        L.append(
            f"netbootd's slowest replies at {p['dhcp_latency_rate']:g}/s (latency ms @ ms into the "
            f"{p['dhcp_latency_seconds']:g} s step): "
            + ", ".join(f"{a} @ {b}" for a, b in slow)
            + " -- one cluster is one stall of the server (or of its CPU), not queueing."
        )
        L.append("")
    rounds = x.get("rounds") or []
    if len(rounds) > 1:
        L.append(
            f"{len(rounds)} rounds, alternating which server goes first; the table shows each "
            "server's median round. Max rates per round (netbootd / dnsmasq, ratio): "
            + "; ".join(
                f"{r['netbootd']:,.0f} / {r['dnsmasq']:,.0f}/s ({_f(r['ratio'])}x)" for r in rounds
            )
            + "."
        )
        L.append("")
        L.append(
            "Ratio netbootd / dnsmasq (max rate without loss, median of the per-round ratios): "
            f"**{_f(x['ratio'])}x**."
        )
    else:
        L.append(f"Ratio netbootd / dnsmasq (max rate without loss): **{_f(x['ratio'])}x**.")
    L.append("")
    steps: dict[float, dict[str, Any]] = {}
    for name in ("netbootd", "dnsmasq"):
        for s in x[name]["ladder"]:
            steps.setdefault(s["rate"], {})[name] = s
    rows = []
    for rate in sorted(steps):
        row = [f"{rate:,.0f}/s"]
        for name in ("netbootd", "dnsmasq"):
            s = steps[rate].get(name)
            gd = s.get("generator_drops") if s else None
            row.append(
                "-"
                if s is None
                else f"{s['loss']:.1%} lost, {s['reply_rate']:,.0f} replies/s, p99 "
                f"{_f(s['p99_ms'])} ms{' (retried)' if s.get('retried') else ''}"
                f"{f', generator dropped {gd}' if gd else ''}"
            )
        rows.append(row)
    L += ["Ladder:", ""] + _table(["Offered", "netbootd", "dnsmasq"], rows)
    return L


def _flood(x: dict[str, Any], p: dict[str, Any]) -> list[str]:
    runs = x["runs"]
    any_run = runs["netbootd"][0]
    mix = ", ".join(f"{k} {v:.0%}" for k, v in any_run["mix"].items())
    L = [
        "## proxyDHCP under a junk flood",
        "",
        (
            f"Valid enrolled clients' firmware PXE DISCOVERs ({p['flood_valid_rate']:,.0f}/s, "
            f"arch 7, {x['setup']['hosts']:,} enrolled MACs in turn) interleaved with "
            f"{p['flood_rate']:,.0f}/s of junk for {p['flood_seconds']:g} s, all broadcast to "
            "port 67 as raw frames over a veth pair (`bench/dhcpflood.py`, one sender thread). "
            f"Junk mix: {mix} -- random-mac: a new never-enrolled MAC each packet; unknown-mac: "
            "1,000 unenrolled MACs in turn; non-pxe: an OS DHCP client's DISCOVER/REQUEST "
            "(vendor class MSFT 5.0 or none); malformed: truncated, option lengths past the "
            "end, random bytes, BOOTREPLYs, no cookie, no option 53, odd option 93; enrolled-*: "
            "the same from enrolled MACs (spoofed, they pass the MAC check). Answered = a reply "
            "with the DISCOVER's xid and chaddr within 1 s of the end. Kernel drops = Udp "
            "RcvbufErrors of the server namespace. Server CPU = its CPU-seconds / sending time "
            "(100% = one core). Log lines = lines the server wrote during the run. dnsmasq "
            "answers every PXE client, junk PXE DISCOVERs included (junk replies); netbootd "
            "only enrolled MACs. `netbootd-userspace` is netbootd without its eBPF kernel "
            "filter (NETBOOTD_DHCP_BPF=0: as it runs without CAP_BPF), pre-filter in user space "
            "only. Rounds rotate which server goes first."
        ),
        "",
    ]
    rows = []
    for name in runs:
        for i, r in enumerate(runs[name]):
            rows.append(
                [
                    name,
                    str(i + 1),
                    f"{r['achieved_rate']:,.0f}/s",
                    f"{r['valid_answered']:,} / {r['valid_sent']:,}",
                    f"{r['answer_rate']:.2%}",
                    _f(r["p50_ms"], 3),
                    _f(r["p99_ms"], 2),
                    f"{r['server_udp_rcvbuf_errors']:,}",
                    f"{r['server_cpu_share']:.0%}" if r["server_cpu_share"] is not None else "n/a",
                    _f(r.get("server_cpu_wait_ms"), 0),
                    _f(r.get("generator_cpu_s"), 1),
                    str(r.get("load_average", "")),
                    f"{r['log_lines']:,}",
                    f"{r['junk_replies']:,}",
                    str(r.get("generator_drops", "")),
                ]
            )
    L += _table(
        [
            "Server",
            "Round",
            "Sent (junk + valid)",
            "Valid answered",
            "Answer rate",
            "p50 ms",
            "p99 ms",
            "Kernel drops",
            "Server CPU",
            "Server waited for a CPU, ms",
            "Generator CPU s",
            "Load avg",
            "Log lines",
            "Junk replies",
            "Generator drops",
        ],
        rows,
    )
    med = x["median"]
    b = med.get("dnsmasq")
    for name in [n for n in med if n != "dnsmasq"]:
        a = med[name]
        if not b or not b["answer_rate"]:
            continue
        cpu = (
            f"{a['server_cpu_share'] / b['server_cpu_share']:.2f}x"
            if b["server_cpu_share"]
            else "n/a"
        )
        L.append(
            f"Medians, {name} vs dnsmasq: valid clients answered {a['answer_rate']:.2%} vs "
            f"{b['answer_rate']:.2%} (ratio {a['answer_rate'] / b['answer_rate']:.2f}x); kernel "
            f"drops {a['server_udp_rcvbuf_errors']:,.0f} vs {b['server_udp_rcvbuf_errors']:,.0f}; "
            f"server CPU {a['server_cpu_share']:.0%} vs {b['server_cpu_share']:.0%} ({cpu}); "
            f"p99 {_f(a['p99_ms'])} vs {_f(b['p99_ms'])} ms; log lines {a['log_lines']:,.0f} vs "
            f"{b['log_lines']:,.0f}."
        )
        L.append("")
    for name in [n for n in runs if n.startswith("netbootd")]:
        drops: dict[str, int] = {}
        for r in runs[name]:
            for k, v in (r.get("server_drops") or {}).items():
                drops[k] = drops.get(k, 0) + v
        if drops:
            L.append(
                f"{name}'s own drop counts over all rounds (its summary lines, "
                "`DhcpServer.stats()`): "
                + ", ".join(f"{k} {v:,}" for k, v in sorted(drops.items(), key=lambda kv: -kv[1]))
                + "."
            )
            L.append("")
    return L


def _tftp(t: dict[str, Any]) -> list[str]:
    runs = t["runs"]
    servers = [s for s in ("netbootd", "dnsmasq", "tftpd-hpa") if s in runs]
    L = [
        "## TFTP",
        "",
        (
            "One transfer at a time on the namespace's loopback, blksize 1468, client atftp (the "
            "only Debian TFTP client that asks for RFC 7440 windowsize; curl, busybox and tftp-hpa "
            "cannot), median of the runs, timed from the client's start to its exit. Server and "
            f"client are pinned to the same CPU (CPU {t.get('cpu')}): a lock-step transfer on "
            "loopback is otherwise dominated by cross-CPU wake-ups, which varied 3-4x run to run "
            "on this shared machine; pinned, a transfer's time is the CPU cost of both ends per "
            "block, and the client's share is the same for every server. `granted` is what the "
            "server's OACK accepted: netbootd implements windowsize (RFC 7440); dnsmasq and "
            "tftpd-hpa do not, so their windowsize rows are lock-step transfers (n/a as a windowed "
            "measurement). `floor` = fetching a 1-byte file (process start + one exchange)."
        ),
        "",
    ]
    rows = []
    for fname, size in t["files"]:
        for ws in ("-", "8"):
            key = f"{fname}|{ws}"
            cells = []
            for s in servers:
                y = runs[s].get(key)
                if y is None:
                    cells.append("-")
                    continue
                g = y["granted"]
                wsg = g.get("windowsize") if isinstance(g, dict) else None
                note = "" if ws == "-" else (f" (windowsize {wsg})" if wsg else " (lock-step: n/a)")
                cells.append(f"{y['median_s'] * 1e3:,.1f}{note}")
            nd = runs.get("netbootd", {}).get(key, {}).get("median_s")
            dm = runs.get("dnsmasq", {}).get(key, {}).get("median_s")
            ratio = _f(nd / dm) + "x" if nd and dm else "n/a"
            blocks = size // 1468 + 1
            per_block = " / ".join(
                _f((runs[x].get(key) or {}).get("median_s", 0) / blocks * 1e6, 1) for x in servers
            )
            rows.append(
                [
                    f"{fname} ({_size(size)})",
                    "none" if ws == "-" else f"{ws} requested",
                    *cells,
                    ratio,
                    per_block,
                ]
            )
    floor = [
        "floor (1 byte)",
        "",
        *[
            _f((runs[s].get(f"{t['files'][0][0]}|-") or {}).get("floor_s", 0) * 1e3, 1)
            for s in servers
        ],
        "",
        "",
    ]
    rows.append(floor)
    L += _table(
        [
            "File",
            "windowsize",
            *[f"{s} ms" for s in servers],
            "netbootd / dnsmasq",
            f"µs per block ({' / '.join(servers)})",
        ],
        rows,
    )
    return L


def _storm(s: dict[str, Any], http: dict[str, Any] | None) -> list[str]:
    nginx = http["median_Bps"]["nginx"] if http else None
    L = [
        "## Boot storm",
        "",
        (
            "N simulated BIOS PXE clients start at once, each: firmware DISCOVER -> proxy OFFER -> "
            f"REQUEST on 4011 -> TFTP {s['tftp_file'][0]} ({_size(s['tftp_file'][1])}, blksize "
            "1468, content checked) -> iPXE DISCOVER -> script URL -> GET script -> GET kernel "
            f"({_size(s['kernel'])}) -> GET initrd ({_size(s['initrd'])}); each client has its own "
            "address; DHCP retransmitted on the PXE ROM schedule (4, 8, 16, 32 s +-1 s), TFTP "
            "after 1 s. netbootd (all three servers, one process) in one namespace, clients in "
            "another, a veth pair between. `Ideal` = the bytes moved at nginx's measured aggregate "
            "rate (HTTP section, loopback)."
        ),
        "",
    ]
    rows = []
    for n, x in s["runs"].items():
        ideal = x["bytes"] / nginx if nginx else None
        fails = ", ".join(f"{k}: {v}" for k, v in x["failed_by_step"].items()) or "-"
        rows.append(
            [
                n,
                str(x["ok"]),
                f"{x['failed']} ({fails})",
                ", ".join(f"{k} {v}" for k, v in x["retransmits"].items()) or "0",
                str(x["server_udp_rcvbuf_errors"]),
                _f(x["wall_s"], 1),
                f"{x['bytes'] / 1e9:.2f} GB",
                _f(ideal, 1),
                _f(x["wall_s"] / ideal if ideal else None) + "x",
                f"{_f(x['boot_p50_s'], 1)} / {_f(x['boot_p99_s'], 1)}",
            ]
        )
    L += _table(
        [
            "Clients",
            "Booted",
            "Failed (step)",
            "Retransmissions",
            "Server UDP drops",
            "Wall s",
            "Bytes",
            "Ideal s",
            "Wall / ideal",
            "Boot p50 / p99 s",
        ],
        rows,
    )
    for n, x in s["runs"].items():
        if x["examples"]:
            L.append(
                f"Failures with {n} clients, e.g.: "
                + "; ".join(e for v in x["examples"].values() for e in v)
            )
            L.append("")
        L.append(
            f"Median step times with {n} clients (s): "
            + ", ".join(f"{k} {_f(v, 3)}" for k, v in x["step_p50_s"].items())
            + "; slowest: "
            + ", ".join(f"{k} {_f(v, 2)}" for k, v in x["step_max_s"].items())
        )
        L.append("")
    return L


def _vm(v: dict[str, Any]) -> list[str]:
    L = ["## VM boot", ""]
    if v.get("skipped"):
        return L + [f"Skipped: {v['skipped']}", ""]
    L += [v.get("method", ""), ""]
    rows = []
    for name in ("netbootd", "baseline"):
        times = v.get(f"{name}_s", [])
        rows.append(
            [
                v.get(f"{name}_label", name),
                ", ".join(_f(t, 1) for t in times),
                _f(v.get(f"{name}_median_s"), 1),
            ]
        )
    L += _table(["Server side", "Boots (s, QEMU start -> booted event sent)", "Median s"], rows)
    L += [f"Ratio: **{_f(v.get('ratio'))}x**.", ""]
    if v.get("netbootd_phases") and v.get("baseline_phases"):

        def med(side: str, key: str) -> str:
            vals = sorted(x[key] for x in v[f"{side}_phases"] if x.get(key) is not None)
            return _f(vals[len(vals) // 2] if vals else None, 2)

        names = {
            "to_script": "QEMU start -> iPXE runs the script (firmware, DHCP, proxyDHCP)",
            "script_to_init": "script -> /init (kernel + initrd over HTTP, kernel start)",
            "init_to_booted": "/init -> booted event sent (guest DHCP, POST)",
        }
        L += ["Median of each phase, from the serial console (s):", ""]
        L += _table(
            ["Phase", "netbootd", "baseline"],
            [[n, med("netbootd", k), med("baseline", k)] for k, n in names.items()],
        )
    return L


def _profiles(profiles: dict[str, Any], micro: dict[str, Any] | None) -> list[str]:
    L = [
        "## Where netbootd spends its time (py-spy)",
        "",
        (
            "netbootd sampled by `py-spy record` (200 Hz, busy samples only) while one more load "
            "of the named kind ran against it after the measurement. Areas are inclusive (a sample "
            "counts for every area on its stack)."
        ),
        "",
    ]
    for key, s in profiles.items():
        if "error" in s:
            L += [f"### {key}", "", s["error"], ""]
            continue
        L += [f"### {key}: {s['samples']:,} samples in {s['seconds']} s", ""]
        L += _table(["Area", "% of busy samples"], [[a, f"{p:.1f}"] for a, p in s["areas"]])
        L += _table(
            ["Function (inclusive)", "%"], [[f"`{fn}`", f"{p:.1f}"] for fn, p in s["functions"]]
        )
    if micro:
        L += ["### proxyDHCP per-packet cost, in-process (`python -m bench.micro`)", ""]
        L += _table(["Step", "µs per packet"], [[k, str(v)] for k, v in micro.items()])
    return L
