"""tgtadm's `show` output parsed (captured from tgt 1.0.85 on this machine), targets.conf
rendered and compared whole."""

from pathlib import Path

import pytest

from netbootd.codec.tgt import DesiredTarget, parse_show, render_targets_conf
from netbootd.errors import NetbootdError, TgtParseError

DATA = Path(__file__).resolve().parent.parent / "data" / "tgt"

NEXUS = """Target 2: iqn.2025-01.org.netbootd:52-54-00-aa-00-01
    System information:
        Driver: iscsi
        State: ready
    I_T nexus information:
        I_T nexus: 4
            Initiator: iqn.2025-01.org.netbootd:host.52-54-00-aa-00-01 alias: none
            Connection: 0
                IP Address: 192.168.77.123
    LUN information:
        LUN: 0
            Type: controller
            Backing store path: None
        LUN: 1
            Type: disk
            Size: 17 MB, Block size: 512
            Online: No
            Backing store path: /srv/root.img
    Account information:
    ACL information:
        ALL
"""


def test_parse_captured_show():
    targets = parse_show((DATA / "show-two-targets.txt").read_text())
    assert [t.tid for t in targets] == [1, 7]
    mine, foreign = targets
    assert mine.iqn == "iqn.2025-01.org.netbootd:52-54-00-12-34-56" and mine.state == "ready"
    assert [(lu.number, lu.type, lu.path) for lu in mine.luns] == [
        (0, "controller", None),
        (1, "disk", "/tmp/fusetest/r.img"),
        (2, "disk", "/tmp/fusetest/d.img"),
    ]
    assert [lu.number for lu in mine.data_luns] == [1, 2]
    assert mine.lun(1).size_mb == 17 and mine.lun(1).online
    assert mine.addresses == {"ALL"}
    assert mine.names == {"iqn.2025-01.org.netbootd:host.52-54-00-12-34-56"}
    assert mine.initiators == ()
    assert foreign.state == "offline" and foreign.addresses == {"10.0.0.0/8"} and not foreign.names


def test_parse_nexus_and_offline_lun():
    (t,) = parse_show(NEXUS)
    assert t.initiators == ("iqn.2025-01.org.netbootd:host.52-54-00-aa-00-01",)
    assert t.lun(1).online is False and t.lun(1).path == "/srv/root.img"


def test_parse_empty_and_garbage():
    assert parse_show("") == []
    with pytest.raises(TgtParseError):
        parse_show("    LUN: 1\n")


def test_targets_conf_whole():
    text = render_targets_conf(
        [
            DesiredTarget(
                3,
                "iqn.2025-01.org.netbootd:52-54-00-00-00-03",
                ((2, "/srv/h3/data.img"), (1, "/srv/h3/root.img")),
                ("iqn.2025-01.org.netbootd:host.52-54-00-00-00-03",),
                comment="h3",
            ),
            DesiredTarget(
                1,
                "iqn.2025-01.org.netbootd:52-54-00-00-00-01",
                ((1, "/srv/h1/r.img"),),
                addresses=("10.0.0.0/8",),
            ),
        ],
        header=["generated"],
    )
    assert (
        text
        == """# generated

<target iqn.2025-01.org.netbootd:52-54-00-00-00-01>
    driver iscsi
    <backing-store /srv/h1/r.img>
        lun 1
    </backing-store>
    initiator-address 10.0.0.0/8
</target>

# h3
<target iqn.2025-01.org.netbootd:52-54-00-00-00-03>
    driver iscsi
    <backing-store /srv/h3/root.img>
        lun 1
    </backing-store>
    <backing-store /srv/h3/data.img>
        lun 2
    </backing-store>
    initiator-name iqn.2025-01.org.netbootd:host.52-54-00-00-00-03
</target>
"""
    )


@pytest.mark.parametrize(
    "bad",
    [
        DesiredTarget(1, "not-an-iqn", ((1, "/a"),)),
        DesiredTarget(1, "iqn.2025-01.org.x:a", ((1, "/a b"),)),
        DesiredTarget(1, "iqn.2025-01.org.x:a", ((1, "/a"), (3, "/b"))),
        DesiredTarget(1, "iqn.2025-01.org.x:a", ((1, "/a"),), initiators=("x\ny",)),
    ],
)
def test_targets_conf_refuses_what_it_cannot_write(bad):
    with pytest.raises(NetbootdError):
        render_targets_conf([bad])
