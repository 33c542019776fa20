"""#15's acceptance, end to end: netbootd installed with pip into a fresh venv (Debian's
python3), its systemd unit installed into a root (`install --systemd --root`, the user made by
systemd-sysusers there) and checked by `systemd-analyze verify`; then `netbootd serve` run the
way that unit runs it -- as that unprivileged user with exactly CAP_NET_BIND_SERVICE and
CAP_NET_RAW (setpriv: ambient + bounding set, no_new_privs; systemd is not PID 1 here, so the
unit's sandboxing itself is not exercised) -- in the lab's server namespace, and a QEMU VM
PXE-boots from it (proxyDHCP 67/4011, TFTP 69, HTTP, HTTPS all bound by that user).

Against that one boot: /metrics is parsed with prometheus-client's parser before and after and
the counters moved; a real headless Chromium (Debian's chromium + chromedriver, driven by
selenium, inside the server namespace) signs in to the dashboard with an admin token, sees the
host's last boot change when the VM has booted, presses Reprovision (the CSRF-protected action)
and the state database says armed; client-supplied text on the events page stays text.
Screenshots: <tmp>/screenshots/, copied to $NETBOOTD_ARTIFACTS (default
/tmp/netbootd-artifacts/e2e-service/).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import ssl
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from testbed import REPO
from testbed.browser import chromium
from testbed.lab import HTTP_PORT, ROLE, ROLE_CMDLINE, SRV_IP, Lab, Netbootd, log
from testbed.netns import in_netns
from testbed.procs import run
from testbed.skips import missing_files, missing_tools, require
from testbed.vm import booted_or_fail

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

MAC = "52:54:00:e2:15:01"
HTTPS_PORT = 8443  # what a non-root netbootd picks by default
CAP_NET_BIND_SERVICE, CAP_NET_RAW = 10, 13
ARTIFACTS = Path(os.environ.get("NETBOOTD_ARTIFACTS", "/tmp/netbootd-artifacts")) / "e2e-service"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """pip install of this checkout into a fresh venv (Debian's python3), world-readable so
    the service user can run it; the unit installed into a root; the user from sysusers."""
    require(missing_tools({"systemd-analyze": "systemd", "systemd-sysusers": "systemd",
                           "setpriv": "util-linux", "chromium": "chromium",
                           "chromedriver": "chromium-driver"})
            + missing_files({Path("/usr/bin/python3"): "python3"}))
    base = Path(tempfile.mkdtemp(prefix="nbde2e-svc-"))
    try:
        os.chmod(base, 0o755)
        venv = base / "venv"
        t0 = time.monotonic()
        run(["/usr/bin/python3", "-m", "venv", str(venv)], timeout=120)
        run([str(venv / "bin/pip"), "install", "-q", str(REPO)], timeout=600)
        log(f"pip install into {venv}: {time.monotonic() - t0:.0f}s")
        binary = venv / "bin" / "netbootd"
        root = base / "root"
        out = run([str(binary), "install", "--systemd", "--root", str(root), "--bin",
                   str(binary)], timeout=60).stdout
        assert "user netbootd: present" in out, out
        unit = root / "etc/systemd/system/netbootd.service"
        v = run(["systemd-analyze", "verify", str(unit)], check=False, timeout=60)
        assert (v.returncode, v.stderr.strip()) == (0, ""), v.stderr
        m = re.search(r"^netbootd:x:(\d+):(\d+):", (root / "etc/passwd").read_text(), re.M)
        assert m, (root / "etc/passwd").read_text()
        yield {"base": base, "binary": binary, "uid": int(m.group(1)), "gid": int(m.group(2)),
               "unit": unit.read_text()}
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _caps(pid: int) -> dict[str, str]:
    status = Path(f"/proc/{pid}/status").read_text()
    return dict(re.findall(r"^(Uid|Gid|CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs):\s+(.*)$",
                           status, re.M))


def _metrics(ns: str, token: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    from prometheus_client.parser import text_string_to_metric_families

    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE

    def get() -> str:
        req = urllib.request.Request(f"https://{SRV_IP}:{HTTPS_PORT}/metrics",
                                     headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, timeout=10, context=ctx) as r:
            return r.read().decode()

    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for fam in text_string_to_metric_families(in_netns(ns, get)):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def _total(m: dict[str, dict[Any, float]], name: str, **labels: str) -> float:
    return sum(v for k, v in m.get(name, {}).items() if set(labels.items()) <= set(k))


def test_service_user_boot_metrics_dashboard(e2e_env: dict[str, str], installed: dict[str, Any],
                                             tmp_path: Path, boot_timer: Any) -> None:
    uid, gid, binary = installed["uid"], installed["gid"], installed["binary"]
    work = installed["base"] / "work"
    work.mkdir()
    os.chmod(work, 0o755)
    state = work / "state"
    state.mkdir(mode=0o700)
    os.chown(state, uid, gid)
    images = work / "image"  # the test image, readable by the service user
    images.mkdir()
    kernel, initrd = images / "vmlinuz", images / "initramfs"
    shutil.copy(e2e_env["vmlinuz"], kernel)
    shutil.copy(e2e_env["initramfs"], initrd)
    for f in (images, kernel, initrd):
        os.chmod(f, 0o755 if f.is_dir() else 0o644)
    as_service = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups",
                  "--inh-caps=-all,+net_bind_service,+net_raw",
                  "--ambient-caps=-all,+net_bind_service,+net_raw",
                  "--bounding-set=-all,+net_bind_service,+net_raw", "--no-new-privs",
                  "--", str(binary)]
    shots = tmp_path / "screenshots"
    shots.mkdir()
    with Lab(tmp_path / "lab") as lab:
        nb = Netbootd(state, command=as_service)
        nb.role_add(ROLE, kernel, [initrd], ROLE_CMDLINE)
        nb.enroll(MAC, ROLE, hostname="svc1")
        nb.cli("api-token", "create", "--name", "e2e-admin", "-o", str(state / "admin.tok"))
        nb.cli("api-token", "create", "--name", "prometheus", "--read-only",
               "-o", str(state / "ro.tok"))
        admin = (state / "admin.tok").read_text().strip()
        ro = (state / "ro.tok").read_text().strip()
        proc = nb.serve(lab)
        caps = _caps(proc.pid)
        want = f"{(1 << CAP_NET_BIND_SERVICE) | (1 << CAP_NET_RAW):016x}"
        log(f"netbootd serve pid {proc.pid}: {caps}")
        assert caps["Uid"].split() == [str(uid)] * 4 and caps["Gid"].split() == [str(gid)] * 4
        assert caps["CapEff"] == caps["CapPrm"] == caps["CapAmb"] == caps["CapBnd"] == want
        assert caps["NoNewPrivs"] == "1"
        for f in state.rglob("*"):  # everything it made is the service user's, secrets 0600
            assert f.stat().st_uid == uid, f
            if f.is_file() and (f.name.endswith(".key") or f.name in ("token.secret",
                                                                      "admin.tok")):
                assert f.stat().st_mode & 0o077 == 0, f
        before = _metrics(lab.ns_srv, ro)

        def scenario() -> None:
            driver = chromium("nbde2e")
            try:
                _dashboard(driver, lab, nb, admin, shots, boot_timer)
            finally:
                driver.quit()

        in_netns(lab.ns_srv, scenario)  # Chromium and chromedriver in the server namespace
        # the SeaBIOS client's iPXE ROM needs no TFTP: fetch what a PXE ROM would, over port
        # 69 (bound by the service user), from another machine on the LAN (tftp-hpa)
        got = work / "undionly.kpxe"
        run(["ip", "netns", "exec", lab.ns_dhcp, "tftp", "-m", "binary", SRV_IP, "-c", "get",
             "undionly.kpxe", str(got)], timeout=60)
        assert got.stat().st_size == Path("/usr/lib/ipxe/undionly.kpxe").stat().st_size
        after = _metrics(lab.ns_srv, ro)
    moved = {
        "dhcp_requests": (_total(before, "netbootd_dhcp_requests_total"),
                          _total(after, "netbootd_dhcp_requests_total")),
        "dhcp_replies": (_total(before, "netbootd_dhcp_replies_total"),
                         _total(after, "netbootd_dhcp_replies_total")),
        "tftp_served": (_total(before, "netbootd_tftp_transfers_total", result="served"),
                        _total(after, "netbootd_tftp_transfers_total", result="served")),
        "tftp_bytes": (_total(before, "netbootd_tftp_bytes_total"),
                       _total(after, "netbootd_tftp_bytes_total")),
        "boots": (_total(before, "netbootd_boots_total", kind="script"),
                  _total(after, "netbootd_boots_total", kind="script")),
        "script_200": (_total(before, "netbootd_http_requests_total",
                              route="/boot/{mac}.ipxe", status="200"),
                       _total(after, "netbootd_http_requests_total",
                              route="/boot/{mac}.ipxe", status="200")),
        "artifact_bytes": (_total(before, "netbootd_http_response_bytes_total"),
                           _total(after, "netbootd_http_response_bytes_total")),
    }
    print("\nmetrics before -> after the boot:", json.dumps(moved))
    for name, (a, b) in moved.items():
        assert b > a, (name, a, b)
    assert _total(after, "netbootd_hosts", state="armed") == 1  # the dashboard's reprovision
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for shot in shots.glob("*.png"):
        shutil.copy(shot, ARTIFACTS / shot.name)
    print(f"screenshots: {sorted(p.name for p in shots.glob('*.png'))} -> {ARTIFACTS}")


def _dashboard(driver: Any, lab: Lab, nb: Netbootd, admin: str, shots: Path,
               boot_timer: Any) -> None:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, 30)
    driver.get(f"https://{SRV_IP}:{HTTPS_PORT}/")
    wait.until(ec.visibility_of_element_located((By.ID, "token"))).send_keys(admin)
    driver.find_element(By.ID, "login-button").click()
    row = (By.CSS_SELECTOR, f'#hosts tr[data-mac="{MAC}"]')
    wait.until(ec.presence_of_element_located(row))

    def fresh(find: Callable[[], Any]) -> Any:
        # the page redraws its table every 2 s: an element found just before a redraw is
        # stale by the time it is read or clicked, so find it again
        for _ in range(50):
            try:
                return find()
            except StaleElementReferenceException:
                continue
        raise AssertionError("the element went stale 50 times in a row")

    def cell(field: str) -> str:
        return str(fresh(lambda: driver.find_element(
            By.CSS_SELECTOR, f'#hosts tr[data-mac="{MAC}"] td[data-field="{field}"]').text))

    assert cell("last_boot") == "never" and cell("state") == "ok"
    assert "e2e-admin (admin)" in driver.find_element(By.ID, "who").text
    driver.save_screenshot(str(shots / "1-hosts-before-boot.png"))
    # the VM boots from the unprivileged server; the page (refreshing itself) shows it
    from testbed.vm import VM

    vm = VM(lab, "svc1", MAC, "bios").start()
    result = booted_or_fail(lab, nb, vm, timeout=150)
    boot_timer(result.seconds, "[bios; netbootd as its own user with two capabilities]")
    wait.until(lambda d: cell("last_boot").endswith(("s ago from " + lab_ip(result.host)),))
    driver.save_screenshot(str(shots / "2-hosts-after-boot.png"))
    # the action: Reprovision, through the API with the token and the CSRF token
    fresh(lambda: driver.find_element(
        By.CSS_SELECTOR, f'button.reprovision[data-mac="{MAC}"]').click())
    wait.until(lambda d: cell("state").startswith("armed"))
    assert "re-provision armed" in driver.find_element(By.ID, "status").text
    host = nb.host(MAC)
    assert host is not None and host["state"] == "armed" and host["provision"]["via"] == "api"
    driver.save_screenshot(str(shots / "3-hosts-after-reprovision.png"))
    # the host page: fingerprints and events, as text
    driver.get(f"https://{SRV_IP}:{HTTPS_PORT}/ui/#host/{MAC}")
    wait.until(ec.presence_of_element_located((By.ID, "host-events")))
    page = driver.find_element(By.ID, "view").text
    assert "SHA256:" in page and "booted" in page and "provision-armed" in page
    driver.save_screenshot(str(shots / "4-host-page.png"))
    # client-supplied text stays text: a request whose path is HTML is audited, then shown
    evil = "/api/v1/hosts/%3Cimg%20src=x%20onerror=document.title='pwned'%3E"
    _quiet_get(f"http://{SRV_IP}:{HTTP_PORT}{evil}")
    driver.get(f"https://{SRV_IP}:{HTTPS_PORT}/ui/#events")
    wait.until(lambda d: "<img src=x" in d.find_element(By.ID, "events").text)
    assert driver.find_elements(By.CSS_SELECTOR, "#events img") == []
    assert driver.title == "netbootd"
    driver.save_screenshot(str(shots / "5-events-escaped.png"))


def _quiet_get(url: str) -> None:
    with contextlib.suppress(OSError):  # a 403 (plain HTTP) is the point: it is audited
        urllib.request.urlopen(url, timeout=5).close()


def lab_ip(host: dict[str, Any]) -> str:
    return str(host.get("last_boot_ip") or "")
