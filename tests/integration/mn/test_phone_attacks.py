"""``sipmob phone`` attacked from its own network: a stranger outside (203.0.113.5), a rogue host of
the LAN (127.0.0.66), and a victim (198.51.100.7) whose address attackers put in their SDP.

One test per rule of the phone's policy (`sipmob.mn.policy`) and of its media timeout, each against
the real process in a network namespace of the test's own (tests/integration/mn/attackers.py),
asserting the defended behaviour: who gets which status, that the call under attack goes on with
its media flowing, and how many packets reach the victim.
"""

from __future__ import annotations

import re
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from attackers import (  # tests/integration/mn is on sys.path (tests/conftest.py)
    CN,
    PHONE,
    ROGUE,
    SIP_PORT,
    STRANGER,
    TRANSFEREE,
    VICTIM,
    VICTIM_PORT,
    Counter,
    Home,
    Party,
    header,
    rtp_stream,
    sdp_media,
    status,
    until,
)
from tests.peers import netns
from tests.peers.sipp import SIPP

SCENARIOS = Path(__file__).resolve().parent / "scenarios"
MEDIA_TIMEOUT = 3.0

pytestmark = [pytest.mark.skipif(not netns.available(), reason="needs network namespaces (root)")]


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Home]:
    h = Home(tmp_path, media_timeout=MEDIA_TIMEOUT, owners=("sip:owner@192.168.1.1",))
    try:
        yield h
    finally:
        h.close()


class Call:
    """The CN's call with the phone: its dialog, and RTP both ways (the CN's audio at 50 packets/s
    for as long as the test runs, counted at the CN)."""

    def __init__(self, home: Home) -> None:
        self.cn = home.party(CN, "cn")
        self.rtp = Counter(home.ns, CN, 0)
        self.call_id, self.from_tag = self.cn.invite(media=(CN, self.rtp.port))
        ok = self.cn.wait_response(self.call_id)
        assert ok is not None and status(ok) == 200, home.output()
        self.to_tag = re.search(r";tag=([^;>\s]+)", header(ok, "To")).group(1)  # type: ignore[union-attr]
        self.cn.ack(ok)
        self._stop = threading.Event()
        phone_rtp = sdp_media(ok)
        self._sender = threading.Thread(target=self._send, args=(phone_rtp,), daemon=True)
        self._sender.start()

    def _send(self, to: tuple[str, int]) -> None:
        while not self._stop.is_set():
            rtp_stream(self.rtp.sock, to, 10)

    @property
    def replaces(self) -> str:
        # RFC 3891 §3, from the phone's side: to-tag is the phone's tag, from-tag the CN's
        return f"{self.call_id};to-tag={self.to_tag};from-tag={self.from_tag}"

    def received_in(self, seconds: float) -> int:
        start = time.monotonic()
        time.sleep(seconds)
        return self.rtp.between(start, time.monotonic())

    def close(self) -> None:
        self._stop.set()
        self._sender.join(2)
        self.rtp.close()
        self.cn.close()


def sipp_replaces(home: Home, host: str, replaces: str, referred_by: str | None, workdir: Path) -> str:
    """Run sipp at `host` in the namespace with an INVITE+Replaces; returns every message it logged."""
    assert SIPP is not None
    workdir.mkdir(parents=True, exist_ok=True)
    line = f"Referred-By: {referred_by}" if referred_by else "Subject: none"
    argv = [SIPP, f"{PHONE}:{SIP_PORT}", "-sf", str(SCENARIOS / "uac_replaces.xml"), "-i", host, "-p", "5070",
            "-m", "1", "-timeout", "8s", "-nostdin", "-key", "replaces", replaces,
            "-key", "referred_by_line", line, "-trace_msg", "-message_file", str(workdir / "messages.log")]
    home.ns.run(argv, timeout=20, cwd=workdir)
    return (workdir / "messages.log").read_text(errors="replace")


def final_statuses(log: str) -> list[int]:
    return [int(s) for s in re.findall(r"^SIP/2\.0 ([2-6]\d\d) ", log, re.M)]


# Item 8: Replaces --------------------------------------------------------------------------------


@pytest.mark.skipif(SIPP is None, reason="sipp is not installed")
@pytest.mark.parametrize("referred_by", [None, "<sip:mallory@203.0.113.5>"])
def test_replaces_from_a_stranger_gets_403_and_the_call_goes_on(home: Home, tmp_path: Path,
                                                                  referred_by: str | None) -> None:
    call = Call(home)
    try:
        assert until(lambda: call.rtp.between(0, time.monotonic()) > 20), "no RTP from the phone"
        log = sipp_replaces(home, STRANGER, call.replaces, referred_by, tmp_path / "sipp")
        assert 403 in final_statuses(log) and 200 not in final_statuses(log), log
        assert call.cn.byes == []
        [described] = home.calls()
        assert described["peer"].startswith(f"sip:cn@{CN}") and described["state"] == "confirmed"
        assert call.received_in(1.0) > 30, "the phone's audio to the CN stopped"
    finally:
        call.close()


@pytest.mark.skipif(SIPP is None, reason="sipp is not installed")
@pytest.mark.parametrize("referrer", ["peer", "owner"])
def test_replaces_referred_by_the_calls_peer_or_an_owner_takes_the_call(home: Home, tmp_path: Path,
                                                                          referrer: str) -> None:
    call = Call(home)
    try:
        by = f"<{call.cn.uri}>" if referrer == "peer" else "<sip:owner@192.168.1.1>"
        log = sipp_replaces(home, TRANSFEREE, call.replaces, by, tmp_path / "sipp")
        assert 200 in final_statuses(log), log
        assert until(lambda: call.cn.byes, 5), "the replaced CN got no BYE"
    finally:
        call.close()


def test_a_reinvite_outside_the_dialog_cannot_move_the_media(home: Home) -> None:
    """A re-INVITE is matched by Call-ID and both tags (§12.2.2): a stranger who knows the Call-ID
    but not the phone's tag gets 481, and the phone's audio stays with the CN."""
    call = Call(home)
    victim = Counter(home.ns, VICTIM, VICTIM_PORT)
    stranger = home.party(STRANGER, "mallory")
    try:
        sdp = (f"v=0\r\no=- 2 2 IN IP4 {VICTIM}\r\ns=-\r\nc=IN IP4 {VICTIM}\r\nt=0 0\r\n"
               f"m=audio {VICTIM_PORT} RTP/AVP 0\r\n")
        forged = (f"INVITE sip:mn@{PHONE}:{SIP_PORT} SIP/2.0\r\n"
                  f"Via: SIP/2.0/UDP {STRANGER}:{stranger.port};branch=z9hG4bKforged;rport\r\n"
                  f"Max-Forwards: 70\r\nFrom: <{call.cn.uri}>;tag={call.from_tag}\r\n"
                  f"To: <sip:mn@{PHONE}>;tag=guessed\r\nCall-ID: {call.call_id}\r\nCSeq: 9 INVITE\r\n"
                  f"Contact: <sip:x@{STRANGER}>\r\nContent-Type: application/sdp\r\n"
                  f"Content-Length: {len(sdp)}\r\n\r\n{sdp}").encode()
        stranger.send(forged)
        assert until(lambda: any(status(m) == 481 for m in stranger.messages), 3), stranger.messages
        assert call.received_in(1.0) > 30 and victim.arrivals == []
    finally:
        stranger.close()
        victim.close()
        call.close()


def in_dialog(call: Call, sender: Party, method: str, seq: int, sdp_to: str | None = None) -> str:
    """A request of `call`'s dialog as the CN would send it (its Call-ID, both tags, its URI in
    From), sent from `sender`'s address; returns the request's CSeq line."""
    body = ""
    if sdp_to is not None:
        body = (f"v=0\r\no=- 3 3 IN IP4 {sdp_to}\r\ns=-\r\nc=IN IP4 {sdp_to}\r\nt=0 0\r\n"
                f"m=audio {VICTIM_PORT if sdp_to == VICTIM else call.rtp.port} RTP/AVP 0\r\n"
                "a=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n")
    lines = [f"{method} sip:mn@{PHONE}:{SIP_PORT} SIP/2.0",
             f"Via: SIP/2.0/UDP {sender.host}:{sender.port};branch=z9hG4bK{seq}x{method.lower()};rport",
             "Max-Forwards: 70", f"From: <{call.cn.uri}>;tag={call.from_tag}",
             f"To: <sip:mn@{PHONE}>;tag={call.to_tag}", f"Call-ID: {call.call_id}", f"CSeq: {seq} {method}",
             f"Contact: <{call.cn.uri}>"]
    if body:
        lines.append("Content-Type: application/sdp")
    lines += [f"Content-Length: {len(body)}", "", ""]
    sender.send(("\r\n".join(lines) + body).encode())
    return f"{seq} {method}"


def response_for(party: Party, call_id: str, cseq: str) -> int | None:
    for m in list(party.messages):
        if m.startswith(b"SIP/2.0 ") and header(m, "Call-ID") == call_id and header(m, "CSeq") == cseq \
                and status(m) >= 200:
            return status(m)
    return None


def test_a_stranger_knowing_the_dialog_gets_403_and_the_peers_next_requests_work(home: Home) -> None:
    """A stranger who learnt the Call-ID and both tags sends BYE and a re-INVITE to a victim with
    a CSeq far ahead: 403 to both, the call and its audio stay with the CN, and the CN's own next
    re-INVITE (CSeq 2: the stranger's numbers were not recorded) and BYE are taken."""
    call = Call(home)
    victim = Counter(home.ns, VICTIM, VICTIM_PORT)
    stranger = home.party(STRANGER, "mallory")
    try:
        bye = in_dialog(call, stranger, "BYE", 1000)
        reinvite = in_dialog(call, stranger, "INVITE", 1001, sdp_to=VICTIM)
        assert until(lambda: response_for(stranger, call.call_id, bye) == 403, 5), stranger.messages
        assert until(lambda: response_for(stranger, call.call_id, reinvite) == 403, 5), stranger.messages
        assert len(home.calls()) == 1, home.calls()
        assert call.received_in(1.0) > 30 and victim.arrivals == []
        assert call.cn.byes == []
        # the CN's own re-INVITE, in order after its INVITE (1): the refused ones moved nothing
        ours = in_dialog(call, call.cn, "INVITE", 2, sdp_to=CN)
        assert until(lambda: response_for(call.cn, call.call_id, ours) == 200, 5), call.cn.messages
        ok = next(m for m in call.cn.messages if m.startswith(b"SIP/2.0 200")
                  and header(m, "CSeq") == ours)
        call.cn.ack(ok)
        assert call.received_in(1.0) > 30 and victim.arrivals == []
        ours_bye = in_dialog(call, call.cn, "BYE", 3)
        assert until(lambda: response_for(call.cn, call.call_id, ours_bye) == 200, 5), call.cn.messages
        assert until(lambda: home.calls() == [], 5), home.calls()
    finally:
        stranger.close()
        victim.close()
        call.close()


# Item 9: flooding through the phone ------------------------------------------------------------------


def flood(party: Party, n: int, *, ack: bool, gap: float = 0.002, wait: float = 4.0) -> dict[int, int]:
    """`n` INVITEs from `party`, `gap` seconds apart, with c= at the victim; ACK the 2xx if `ack`.
    Returns the count of each final status (0: none came within `wait` s of the last INVITE)."""
    ids = []
    for _ in range(n):
        ids.append(party.invite(media=(VICTIM, VICTIM_PORT))[0])
        time.sleep(gap)
    deadline = time.monotonic() + wait
    counts: dict[int, int] = {}
    for call_id in ids:
        response = party.wait_response(call_id, timeout=max(0.0, deadline - time.monotonic()))
        code = status(response) if response is not None else 0
        counts[code] = counts.get(code, 0) + 1
        if ack and response is not None and code == 200:
            party.ack(response)
    return counts


def test_a_strangers_flood_reaches_no_victim_and_a_legitimate_call_is_answered(home: Home) -> None:
    victim = Counter(home.ns, VICTIM, VICTIM_PORT)
    stranger = home.party(STRANGER, "mallory")
    try:
        before = home.descriptors()
        counts = flood(stranger, 300, ack=True)
        assert set(counts) <= {403, 503} and sum(counts.values()) == 300, counts
        call = Call(home)  # the CN is answered during and after the flood
        call.close()
        time.sleep(1.0)
        assert len(victim.arrivals) == 0
        assert home.descriptors() <= before + 4
        assert "Traceback" not in home.output()
    finally:
        stranger.close()
        victim.close()


def test_a_lan_flood_is_bounded_and_stops_after_media_timeout(home: Home) -> None:
    victim = Counter(home.ns, VICTIM, VICTIM_PORT)
    rogue = home.party(ROGUE, "rogue")
    try:
        before = home.descriptors()
        start = time.monotonic()
        counts = flood(rogue, 300, ack=True)
        assert sum(counts.values()) == 300 and counts.get(200, 0) <= 4, counts
        assert counts.get(200, 0) >= 1 and set(counts) <= {200, 486, 503}, counts
        assert home.descriptors() <= before + 2 * 4 + 4
        assert until(lambda: len(rogue.byes) == counts[200], MEDIA_TIMEOUT + 8), "no BYE after media_timeout"
        ended = time.monotonic()
        assert victim.between(start, ended) > 0  # the calls did send before the timeout
        time.sleep(2.0)
        assert victim.between(ended + 0.2, time.monotonic()) == 0
        call = Call(home)  # a legitimate call is still answered
        call.close()
        assert "Traceback" not in home.output()
    finally:
        rogue.close()
        victim.close()


def test_a_destination_answering_icmp_unreachable_ends_the_call_long_before_media_timeout(
        tmp_path: Path) -> None:
    home = Home(tmp_path, media_timeout=60.0)
    rogue = home.party(ROGUE, "rogue")
    try:
        call_id, _ = rogue.invite(media=(VICTIM, VICTIM_PORT + 2))  # no socket there: port unreachable
        ok = rogue.wait_response(call_id)
        assert ok is not None and status(ok) == 200
        rogue.ack(ok)
        start = time.monotonic()
        assert until(lambda: home.calls(), 3)
        assert until(lambda: rogue.byes, 10), "no BYE after ICMP port unreachable"
        assert time.monotonic() - start < 10 and home.calls() == []
        assert "unreachable (ICMP): hanging up" in home.output()
    finally:
        rogue.close()
        home.close()


def test_an_invite_or_options_for_another_user_gets_404(home: Home) -> None:
    stranger = home.party(STRANGER, "mallory")
    victim = Counter(home.ns, VICTIM, VICTIM_PORT)
    try:
        call_id, _ = stranger.invite("admin", media=(VICTIM, VICTIM_PORT))
        assert status(stranger.wait_response(call_id) or b"") == 404
        assert status(stranger.wait_response(stranger.options("admin"), "OPTIONS") or b"") == 404
        assert status(stranger.wait_response(stranger.options("mn"), "OPTIONS") or b"") == 200
        assert home.calls() == [] and victim.arrivals == []
    finally:
        stranger.close()
        victim.close()


def test_a_call_from_outside_the_home_is_not_answered(home: Home) -> None:
    stranger = home.party(STRANGER, "mallory")
    try:
        call_id, _ = stranger.invite(media=(STRANGER, 4000))
        assert status(stranger.wait_response(call_id) or b"") == 403
        assert home.calls() == []
    finally:
        stranger.close()


# Item 11: smaller ---------------------------------------------------------------------------------


def test_a_udp_request_whose_via_says_tcp_is_answered_over_udp_and_no_connection_is_made(home: Home) -> None:
    listener = home.ns.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind((VICTIM, 7777))
    listener.listen(8)
    listener.settimeout(0.5)
    stranger = home.party(STRANGER, "mallory")
    try:
        via = f"Via: SIP/2.0/TCP {VICTIM}:7777;branch=z9hG4bKtcp{time.monotonic_ns()}"
        assert status(stranger.wait_response(stranger.options("mn", via=via), "OPTIONS") or b"") == 200
        call_id, _ = stranger.invite(via=via.replace("tcp", "tcpinv"))
        assert status(stranger.wait_response(call_id) or b"") == 403
        with pytest.raises(TimeoutError):
            listener.accept()
    finally:
        listener.close()
        stranger.close()


def test_an_answer_too_large_for_udp_is_refused_with_513(home: Home) -> None:
    cn = home.party(CN, "cn")
    try:
        # The request fits in a datagram; the 200 (the same Vias, our SDP, our headers) would not.
        call_id, _ = cn.invite(size=65490)
        response = cn.wait_response(call_id)
        assert response is not None and status(response) == 513
        assert home.calls() == []
        assert "Traceback" not in home.output()
    finally:
        cn.close()


def test_sigterm_during_calls_ends_them_without_a_traceback(home: Home) -> None:
    call = Call(home)
    try:
        assert until(lambda: home.calls())
        home.stop(signal.SIGTERM)
        assert until(lambda: call.cn.byes, 5), "the CN got no BYE on SIGTERM"
        out = home.output()
        assert "Traceback" not in out and "AssertionError" not in out, out
    finally:
        call.close()


def test_sigterm_without_calls_exits_cleanly(home: Home) -> None:
    assert home.proc is not None and home.proc.poll() is None
    home.stop()
    assert home.proc.returncode == 0, home.output()
