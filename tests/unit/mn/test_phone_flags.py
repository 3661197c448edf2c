"""`sipmob phone` flags override the configuration file and are checked like it."""

from __future__ import annotations

import pytest

from sipmob.mn.config import MnConfig
from sipmob.mn.phone import SPEC
from sipmob.service.daemon import parse_args


def override(*argv: str) -> MnConfig:
    assert SPEC.override is not None
    return SPEC.override(MnConfig(), parse_args(SPEC, ["--config", "/nonexistent", *argv]))


def test_no_flags_leave_the_configuration_as_it_is() -> None:
    assert override() == MnConfig()


def test_each_flag_sets_its_key() -> None:
    config = override("--user", "anna", "--auto-answer", "--audio-in", "voice.wav", "--record", "out.wav",
                      "--da", "127.0.0.1:4270", "--listen", "127.0.0.1:5090", "--control", "/tmp/x.sock")
    assert config.identity.user == "anna"
    assert config.calls.auto_answer is True
    assert (config.media.audio_in, config.media.record) == ("voice.wav", "out.wav")
    assert config.slp.da == "127.0.0.1:4270"
    assert (config.listen.address, config.listen.port) == ("127.0.0.1", 5090)
    assert config.control.path == "/tmp/x.sock"


def test_a_da_without_port_means_slp_port_427() -> None:
    assert override("--da", "127.0.0.1").da_address == ("127.0.0.1", 427)
    assert override("--da", "[::1]").da_address == ("::1", 427)


def test_a_bad_flag_value_is_refused_with_the_key_named() -> None:
    with pytest.raises(ValueError, match="identity.user: must be a SIP user name"):
        override("--user", "two words")
    with pytest.raises(ValueError, match='media.audio_in: must be "tone"'):
        override("--audio-in", "song.mp3")
