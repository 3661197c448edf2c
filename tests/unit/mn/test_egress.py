"""The phone's offer when its address moves: our streams follow, streams on devices stay."""

from __future__ import annotations

from sipmob.mn.egress import _readdressed
from sipmob.sdp import parse

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
