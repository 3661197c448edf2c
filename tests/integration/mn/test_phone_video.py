"""Moving a call with video in Mobile Node Control mode, end to end, with baresip (fakevideo, VP8)
as the CN and the device, the real `sipmob-slpda`, and `sipmob phone` as a process.

Evidence: the ``sipmob`` command's line, the phone's own video counter (the CN stops sending it
video, and starts again on retrieval), and the device's log, where baresip says video RTP arrived.

Two devices (Fig. 3) and the display+camera split (§5.2.2) are not here: baresip 1.0.0 refuses an
INVITE whose audio stream is disabled ("no common audio codecs", 488), so it cannot be a video-only
device; the planner's unit tests cover those flows, and this refusal rolls a transfer back as any
device's would.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.peers.baresip import BARESIP, Baresip

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / "slpda"), str(Path(__file__).resolve().parent)]
from phone_process import Phone, until  # noqa: E402
from slpda_process import HOST, Slpda  # noqa: E402

FAKEVIDEO = Path("/usr/lib/baresip/modules/fakevideo.so")
pytestmark = [pytest.mark.peer,
              pytest.mark.skipif(BARESIP is None or not FAKEVIDEO.exists(),
                                 reason="baresip with fakevideo and vp8 is not installed")]


class VideoBaresip(Baresip):
    """baresip with a synthetic camera and a display that shows nothing (fakevideo), VP8."""

    def _write_config(self, *args: Any, **kwargs: Any) -> None:
        super()._write_config(*args, **kwargs)
        config = self.dir / "config"
        config.write_text(config.read_text() + "module vp8.so\nmodule fakevideo.so\n"
                          "video_source fakevideo,nil\nvideo_display fakevideo,nil\n"
                          "video_size 320x240\nvideo_fps 10\n")


def video_arrived(peer: Baresip) -> bool:
    return "incoming rtp for 'video' established" in peer.log()


@pytest.fixture
def home(tmp_path: Path) -> Iterator[dict[str, Any]]:
    (tmp_path / "da").mkdir()
    da = Slpda(tmp_path / "da").start()
    peers: list[Baresip] = []
    phone: Phone | None = None
    try:
        cn = VideoBaresip(tmp_path, user="cn")
        peers.append(cn)
        tv = VideoBaresip(tmp_path, user="tv")
        peers.append(tv)
        with da.client() as slp:
            slp.register(tv.uri, "(name=TV),(media=video-sendrecv,audio-sendrecv),(audio-codecs=PCMU),"
                                 "(video-codecs=VP8)")
        phone = Phone(tmp_path, f"{HOST}:{da.port}", auto_answer=True)
        cn.dial(phone.uri)
        assert until(lambda: phone.calls()), phone.output()
        assert until(lambda: phone.calls()[0]["video_received"] > 5), "no video from the CN"
        yield {"phone": phone, "cn": cn, "tv": tv}
    finally:
        if phone is not None:
            phone.stop()
        for peer in peers:
            peer.stop()
        da.stop()


def video_count(phone: Phone) -> int:
    return int(phone.calls()[0]["video_received"])


def test_audio_and_video_to_a_device_and_back(home: dict[str, Any]) -> None:
    phone, tv = home["phone"], home["tv"]
    done = phone.sipmob("transfer", "1", "--to", "tv")
    assert done.returncode == 0, done.stderr + phone.output()
    assert done.stdout.strip() == "call 1: audio on TV; video on TV"
    assert until(lambda: video_arrived(tv)), tv.log()[-2000:]
    time.sleep(0.5)
    settled = video_count(phone)
    time.sleep(1.0)
    assert video_count(phone) - settled <= 1, "the CN still sends video to the phone"

    start = len(tv.events)
    done = phone.sipmob("retrieve", "1", "--media", "video")
    assert done.returncode == 0, done.stderr + phone.output()
    assert done.stdout.strip() == "call 1: audio on TV; video on this phone"
    before = video_count(phone)
    assert until(lambda: video_count(phone) > before + 5), "the CN's video did not come back"
    assert not any(e.get("type") == "CALL_CLOSED" for e in tv.events[start:])  # it keeps the audio
