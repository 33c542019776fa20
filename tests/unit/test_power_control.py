"""Power control's pure parts and its in-process behaviour with fake BMC clients (issue 16):
settings parsing, the password file (0600 in 0700, read back whole, never printed), the
deadline and retry runner (a hung BMC is abandoned within the timeout; a refusal is not
retried), the audit events, `reprovision --reboot`'s order and its warning path, the Redfish
client's calls (boot override Once) on a recorded system, and no password in any log line at
DEBUG -- netbootd's or the protocol libraries'."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytest

from netbootd import actions
from netbootd.config import Config
from netbootd.errors import BmcError, InvalidInput, NotFound
from netbootd.model import Artifact, MacAddress
from netbootd.power.clients import NoAnswer, RedfishClient
from netbootd.power.credentials import BmcVault, Secret, read_password_file
from netbootd.power.settings import (
    BmcKind,
    BmcSettings,
    PowerAction,
    parse_ipmi,
    parse_redfish,
    redfish_parts,
)
from netbootd.store import Store

MAC = MacAddress.parse("52:54:00:16:00:01")
PASSWORD = "unit-Pw-93be1d"


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    return Config(state_dir=tmp_path / "state", power={"timeout": 0.5, "retries": 1})


@pytest.fixture
def store(cfg: Config):
    s = Store(cfg.state_dir)
    s.add_generation("web", Artifact("a" * 64, 1), [Artifact("b" * 64, 2)], "quiet", "import")
    s.enroll(MAC, "web", "web1")
    yield s
    s.close()


@pytest.fixture
def pwfile(tmp_path: Path) -> Path:
    p = tmp_path / "pw"
    p.write_text(PASSWORD + "\n")
    return p


def test_ipmi_and_redfish_addresses() -> None:
    assert parse_ipmi("10.0.0.5") == ("10.0.0.5", 623)
    assert parse_ipmi("10.0.0.5:6230") == ("10.0.0.5", 6230)
    assert parse_ipmi("[fd00::5]:624") == ("fd00::5", 624)
    assert parse_ipmi("fd00::5") == ("fd00::5", 623)
    assert parse_ipmi("BMC-1.example") == ("bmc-1.example", 623)
    for bad in ("10.0.0.5:0", "10.0.0.5:x", "a b", "[fd00::5", "", "10.0.0.5:70000"):
        with pytest.raises(InvalidInput):
            parse_ipmi(bad)
    assert parse_redfish("https://bmc.example/") == "https://bmc.example"
    assert parse_redfish("https://10.0.0.5:8443/redfish/v1/Systems/1") == \
        "https://10.0.0.5:8443/redfish/v1/Systems/1"
    assert redfish_parts("https://b:1/redfish/v1/Systems/x") == ("https://b:1",
                                                                 "/redfish/v1/Systems/x")
    assert redfish_parts("https://b/redfish/v1") == ("https://b", None)
    for bad in ("ftp://bmc", "https://u:p@bmc", "https://bmc/other", "https://bmc/?a=1", "bmc"):
        with pytest.raises(InvalidInput):
            parse_redfish(bad)


def test_secret_never_prints_itself() -> None:
    s = Secret(PASSWORD)
    assert PASSWORD not in repr(s) and PASSWORD not in str(s) and PASSWORD not in f"{s}"
    assert PASSWORD not in repr([s]) and s.reveal() == PASSWORD


def test_password_file_rules(tmp_path: Path) -> None:
    p = tmp_path / "pw"
    for raw, ok in ((b"abc\n", "abc"), (b"abc\r\n", "abc"), (b"a b", "a b")):
        p.write_bytes(raw)
        assert read_password_file(p).reveal() == ok
    for raw in (b"", b"\n", b"sekrit\nline2", b"sekrit\0", b"\xffsekrit"):
        p.write_bytes(raw)
        with pytest.raises(InvalidInput) as e:
            read_password_file(p)
        assert "sekrit" not in str(e.value) and str(p) in str(e.value)
    p.write_bytes(b"x" * 21)
    with pytest.raises(InvalidInput, match="at most 20"):
        read_password_file(p, 20)
    with pytest.raises(InvalidInput, match="No such file"):
        read_password_file(tmp_path / "missing")


def test_bmc_set_keeps_the_password_0600_and_shows_set(store: Store, cfg: Config,
                                                      pwfile: Path) -> None:
    host = store.host(MAC)
    assert host is not None
    out = actions.bmc_set(store, cfg, host, "10.0.0.5:6230", None, "admin", pwfile)
    f = BmcVault(cfg.state_dir).path(MAC)
    assert f.read_text() == PASSWORD and f.stat().st_mode & 0o777 == 0o600
    assert f.parent.stat().st_mode & 0o777 == 0o700 == f.parent.parent.stat().st_mode & 0o777
    assert out.data["bmc"]["password"] == "set" and out.data["bmc"]["port"] == 6230
    assert PASSWORD not in repr(out.json()) and PASSWORD not in "".join(out.lines)
    ev = [e for e in store.events(MAC) if e.event == "bmc-set"]
    assert ev and PASSWORD not in repr(ev[0].detail)
    bmc = store.bmc(MAC)
    assert bmc is not None and (bmc.kind, bmc.address, bmc.port, bmc.user) == (
        BmcKind.IPMI, "10.0.0.5", 6230, "admin")
    # replacing keeps one row and one file; the options that belong to Redfish are refused
    actions.bmc_set(store, cfg, host, None, "https://bmc.example", "root", pwfile,
                    insecure=True)
    assert len(store.bmcs()) == 1 and store.bmc(MAC).kind is BmcKind.REDFISH  # type: ignore[union-attr]
    with pytest.raises(InvalidInput):
        actions.bmc_set(store, cfg, host, "10.0.0.5", None, "admin", pwfile, insecure=True)
    with pytest.raises(InvalidInput):
        actions.bmc_set(store, cfg, host, None, "http://bmc", "admin", pwfile, insecure=True)
    actions.bmc_remove(store, cfg, host)
    assert store.bmc(MAC) is None and not f.exists()
    with pytest.raises(NotFound):
        actions.bmc_remove(store, cfg, host)


class Fake:
    """A BMC client that records calls; `behaviour` maps an action to an exception or a
    sleep (seconds) before answering."""

    def __init__(self, behaviour: dict[str, Any] | None = None) -> None:
        self.calls: list[str] = []
        self.behaviour = behaviour or {}
        self.state = "on"

    def _do(self, name: str) -> None:
        self.calls.append(name)
        b = self.behaviour.get(name)
        if isinstance(b, list):
            b = b.pop(0) if b else None
        if isinstance(b, BaseException):
            raise b
        if isinstance(b, (int, float)):
            time.sleep(b)

    def status(self) -> str:
        self._do("status")
        return self.state

    def on(self) -> None:
        self._do("on")

    def off(self) -> None:
        self._do("off")

    def cycle(self) -> None:
        self._do("cycle")

    def boot_once_pxe(self) -> None:
        self._do("boot_once_pxe")


def _factory(fake: Fake, seen: list[Secret] | None = None):
    def make(bmc: BmcSettings, password: Secret, timeout: float) -> Fake:
        if seen is not None:
            seen.append(password)
        return fake
    return make


@pytest.fixture
def with_bmc(store: Store, cfg: Config, pwfile: Path):
    host = store.host(MAC)
    assert host is not None
    actions.bmc_set(store, cfg, host, "127.0.0.1:6230", None, "admin", pwfile)
    return host


def test_power_actions_read_the_vault_and_are_audited(store, cfg, with_bmc) -> None:
    fake, seen = Fake(), []
    out = actions.power(store, cfg, with_bmc, PowerAction.STATUS, factory=_factory(fake, seen))
    assert out.data["state"] == "on" and seen == [Secret(PASSWORD)]
    actions.power(store, cfg, with_bmc, PowerAction.CYCLE, factory=_factory(fake))
    assert fake.calls == ["status", "cycle"]
    ev = [e.detail for e in store.events(MAC) if e.event == "power"]
    # the cycle is recorded; the status read is not (a dashboard asks every 30 s)
    assert [(d["action"], d["result"], d["bmc"]) for d in ev] == [
        ("cycle", "ok", "ipmi://127.0.0.1:6230")]


def test_a_hung_bmc_is_abandoned_within_the_timeout_and_retried(store, cfg, with_bmc) -> None:
    fake = Fake({"cycle": 30.0})  # answers in 30 s: never, for a 0.5 s timeout
    t0 = time.monotonic()
    with pytest.raises(NoAnswer) as e:
        actions.power(store, cfg, with_bmc, PowerAction.CYCLE, factory=_factory(fake))
    took = time.monotonic() - t0
    assert 2 * 0.5 + 1.0 <= took < 2 * 0.5 + 1.0 + 1.0, took  # 2 attempts + the pause
    assert fake.calls == ["cycle", "cycle"]
    assert "no answer to cycle within 0.5 s (tried 2 time(s)" in str(e.value)
    ev = [x.detail for x in store.events(MAC) if x.event == "power"]
    assert ev[-1]["result"] == "error" and "no answer" in ev[-1]["error"]


def test_a_refusal_is_not_retried_and_a_no_answer_then_answer_succeeds(store, cfg,
                                                                       with_bmc) -> None:
    fake = Fake({"off": BmcError("BMC x refused the IPMI session: Incorrect password")})
    with pytest.raises(BmcError, match="Incorrect password"):
        actions.power(store, cfg, with_bmc, PowerAction.OFF, factory=_factory(fake))
    assert fake.calls == ["off"]
    fake = Fake({"on": [NoAnswer("BMC x: no reply"), None]})
    actions.power(store, cfg, with_bmc, PowerAction.ON, factory=_factory(fake))
    assert fake.calls == ["on", "on"]


def test_unexpected_library_errors_become_bmc_errors(store, cfg, with_bmc) -> None:
    fake = Fake({"status": TypeError("'<' not supported")})
    with pytest.raises(BmcError, match="TypeError"):
        actions.power(store, cfg, with_bmc, PowerAction.STATUS, factory=_factory(fake))


def test_no_bmc_is_a_clear_not_found(store, cfg) -> None:
    host = store.host(MAC)
    assert host is not None
    with pytest.raises(NotFound, match="bmc set"):
        actions.power(store, cfg, host, PowerAction.STATUS, factory=_factory(Fake()))


def test_reprovision_reboot_order_and_warning(store, cfg, with_bmc) -> None:
    actions.reprovision(store, cfg, [with_bmc], None, None, False)
    fake = Fake()
    out = actions.reboot_for_provision(store, cfg, [with_bmc], factory=_factory(fake))
    assert fake.calls == ["boot_once_pxe", "cycle"] and out.data["failed"] == 0
    # a BMC that refuses the boot device: a warning, the cycle still goes
    fake = Fake({"boot_once_pxe": BmcError("BMC x: boot device PXE (once): Invalid data")})
    out = actions.reboot_for_provision(store, cfg, [with_bmc], factory=_factory(fake))
    assert fake.calls == ["boot_once_pxe", "cycle"] and out.data["failed"] == 0
    assert "warning: boot-once PXE refused" in out.lines[0]
    # a BMC that does not answer: no cycle, the host is reported failed, the flag stays
    fake = Fake({"boot_once_pxe": NoAnswer("BMC x: no answer")})
    out = actions.reboot_for_provision(store, cfg, [with_bmc], factory=_factory(fake))
    assert fake.calls == ["boot_once_pxe"] * 2 and out.data["failed"] == 1
    assert "NOT rebooted (its flag stays armed)" in out.lines[0]
    assert MAC in store.provisions()


class RecordedSystem:
    """A sushy ComputerSystem stand-in recording what the client asks (the emulator ignores
    BootSourceOverrideEnabled, so "Once" is checked here)."""

    def __init__(self, power: str) -> None:
        import sushy

        self.power_state = sushy.PowerState(power)
        self.calls: list[tuple[Any, ...]] = []

    def get_allowed_reset_system_values(self) -> set[Any]:
        import sushy

        return {sushy.ResetType.ON, sushy.ResetType.FORCE_OFF, sushy.ResetType.POWER_CYCLE}

    def reset_system(self, kind: Any) -> None:
        self.calls.append(("reset", kind.value))

    def set_system_boot_options(self, target: Any, enabled: Any = None) -> None:
        self.calls.append(("boot", target.value, enabled.value))


def test_redfish_client_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    bmc = BmcSettings(MAC, BmcKind.REDFISH, "https://bmc/redfish/v1/Systems/1", None, "root")
    c = RedfishClient(bmc, Secret(PASSWORD), 1.0)
    on, off = RecordedSystem("On"), RecordedSystem("Off")
    monkeypatch.setattr(c, "_system", lambda: on)
    assert c.status() == "on"
    c.boot_once_pxe()
    c.cycle()  # no ForceRestart offered: PowerCycle
    c.off()
    monkeypatch.setattr(c, "_system", lambda: off)
    assert c.status() == "off"
    c.cycle()  # off: On
    assert on.calls == [("boot", "Pxe", "Once"), ("reset", "PowerCycle"), ("reset", "ForceOff")]
    assert off.calls == [("reset", "On")]


def test_no_password_in_any_log_line(store, cfg, with_bmc, caplog, tmp_path) -> None:
    """Every logger at DEBUG -- netbootd's, sushy's, pyghmi's, urllib3's -- while power actions
    succeed, fail, time out and talk to a real (silent) UDP port and a mute TCP port."""
    import socket

    caplog.set_level(logging.DEBUG)
    for name in ("sushy", "pyghmi", "urllib3", "netbootd"):
        logging.getLogger(name).setLevel(logging.DEBUG)
    fake = Fake({"off": BmcError("refused"), "cycle": 5.0})
    actions.power(store, cfg, with_bmc, PowerAction.STATUS, factory=_factory(fake))
    for action in (PowerAction.OFF, PowerAction.CYCLE):
        with pytest.raises(BmcError):
            actions.power(store, cfg, with_bmc, action, factory=_factory(fake))
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(8)
    host = with_bmc
    pw = tmp_path / "pw"
    try:
        actions.bmc_set(store, cfg, host, f"127.0.0.1:{udp.getsockname()[1]}", None, "admin", pw)
        with pytest.raises(BmcError):
            actions.power(store, cfg, host, PowerAction.STATUS)
        actions.bmc_set(store, cfg, host, None, f"http://127.0.0.1:{tcp.getsockname()[1]}",
                        "admin", pw)
        with pytest.raises(BmcError):
            actions.power(store, cfg, host, PowerAction.STATUS)
    finally:
        udp.close()
        tcp.close()
    text = "\n".join(f"{r.name} {r.getMessage()} {r.args!r}" for r in caplog.records)
    # the capture saw the runner's lines and the HTTP library's: it can fail
    assert "no answer" in text and any(r.name.startswith(("sushy", "urllib3"))
                                       for r in caplog.records)
    assert PASSWORD not in text


class FakeCommand:
    """pyghmi's ipmi.command.Command stand-in: what the IPMI client asks of it."""

    made: list[dict[str, Any]] = []
    power = "on"
    calls: list[tuple[Any, ...]] = []

    def __init__(self, **kw: Any) -> None:
        FakeCommand.made.append(kw)

        class Session:
            def logout(self) -> None:
                FakeCommand.calls.append(("logout",))
        self.ipmi_session = Session()

    def get_power(self) -> dict[str, str]:
        self.calls.append(("get_power",))
        return {"powerstate": FakeCommand.power}

    def set_power(self, state: str, wait: bool = False) -> dict[str, str]:
        self.calls.append(("set_power", state, wait))
        return {"pendingpowerstate": state}

    def raw_command(self, netfn: int, command: int, data: tuple[int, ...] = ()) -> dict[str, Any]:
        self.calls.append(("raw", netfn, command, tuple(data)))
        return {}

    def set_bootdev(self, dev: str, persist: bool = False) -> dict[str, str]:
        self.calls.append(("bootdev", dev, persist))
        return {"bootdev": dev}


def test_ipmi_client_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    from pyghmi.ipmi import command

    from netbootd.power.clients import IpmiClient

    monkeypatch.setattr(command, "Command", FakeCommand)
    FakeCommand.made, FakeCommand.calls = [], []
    bmc = BmcSettings(MAC, BmcKind.IPMI, "10.0.0.5", 6230, "admin")
    c = IpmiClient(bmc, Secret(PASSWORD), 1.0)
    assert c.status() == "on"
    c.boot_once_pxe()
    c.cycle()  # on: Chassis Control 02h, data 02h (power cycle)
    FakeCommand.power = "off"
    c.cycle()  # off: power up instead (a BMC may refuse to cycle a chassis that is off)
    c.off()
    assert FakeCommand.made[0] == {"bmc": "10.0.0.5", "userid": "admin", "password": PASSWORD,
                                   "port": 6230}
    assert [x for x in FakeCommand.calls if x != ("logout",)] == [
        ("get_power",), ("bootdev", "network", False), ("get_power",), ("raw", 0, 2, (2,)),
        ("get_power",), ("set_power", "on", False), ("set_power", "off", False)]
    assert FakeCommand.calls.count(("logout",)) == 5  # one session per action, logged out


def test_an_error_that_quotes_the_password_is_scrubbed(store, cfg, with_bmc) -> None:
    fake = Fake({"status": BmcError(f"BMC x: login as admin:{PASSWORD} refused")})
    with pytest.raises(BmcError) as e:
        actions.power(store, cfg, with_bmc, PowerAction.STATUS, factory=_factory(fake))
    assert PASSWORD not in str(e.value) and "admin:*** refused" in str(e.value)
    assert all(PASSWORD not in repr(x.detail) for x in store.events(MAC))
