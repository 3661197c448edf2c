"""egress.toml: the shipped file, an example with two links, and the checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from sipmob.net.egress import EgressSpec
from sipmob.service.config import ConfigError, load_config, parse_config
from sipmob.service.egress_config import EgressConfig

ROOT = Path(__file__).resolve().parents[3]


def test_shipped_file_is_valid_and_says_the_defaults() -> None:
    assert load_config(EgressConfig, ROOT / "etc/sipmob/egress.toml") == EgressConfig()


def test_shipped_file_mentions_every_key() -> None:
    text = (ROOT / "etc/sipmob/egress.toml").read_text()
    for key in ("policy", "sticky", "hold_down", "interval", "down_after", "target", "name", "interface",
                "address", "priority", "cost", "probe", "allow", "max_subscribers", "max_expires",
                "relays", "peers"):
        assert f"#{key} = " in text


def test_the_shipped_example_uncommented_gives_two_egresses() -> None:
    text = (ROOT / "etc/sipmob/egress.toml").read_text()
    example = text[text.index("#[[egress]]"):]
    lines = [line[1:] for line in example.splitlines() if line.startswith("#") and not line.startswith("# ")]
    path = ROOT / "etc/sipmob/egress.toml"
    config = parse_config(EgressConfig, __import__("tomllib").loads("\n".join(lines)), str(path))
    assert config.specs() == [
        EgressSpec("dsl", interface="eth1", priority=1, probe="sip:ping@sip.provider.example"),
        EgressSpec("lte", interface="wwan0", address="192.168.8.2", priority=2, cost=10)]


def test_probe_target_applies_to_egresses_without_their_own() -> None:
    config = parse_config(EgressConfig, {"probe": {"target": "sip:p@192.0.2.1"},
                                         "egress": [{"name": "a", "interface": "eth1"},
                                                    {"name": "b", "interface": "eth2",
                                                     "probe": "sip:q@192.0.2.2"}]})
    assert [s.probe for s in config.specs()] == ["sip:p@192.0.2.1", "sip:q@192.0.2.2"]


@pytest.mark.parametrize(("data", "key"), [
    ({"policy": "random"}, "policy"),
    ({"probe": {"down_after": 0}}, "probe.down_after"),
    ({"probe": {"interval": 0}}, "probe.interval"),
    ({"egress": [{"name": "a"}]}, "egress[0].interface"),
    ({"egress": [{"interface": "eth1"}]}, "egress[0].name"),
    ({"egress": [{"name": "a", "address": "not-an-ip"}]}, "egress[0].address"),
    ({"egress": [{"name": "a", "interface": "eth1", "probe": "http://x"}]}, "egress[0].probe"),
    ({"egress": [{"name": "a", "interface": "eth1"}, {"name": "a", "interface": "eth2"}]}, "egress"),
])
def test_mistakes_are_named_by_key(data: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(EgressConfig, data, "egress.toml")
    assert key in [p.key for p in caught.value.problems], caught.value
