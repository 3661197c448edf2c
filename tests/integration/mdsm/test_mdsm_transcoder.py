"""`sipmob-mdsm` reaching a member through `sipmob-transcoder` when it shares no codec with the CN.

Every party is a real process on loopback: the DA (`sipmob-slpda`), the transcoder (registered in
the DA, found by the MDSM), `sipmob phone` as the mobile node handing its call over, baresip as
the CN speaking Opus (and PCMA, the phone's own codec: the phone speaks G.711 only, so an
Opus-only CN could not call it at all), baresip as the virtual device's speaker speaking PCMU
only. The CN's OPTIONS answer lists Opus first, the speaker offers PCMU alone: the MDSM invokes
the transcoder and offers the CN its Opus side. Evidence that audio is converted both ways comes
from what each baresip decodes: the CN sends baresip's 440 Hz sine, the speaker a 1 kHz WAV; each
recording must peak at the other's frequency, which it can only do if Opus was decoded and
re-encoded as PCMU and back. tshark decodes the SIP and SDP of the exchange without a malformed
packet. Also: the CN's BYE ends the transcoder's leg; an MDSM killed with -9 and restarted takes
the leg back and a CN BYE still ends it; with no transcoder the speaker's audio is disabled
(port 0) with one clear line.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.integration.transcoder.test_transcoder import OpusBaresip, analyse, write_tone_wav
from tests.integration.transcoder.transcoder_process import Transcoder
from tests.peers.baresip import BARESIP, Baresip
from tests.peers.tshark import TSHARK, LiveCapture, fields, malformed

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "slpda"), str(HERE.parent / "mn"), str(HERE)]
from mdsm_process import HOST, Mdsm  # noqa: E402
from phone_process import Phone, until  # noqa: E402
from slpda_process import Slpda  # noqa: E402
from test_phone_transcoder import transcoder_calls  # noqa: E402

pytestmark = [pytest.mark.peer,
              pytest.mark.skipif(BARESIP is None, reason="baresip is not installed (apt baresip-core)")]


class Home:
    """The DA, the MDSM with a living room of a PCMU-only speaker (and a video member), the
    phone, the Opus CN; the transcoder started on demand."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.started: list[Any] = []
        for d in ("da", "mn", "mdsm", "tx"):
            (directory / d).mkdir()
        self.da = Slpda(directory / "da").start()
        self.started.append(self.da)
        self.address = f"{HOST}:{self.da.port}"
        self.transcoder: Transcoder | None = None
        self.cn = OpusBaresip(directory, user="cn", codecs="opus/48000/2,PCMA",
                              record_dir=directory / "cn-rec")
        self.started.append(self.cn)
        wav = write_tone_wav(directory / "1k.wav", 1000.0)
        self.speaker = Baresip(directory, user="speaker", codecs="PCMU", audio=wav,
                               record_dir=directory / "speaker-rec")
        self.started.append(self.speaker)
        self.mdsm = Mdsm(directory / "mdsm", self.address,
                         '[[system]]\nname = "living-room"\nmembers = ["speaker"]\n'
                         'owners = ["sip:mn@127.0.0.1"]\n')
        (self.mdsm.devices / "speaker.toml").write_text(f'uri = "{self.speaker.uri}"\naudio = "sendrecv"\n')
        self.mdsm.start()
        self.started.append(self.mdsm)
        self.phone = Phone(directory / "mn", self.address, auto_answer=True)
        self.started.append(self.phone)
        assert until(lambda: "living-room" in self.phone.sipmob("devices", "--json").stdout, timeout=10), \
            self.mdsm.output()

    def start_transcoder(self, channels: int = 20) -> Transcoder:
        self.transcoder = Transcoder(self.dir / "tx", channels=channels,
                                     slp=f'das = ["{self.address}"]\nupdate_interval = 0.5')
        self.transcoder.start()
        with self.da.client() as slp:
            def registered() -> bool:
                reply = slp.udp(slp.srv_rqst("service:sip-transcoder"))
                return bool(getattr(reply, "urls", ()))

            assert until(registered, 10), self.transcoder.output()
        return self.transcoder

    def hand_over(self) -> None:
        done = self.phone.sipmob("call", self.cn.uri)
        assert done.returncode == 0, done.stderr + self.phone.output()
        assert until(lambda: self.phone.received() > 20), "no RTP from the CN"
        # baresip names a call's recording after the second it started: the call with the MDSM
        # must start in another second than the one with the phone, or it reuses the same file
        first = sorted((self.dir / "cn-rec").glob("*-dec.wav"))
        assert first, "the CN records nothing"
        assert until(lambda: time.strftime("%Y-%m-%d-%H-%M-%S") > first[0].name[5:24], 5)
        out = self.phone.sipmob("transfer", "1", "--to", "living-room", "--mode", "handoff")
        assert out.returncode == 0, out.stderr + self.phone.output() + self.mdsm.output()

    def stop(self) -> None:
        if self.transcoder is not None:
            self.transcoder.stop()
        for process in reversed(self.started):
            process.stop()


def hears(directory: Path, freq: float) -> bool:
    """The newest call's recording (the CN's first one is its call with the phone) peaks at
    ``freq``, loud."""
    found = sorted(directory.glob("*-dec.wav"))
    if not found:
        return False
    peak, rms, _ = analyse(found[-1], freq)
    return abs(peak - freq) < 5 and rms > -30


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Home]:
    h = Home(tmp_path)
    try:
        yield h
    finally:
        h.stop()


def test_a_pcmu_member_hears_an_opus_cn_through_the_transcoder_and_the_cn_bye_releases_it(
        home: Home, tmp_path: Path) -> None:
    t = home.start_transcoder()
    capture = None
    if TSHARK is not None:
        capture = LiveCapture(tmp_path / "sip.pcap", f"udp and host 127.0.0.1 and (port {home.mdsm.port} "
                              f"or port {t.port})")
    try:
        home.hand_over()
        home.speaker.wait_call_event("CALL_ESTABLISHED", timeout=10)
        assert until(lambda: "via transcoder: Opus <-> PCMU" in home.mdsm.output(), 10), home.mdsm.output()
        # Both ways converted: the speaker decodes PCMU at the CN's 440 Hz, the CN Opus at 1 kHz.
        assert until(lambda: hears(tmp_path / "speaker-rec", 440.0), 20), "the speaker does not hear the CN"
        assert until(lambda: hears(tmp_path / "cn-rec", 1000.0), 20), "the CN does not hear the speaker"
        assert transcoder_calls(t) == (1, 0), t.output()
        if capture is not None:
            path = capture.stop()
            capture = None
            assert malformed(path, "sip") == "" and malformed(path, "sdp") == ""
            invites = fields(path, f"sip.Method == INVITE && udp.dstport == {t.port}", "sdp.media")
            assert invites and len(invites[0][0].split(",")) == 2, invites  # "SDP A + SDP B"
            # the CN was offered the transcoder's Opus side, not the speaker's PCMU
            to_cn = fields(path, f"sip.Method == INVITE && udp.dstport == {home.cn.port}", "sdp.media",
                           "sdp.media_attr")
            assert to_cn and " 0 " not in f"{to_cn[-1][0]} ", to_cn  # no PCMU (payload type 0)
            assert "opus/48000" in to_cn[-1][1].lower(), to_cn
            # the referrer is told in the final NOTIFY's sipfrag
            frags = [row[0] for row in fields(path, "sip.Method == NOTIFY", "sipfrag.line")]
            assert "SIP/2.0 200 OK (speaker via transcoder: Opus <-> PCMU)" in frags, frags
        start = len(home.speaker.events)
        home.cn.hangup()
        home.speaker.wait_call_event("CALL_CLOSED", start=start, timeout=10)
        assert until(lambda: transcoder_calls(t) == (1, 1), 10), t.output()
        assert "transcoder" in home.mdsm.output().rsplit("the CN's leg ended", 1)[-1]
    finally:
        if capture is not None:
            capture.stop()


def test_a_restarted_mdsm_keeps_the_transcoder_leg_and_the_cn_bye_still_ends_it(
        home: Home, tmp_path: Path) -> None:
    t = home.start_transcoder()
    home.hand_over()
    home.speaker.wait_call_event("CALL_ESTABLISHED", timeout=10)
    assert until(lambda: "via transcoder: Opus <-> PCMU" in home.mdsm.output(), 10), home.mdsm.output()
    home.mdsm.kill9()
    home.mdsm.start()
    assert until(lambda: "taken up again" in home.mdsm.output(), 10), home.mdsm.output()
    # media never went through the MDSM: the speaker still hears the CN through the transcoder
    assert until(lambda: hears(tmp_path / "speaker-rec", 440.0), 20), "the speaker does not hear the CN"
    start = len(home.speaker.events)
    home.cn.hangup()
    home.speaker.wait_call_event("CALL_CLOSED", start=start, timeout=10)
    assert until(lambda: transcoder_calls(t) == (1, 1), 10), t.output() + home.mdsm.output()


def test_without_a_transcoder_the_speaker_is_left_out_with_a_clear_line_and_the_call_stays(
        home: Home) -> None:
    """No transcoder in the DA: the speaker's audio is disabled (port 0). It is the living room's
    only stream, so nothing is left to offer the CN: the handoff fails, the speaker's leg is
    ended and the call stays on the phone with audio flowing."""
    done = home.phone.sipmob("call", home.cn.uri)
    assert done.returncode == 0, done.stderr + home.phone.output()
    assert until(lambda: home.phone.received() > 20), "no RTP from the CN"
    out = home.phone.sipmob("transfer", "1", "--to", "living-room", "--mode", "handoff")
    assert out.returncode != 0 and "488" in out.stderr, out.stdout + out.stderr
    log = home.mdsm.output()
    assert "member speaker of living-room shares no audio codec" in log, log
    assert "no transcoder in the DA converts between opus/PCMA and PCMU" in log, log
    assert "its audio is disabled (port 0)" in log and "no stream is left for the CN" in log, log
    home.speaker.wait_call_event("CALL_CLOSED", timeout=10)
    [call] = home.phone.calls()
    assert call["state"] == "confirmed", call
    before = home.phone.received()
    assert until(lambda: home.phone.received() > before + 20), "the CN's audio stopped"


def test_a_full_transcoder_answers_503_and_the_speaker_is_left_out_with_a_clear_line(home: Home) -> None:
    t = home.start_transcoder(channels=1)  # registered with a free channel, but a call needs two
    done = home.phone.sipmob("call", home.cn.uri)
    assert done.returncode == 0, done.stderr + home.phone.output()
    out = home.phone.sipmob("transfer", "1", "--to", "living-room", "--mode", "handoff")
    assert out.returncode != 0, out.stdout + out.stderr
    log = home.mdsm.output()
    assert f"and the transcoder {t.uri} refused (503" in log and "its audio is disabled (port 0)" in log, log
    home.speaker.wait_call_event("CALL_CLOSED", timeout=10)
    [call] = home.phone.calls()
    assert call["state"] == "confirmed", call
