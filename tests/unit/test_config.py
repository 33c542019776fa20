from ipaddress import IPv4Address

import pytest

from netbootd.config import load
from netbootd.errors import ConfigError


def test_embedded_default(monkeypatch):
    monkeypatch.delenv("NETBOOTD_STATE_DIR", raising=False)
    cfg = load()
    assert cfg.http.port == 80 and cfg.dhcp.port == 67 and cfg.dhcp.pxe_port == 4011
    assert cfg.boot_files.bios == "undionly.kpxe" and cfg.boot_files.uefi == "ipxe.efi"
    assert (cfg.templates_dir / "default.ipxe.j2").is_file()


def test_file_and_overrides(tmp_path, monkeypatch):
    monkeypatch.delenv("NETBOOTD_STATE_DIR", raising=False)
    f = tmp_path / "n.toml"
    f.write_text(
        'advertise_address = "10.0.0.1"\n[http]\nport = 8080\n[boot_files]\nuefi = "snponly.efi"\n'
    )
    cfg = load(f, {"http.port": 9090, "tftp.port": None})
    assert cfg.advertise_address == IPv4Address("10.0.0.1")
    assert cfg.http.port == 9090 and cfg.tftp.port == 69
    assert cfg.boot_files.uefi == "snponly.efi"


def test_env_state_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("NETBOOTD_STATE_DIR", str(tmp_path))
    assert load().state_dir == tmp_path


@pytest.mark.parametrize(
    "text,field",
    [
        ("[http]\nport = 70000\n", "http.port"),
        ("[http]\nprot = 80\n", "http.prot"),
        ('advertise_address = "not-an-ip"\n', "advertise_address"),
        ('[boot_files]\nbios = "../../etc/shadow"\n', "boot_files.bios"),
        ('[dhcp]\nunknown_policy = "answer-everyone"\n', "dhcp.unknown_policy"),
    ],
)
def test_bad_config_names_the_field(tmp_path, text, field):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(ConfigError) as e:
        load(f)
    assert f"{f}: {field}:" in str(e.value)


def test_unparseable_and_missing(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text("[http\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(f)
    with pytest.raises(ConfigError, match="not found"):
        load(tmp_path / "missing.toml")
