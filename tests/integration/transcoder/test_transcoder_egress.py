"""`sipmob-transcoder` binding one side to the address a controller names (``a=x-bind``) and moving it.

A controller on a multihomed gateway anchors a call here with the CN-facing side on the call's
egress address; when the egress fails it re-INVITEs with another address. Here the addresses are
127.0.0.2 and 127.0.0.3 (loopback: every 127/8 address is this host's), the parties plain sockets:
the side named moves (new address, new port, packets to its party leave from there), the other
side keeps its port and keeps flowing, and an address that is not this host's gets 488 with the
call left where it was.
"""

from __future__ import annotations

import socket
from pathlib import Path

from tests.integration.transcoder.test_transcoder import rtp
from tests.integration.transcoder.transcoder_process import HOST, Controller, Transcoder, invocation, side

from sipmob.sdp import parse


def bound(port: int, address: str) -> str:
    return side(port, [(0, "PCMU/8000")]) + f"a=x-bind:{address}\r\n"


def test_the_named_side_is_bound_there_moves_on_a_reinvite_and_the_other_side_keeps_its_port(
        tmp_path: Path) -> None:
    with Transcoder(tmp_path) as transcoder, Controller(transcoder.uri) as c, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b:
        a.bind((HOST, 0))
        b.bind((HOST, 0))
        a.settimeout(2.0)
        b.settimeout(2.0)
        side_b = side(b.getsockname()[1], [(0, "PCMU/8000")])
        ok = c.invite(invocation(bound(a.getsockname()[1], "127.0.0.2"), side_b))
        assert ok.status == 200, transcoder.output()
        ta, tb = parse(ok.body).media
        assert ta.connection is not None and ta.connection.host == "127.0.0.2"
        assert tb.connection is not None and tb.connection.host == HOST
        a.sendto(rtp(1), ("127.0.0.2", ta.port))
        assert b.recvfrom(2048)[1] == (HOST, tb.port)
        b.sendto(rtp(2), (HOST, tb.port))
        assert a.recvfrom(2048)[1] == ("127.0.0.2", ta.port)  # A hears us from the bound address

        moved = c.reinvite(invocation(bound(a.getsockname()[1], "127.0.0.3"), side_b))
        assert moved.status == 200, transcoder.output()
        ta2, tb2 = parse(moved.body).media
        assert ta2.connection is not None and ta2.connection.host == "127.0.0.3"
        assert tb2.port == tb.port  # B's party notices nothing
        b.sendto(rtp(3), (HOST, tb.port))
        assert a.recvfrom(2048)[1] == ("127.0.0.3", ta2.port)  # from the new address at once
        a.sendto(rtp(4), ("127.0.0.3", ta2.port))
        assert b.recvfrom(2048)[1] == (HOST, tb.port)
        assert "side A moved from 127.0.0.2 to 127.0.0.3" in transcoder.output()

        # not this host's address: refused, the call stays on 127.0.0.3
        refused = c.reinvite(invocation(bound(a.getsockname()[1], "192.0.2.77"), side_b))
        assert refused.status == 488
        b.sendto(rtp(5), (HOST, tb.port))
        assert a.recvfrom(2048)[1] == ("127.0.0.3", ta2.port)
        assert c.bye().status == 200


def test_an_invite_binding_a_side_to_an_address_not_of_this_host_gets_488(tmp_path: Path) -> None:
    with Transcoder(tmp_path) as transcoder, Controller(transcoder.uri) as c:
        response = c.invite(invocation(bound(4000, "192.0.2.77"), side(4002, [(0, "PCMU/8000")])))
        assert response.status == 488
    assert "x-bind names an address not of this host" in transcoder.output()
