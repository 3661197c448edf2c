"""`sipmob-mdsm` with baresip as the audio member (late offer, Fig. 6 messages 3-4, and an early
offer in MNC mode), PJSIP as the CN, `sipmob phone` as the mobile node, member.py as a video member
(baresip refuses audio-less calls). Evidence: baresip's own events, its SIP trace and its recording
of what it received growing, PJSIP's log, the MDSM's log.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.peers.baresip import BARESIP, Baresip
from tests.peers.pjsua import Pjsua
from tests.peers.ports import free_udp_port

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "slpda"), str(HERE.parent / "mn"), str(HERE)]
from mdsm_process import HOST, Mdsm, Member  # noqa: E402
from phone_process import Phone, until  # noqa: E402
from slpda_process import Slpda  # noqa: E402

pytest.importorskip("pjsua2")
pytestmark = [pytest.mark.peer,
              pytest.mark.skipif(BARESIP is None, reason="baresip is not installed (apt baresip-core)")]


@pytest.fixture
def home(tmp_path: Path) -> Iterator[dict[str, Any]]:
    for d in ("da", "mn", "mdsm", "cn"):
        (tmp_path / d).mkdir()
    da = Slpda(tmp_path / "da").start()
    started: list[Any] = []
    try:
        address = f"{HOST}:{da.port}"
        cn = Pjsua(free_udp_port(), "cn", workdir=tmp_path / "cn")
        started.append(cn)
        speaker = Baresip(tmp_path, user="speaker", record_dir=tmp_path / "speaker-rec", sip_trace=True)
        started.append(speaker)
        tv = Member("tv", "video", "recvonly")
        started.append(tv)
        mdsm = Mdsm(tmp_path / "mdsm", address,
                    '[[system]]\nname = "living-room"\nmembers = ["speaker", "tv"]\n'
                    'owners = ["sip:mn@127.0.0.1"]\n')
        (mdsm.devices / "speaker.toml").write_text(f'uri = "{speaker.uri}"\naudio = "sendrecv"\n')
        (mdsm.devices / "tv.toml").write_text(f'uri = "{tv.uri}"\nvideo = "recvonly"\n')
        mdsm.start()
        started.append(mdsm)
        phone = Phone(tmp_path / "mn", address, auto_answer=True)
        started.append(phone)
        assert until(lambda: "living-room" in phone.sipmob("devices", "--json").stdout, timeout=10), \
            mdsm.output()
        yield {"phone": phone, "cn": cn, "speaker": speaker, "tv": tv, "mdsm": mdsm,
               "rec": tmp_path / "speaker-rec"}
    finally:
        for peer in reversed(started):
            peer.stop()
        da.stop()


def recorded(directory: Path) -> int:
    """Bytes of what baresip decoded from the RTP it received (its -dec.wav grows as RTP comes)."""
    return sum(p.stat().st_size for p in directory.glob("*-dec.wav"))


def call(home: dict[str, Any]) -> None:
    phone, cn = home["phone"], home["cn"]
    out = phone.sipmob("call", cn.uri)
    assert out.returncode == 0, out.stderr + phone.output()
    cn.wait_call_state("CONFIRMED", timeout=5)


def test_handoff_with_baresip_taking_a_late_offer(home: dict[str, Any]) -> None:
    phone, cn, speaker, tv, mdsm = home["phone"], home["cn"], home["speaker"], home["tv"], home["mdsm"]
    call(home)
    out = phone.sipmob("transfer", "1", "--to", "living-room", "--mode", "handoff")
    assert out.returncode == 0, out.stderr + phone.output() + mdsm.output()
    cn.wait_event(lambda e: e["event"] == "replaced", timeout=10)
    speaker.wait_call_event("CALL_ESTABLISHED", timeout=5)
    assert tv.wait("established", 5)
    # baresip's INVITE had no body: its 200 carried the offer, which reached PJSIP stitched
    invite = baresip_invite(speaker)
    assert "Content-Length: 0" in invite or "Content-Length:0" in invite, invite
    assert until(lambda: recorded(home["rec"]) > 16000, 10), "no audio from the CN reached baresip"
    grown = recorded(home["rec"])
    assert until(lambda: recorded(home["rec"]) > grown + 8000, 5), "the CN's audio stopped"
    cn.hangup()
    speaker.wait_call_event("CALL_CLOSED", timeout=10)
    assert tv.wait("terminated bye", 10)


def test_the_phone_hangs_up_a_call_handed_over_with_baresip_as_a_member(home: dict[str, Any]) -> None:
    """`sipmob hangup` on a call the phone handed to the virtual device: the MDSM's BYEs reach
    PJSIP, baresip and the video member; the phone's list is then empty."""
    phone, cn, speaker, tv, mdsm = home["phone"], home["cn"], home["speaker"], home["tv"], home["mdsm"]
    call(home)
    out = phone.sipmob("transfer", "1", "--to", "living-room", "--mode", "handoff")
    assert out.returncode == 0, out.stderr + phone.output() + mdsm.output()
    cn.wait_event(lambda e: e["event"] == "replaced", timeout=10)
    speaker.wait_call_event("CALL_ESTABLISHED", timeout=5)
    assert tv.wait("established", 5)
    assert "(speaker, tv)" in phone.sipmob("calls").stdout
    n = len(cn.events)
    out = phone.sipmob("hangup", "1")
    assert out.returncode == 0 and "hung up by" in out.stdout, out.stdout + out.stderr + mdsm.output()
    speaker.wait_call_event("CALL_CLOSED", timeout=10)
    assert tv.wait("terminated bye", 10)
    cn.wait_call_state("DISCONNECTED", timeout=10, start=n)
    assert phone.calls() == []


def baresip_invite(speaker: Baresip) -> str:
    """The INVITE baresip received, from its SIP trace."""
    log = speaker.log()
    start = log.find("INVITE sip:")
    return log[start:start + 2000] if start >= 0 else log[-2000:]


def test_mnc_mode_the_phone_invites_the_virtual_device_and_baresip_gets_the_audio(
        home: dict[str, Any]) -> None:
    phone, cn, speaker, tv, mdsm = home["phone"], home["cn"], home["speaker"], home["tv"], home["mdsm"]
    call(home)
    out = phone.sipmob("transfer", "1", "--to", "living-room", "--mode", "mnc")
    assert out.returncode == 0, out.stderr + phone.output() + mdsm.output()
    speaker.wait_call_event("CALL_ESTABLISHED", timeout=5)
    assert until(lambda: recorded(home["rec"]) > 8000, 10), "no audio from the CN reached baresip"
    assert "split over speaker" in mdsm.output()
    assert tv.count("established") == 0  # the CN's session has no video: the TV is not called
    # the phone re-INVITEd PJSIP with the MDSM's answer, which carried baresip's description
    (only,) = cn.calls()
    assert only["state"] == "CONFIRMED"
    assert until(lambda: "a=tool:baresip" in cn.log().rsplit("INVITE sip:", 1)[-1], 5)
