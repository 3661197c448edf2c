"""The MDSM's plan: which member carries which stream, and every leg's description (Fig. 6)."""

from __future__ import annotations

import pytest

from sipmob.mdsm.plan import (
    Plan,
    PlanError,
    Slot,
    cn_description,
    member_description,
    plan_for_offer,
    plan_from_offers,
    without_member,
)
from sipmob.sdp import Direction, Origin, parse

ORIGIN = Origin("sipmob-mdsm", 7, 1, "IN", "IP4", "192.0.2.1")


def sdp(address: str, *media: str, session: str = "") -> bytes:
    lines = ["v=0", f"o=dev 1 1 IN IP4 {address}", "s=-", f"c=IN IP4 {address}", "t=0 0"]
    lines += [x for x in session.split("\n") if x]
    for m in media:
        lines += m.split("\n")
    return ("\r\n".join(lines) + "\r\n").encode()


SPEAKER = parse(sdp("192.0.2.50", "m=audio 4000 RTP/AVP 0 8\na=sendrecv\na=x-speaker-volume:11"))
TV = parse(sdp("192.0.2.20", "m=audio 5000 RTP/AVP 0\na=recvonly",
               "m=video 5002 RTP/AVP 34\na=rtpmap:34 H263/90000\na=recvonly\na=x-tv-brightness:3"))
CAMERA = parse(sdp("192.0.2.30", "m=video 6002 RTP/AVP 34\na=rtpmap:34 H263/90000\na=sendonly"))
OFFERS = [("speaker", SPEAKER), ("tv", TV), ("camera", CAMERA)]


def test_each_medium_goes_to_the_first_member_offering_it_and_a_camera_pairs_with_the_tv() -> None:
    plan = plan_from_offers(OFFERS)
    assert plan.slots == (Slot(0, "speaker", 0), Slot(1, "tv", 1), Slot(1, "camera", 0))
    assert plan.cn_lines == 2
    assert plan.members() == ["speaker", "tv", "camera"]


def test_the_cn_offer_is_the_members_streams_with_their_addresses_and_unknown_attributes() -> None:
    plan = plan_from_offers(OFFERS)
    offer = cn_description(plan, dict(OFFERS), ORIGIN)
    assert [m.media for m in offer.media] == ["audio", "video"]
    assert offer.connection_for(0).address == "192.0.2.50"  # type: ignore[union-attr]
    assert offer.media[0].port == 4000
    # the duplex pair: one sendrecv video line at the TV (output device) address
    assert offer.connection_for(1).address == "192.0.2.20"  # type: ignore[union-attr]
    assert offer.direction(1) is Direction.SENDRECV
    text = offer.to_bytes().decode()
    assert "a=x-speaker-volume:11" in text and "a=x-tv-brightness:3" in text


def test_each_member_gets_its_part_of_the_cn_answer_in_its_own_shape() -> None:
    plan = plan_from_offers(OFFERS)
    answer = parse(sdp("198.51.100.9", "m=audio 7000 RTP/AVP 0\na=x-cn-thing:1",
                       "m=video 7002 RTP/AVP 34\na=rtpmap:34 H263/90000"))
    speaker = member_description(plan, "speaker", answer, SPEAKER, ORIGIN)
    assert len(speaker.media) == 1 and speaker.media[0].port == 7000
    assert speaker.connection_for(0).address == "198.51.100.9"  # type: ignore[union-attr]
    assert "a=x-cn-thing:1" in speaker.to_bytes().decode()
    tv = member_description(plan, "tv", answer, TV, ORIGIN)
    assert [m.port for m in tv.media] == [0, 7002]  # its audio is the speaker's job
    assert tv.direction(1) is Direction.SENDONLY  # the CN only sends to the output device
    camera = member_description(plan, "camera", answer, CAMERA, ORIGIN)
    assert camera.media[0].port == 7002 and camera.direction(0) is Direction.RECVONLY


def test_a_member_leaving_disables_its_lines_in_the_cn_session() -> None:
    plan = plan_from_offers(OFFERS)
    first = cn_description(plan, dict(OFFERS), ORIGIN)
    left = without_member(without_member(plan, "tv"), "camera")
    offer = cn_description(left, {"speaker": SPEAKER}, ORIGIN, template=first)
    assert [m.port for m in offer.media] == [4000, 0]


def test_mnc_mode_splits_the_offer_by_medium() -> None:
    offer = parse(sdp("198.51.100.9", "m=audio 7000 RTP/AVP 0", "m=video 7002 RTP/AVP 34"))
    plan = plan_for_offer(offer, [("speaker", frozenset({"audio"})), ("tv", frozenset({"video", "audio"}))])
    assert plan.slots == (Slot(0, "speaker", 0), Slot(1, "tv", 1))
    tv = member_description(plan, "tv", offer, offer, ORIGIN)
    assert [m.port for m in tv.media] == [0, 7002]


def test_nothing_offered_is_an_error() -> None:
    silent = parse(sdp("192.0.2.9", "m=audio 0 RTP/AVP 0"))
    with pytest.raises(PlanError):
        plan_from_offers([("x", silent)])


def test_a_plan_survives_json() -> None:
    plan = plan_from_offers(OFFERS)
    assert Plan.from_dict(plan.as_dict()) == plan
