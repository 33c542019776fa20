"""Per-boot UKI preparation cost, in microseconds per request (`make bench`; `--quick` in CI).

netbootd serves every UEFI HTTP(S) boot its own UKI (roles/uki.py): the role generation's
template with this boot's command line in the last, fixed-size section. Measured here, on the
test image's real kernel and initramfs (images/test-initramfs) when present, else a 9 MB
stand-in, in one process:

  - assemble:  template bytes + the new command line section (what an unsigned boot costs);
  - digest (saved state): the Authenticode SHA-256 continued from the hash state saved after
    everything before the command line (what signing the boot needs hashed);
  - digest (full): the same hash over the whole image (codec/pe.authenticode_hasher), the peer
    every signer without a saved state pays -- the ratio is the point;
  - sign (sbsign): what netbootd does today per signed boot: sbsign over the assembled image
    (a subprocess: writes, hashes, signs, writes), the real signer's cost.

Prints a JSON object and writes bench/results/uki.json + uki.md (full runs only).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from netbootd.cli import main as cli
from netbootd.codec import pe
from netbootd.identity import secureboot
from netbootd.roles.artifacts import Artifacts
from netbootd.roles.uki import UkiBuilder
from netbootd.store import Store

STUB = Path("/usr/lib/systemd/boot/efi/linuxx64.efi.stub")
RESULTS = Path(__file__).parent / "results"
CMDLINE = ("console=ttyS0 quiet netbootd.events=https://192.168.77.1/api/v1/hosts/"
           "52-54-00-12-34-56/events netbootd.hostname=web1 netbootd.boot=")


def _per_call_us(fn: Any, n: int) -> float:
    samples = []
    for _ in range(5):
        t0 = time.perf_counter()
        for i in range(n):
            fn(i)
        samples.append((time.perf_counter() - t0) / n * 1e6)
    return statistics.median(samples)


def _inputs(work: Path) -> tuple[Path, Path]:
    cache = Path(__file__).resolve().parents[1] / "tests" / "e2e" / ".cache"
    kernels = sorted(cache.glob("kpkg-*/boot/vmlinuz-*"))
    if kernels:
        kernel = kernels[-1]
    else:
        kernel = work / "vmlinuz"
        kernel.write_bytes(b"MZ" + bytes(8 << 20))
    initrd = work / "initrd"
    initrd.write_bytes(bytes(range(256)) * 4096)  # 1 MiB
    return kernel, initrd


def run(quick: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="nbdbench-uki-") as tmp:
        work = Path(tmp)
        kernel, initrd = _inputs(work)
        state = work / "state"
        cli(["--state-dir", str(state), "role", "add", "r", "--kernel", str(kernel),
             "--initrd", str(initrd), "--cmdline", "console=ttyS0"])
        image = Store(state).image("r", None)
        assert image is not None
        t0 = time.perf_counter()
        t = UkiBuilder(state, Artifacts(state)).template(image, STUB)
        template_s = time.perf_counter() - t0
        n = 20 if quick else 200
        tok = [f"{CMDLINE}{i:044d}" for i in range(max(n, 2000))]
        assemble = _per_call_us(lambda i: t.assemble(tok[i]), n)
        saved = _per_call_us(lambda i: t.digest(tok[i]), n * 10)
        full = _per_call_us(lambda i: pe.authenticode_hasher(t.assemble(tok[i]), t.image)
                            .digest(), max(3, n // 20))
        secureboot.init(state)
        signer = secureboot.Signer.load(state)
        assert signer is not None
        sign = _per_call_us(lambda i: signer.sign(t.assemble(tok[i])), max(3, n // 20))
        # the saved-state digest is the one sbsign computes (checked, not assumed)
        signed = signer.sign(t.assemble(tok[0]))
        assert pe.authenticode_hasher(signed, pe.parse(signed)).digest() == t.digest(tok[0])
        return {
            "uki_bytes": t.size, "kernel": str(kernel.name),
            "template_build_s": round(template_s, 3),
            "assemble_us": round(assemble, 1), "digest_saved_state_us": round(saved, 2),
            "digest_full_us": round(full, 1), "sbsign_us": round(sign, 1),
            "full_over_saved": round(full / saved, 1),
            "sbsign_over_assemble": round(sign / assemble, 1),
        }


def markdown(r: dict[str, Any]) -> str:
    return "\n".join([
        "# Per-boot UKI preparation (bench/uki_bench.py)", "",
        f"UKI of {r['uki_bytes']:,} bytes ({r['kernel']} + 1 MiB initrd); template (objcopy, once "
        f"per generation): {r['template_build_s']} s.", "",
        "| per request | µs |", "| --- | --- |",
        f"| assemble (unsigned boot) | {r['assemble_us']} |",
        f"| Authenticode digest from the saved state | {r['digest_saved_state_us']} |",
        f"| Authenticode digest over the whole image (peer) | {r['digest_full_us']} |",
        f"| sign with sbsign (today's signed boot) | {r['sbsign_us']} |", "",
        f"Saved state vs full hash: {r['full_over_saved']}x faster. A signed boot costs "
        f"{r['sbsign_over_assemble']}x an unsigned one while sbsign re-hashes the image.", ""])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    r = run(a.quick)
    print(json.dumps(r, indent=2))
    if not a.quick:
        (RESULTS / "uki.json").write_text(json.dumps(r, indent=2) + "\n")
        (RESULTS / "uki.md").write_text(markdown(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
