"""Our UA against sipp for the edge cases of RFC 3261 that friendly peers never produce: a
retransmitted INVITE, re-INVITE glare (491 and the §14.1 back-off), a 200 that crosses our
CANCEL, and malformed INVITEs.

Our UA runs as a program (`tests.peers.sipmob_ua`); sipp runs the scenarios in `scenarios/`,
each bounded by `-m`, `-timeout` and a kill by PID.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.peers import sipp, tshark
from tests.peers.ports import free_udp_port
from tests.peers.sipmob_ua import SipmobUA

SCENARIOS = Path(__file__).resolve().parent / "scenarios"

pytestmark = [pytest.mark.peer, pytest.mark.skipif(sipp.SIPP is None, reason="sipp is not installed")]


@pytest.fixture
def uas(tmp_path: Path) -> Iterator[list[SipmobUA]]:
    started: list[SipmobUA] = []
    yield started
    for ua in started:
        ua.stop()


def _ua(tmp_path: Path, started: list[SipmobUA], **options: float | bool) -> SipmobUA:
    ua = SipmobUA(free_udp_port(), "ua", workdir=tmp_path, **options)  # type: ignore[arg-type]
    started.append(ua)
    return ua


def _received(messages: str, method: str) -> int:
    """How many `method` requests sipp's message trace shows it received (not sent)."""
    blocks = re.split(r"^-{10,} .*$", messages, flags=re.MULTILINE)
    request_line = re.compile(rf"^{method} sip:\S+ SIP/2.0", re.MULTILINE)
    return sum(1 for block in blocks if "message received" in block and request_line.search(block))


def test_a_retransmitted_invite_makes_one_call(tmp_path: Path, uas: list[SipmobUA]) -> None:
    ua = _ua(tmp_path, uas, answer_delay=0.5)  # both copies arrive before the answer
    result = sipp.run_scenario(SCENARIOS / "uac_invite_retransmitted.xml", f"127.0.0.1:{ua.port}",
                               extra_args=["-s", "ua"], timeout=15, workdir=tmp_path / "sipp")
    assert result.returncode == 0, result.stdout
    ua.wait("terminated", reason="bye")
    assert ua.count("incoming_call") == 1


def test_reinvite_glare_gets_491_and_our_retry_succeeds(tmp_path: Path, uas: list[SipmobUA]) -> None:
    ua = _ua(tmp_path, uas)
    port = free_udp_port()
    server = sipp.SippProcess(SCENARIOS / "uas_reinvite_glare.xml", local_port=port, timeout=20,
                              workdir=tmp_path / "sipp")
    try:
        server.wait_listening()
        ref = ua.invite(f"sip:sipp@127.0.0.1:{port}")
        ua.wait("established", ref=ref)
        ua.reinvite(ref)
        # Our UA owns the Call-ID, so it retries after 2.1 to 4 s (RFC 3261 §14.1).
        assert ua.wait("reinvite_done", ref=ref, timeout=10)["status"] == 200
        ua.bye(ref)
        ua.wait("bye_done", ref=ref)
    finally:
        result = server.wait()
    assert result.returncode == 0, result.stdout
    assert _received(result.messages, "INVITE") == 3  # the first INVITE, the re-INVITE and its retry


def test_a_200_crossing_our_cancel_is_acked_and_hung_up(tmp_path: Path, uas: list[SipmobUA]) -> None:
    ua = _ua(tmp_path, uas)
    port = free_udp_port()
    server = sipp.SippProcess(SCENARIOS / "uas_cancel_race.xml", local_port=port, timeout=20,
                              workdir=tmp_path / "sipp")
    try:
        server.wait_listening()
        ref = ua.invite(f"sip:sipp@127.0.0.1:{port}", cancel_on_provisional=True)
        ua.wait("call_failed", ref=ref)
    finally:
        result = server.wait()
    assert result.returncode == 0, result.stdout
    assert _received(result.messages, "CANCEL") == 1
    assert _received(result.messages, "ACK") == 1
    assert _received(result.messages, "BYE") == 1
    assert ua.calls() == []


def test_malformed_invites_get_400_with_the_reason(tmp_path: Path, uas: list[SipmobUA]) -> None:
    ua = _ua(tmp_path, uas)
    result = sipp.run_scenario(SCENARIOS / "uac_malformed.xml", f"127.0.0.1:{ua.port}",
                               extra_args=["-s", "ua"], timeout=15, workdir=tmp_path / "sipp")
    assert result.returncode == 0, result.stdout + "\n".join(result.errors)
    assert len(re.findall(r"^SIP/2.0 400 ", result.messages, re.MULTILINE)) >= 3
    assert ua.count("incoming_call") == 0


@pytest.mark.skipif(tshark.TSHARK is None, reason="tshark is not installed (apt install tshark)")
def test_tshark_finds_nothing_malformed_in_our_cancel_and_glare_messages(tmp_path: Path,
                                                                         uas: list[SipmobUA]) -> None:
    ua = _ua(tmp_path, uas)
    capture = tshark.LiveCapture(tmp_path / "edge.pcapng", f"udp port {ua.port}")
    try:
        for scenario, act in (("uas_cancel_race.xml", "cancel"), ("uas_reinvite_glare.xml", "glare")):
            port = free_udp_port()
            server = sipp.SippProcess(SCENARIOS / scenario, local_port=port, timeout=20,
                                      workdir=tmp_path / act)
            try:
                server.wait_listening()
                ref = ua.invite(f"sip:sipp@127.0.0.1:{port}", cancel_on_provisional=act == "cancel")
                if act == "glare":
                    ua.wait("established", ref=ref)
                    ua.reinvite(ref)
                    ua.wait("reinvite_done", ref=ref, timeout=10)
                    ua.bye(ref)
                    ua.wait("bye_done", ref=ref)
                else:
                    ua.wait("call_failed", ref=ref)
            finally:
                assert server.wait().returncode == 0
    finally:
        path = capture.stop()
    ours = f"sip && udp.srcport == {ua.port}"
    methods = {row[0] for row in tshark.fields(path, ours + " && sip.Request-Line", "sip.Method")}
    assert {"INVITE", "CANCEL", "ACK", "BYE"} <= methods
    statuses = {row[0] for row in tshark.fields(path, ours + " && sip.Status-Line", "sip.Status-Code")}
    assert "491" in statuses
    assert tshark.malformed(path, "sip") == ""
    assert tshark.expert_errors(path, "sip") == []
