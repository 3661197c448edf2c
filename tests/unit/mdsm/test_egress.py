"""The MDSM's egress pieces without sockets to the outside: which CN is outside, the calls per
egress in STATUS=, the "SDP A + SDP B" it sends read back by the transcoder's own parser (the
``a=x-bind`` convention both sides share), and a call's egress surviving the store."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

from tests.unit.mdsm.test_calls import managed
from twisted.internet.task import Clock

from sipmob.mdsm.app import Via, _bound
from sipmob.mdsm.egress import MdsmEgress, source_towards
from sipmob.mn.transcoding import invocation, null_section, section
from sipmob.sdp import parse
from sipmob.service.egress_config import EgressConfig, EgressEntry
from sipmob.transcoder.invocation import parse_invocation

SPEAKER = parse(b"v=0\r\no=speaker 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
                b"m=audio 4000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")


def egress(*addresses: str) -> MdsmEgress:
    runtime = SimpleNamespace(status_changed=lambda _app: None)
    app: Any = SimpleNamespace(reactor=Clock(), calls={}, runtime=runtime)
    config = EgressConfig(egress=[EgressEntry(name=f"wan{n}", address=a, priority=n)
                                  for n, a in enumerate(addresses, 1)])
    return MdsmEgress(app, config, anchor=True)


def test_the_source_the_kernel_picks_and_none_for_a_name() -> None:
    assert source_towards("127.0.0.1") == "127.0.0.1"
    assert source_towards("cn.example") is None


def test_a_cn_is_outside_when_the_kernel_reaches_it_from_an_egresss_address() -> None:
    assert egress("127.0.0.1").outside("127.0.0.2")  # reached from 127.0.0.1: an egress's address
    assert not egress("192.0.2.1").outside("127.0.0.2")  # reached from an address of the home
    assert egress("192.0.2.1").outside("sip.provider.example")  # a name: providers are outside


def test_the_status_counts_each_egresss_calls() -> None:
    e = egress("127.0.0.1", "127.0.0.2")
    e.app.calls["c1"] = object()
    e.monitor.egresses.moved("c1", "wan2")
    e.monitor.egresses.moved("gone", "wan2")  # no longer a call of ours: not counted
    status = e.status()
    assert "wan1" in status and "(0 calls)" in status and "(1 call)" in status, status
    assert [r["calls"] for r in e.rows()] == [[], ["c1"]]


def test_the_invocation_asks_the_transcoder_to_bind_the_cn_side_where_the_call_leaves() -> None:
    body = invocation(_bound(null_section(SPEAKER.media[0]), "203.0.113.9"), section(SPEAKER, 0), "127.0.0.1")
    plan = parse_invocation(body.to_bytes(), {"PCMU"})
    assert (plan.a.bind, plan.b.bind, plan.relay) == ("203.0.113.9", None, True)
    plain = invocation(_bound(null_section(SPEAKER.media[0]), None), section(SPEAKER, 0), "127.0.0.1")
    assert parse_invocation(plain.to_bytes(), {"PCMU"}).a.bind is None


def test_a_calls_egress_and_its_anchors_address_are_saved_with_it() -> None:
    mc = managed(None)
    mc.egress, mc.egress_address = "wan1", "203.0.113.9"
    mc.via["speaker"] = Via(mc.cn, 0, 0, "relay PCMU", SPEAKER.to_bytes(), "203.0.113.9")
    data = json.loads(json.dumps(mc.as_dict()))
    assert data["egress"] == ["wan1", "203.0.113.9"]
    via = data["via"]["speaker"]
    assert (via["bind"], via["summary"]) == ("203.0.113.9", "relay PCMU")
    mc.egress = None
    assert mc.as_dict()["egress"] is None
