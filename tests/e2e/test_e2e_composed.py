"""A VM boots an initrd composed from concatenated per-store-path archives and reports `booted`.

The test initramfs (images/test-initramfs) is split the way a NixOS closure is: its busybox, its
kernel modules and its root files become three store paths of a private Nix store
(`nix-store --add`), a toplevel derivation refers to them, and a small "stage 1" initrd (like
NixOS's initialRamdisk: device nodes + an /init that copies the store paths into / and runs the
test /init) refers to them too. `netbootd role build --mode compose` then builds the role through
the real CLI: initrds = [stage 1, leader + one gzip archive per store path + registration]. The
VM PXE-boots it (SeaBIOS + iPXE) and POSTs `booted`; netbootd's state must show it.
"""

from __future__ import annotations

import gzip
import json
import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from netbootd.codec import cpio
from testbed import nixenv
from testbed.lab import ROLE_CMDLINE, Site
from testbed.skips import unavailable
from testbed.vm import BootFailed, diagnostics, parse_time, wait_booted

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

MAC = "52:54:00:e2:00:2a"
ROLE = "e2e-composed"
PARTS = {"bin": "busybox", "lib": "modules", "etc": "rootfs", "usr": "rootfs", "init": "rootfs"}


@pytest.fixture(scope="module")
def nix_store(tmp_path_factory: pytest.TempPathFactory):
    why = nixenv.missing()
    if why:  # like the other e2e prerequisites: a skip, a failure under NETBOOTD_REQUIRE_E2E=1
        unavailable(why)
    with nixenv.exported(tmp_path_factory.mktemp("nix")) as env:  # the harness's CLI runs use it
        yield env


def _write(root: Path, e: cpio.Entry, name: str) -> None:
    p = root / name
    p.parent.mkdir(parents=True, exist_ok=True)
    if e.is_dir:
        p.mkdir(exist_ok=True)
    elif stat.S_ISLNK(e.mode):
        os.symlink(e.data.decode(), p)
    elif stat.S_ISREG(e.mode):
        p.write_bytes(e.data)
        p.chmod(stat.S_IMODE(e.mode))


def split_initramfs(image: Path, work: Path) -> tuple[dict[str, Path], list[cpio.Entry]]:
    """The test initramfs -> three part directories, and the entries stage 1 keeps (the
    directories and device nodes)."""
    parts = {n: work / "parts" / n for n in set(PARTS.values())}
    for d in parts.values():
        d.mkdir(parents=True, exist_ok=True)
    keep: list[cpio.Entry] = []
    for e in cpio.parse(gzip.decompress(image.read_bytes())):
        if e is None:
            continue
        top = e.name.split("/")[0]
        if top in PARTS:
            # the test's /init runs as /init.test: stage 1's own /init is not overwritten
            _write(parts[PARTS[top]], e, "init.test" if e.name == "init" else e.name)
        elif e.is_dir or stat.S_ISCHR(e.mode):
            keep.append(e)
    return parts, keep


def nix_add(path: Path) -> str:
    r = subprocess.run(
        ["nix-store", "--add", str(path)], capture_output=True, text=True, check=True
    )
    return r.stdout.strip()


def test_composed_initrd_boots(
    e2e_env: dict[str, str], nix_store: dict[str, str], site: Site, boot_timer: Any, tmp_path: Path
) -> None:
    parts, keep = split_initramfs(Path(e2e_env["initramfs"]), tmp_path)
    store_paths = {name: nix_add(d) for name, d in sorted(parts.items())}
    bb = store_paths["busybox"]
    copy = "\n".join(f"$B cp -a {p}/. /" for p in store_paths.values())
    init = (
        f"#!{bb}/bin/busybox sh\n"
        "# stage 1: bring the store paths' contents into the root, then the test's /init\n"
        f"B={bb}/bin/busybox\n{copy}\nexec /init.test\n"
    ).encode()
    stage1_entries = keep + [cpio.Entry("init", stat.S_IFREG | 0o755, init)]
    stage1 = tmp_path / "stage1"
    stage1.mkdir()
    (stage1 / "initrd").write_bytes(gzip.compress(cpio.archive(stage1_entries), mtime=0))
    kernel = tmp_path / "kernel"
    kernel.mkdir()
    (kernel / "bzImage").write_bytes(Path(e2e_env["vmlinuz"]).read_bytes())
    refs = " ".join(f"${{builtins.storePath {json.dumps(p)}}}" for p in store_paths.values())
    (tmp_path / "system.nix").write_text(f"""{{
  composed = {{
    config.system.build = {{
      kernel.outPath = {json.dumps(nix_add(kernel))};
      initialRamdisk.outPath = {json.dumps(nix_add(stage1))};
      toplevel = builtins.derivation {{
        name = "toplevel-composed"; system = builtins.currentSystem; builder = "/bin/sh";
        args = [ "-c" "echo {refs} > $out" ];
      }};
    }};
    config.boot.kernelParams = [ ];
  }};
}}
""")
    out = site.nb.cli(
        "role",
        "build",
        ROLE,
        "--file",
        str(tmp_path / "system.nix"),
        "--attr",
        "composed",
        "--mode",
        "compose",
        "--cmdline",
        ROLE_CMDLINE,
    )
    assert f"role {ROLE}: generation 1 is current (compose initrd" in out
    assert "4 store paths: 0 cached, 4 compressed" in out  # 3 parts + the toplevel
    gens = json.loads(site.nb.cli("role", "generations", ROLE, "--json"))
    assert len(gens[0]["initrds"]) == 2
    site.nb.enroll(MAC, ROLE, hostname="composed")
    vm = site.vm("composed", MAC, "bios").start()
    try:
        result = wait_booted(site.nb, vm, timeout=90)
    except BootFailed as e:
        pytest.fail(f"{e}\n{diagnostics(site.lab, site.nb, vm)}", pytrace=False)
    finally:
        vm.stop(grace=3)
    assert result.host["role"] == ROLE and parse_time(result.host["last_boot"]) is not None
    served = [line for line in site.nb.log_lines_about(MAC) if "served script" in line]
    assert served and f"role={ROLE}" in served[-1]
    boot_timer(result.seconds, "[bios; composed initrd: stage 1 + 4 per-path archives]")
