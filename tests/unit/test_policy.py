from ipaddress import IPv4Address

from netbootd import policy
from netbootd.model import Arch, Artifact, BootClient, BootFileNames, Host, Image, MacAddress, Urls

MAC = MacAddress.parse("52:54:00:12:34:56")
HOST = Host(MAC, "web", hostname="web1")
SERVER = IPv4Address("192.168.77.1")
URLS = Urls.for_address(SERVER, 8080)
FILES = BootFileNames()
K = Artifact("a" * 64, 10)
I0, I1 = Artifact("b" * 64, 20), Artifact("c" * 64, 30)
IMAGE = Image("web", 3, K, (I0, I1), "console=ttyS0", 0.0)


def test_unknown_mac_gets_nothing():
    for arch in Arch:
        for ipxe in (False, True):
            assert policy.dhcp_boot(None, BootClient(MAC, arch, ipxe), SERVER, URLS, FILES) is None


def test_boot_file_by_arch():
    table = {
        (Arch.BIOS, False): ("undionly.kpxe", "PXEClient"),
        (Arch.UEFI, False): ("ipxe.efi", "PXEClient"),
        (Arch.HTTP, False): ("http://192.168.77.1:8080/ipxe/ipxe.efi", "HTTPClient"),
        (Arch.BIOS, True): ("http://192.168.77.1:8080/boot/52-54-00-12-34-56.ipxe", "PXEClient"),
        (Arch.UEFI, True): ("http://192.168.77.1:8080/boot/52-54-00-12-34-56.ipxe", "PXEClient"),
    }
    for (arch, ipxe), (filename, vc) in table.items():
        boot = policy.dhcp_boot(HOST, BootClient(MAC, arch, ipxe), SERVER, URLS, FILES)
        assert boot is not None
        assert (boot.filename, boot.vendor_class, boot.next_server) == (filename, vc, SERVER)


def test_arm64_only_when_configured():
    client = BootClient(MAC, Arch.ARM64)
    assert policy.dhcp_boot(HOST, client, SERVER, URLS, FILES) is None
    files = BootFileNames(arm64="arm64/snponly.efi")
    boot = policy.dhcp_boot(HOST, client, SERVER, URLS, files)
    assert boot is not None and boot.filename == "arm64/snponly.efi"


def test_configured_uefi_binary():
    files = BootFileNames(uefi="snponly.efi")
    boot = policy.dhcp_boot(HOST, BootClient(MAC, Arch.UEFI), SERVER, URLS, files)
    assert boot is not None and boot.filename == "snponly.efi"


def test_port_80_urls_have_no_port():
    assert Urls.for_address(SERVER, 80).script(MAC) == "http://192.168.77.1/boot/52-54-00-12-34-56.ipxe"


def test_boot_plan():
    plan = policy.boot_plan(HOST, IMAGE, URLS)
    assert plan.kernel_url == f"http://192.168.77.1:8080/artifacts/{'a' * 64}/kernel"
    assert plan.initrds == (
        ("initrd0", f"http://192.168.77.1:8080/artifacts/{'b' * 64}/initrd0"),
        ("initrd1", f"http://192.168.77.1:8080/artifacts/{'c' * 64}/initrd1"),
    )
    assert plan.cmdline == (
        "initrd=initrd0 initrd=initrd1 console=ttyS0 "
        "netbootd.events=http://192.168.77.1:8080/api/v1/hosts/52-54-00-12-34-56/events "
        "netbootd.hostname=web1"
    )
