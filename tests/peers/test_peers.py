"""Self-tests of the peer fixtures: each peer starts, answers, does what its fixture says, stops.

Run with `.venv/bin/python -m pytest -q tests/peers`. Everything is on loopback or in namespaces
made here; every process is stopped by its PID.
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.peers import netns, ports, rtp, sipp
from tests.peers.baresip import BARESIP, Baresip
from tests.peers.pjsua import Pjsua

SCENARIOS = Path(__file__).resolve().parents[1] / "integration" / "sip" / "scenarios"

try:
    import pjsua2  # noqa: F401
    HAVE_PJSUA2 = True
except ImportError:
    HAVE_PJSUA2 = False

needs_baresip = pytest.mark.skipif(BARESIP is None, reason="baresip is not installed (apt baresip-core)")
needs_pjsua2 = pytest.mark.skipif(not HAVE_PJSUA2, reason="pjsua2 is not installed (tests/requirements.txt)")
needs_sipp = pytest.mark.skipif(sipp.SIPP is None, reason="sipp is not installed (apt sip-tester)")
needs_netns = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None,
                                 reason="network namespaces need root and iproute2")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); a reaped child does not exist any more.
    return Path(f"/proc/{pid}").exists()


# ports ----------------------------------------------------------------------------------------


def test_free_udp_port_can_be_bound() -> None:
    port = ports.free_udp_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", port))


def test_free_sip_port_can_be_bound_for_udp_and_tcp() -> None:
    port = ports.free_sip_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, \
            socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
        udp.bind(("127.0.0.1", port))
        tcp.bind(("127.0.0.1", port))


# rtp ------------------------------------------------------------------------------------------


def _rtp(seq: int, ssrc: int = 7, payload_type: int = 0, timestamp: int = 0) -> bytes:
    return struct.pack("!BBHII", 0x80, payload_type, seq, timestamp, ssrc) + bytes(160)


def test_parse_rtp_reads_the_fixed_header() -> None:
    packet = rtp.parse_rtp(_rtp(513, ssrc=0xDEADBEEF, payload_type=8, timestamp=1234), ("127.0.0.1", 9), 1.0)
    assert packet is not None
    assert (packet.seq, packet.ssrc, packet.payload_type, packet.timestamp, packet.payload_size) == \
        (513, 0xDEADBEEF, 8, 1234, 160)


def test_parse_rtp_rejects_rtcp_and_other_versions() -> None:
    receiver_report = struct.pack("!BBHI", 0x80, 201, 1, 7)
    assert rtp.parse_rtp(receiver_report + bytes(4), ("127.0.0.1", 9), 1.0) is None
    assert rtp.parse_rtp(b"\x40" + _rtp(1)[1:], ("127.0.0.1", 9), 1.0) is None


def test_probe_counts_lost_packets_by_sequence_number() -> None:
    with rtp.RtpProbe() as probe, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        for seq in (10, 11, 13, 16):
            sender.sendto(_rtp(seq), (probe.host, probe.port))
        assert probe.wait_for_packets(4, timeout=5)
        assert probe.lost() == 3


def test_probe_unwraps_sequence_rollover() -> None:
    with rtp.RtpProbe() as probe, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        for seq in (65534, 65535, 0, 2):
            sender.sendto(_rtp(seq), (probe.host, probe.port))
        assert probe.wait_for_packets(4, timeout=5)
        assert probe.lost() == 1


def test_sender_streams_pcmu_with_consecutive_sequence_numbers() -> None:
    with rtp.RtpProbe() as probe:
        sender = rtp.RtpSender((probe.host, probe.port))
        try:
            assert probe.wait_for_packets(10, timeout=5)
        finally:
            sender.stop()
        [stream] = probe.streams()
        assert (stream.ssrc, stream.payload_type, stream.source[1]) == (sender.ssrc, rtp.PCMU, sender.port)
        assert probe.lost() == 0
        assert all(p.payload_size == 160 for p in probe.snapshot())


def test_sender_moved_mid_stream_keeps_ssrc_and_sequence() -> None:
    with rtp.RtpProbe() as first, rtp.RtpProbe() as second:
        sender = rtp.RtpSender((first.host, first.port))
        try:
            assert first.wait_for_packets(5, timeout=5)
            sender.retarget((second.host, second.port))
            assert second.wait_for_packets(5, timeout=5)
        finally:
            sender.stop()
        last_before = first.snapshot()[-1]
        first_after = second.snapshot()[0]
        assert first_after.ssrc == last_before.ssrc
        assert (first_after.seq - last_before.seq) & 0xFFFF == 1


def test_ulaw_encoding_is_symmetric_around_silence() -> None:
    assert rtp.ulaw_encode(0) == 0xFF
    assert rtp.ulaw_encode(-1) & 0x7F == rtp.ulaw_encode(1) & 0x7F
    assert rtp.ulaw_encode(32767) == 0x80
    assert rtp.ulaw_encode(-32768) == 0x00


# baresip --------------------------------------------------------------------------------------


@pytest.fixture
def baresips(tmp_path: Path) -> Iterator[list[Baresip]]:
    started: list[Baresip] = []
    yield started
    for phone in started:
        phone.stop()


@needs_baresip
def test_baresip_calls_baresip_and_both_see_it_established(tmp_path: Path, baresips: list[Baresip]) -> None:
    caller = Baresip(tmp_path, user="caller")
    callee = Baresip(tmp_path, user="callee")
    baresips += [caller, callee]
    caller.dial(callee.uri)
    caller.wait_call_event("CALL_ESTABLISHED")
    callee.wait_call_event("CALL_ESTABLISHED")
    [call] = callee.calls()
    assert call["state"] == "ESTABLISHED"
    assert call["peer_uri"] == caller.uri


@needs_baresip
def test_baresip_receives_rtp_from_its_peer(tmp_path: Path, baresips: list[Baresip]) -> None:
    caller = Baresip(tmp_path, user="caller")
    callee = Baresip(tmp_path, user="callee")
    baresips += [caller, callee]
    caller.dial(callee.uri)
    caller.wait_call_event("CALL_RTPESTAB")  # baresip's event for "RTP has arrived"
    callee.wait_call_event("CALL_RTPESTAB")


@needs_baresip
def test_baresip_hangup_closes_the_call_at_the_peer(tmp_path: Path, baresips: list[Baresip]) -> None:
    caller = Baresip(tmp_path, user="caller")
    callee = Baresip(tmp_path, user="callee")
    baresips += [caller, callee]
    caller.dial(callee.uri)
    callee.wait_call_event("CALL_ESTABLISHED")
    caller.hangup()
    callee.wait_call_event("CALL_CLOSED")
    assert callee.calls() == []


@needs_baresip
def test_baresip_records_sent_and_received_audio(tmp_path: Path, baresips: list[Baresip]) -> None:
    record_dir = tmp_path / "recordings"
    caller = Baresip(tmp_path, user="caller", record_dir=record_dir)
    callee = Baresip(tmp_path, user="callee")
    baresips += [caller, callee]
    caller.dial(callee.uri)
    caller.wait_call_event("CALL_RTPESTAB")
    caller.hangup()
    caller.wait_call_event("CALL_CLOSED")
    names = sorted(p.name for p in record_dir.iterdir())
    assert [n.rsplit("-", 1)[1] for n in names] == ["dec.wav", "enc.wav"]


@needs_baresip
def test_baresip_without_auto_answer_rings_until_accepted(tmp_path: Path, baresips: list[Baresip]) -> None:
    caller = Baresip(tmp_path, user="caller")
    callee = Baresip(tmp_path, user="callee", auto_answer=False)
    baresips += [caller, callee]
    caller.dial(callee.uri)
    callee.wait_call_event("CALL_INCOMING")
    assert [c["state"] for c in callee.calls()] == ["INCOMING"]
    callee.accept()
    caller.wait_call_event("CALL_ESTABLISHED")


@needs_baresip
def test_baresip_stop_ends_the_process(tmp_path: Path) -> None:
    phone = Baresip(tmp_path, user="solo")
    pid = phone.proc.pid
    phone.stop()
    assert not _pid_alive(pid)


# pjsua ----------------------------------------------------------------------------------------


@pytest.fixture
def pjsuas(tmp_path: Path) -> Iterator[list[Pjsua]]:
    started: list[Pjsua] = []
    yield started
    for phone in started:
        phone.stop()


def _pjsua(tmp_path: Path, started: list[Pjsua], user: str, **kwargs: bool) -> Pjsua:
    phone = Pjsua(ports.free_udp_port(), user, workdir=tmp_path, **kwargs)
    started.append(phone)
    return phone


@needs_pjsua2
def test_pjsua_answers_a_call_and_activates_audio(tmp_path: Path, pjsuas: list[Pjsua]) -> None:
    caller = _pjsua(tmp_path, pjsuas, "caller")
    callee = _pjsua(tmp_path, pjsuas, "callee")
    call = caller.make_call(callee.uri)
    caller.wait_call_state("CONFIRMED", call)
    incoming = callee.wait_event(lambda e: e["event"] == "incoming_call")
    assert incoming["message"].startswith(f"INVITE {callee.uri} SIP/2.0")
    assert callee.wait_event(lambda e: e["event"] == "media_state")["active"]
    [remote] = callee.calls()
    assert (remote["state"], remote["role"]) == ("CONFIRMED", "callee")


@needs_pjsua2
def test_pjsua_sends_rtp_once_audio_is_connected(tmp_path: Path, pjsuas: list[Pjsua]) -> None:
    callee = _pjsua(tmp_path, pjsuas, "callee")
    with rtp.RtpProbe() as probe:
        # sipp plays the caller, its SDP pointing pjsua's media at the probe.
        scenario = tmp_path / "uac_to_probe.xml"
        text = (SCENARIOS / "uac_invite_bye.xml").read_text()
        scenario.write_text(text.replace("[media_port]", str(probe.port)))
        run = sipp.SippProcess(scenario, f"127.0.0.1:{callee.port}", extra_args=["-s", "callee"],
                               timeout=15, workdir=tmp_path / "sipp")
        assert probe.wait_for_packets(10, timeout=10)
        result = run.wait()
    assert result.returncode == 0, result.stdout
    assert probe.streams()[0].payload_type == rtp.PCMU


@needs_pjsua2
def test_pjsua_blind_transfer_invites_the_target_with_referred_by(tmp_path: Path,
                                                                  pjsuas: list[Pjsua]) -> None:
    transferee = _pjsua(tmp_path, pjsuas, "transferee")
    transferor = _pjsua(tmp_path, pjsuas, "transferor")
    target = _pjsua(tmp_path, pjsuas, "target")
    call = transferee.make_call(transferor.uri)
    transferee.wait_call_state("CONFIRMED", call)
    [held] = transferor.calls()
    transferor.transfer(held["id"], target.uri)
    assert transferee.wait_event(lambda e: e["event"] == "transfer_request")["dst_uri"] == target.uri
    invite = target.wait_event(lambda e: e["event"] == "incoming_call")["message"]
    assert "\nReferred-By: <sip:transferor@127.0.0.1" in invite
    status = transferor.wait_event(lambda e: e["event"] == "transfer_status" and e["final"])
    assert status["code"] == 200


@needs_pjsua2
def test_pjsua_attended_transfer_replaces_the_consultation_call(tmp_path: Path,
                                                                pjsuas: list[Pjsua]) -> None:
    transferor = _pjsua(tmp_path, pjsuas, "transferor")
    transferee = _pjsua(tmp_path, pjsuas, "transferee")
    target = _pjsua(tmp_path, pjsuas, "target")
    held = transferor.make_call(transferee.uri)
    transferor.wait_call_state("CONFIRMED", held)
    consultation = transferor.make_call(target.uri)
    transferor.wait_call_state("CONFIRMED", consultation)
    transferor.transfer_replaces(held, consultation)
    replace = target.wait_event(lambda e: e["event"] == "replace_request")
    assert "\nReplaces: " in replace["message"]
    replaced = target.wait_event(lambda e: e["event"] == "replaced")
    transferor.wait_call_state("DISCONNECTED", consultation)
    target.wait_call_state("DISCONNECTED", replaced["old_call"])
    [new_call] = target.calls()
    assert new_call["remote_uri"].startswith("<sip:transferee@")


@needs_pjsua2
def test_pjsua_answers_new_calls_after_a_replaced_one(tmp_path: Path, pjsuas: list[Pjsua]) -> None:
    transferor = _pjsua(tmp_path, pjsuas, "transferor")
    transferee = _pjsua(tmp_path, pjsuas, "transferee")
    target = _pjsua(tmp_path, pjsuas, "target")
    held = transferor.make_call(transferee.uri)
    transferor.wait_call_state("CONFIRMED", held)
    consultation = transferor.make_call(target.uri)
    transferor.wait_call_state("CONFIRMED", consultation)
    transferor.transfer_replaces(held, consultation)
    target.wait_event(lambda e: e["event"] == "replaced")
    transferor.hangup()
    transferee.hangup()
    target.wait_event(lambda e: e["event"] == "call_state" and e["state"] == "DISCONNECTED"
                      and e["call"] != consultation)
    # pjsua reuses call ids: a new call must not be hung up on behalf of an old Call object.
    for _ in range(4):
        start = len(transferor.events)
        call = transferor.make_call(target.uri)
        transferor.wait_call_state("CONFIRMED", call, start=start)
        transferor.hangup(call)
        transferor.wait_call_state("DISCONNECTED", call, start=start)


@needs_pjsua2
def test_pjsua_reports_a_failed_command_as_an_error(tmp_path: Path, pjsuas: list[Pjsua]) -> None:
    phone = _pjsua(tmp_path, pjsuas, "solo")
    with pytest.raises(Exception, match="hangup"):
        phone.hangup(call=42)
    assert phone.running()


@needs_pjsua2
def test_pjsua_stop_ends_the_child_process(tmp_path: Path) -> None:
    phone = Pjsua(ports.free_udp_port(), "solo", workdir=tmp_path)
    pid = phone.proc.pid
    phone.stop()
    assert not _pid_alive(pid)


# sipp -----------------------------------------------------------------------------------------


@needs_sipp
@needs_baresip
def test_sipp_call_to_baresip_succeeds_and_reports_stats(tmp_path: Path, baresips: list[Baresip]) -> None:
    phone = Baresip(tmp_path, user="phone")
    baresips.append(phone)
    result = sipp.run_scenario(SCENARIOS / "uac_invite_bye.xml", f"127.0.0.1:{phone.port}",
                               extra_args=["-s", "phone"], timeout=15, workdir=tmp_path / "sipp")
    assert result.returncode == 0, result.stdout
    assert (result.successful_calls, result.failed_calls) == (1, 0)
    assert "SIP/2.0 200" in result.messages


@needs_sipp
def test_sipp_run_against_nobody_ends_by_its_own_timeout(tmp_path: Path) -> None:
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))  # bound and never read: requests vanish, nothing answers
    try:
        result = sipp.run_scenario(SCENARIOS / "uac_invite_bye.xml", f"127.0.0.1:{silent.getsockname()[1]}",
                                   extra_args=["-s", "nobody"], timeout=2, workdir=tmp_path / "sipp")
    finally:
        silent.close()
    # sipp gave up by itself (-timeout with -timeout_error), before the hard kill (-9) was needed.
    assert result.returncode not in (0, -9)
    assert result.successful_calls == 0


# netns ----------------------------------------------------------------------------------------


@needs_netns
def test_namespace_has_loopback_up() -> None:
    with netns.Namespace("peers-test") as ns:
        out = ns.run(["ip", "-o", "link", "show", "lo"], check=True).stdout
        assert "UP" in out.split("<", 1)[1].split(">", 1)[0]


@needs_netns
def test_namespaces_joined_by_veth_exchange_datagrams() -> None:
    with netns.Namespace("peers-a") as a, netns.Namespace("peers-b") as b:
        a.veth(b, "10.200.7.1/24", "10.200.7.2/24")
        receiver = b.socket()
        sender = a.socket()
        try:
            receiver.bind(("10.200.7.2", 0))
            receiver.settimeout(5)
            sender.sendto(b"hello", receiver.getsockname())
            data, source = receiver.recvfrom(100)
        finally:
            receiver.close()
            sender.close()
        assert (data, source[0]) == (b"hello", "10.200.7.1")


@needs_netns
def test_namespace_socket_does_not_see_the_host_loopback() -> None:
    with rtp.RtpProbe() as host_probe, netns.Namespace("peers-iso") as ns:
        sock = ns.socket()
        try:
            sock.sendto(_rtp(1), ("127.0.0.1", host_probe.port))
        finally:
            sock.close()
        assert not host_probe.wait_for_packets(1, timeout=0.5)


@needs_netns
def test_deleted_namespace_is_gone() -> None:
    ns = netns.Namespace("peers-gone")
    ns.delete()
    assert not ns.path.exists()
