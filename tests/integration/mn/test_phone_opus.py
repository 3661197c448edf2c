"""The phone speaks Opus (RFC 7587) with an Opus-only party, whichever side calls.

baresip with only ``opus/48000/2`` (its Opus module, libopus) calls the phone and is called by it.
The phone sends its 440 Hz tone, baresip a 1 kHz WAV; the phone records what it receives (a WAV
at 48 kHz, Opus' clock) and baresip what it decodes: each must peak at the other's frequency,
loud and clean (SNR of a sine fit), which it can only do if each side's Opus was decoded by the
other. tshark decodes the SIP and SDP without a malformed packet, and the phone's description
names Opus as RFC 7587 §7 says (``opus/48000/2``) with its fmtp, after G.711.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.integration.transcoder.test_transcoder import OpusBaresip, analyse, dec_wav, write_tone_wav
from tests.peers.baresip import BARESIP
from tests.peers.tshark import TSHARK, LiveCapture, fields, malformed

from sipmob.media.codecs import opus_available

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / "slpda"), str(Path(__file__).resolve().parent)]
from phone_process import Phone, until  # noqa: E402
from slpda_process import HOST, Slpda  # noqa: E402

pytestmark = [pytest.mark.peer,
              pytest.mark.skipif(BARESIP is None, reason="baresip is not installed (apt baresip-core)"),
              pytest.mark.skipif(not opus_available(), reason="libopus0 is not installed")]


class Pair:
    """The DA, the phone (recording what it hears) and an Opus-only baresip."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.processes: list[Any] = []
        (directory / "da").mkdir()
        self.da = Slpda(directory / "da").start()
        self.processes.append(self.da)
        wav = write_tone_wav(directory / "1k.wav", 1000.0, rate=48000)
        self.cn = OpusBaresip(directory, user="cn", codecs="opus/48000/2", audio=wav,
                              record_dir=directory / "cn-rec")
        self.processes.append(self.cn)
        (directory / "mn-rec").mkdir()
        self.phone = Phone(directory, f"{HOST}:{self.da.port}", auto_answer=True,
                           extra=f'[media]\nrecord = "{directory / "mn-rec"}"\n')
        self.processes.append(self.phone)
        self.capture = None
        if TSHARK is not None:
            self.capture = LiveCapture(directory / "sip.pcap",
                                       f"udp and host 127.0.0.1 and port {self.phone.port}")

    def stop(self) -> None:
        if self.capture is not None:
            self.capture.stop()
        for process in reversed(self.processes):
            process.stop()


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    p = Pair(tmp_path)
    try:
        yield p
    finally:
        p.stop()


def check_opus_both_ways(p: Pair) -> str:
    """The phone hears baresip's 1 kHz, baresip the phone's 440 Hz, both through Opus."""
    [call] = p.phone.calls()
    assert call["streams"][0]["codec"] == "opus/48000/2", call
    mine = p.dir / "mn-rec" / f"call-{call['id']}.wav"

    def phone_hears() -> bool:
        peak, rms, snr = analyse(mine, 1000.0) if mine.exists() else (0.0, -200.0, -200.0)
        return abs(peak - 1000) < 5 and rms > -20 and snr > 15

    def cn_hears() -> bool:
        path = dec_wav(p.dir / "cn-rec")
        if path is None:
            return False
        peak, rms, snr = analyse(path, 440.0)
        return abs(peak - 440) < 5 and rms > -20 and snr > 15

    assert until(phone_hears, 15), (analyse(mine, 1000.0) if mine.exists() else "no recording",
                                    p.phone.output())
    assert until(cn_hears, 15), analyse(dec_wav(p.dir / "cn-rec") or mine, 440.0)
    cn_wav = dec_wav(p.dir / "cn-rec")
    assert cn_wav is not None
    peak_mn, rms_mn, snr_mn = analyse(mine, 1000.0)
    peak_cn, rms_cn, snr_cn = analyse(cn_wav, 440.0)
    report = (f"phone heard {peak_mn:.0f} Hz {rms_mn:.1f} dBFS SNR {snr_mn:.1f} dB; "
              f"CN heard {peak_cn:.0f} Hz {rms_cn:.1f} dBFS SNR {snr_cn:.1f} dB")
    print(report)
    return report


def check_capture(p: Pair) -> None:
    if p.capture is None:
        return
    path = p.capture.stop()
    p.capture = None
    assert malformed(path, "sip") == "" and malformed(path, "sdp") == ""
    # the phone's answer (from its SIP port): Opus as RFC 7587 §7 names it, with our fmtp
    ours = fields(path, f"sdp && udp.srcport == {p.phone.port}", "sdp.media_attr")
    assert ours, "no SDP from the phone in the capture"
    [attrs] = ours[0]
    assert "opus/48000/2" in attrs and "useinbandfec=1" in attrs, attrs
    assert "sprop-stereo" not in attrs, attrs  # our own fmtp in the answer, not the offer's echoed


def test_an_opus_only_caller_reaches_the_phone_and_each_hears_the_other(pair: Pair) -> None:
    pair.cn.dial(pair.phone.uri)
    assert until(lambda: pair.phone.calls() and pair.phone.received() > 20, 10), pair.phone.output()
    check_opus_both_ways(pair)
    check_capture(pair)


def test_the_phone_calls_an_opus_only_party_and_each_hears_the_other(pair: Pair) -> None:
    done = pair.phone.sipmob("call", pair.cn.uri)
    assert done.returncode == 0, done.stderr + pair.phone.output()
    assert until(lambda: pair.phone.received() > 20, 10), pair.phone.output()
    check_opus_both_ways(pair)
    if pair.capture is not None:
        path = pair.capture.stop()
        pair.capture = None
        assert malformed(path, "sip") == "" and malformed(path, "sdp") == ""
        [offer] = fields(path, f"sip.Method == INVITE && udp.srcport == {pair.phone.port}", "sdp.media")
        # G.711 first (what every other device of the house speaks), Opus after it
        assert offer[0].split(" ")[3:6] == ["0", "8", "111"], offer
