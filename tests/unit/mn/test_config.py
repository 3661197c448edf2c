"""mn.toml: defaults, the shipped file, checks and the control socket's default path."""

from __future__ import annotations

from pathlib import Path

import pytest

from sipmob.mn.config import MnConfig, default_control_path
from sipmob.service.config import ConfigError, load_config, parse_config

ROOT = Path(__file__).resolve().parents[3]


def test_shipped_file_is_valid_and_says_the_defaults() -> None:
    assert load_config(MnConfig, ROOT / "etc/sipmob/mn.toml") == MnConfig()


def test_shipped_file_mentions_every_key() -> None:
    text = (ROOT / "etc/sipmob/mn.toml").read_text()
    for table in ("listen", "identity", "media", "calls", "slp", "control", "log"):
        assert f"[{table}]" in text
    for key in ("user", "display_name", "registrar", "auto_answer", "audio_in", "record", "grace_period",
                "device_timeout", "da", "scopes", "path"):
        assert f"#{key} = " in text


def test_user_defaults_to_mn() -> None:
    assert MnConfig().identity.user == "mn"


def test_control_path_under_xdg_runtime_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1000")
    assert default_control_path() == Path("/run/user/1000/sipmob/mn.sock")


def test_control_path_without_xdg_runtime_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    assert default_control_path() == Path("/run/sipmob/mn.sock")


def test_configured_control_path_wins() -> None:
    config = parse_config(MnConfig, {"control": {"path": "/tmp/x.sock"}})
    assert config.control_path == Path("/tmp/x.sock")


def test_da_address_is_split_into_host_and_port() -> None:
    assert parse_config(MnConfig, {"slp": {"da": "[::1]:4270"}}).da_address == ("::1", 4270)


def test_empty_da_means_multicast() -> None:
    assert parse_config(MnConfig, {"slp": {"da": ""}}).da_address is None


def test_audio_in_must_be_tone_or_wav() -> None:
    with pytest.raises(ConfigError, match=r'mn.toml: media.audio_in: must be "tone" or the path of a .wav'):
        parse_config(MnConfig, {"media": {"audio_in": "song.mp3"}}, "mn.toml")


def test_registrar_must_be_a_sip_uri() -> None:
    with pytest.raises(ConfigError, match="identity.registrar: must be a sip: or sips: URI"):
        parse_config(MnConfig, {"identity": {"registrar": "registrar.example.com"}})


def test_bad_da_is_named() -> None:
    with pytest.raises(ConfigError, match="slp.da: must be HOST"):
        parse_config(MnConfig, {"slp": {"da": "localhost"}})


def test_negative_grace_period_is_refused() -> None:
    with pytest.raises(ConfigError, match="calls.grace_period"):
        parse_config(MnConfig, {"calls": {"grace_period": -1.0}})


def test_unknown_codec_is_refused() -> None:
    with pytest.raises(ConfigError, match="media.codecs"):
        parse_config(MnConfig, {"media": {"codecs": ["AMR"]}})
