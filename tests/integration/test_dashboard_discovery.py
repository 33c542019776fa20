"""The dashboard's discovered machines, in a real browser: `netbootd serve` on loopback with
`dhcp.unknown_policy = "discover"`, an unknown MAC fetches its discovery script (a per-boot token
bound to 127.0.0.1) and POSTs an inventory whose strings are HTML; headless Chromium (selenium)
signs in with an admin token, sees the machine on the "Discovered" page with its disks and NICs,
the machine's HTML as text (no element made, no script run, under the strict CSP), enrolls it
from the page (it leaves the list, becomes a host with that hostname and role) and the host page
shows its inventory. Needs chromium + chromium-driver (Debian) and selenium (pip)."""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path
from typing import Any

from tests.conftest import start_daemon, stop_daemon
from tests.integration.test_api import call

MAC, MAC2 = "52:54:00:16:d0:01", "52:54:00:16:d0:02"
EVIL = "<img src=x onerror=\"document.title='pwned'\">"
TERM = "QEMU\x1b]0;pwned\x07"  # a terminal escape (set the window title) in the DMI vendor
TERM_SHOWN = "QEMU\\x1b]0;pwned\\x07"  # as the store keeps it: escaped on the way in


def _inventory() -> dict[str, Any]:
    return {
        "schema": "netbootd-inventory/1", "agent": "test", "kernel": "6.1.0",
        "system": {"vendor": TERM, "product": EVIL, "serial": "SYS-16"},
        "firmware": {"mode": "bios", "secure_boot": "disabled"}, "tpm": {"present": False},
        "cpu": {"model": "QEMU Virtual CPU", "arch": "x86_64", "cores": 1, "threads": 1},
        "memory": {"total_bytes": 384 << 20},
        "disks": [{"name": "vda", "serial": "NBD-DASH-1", "size_bytes": 64 << 20,
                   "driver": "virtio_blk", "by_id": ["virtio-NBD-DASH-1"]},
                  {"name": "sda", "serial": EVIL, "size_bytes": 96 << 20,
                   "driver": "virtio_scsi"}],
        "nics": [{"name": "eth0", "mac": MAC, "driver": "virtio_net"},
                 {"name": "eth1", "mac": MAC2, "driver": "virtio_net"}],
        "pci": [],
    }


def test_dashboard_lists_discovered_machines_as_text_and_enrolls(cli, role_files, browser,
                                                                 tmp_path: Path) -> None:
    k, i = role_files
    cli.run("role", "add", "web", "--kernel", str(k), "--initrd", str(i))
    cli.run("role", "add", "discovery", "--kernel", str(k), "--initrd", str(i))
    cli.run("api-token", "create", "--name", "admin", "-o", str(tmp_path / "admin.tok"))
    admin = (tmp_path / "admin.tok").read_text().strip()
    cfg = tmp_path / "netbootd.toml"
    cfg.write_text('[dhcp]\nunknown_policy = "discover"\n')
    d = start_daemon(cli, tmp_path / "serve.log", config=cfg)
    try:
        with urllib.request.urlopen(f"{d.base}/boot/{MAC}.ipxe", timeout=10) as r:
            script = r.read().decode()
        token = re.search(r" netbootd\.boot=(\S+)", script)
        assert token is not None, script
        status, body, _ = call(d.base, "POST", "/api/v1/discovery",
                               body={"token": token.group(1), "inventory": _inventory()})
        assert status == 200 and body == {"ok": True, "discovered": "new"}, body
        _dashboard(browser, d.https_base, admin)
        status, hosts, _ = call(d.https_base, "GET", "/api/v1/hosts", admin)
        assert [(h["mac"], h["hostname"], h["role"]) for h in hosts] == [
            (MAC, "found1", "web")], hosts
        status, found, _ = call(d.https_base, "GET", "/api/v1/discovered", admin)
        assert found == [], found
    finally:
        stop_daemon(d)
    log = (tmp_path / "serve.log").read_text()
    assert "\x1b" not in log and TERM_SHOWN in log, "the machine's escape reached the log"


def _dashboard(driver: Any, base: str, admin: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, 30)
    driver.get(base + "/")
    wait.until(ec.visibility_of_element_located((By.ID, "token"))).send_keys(admin)
    driver.find_element(By.ID, "login-button").click()
    wait.until(ec.presence_of_element_located((By.ID, "hosts")))
    driver.find_element(By.ID, "nav-discovered").click()
    row = (By.CSS_SELECTOR, f'#discovered tr[data-mac="{MAC}"]')
    wait.until(ec.presence_of_element_located(row))

    def cell(field: str) -> str:
        return str(driver.find_element(
            By.CSS_SELECTOR, f'#discovered tr[data-mac="{MAC}"] td[data-field="{field}"]').text)

    assert cell("disks") == f"vda NBD-DASH-1 67.1 MB; sda {EVIL} 100.7 MB", cell("disks")
    assert cell("nics") == f"{MAC} virtio_net; {MAC2} virtio_net", cell("nics")
    assert cell("system") == f"{TERM_SHOWN} {EVIL}" and cell("serial") == "SYS-16"
    # the machine's HTML stayed text: no element was made of it, nothing ran
    assert driver.find_elements(By.CSS_SELECTOR, "#view img") == []
    assert driver.title == "netbootd"
    # enroll it from the page
    form = driver.find_element(By.CSS_SELECTOR, f'form.enroll[data-mac="{MAC}"]')
    from selenium.webdriver.support.ui import Select

    Select(form.find_element(By.TAG_NAME, "select")).select_by_value("web")
    form.find_element(By.TAG_NAME, "input").send_keys("found1")
    form.find_element(By.CSS_SELECTOR, "button.enroll").click()
    wait.until(lambda drv: drv.find_elements(*row) == []
               and "enrolled" in drv.find_element(By.ID, "status").text)
    assert "Discovered machines (0)" in driver.find_element(By.ID, "view").text
    # its discovery is the host's first inventory, shown on its page
    driver.get(f"{base}/ui/#host/{MAC}")
    inv = (By.CSS_SELECTOR, '#host dd[data-field="inventory"]')
    wait.until(lambda drv: "NBD-DASH-1" in drv.find_element(*inv).text)
    text = driver.find_element(*inv).text
    assert f"sda {EVIL} 100.7 MB" in text and f"{MAC2} virtio_net" in text, text
    assert "first inventory (from its discovery)" in text, text
    assert driver.find_elements(By.CSS_SELECTOR, "#view img") == []
    assert driver.title == "netbootd"
