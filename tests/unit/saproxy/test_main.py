"""The daemon's flags and its configuration file (with device files checked with it)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from sipmob.saproxy.config import SaproxyConfig
from sipmob.saproxy.main import add_arguments, override
from sipmob.service.config import ConfigError, load_config, split_host_port


def args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_the_defaults_need_no_file(tmp_path: Path) -> None:
    config = load_config(SaproxyConfig, tmp_path / "absent.toml")
    assert config.slp.das == ["127.0.0.1"] and config.probe.interval == 15.0 and not config.mdns.enabled


def test_devices_dir_replaces_the_configured_directory(tmp_path: Path) -> None:
    (tmp_path / "tv.toml").write_text('uri = "sip:tv@192.0.2.20"\n')
    settings = override(SaproxyConfig(), args("--devices-dir", str(tmp_path)))
    assert [d.id for d in settings.devices] == ["tv"]


def test_da_flags_replace_the_configured_das(tmp_path: Path) -> None:
    settings = override(SaproxyConfig(), args("--devices-dir", str(tmp_path), "--da", "127.0.0.1:4270",
                                              "--da", "[::1]"))
    assert settings.config.slp.das == ["127.0.0.1:4270", "[::1]"]


def test_a_bad_da_flag_is_a_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        override(SaproxyConfig(), args("--devices-dir", str(tmp_path), "--da", "gateway.home"))


def test_listen_sets_the_sip_address_and_port(tmp_path: Path) -> None:
    settings = override(SaproxyConfig(), args("--devices-dir", str(tmp_path), "--listen", "127.0.0.1:5999"))
    assert (settings.config.sip.address, settings.config.sip.port) == ("127.0.0.1", 5999)


def test_listen_without_a_port_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        override(SaproxyConfig(), args("--devices-dir", str(tmp_path), "--listen", "127.0.0.1"))


def test_a_broken_device_file_fails_loading_with_its_name(tmp_path: Path) -> None:
    (tmp_path / "tv.toml").write_text('uri = "sip:tv@192.0.2.20"\nfloor = "one"\n')
    with pytest.raises(ConfigError) as info:
        override(SaproxyConfig(), args("--devices-dir", str(tmp_path)))
    assert str(info.value).startswith(f"{tmp_path / 'tv.toml'}: floor:")


def test_backoff_below_the_interval_is_a_problem(tmp_path: Path) -> None:
    path = tmp_path / "saproxy.toml"
    path.write_text("[probe]\ninterval = 30\nbackoff_max = 10\n")
    with pytest.raises(ConfigError) as info:
        load_config(SaproxyConfig, path)
    assert "probe.backoff_max: must be at least interval" in str(info.value)


def test_no_da_and_no_multicast_is_a_problem(tmp_path: Path) -> None:
    path = tmp_path / "saproxy.toml"
    path.write_text("[slp]\ndas = []\n")
    with pytest.raises(ConfigError, match="slp.das: must list a DA"):
        load_config(SaproxyConfig, path)


def test_the_shipped_file_is_valid() -> None:
    shipped = Path(__file__).resolve().parents[3] / "etc" / "sipmob" / "saproxy.toml"
    assert load_config(SaproxyConfig, shipped) == SaproxyConfig()


@pytest.mark.parametrize(("text", "expected"), [
    ("127.0.0.1", ("127.0.0.1", 427)), ("127.0.0.1:4270", ("127.0.0.1", 4270)),
    ("[::1]:99", ("::1", 99)), ("::1", ("::1", 427)),
])
def test_host_port_forms(text: str, expected: tuple[str, int]) -> None:
    assert split_host_port(text, 427) == expected


@pytest.mark.parametrize("text", ["gateway", "127.0.0.1:x", "127.0.0.1:70000", "[::1"])
def test_host_port_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        split_host_port(text, 427)
