"""mn.toml's keys for names: ``[identity] outbound_proxy`` and ``[dns] servers``."""

from __future__ import annotations

from pathlib import Path

import pytest

from sipmob.mn.config import MnConfig
from sipmob.service.config import ConfigError, parse_config

ROOT = Path(__file__).resolve().parents[3]


def test_defaults_use_resolv_conf_and_no_proxy() -> None:
    assert MnConfig().dns_servers == []
    assert MnConfig().identity.outbound_proxy == ""


def test_dns_servers_default_to_port_53() -> None:
    config = parse_config(MnConfig, {"dns": {"servers": ["10.0.0.1", "127.0.0.1:5353", "[::1]:53"]}})
    assert config.dns_servers == [("10.0.0.1", 53), ("127.0.0.1", 5353), ("::1", 53)]


def test_a_dns_server_by_name_is_refused() -> None:
    with pytest.raises(ConfigError, match="dns.servers: must be HOST"):
        parse_config(MnConfig, {"dns": {"servers": ["ns.example.com"]}})


def test_outbound_proxy_must_be_a_sip_uri() -> None:
    with pytest.raises(ConfigError, match="identity.outbound_proxy: must be a sip: or sips: URI"):
        parse_config(MnConfig, {"identity": {"outbound_proxy": "proxy.example.com"}})
    assert parse_config(MnConfig, {"identity": {"outbound_proxy": "sip:proxy.example.com;transport=udp"}})


def test_shipped_file_mentions_the_new_keys() -> None:
    text = (ROOT / "etc/sipmob/mn.toml").read_text()
    assert "[dns]" in text and "#servers = " in text and "#outbound_proxy = " in text
