"""servers/dhcpguard.py: when a flood is said to start and end (FloodSwitch, pure), the
unknown-MAC budget of user space, and the eBPF program's shape (loading and running it needs
root: tests/integration/test_dhcp_flood.py)."""

from __future__ import annotations

import logging
import struct

from netbootd.servers import bpfilter
from netbootd.servers.dhcpguard import (
    FLOOD_QUIET,
    UNKNOWN_SLOW_PER_SECOND,
    FloodGuard,
    FloodSwitch,
)


def test_the_switch_is_on_from_the_first_kernel_drop_until_a_quiet_spell() -> None:
    sw = FloodSwitch()
    assert sw.update(100.0, 0) is False
    assert sw.update(101.0, 0) is False  # nothing dropped: no flood
    assert sw.update(102.0, 15_000) is True
    assert sw.rate == 15_000
    t = 102.0
    for _ in range(int(FLOOD_QUIET) - 1):  # calm again, but not for long enough yet
        t += 1.0
        assert sw.update(t, 15_000) is True
    assert sw.update(t + 0.5, 15_001) is True  # one more drop: the quiet spell starts over
    t += 0.5
    for _ in range(int(FLOOD_QUIET) - 1):
        t += 1.0
        assert sw.update(t, 15_001) is True
    assert sw.update(t + 1.0, 15_001) is False


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
    assert insns[-1][0] == 0x95 and len(insns) < 128
    for i, (op, _regs, off, _imm) in enumerate(insns):
        if op & 0x07 == 0x05 and op not in (0x85, 0x95):  # a jump
            assert 0 < i + 1 + off < len(insns), i
    loads = [imm for op, regs, _off, imm in insns if op == 0x18 and regs >> 4 == 1]
    assert loads == [7, 8, 8, 8, 8]  # the MAC map once, the control map per entry used
