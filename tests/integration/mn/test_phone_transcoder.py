"""``sipmob transfer`` through `sipmob-transcoder` when the CN and the device share no codec.

Every party is a real process on loopback: the phone, the DA (`sipmob-slpda`), the transcoder
(registered in the DA, found by the phone), baresip as the CN speaking Opus and PCMA (the call
runs on PCMA, which the phone offers first; an Opus-only CN, whose call runs on Opus, too) and baresip
as a desk phone speaking PCMU only (or G.722 only). Evidence that audio is converted both ways
comes from what each baresip decodes: the CN sends baresip's 440 Hz sine, the desk phone a 1 kHz
WAV; each recording must peak at the other's frequency, loud and clean (SNR), which it can only do
if Opus was decoded and re-encoded as G.711 or G.722 and back. tshark decodes the SIP and SDP of
the whole exchange without a malformed packet.

Also: the transcoder is released (BYE) by a retrieval and by a move to a device that shares a
codec with the CN; no transcoder, a full one (503) and one that is gone give one clear line and
leave the call where it was; the CN's BYE and a hang-up end the transcoder's leg; a phone killed
and restarted takes the leg back and ends it on hang-up.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.integration.transcoder.test_transcoder import OpusBaresip, analyse, dec_wav, write_tone_wav
from tests.integration.transcoder.transcoder_process import Transcoder
from tests.peers.baresip import BARESIP, Baresip
from tests.peers.tshark import TSHARK, LiveCapture, malformed

from sipmob.media.codecs import opus_available

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / "slpda"), str(Path(__file__).resolve().parent)]
from phone_process import Phone, until  # noqa: E402
from slpda_process import HOST, Slpda  # noqa: E402

pytestmark = [pytest.mark.peer,
              pytest.mark.skipif(BARESIP is None, reason="baresip is not installed (apt baresip-core)")]

# baresip's audio_codecs names a codec by its name and sampling rate; one it does not match (plain
# "G722" or "opus") leaves the list empty and baresip then offers every codec it has.
DESK_CODECS = {"PCMU": ("PCMU", 8000), "G722": ("G722/16000", 16000)}
CN_CODECS = "opus/48000/2,PCMA"
# What the CN answers the phone's offer with (baresip keeps the offer's order: G.711 first); the
# phone speaks Opus too where libopus is installed.
CN_SIDE = "PCMA/opus" if opus_available() else "PCMA"


class Home:
    """The DA, the phone, the CN and the devices; the transcoder started on demand."""

    def __init__(self, directory: Path, desk_codec: str = "PCMU", cn_codecs: str = CN_CODECS) -> None:
        self.dir = directory
        self.processes: list[Any] = []
        (directory / "da").mkdir()
        self.da = Slpda(directory / "da").start()
        self.processes.append(self.da)
        self.transcoder: Transcoder | None = None
        codec, rate = DESK_CODECS[desk_codec]
        wav = write_tone_wav(directory / "1k.wav", 1000.0, rate=rate)
        self.cn = OpusBaresip(directory, user="cn", codecs=cn_codecs, record_dir=directory / "cn-rec")
        self.processes.append(self.cn)
        self.desk = Baresip(directory, user="desk", codecs=codec, audio=wav,
                            record_dir=directory / "desk-rec")
        self.processes.append(self.desk)
        self.kitchen = Baresip(directory, user="kitchen", codecs="PCMA")
        self.processes.append(self.kitchen)
        with self.da.client() as slp:
            slp.register(self.desk.uri, f"(name=Desk phone),(media=audio-sendrecv),"
                                        f"(audio-codecs={desk_codec})")
            slp.register(self.kitchen.uri, "(name=Kitchen),(media=audio-sendrecv),(audio-codecs=PCMA)")
        self.phone = Phone(directory, f"{HOST}:{self.da.port}", auto_answer=True)

    def start_transcoder(self, channels: int = 20) -> Transcoder:
        (self.dir / "tx").mkdir(exist_ok=True)
        self.transcoder = Transcoder(self.dir / "tx", channels=channels,
                                     slp=f'das = ["{HOST}:{self.da.port}"]\nupdate_interval = 0.5')
        self.transcoder.start()
        with self.da.client() as slp:
            def registered() -> bool:
                reply = slp.udp(slp.srv_rqst("service:sip-transcoder"))
                return bool(getattr(reply, "urls", ()))

            assert until(registered, 10), self.transcoder.output()
        return self.transcoder

    def call(self) -> None:
        done = self.phone.sipmob("call", self.cn.uri)
        assert done.returncode == 0, done.stderr + self.phone.output()
        assert until(lambda: self.phone.received() > 20), "no RTP from the CN"

    def stop(self) -> None:
        self.phone.stop()
        if self.transcoder is not None:
            self.transcoder.stop()
        for process in reversed(self.processes):
            process.stop()


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Home]:
    h = Home(tmp_path)
    try:
        yield h
    finally:
        h.stop()


def hears(directory: Path, freq: float) -> bool:
    path = dec_wav(directory)
    if path is None:
        return False
    peak, rms, _ = analyse(path, freq)
    return abs(peak - freq) < 5 and rms > -30


def check_audio_both_ways(h: Home) -> str:
    """The CN hears the desk phone's 1 kHz, the desk phone the CN's 440 Hz, clean; the figures."""
    assert until(lambda: hears(h.dir / "desk-rec", 440.0), 15), "the desk phone does not hear the CN"
    # The CN's recording starts with the phone's own tone: wait for the desk's to fill its last 2 s.
    assert until(lambda: hears(h.dir / "cn-rec", 1000.0), 15), "the CN does not hear the desk phone"
    cn_wav, desk_wav = dec_wav(h.dir / "cn-rec"), dec_wav(h.dir / "desk-rec")
    assert cn_wav is not None and desk_wav is not None
    # The analysis looks at the last 2 s: once they hold nothing from before the move (the phase
    # of the tone jumps where the transcoder's stream replaced the phone's), the figures are final.
    until(lambda: analyse(cn_wav, 1000.0)[2] > 15 and analyse(desk_wav, 440.0)[2] > 15, 10)
    time.sleep(2.5)  # two seconds wholly after the move, for the figures reported
    peak_cn, rms_cn, snr_cn = analyse(cn_wav, 1000.0)
    peak_desk, rms_desk, snr_desk = analyse(desk_wav, 440.0)
    report = (f"CN heard {peak_cn:.0f} Hz {rms_cn:.1f} dBFS SNR {snr_cn:.1f} dB; "
              f"desk heard {peak_desk:.0f} Hz {rms_desk:.1f} dBFS SNR {snr_desk:.1f} dB")
    print(report)
    # As in the transcoder's own test: a steady tone through Opus and G.711 keeps well over 15 dB;
    # a frame lost or misplaced every second would put it under 10.
    assert abs(peak_cn - 1000) < 5 and abs(peak_desk - 440) < 5, report
    assert snr_cn > 15 and snr_desk > 15, report
    assert rms_cn > -20 and rms_desk > -20, report
    return report


def transcoder_calls(t: Transcoder) -> tuple[int, int]:
    """(calls started, calls ended) in the transcoder's log."""
    out = t.output()
    return len(re.findall(r"call \S+ from ", out)), len(re.findall(r"call \d+ ended", out))


@pytest.mark.parametrize("desk_codec", ["PCMU", "G722"])
def test_transfer_through_the_transcoder_converts_both_ways_and_retrieve_releases_it(
        tmp_path: Path, desk_codec: str) -> None:
    h = Home(tmp_path, desk_codec)
    capture = None
    try:
        t = h.start_transcoder()
        if TSHARK is not None:
            capture = LiveCapture(tmp_path / "sip.pcap", f"udp and host 127.0.0.1 and (port {h.phone.port} "
                                  f"or port {t.port})")
        h.call()
        done = h.phone.sipmob("transfer", "1", "--to", "desk-phone")
        assert done.returncode == 0, done.stderr + h.phone.output() + t.output()
        name = "PCMU" if desk_codec == "PCMU" else "G722"
        assert done.stdout.strip() == f"call 1: audio on Desk phone via transcoder: PCMA <-> {name}"
        listed = h.phone.sipmob("calls")
        assert listed.returncode == 0
        assert listed.stdout.strip().endswith(
            f"confirmed  audio: Desk phone (PCMA/8000, via transcoder: PCMA <-> {name})"), listed.stdout
        [call] = h.phone.calls()
        assert call["sending"] is False and t.uri in call["devices"]
        check_audio_both_ways(h)
        # The CN sends to the transcoder now, not to us.
        settled = h.phone.received()
        time.sleep(1.0)
        assert h.phone.received() - settled <= 2

        start = len(h.desk.events)
        done = h.phone.sipmob("retrieve", "1")
        assert done.returncode == 0, done.stderr + h.phone.output()
        assert done.stdout.strip() == "call 1: audio on this phone; transcoder released"
        h.desk.wait_call_event("CALL_CLOSED", start=start)
        assert until(lambda: transcoder_calls(t) == (1, 1), 5), t.output()
        before = h.phone.received()
        assert until(lambda: h.phone.received() > before + 20), "the CN's audio did not come back"
        assert "via transcoder" not in h.phone.sipmob("calls").stdout
        if capture is not None:
            path = capture.stop()
            capture = None
            assert malformed(path, "sip") == "" and malformed(path, "sdp") == ""
            from tests.peers.tshark import fields

            invites = fields(path, f"sip.Method == INVITE && udp.dstport == {t.port}", "sdp.media")
            assert invites, "no INVITE to the transcoder in the capture"
            assert len(invites[0][0].split(",")) == 2  # "SDP A + SDP B"
    finally:
        if capture is not None:
            capture.stop()
        h.stop()


@pytest.mark.skipif(not opus_available(), reason="libopus0 is not installed: the phone speaks G.711 only")
@pytest.mark.parametrize("who_calls", ["phone", "cn"])
def test_an_opus_only_cn_is_moved_to_a_pcmu_only_desk_phone_through_the_transcoder(
        tmp_path: Path, who_calls: str) -> None:
    """The phone speaks Opus with an Opus-only CN (either side calling); the transfer to the
    PCMU-only desk phone converts Opus <-> PCMU, each end hears the other's tone, and the SIP and
    SDP of the whole exchange decode cleanly."""
    h = Home(tmp_path, "PCMU", cn_codecs="opus/48000/2")
    capture = None
    try:
        t = h.start_transcoder()
        if TSHARK is not None:
            capture = LiveCapture(tmp_path / "sip.pcap", f"udp and host 127.0.0.1 and (port {h.phone.port} "
                                  f"or port {t.port} or port {h.cn.port} or port {h.desk.port})")
        if who_calls == "phone":
            h.call()
        else:
            h.cn.dial(h.phone.uri)
            assert until(lambda: h.phone.calls() and h.phone.received() > 20), h.phone.output()
        assert h.phone.calls()[0]["streams"][0]["codec"] == "opus/48000/2"
        done = h.phone.sipmob("transfer", "1", "--to", "desk-phone")
        assert done.returncode == 0, done.stderr + h.phone.output() + t.output()
        assert done.stdout.strip() == "call 1: audio on Desk phone via transcoder: Opus <-> PCMU"
        listed = h.phone.sipmob("calls").stdout
        assert listed.strip().endswith("audio: Desk phone (opus/48000/2, via transcoder: Opus <-> PCMU)"), \
            listed
        check_audio_both_ways(h)
        done = h.phone.sipmob("retrieve", "1")
        assert done.returncode == 0 and done.stdout.strip().endswith("transcoder released"), done.stdout
        assert until(lambda: transcoder_calls(t) == (1, 1), 5), t.output()
        before = h.phone.received()
        assert until(lambda: h.phone.received() > before + 20), "the CN's Opus did not come back"
        if capture is not None:
            path = capture.stop()
            capture = None
            assert malformed(path, "sip") == "" and malformed(path, "sdp") == ""
    finally:
        if capture is not None:
            capture.stop()
        h.stop()


def test_a_refresh_reinvite_from_the_cn_is_answered_with_the_transcoders_side(home: Home) -> None:
    """A re-INVITE from the CN that changes nothing (a refresh) is answered with what the CN was
    told (the transcoder's address), not the desk phone's, and audio keeps flowing both ways."""
    t = home.start_transcoder()
    home.call()
    assert home.phone.sipmob("transfer", "1", "--to", "desk-phone").returncode == 0
    desk_events = len(home.desk.events)
    home.cn.reinvite()
    assert until(lambda: "re-offered; carried to no device" in home.phone.output(), 10), home.phone.output()
    [port] = re.findall(r"re-offered; carried to no device; answered audio (\d+) ", home.phone.output())
    assert t.rtp_low <= int(port) <= t.rtp_high  # the transcoder's port, not the desk phone's
    assert t.output().count("call 1 updated") == 1
    assert not any(e.get("type") == "CALL_CLOSED" for e in home.desk.events[desk_events:])
    check_audio_both_ways(home)


def test_without_a_transcoder_the_transfer_is_refused_and_the_call_stays(home: Home) -> None:
    home.call()
    done = home.phone.sipmob("transfer", "1", "--to", "desk-phone")
    assert done.returncode == 1
    assert done.stderr.startswith(f"sipmob: no common audio codec: {home.cn.uri} has ")
    assert done.stderr.strip().endswith(
        f", and no transcoder in the DA converts between {CN_SIDE} and PCMU; the call stays as it was")
    [call] = home.phone.calls()
    assert call["streams"][0]["where"] == "this phone" and call["devices"] == []
    before = home.phone.received()
    assert until(lambda: home.phone.received() > before + 20)


def test_a_full_transcoder_answers_503_and_the_call_stays(home: Home) -> None:
    t = home.start_transcoder(channels=1)  # registered with a free channel, but a call needs two
    home.call()
    done = home.phone.sipmob("transfer", "1", "--to", "desk-phone")
    assert done.returncode == 1, done.stdout
    assert f"and the transcoder {t.uri} refused (503 Service Unavailable)" in done.stderr, done.stderr
    assert done.stderr.strip().endswith("the call stays as it was")
    [call] = home.phone.calls()
    assert call["streams"][0]["where"] == "this phone" and call["devices"] == []
    assert home.desk.calls() == []
    before = home.phone.received()
    assert until(lambda: home.phone.received() > before + 20)


def test_a_transcoder_that_is_gone_is_reported_and_the_call_stays(home: Home) -> None:
    t = home.start_transcoder()
    assert t.proc is not None
    t.proc.kill()  # a crash: still registered in the DA (until its lifetime ends), nobody answers
    t.proc.wait(5)
    home.call()
    done = home.phone.sipmob("transfer", "1", "--to", "desk-phone")
    assert done.returncode == 1, done.stdout
    assert "refused (no answer in 2 s); the call stays as it was" in done.stderr, done.stderr
    [call] = home.phone.calls()
    assert call["streams"][0]["where"] == "this phone" and call["devices"] == []


def test_a_move_to_a_device_sharing_a_codec_releases_the_transcoder(home: Home) -> None:
    t = home.start_transcoder()
    home.call()
    assert home.phone.sipmob("transfer", "1", "--to", "desk-phone").returncode == 0
    start = len(home.desk.events)
    done = home.phone.sipmob("transfer", "1", "--to", "kitchen")
    assert done.returncode == 0, done.stderr + home.phone.output()
    assert done.stdout.strip() == "call 1: audio on Kitchen; transcoder released"
    home.desk.wait_call_event("CALL_CLOSED", start=start)
    assert until(lambda: transcoder_calls(t) == (1, 1), 5), t.output()
    [call] = home.phone.calls()
    assert call["devices"] == [home.kitchen.uri]
    assert call["streams"][0]["codec"] == "PCMA/8000"


def test_a_move_between_two_devices_that_both_need_the_transcoder_replaces_its_leg(home: Home) -> None:
    t = home.start_transcoder()
    lounge = Baresip(home.dir, user="lounge", codecs="G722/16000", record_dir=home.dir / "lounge-rec")
    home.processes.append(lounge)
    with home.da.client() as slp:
        slp.register(lounge.uri, "(name=Lounge),(media=audio-sendrecv),(audio-codecs=G722)")
    home.call()
    assert home.phone.sipmob("transfer", "1", "--to", "desk-phone").returncode == 0
    start = len(home.desk.events)
    done = home.phone.sipmob("transfer", "1", "--to", "lounge")
    assert done.returncode == 0, done.stderr + home.phone.output()
    assert done.stdout.strip() == "call 1: audio on Lounge via transcoder: PCMA <-> G722"
    home.desk.wait_call_event("CALL_CLOSED", start=start)
    assert until(lambda: transcoder_calls(t) == (2, 1), 5), t.output()
    assert "call 1 ended" in t.output()  # the desk phone's, not the new one
    [call] = home.phone.calls()
    assert call["devices"][0] == lounge.uri and len(call["devices"]) == 2
    assert until(lambda: hears(home.dir / "lounge-rec", 440.0), 15), "the lounge does not hear the CN"
    done = home.phone.sipmob("retrieve", "1")
    assert done.returncode == 0 and done.stdout.strip().endswith("transcoder released")
    assert until(lambda: transcoder_calls(t) == (2, 2), 5), t.output()


def test_the_cn_hanging_up_ends_the_transcoder_leg(home: Home) -> None:
    t = home.start_transcoder()
    home.call()
    assert home.phone.sipmob("transfer", "1", "--to", "desk-phone").returncode == 0
    start = len(home.desk.events)
    home.cn.hangup()
    home.desk.wait_call_event("CALL_CLOSED", start=start)
    assert until(lambda: transcoder_calls(t) == (1, 1), 5), t.output()
    assert until(lambda: home.phone.calls() == [])


def test_a_restarted_phone_takes_the_transcoder_leg_back_and_hangup_ends_it(home: Home) -> None:
    t = home.start_transcoder()
    home.call()
    assert home.phone.sipmob("transfer", "1", "--to", "desk-phone").returncode == 0
    home.phone.kill()
    home.phone.restart()
    listed = home.phone.sipmob("calls")
    assert "via transcoder: PCMA <-> PCMU" in listed.stdout, listed.stdout + home.phone.output()
    start = len(home.desk.events)
    done = home.phone.sipmob("hangup", "1")
    assert done.returncode == 0, done.stderr
    home.desk.wait_call_event("CALL_CLOSED", start=start)
    assert until(lambda: transcoder_calls(t) == (1, 1), 5), t.output()


def test_a_cn_moving_its_media_is_followed_by_the_transcoder_not_the_device(tmp_path: Path) -> None:
    """PJSIP as the CN (G.711, no Opus here), an Opus-only baresip as the device: the call goes
    through the transcoder as PCMU <-> Opus; then the CN re-INVITEs with a new RTP port (as after a
    network change): the transcoder is re-INVITEd with it, the device is left alone, and the CN
    gets converted audio at its new port."""
    pytest.importorskip("pjsua2")
    from tests.peers.pjsua import Pjsua
    from tests.peers.ports import free_udp_port

    (tmp_path / "da").mkdir()
    (tmp_path / "tx").mkdir()
    (tmp_path / "mn").mkdir()
    started: list[Any] = []
    try:
        da = Slpda(tmp_path / "da").start()
        started.append(da)
        t = Transcoder(tmp_path / "tx", slp=f'das = ["{HOST}:{da.port}"]\nupdate_interval = 0.5')
        t.start()
        started.append(t)
        cn = Pjsua(free_udp_port(), "cn", workdir=tmp_path / "cn")
        started.append(cn)
        speaker = OpusBaresip(tmp_path, user="speaker", codecs="opus/48000/2", record_dir=tmp_path / "sp-rec")
        started.append(speaker)
        with da.client() as slp:
            slp.register(speaker.uri, "(name=Speaker),(media=audio-sendrecv),(audio-codecs=opus)")
        phone = Phone(tmp_path / "mn", f"{HOST}:{da.port}", auto_answer=True)
        started.append(phone)
        assert phone.sipmob("call", cn.uri).returncode == 0
        cn.wait_call_state("CONFIRMED", timeout=5)
        call = int(cn.calls()[0]["id"])
        done = phone.sipmob("transfer", "1", "--to", "speaker")
        if done.returncode != 0 and "no common" not in done.stderr:
            pytest.fail(done.stderr + phone.output())
        if "via transcoder" not in done.stdout:
            pytest.skip(f"this PJSIP shares a codec with an Opus-only device: {done.stdout}{done.stderr}")
        assert done.stdout.strip().endswith("via transcoder: PCMU <-> Opus"), done.stdout
        assert until(lambda: hears(tmp_path / "sp-rec", 440.0) or dec_wav(tmp_path / "sp-rec"), 10)
        before = cn.stream(call)
        speaker_events = len(speaker.events)
        cn.reinvite_new_media(call)
        assert until(lambda: t.output().count("call 1 updated") == 2, 10), t.output() + phone.output()
        assert until(lambda: cn.stream(call)["local_rtp"] != before["local_rtp"], 5)
        moved = cn.stream(call)
        assert until(lambda: cn.stream(call)["rx_packets"] > moved["rx_packets"] + 50, 10), \
            (moved, cn.stream(call), t.output())
        port = int(str(moved["local_rtp"]).rsplit(":", 1)[1])
        assert f"A ('127.0.0.1', {port})" in t.output()  # the transcoder sends to the CN's new port
        assert not any(e.get("type") in ("CALL_CLOSED", "CALL_UPDATE")
                       for e in speaker.events[speaker_events:])
        assert "via transcoder: PCMU <-> Opus" in phone.sipmob("calls").stdout
    finally:
        for process in reversed(started):
            process.stop()


def test_split_sends_the_audio_through_the_transcoder_and_the_video_to_display_and_camera(
        tmp_path: Path) -> None:
    """A CN with PCMA audio and VP8 video (baresip, fakevideo); `split` with the audio to a
    PCMU-only desk phone: the audio goes through the transcoder, then the video is split."""
    from test_phone_video import FAKEVIDEO, VideoBaresip, VideoDevice

    if not FAKEVIDEO.exists():
        pytest.skip("baresip's fakevideo module is not installed")
    (tmp_path / "da").mkdir()
    (tmp_path / "tx").mkdir()
    started: list[Any] = []
    try:
        da = Slpda(tmp_path / "da").start()
        started.append(da)
        t = Transcoder(tmp_path / "tx", slp=f'das = ["{HOST}:{da.port}"]\nupdate_interval = 0.5')
        t.start()
        started.append(t)
        cn = VideoBaresip(tmp_path, user="cn", codecs="PCMA")
        started.append(cn)
        desk = Baresip(tmp_path, user="desk", codecs="PCMU", record_dir=tmp_path / "desk-rec")
        started.append(desk)
        tv, cam = VideoDevice("tv"), VideoDevice("cam")
        started += [tv, cam]
        with da.client() as slp:
            slp.register(desk.uri, "(name=Desk phone),(media=audio-sendrecv),(audio-codecs=PCMU)")
            slp.register(tv.uri, "(name=Screen),(media=video-sendrecv),(video-codecs=VP8)")
            slp.register(cam.uri, "(name=Camera),(media=video-sendonly),(video-codecs=VP8)")
        phone = Phone(tmp_path, f"{HOST}:{da.port}", auto_answer=True)
        started.append(phone)
        cn.dial(phone.uri)
        assert until(lambda: phone.calls() and phone.calls()[0]["video_received"] > 5), phone.output()
        done = phone.sipmob("split", "1", "--video-out", "screen", "--video-in", "camera", "--audio",
                            "desk-phone")
        assert done.returncode == 0, done.stderr + phone.output() + t.output()
        assert done.stdout.strip() == ("call 1: audio on Desk phone; video out on Screen, video in from "
                                       "Camera (audio via transcoder: PCMA <-> PCMU)")
        assert tv.probe.wait_for_packets(5, 5.0), "the CN's video did not reach the display"
        assert until(lambda: hears(tmp_path / "desk-rec", 440.0), 15), "the desk phone does not hear the CN"
        [call] = phone.calls()
        assert call["streams"][0]["transcoder"] == "via transcoder: PCMA <-> PCMU"
        assert sorted(call["devices"]) == sorted([desk.uri, tv.uri, cam.uri, t.uri])
    finally:
        for process in reversed(started):
            process.stop()


def test_a_transcoder_that_stops_mid_call_is_reported_and_the_call_can_be_retrieved(home: Home) -> None:
    t = home.start_transcoder()
    home.call()
    assert home.phone.sipmob("transfer", "1", "--to", "desk-phone").returncode == 0
    t.stop()  # it sends BYE for its calls as it stops
    assert until(lambda: "ended its leg: Desk phone hears nothing now" in home.phone.output(), 10), \
        home.phone.output()
    [call] = home.phone.calls()
    assert "transcoder" not in call["streams"][0] and t.uri not in call["devices"]
    done = home.phone.sipmob("retrieve", "1")
    assert done.returncode == 0, done.stderr + home.phone.output()
    assert done.stdout.strip() == "call 1: audio on this phone"
    before = home.phone.received()
    assert until(lambda: home.phone.received() > before + 20), "the CN's audio did not come back"


def test_a_transcoder_registered_by_a_host_the_da_does_not_trust_gets_no_audio(tmp_path: Path) -> None:
    """Attack: a stranger on the LAN (here 127.0.0.2, outside the DA's trusted 127.0.0.1/32)
    registers a ``service:sip-transcoder`` with plenty of free channels; the phone must not send
    it the call (not even the INVITE), and says why."""
    import socket

    (tmp_path / "da").mkdir()
    da = Slpda(tmp_path / "da", config='[registration]\ntrusted = ["127.0.0.1/32"]\n').start()
    trap = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    trap.bind((HOST, 0))
    trap.settimeout(0.1)
    started: list[Any] = [da]
    try:
        cn = OpusBaresip(tmp_path, user="cn", codecs=CN_CODECS)
        started.append(cn)
        desk = Baresip(tmp_path, user="desk", codecs="PCMU")
        started.append(desk)
        with da.client() as slp:
            slp.register(desk.uri, "(name=Desk phone),(media=audio-sendrecv),(audio-codecs=PCMU)")
        fake = f"sip:transcoder@{HOST}:{trap.getsockname()[1]}"
        with da.client(bind="127.0.0.2") as stranger:
            ack = stranger.register(fake, "(audio-codecs=PCMU,PCMA,opus),(free-channels=1000),trusted",
                                    service_type="service:sip-transcoder")
            assert ack.error == 0, ack
        phone = Phone(tmp_path, f"{HOST}:{da.port}", auto_answer=True)
        started.append(phone)
        assert phone.sipmob("call", cn.uri).returncode == 0
        done = phone.sipmob("transfer", "1", "--to", "desk-phone")
        assert done.returncode == 1
        assert f", and no transcoder the DA trusts converts between {CN_SIDE} and PCMU (1 registered by " \
               "others); the call stays as it was" in done.stderr, done.stderr
        try:
            got = trap.recv(2048)
        except TimeoutError:
            got = b""
        assert got == b"", got
        [call] = phone.calls()
        assert call["streams"][0]["where"] == "this phone" and call["devices"] == []
    finally:
        trap.close()
        for process in reversed(started):
            process.stop()
