"""The two BMC protocols, one small blocking class each: IPMI v2.0 over RMCP+ (pyghmi) and
Redfish (sushy). Each call logs in, does one thing and logs out; control.py runs it in a
thread with a deadline and retries, so nothing here waits forever on a BMC that does not
answer -- but each library also gives up by itself (sushy: connect/read timeouts of `timeout`;
pyghmi: ~5 s without a reply), so a thread left behind by a deadline ends soon after it.

Errors become BmcError with a message that names the BMC (`target`) and what it said, never
the password. Power states are "on", "off" or "unknown" (what the BMC said, if neither).
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Protocol

from netbootd.errors import BmcError
from netbootd.power.credentials import Secret
from netbootd.power.settings import BmcKind, BmcSettings, redfish_parts


class Client(Protocol):
    def status(self) -> str: ...
    def on(self) -> None: ...
    def off(self) -> None: ...
    def cycle(self) -> None: ...
    def boot_once_pxe(self) -> None: ...


class NoAnswer(BmcError):
    """The BMC did not answer (a timeout, a refused or reset connection): worth a retry."""


_LOCKS: dict[tuple[str, int], threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


def _ipmi_lock(bmc: BmcSettings) -> threading.Lock:
    """One IPMI conversation at a time per BMC in this process (see _forget_sessions)."""
    with _LOCKS_GUARD:
        return _LOCKS.setdefault((bmc.address, bmc.port or 623), threading.Lock())


def _forget_sessions(bmc: BmcSettings) -> None:
    """pyghmi 1.6 keeps a session it is logging in under (bmc, user, password, port, kg) and
    removes it under its encoded password, so after a logout or a failed login the next
    Command for that BMC in this process gets the dead session back (TypeError in
    raw_command). netbootd logs out after every action, so it drops those entries itself,
    under the BMC's lock."""
    try:
        from pyghmi.ipmi.private.session import Session

        for key in list(Session.initting_sessions):
            if key[0] == bmc.address and key[3] == (bmc.port or 623):
                Session.initting_sessions.pop(key, None)
    except Exception:  # noqa: BLE001 (a pyghmi without that table has no such bug)
        pass


class IpmiClient:
    """IPMI v2.0 (RMCP+, lanplus) through pyghmi. `cycle` is Chassis Control "power cycle"
    (off, then on after the BMC's interval), or "power up" when the chassis is off (the spec
    lets a BMC refuse a cycle of a chassis that is off)."""

    def __init__(self, bmc: BmcSettings, password: Secret, timeout: float) -> None:
        self.bmc = bmc
        self._password = password
        self.timeout = timeout

    def _run(self, what: str, fn: Any) -> Any:
        with _ipmi_lock(self.bmc):
            try:
                return self._locked(what, fn)
            finally:
                _forget_sessions(self.bmc)

    def _locked(self, what: str, fn: Any) -> Any:
        from pyghmi import exceptions as pexc
        from pyghmi.ipmi import command

        target = self.bmc.target
        _forget_sessions(self.bmc)
        try:
            c = command.Command(bmc=self.bmc.address, userid=self.bmc.user,
                                password=self._password.reveal(), port=self.bmc.port or 623)
        except pexc.IpmiException as e:
            msg = str(e) if e.args and e.args[0] else ""
            if not msg or "timeout" in msg.lower():
                raise NoAnswer(f"BMC {target} did not answer (IPMI session: no reply)") from None
            raise BmcError(f"BMC {target} refused the IPMI session: {msg}") from None
        except OSError as e:
            raise NoAnswer(f"BMC {target}: {e.strerror or e}") from None
        try:
            return fn(c)
        except pexc.IpmiException as e:
            msg = str(e) if e.args and e.args[0] else "no reply"
            raise BmcError(f"BMC {target}: {what}: {msg}") from None
        finally:
            with contextlib.suppress(Exception):  # a failed logout changes nothing we did
                c.ipmi_session.logout()

    def status(self) -> str:
        r = self._run("get power", lambda c: c.get_power())
        state = r.get("powerstate") if isinstance(r, dict) else None
        return state if state in ("on", "off") else "unknown"

    def on(self) -> None:
        self._run("power on", lambda c: c.set_power("on", wait=False))

    def off(self) -> None:
        self._run("power off", lambda c: c.set_power("off", wait=False))

    def cycle(self) -> None:
        def cycle(c: Any) -> None:
            if c.get_power().get("powerstate") == "off":
                c.set_power("on", wait=False)
                return
            r = c.raw_command(netfn=0x00, command=0x02, data=(0x02,))  # Chassis Control: cycle
            if isinstance(r, dict) and r.get("error"):
                raise BmcError(f"BMC {self.bmc.target}: power cycle: {r['error']}")

        self._run("power cycle", cycle)

    def boot_once_pxe(self) -> None:
        self._run("boot device PXE (once)",
                  lambda c: c.set_bootdev("network", persist=False))


class RedfishClient:
    """Redfish through sushy: the ComputerSystem the URL names (.../Systems/<id>), or the
    service's only one. `cycle` is a ForceRestart (PowerCycle where the system offers it and
    ForceRestart not), or On when the system is off."""

    def __init__(self, bmc: BmcSettings, password: Secret, timeout: float) -> None:
        self.bmc = bmc
        self._password = password
        self.timeout = timeout

    def _system(self) -> Any:
        import sushy

        base, system = redfish_parts(self.bmc.address)
        verify: bool | str = (False if self.bmc.insecure
                              else self.bmc.ca_file if self.bmc.ca_file else True)
        root = sushy.Sushy(base + "/redfish/v1", username=self.bmc.user,
                           password=self._password.reveal(), verify=verify,
                           server_side_retries=1, read_timeout=self.timeout,
                           connect_timeout=self.timeout)
        if system is not None:
            return root.get_system(system)
        members = root.get_system_collection().get_members()
        if len(members) != 1:
            raise BmcError(f"BMC {self.bmc.target} has {len(members)} systems: name one "
                           "(--redfish .../redfish/v1/Systems/<id>)")
        return members[0]

    def _run(self, what: str, fn: Any) -> Any:
        import sushy.exceptions as sexc

        target = self.bmc.target
        try:
            return fn(self._system())
        except sexc.ConnectionError as e:
            text = _short(e)
            if "SSL" in text or "CERTIFICATE" in text.upper():  # it answered: not a retry
                raise BmcError(f"BMC {target}: TLS refused: {text} (the BMC's CA: --ca-file; "
                               "or --insecure)") from None
            raise NoAnswer(f"BMC {target} did not answer: {text}") from None
        except sexc.AccessError:
            raise BmcError(f"BMC {target} refused the credentials of user "
                           f"{self.bmc.user!r}") from None
        except sexc.SushyError as e:
            raise BmcError(f"BMC {target}: {what}: {_short(e)}") from None

    def status(self) -> str:
        state = self._run("power state", lambda s: s.power_state)
        v = getattr(state, "value", state)
        return {"On": "on", "Off": "off"}.get(str(v), "unknown")

    def _reset(self, kind: Any) -> Any:
        def go(s: Any) -> None:
            s.reset_system(kind)
        return go

    def on(self) -> None:
        import sushy

        self._run("power on", self._reset(sushy.ResetType.ON))

    def off(self) -> None:
        import sushy

        self._run("power off", self._reset(sushy.ResetType.FORCE_OFF))

    def cycle(self) -> None:
        import sushy

        def cycle(s: Any) -> None:
            if getattr(s.power_state, "value", s.power_state) == "Off":
                s.reset_system(sushy.ResetType.ON)
                return
            allowed = s.get_allowed_reset_system_values()
            kind = (sushy.ResetType.FORCE_RESTART
                    if not allowed or sushy.ResetType.FORCE_RESTART in allowed
                    else sushy.ResetType.POWER_CYCLE)
            s.reset_system(kind)

        self._run("power cycle", cycle)

    def boot_once_pxe(self) -> None:
        import sushy

        self._run("boot device PXE (once)", lambda s: s.set_system_boot_options(
            sushy.BootSource.PXE, enabled=sushy.BootSourceOverrideEnabled.ONCE))


def _short(e: Exception) -> str:
    s = " ".join(str(e).split())
    return s[:300]


def client(bmc: BmcSettings, password: Secret, timeout: float) -> Client:
    if bmc.kind is BmcKind.IPMI:
        return IpmiClient(bmc, password, timeout)
    return RedfishClient(bmc, password, timeout)
