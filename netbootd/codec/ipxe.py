"""Rendering of iPXE scripts from `ipxe-templates/` with jinja2. Pure: text in, text out.

Templates get only validated values (see model.py); as a second line of defence every value
a template prints is checked here, so nothing can start a new iPXE command line or expand an
iPXE setting: a value with a newline, a control character or `${` makes rendering fail.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jinja2

from netbootd.errors import RenderError
from netbootd.model import BootMode, BootPlan, Host, MacAddress

_UNSAFE = re.compile(r"[\x00-\x1f\x7f]|\$\{")




def _finalize(value: object) -> object:
    if isinstance(value, str) and _UNSAFE.search(value):
        raise RenderError(f"refusing to put an unsafe value into an iPXE script: {value[:60]!r}")
    return value


class HostContext:
    """`host` in a template: the Host's fields, and `host.inventory` -- its latest hardware
    inventory (netbootd-inventory/1 as a mapping; None when it never reported one), e.g.
    `host.inventory.disks[0].by_id[0]` to name the install disk. Its strings were written by the
    machine: `_finalize` refuses any with a control character or `${` like every value."""

    def __init__(self, host: Host, inventory: Mapping[str, Any] | None) -> None:
        self._host = host
        self.inventory = inventory

    def __getattr__(self, name: str) -> Any:
        return getattr(self._host, name)


class ScriptRenderer:
    def __init__(self, templates_dir: Path) -> None:
        self.dir = templates_dir
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(templates_dir)),
            undefined=jinja2.StrictUndefined,
            autoescape=False,
            keep_trailing_newline=True,
            finalize=_finalize,
            auto_reload=True,
        )

    def _render(self, names: list[str], **values: object) -> str:
        try:
            template = self.env.select_template(names)
            return template.render(**values)
        except RenderError:
            raise
        except jinja2.TemplatesNotFound:
            raise RenderError(f"no template {' or '.join(names)} in {self.dir}") from None
        except jinja2.TemplateError as e:
            raise RenderError(f"iPXE template error in {self.dir}: {e}") from None

    def host_script(self, plan: BootPlan) -> str:
        # A role's own template first; then, for the iscsi and local boot modes, the mode's
        # (`modes/<mode>.ipxe.j2`: no role name contains '/'); then the default.
        names = [f"{plan.image.role}.ipxe.j2"]
        if plan.mode in (BootMode.ISCSI, BootMode.LOCAL):
            names.append(f"modes/{plan.mode}.ipxe.j2")
        return self._render(
            [*names, "default.ipxe.j2"],
            host=HostContext(plan.host, plan.inventory),
            image=plan.image,
            kernel_url=plan.kernel_url,
            initrds=plan.initrds,
            cmdline=plan.cmdline,
            events_url=plan.events_url,
            mode=str(plan.mode),
            san=plan.san,
            local=plan.local,
        )

    def static_script(self, plan: BootPlan) -> str:
        """`netboot.ipxe` of a static store (`build-image`): relative URLs, no reports."""
        return self._render(["static.ipxe.j2"], host=plan.host, image=plan.image,
                            kernel_url=plan.kernel_url, initrds=plan.initrds, cmdline=plan.cmdline)

    def unknown_script(self, mac: MacAddress) -> str:
        return self._render(["unknown.ipxe.j2"], mac=str(mac))
