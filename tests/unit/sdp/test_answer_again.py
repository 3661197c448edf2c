"""RFC 3264 §8 offers inside an established session: `answer_again` from the session's state and
`hold_state`, replayed through `OfferAnswerState` so the ``o=`` version rule is checked as the
peer sees it."""

from __future__ import annotations

from sipmob.sdp import (
    Codec,
    Direction,
    LocalCapabilities,
    MediaCapability,
    OfferAnswerState,
    Origin,
    SessionDescription,
    answer,
    answer_again,
    codecs_of,
    hold_state,
    negotiate,
    parse,
)

PCMU, PCMA = Codec("PCMU", 8000), Codec("PCMA", 8000)
LOCAL = LocalCapabilities((MediaCapability("audio", (PCMU, PCMA)),
                           MediaCapability("video", (Codec("VP8", 90000),), Direction.RECVONLY)))
ME = Origin("me", 7, 1, "IN", "IP4", "127.0.0.1")


def offer(version: int, port: int = 4000, fmts: str = "0 8 101", direction: str = "sendrecv",
          host: str = "127.0.0.2", video: int | None = None) -> SessionDescription:
    text = (f"v=0\r\no=cn 55 {version} IN IP4 {host}\r\ns=-\r\nc=IN IP4 {host}\r\nt=0 0\r\n"
            f"m=audio {port} RTP/AVP {fmts}\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
            "a=rtpmap:101 telephone-event/8000\r\n"
            f"a={direction}\r\n")
    if video is not None:
        text += f"m=video {video} RTP/AVP 96\r\na=rtpmap:96 VP8/90000\r\n"
    return parse(text)


def session(first: SessionDescription) -> tuple[OfferAnswerState, SessionDescription]:
    oa = OfferAnswerState(ME)
    oa.receive_offer(first)
    ours, _ = oa.create_answer(answer(first, LOCAL, origin=ME, connection_address="127.0.0.1",
                                      ports={"audio": 5000}))
    return oa, ours


def again(oa: OfferAnswerState, new: SessionDescription, **kw: object) -> SessionDescription:
    assert oa.local is not None
    oa.receive_offer(new)
    stamped, _ = oa.create_answer(answer_again(new, oa.local, LOCAL, **kw))  # type: ignore[arg-type]
    return stamped


def test_hold_is_answered_recvonly_and_resume_sendrecv_each_a_new_version() -> None:
    oa, first = session(offer(1))
    held = again(oa, offer(2, direction="sendonly"))
    assert held.media[0].direction is Direction.RECVONLY
    assert held.origin.sess_version == first.origin.sess_version + 1
    assert hold_state(held, offer(2, direction="sendonly"), 0) == "held by the remote party"
    resumed = again(oa, offer(3))
    assert resumed.media[0].direction is Direction.SENDRECV
    assert resumed.origin.sess_version == first.origin.sess_version + 2
    assert hold_state(resumed, offer(3), 0) == ""


def test_inactive_offer_is_answered_inactive() -> None:
    oa, _ = session(offer(1))
    ours = again(oa, offer(2, direction="inactive"))
    assert ours.media[0].direction is Direction.INACTIVE
    assert oa.negotiated is not None and oa.negotiated.streams[0].direction is Direction.INACTIVE


def test_our_own_hold_is_kept_when_the_peer_reoffers() -> None:
    oa, _ = session(offer(1))
    ours = again(oa, offer(2), limits={0: Direction.SENDONLY})
    assert ours.media[0].direction is Direction.SENDONLY
    assert hold_state(ours, offer(2), 0) == "on hold"
    both = again(oa, offer(3, direction="sendonly"), limits={0: Direction.SENDONLY})
    assert both.media[0].direction is Direction.INACTIVE
    assert hold_state(both, offer(3, direction="sendonly"), 0) == "on hold both ways"


def test_a_moved_peer_changes_where_we_send_not_our_description() -> None:
    oa, first = session(offer(1))
    moved = offer(2, port=4444, host="127.0.0.3")
    ours = again(oa, moved)
    assert ours == first  # same port, same everything: same version
    assert oa.negotiated is not None
    stream = oa.negotiated.streams[0]
    assert (stream.remote_address, stream.remote_port, stream.remote_rtcp_port) == ("127.0.0.3", 4444, 4445)


def test_a_refresh_is_answered_with_the_same_version() -> None:
    oa, first = session(offer(1))
    assert again(oa, offer(1)) == first
    assert again(oa, offer(1)).origin.sess_version == first.origin.sess_version


def test_codec_lock_is_answered_with_a_subset_and_the_codec_in_use_stays_first() -> None:
    oa, first = session(offer(1))
    assert first.media[0].formats[:2] == ("0", "8")
    locked = again(oa, offer(2, fmts="8"))
    assert locked.media[0].formats == ("8",)
    assert locked.origin.sess_version == first.origin.sess_version + 1
    # all offered again, PCMA in use: PCMA stays first, no switch mid-call
    ours = again(oa, offer(3), in_use={0: PCMA})
    assert ours.media[0].formats[0] == "8"
    assert set(ours.media[0].formats) <= set(offer(3).media[0].formats)
    assert negotiate(offer(3), ours, local="answerer").streams[0].primary.codec == PCMA  # type: ignore[union-attr]


def test_added_stream_taken_on_a_new_port_or_rejected_and_removed_stream_answered_port_0() -> None:
    oa, _ = session(offer(1))
    rejected = again(oa, offer(2, video=6000))
    assert len(rejected.media) == 2 and rejected.media[1].port == 0
    assert codecs_of(rejected.media[1])  # still a valid format list
    oa2, _ = session(offer(1))
    taken = again(oa2, offer(2, video=6000), new_ports={1: 7000})
    assert taken.media[1].port == 7000 and taken.media[1].direction is Direction.RECVONLY
    removed = again(oa2, offer(3, port=0, video=6000))
    assert removed.media[0].port == 0 and removed.media[1].port == 7000
    assert len(removed.media) == 2  # m-lines are never removed (§8)
