"""Roles built from a NixOS-shaped configuration with real Nix (Debian's nix-bin, a private store
per module): generations, incremental compose, rollback, pins, gc, build-image -- through the
real CLI and the real daemon.

The fixture (tests/nix/fake-nixos) is built without nixpkgs: a kernel, an initialRamdisk, a
netbootRamdisk and a toplevel whose closure has 43 store paths; its `version` file feeds one
store path ("etc"), so changing it changes exactly etc + the toplevel.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import time
from pathlib import Path

import pytest
from initrd_tools import snapshot, split_members, unpack

from netbootd.roles.compose import ComposeCache, compose
from netbootd.roles.nixbuild import Nix
from testbed import nixenv
from tests.conftest import Cli, start_daemon, stop_daemon

pytestmark = pytest.mark.skipif(nixenv.missing() is not None, reason=str(nixenv.missing()))

MAC = "52:54:00:aa:00:01"


@pytest.fixture(scope="module")
def nix_store(tmp_path_factory: pytest.TempPathFactory):
    """A private Nix store for the module, exported to the CLI subprocesses via os.environ."""
    with nixenv.exported(tmp_path_factory.mktemp("nix")) as env:
        yield env


def closure(path: str) -> set[str]:
    out = subprocess.run(["nix-store", "-qR", path], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def artifact(cli: Cli, sha: str) -> Path:
    return cli.state_dir / "artifacts" / sha[:2] / sha


def build(cli: Cli, flake: Path, *extra: str) -> dict:
    cli.run("role", "build", "web", "--flake", f"path:{flake}#fake", "--mode", "compose", *extra)
    return cli.json("role", "generations", "web")[-1]


def test_build_incremental_rollback_pin_gc(nix_store, cli: Cli, tmp_path: Path) -> None:
    flake = nixenv.fixture_copy(tmp_path / "flake", version="1")

    # -- generation 1: everything compressed once
    p = cli.run("role", "build", "web", "--flake", f"path:{flake}#fake", "--mode", "compose")
    assert "role web: generation 1 is current (compose initrd" in p.stdout
    assert (
        "building '" in p.stderr
        and "netbootd: composing the initrd from 43 store paths" in p.stderr
    )
    g1 = cli.json("role", "generations", "web")[0]
    c1 = closure(g1["toplevel"])
    assert len(c1) == 43
    assert (g1["compose_hits"], g1["compose_misses"]) == (0, 43)
    assert g1["source"] == f"path:{flake}#fake" and g1["mode"] == "compose"
    assert g1["build_seconds"] > 0 and g1["toplevel"].startswith(nix_store["NIX_STORE_DIR"])
    assert g1["cmdline"] == f"init={g1['toplevel']}/init console=ttyS0 loglevel=4"
    assert len(g1["initrds"]) == 2  # stage 1 (initialRamdisk) + the composed closure

    # -- generation 2: one store path changed -> only it and the toplevel are compressed
    (flake / "version").write_text("2")
    g2 = build(cli, flake)
    assert g2["generation"] == 2 and g2["current"]
    c2 = closure(g2["toplevel"])
    new_paths = c2 - c1
    assert len(new_paths) == 2 and any(p.endswith("-etc") for p in new_paths)
    assert g2["compose_misses"] == len(new_paths) == 2
    assert g2["compose_hits"] == len(c2) - 2 == 41
    assert g2["kernel"] == g1["kernel"] and g2["initrds"][0] == g1["initrds"][0]
    assert g2["initrds"][1] != g1["initrds"][1]

    # -- the incremental initrd unpacks to the same tree as a from-scratch compose
    inc = artifact(cli, g2["initrds"][1]).read_bytes()
    nix = Nix()
    paths = [Path(p) for p in sorted(c2)]
    buf = io.BytesIO()
    stats = compose(
        paths, ComposeCache(tmp_path / "fresh"), buf.write, registration=nix.registration(paths)
    )
    assert stats.misses == 43
    assert len(split_members(inc)) == 1 + 43 + 1
    unpack(inc, tmp_path / "inc")
    unpack(buf.getvalue(), tmp_path / "scratch")
    assert snapshot(tmp_path / "inc") == snapshot(tmp_path / "scratch")
    assert hashlib.sha256(buf.getvalue()).hexdigest() == g2["initrds"][1]  # even byte-identical
    store_in_initrd = tmp_path / "inc" / nix_store["NIX_STORE_DIR"].lstrip("/")
    etc = next(p for p in new_paths if p.endswith("-etc"))
    assert (store_in_initrd / Path(etc).name / "etc" / "version").read_text() == "2\n"
    assert (store_in_initrd / "nix-path-registration").read_text().count("\n") > 43

    # -- served: current, rollback, pin
    cli.run("enroll", MAC, "web", "--hostname", "n1", "--no-identity")
    d = start_daemon(cli, tmp_path / "serve.log")
    try:

        def script() -> str:
            status, _, body = d.get(f"/boot/{MAC.replace(':', '-')}.ipxe")
            assert status == 200, body
            return body.decode()

        assert g2["initrds"][1] in script() and g2["toplevel"] in script()
        out = cli.run("role", "rollback", "web").stdout
        assert "rolled back from generation 2 to 1" in out
        s = script()
        assert g1["initrds"][1] in s and g2["initrds"][1] not in s and g1["toplevel"] in s
        cli.run("pin", "n1", "2")
        (h,) = cli.json("hosts")
        assert h["generation"] == 2 and h["pinned"] is True
        assert g2["initrds"][1] in script()  # pinned: not the role's current (1)
        cli.run("pin", "n1", "--none")
        assert g1["initrds"][1] in script()
        cli.run("role", "switch", "web", "--generation", "2")
        assert g2["initrds"][1] in script()
        status, _, body = d.get(f"/artifacts/{g2['initrds'][1]}/initrd1")
        assert status == 200 and body == inc
        # what nixos/client.nix reports after the disk layout ran: `provisioned` with the boot's
        # token (netbootd.boot=), which clears a pending re-provision; without one it changes
        # nothing (401)
        events = f"/api/v1/hosts/{MAC.replace(':', '-')}/events"
        assert d.post_json(events, {"event": "provisioned"})[0] == 401
        cli.run("reprovision", "n1")
        s = script()
        assert " netbootd.provision_disks=1 " in s
        token = s.split(" netbootd.boot=", 1)[1].split()[0]
        status, reply = d.post_json(events, {"event": "provisioned", "token": token})
        assert status == 200, reply
        assert cli.json("hosts")[0]["state"] == "ok" and "netbootd.provision_disks" not in script()
    finally:
        stop_daemon(d)

    # -- generation 3 with --keep 2: generation 1 is forgotten; gc removes only its files
    (flake / "version").write_text("3")
    g3 = build(cli, flake, "--keep", "2")
    assert [g["generation"] for g in cli.json("role", "generations", "web")] == [2, 3]
    c3 = closure(g3["toplevel"])
    young = json.loads(cli.run("images", "gc", "--json").stdout)  # default grace: all too young
    assert young["artifacts"] == [] and young["cache_entries"] == [] and young["kept_young"] > 0
    rep = json.loads(cli.run("images", "gc", "--grace", "0", "--json").stdout)
    assert rep["artifacts"] == [g1["initrds"][1]]  # kernel and stage 1 are shared: kept
    only_gen1 = c1 - c2 - c3
    assert sorted(rep["cache_entries"]) == sorted(Path(p).name for p in only_gen1)
    assert rep["freed"] == rep["artifact_bytes"] + rep["cache_bytes"] > 0
    assert not artifact(cli, g1["initrds"][1]).exists()
    for g in (g2, g3):
        for sha in (g["kernel"], *g["initrds"]):
            assert artifact(cli, sha).is_file()
    cached = {p.name for p in (cli.state_dir / "compose-cache").rglob("*") if p.is_file()}
    assert cached == {Path(p).name for p in c2 | c3}
    again = json.loads(cli.run("images", "gc", "--grace", "0", "--json").stdout)
    assert again["freed"] == 0
    # the served generations still boot from what is left
    out = cli.run("role", "switch", "web", "--generation", "2").stdout
    assert "role web: generation 2 is current (was 3)" in out
    r = cli.run("role", "switch", "web", "--generation", "1", check=False)
    assert r.returncode == 2 and "no generation 1 (kept: 2, 3)" in r.stderr

    # -- build-image: the host's files in an external static store
    store = tmp_path / "static"
    cli.run("build-image", "--role", "web", "--mac", MAC, "--store", str(store))
    d2 = store / "by-mac" / MAC.replace(":", "-")
    assert (d2 / "kernel").read_bytes() == artifact(cli, g2["kernel"]).read_bytes()
    assert (d2 / "initrd").read_bytes() == b"".join(
        artifact(cli, s).read_bytes() for s in g2["initrds"]
    )
    ipxe = (d2 / "netboot.ipxe").read_text()
    assert ipxe.startswith("#!ipxe\n") and "kernel kernel initrd=initrd0 init=" in ipxe
    assert "\ninitrd --name initrd0 initrd\nboot\n" in ipxe
    cli.run(
        "build-image",
        "--role",
        "web",
        "--canon",
        "n1.example.org",
        "--store",
        str(store),
        "--generation",
        "3",
    )
    assert (store / "by-canon" / "n1.example.org" / "netboot.ipxe").read_text().count(
        "generation 3"
    ) == 1


def test_netboot_mode_from_file_and_errors(nix_store, cli: Cli, tmp_path: Path) -> None:
    src = nixenv.fixture_copy(tmp_path / "src", version="7")
    p = cli.run("role", "build", "net", "--file", str(src / "default.nix"), "--attr", "fake")
    assert "generation 1 is current (netboot initrd" in p.stdout
    (g,) = cli.json("role", "generations", "net")
    assert g["mode"] == "netboot" and len(g["initrds"]) == 1 and g["compose_misses"] == 0
    want = Path(g["initrd_path"]) / "initrd"
    assert hashlib.sha256(want.read_bytes()).hexdigest() == g["initrds"][0]
    assert g["source"] == f"file:{src / 'default.nix'}#fake"

    # a broken configuration: Nix's own message, exit 2, nothing written
    (src / "default.nix").write_text('{ fake = throw "broken on purpose"; }\n')
    r = cli.run(
        "role", "build", "net", "--file", str(src / "default.nix"), "--attr", "fake", check=False
    )
    assert r.returncode == 2 and "broken on purpose" in r.stderr
    assert len(cli.json("role", "generations", "net")) == 1
    r = cli.run("role", "build", "net", "--flake", "no-hash-here", check=False)
    assert r.returncode == 2 and "<flake ref>#<configuration name>" in r.stderr
    r = cli.run(
        "role", "build", "net", "--file", str(src / "default.nix"), "--attr", "a b", check=False
    )
    assert r.returncode == 2 and "not an attribute path" in r.stderr


def test_prebuilt_paths_as_the_nixos_module_passes_them(
    nix_store, cli: Cli, tmp_path: Path
) -> None:
    """nixos/module.nix lists each role's already-built paths as { outPath = ...; } in a JSON
    file; `role build --file` then builds nothing and imports them."""
    src = nixenv.fixture_copy(tmp_path / "src", version="9")
    cli.run(
        "role",
        "build",
        "a",
        "--file",
        str(src / "default.nix"),
        "--attr",
        "fake",
        "--mode",
        "compose",
    )
    (g,) = cli.json("role", "generations", "a")
    roles = {
        "a": {
            "config": {
                "system": {
                    "build": {
                        "kernel": {"outPath": g["kernel_path"]},
                        "initialRamdisk": {"outPath": g["initrd_path"]},
                        "netbootRamdisk": {"outPath": g["initrd_path"]},
                        "toplevel": {"outPath": g["toplevel"]},
                    }
                },
                "boot": {"kernelParams": ["console=ttyS0", "loglevel=4"]},
            }
        }
    }
    (tmp_path / "roles.json").write_text(json.dumps(roles))
    (tmp_path / "roles.nix").write_text("builtins.fromJSON (builtins.readFile ./roles.json)\n")
    p = cli.run(
        "role",
        "build",
        "b",
        "--file",
        str(tmp_path / "roles.nix"),
        "--attr",
        "a",
        "--mode",
        "compose",
    )
    assert "building '" not in p.stderr
    (gb,) = cli.json("role", "generations", "b")
    assert gb["initrds"] == g["initrds"] and gb["kernel"] == g["kernel"]
    assert gb["compose_hits"] == 43 and gb["compose_misses"] == 0
    assert gb["cmdline"] == g["cmdline"]


def test_gc_waits_for_an_import_in_progress(tmp_path: Path) -> None:
    """An artifact whose generation row is still being added is never collected, even with a
    zero grace period: imports hold the images lock (shared) until their row is committed."""
    import threading

    from netbootd.roles.artifacts import Artifacts, artifacts_lock, gc
    from netbootd.store import Store

    state = tmp_path / "state"
    store = Store(state)
    arts = Artifacts(state)
    (tmp_path / "k").write_bytes(b"kernel")
    written = threading.Event()
    release = threading.Event()

    def slow_import() -> None:
        with artifacts_lock(state, exclusive=False):
            k = arts.import_file(tmp_path / "k")
            written.set()
            release.wait(10)
            store.add_generation("r", k, [k], "", "import")

    t = threading.Thread(target=slow_import)
    t.start()
    assert written.wait(10)
    result = {}
    g = threading.Thread(target=lambda: result.update(rep=gc(Store(state), state, grace=0)))
    g.start()
    time.sleep(0.3)
    assert g.is_alive(), "gc must wait for the import's lock"
    release.set()
    t.join(10)
    g.join(10)
    assert result["rep"].artifacts == []
    assert arts.has(hashlib.sha256(b"kernel").hexdigest())
