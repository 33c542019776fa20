"""servers/dhcpguard.py: when the kernel filter drops unknown MACs (FloodSwitch, pure), the
unknown-MAC budget, and the eBPF program's shape (loading it needs root: tests/integration/
test_dhcp_flood.py)."""

from __future__ import annotations

import logging
import struct

from netbootd.servers import bpfilter
from netbootd.servers.dhcpguard import (
    FLOOD_ON,
    FLOOD_QUIET,
    UNKNOWN_SLOW_PER_SECOND,
    FloodGuard,
    FloodSwitch,
)


def test_the_switch_goes_on_above_flood_on_and_off_after_a_quiet_spell() -> None:
    sw = FloodSwitch()
    total, t = 0, 100.0
    assert sw.update(t, total) is False
    for _ in range(8):  # normal LAN chatter: 50 unknown MACs a second
        t, total = t + 0.25, total + 12
        assert sw.update(t, total) is False
    t, total = t + 0.25, total + int(FLOOD_ON * 0.25) + 50  # a flood
    assert sw.update(t, total) is True
    assert sw.rate > FLOOD_ON
    for _ in range(int(FLOOD_QUIET / 0.25) - 1):  # calm again, but not for long enough yet
        t, total = t + 0.25, total + 5
        assert sw.update(t, total) is True
    t, total = t + 0.25, total + 5000  # it comes back: the quiet spell starts over
    assert sw.update(t, total) is True
    for _ in range(int(FLOOD_QUIET / 0.25) + 1):
        t, total = t + 0.25, total + 5
        on = sw.update(t, total)
    assert on is False


def test_the_switch_ignores_a_clock_that_does_not_move() -> None:
    sw = FloodSwitch()
    sw.update(5.0, 0)
    assert sw.update(5.0, 10_000) is False


def test_the_unknown_mac_budget_is_per_second() -> None:
    guard = FloodGuard(logging.getLogger("test"))
    guard.batch(10.0, frozenset())
    admitted = sum(guard.admit_unknown() for _ in range(100))
    assert admitted == UNKNOWN_SLOW_PER_SECOND
    guard.batch(10.9, frozenset())
    assert not guard.admit_unknown()
    guard.batch(11.0, frozenset())
    assert guard.admit_unknown()


def test_the_program_jumps_stay_inside_it_and_end_in_exit() -> None:
    code = bpfilter.program(7, 8)
    insns = [struct.unpack("<BBhi", code[i : i + 8]) for i in range(0, len(code), 8)]
    assert insns[-1][0] == 0x95 and len(insns) < 64
    for i, (op, _regs, off, _imm) in enumerate(insns):
        if op & 0x07 == 0x05 and op not in (0x85, 0x95):  # a conditional jump
            assert 0 <= i + 1 + off < len(insns)
            assert insns[i + 1 + off][0] in (0xB7, 0xB4)  # to "drop" or "accept"
    loads = [imm for op, regs, _off, imm in insns if op == 0x18 and regs >> 4 == 1]
    assert loads == [7, 8, 8]  # the MAC map once, the control map twice
