"""netbootd/ipxe/: the embedded script, the build key, sources (tarball and tree), and what
`serve` hands out (a current build while it trusts the current CA, else the distro files).
No compiler runs here: tests/integration/test_ipxe_build.py runs make."""

from __future__ import annotations

import json
import tarfile
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from netbootd.errors import IpxeBuildError, NotFound
from netbootd.identity import tls
from netbootd.ipxe import build as ib
from netbootd.ipxe import served
from netbootd.model import BootFileNames

DISTRO = BootFileNames()


def test_embedded_script_chains_over_https_to_the_fixed_address() -> None:
    s = ib.embedded_script(IPv4Address("192.168.77.1"), 443)
    assert s.startswith("#!ipxe\n")
    assert "chain https://192.168.77.1/boot/${netX/mac:hexhyp}.ipxe || goto failed\n" in s
    assert "${filename}" not in s and "http://" not in s  # never the LAN's word for the URL
    s = ib.embedded_script(IPv4Address("10.0.0.5"), 8443)
    assert "chain https://10.0.0.5:8443/boot/${netX/mac:hexhyp}.ipxe" in s
    # a failure is said on the console and retried (the e2e looks for this marker)
    assert "NETBOOTD-IPXE: chain failed" in s and "goto retry" in s


def _source(tmp_path: Path, digest: str = "a" * 64) -> ib.Source:
    return ib.Source(tmp_path, digest, "test")


def test_build_key_covers_source_ca_script_and_targets(tmp_path: Path) -> None:
    src, embed = _source(tmp_path), ib.embedded_script(IPv4Address("10.0.0.1"), 443)
    t = list(ib.TARGETS[:2])
    k = ib.build_key(src, "ca1", embed, t)
    assert k == ib.build_key(src, "ca1", embed, t)
    others = {ib.build_key(_source(tmp_path, "b" * 64), "ca1", embed, t),
              ib.build_key(src, "ca2", embed, t),
              ib.build_key(src, "ca1", ib.embedded_script(IPv4Address("10.0.0.2"), 443), t),
              ib.build_key(src, "ca1", embed, t[:1])}
    assert k not in others and len(others) == 4


def _tree(top: Path) -> Path:
    (top / "src" / "config" / "local").mkdir(parents=True)
    (top / "src" / "Makefile").write_text("all:\n")
    (top / "src" / "core.c").write_text("int x;\n")
    return top


def test_tree_digest_ignores_build_outputs_and_our_general_h(tmp_path: Path) -> None:
    top = _tree(tmp_path / "ipxe")
    d0 = ib.Source.open(top).digest
    (top / "src" / "bin-x86_64-efi").mkdir()
    (top / "src" / "bin-x86_64-efi" / "ipxe.efi").write_bytes(b"MZ")
    (top / "src" / "config" / "local" / "general.h").write_text("#define X\n")
    assert ib.Source.open(top).digest == d0
    (top / "src" / "config" / "local" / "console.h").write_text("#define Y\n")  # the operator's
    d1 = ib.Source.open(top).digest
    (top / "src" / "core.c").write_text("int y;\n")
    assert len({d0, d1, ib.Source.open(top).digest}) == 3


def test_not_a_source(tmp_path: Path) -> None:
    with pytest.raises(IpxeBuildError, match="no src/Makefile"):
        ib.Source.open(tmp_path)


def test_tarball_is_unpacked_without_its_top_directory(tmp_path: Path) -> None:
    top = _tree(tmp_path / "ipxe-0ab2277c")
    tar = tmp_path / "ipxe-0ab2277c.tar.gz"
    with tarfile.open(tar, "w:gz") as tf:
        tf.add(top, arcname="ipxe-0ab2277c")
    src = ib.Source.open(tar)
    assert src.label == "ipxe-0ab2277c" and len(src.digest) == 64
    work = tmp_path / "work"
    work.mkdir()
    out = ib._prepare_tree(src, work, "x86_64-efi")
    assert (out / "Makefile").read_text() == "all:\n" and (out / "core.c").is_file()
    assert (out / "config" / "local" / "general.h").read_text() == ib.GENERAL_H
    assert ib._prepare_tree(src, work, "x86_64-efi") == out  # once per digest and target
    assert ib._prepare_tree(src, work, "bios") != out
    tree_src = ib.Source.open(top)
    copied = ib._prepare_tree(tree_src, work, "x86_64-efi")
    assert copied != out and (copied / "core.c").is_file()


def test_a_tarball_that_escapes_is_refused(tmp_path: Path) -> None:
    evil = tmp_path / "evil.tar"
    payload = tmp_path / "x"
    payload.write_text("x")
    with tarfile.open(evil, "w") as tf:
        tf.add(payload, arcname="top/src/Makefile")
        info = tarfile.TarInfo("top/src/link")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(info)
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(IpxeBuildError):
        ib._prepare_tree(ib.Source.open(evil), work, "bios")
    assert not list(work.glob("src-*"))


def _fake_build(state: Path, targets: tuple[str, ...] = ("x86_64-efi", "bios")) -> str:
    """A build directory as ib.build leaves it, for the CA the state directory has now."""
    ca = tls.ca_certificate(state)
    key = "k" + ib.ca_fingerprint(ca)[:8]
    d = ib.builds_dir(state) / key
    files = {}
    for name in targets:
        t = ib.BY_NAME[name]
        (d / t.file).parent.mkdir(parents=True, exist_ok=True)
        (d / t.file).write_bytes(f"binary {name}".encode())
        files[name] = {"file": t.file, "size": 1, "sha256": "0" * 64}
    (d / "manifest.json").write_text(json.dumps({
        "key": key, "recipe": ib.RECIPE, "ca_sha256": ib.ca_fingerprint(ca), "targets": files,
        "source_label": "test", "address": "10.0.0.1", "https_port": 443}))
    ib.set_current(state, key)
    return key


def test_served_build_replaces_the_distro_names_until_the_ca_rotates(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(served, "RECHECK", 0.0)
    tls.rotate(tmp_path, ca=True)
    assert served.ServedIpxe(tmp_path).boot_files(DISTRO) == DISTRO  # no build: the distro's
    _fake_build(tmp_path, ("x86_64-efi", "bios", "arm64-efi"))
    s = served.ServedIpxe(tmp_path)
    files = s.boot_files(DISTRO)
    names = ("netbootd-ipxe/undionly.kpxe", "netbootd-ipxe/ipxe.efi",
             "netbootd-ipxe/arm64/ipxe.efi")
    assert files == BootFileNames(*names, https_ipxe=frozenset(names))
    built = s.path("netbootd-ipxe/ipxe.efi")
    assert built is not None and built.read_bytes() == b"binary x86_64-efi"
    assert s.path("/netbootd-ipxe/arm64/ipxe.efi") is not None  # TFTP names may lead with /
    for name in ("ipxe.efi", "netbootd-ipxe/manifest.json", "netbootd-ipxe/../current.json",
                 "netbootd-ipxe/ipxe.efi/"):
        assert s.path(name) is None, name
    tls.rotate(tmp_path, ca=True)  # the build now trusts a CA netbootd no longer has
    assert s.boot_files(DISTRO) == DISTRO and s.path("netbootd-ipxe/ipxe.efi") is None
    st = served.status(tmp_path)
    assert st is not None and st.stale and "rotated" in st.stale
    _fake_build(tmp_path)  # `ipxe build` again: served again (no arm64 in this one)
    assert s.boot_files(DISTRO) == BootFileNames(*names[:2], None,
                                                 https_ipxe=frozenset(names[:2]))
    assert ib.clear_current(tmp_path)  # `ipxe off`
    assert s.boot_files(DISTRO) == DISTRO


def test_a_build_with_a_missing_file_is_not_served(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(served, "RECHECK", 0.0)
    tls.rotate(tmp_path, ca=True)
    key = _fake_build(tmp_path)
    (ib.builds_dir(tmp_path) / key / "undionly.kpxe").unlink()
    assert served.ServedIpxe(tmp_path).boot_files(DISTRO) == DISTRO
    st = served.status(tmp_path)
    assert st is not None and st.stale and "missing" in st.stale


def test_a_damaged_pointer_serves_the_distro_files(tmp_path: Path) -> None:
    tls.rotate(tmp_path, ca=True)
    ib.current_path(tmp_path).parent.mkdir(parents=True)
    ib.current_path(tmp_path).write_text('{"key": "../../etc"}')
    assert served.ServedIpxe(tmp_path).boot_files(DISTRO) == DISTRO


def test_unknown_compiler_is_an_operator_error(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    tls.rotate(tmp_path, ca=True)
    monkeypatch.setattr(ib.shutil, "which", lambda name: None)
    with pytest.raises(IpxeBuildError, match="aarch64-linux-gnu-gcc"):
        ib.build(tmp_path, _source(tmp_path), tls.ca_certificate(tmp_path),
                 IPv4Address("10.0.0.1"), 443, [ib.BY_NAME["arm64-efi"]])
    assert not ib.builds_dir(tmp_path).exists() or not list(ib.builds_dir(tmp_path).iterdir())


X64_STUB = Path("/usr/lib/systemd/boot/efi/linuxx64.efi.stub")


@pytest.mark.skipif(not X64_STUB.is_file(), reason="systemd-boot-efi is not installed")
def test_the_uki_stub_follows_the_kernels_pe_machine(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """An arm64 kernel (PE machine 0xAA64) gets boot.uki_stub_arm64 and the cross binutils;
    anything else the x86-64 stub (roles/uki.py, servers/chain_http.py)."""
    from types import SimpleNamespace

    from netbootd.codec import pe
    from netbootd.roles import uki
    from netbootd.servers.chain_http import ChainService

    data = bytearray(X64_STUB.read_bytes())
    at = int.from_bytes(data[0x3C:0x40], "little") + 4
    arm64 = tmp_path / "arm64.efi"
    data[at:at + 2] = (uki.MACHINE_ARM64).to_bytes(2, "little")
    arm64.write_bytes(bytes(data))
    assert uki.pe_machine(X64_STUB) == 0x8664 and uki.pe_machine(arm64) == 0xAA64
    assert pe.parse(arm64.read_bytes()).machine == 0xAA64
    assert uki.pe_machine(tmp_path / "missing") is None
    (tmp_path / "not-pe").write_bytes(b"\x1f\x8b" + bytes(100))  # a gzip'd Image
    assert uki.pe_machine(tmp_path / "not-pe") is None
    assert uki.binutil("objcopy", X64_STUB) == "objcopy"
    monkeypatch.setattr(uki.shutil, "which", lambda name: f"/usr/bin/{name}")
    assert uki.binutil("objdump", arm64) == "aarch64-linux-gnu-objdump"
    kernels = {"a" * 64: arm64, "b" * 64: X64_STUB}
    builder = SimpleNamespace(artifacts=SimpleNamespace(path=lambda sha: kernels[sha]))
    svc = ChainService(builder, Path("/x64.stub"), tmp_path,  # type: ignore[arg-type]
                       stub_arm64=Path("/aa64.stub"))
    image = SimpleNamespace(kernel=SimpleNamespace(sha256="a" * 64))
    assert svc.stub_for(image) == Path("/aa64.stub")  # type: ignore[arg-type]
    image.kernel.sha256 = "b" * 64
    assert svc.stub_for(image) == Path("/x64.stub")  # type: ignore[arg-type]
    monkeypatch.setattr(uki.shutil, "which", lambda name: None)
    with pytest.raises(NotFound, match="binutils-aarch64-linux-gnu"):
        uki.binutil("objcopy", arm64)
