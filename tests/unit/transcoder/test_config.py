"""The transcoder's configuration: the shipped file is valid and bad values are named."""

from __future__ import annotations

from pathlib import Path

import pytest

from sipmob.service.config import ConfigError, load_config, parse_config
from sipmob.transcoder.config import TranscoderConfig

ROOT = Path(__file__).resolve().parents[3]


def test_the_shipped_file_is_the_defaults() -> None:
    assert load_config(TranscoderConfig, ROOT / "etc" / "sipmob" / "transcoder.toml") == TranscoderConfig()


@pytest.mark.parametrize(("data", "key"), [
    ({"media": {"codecs": ["PCMU", "G729"]}}, "codecs"),
    ({"media": {"codecs": []}}, "codecs"),
    ({"rtp": {"port_min": 20000, "port_max": 20002}}, "port_max"),
    ({"access": {"allowed_networks": ["192.168.1.0/33"]}}, "allowed_networks"),
    ({"capacity": {"channels": 0}}, "channels"),
    ({"sip": {"port": 70000}}, "port"),
    ({"slp": {"lifetime": 10}}, "lifetime"),
    ({"media": {"workers": -1}}, "workers"),
    ({"media": {"workers": 1000}}, "workers"),
])
def test_a_bad_value_is_refused_naming_its_key(data: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(TranscoderConfig, data, "transcoder.toml")
    assert any(key in str(problem) for problem in caught.value.problems)


def test_workers_default_to_the_cores_this_process_may_use() -> None:
    import os

    from sipmob.transcoder.media import default_workers

    assert TranscoderConfig().media.workers == 0
    assert default_workers() == len(os.sched_getaffinity(0))
