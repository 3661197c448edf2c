"""Moving a call with video in Mobile Node Control mode, end to end, with baresip (fakevideo, VP8)
as the CN and the device, the real `sipmob-slpda`, and `sipmob phone` as a process.

Evidence: the ``sipmob`` command's line, the phone's own video counter (the CN stops sending it
video, and starts again on retrieval), and the device's log, where baresip says video RTP arrived.

For two devices (Fig. 3) and the display+camera split (§5.2.2) the video devices are
tests/integration/mn/video_device.py (sipmob's UA answering for video, its RTP received by a probe
in the test): baresip 1.0.0 refuses an INVITE whose audio stream is disabled ("no common audio
codecs", 488), so it cannot be a video-only device. The CN stays baresip.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.peers.baresip import BARESIP, Baresip
from tests.peers.ports import free_udp_port
from tests.peers.rtp import RtpProbe

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / "slpda"), str(Path(__file__).resolve().parent)]
from phone_process import ENV, Phone, until  # noqa: E402
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

    def stop(self, timeout: float = 1.0) -> None:
        # With fakevideo running, baresip 1.0.0 ignores SIGTERM: do not wait the default 5 s for it
        # before the SIGKILL (both by PID).
        super().stop(timeout)


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


class VideoDevice:
    """tests/integration/mn/video_device.py as a process; its RTP lands in `probe`."""

    def __init__(self, user: str) -> None:
        self.probe = RtpProbe()
        self.port = free_udp_port()
        self.uri = f"sip:{user}@127.0.0.1:{self.port}"
        program = Path(__file__).resolve().parent / "video_device.py"
        argv = [sys.executable, str(program), str(self.port), user, str(self.probe.port)]
        self.proc = subprocess.Popen(argv, env=ENV, text=True, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL)
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "ready"

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.probe.stop()


@pytest.fixture
def split_home(tmp_path: Path) -> Iterator[dict[str, Any]]:
    (tmp_path / "da").mkdir()
    da = Slpda(tmp_path / "da").start()
    stoppable: list[Any] = []
    phone: Phone | None = None
    try:
        cn = VideoBaresip(tmp_path, user="cn")
        stoppable.append(cn)
        desk = Baresip(tmp_path, user="desk")
        stoppable.append(desk)
        tv = VideoDevice("tv")
        stoppable.append(tv)
        cam = VideoDevice("cam")
        stoppable.append(cam)
        with da.client() as slp:
            slp.register(desk.uri, "(name=Desk phone),(media=audio-sendrecv),(audio-codecs=PCMU)")
            slp.register(tv.uri, "(name=Screen),(media=video-sendrecv),(video-codecs=VP8)")
            slp.register(cam.uri, "(name=Camera),(media=video-sendonly),(video-codecs=VP8)")
        phone = Phone(tmp_path, f"{HOST}:{da.port}", auto_answer=True)
        cn.dial(phone.uri)
        assert until(lambda: phone.calls()), phone.output()
        assert until(lambda: phone.calls()[0]["video_received"] > 5), "no video from the CN"
        yield {"phone": phone, "cn": cn, "desk": desk, "tv": tv, "cam": cam}
    finally:
        if phone is not None:
            phone.stop()
        for peer in stoppable:
            peer.stop()
        da.stop()


def test_audio_and_video_to_two_devices_figure_3(split_home: dict[str, Any]) -> None:
    phone, desk, tv = split_home["phone"], split_home["desk"], split_home["tv"]
    done = phone.sipmob("transfer", "1", "--to", "desk-phone,screen")
    assert done.returncode == 0, done.stderr + phone.output()
    assert done.stdout.strip() == "call 1: audio on Desk phone; video on Screen"
    desk.wait_call_event("CALL_ESTABLISHED")
    assert tv.probe.wait_for_packets(5, 5.0), "the CN's video did not reach the screen"
    time.sleep(0.5)
    settled = video_count(phone)
    time.sleep(1.0)
    assert video_count(phone) - settled <= 1


def test_video_split_between_display_and_camera(split_home: dict[str, Any]) -> None:
    phone, tv, cam = split_home["phone"], split_home["tv"], split_home["cam"]
    done = phone.sipmob("split", "1", "--video-out", "screen", "--video-in", "camera")
    assert done.returncode == 0, done.stderr + phone.output()
    assert done.stdout.strip() == "call 1: audio on this phone; video out on Screen, video in from Camera"
    assert tv.probe.wait_for_packets(5, 5.0), "the CN's video did not reach the display"
    assert cam.probe.packets == []  # the CN sends to the display only
    [call] = phone.calls()
    assert {k: call["streams"][1][k] for k in ("media", "where")} == {
        "media": "video", "where": "out on Screen, in from Camera"}
    assert sorted(call["devices"]) == sorted([tv.uri, cam.uri])
