"""The boot chain's decisions (policy.py): a host's chain from its role over the defaults, the
URLs it is handed, refusals of plain HTTP under transport https, the Secure Boot rule, the
proxyDHCP answer for UEFI HTTP(S) boot clients (arch 16 and 19), TLS re-issue."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest

from netbootd import policy
from netbootd.model import (
    Arch,
    BootChain,
    BootClient,
    BootFileNames,
    Host,
    HttpBoot,
    Loader,
    MacAddress,
    RoleChain,
    SecureBootRule,
    SecureBootState,
    Transport,
    Urls,
)

MAC = MacAddress.parse("52:54:00:12:34:56")
HOST = Host(MAC, "web")
SRV = IPv4Address("10.0.0.1")
HTTP = Urls.for_address(SRV, 8080)
HTTPS = Urls.for_https(SRV, 8443)
FILES = BootFileNames(arm64="arm64/snponly.efi")


def chain(**kw: object) -> BootChain:
    return policy.boot_chain(RoleChain("web", **kw), "http", "ipxe", signing=True)  # type: ignore[arg-type]


def test_role_over_defaults_and_required_means_uki():
    c = policy.boot_chain(RoleChain("web"), "https", "uki", signing=False)
    assert (c.transport, c.http_boot, c.secure_boot, c.signed) == (
        Transport.HTTPS, HttpBoot.UKI, SecureBootRule.OFF, False)
    c = chain(transport=Transport.HTTP, http_boot=HttpBoot.IPXE,
              secure_boot=SecureBootRule.REQUIRED)
    assert c.transport is Transport.HTTP and c.http_boot is HttpBoot.UKI  # iPXE is not signed


@pytest.mark.parametrize(("client", "kw", "want"), [
    (BootClient(MAC, Arch.HTTP), {}, ("http://10.0.0.1:8080/ipxe/ipxe.efi", "HTTPClient")),
    (BootClient(MAC, Arch.HTTP), {"transport": Transport.HTTPS},
     ("https://10.0.0.1:8443/ipxe/ipxe.efi", "HTTPClient")),
    (BootClient(MAC, Arch.HTTP), {"http_boot": HttpBoot.UKI},
     ("http://10.0.0.1:8080/uki/52-54-00-12-34-56.efi", "HTTPClient")),
    (BootClient(MAC, Arch.HTTP_ARM64), {"transport": Transport.HTTPS, "http_boot": HttpBoot.UKI},
     ("https://10.0.0.1:8443/uki/52-54-00-12-34-56.efi", "HTTPClient")),
    (BootClient(MAC, Arch.HTTP_ARM64), {},
     ("http://10.0.0.1:8080/ipxe/arm64/snponly.efi", "HTTPClient")),
    (BootClient(MAC, Arch.UEFI, ipxe=True, ipxe_https=True), {"transport": Transport.HTTPS},
     ("https://10.0.0.1:8443/boot/52-54-00-12-34-56.ipxe", "PXEClient")),
    (BootClient(MAC, Arch.BIOS, ipxe=True), {},
     ("http://10.0.0.1:8080/boot/52-54-00-12-34-56.ipxe", "PXEClient")),
    (BootClient(MAC, Arch.UEFI), {"transport": Transport.HTTPS}, ("ipxe.efi", "PXEClient")),
])
def test_dhcp_answers_the_chain(client, kw, want):
    boot = policy.dhcp_boot(HOST, client, SRV, HTTP, FILES, chain(**kw), HTTPS)
    assert boot is not None and (boot.filename, boot.vendor_class) == want


OWN = BootFileNames(bios="netbootd-ipxe/undionly.kpxe", uefi="netbootd-ipxe/ipxe.efi",
                    https_ipxe=frozenset({"netbootd-ipxe/undionly.kpxe"}))


@pytest.mark.parametrize(("arch", "files", "want"), [
    (Arch.BIOS, OWN, "netbootd-ipxe/undionly.kpxe"),  # QEMU's ROM -> netbootd's build
    (Arch.UEFI, OWN, None),  # its ipxe.efi is not an HTTPS build: no plain-HTTP fallback
    (Arch.BIOS, FILES, None),  # no build at all
    (Arch.ARM64, OWN, None),
])
def test_ipxe_without_https_is_handed_netbootds_build_or_nothing(arch, files, want):
    c = chain(transport=Transport.HTTPS)
    boot = policy.dhcp_boot(HOST, BootClient(MAC, arch, ipxe=True), SRV, HTTP, files, c, HTTPS)
    assert (boot and boot.filename) == want
    # the build itself (HTTPS listed in its option 175) is given the script
    boot = policy.dhcp_boot(HOST, BootClient(MAC, arch, ipxe=True, ipxe_https=True), SRV, HTTP,
                            files, c, HTTPS)
    assert boot is not None and boot.filename == "https://10.0.0.1:8443/boot/52-54-00-12-34-56.ipxe"


def test_https_transport_with_https_off_stays_silent_and_arm64_unconfigured_too():
    c = chain(transport=Transport.HTTPS)
    assert policy.dhcp_boot(HOST, BootClient(MAC, Arch.HTTP), SRV, HTTP, FILES, c, None) is None
    assert policy.dhcp_boot(HOST, BootClient(MAC, Arch.HTTP_ARM64), SRV, HTTP,
                            BootFileNames(), chain(), HTTPS) is None
    assert policy.dhcp_boot(None, BootClient(MAC, Arch.HTTP), SRV, HTTP, FILES, c, HTTPS) is None


def test_transport_verdict():
    https = chain(transport=Transport.HTTPS)
    assert not policy.transport_verdict(https, secure_request=False, https_up=True).ok
    assert not policy.transport_verdict(https, secure_request=True, https_up=False).ok
    assert policy.transport_verdict(https, secure_request=True, https_up=True).ok
    assert policy.transport_verdict(chain(), secure_request=False, https_up=True).ok
    assert policy.chain_urls(chain(), True, HTTP, HTTPS) is HTTPS  # came over HTTPS: stays
    assert policy.chain_urls(chain(), False, HTTP, HTTPS) is HTTP
    assert policy.chain_urls(https, False, HTTP, HTTPS) is HTTPS


def test_secure_boot_rule():
    req = chain(secure_boot=SecureBootRule.REQUIRED)
    assert policy.secure_boot_verdict(req, SecureBootState.ENABLED).ok
    assert policy.secure_boot_verdict(req, SecureBootState.UNKNOWN).ok  # first contact: signed
    assert not policy.secure_boot_verdict(req, SecureBootState.DISABLED).ok
    unsigned = policy.boot_chain(RoleChain("web", secure_boot=SecureBootRule.REQUIRED), "http",
                                 "ipxe", signing=False)
    assert "no signing keys" in policy.secure_boot_verdict(unsigned,
                                                           SecureBootState.ENABLED).reason
    assert policy.secure_boot_verdict(chain(), SecureBootState.DISABLED).ok
    assert not policy.report_secure_boot(req, "disabled").ok
    assert not policy.report_secure_boot(req, None).ok
    assert policy.report_secure_boot(req, "enabled").ok
    assert policy.report_secure_boot(chain(), "disabled").ok


def test_tls_reissue():
    day = 86400.0
    wanted = ("localhost", "10.0.0.1")
    assert not policy.tls_reissue(True, 100 * day, wanted, wanted, 0, 30 * day).ok
    assert policy.tls_reissue(True, 29 * day, wanted, wanted, 0, 30 * day).ok
    assert "10.0.0.2" in policy.tls_reissue(True, 100 * day, wanted, (*wanted, "10.0.0.2"), 0,
                                            30 * day).reason
    assert policy.tls_reissue(False, 100 * day, wanted, wanted, 0, 30 * day).ok


# -- the shim path: Microsoft-keyed firmware -> Debian's shim -> the signed UKI ----------------


def test_loader_shim_means_uki_and_the_offer_names_shim_in_the_hosts_directory():
    c = chain(loader=Loader.SHIM)
    assert (c.http_boot, c.loader) == (HttpBoot.UKI, Loader.SHIM)  # whatever http_boot says
    assert chain(loader=Loader.SHIM, http_boot=HttpBoot.IPXE).http_boot is HttpBoot.UKI
    assert policy.boot_chain(RoleChain("web"), "http", "ipxe", True, "shim").loader is Loader.SHIM
    assert policy.boot_chain(RoleChain("web", loader=Loader.NONE), "http", "uki", True,
                             "shim").loader is Loader.NONE  # the role over the default
    boot = policy.dhcp_boot(HOST, BootClient(MAC, Arch.HTTP), SRV, HTTP, FILES,
                            chain(loader=Loader.SHIM, transport=Transport.HTTPS), HTTPS)
    assert boot is not None and boot.vendor_class == "HTTPClient"
    assert boot.filename == "https://10.0.0.1:8443/uki/52-54-00-12-34-56/shimx64.efi"
    assert "shim" in boot.reason
    # shimx64 is x86-64: an arm64 HTTP boot client of such a role is not answered
    assert policy.dhcp_boot(HOST, BootClient(MAC, Arch.HTTP_ARM64), SRV, HTTP, FILES,
                            chain(loader=Loader.SHIM), HTTPS) is None
    # iPXE and PXE clients of the role are answered as before (no shim there)
    ipxe = policy.dhcp_boot(HOST, BootClient(MAC, Arch.UEFI, ipxe=True), SRV, HTTP, FILES,
                            chain(loader=Loader.SHIM), HTTPS)
    assert ipxe is not None and ipxe.filename.endswith("/boot/52-54-00-12-34-56.ipxe")


def test_shim_verdict():
    assert policy.shim_verdict(chain(loader=Loader.SHIM), shim_present=True).ok
    unsigned = policy.boot_chain(RoleChain("web", loader=Loader.SHIM), "http", "ipxe",
                                 signing=False)
    v = policy.shim_verdict(unsigned, shim_present=True)
    assert not v.ok and "no signing keys" in v.reason
    v = policy.shim_verdict(chain(loader=Loader.SHIM), shim_present=False)
    assert not v.ok and "missing" in v.reason and "shim-signed" in v.reason
    assert not policy.shim_verdict(chain(), shim_present=True).ok  # not a shim role
