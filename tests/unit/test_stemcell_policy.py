"""The boot-mode decision (policy.stem_cell via boot_plan) and the scripts rendered for each mode,
compared whole; the destroy guard."""

import pytest

from netbootd import policy
from netbootd.codec.ipxe import ScriptRenderer
from netbootd.config import Config
from netbootd.model import (
    Artifact,
    BootMode,
    Host,
    Image,
    IscsiLun,
    MacAddress,
    RoleBoot,
    StemCell,
    Urls,
)

TEMPLATES = Config().templates_dir
MAC = MacAddress.parse("52:54:00:12:34:56")
HOST = Host(MAC, "stem", hostname="web1")
IMAGE = Image("stem", 2, Artifact("a" * 64, 1), (Artifact("b" * 64, 1),), "console=ttyS0", 0.0)
URLS = Urls("http://10.0.0.1:8080")
EVENTS = "netbootd.events=http://10.0.0.1:8080/api/v1/hosts/52-54-00-12-34-56/events"
TOP = "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-nixos-system-web1-24.05"
BASE = "iqn.2025-01.org.netbootd"
LUN = IscsiLun(MAC, 3, f"{BASE}:52-54-00-12-34-56", f"{BASE}:host.52-54-00-12-34-56", "deb12", 2,
               "reflink", "/srv/iscsi/hosts/52-54-00-12-34-56/root.img",
               "/srv/iscsi/hosts/52-54-00-12-34-56/data.img", 1 << 30, 0.0, 0.0)
NFS = StemCell(RoleBoot("stem", BootMode.NFS_STORE), nfs_server="10.0.0.1",
               nfs_store="/srv/nfs/store", nfs_host="/srv/nfs/hosts/52-54-00-12-34-56",
               toplevel=TOP)


def render(stem):
    return ScriptRenderer(TEMPLATES).host_script(policy.boot_plan(HOST, IMAGE, URLS, stem=stem))


def test_ramdisk_is_the_default_and_unchanged():
    plain = policy.boot_plan(HOST, IMAGE, URLS)
    same = policy.boot_plan(HOST, IMAGE, URLS, stem=StemCell(RoleBoot("stem")))
    assert plain == same and plain.mode is BootMode.RAMDISK and plain.san is None


def test_nfs_store_differs_by_command_line_only():
    plan = policy.boot_plan(HOST, IMAGE, URLS, stem=NFS)
    assert plan.mode is BootMode.NFS_STORE
    assert plan.cmdline == (
        f"initrd=initrd0 console=ttyS0 {EVENTS} netbootd.hostname=web1 "
        "netbootd.nfs.server=10.0.0.1 netbootd.nfs.store=/srv/nfs/store "
        "netbootd.nfs.host=/srv/nfs/hosts/52-54-00-12-34-56 netbootd.nfs.upper=tmpfs "
        f"netbootd.toplevel={TOP}"
    )
    # the same script as a ramdisk boot (the role's kernel, the stem-cell initrd): only the
    # kernel command line is longer
    extra = plan.cmdline.split("netbootd.hostname=web1 ")[1]
    plain, stem = render(None).splitlines(), render(NFS).splitlines()
    assert [a == b for a, b in zip(plain, stem, strict=True)].count(False) == 1
    (k_plain,) = [x for x in plain if x.startswith("kernel ")]
    (k_stem,) = [x for x in stem if x.startswith("kernel ")]
    assert k_stem == k_plain.replace(" || goto failed", f" {extra} || goto failed")


@pytest.mark.parametrize("stem, message", [
    (StemCell(RoleBoot("stem", BootMode.NFS_STORE), nfs_server="10.0.0.1", nfs_store="/s",
              nfs_host="/h"), "never synced: netbootd nfs sync stem"),
    (StemCell(RoleBoot("stem", BootMode.NFS_STORE), toplevel=TOP), "no NFS server address"),
    (StemCell(RoleBoot("stem", BootMode.NFS_STORE), nfs_server="1.2.3.4", nfs_store="/s",
              nfs_host="/h", toplevel="/etc/passwd"), "not a store path"),
    (StemCell(RoleBoot("stem", BootMode.ISCSI, gold="g"), portal="10.0.0.1:3260"),
     "has no LUN yet: netbootd iscsi reconcile"),
    (StemCell(RoleBoot("stem", BootMode.ISCSI, gold="g"), lun=LUN), "no iSCSI portal"),
])
def test_stem_cell_errors_say_what_to_do(stem, message):
    with pytest.raises(policy.StemCellError, match=message):
        policy.boot_plan(HOST, IMAGE, URLS, stem=stem)


def test_iscsi_sanboot_script_whole():
    stem = StemCell(RoleBoot("stem", BootMode.ISCSI, gold="deb12"), portal="10.0.0.1:3260", lun=LUN)
    plan = policy.boot_plan(HOST, IMAGE, URLS, stem=stem)
    assert plan.san is not None and not plan.san.hook
    assert plan.san.root_url == f"iscsi:10.0.0.1::3260:1:{BASE}:52-54-00-12-34-56"
    assert plan.san.data_url == f"iscsi:10.0.0.1::3260:2:{BASE}:52-54-00-12-34-56"
    assert (
        render(stem)
        == f"""#!ipxe
# netbootd: web1 (52:54:00:12:34:56) boots role stem from its own iSCSI root LUN
# (a copy-on-write clone of the role's gold image). A file named <role>.ipxe.j2 in the templates
# directory replaces this for one role.
echo netbootd: web1 (52:54:00:12:34:56) -> stem \
(iscsi iscsi:10.0.0.1::3260:1:{BASE}:52-54-00-12-34-56)
set initiator-iqn {BASE}:host.52-54-00-12-34-56
sanboot --drive 0x80 iscsi:10.0.0.1::3260:1:{BASE}:52-54-00-12-34-56 || goto failed

:failed
echo netbootd: iSCSI boot of web1 failed; see `netbootd iscsi list` \
and `netbootd explain 52:54:00:12:34:56` on the server
exit 1
"""
    )


def test_iscsi_sanhook_boots_the_kernel_with_initiator_parameters():
    stem = StemCell(
        RoleBoot("stem", BootMode.ISCSI, gold="deb12", san="sanhook"),
        portal="10.0.0.1:3260",
        lun=LUN,
    )
    text = render(stem)
    root = f"iscsi:10.0.0.1::3260:1:{BASE}:52-54-00-12-34-56"
    assert f"set initiator-iqn {BASE}:host.52-54-00-12-34-56\n" in text
    assert f"sanhook --drive 0x80 {root} || goto failed\n" in text
    kernel = next(line for line in text.splitlines() if line.startswith("kernel "))
    assert kernel.endswith(
        f"netroot={root} rd.iscsi.initiator={BASE}:host.52-54-00-12-34-56 "
        f"netbootd.iscsi.data=iscsi:10.0.0.1::3260:2:{BASE}:52-54-00-12-34-56 || goto failed"
    )
    assert "initrd --name initrd0 " in text and "boot || goto failed" in text
    assert "sanboot" not in text


@pytest.mark.parametrize(
    "how, line",
    [("exit", "exit 0"), ("sanboot", "sanboot --no-describe --drive 0x80 || goto failed")],
)
def test_local(how, line):
    stem = StemCell(RoleBoot("stem", BootMode.LOCAL, local=how))
    text = render(stem)
    assert text.startswith("#!ipxe\n# netbootd: web1 (52:54:00:12:34:56) boots its local disk")
    assert f"\n{line}\n" in text and "kernel " not in text


def test_role_template_still_wins(tmp_path):
    for f in TEMPLATES.rglob("*.j2"):
        dest = tmp_path / f.relative_to(TEMPLATES)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(f.read_text())
    (tmp_path / "stem.ipxe.j2").write_text("#!ipxe\necho mine {{ mode }}\n")
    stem = StemCell(RoleBoot("stem", BootMode.LOCAL))
    plan = policy.boot_plan(HOST, IMAGE, URLS, stem=stem)
    assert ScriptRenderer(tmp_path).host_script(plan) == "#!ipxe\necho mine local\n"


def test_destroy_decision():
    now = 1_000_000.0
    booted = Host(MAC, "stem", last_boot=now - 60)
    assert not policy.destroy_decision(booted, (), now, 3600).ok
    assert "booted 60s ago" in policy.destroy_decision(booted, (), now, 3600).reason
    assert policy.destroy_decision(booted, (), now, 30).ok
    assert policy.destroy_decision(Host(MAC, "stem"), (), now, 3600).ok
    assert policy.destroy_decision(None, (), now, 3600).ok
    r = policy.destroy_decision(Host(MAC, "stem"), ("iqn.x:y",), now, 0)
    assert not r.ok and "logged in" in r.reason
