"""web.toml: the shipped file, and the checks that keep the page's costs bounded."""

from __future__ import annotations

from pathlib import Path

import pytest

from sipmob.service.config import ConfigError, load_config, parse_config
from sipmob.web.config import WebConfig

ROOT = Path(__file__).resolve().parents[3]


def test_the_shipped_file_is_the_defaults() -> None:
    assert load_config(WebConfig, ROOT / "etc/sipmob/web.toml") == WebConfig()


def test_the_shipped_file_documents_every_key() -> None:
    text = (ROOT / "etc/sipmob/web.toml").read_text()
    for table, keys in {"listen": ["addresses", "port"], "auth": ["password_file", "session_lifetime"],
                        "limits": ["max_body", "request_timeout", "max_streams"],
                        "sources": ["da", "scopes", "poll_interval", "phone_control", "units"]}.items():
        assert f"[{table}]" in text
        for key in keys:
            assert f"#{key} = " in text, key


@pytest.mark.parametrize(("data", "message"), [
    ({"sources": {"poll_interval": 0.05}}, "sources.poll_interval: must be between 0.2 and 60"),
    ({"limits": {"max_body": 10_000_000}}, "limits.max_body"),
    ({"listen": {"addresses": ["gateway.local"]}}, "listen.addresses"),
    ({"sources": {"da": "127.0.0.1:99999"}}, "sources.da"),
])
def test_bad_values_are_named(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        parse_config(WebConfig, data, "web.toml")
