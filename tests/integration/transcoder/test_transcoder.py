"""sipmob-transcoder as a real process, between two baresip phones that share no codec.

The test is the 3PCC controller (RFC 4117 §3.3, the addresses not known up front): it invokes the
transcoder with both parties' codecs and port 0, calls each baresip with the transcoder's side for
it as the offer, then re-INVITEs the transcoder with the two answers ("SDP A + SDP B"). baresip A
speaks Opus only and sends a 440 Hz tone; baresip B speaks G.711 only (or G.722 only) and plays a
1 kHz WAV. Each records what it decodes: A must hear 1 kHz, B 440 Hz, loud and clean.

Also: strangers (outside [access] allowed_networks) get 403, a call over capacity gets 503 with
Retry-After while the admitted one keeps flowing, and a body that is not "SDP A + SDP B" gets 488.
"""

from __future__ import annotations

import socket
import struct
import time
import wave
from pathlib import Path

import numpy as np
import pytest
from tests.integration.transcoder.transcoder_process import HOST, Controller, Transcoder, invocation, side
from tests.peers.baresip import BARESIP, Baresip

from sipmob.sdp.session import Connection, parse

pytestmark = pytest.mark.skipif(BARESIP is None, reason="baresip is not installed")


class OpusBaresip(Baresip):
    """baresip with the opus module loaded too (the shared driver loads g711, g722 and l16)."""

    def _write_config(self, *args: object) -> None:
        super()._write_config(*args)  # type: ignore[arg-type]
        config = self.dir / "config"
        config.write_text(config.read_text() + "module opus.so\n")


def write_tone_wav(path: Path, freq: float, seconds: float = 30.0, rate: int = 8000) -> Path:
    samples = (0.3 * 32767 * np.sin(2 * np.pi * freq * np.arange(int(rate * seconds)) / rate)).astype("<i2")
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(samples.tobytes())
    return path


def until(check: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return False


def analyse(path: Path, freq: float) -> tuple[float, float, float]:
    """(peak frequency, RMS in dBFS, SNR in dB of a least-squares sine fit) of the last 2 s."""
    # Read by hand: baresip is still writing the file, so the RIFF sizes are not final yet.
    raw = path.read_bytes()
    fmt, data_at = raw.find(b"fmt "), raw.find(b"data")
    if fmt < 0 or data_at < 0:
        return 0.0, -200.0, -200.0
    channels, rate = struct.unpack_from("<HI", raw, fmt + 10)
    body = raw[data_at + 8:]
    data = np.frombuffer(body[: len(body) & ~1], dtype="<i2").astype(np.float64)
    if channels > 1:
        data = data.reshape(-1, channels).mean(axis=1)
    y = data[-2 * rate:]
    if len(y) < rate:
        return 0.0, -200.0, -200.0
    rms = 20 * np.log10(max(np.sqrt(np.mean(y ** 2)), 1e-9) / 32768)
    peak = float(np.argmax(np.abs(np.fft.rfft(y * np.hanning(len(y))))) * rate / len(y))
    t = np.arange(len(y)) / rate
    basis = np.stack([np.sin(2 * np.pi * freq * t), np.cos(2 * np.pi * freq * t), np.ones_like(t)], axis=1)
    coef, *_ = np.linalg.lstsq(basis, y, rcond=None)
    fit = basis @ coef
    snr = 10 * np.log10(np.sum(fit ** 2) / max(np.sum((y - fit) ** 2), 1e-9))
    return peak, float(rms), float(snr)


def one_side(answer_body: bytes, index: int) -> bytes:
    """The transcoder's answer cut down to one party's media line, as that party's offer."""
    sdp = parse(answer_body)
    media = sdp.media[index]
    lines = ["v=0", f"o=ctl {index + 1} 1 IN IP4 {HOST}", "s=-", f"c=IN IP4 {media.connection.host}",  # type: ignore[union-attr]
             "t=0 0", *media.with_connection(None).lines()]
    return ("\r\n".join(lines) + "\r\n").encode()


def party_section(answer_body: bytes) -> str:
    """A party's answer as one m= section with its own c= line, for "SDP A + SDP B"."""
    sdp = parse(answer_body)
    media = sdp.media[0]
    connection = media.connection or sdp.connection
    assert connection is not None
    return "\r\n".join(media.with_connection(Connection.for_address(connection.host)).lines()) + "\r\n"


def dec_wav(directory: Path) -> Path | None:
    found = sorted(directory.glob("*-dec.wav"))
    return found[0] if found else None


@pytest.mark.parametrize("b_codec", ["PCMU/8000", "G722/8000"])
def test_opus_only_and_g711_or_g722_only_phones_hear_each_other_through_the_transcoder(
        tmp_path: Path, b_codec: str) -> None:
    b_name = b_codec.split("/")[0]
    b_pt = 0 if b_name == "PCMU" else 9
    wav = write_tone_wav(tmp_path / "1k.wav", 1000.0, rate=8000 if b_name == "PCMU" else 16000)
    with Transcoder(tmp_path) as transcoder, \
            OpusBaresip(tmp_path, user="cn", codecs="opus", record_dir=tmp_path / "a-rec") as a, \
            Baresip(tmp_path, user="desk", codecs="PCMU" if b_name == "PCMU" else "G722", audio=wav,
                    record_dir=tmp_path / "b-rec") as b, \
            Controller(transcoder.uri) as to_t, Controller(a.uri) as to_a, Controller(b.uri) as to_b:
        # 1. Invoke with codecs only (port 0: addresses not known yet, RFC 4117 §3.3).
        first = to_t.invite(invocation(
            side(0, [(111, "opus/48000/2"), (101, "telephone-event/48000")], host="0.0.0.0"),
            side(0, [(b_pt, b_codec), (100, "telephone-event/8000")], host="0.0.0.0")))
        assert first.status == 200, transcoder.output()
        # 2. Each party gets the transcoder's side for it as the offer.
        answer_a = to_a.invite(one_side(first.body, 0))
        answer_b = to_b.invite(one_side(first.body, 1))
        assert answer_a.status == 200 and answer_b.status == 200, (a.log(), b.log())
        # 3. "SDP A + SDP B" now with their addresses.
        update = to_t.reinvite(invocation(party_section(answer_a.body), party_section(answer_b.body)))
        assert update.status == 200, transcoder.output()
        answer = parse(update.body)
        assert answer.media[0].rtpmap(answer.media[0].payload_types[0]).encoding.lower() == "opus"  # type: ignore[union-attr]
        assert answer.media[1].rtpmap(answer.media[1].payload_types[0]).encoding.upper() == b_name  # type: ignore[union-attr]

        def heard(directory: Path, freq: float) -> bool:
            path = dec_wav(directory)
            if path is None:
                return False
            peak, rms, _ = analyse(path, freq)
            return abs(peak - freq) < 5 and rms > -30

        ok_a = until(lambda: heard(tmp_path / "a-rec", 1000.0), 12)
        ok_b = until(lambda: heard(tmp_path / "b-rec", 440.0), 12)
        time.sleep(1.0)
        to_a.bye()
        to_b.bye()
        assert to_t.bye().status == 200
        a_wav, b_wav = dec_wav(tmp_path / "a-rec"), dec_wav(tmp_path / "b-rec")
        assert a_wav is not None and b_wav is not None, transcoder.output()
        peak_a, rms_a, snr_a = analyse(a_wav, 1000.0)
        peak_b, rms_b, snr_b = analyse(b_wav, 440.0)
        report = f"A heard {peak_a:.0f} Hz {rms_a:.1f} dBFS SNR {snr_a:.1f}; " \
                 f"B heard {peak_b:.0f} Hz {rms_b:.1f} dBFS SNR {snr_b:.1f}\n{transcoder.output()}"
        print(report.splitlines()[0])
        assert ok_a and ok_b, report
        # Thresholds: through Opus and back at the phone, a steady tone keeps well over 15 dB (the
        # unit tests see 24-38 dB for the conversion alone); a lost or misplaced frame each second
        # would put it under 10. Level: the sources are -10.5 dBFS; a wrong gain shows as -30 or less.
        assert snr_a > 15 and snr_b > 15, report
        assert rms_a > -20 and rms_b > -20, report
    assert "call 1 ended" in transcoder.output()


def rtp(seq: int) -> bytes:
    return struct.pack("!BBHII", 0x80, 0, seq, seq * 160, 0x5555) + b"\xff" * 160


def test_a_stranger_is_refused_with_403(tmp_path: Path) -> None:
    with Transcoder(tmp_path, allowed='["10.0.0.0/8"]') as transcoder, Controller(transcoder.uri) as c:
        response = c.invite(invocation(side(0, [(0, "PCMU/8000")]), side(0, [(111, "opus/48000/2")])))
        assert response.status == 403
    assert "not in [access] allowed_networks" in transcoder.output()


def test_a_body_that_is_not_two_media_lines_gets_488(tmp_path: Path) -> None:
    with Transcoder(tmp_path) as transcoder, Controller(transcoder.uri) as c:
        response = c.invite(invocation(side(0, [(0, "PCMU/8000")]), ""))
        assert response.status == 488
        response = c.invite(invocation(side(0, [(18, "G729/8000")]), side(0, [(0, "PCMU/8000")])))
        assert response.status == 488


def test_session_timers_a_too_short_interval_gets_422_and_the_200_states_the_agreed_one(
        tmp_path: Path) -> None:
    """RFC 4028 with the controller: a controller that dies without BYE stops refreshing, and the
    transcoder's core then ends the call, so the channels are not held for good."""
    body = invocation(side(0, [(0, "PCMU/8000")]), side(0, [(111, "opus/48000/2")]))
    with Transcoder(tmp_path) as transcoder, Controller(transcoder.uri) as c:
        short = c.invite(body, headers=("Supported: timer", "Session-Expires: 60"))
        assert short.status == 422, transcoder.output()
        assert int(short.headers.get("Min-SE").split(";")[0]) >= 90
        agreed = c.invite(body, headers=("Supported: timer", "Session-Expires: 120;refresher=uac"))
        assert agreed.status == 200, transcoder.output()
        assert agreed.headers.get("Session-Expires").replace(" ", "") == "120;refresher=uac"
        assert "timer" in agreed.headers.get("Require")
        assert c.bye().status == 200


def test_over_capacity_gets_503_with_retry_after_and_the_admitted_call_keeps_flowing(tmp_path: Path) -> None:
    with Transcoder(tmp_path, channels=2) as transcoder, Controller(transcoder.uri) as c1, \
            Controller(transcoder.uri) as c2, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b:
        a.bind((HOST, 0))
        b.bind((HOST, 0))
        b.settimeout(1.0)
        ok = c1.invite(invocation(side(a.getsockname()[1], [(0, "PCMU/8000")]),
                                  side(b.getsockname()[1], [(8, "PCMA/8000")])))
        assert ok.status == 200
        port_a = parse(ok.body).media[0].port
        full = c2.invite(invocation(side(0, [(0, "PCMU/8000")]), side(0, [(8, "PCMA/8000")])))
        assert full.status == 503
        assert full.headers.get("Retry-After") == "7"
        got = 0
        for seq in range(100):
            a.sendto(rtp(seq), (HOST, port_a))
            try:
                b.recv(2048)
                got += 1
            except TimeoutError:
                pass
        assert got == 100
        assert c1.bye().status == 200
        # Freed: the next call is admitted.
        again = c2.invite(invocation(side(0, [(0, "PCMU/8000")]), side(0, [(8, "PCMA/8000")])))
        assert again.status == 200
        assert c2.bye().status == 200


def test_registered_in_the_da_with_free_channels_that_follow_the_calls(tmp_path: Path) -> None:
    from tests.integration.slpda.slpda_process import Client, Slpda

    from sipmob.slp.attrs import parse_attr_list
    from sipmob.slp.messages import AttrRply, AttrRqst, FunctionId, Header, SrvRply

    def attributes(client: Client, url: str) -> dict[str, object]:
        reply = client.udp(AttrRqst(Header(FunctionId.AttrRqst, 77), "", url, "DEFAULT", ""))
        assert isinstance(reply, AttrRply)
        return {tag: a.values for tag, a in parse_attr_list(reply.attr_list).items()}

    slpda = Slpda(tmp_path).start()
    try:
        with Transcoder(tmp_path, channels=10,
                        slp=f'das = ["{HOST}:{slpda.port}"]\nupdate_interval = 0.5') as transcoder, \
                Client(slpda.port) as client, Controller(transcoder.uri) as c:
            url = transcoder.uri
            assert until(lambda: isinstance(reply := client.udp(client.srv_rqst(
                "service:sip-transcoder", "(codec-pairs=PCMU/opus)")), SrvRply) and reply.urls, 5)
            attrs = attributes(client, url)
            assert attrs["free-channels"] == (10,) and attrs["channels"] == (10,)
            assert "opus" in attrs["audio-codecs"]  # type: ignore[operator]
            offer = invocation(side(0, [(0, "PCMU/8000")]), side(0, [(111, "opus/48000/2")]))
            assert c.invite(offer).status == 200
            assert until(lambda: attributes(client, url)["free-channels"] == (8,), 5)
            assert c.bye().status == 200
            assert until(lambda: attributes(client, url)["free-channels"] == (10,), 5)
    finally:
        slpda.stop()


def test_reload_applies_new_allowed_networks_to_the_next_invite(tmp_path: Path) -> None:
    import os
    import signal

    with Transcoder(tmp_path) as transcoder, Controller(transcoder.uri) as c:
        offer = invocation(side(0, [(0, "PCMU/8000")]), side(0, [(8, "PCMA/8000")]))
        assert c.invite(offer).status == 200
        text = transcoder.config_path.read_text().replace('["127.0.0.0/8"]', '["10.0.0.0/8"]')
        transcoder.config_path.write_text(text)
        assert transcoder.proc is not None
        os.kill(transcoder.proc.pid, signal.SIGHUP)
        assert until(lambda: "configuration reloaded" in transcoder.output(), 5)
        assert c.invite(offer).status == 403


def pair(attempts: int = 50) -> tuple[socket.socket, socket.socket]:
    """Sockets on a free port and the next one (RTP and RTCP, RFC 3550 §11)."""
    for _ in range(attempts):
        rtp_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rtp_sock.bind((HOST, 0))
        rtcp_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            rtcp_sock.bind((HOST, rtp_sock.getsockname()[1] + 1))
            return rtp_sock, rtcp_sock
        except OSError:
            rtp_sock.close()
            rtcp_sock.close()
    raise RuntimeError("no free port pair")


def test_rtcp_reports_per_side_with_the_loss_we_saw_and_dtmf_crosses(tmp_path: Path) -> None:
    from sipmob.media.rtcp import ReceiverReport, SenderReport, parse_compound

    a, a_rtcp = pair()
    b, b_rtcp = pair()
    socks = [a, a_rtcp, b, b_rtcp]
    try:
        with Transcoder(tmp_path) as transcoder, Controller(transcoder.uri) as c:
            ok = c.invite(invocation(
                side(a.getsockname()[1], [(0, "PCMU/8000"), (101, "telephone-event/8000")]),
                side(b.getsockname()[1], [(111, "opus/48000/2"), (110, "telephone-event/48000")])))
            assert ok.status == 200
            port_a = parse(ok.body).media[0].port
            lost = {30, 31, 32, 60, 61}
            for seq in range(100):
                if seq not in lost:
                    a.sendto(rtp(seq), (HOST, port_a))
                time.sleep(0.02)
            # Digit 7, 100 ms, end sent three times (RFC 4733 §2.5.1.4), after the audio.
            for i, (end, duration) in enumerate([(False, 400), (False, 800), (True, 800), (True, 800),
                                                 (True, 800)]):
                event = struct.pack("!BBHIIBBH", 0x80, 101 | (0x80 if i == 0 else 0), 100 + i, 100 * 160,
                                    0x5555, 7, (0x80 if end else 0) | 10, duration)
                a.sendto(event, (HOST, port_a))
            b.settimeout(1.0)
            events = []
            deadline = time.monotonic() + 5
            while len(events) < 5 and time.monotonic() < deadline:
                data = b.recv(2048)
                if data[1] & 0x7F == 110:
                    events.append(data)
            assert len(events) == 5
            assert len({struct.unpack_from("!I", e, 4)[0] for e in events}) == 1  # one event, one timestamp
            assert [struct.unpack_from("!BBH", e, 12) for e in events][-1] == (7, 0x80 | 10, 4800)
            # Reports come every 2.5-7.5 s (§6.3.1 with a 5 s minimum): wait for one on each side.
            a_rtcp.settimeout(10)
            b_rtcp.settimeout(10)
            to_a = parse_compound(a_rtcp.recv(2048))
            to_b = parse_compound(b_rtcp.recv(2048))
            assert c.bye().status == 200
        report = to_a[0]
        assert isinstance(report, ReceiverReport | SenderReport)
        block = next(r for r in report.reports if r.ssrc == 0x5555)
        assert block.cumulative_lost == len(lost)
        assert isinstance(to_b[0], SenderReport) and to_b[0].packet_count >= 90
    finally:
        for s in socks:
            s.close()


def test_an_oversized_sdp_gets_413_and_rtp_from_a_stranger_is_not_relayed(tmp_path: Path) -> None:
    with Transcoder(tmp_path, extra="") as transcoder, Controller(transcoder.uri) as c, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a:
        padding = "".join(f"a=x-pad:{i:04d}{'y' * 90}\r\n" for i in range(90))  # ~9 KB, over max_sdp
        big = invocation(side(0, [(0, "PCMU/8000")]) + padding, side(0, [(8, "PCMA/8000")]))
        assert len(big) > 8192
        assert c.invite(big).status == 413
        b.bind((HOST, 0))
        a.bind((HOST, 0))
        stranger.bind(("127.0.0.2", 0))  # another host as far as the transcoder can tell
        b.settimeout(0.3)
        ok = c.invite(invocation(side(a.getsockname()[1], [(0, "PCMU/8000")]),
                                 side(b.getsockname()[1], [(8, "PCMA/8000")])))
        assert ok.status == 200
        port_a = parse(ok.body).media[0].port
        for seq in range(20):
            stranger.sendto(rtp(seq), (HOST, port_a))
        with pytest.raises(TimeoutError):
            b.recv(2048)
        a.sendto(rtp(100), (HOST, port_a))
        assert b.recv(2048)[1] & 0x7F == 8  # the party itself still gets through
        assert c.bye().status == 200


def test_a_reinvite_changing_a_codec_keeps_the_output_stream_continuous(tmp_path: Path) -> None:
    with Transcoder(tmp_path) as transcoder, Controller(transcoder.uri) as c, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b:
        a.bind((HOST, 0))
        b.bind((HOST, 0))
        b.settimeout(1.0)
        side_a = side(a.getsockname()[1], [(0, "PCMU/8000")])
        ok = c.invite(invocation(side_a, side(b.getsockname()[1], [(111, "opus/48000/2")])))
        assert ok.status == 200
        port_a = parse(ok.body).media[0].port
        headers = []
        for seq in range(10):
            a.sendto(rtp(seq), (HOST, port_a))
            headers.append(struct.unpack_from("!BBHII", b.recv(2048)))
        again = c.reinvite(invocation(side_a, side(b.getsockname()[1], [(9, "G722/8000")])))
        assert again.status == 200
        assert parse(again.body).media[0].port == port_a  # same ports, new version of the answer
        assert parse(again.body).origin.sess_version == 2
        for seq in range(10, 20):
            a.sendto(rtp(seq), (HOST, port_a))
            headers.append(struct.unpack_from("!BBHII", b.recv(2048)))
        assert [h[1] & 0x7F for h in headers] == [111] * 10 + [9] * 10
        assert len({h[4] for h in headers}) == 1  # one SSRC
        assert [h[2] for h in headers] == [(headers[0][2] + i) % 65536 for i in range(20)]
        assert c.bye().status == 200


def test_calls_spread_over_workers_and_a_dead_worker_ends_only_its_own_calls(tmp_path: Path) -> None:
    import os
    import re
    import signal

    from sipmob.sip.message import Request, parse_message

    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(6)]
    try:
        for s in socks:
            s.bind((HOST, 0))
            s.settimeout(1.0)
        with Transcoder(tmp_path, extra="[media]\nworkers = 2\n") as transcoder, \
                Controller(transcoder.uri) as c1, Controller(transcoder.uri) as c2, \
                Controller(transcoder.uri) as c3:
            pids = [int(p) for p in re.search(r"2 media worker\(s\) \(pids (\d+), (\d+)\)",
                                              transcoder.output()).groups()]  # type: ignore[union-attr]

            def call(c: Controller, a: socket.socket, b: socket.socket) -> int:
                ok = c.invite(invocation(side(a.getsockname()[1], [(0, "PCMU/8000")]),
                                         side(b.getsockname()[1], [(0, "PCMU/8000")])))
                assert ok.status == 200
                return parse(ok.body).media[0].port

            def flows(a: socket.socket, b: socket.socket, port: int, first: int) -> bool:
                for seq in range(first, first + 5):
                    a.sendto(rtp(seq), (HOST, port))
                    try:
                        b.recv(2048)
                    except TimeoutError:
                        return False
                return True

            # The fewest calls first: call 1 to worker 0, call 2 to worker 1.
            port1, port2 = call(c1, socks[0], socks[1]), call(c2, socks[2], socks[3])
            assert flows(socks[0], socks[1], port1, 0) and flows(socks[2], socks[3], port2, 0)
            os.kill(pids[0], signal.SIGKILL)
            # The controller of the call that worker held gets a BYE; the other call flows on.
            c1.sock.settimeout(5.0)
            bye = None
            deadline = time.monotonic() + 10
            while bye is None and time.monotonic() < deadline:
                message = parse_message(c1.sock.recvfrom(65535)[0])
                if isinstance(message, Request) and message.method == "BYE":
                    bye = message
            assert bye is not None
            assert flows(socks[2], socks[3], port2, 100)
            # A worker took its place: a new call is admitted and flows.
            port3 = call(c3, socks[4], socks[5])
            assert flows(socks[4], socks[5], port3, 0)
            assert c2.bye().status == 200 and c3.bye().status == 200
        assert "worker 0" in transcoder.output() and "is gone with 1 call(s)" in transcoder.output()
    finally:
        for s in socks:
            s.close()
