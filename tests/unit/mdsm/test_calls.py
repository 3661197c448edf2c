"""What the MDSM keeps of a call beyond its legs: the dialog a hang-up REFER names (RFC 4538
Target-Dialog: ours with the CN, or the referrer's that ours replaced), the members that left
(saved, so a restarted daemon can still ask them back), the method a Refer-To asks for, and what
a restarted daemon needs to CANCEL an INVITE its previous run sent."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

from sipmob.mdsm.app import Gone, Leg, ManagedCall, Via, _cancel_fields, _refer_method
from sipmob.mdsm.plan import Plan, Slot
from sipmob.mdsm.store import Store, dialog_from_dict
from sipmob.sip.headers import Replaces
from sipmob.sip.message import Headers, Request, Response, parse_message
from sipmob.sip.uri import URI


def managed(replaced: Replaces | None) -> ManagedCall:
    dialog = dialog_from_dict({
        "call_id": "mdsm-1@gw", "local_tag": "ours", "remote_tag": "cns", "local_uri": "<sip:living-room@gw>",
        "remote_uri": "<sip:cn@127.0.0.1>", "remote_target": "sip:cn@127.0.0.1:5070", "route_set": [],
        "local_seq": 2, "remote_seq": None, "is_uac": True, "local_contact": "<sip:mdsm@127.0.0.1:5064>",
        "secure": False})
    call: Any = SimpleNamespace(dialog=dialog)
    cn = Leg("cn", "sip:cn@127.0.0.1:5070", call, b"", b"")
    plan = Plan((Slot(0, "tv", 0),), 1)
    return ManagedCall("mdsm-1@gw", "living-room", "sip:mn@127.0.0.1", cn, {}, plan, 7, replaced=replaced)


def test_a_target_dialog_names_our_dialog_with_the_cn_either_way_round() -> None:
    mc = managed(None)
    assert mc.named_by("mdsm-1@gw;local-tag=ours;remote-tag=cns")
    assert mc.named_by("mdsm-1@gw;local-tag=cns;remote-tag=ours")
    assert not mc.named_by("mdsm-1@gw;local-tag=ours")
    assert not mc.named_by("mdsm-1@gw;local-tag=ours;remote-tag=other")
    assert not mc.named_by("other@gw;local-tag=ours;remote-tag=cns")


def test_a_target_dialog_names_the_referrers_dialog_that_ours_replaced() -> None:
    mc = managed(Replaces("phone-9@mn", to_tag="cn-tag", from_tag="mn-tag"))
    assert mc.named_by("phone-9@mn;local-tag=mn-tag;remote-tag=cn-tag")
    assert not mc.named_by("phone-9@mn;local-tag=mn-tag;remote-tag=forged")


def test_a_call_saved_and_read_back_keeps_what_it_replaced_and_who_left() -> None:
    mc = managed(Replaces("phone-9@mn", to_tag="cn-tag", from_tag="mn-tag"))
    mc.gone["tv"] = Gone("sip:tv@127.0.0.1:5080", (Slot(1, "tv", 0),), away=True)
    data = json.loads(json.dumps(mc.as_dict()))
    assert Replaces.parse(data["replaced"]) == mc.replaced
    gone = Gone.from_dict(data["gone"]["tv"])
    assert gone == Gone("sip:tv@127.0.0.1:5080", (Slot(1, "tv", 0),), away=True)
    assert not gone.rejoining  # a take-back in progress is not carried over a restart


SPEAKER = (b"v=0\r\no=speaker 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
           b"m=audio 4000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")
FACING = (b"v=0\r\no=speaker 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
          b"m=audio 6000 RTP/AVP 111\r\nc=IN IP4 127.0.0.9\r\na=rtpmap:111 opus/48000/2\r\n")


def test_the_cn_sees_a_transcoded_members_audio_at_the_transcoder_and_the_leg_is_saved() -> None:
    mc = managed(None)
    mc.plan = Plan((Slot(0, "speaker", 0),), 1)
    mc.members["speaker"] = Leg("speaker", "sip:speaker@127.0.0.1:5090", mc.cn.call, b"", SPEAKER)
    assert mc.facing()["speaker"].media[0].port == 4000  # no transcoder: its own offer
    tx = Leg("transcoder", "sip:transcoder@127.0.0.1:5062", mc.cn.call, b"A+B", b"TA+TB", 2)
    mc.via["speaker"] = Via(tx, 0, 0, "Opus <-> PCMU", FACING)
    facing = mc.facing()["speaker"]
    assert facing.media[0].port == 6000 and facing.connection_for(0).host == "127.0.0.9"
    data = json.loads(json.dumps(mc.as_dict()))["via"]["speaker"]
    assert (data["i"], data["k"], data["summary"]) == (0, 0, "Opus <-> PCMU")
    assert data["facing"].encode() == FACING
    assert data["leg"]["uri"] == tx.uri and data["leg"]["version"] == 2
    assert data["leg"]["dialog"]["call_id"] == "mdsm-1@gw"


def refer(refer_to: str | None) -> Request:
    headers = Headers()
    if refer_to is not None:
        headers.add("Refer-To", refer_to)
    return Request("REFER", URI.parse("sip:living-room@127.0.0.1:5064"), headers)


def test_the_method_a_refer_to_asks_for() -> None:
    assert _refer_method(refer("<sip:cn@127.0.0.1;method=BYE>")) == "BYE"
    assert _refer_method(refer("<sip:cn@127.0.0.1;method=bye>")) == "BYE"
    assert _refer_method(refer("<sip:cn@127.0.0.1?Replaces=a%3Bto-tag%3D1%3Bfrom-tag%3D2>")) == "INVITE"
    assert _refer_method(refer("<not a uri")) is None
    assert _refer_method(refer(None)) is None


def test_a_cancel_repeats_the_invites_via_from_call_id_and_cseq_and_its_to_without_the_tag() -> None:
    ringing = parse_message(
        b"SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP 127.0.0.1:5064;branch=z9hG4bKabc;rport=5064\r\n"
        b"From: <sip:living-room@127.0.0.1>;tag=m1\r\nTo: <sip:tv@127.0.0.1:5080>;tag=tv9\r\n"
        b"Call-ID: inv-1@127.0.0.1\r\nCSeq: 7 INVITE\r\nContent-Length: 0\r\n\r\n")
    assert isinstance(ringing, Response)
    assert _cancel_fields(ringing) == {
        "via": "SIP/2.0/UDP 127.0.0.1:5064;branch=z9hG4bKabc;rport=5064",
        "from": "<sip:living-room@127.0.0.1>;tag=m1", "to": "<sip:tv@127.0.0.1:5080>",
        "call_id": "inv-1@127.0.0.1", "cseq": 7}


def test_half_done_handoffs_are_kept_apart_from_calls_until_deleted() -> None:
    store = Store(":memory:")
    store.save_setup("s1", "living-room", {"legs": {"tv": {"uri": "sip:tv@127.0.0.1", "ringing": {}}}})
    assert len(store) == 0
    assert list(store.setups()) == [("s1", "living-room", {"legs": {"tv": {"uri": "sip:tv@127.0.0.1",
                                                                          "ringing": {}}}})]
    store.delete_setup("s1")
    assert list(store.setups()) == []
