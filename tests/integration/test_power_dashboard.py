"""The dashboard's power section in Debian's headless Chromium against the real `netbootd
serve` on loopback (issue 16): a host's BMC shown with its password as "set", its power state
asked of the BMC (sushy-tools' fake Redfish), the Power on button powering the emulated system
on through the API (token + CSRF), and a BMC that never answers shown as "unknown: ... no
answer" after the timeout while the rest of the page is there."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from testbed.bmc import SushyEmulator, silent_udp_port
from tests.conftest import start_daemon, stop_daemon

MAC, MAC2 = "52:54:00:16:d0:01", "52:54:00:16:d0:02"
pytestmark = pytest.mark.timeout(180)


def test_dashboard_power_section(cli, role_files, browser, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    k, i = role_files
    cli.run("role", "add", "web", "--kernel", str(k), "--initrd", str(i))
    cli.run("enroll", MAC, "web", "--hostname", "dash1", "--no-identity")
    cli.run("enroll", MAC2, "web", "--hostname", "dash2", "--no-identity")
    pw = tmp_path / "pw"
    pw.write_text("dash-Pw-5521\n")
    redfish = SushyEmulator(tmp_path / "redfish").start()
    udp, uport = silent_udp_port()
    cli.run("bmc", "set", "dash1", "--redfish", redfish.base, "--user", "admin",
            "--password-file", str(pw))
    cli.run("bmc", "set", "dash2", "--ipmi", f"127.0.0.1:{uport}", "--user", "admin",
            "--password-file", str(pw))
    cli.run("api-token", "create", "--name", "admin", "-o", str(tmp_path / "admin.tok"))
    admin = (tmp_path / "admin.tok").read_text().strip()
    conf = tmp_path / "power.toml"
    conf.write_text("[power]\ntimeout = 1\nretries = 0\n")
    driver = browser
    d = start_daemon(cli, tmp_path / "serve.log", config=conf)
    try:
        from selenium.common.exceptions import StaleElementReferenceException

        # the page re-renders itself every 2 s: an element found may be replaced before read
        wait = WebDriverWait(driver, 60, ignored_exceptions=[StaleElementReferenceException])
        driver.get(d.https_base + "/")
        wait.until(ec.visibility_of_element_located((By.ID, "token"))).send_keys(admin)
        driver.find_element(By.ID, "login-button").click()
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#hosts")))
        driver.get(f"{d.https_base}/ui/#host/{MAC}")
        wait.until(ec.presence_of_element_located((By.ID, "power-state")))

        def state() -> str:
            return str(driver.find_element(By.ID, "power-state").text)

        wait.until(lambda _: state() in ("on", "off"))
        assert redfish.system()["PowerState"] == "Off"
        wait.until(lambda _: state() == "off")
        bmc = wait.until(lambda _: driver.find_element(By.ID, "bmc").text)
        assert "redfish" in bmc and "password set" in bmc and "dash-Pw" not in bmc
        wait.until(ec.element_to_be_clickable(
            (By.CSS_SELECTOR, 'button.power[data-action="on"]'))).click()
        wait.until(lambda _: "power on sent" in driver.find_element(By.ID, "status").text)
        redfish.wait_power("On", 30)
        # the BMC that never answers: the page is there, the state says why after the timeout
        driver.get(f"{d.https_base}/ui/#host/{MAC2}")
        wait.until(lambda _: "no answer" in driver.find_element(By.ID, "power-state").text)
        wait.until(lambda _: "Events" in driver.find_element(By.ID, "view").text)
        wait.until(lambda _: f"127.0.0.1:{uport}" in driver.find_element(By.ID, "bmc").text)
        # asked once, not at every 2 s re-render: one failed GET of dash2's power in ~5 s
        time.sleep(5)
        asks = [ln for ln in (tmp_path / "serve.log").read_text().splitlines()
                if f"api GET /api/v1/hosts/{MAC2}/power" in ln and "no answer" in ln]
        assert len(asks) == 1, asks
    except Exception:
        # what the page showed when a wait ran out (stdout is part of pytest's report)
        print("---- page:\n" + driver.find_element(By.TAG_NAME, "body").text)
        raise
    finally:
        stop_daemon(d)
        redfish.stop()
        udp.close()
    assert "dash-Pw-5521" not in (tmp_path / "serve.log").read_text()
