"""tgt (the Linux SCSI target framework) as text: `tgtadm --mode target --op show` parsed into
values, and `targets.conf` (tgt-admin's format) rendered from values. Pure: no I/O.

What `show` prints, per target (tgt 1.0.85; LUN 0 is always the controller, data LUNs start at 1):

    Target 3: iqn.2025-01.netbootd:52-54-00-12-34-56
        System information:
            Driver: iscsi
            State: ready
        I_T nexus information:
            I_T nexus: 1
                Initiator: iqn.2025-01.netbootd:host.52-54-00-12-34-56 alias: none
                Connection: 0
                    IP Address: 192.168.77.100
        LUN information:
            LUN: 1
                Type: disk
                ...
                Online: Yes
                Backing store type: rdwr
                Backing store path: /var/lib/netbootd/iscsi/hosts/.../root.img
        Account information:
        ACL information:
            ALL
            iqn.2025-01.netbootd:host.52-54-00-12-34-56

The ACL section lists initiator addresses ("ALL", IPs, subnets) and initiator names alike; names
are told apart by their `iqn.`/`eui.`/`naa.` prefix.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from netbootd.errors import NetbootdError, TgtParseError

_NAME_PREFIXES = ("iqn.", "eui.", "naa.")
_IQN = re.compile(r"iqn\.\d{4}-\d{2}\.[a-z0-9][a-z0-9.-]*(:[A-Za-z0-9.:_-]+)?")
_SAFE_PATH = re.compile(r"/[A-Za-z0-9._/+@%~-]*")




@dataclass(frozen=True)
class Lun:
    number: int
    type: str  # "controller" (LUN 0), "disk", ...
    path: str | None  # the backing store; None for the controller
    online: bool = True
    size_mb: int = 0


@dataclass(frozen=True)
class Target:
    """One target as tgtd has it now."""

    tid: int
    iqn: str
    state: str = "ready"
    luns: tuple[Lun, ...] = ()
    acl: tuple[str, ...] = ()  # addresses ("ALL", "192.168.1.0/24") and initiator names
    initiators: tuple[str, ...] = ()  # initiator names with an I_T nexus (connected now)

    def lun(self, number: int) -> Lun | None:
        return next((lu for lu in self.luns if lu.number == number), None)

    @property
    def data_luns(self) -> tuple[Lun, ...]:
        return tuple(lu for lu in self.luns if lu.number != 0)

    @property
    def addresses(self) -> frozenset[str]:
        return frozenset(a for a in self.acl if not a.startswith(_NAME_PREFIXES))

    @property
    def names(self) -> frozenset[str]:
        return frozenset(a for a in self.acl if a.startswith(_NAME_PREFIXES))


@dataclass(frozen=True)
class DesiredTarget:
    """What a target should look like: LUN number -> backing file, and who may log in."""

    tid: int
    iqn: str
    luns: tuple[tuple[int, str], ...]  # (lun >= 1, backing store path)
    initiators: tuple[str, ...] = ()  # initiator names allowed; () = any initiator
    addresses: tuple[str, ...] = ("ALL",)  # initiator addresses allowed
    comment: str = ""  # for targets.conf

    def lun_paths(self) -> dict[int, str]:
        return dict(self.luns)


def is_iqn(value: str) -> bool:
    return bool(_IQN.fullmatch(value)) and len(value) <= 223


# -- show -> values ----------------------------------------------------------------------------

_TARGET = re.compile(r"Target (\d+): (\S+)$")
_SECTIONS = {
    "System information:": "system",
    "I_T nexus information:": "nexus",
    "LUN information:": "lun",
    "Account information:": "account",
    "ACL information:": "acl",
}


@dataclass
class _T:
    tid: int
    iqn: str
    state: str = "ready"
    luns: list[dict[str, str]] = field(default_factory=list)
    acl: list[str] = field(default_factory=list)
    initiators: list[str] = field(default_factory=list)


def parse_show(text: str) -> list[Target]:
    """`tgtadm --lld iscsi --mode target --op show` -> the targets, in tid order."""
    targets: list[_T] = []
    cur: _T | None = None
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        m = _TARGET.match(raw)
        if m:
            cur = _T(int(m.group(1)), m.group(2))
            targets.append(cur)
            section = ""
            continue
        if cur is None:
            raise TgtParseError(f"tgtadm show: text before the first target: {raw[:80]!r}")
        if line in _SECTIONS:
            section = _SECTIONS[line]
            continue
        key, sep, value = line.partition(":")
        value = value.strip()
        if section == "system" and key == "State":
            cur.state = value
        elif section == "nexus" and key == "Initiator" and sep:
            cur.initiators.append(value.split()[0] if value else "")
        elif section == "lun":
            if key == "LUN" and sep:
                cur.luns.append({"LUN": value})
            elif cur.luns and sep:
                cur.luns[-1][key] = value
        elif section == "acl":
            cur.acl.append(line)
    return [_target(t) for t in sorted(targets, key=lambda t: t.tid)]


def _target(t: _T) -> Target:
    luns = []
    for d in t.luns:
        try:
            number = int(d["LUN"])
        except (KeyError, ValueError):
            raise TgtParseError(f"target {t.tid}: bad LUN line {d.get('LUN')!r}") from None
        path = d.get("Backing store path")
        size = re.match(r"(\d+) MB", d.get("Size", ""))
        luns.append(Lun(
            number=number,
            type=d.get("Type", ""),
            path=None if path in (None, "", "None") else path,
            online=d.get("Online", "Yes") == "Yes",
            size_mb=int(size.group(1)) if size else 0,
        ))
    return Target(t.tid, t.iqn, t.state, tuple(sorted(luns, key=lambda lu: lu.number)),
                  tuple(t.acl), tuple(i for i in t.initiators if i))


# -- values -> targets.conf --------------------------------------------------------------------


def _check(target: DesiredTarget) -> None:
    if not is_iqn(target.iqn):
        raise NetbootdError(f"not an iSCSI qualified name: {target.iqn!r}")
    for lun, path in target.luns:
        if lun < 1 or not _SAFE_PATH.fullmatch(path):
            raise NetbootdError(f"target {target.iqn}: LUN {lun} path {path!r} cannot be written "
                                "into targets.conf (absolute, no spaces or quotes)")
    for name in target.initiators:
        if not is_iqn(name):
            raise NetbootdError(f"not an iSCSI qualified name: {name!r}")


def render_targets_conf(targets: Iterable[DesiredTarget], header: Sequence[str] = ()) -> str:
    """tgt-admin's `targets.conf` for `targets` (`tgt-admin --update ALL -c FILE` applies it).

    Each backing store names its LUN: tgt-admin numbers unnumbered ones in the *sorted* order of
    their paths, which would make `data.img` LUN 1 and `root.img` LUN 2."""
    out = [f"# {line}" for line in header]
    for t in sorted(targets, key=lambda t: t.tid):
        _check(t)
        numbers = [n for n, _ in sorted(t.luns)]
        if numbers != list(range(1, len(numbers) + 1)):
            raise NetbootdError(f"target {t.iqn}: LUNs {numbers} are not numbered 1, 2, ...")
        if out:
            out.append("")
        if t.comment:
            out.append(f"# {t.comment}")
        out.append(f"<target {t.iqn}>")
        out.append("    driver iscsi")
        for lun, path in sorted(t.luns):
            out += [f"    <backing-store {path}>", f"        lun {lun}", "    </backing-store>"]
        for addr in t.addresses:
            if addr != "ALL":
                out.append(f"    initiator-address {addr}")
        for name in t.initiators:
            out.append(f"    initiator-name {name}")
        out.append("</target>")
    return "\n".join(out) + "\n"
