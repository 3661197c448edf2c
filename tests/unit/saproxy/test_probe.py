"""The prober's up/down machine with fake time, OPTIONS building, reading a 200, merging."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipmob.saproxy.devices import Device, DeviceFile
from sipmob.saproxy.probe import (
    MAX_BODY,
    MAX_CODECS,
    Capabilities,
    DeviceState,
    ProbeConfig,
    Prober,
    StateChanged,
    merge,
)
from sipmob.sip.message import Headers, Response
from sipmob.sip.uri import URI

CONFIG = ProbeConfig(interval=10.0, timeout=4.0, retry=1.0, down_after=2, backoff_max=40.0)


class NoJitter(random.Random):
    def random(self) -> float:
        return 0.5  # jitter factor exactly 1.0


def prober(config: ProbeConfig = CONFIG) -> Prober:
    p = Prober(config, NoJitter())
    p.add("tv", 0.0)
    return p


def probe_once(p: Prober, now: float) -> None:
    assert p.handle_timer(now) == ["tv"]


def test_a_new_device_is_probed_at_once() -> None:
    p = prober()
    assert p.get_timer() == 0.0
    assert p.handle_timer(0.0) == ["tv"]


def test_first_answer_makes_the_device_up() -> None:
    p = prober()
    probe_once(p, 0.0)
    p.answered("tv", 0.1)
    assert p.events() == [StateChanged("tv", DeviceState.UNKNOWN, DeviceState.UP, "answered OPTIONS")]
    assert p.get_timer() == pytest.approx(10.1)


def test_first_failure_makes_the_device_down() -> None:
    p = prober()
    probe_once(p, 0.0)
    p.failed("tv", "no answer", 4.0)
    assert p.events() == [StateChanged("tv", DeviceState.UNKNOWN, DeviceState.DOWN, "no answer")]


def test_a_probe_in_flight_is_not_repeated() -> None:
    p = prober()
    probe_once(p, 0.0)
    assert p.handle_timer(3.0) == []


def test_one_failure_of_an_up_device_is_confirmed_after_retry_before_going_down() -> None:
    p = prober()
    probe_once(p, 0.0)
    p.answered("tv", 0.0)
    p.events()
    probe_once(p, 10.0)
    p.failed("tv", "no answer", 14.0)
    assert p.events() == []
    assert p.state("tv") is DeviceState.UP
    assert p.get_timer() == pytest.approx(15.0)


def test_down_after_consecutive_failures_the_device_is_down() -> None:
    p = prober()
    probe_once(p, 0.0)
    p.answered("tv", 0.0)
    p.events()
    probe_once(p, 10.0)
    p.failed("tv", "no answer", 14.0)
    probe_once(p, 15.0)
    p.failed("tv", "no answer", 19.0)
    assert p.events() == [StateChanged("tv", DeviceState.UP, DeviceState.DOWN, "no answer")]


def test_an_answer_between_failures_resets_the_count() -> None:
    p = prober()
    probe_once(p, 0.0)
    p.answered("tv", 0.0)
    for t in (10.0, 30.0):
        probe_once(p, t)
        p.failed("tv", "no answer", t + 4)
        probe_once(p, t + 5)
        p.answered("tv", t + 5)
    assert p.state("tv") is DeviceState.UP


def test_a_down_device_that_answers_is_up_again() -> None:
    p = prober()
    probe_once(p, 0.0)
    p.failed("tv", "no answer", 4.0)
    p.events()
    probe_once(p, 14.0)
    p.answered("tv", 14.0)
    assert p.events() == [StateChanged("tv", DeviceState.DOWN, DeviceState.UP, "answered OPTIONS")]


def test_a_down_device_is_probed_with_doubling_waits_up_to_backoff_max() -> None:
    p = prober()
    now, waits = 0.0, []
    for _ in range(5):
        probe_once(p, now)
        p.failed("tv", "no answer", now + 4)
        deadline = p.get_timer()
        assert deadline is not None
        waits.append(deadline - (now + 4))
        now = deadline
    assert waits == pytest.approx([10.0, 20.0, 40.0, 40.0, 40.0])


def test_an_unreported_outcome_counts_as_a_failure_after_twice_the_timeout() -> None:
    p = prober()
    probe_once(p, 0.0)
    assert p.get_timer() == pytest.approx(8.0)
    p.handle_timer(8.0)
    assert p.state("tv") is DeviceState.DOWN


def test_a_late_answer_after_a_counted_failure_is_ignored() -> None:
    p = prober()
    probe_once(p, 0.0)
    p.failed("tv", "no answer", 4.0)
    p.events()
    p.answered("tv", 4.5)
    assert p.state("tv") is DeviceState.DOWN
    assert p.events() == []


def test_a_removed_device_has_no_timer_and_no_events() -> None:
    p = prober()
    probe_once(p, 0.0)
    p.remove("tv")
    p.answered("tv", 0.1)
    assert p.get_timer() is None
    assert p.events() == []


def test_jitter_keeps_the_interval_within_ten_percent() -> None:
    p = Prober(CONFIG, random.Random(7))
    p.add("tv", 0.0)
    probe_once(p, 0.0)
    p.answered("tv", 0.0)
    deadline = p.get_timer()
    assert deadline is not None and 9.0 <= deadline <= 11.0


def test_counts_by_state() -> None:
    p = Prober(CONFIG, NoJitter())
    for name in ("a", "b", "c"):
        p.add(name, 0.0)
    assert sorted(p.handle_timer(0.0)) == ["a", "b", "c"]
    p.answered("a", 0.0)
    p.failed("b", "x", 0.0)
    assert p.counts() == {DeviceState.UP: 1, DeviceState.DOWN: 1, DeviceState.UNKNOWN: 1}


def test_probe_config_refuses_backoff_below_interval() -> None:
    with pytest.raises(ValueError):
        ProbeConfig(interval=10.0, backoff_max=5.0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(["answer", "fail", "lose"]), min_size=1, max_size=40))
def test_state_changes_are_reported_once_and_the_next_probe_is_bounded(outcomes: list[str]) -> None:
    p = Prober(CONFIG, random.Random(1))
    p.add("tv", 0.0)
    now, state = 0.0, DeviceState.UNKNOWN
    for outcome in outcomes:
        deadline = p.get_timer()
        assert deadline is not None
        assert deadline - now <= max(CONFIG.backoff_max * 1.1, 2 * CONFIG.timeout) + 1e-9
        now = max(now, deadline)
        due = p.handle_timer(now)
        if outcome == "lose":
            continue
        if due:
            if outcome == "answer":
                p.answered("tv", now)
            else:
                p.failed("tv", "no answer", now)
        for event in p.events():
            assert event.old is state and event.new is not state
            state = event.new
        assert p.state("tv") is state


def test_an_up_device_that_goes_silent_is_down_within_interval_plus_confirmations() -> None:
    p = prober()
    probe_once(p, 0.0)
    p.answered("tv", 0.0)
    p.events()
    silent_since, now = 0.0, 0.0
    while p.state("tv") is DeviceState.UP:
        deadline = p.get_timer()
        assert deadline is not None
        now = deadline
        if p.handle_timer(now):
            now += CONFIG.timeout
            p.failed("tv", "no answer", now)
    bound = CONFIG.interval + CONFIG.down_after * CONFIG.timeout + (CONFIG.down_after - 1) * CONFIG.retry
    assert now - silent_since <= bound


# Reading a 200 ---------------------------------------------------------------------------------


def ok(body: bytes = b"", content_type: str = "application/sdp", **extra: str) -> Response:
    headers = Headers([("Via", "SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1"), ("To", "<sip:tv@x>;tag=1"),
                       ("From", "<sip:s@x>;tag=2"), ("Call-ID", "c"), ("CSeq", "1 OPTIONS")])
    for name, value in extra.items():
        headers.add(name, value)
    if body:
        headers.add("Content-Type", content_type)
    return Response(200, "OK", headers, body)


CAMERA_SDP = (b"v=0\r\no=cam 1 1 IN IP4 192.0.2.30\r\ns=-\r\nc=IN IP4 192.0.2.30\r\nb=AS:512\r\nt=0 0\r\n"
              b"m=video 0 RTP/AVP 96 34\r\na=rtpmap:96 H264/90000\r\na=rtpmap:34 H263/90000\r\n"
              b"a=fmtp:34 CIF=2;QCIF=1;BOGUS=9\r\na=sendonly\r\n"
              b"m=audio 0 RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n")


def test_a_200_with_sdp_gives_media_codecs_image_formats_and_bandwidth() -> None:
    caps = Capabilities.from_response(ok(CAMERA_SDP))
    assert (caps.video, caps.audio) == ("sendonly", "sendrecv")
    assert caps.video_codecs == ("H264", "H263")
    assert caps.audio_codecs == ("PCMU",)  # telephone-event is not a codec a user picks
    assert caps.image_formats == ("CIF:2", "QCIF:1")
    assert caps.bandwidth == 512
    assert caps.problems == ()


def test_allow_and_accept_are_read() -> None:
    caps = Capabilities.from_response(ok(Allow="INVITE, ACK, OPTIONS", Accept="application/sdp"))
    assert caps.methods == ("INVITE", "ACK", "OPTIONS")
    assert caps.accept == ("application/sdp",)


def test_garbage_sdp_is_a_problem_and_no_capability() -> None:
    caps = Capabilities.from_response(ok(b"this is not sdp\r\n"))
    assert caps.audio_codecs == () and caps.video == ""
    assert len(caps.problems) == 1 and "unparseable SDP" in caps.problems[0]


def sdp_with_payload_types(count: int) -> bytes:
    pts = " ".join(str(96 + i % 32) for i in range(count))
    rtpmaps = "".join(f"a=rtpmap:{96 + i} C{i}/8000\r\n" for i in range(32))
    head = "v=0\r\no=x 1 1 IN IP4 1.2.3.4\r\ns=-\r\nc=IN IP4 1.2.3.4\r\nt=0 0\r\n"
    return f"{head}m=audio 0 RTP/AVP {pts}\r\n{rtpmaps}".encode()


def test_ten_thousand_codecs_make_a_body_too_large_to_read() -> None:
    caps = Capabilities.from_response(ok(sdp_with_payload_types(10_000)))
    assert caps.audio_codecs == ()
    assert len(caps.problems) == 1 and "ignored" in caps.problems[0]


def test_two_thousand_payload_types_are_cut_to_the_limit_with_one_problem() -> None:
    caps = Capabilities.from_response(ok(sdp_with_payload_types(2_000)))
    assert len(caps.audio_codecs) == MAX_CODECS
    assert len(caps.problems) == 1 and "2000 audio payload types" in caps.problems[0]


def test_a_huge_body_is_ignored_with_a_problem() -> None:
    caps = Capabilities.from_response(ok(CAMERA_SDP + b"a=x:" + b"y" * MAX_BODY + b"\r\n"))
    assert caps.video_codecs == ()
    assert "ignored" in caps.problems[0]


def test_a_body_that_is_not_sdp_is_ignored_with_a_problem() -> None:
    caps = Capabilities.from_response(ok(b"<xml/>", content_type="application/xml"))
    assert caps.problems == ("body of type application/xml ignored",)


def test_malformed_allow_entries_are_dropped_with_a_problem() -> None:
    caps = Capabilities.from_response(ok(Allow="INVITE, (evil), OPTIONS"))
    assert caps.methods == ("INVITE", "OPTIONS")
    assert len(caps.problems) == 1


# Merging ---------------------------------------------------------------------------------------


def device(**keys: object) -> Device:
    spec = DeviceFile(**{"uri": "sip:cam@192.0.2.30", **keys})  # type: ignore[arg-type]
    return Device("cam", str(Path("/x/cam.toml")), spec, URI.parse(spec.uri))


def test_merge_fills_what_the_file_leaves_out() -> None:
    attrs, contradictions = merge(device(room="hall"), Capabilities.from_response(ok(CAMERA_SDP)))
    assert attrs["media"].values == ("audio-sendrecv", "video-sendonly")
    assert attrs["video-codecs"].values == ("H264", "H263")
    assert attrs["bandwidth"].values == (512,)
    assert contradictions == []


def test_merge_keeps_the_file_and_names_a_contradiction() -> None:
    d = device(video="recvonly", video_codecs=["VP8"])
    attrs, contradictions = merge(d, Capabilities.from_response(ok(CAMERA_SDP)))
    assert attrs["video-codecs"].values == ("VP8",)
    assert attrs["media"].values == ("video-recvonly",)
    assert any(c.startswith("video-codecs:") for c in contradictions)
    assert any(c.startswith("media:") for c in contradictions)


def test_merge_sees_no_contradiction_when_file_and_device_overlap() -> None:
    d = device(video="sendonly", audio="sendrecv", video_codecs=["H263"], audio_codecs=["PCMU"])
    _, contradictions = merge(d, Capabilities.from_response(ok(CAMERA_SDP)))
    assert contradictions == []


def test_merge_adds_allow_as_sip_methods_and_keeps_mobility_last() -> None:
    attrs, _ = merge(device(), Capabilities.from_response(ok(Allow="INVITE, OPTIONS")))
    assert attrs["sip-methods"].values == ("INVITE", "OPTIONS")
    assert list(attrs)[-1] == "mobility"


def test_merge_without_a_probe_is_the_file() -> None:
    attrs, contradictions = merge(device(room="hall"), None)
    assert attrs["room"].values == ("hall",) and contradictions == []
