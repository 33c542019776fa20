"""`role build`'s evaluation (roles/nixbuild.py) with real Nix, nothing built: which kernel file
it takes from a configuration (config.system.boot.loader.kernelFile), as the NixOS module's role
files and aarch64 configurations name it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from netbootd.errors import BuildError, InvalidInput
from netbootd.roles.nixbuild import Attrs, Nix, Source
from testbed import nixenv

pytestmark = pytest.mark.skipif(nixenv.missing() is not None, reason=str(nixenv.missing()))


def configuration(tmp_path: Path, kernel_file: str | None, files: list[str]) -> Source:
    """A configuration whose outputs are already there ({ outPath = ...; }, as the module's role
    files are), its kernel output holding `files`."""
    kernel, initrd, top = (tmp_path / n for n in ("kernel", "initrd", "toplevel"))
    for d in (kernel, initrd, top):
        d.mkdir()
    for f in files:
        (kernel / f).write_bytes(b"kernel")
    (initrd / "initrd").write_bytes(b"initrd")
    say = (f"system.boot.loader.kernelFile = {json.dumps(kernel_file)};"
           if kernel_file is not None else "")
    (tmp_path / "conf.nix").write_text(f"""{{ role.config = {{
      system.build.kernel.outPath = {json.dumps(str(kernel))};
      system.build.netbootRamdisk.outPath = {json.dumps(str(initrd))};
      system.build.toplevel.outPath = {json.dumps(str(top))};
      {say}
      boot.kernelParams = [ "console=ttyAMA0" ];
    }}; }}""")
    return Source.parse(None, str(tmp_path / "conf.nix"), "role")


@pytest.fixture
def nix(tmp_path: Path) -> Nix:
    return Nix(nixenv.env(tmp_path / "nix"))


def test_kernel_file_from_the_configuration(tmp_path: Path, nix: Nix) -> None:
    src = configuration(tmp_path, "Image", ["Image"])
    ev = nix.evaluate(src, Attrs(), "netboot")
    assert ev.kernel_file == "Image" and ev.kernel_params == ("console=ttyAMA0",)
    built = nix.build(ev, src, Attrs(), "netboot")
    assert built.kernel_file == tmp_path / "kernel" / "Image"
    # --kernel-file wins over the configuration
    with pytest.raises(BuildError, match=r"the build has no .*/kernel/zImage \(set --kernel-file"):
        nix.build(ev, src, Attrs(kernel_file="zImage").check(), "netboot")


def test_no_kernel_file_in_the_configuration_is_bzimage(tmp_path: Path, nix: Nix) -> None:
    src = configuration(tmp_path, None, ["bzImage", "Image"])
    ev = nix.evaluate(src, Attrs(), "netboot")
    assert ev.kernel_file is None
    assert nix.build(ev, src, Attrs(), "netboot").kernel_file.name == "bzImage"


def test_a_kernel_file_that_is_not_a_file_name_is_refused(tmp_path: Path, nix: Nix) -> None:
    src = configuration(tmp_path, "../../etc/passwd", ["Image"])
    with pytest.raises(InvalidInput, match="kernelFile: not a file name"):
        nix.evaluate(src, Attrs(), "netboot")
