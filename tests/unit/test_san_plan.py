"""The reconcile planner (pure): desired targets vs what tgtd has -> tgtadm steps."""

from netbootd.codec.tgt import DesiredTarget, Lun, Target
from netbootd.stemcell.iscsi import plan

BASE = "iqn.2025-01.org.netbootd"
CTRL = Lun(0, "controller", None)


def want(tid: int, name: str = "a") -> DesiredTarget:
    return DesiredTarget(
        tid,
        f"{BASE}:{name}",
        ((1, f"/d/{name}/root.img"), (2, f"/d/{name}/data.img")),
        (f"{BASE}:host.{name}",),
    )


def have(tid: int, name: str = "a", *, luns=None, acl=None, state="ready", iqn=None) -> Target:
    luns = (
        luns
        if luns is not None
        else (CTRL, Lun(1, "disk", f"/d/{name}/root.img"), Lun(2, "disk", f"/d/{name}/data.img"))
    )
    acl = acl if acl is not None else ("ALL", f"{BASE}:host.{name}")
    return Target(tid, iqn or f"{BASE}:{name}", state, tuple(luns), tuple(acl))


def ops(p):
    return [s.describe() for s in p.steps]


def test_nothing_to_do_when_equal():
    p = plan([want(1, "a"), want(2, "b")], [have(1, "a"), have(2, "b")], BASE)
    assert p.steps == () and p.unchanged == 2 and p.conflicts == ()


def test_missing_target_is_created_whole():
    p = plan([want(1)], [], BASE)
    assert ops(p) == [
        f"tid 1: new-target {BASE}:a (missing)",
        "tid 1: new-lun LUN 1 /d/a/root.img",
        "tid 1: new-lun LUN 2 /d/a/data.img",
        "tid 1: bind-address ALL",
        f"tid 1: bind-name {BASE}:host.a",
    ]


def test_unwanted_own_target_deleted_foreign_left_alone():
    foreign = Target(9, "iqn.2010-01.com.example:other", "ready", (CTRL,), ("ALL",))
    p = plan([], [have(1, "a"), foreign], BASE)
    assert ops(p) == [f"tid 1: delete-target {BASE}:a (not wanted)"]


def test_foreign_target_on_our_tid_is_a_conflict():
    foreign = Target(1, "iqn.2010-01.com.example:other", "ready", (CTRL,), ("ALL",))
    p = plan([want(1)], [foreign], BASE)
    assert p.steps == () and len(p.conflicts) == 1 and "does not own" in p.conflicts[0]


def test_target_moved_to_another_tid():
    p = plan([want(2, "a")], [have(1, "a")], BASE)
    assert ops(p)[0] == f"tid 1: delete-target {BASE}:a (not wanted)"
    assert ops(p)[1] == f"tid 2: new-target {BASE}:a (missing)"


def test_other_iqn_on_our_tid_replaced():
    p = plan([want(1, "b")], [have(1, "a")], BASE)
    assert ops(p)[0] == f"tid 1: delete-target {BASE}:a (tid is {BASE}:b's)"
    assert f"tid 1: new-target {BASE}:b (missing)" in ops(p)


def test_lun_path_changed_missing_and_extra():
    luns = (CTRL, Lun(1, "disk", "/old/root.img"), Lun(3, "disk", "/x"))
    p = plan([want(1)], [have(1, luns=luns)], BASE)
    assert ops(p) == [
        "tid 1: delete-lun LUN 1 (was /old/root.img)",
        "tid 1: delete-lun LUN 3 (not wanted)",
        "tid 1: new-lun LUN 1 /d/a/root.img",
        "tid 1: new-lun LUN 2 /d/a/data.img",
    ]


def test_acl_and_state_fixed():
    p = plan([want(1)], [have(1, acl=("10.0.0.1", f"{BASE}:host.zz"), state="offline")], BASE)
    assert ops(p) == [
        "tid 1: unbind-address 10.0.0.1",
        "tid 1: bind-address ALL",
        f"tid 1: unbind-name {BASE}:host.zz",
        f"tid 1: bind-name {BASE}:host.a",
        "tid 1: ready (was offline)",
    ]


def test_stale_lun_readded_even_if_path_matches():
    p = plan([want(1)], [have(1)], BASE, frozenset({(1, 1)}))
    assert ops(p) == ["tid 1: delete-lun LUN 1 (stale)", "tid 1: new-lun LUN 1 /d/a/root.img"]
