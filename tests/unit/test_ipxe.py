from dataclasses import replace
from pathlib import Path

import pytest

from netbootd import policy
from netbootd.codec.ipxe import ScriptRenderer
from netbootd.config import Config
from netbootd.errors import RenderError
from netbootd.model import Artifact, Host, Image, MacAddress, Urls

TEMPLATES = Config().templates_dir
MAC = MacAddress.parse("52:54:00:12:34:56")
HOST = Host(MAC, "web", hostname="web1")
IMAGE = Image("web", 2, Artifact("a" * 64, 1), (Artifact("b" * 64, 1),), "console=ttyS0", 0.0)
URLS = Urls("http://10.0.0.1:8080")

EXPECTED = f"""#!ipxe
# netbootd: web1 (52:54:00:12:34:56) boots role web generation 2
# A file named <role>.ipxe.j2 beside this one replaces it for that role.
echo netbootd: web1 (52:54:00:12:34:56) -> web generation 2
kernel http://10.0.0.1:8080/artifacts/{"a" * 64}/kernel initrd=initrd0 console=ttyS0 \
netbootd.events=http://10.0.0.1:8080/api/v1/hosts/52-54-00-12-34-56/events \
netbootd.hostname=web1 || goto failed
initrd --name initrd0 http://10.0.0.1:8080/artifacts/{"b" * 64}/initrd0 || goto failed
boot || goto failed

:failed
echo netbootd: boot of web1 failed; see `netbootd explain 52:54:00:12:34:56` on the server
exit 1
"""


def test_host_script_whole():
    assert TEMPLATES.is_dir()
    text = ScriptRenderer(TEMPLATES).host_script(policy.boot_plan(HOST, IMAGE, URLS))
    assert text == EXPECTED


def test_unknown_script():
    text = ScriptRenderer(TEMPLATES).unknown_script(MAC)
    assert text.startswith("#!ipxe\n")
    assert "52:54:00:12:34:56 is not enrolled" in text
    assert text.rstrip().endswith("exit 1")


def test_unsafe_value_refused_at_render():
    # model validation stops these earlier; the renderer refuses them again.
    plan = policy.boot_plan(HOST, IMAGE, URLS)
    for bad in ["x\nchain http://evil/", "a ${net0/mac}", "x\x1b[2J"]:
        with pytest.raises(RenderError, match="unsafe"):
            ScriptRenderer(TEMPLATES).host_script(replace(plan, cmdline=bad))


def test_role_template_overrides_default(tmp_path: Path):
    (tmp_path / "default.ipxe.j2").write_text("#!ipxe\ndefault\n")
    (tmp_path / "web.ipxe.j2").write_text("#!ipxe\nrole {{ image.role }} {{ kernel_url }}\n")
    r = ScriptRenderer(tmp_path)
    assert r.host_script(policy.boot_plan(HOST, IMAGE, URLS)).startswith("#!ipxe\nrole web http://")
    other = replace(IMAGE, role="db")
    assert r.host_script(policy.boot_plan(HOST, other, URLS)) == "#!ipxe\ndefault\n"


def test_broken_or_missing_template_is_a_render_error(tmp_path: Path):
    (tmp_path / "default.ipxe.j2").write_text("#!ipxe\n{{ no_such_variable }}\n")
    with pytest.raises(RenderError, match="template error"):
        ScriptRenderer(tmp_path).host_script(policy.boot_plan(HOST, IMAGE, URLS))
    with pytest.raises(RenderError, match="no template"):
        ScriptRenderer(tmp_path).unknown_script(MAC)
