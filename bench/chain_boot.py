"""Boot time by boot chain: HTTPS-UKI vs HTTP-iPXE of the same kernel and initrd (`make bench`).

One e2e lab (testbed.lab: namespaces, the site's DHCP server, `netbootd serve`, OVMF under TCG),
one kernel + initramfs (the test image), three roles over the very same artifacts, one VM MAC
each, all booted by OVMF's own UEFI HTTP boot (arch 16) through netbootd's proxyDHCP:

  http-ipxe    role chain transport http, http boot ipxe: the distro's ipxe.efi by HTTP, its
               DHCP, the script, kernel and initrd over plain HTTP (today's default chain);
  https-uki    transport https, http boot uki: OVMF's HTTPS boot (netbootd's CA in
               etc/edk2/https/cacerts) of the host's per-boot UKI -- no iPXE at all;
  https-ipxe   transport https, http boot ipxe, after `netbootd ipxe build` (skipped when it
               cannot build): OVMF's HTTPS boot of netbootd's build, which fetches the script,
               kernel and initrd over HTTPS (everything HTTPS, with iPXE in the middle).

Timed like the e2e tests: QEMU start -> the guest's serial line saying its booted event was
accepted. Rounds alternate the chains so the machine's load falls on all alike; the medians
and the ratio https-uki / http-ipxe are reported. Writes bench/results/chain_boot.json + .md
(full runs only; `--boots 1` is a smoke run).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import median
from testbed import ipxebuild
from testbed.lab import PREFIX, SRV_IP, Site, build_image, log
from testbed.netns import cleanup_stale
from testbed.procs import HarnessError
from testbed.skips import missing_prerequisites
from testbed.vm import VM, BootFailed, diagnostics, wait_booted

RESULTS = Path(__file__).parent / "results"
BOOT_TIMEOUT = 240.0
CHAINS = ("http-ipxe", "https-uki", "https-ipxe")
MACS = {"http-ipxe": "52:54:00:be:14:01", "https-uki": "52:54:00:be:14:02",
        "https-ipxe": "52:54:00:be:14:03"}


def _roles(site: Site) -> None:
    """One role per chain, all of the test role's generation (the same artifacts)."""
    img = site.image
    for chain in CHAINS:
        name = f"c-{chain}"
        site.nb.role_add(name, Path(img["vmlinuz"]), [Path(img["initramfs"])],
                         "console=ttyS0 quiet")
        transport = "http" if chain == "http-ipxe" else "https"
        payload = "uki" if chain == "https-uki" else "ipxe"
        site.nb.cli("role", "chain", name, "--transport", transport, "--http-boot", payload)
        site.nb.enroll(MACS[chain], name, hostname=chain)


def _boot(site: Site, chain: str, n: int, esl: Path) -> float:
    mac = MACS[chain]
    vm = VM(site.lab, f"{chain}-{n}", mac, "uefi-http",
            ca_esl=None if chain == "http-ipxe" else esl).start()
    since = time.time()
    try:
        return wait_booted(site.nb, vm, timeout=BOOT_TIMEOUT, since=since - 1).seconds
    except BootFailed as e:
        raise HarnessError(f"{chain} boot {n} failed: {e}\n"
                           f"{diagnostics(site.lab, site.nb, vm)}") from None
    finally:
        vm.stop(grace=2)


def run(boots: int, workdir: Path) -> dict[str, Any]:
    why = missing_prerequisites()
    if why:
        return {"skipped": "; ".join(why)}
    cleanup_stale(PREFIX, log)
    image = build_image(workdir / "image")
    times: dict[str, list[float]] = {c: [] for c in CHAINS}
    notes: list[str] = []
    with Site.start(workdir / "site", image) as site:
        _roles(site)
        esl = workdir / "ca.esl"
        site.nb.cli("tls", "export", "--format", "esl", "-o", str(esl))
        why_not = ipxebuild.missing()
        if why_not:
            notes.append("https-ipxe skipped: " + "; ".join(why_not))
            del times["https-ipxe"]
        else:
            t0 = time.monotonic()
            ipxebuild.build(site.nb, SRV_IP, "x86_64-efi")
            notes.append(f"netbootd ipxe build (x86_64-efi): {time.monotonic() - t0:.1f}s "
                         "(cached objects in tests/e2e/.cache/ipxe-work: a relink)")
        for n in range(boots):
            for chain in times:
                # a current build replaces the distro iPXE for every host: on for https-ipxe
                # only (`ipxe build` again is a cache hit), off (`ipxe off`) for the others
                if "https-ipxe" in times:
                    if chain == "https-ipxe":
                        ipxebuild.build(site.nb, SRV_IP, "x86_64-efi")
                    else:
                        site.nb.cli("ipxe", "off")
                    time.sleep(1.2)  # serve looks at the build pointer once a second
                times[chain].append(_boot(site, chain, n, esl))
                log(f"chain bench: {chain} boot {n}: {times[chain][-1]:.1f}s")
    med = {c: round(median(v), 2) for c, v in times.items()}
    out: dict[str, Any] = {
        "boots_per_chain": boots,
        "seconds": {c: [round(x, 2) for x in v] for c, v in times.items()},
        "median_s": med,
        "ratio_https_uki_vs_http_ipxe": round(med["https-uki"] / med["http-ipxe"], 3),
        "notes": notes,
    }
    if "https-ipxe" in med:
        out["ratio_https_ipxe_vs_http_ipxe"] = round(med["https-ipxe"] / med["http-ipxe"], 3)
    return out


def markdown(r: dict[str, Any]) -> str:
    lines = ["# Boot time by boot chain (bench/chain_boot.py)", "",
             "OVMF UEFI HTTP boot under TCG through netbootd's proxyDHCP, the same kernel and "
             "initramfs (the test image) on every chain; seconds from QEMU start to the guest's "
             f"accepted booted event, {r['boots_per_chain']} boots per chain, rounds "
             "interleaved.", "", "| chain | median s | runs |", "| --- | --- | --- |"]
    for c, v in r["seconds"].items():
        lines.append(f"| {c} | {r['median_s'][c]} | {' / '.join(f'{x:.1f}' for x in v)} |")
    lines += ["", f"HTTPS-UKI / HTTP-iPXE: **{r['ratio_https_uki_vs_http_ipxe']}x**"]
    if "ratio_https_ipxe_vs_http_ipxe" in r:
        lines.append(f"HTTPS-iPXE (netbootd's build) / HTTP-iPXE: "
                     f"**{r['ratio_https_ipxe_vs_http_ipxe']}x**")
    lines += [""] + [f"- {n}" for n in r["notes"]]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--boots", type=int, default=3, help="boots per chain (default 3)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="nbd-chain-bench-") as tmp:
        r = run(args.boots, Path(tmp))
    print(json.dumps(r, indent=2))
    if "skipped" in r:
        print(f"chain_boot: skipped: {r['skipped']}", file=sys.stderr)
        return 0
    if args.boots >= 3:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "chain_boot.json").write_text(json.dumps(r, indent=2) + "\n")
        (RESULTS / "chain_boot.md").write_text(markdown(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
