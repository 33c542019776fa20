"""NFS export configurations rendered from values, compared whole."""

import pytest

from netbootd.codec.nfs import Export, render_ganesha, render_kernel_exports
from netbootd.errors import ExportError

EXPORTS = [
    Export(100, "/srv/nb/hosts/52-54-00-00-00-01", True, ("*",), "web1"),
    Export(1, "/srv/nb/store", False, ("192.168.1.0/24", "10.0.0.5")),
]


def test_ganesha_whole():
    assert render_ganesha(EXPORTS, bind_addr="192.168.1.10", header=["generated"]) == """\
# generated
NFS_CORE_PARAM {
    Protocols = 4;
    Enable_NLM = false;
    Enable_RQUOTA = false;
    Enable_UDP = false;
    Bind_addr = 192.168.1.10;
}
NFSV4 {
    Graceless = true;
}

EXPORT {
    Export_Id = 1;
    Path = "/srv/nb/store";
    Pseudo = "/srv/nb/store";
    Protocols = 4;
    Transports = TCP;
    Access_Type = None;
    Squash = No_Root_Squash;
    SecType = sys;
    FSAL { Name = VFS; }
    CLIENT {
        Clients = 192.168.1.0/24, 10.0.0.5;
        Access_Type = RO;
    }
}

# web1
EXPORT {
    Export_Id = 100;
    Path = "/srv/nb/hosts/52-54-00-00-00-01";
    Pseudo = "/srv/nb/hosts/52-54-00-00-00-01";
    Protocols = 4;
    Transports = TCP;
    Access_Type = None;
    Squash = No_Root_Squash;
    SecType = sys;
    FSAL { Name = VFS; }
    CLIENT {
        Clients = *;
        Access_Type = RW;
    }
}
"""


def test_kernel_exports_whole():
    assert render_kernel_exports(EXPORTS) == (
        "/srv/nb/store 192.168.1.0/24(ro,sync,no_subtree_check,no_root_squash,insecure) "
        "10.0.0.5(ro,sync,no_subtree_check,no_root_squash,insecure)\n"
        "# web1\n"
        "/srv/nb/hosts/52-54-00-00-00-01 *(rw,sync,no_subtree_check,no_root_squash,insecure)\n"
    )


@pytest.mark.parametrize("bad", [
    [Export(1, "relative", False)],
    [Export(1, "/a b", False)],
    [Export(1, "/a/../b", False)],
    [Export(0, "/a", False)],
    [Export(1, "/a", False, ("a;b",))],
    [Export(1, "/a", False), Export(1, "/b", True)],
])
def test_refuses_unrenderable(bad):
    with pytest.raises(ExportError):
        render_ganesha(bad)
    with pytest.raises(ExportError):
        render_kernel_exports(bad)


def test_bad_bind_address():
    with pytest.raises(ExportError):
        render_ganesha(EXPORTS, bind_addr="1.2.3.4; Foo")
