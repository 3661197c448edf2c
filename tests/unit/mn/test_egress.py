"""The phone's offer when its address moves: our streams follow, streams on devices stay."""

from __future__ import annotations

from pathlib import Path

import pytest

from sipmob.mn.config import MnConfig
from sipmob.mn.egress import _readdressed, _rtcp_far_end, _towards, _with_rtcp
from sipmob.net.relay import Allocation
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


CN = parse("v=0\r\no=cn 1 1 IN IP4 203.0.113.5\r\ns=-\r\nc=IN IP4 203.0.113.5\r\nt=0 0\r\n"
           "m=audio 7000 RTP/AVP 0\r\na=sendrecv\r\n")


def test_the_cns_rtcp_far_end_is_where_its_a_rtcp_says_else_port_plus_one() -> None:
    assert _rtcp_far_end(CN, 0, "203.0.113.5") == ("203.0.113.5", 7001)
    stated = parse(CN.to_bytes().decode().replace("a=sendrecv", "a=rtcp:7100 IN IP4 203.0.113.9"))
    assert _rtcp_far_end(stated, 0, "203.0.113.5") == ("203.0.113.9", 7100)
    port_only = parse(CN.to_bytes().decode().replace("a=sendrecv", "a=rtcp:7100"))
    assert _rtcp_far_end(port_only, 0, "203.0.113.5") == ("203.0.113.5", 7100)


def test_through_a_relay_rtcp_goes_to_the_rtcp_relays_lan_end_and_the_offer_names_its_wan_end() -> None:
    rtcp = Allocation(("203.0.113.5", 7001), ("192.168.50.3", 41000), ("10.200.2.2", 42000))
    towards = _towards(CN, 0, ("192.168.50.3", 40000), rtcp)
    assert (towards.media[0].port, towards.connection_for(0).address) == (40000, "192.168.50.3")  # type: ignore[union-attr]
    stated = towards.media[0].rtcp
    assert stated is not None and stated.port == 41000 and stated.connection is not None
    assert stated.connection.host == "192.168.50.3"
    offer = _with_rtcp(OURS, 0, rtcp.wan)
    assert "a=rtcp:42000 IN IP4 10.200.2.2" in offer.to_bytes().decode()
    assert parse(offer.to_bytes()).media[0].rtcp.port == 42000  # type: ignore[union-attr]
    # without an RTCP relay, a CN's own a=rtcp (not reachable through the relay) is not kept
    own = parse(CN.to_bytes().decode().replace("a=sendrecv", "a=rtcp:7100"))
    assert _towards(own, 0, ("192.168.50.3", 40000)).media[0].rtcp is None
