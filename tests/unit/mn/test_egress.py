"""The phone's offer when its address moves: our streams follow, streams on devices stay."""

from __future__ import annotations

from pathlib import Path

import pytest

from sipmob.mn.config import MnConfig
from sipmob.mn.egress import _readdressed
from sipmob.sdp import parse
from sipmob.service.config import ConfigError, parse_config

OURS = parse("v=0\r\no=sipmob 1 2 IN IP4 10.1.0.2\r\ns=-\r\nc=IN IP4 10.1.0.2\r\nt=0 0\r\n"
             "m=audio 4000 RTP/AVP 0\r\na=sendrecv\r\nm=video 4002 RTP/AVP 96\r\na=rtpmap:96 VP8/90000\r\n"
             "a=recvonly\r\n")


def test_our_streams_get_the_new_address_and_ports() -> None:
    moved = _readdressed(OURS, "10.1.0.2", "10.2.0.2", 5000, 5002)
    assert moved.connection_for(0).address == "10.2.0.2"  # type: ignore[union-attr]
    assert [m.port for m in moved.media] == [5000, 5002]
    assert moved.origin == OURS.origin  # RFC 3264 §8: only the version may change, when stamped


def test_a_stream_on_a_device_keeps_its_address_and_port() -> None:
    split = parse("v=0\r\no=sipmob 1 2 IN IP4 10.1.0.2\r\ns=-\r\nc=IN IP4 10.1.0.2\r\nt=0 0\r\n"
                  "m=audio 4000 RTP/AVP 0\r\nm=video 6000 RTP/AVP 96\r\nc=IN IP4 192.168.1.20\r\n"
                  "a=rtpmap:96 VP8/90000\r\n")
    moved = _readdressed(split, "10.1.0.2", "10.2.0.2", 5000, None)
    assert moved.connection_for(0).address == "10.2.0.2"  # type: ignore[union-attr]
    assert moved.connection_for(1).address == "192.168.1.20"  # type: ignore[union-attr]
    assert [m.port for m in moved.media] == [5000, 6000]


def test_a_broken_egress_file_is_a_problem_of_mn_toml(tmp_path: Path) -> None:
    egress = tmp_path / "egress.toml"
    egress.write_text('policy = "random"\n[[egress]]\nname = "dsl"\n')
    with pytest.raises(ConfigError) as caught:
        parse_config(MnConfig, {"listen": {"egress": str(egress)}}, "mn.toml")
    (problem,) = caught.value.problems
    assert problem.key == "listen.egress"
    assert "policy" in problem.message and "egress[0].interface" in problem.message


def test_a_missing_egress_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(MnConfig, {"listen": {"egress": str(tmp_path / "nope.toml")}}, "mn.toml")
    assert "nope.toml" in str(caught.value)
