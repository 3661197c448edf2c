"""`sipmob-mdsm` end to end: PJSIP as the CN, `sipmob phone` as the mobile node, two basic devices
(member.py, an audio speaker and a video TV) as the members of the virtual device ``living-room``,
the real `sipmob-slpda` where the MDSM registers it.

Fig. 6: the phone hands its call to the virtual device by REFER; the MDSM INVITEs each member
without SDP, INVITEs PJSIP with their offers stitched into one (Replaces, Referred-By), and ACKs
each member with its part of PJSIP's answer; PJSIP's RTP then reaches the speaker's own port. The
MDSM is killed with SIGKILL mid-call and started again: the media never stops, PJSIP's re-INVITE
and then its BYE are handled by the restarted daemon, and the BYE ends every member's leg.
Security: a stranger's REFER gets 403 and no member is invited. Loopback only; every process
stopped by PID.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from tests.peers import tshark
from tests.peers.pjsua import Pjsua
from tests.peers.ports import free_udp_port
from tests.peers.sipmob_ua import SipmobUA

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "slpda"), str(HERE.parent / "mn"), str(HERE)]
from mdsm_process import ENV, HOST, Mdsm, Member  # noqa: E402
from phone_process import Phone, until  # noqa: E402
from slpda_process import Slpda  # noqa: E402
from test_handoff_pjsip import stranger_sends  # noqa: E402

from sipmob.mdsm.store import Store  # noqa: E402

pytest.importorskip("pjsua2")
pytestmark = [pytest.mark.peer]

SYSTEM = ('[[system]]\nname = "living-room"\nmembers = ["living-room-speaker", "tv"]\n'
          'owners = ["sip:mn@127.0.0.1"]\nroom = "living room"\ntitle = "Living room"\n')


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
        speaker = Member("speaker", "audio", "sendrecv")
        started.append(speaker)
        tv = Member("tv", "video", "recvonly")
        started.append(tv)
        mdsm = Mdsm(tmp_path / "mdsm", address, SYSTEM)
        (mdsm.devices / "speaker.toml").write_text(
            f'uri = "{speaker.uri}"\nname = "Living room speaker"\naudio = "sendrecv"\n')
        (mdsm.devices / "tv.toml").write_text(
            f'uri = "{tv.uri}"\nname = "Living room TV"\nvideo = "recvonly"\n')
        mdsm.start()
        started.append(mdsm)
        phone = Phone(tmp_path / "mn", address, auto_answer=True)
        started.append(phone)
        assert until(lambda: "living-room" in phone.sipmob("devices", "--json").stdout, timeout=10), \
            mdsm.output()
        yield {"phone": phone, "cn": cn, "speaker": speaker, "tv": tv, "mdsm": mdsm, "da": da}
    finally:
        for peer in reversed(started):
            peer.stop()
        da.stop()


def call_and_hand_over(home: dict[str, Any]) -> None:
    phone, cn, mdsm = home["phone"], home["cn"], home["mdsm"]
    out = phone.sipmob("call", cn.uri)
    assert out.returncode == 0, out.stderr + phone.output()
    cn.wait_call_state("CONFIRMED", timeout=5)
    out = phone.sipmob("transfer", "1", "--to", "living-room", "--mode", "handoff")
    assert out.returncode == 0, out.stderr + phone.output() + mdsm.output()
    # a NOTIFY at each stage: trying, the members have answered (183), the CN has answered (200)
    assert re.search(r"handed off to .+ \[REFER 202, NOTIFY 100, 183, 200\]", out.stdout), out.stdout
    cn.wait_event(lambda e: e["event"] == "replaced", timeout=10)


def video_off_audio_on(cn: Pjsua) -> bool:
    """Whether the last INVITE PJSIP logged (pjsua writes its log as it goes: poll this) has the
    video line disabled and the audio line active."""
    last = cn.log().rsplit("INVITE sip:", 1)[-1]
    return bool(re.search(r"^m=video 0 ", last, re.M) and re.search(r"^m=audio [1-9]", last, re.M))


def from_cn(member: Member) -> int:
    """RTP packets the member's port got from anyone but the member itself (PJSIP's)."""
    return sum(1 for p in member.probe.snapshot())


def test_devices_lists_the_virtual_device_with_its_members(home: dict[str, Any]) -> None:
    out = home["phone"].sipmob("devices")
    assert out.returncode == 0
    lines = out.stdout.splitlines()
    n = next(i for i, x in enumerate(lines) if x.startswith("living-room"))
    assert "sip:living-room@" in lines[n] and "living room" in lines[n]
    assert lines[n + 1].strip() == "members: speaker, tv", out.stdout


def test_handoff_to_the_virtual_device_survives_kill_9_and_the_cn_bye_ends_every_leg(
        home: dict[str, Any]) -> None:
    cn, speaker, tv, mdsm = home["cn"], home["speaker"], home["tv"], home["mdsm"]
    call_and_hand_over(home)
    assert speaker.wait("established", 5) and tv.wait("established", 5), mdsm.output()
    # Fig. 6 on the wire, as PJSIP saw it: one INVITE with Replaces, Referred-By naming the phone,
    # the members' streams stitched, the attribute nobody knows passed through
    log = cn.log()
    assert re.search(r"^Replaces: ", log, re.M)
    assert re.search(r"^Referred-By: <?sip:mn@127\.0\.0\.1", log, re.M)
    assert "a=x-member:speaker" in log and "a=x-member:tv" in log
    # RFC 4028 on the CN's leg: the MDSM's INVITE states its session timer
    (replacing,) = [m for m in log.split("--end msg--")
                    if re.search(r"^INVITE sip:.*^Replaces: ", m, re.M | re.S)]
    assert re.search(r"^Session-Expires: \d+", replacing, re.M), replacing
    assert re.search(r"^Supported: .*timer", replacing, re.M), replacing
    assert re.search(r"^m=audio \d+ RTP/AVP", log, re.M) and re.search(r"^m=video ", log, re.M)
    # the speaker got its part of PJSIP's answer in its ACK: PJSIP's address and port
    ack = speaker.wait("ack", 5)
    assert ack is not None and "m=audio" in ack and "m=audio 0" not in ack, ack
    assert speaker.probe.wait_for_packets(25, 10), "no RTP from the CN at the speaker"
    (record,) = home["phone"].calls()
    assert record["state"].startswith("handed off")

    mdsm.kill9()
    before = from_cn(speaker)
    time.sleep(1.0)
    assert from_cn(speaker) > before + 25, "media stopped with the MDSM"
    mdsm.start()
    assert until(lambda: "taken up again" in mdsm.output(), 5), mdsm.output()

    # the restarted daemon answers PJSIP's re-INVITE within the restored dialog
    (ours,) = [c for c in cn.calls() if "living-room" in c["remote_uri"]]
    n = len(cn.events)
    cn.reinvite(ours["id"])
    cn.wait_event(lambda e: e["event"] == "media_state", timeout=10, start=n)
    assert until(lambda: "the CN's re-INVITE went to" in mdsm.output(), 5), mdsm.output()
    (ours,) = [c for c in cn.calls() if "living-room" in c["remote_uri"]]
    assert ours["state"] == "CONFIRMED" and ours["last_status"] == 200
    seen = from_cn(speaker)
    assert until(lambda: from_cn(speaker) > seen + 25, 5), "media stopped after the re-INVITE"

    # PJSIP hangs up: the restarted MDSM ends both members' legs
    cn.hangup()
    assert speaker.wait("terminated bye", 10), speaker.lines
    assert tv.wait("terminated bye", 10), tv.lines
    assert "the CN's leg ended (bye)" in mdsm.output()


def test_retrieve_by_nested_refer_releases_the_members(home: dict[str, Any]) -> None:
    phone, cn, speaker, tv, mdsm = home["phone"], home["cn"], home["speaker"], home["tv"], home["mdsm"]
    call_and_hand_over(home)
    before = len(cn.events)
    out = phone.sipmob("retrieve", "1")
    assert out.returncode == 0, out.stderr + phone.output() + mdsm.output()
    assert "retrieved" in out.stdout
    cn.wait_event(lambda e: e["event"] == "replaced", timeout=10, start=before)
    assert speaker.wait("terminated", 10) and tv.wait("terminated", 10), mdsm.output()
    (pc,) = phone.calls()
    assert pc["state"] == "confirmed"
    assert until(lambda: phone.received() > 20), phone.calls()


def test_the_phone_lists_a_call_handed_to_the_virtual_device_and_hangs_it_up(home: dict[str, Any]) -> None:
    """The phone is no longer in the call once PJSIP has BYEd it: ``sipmob calls`` lists it as
    handed off with the virtual device's members, and ``sipmob hangup`` REFERs the MDSM with
    ``Refer-To: <CN;method=BYE>`` and a Target-Dialog naming the call. A stranger who knows the
    dialog identifiers still gets 403 and the call goes on; the phone's own REFER ends PJSIP's
    call and both members' legs."""
    phone, cn, speaker, tv, mdsm = home["phone"], home["cn"], home["speaker"], home["tv"], home["mdsm"]
    call_and_hand_over(home)
    assert speaker.wait("established", 5) and tv.wait("established", 5), mdsm.output()
    out = phone.sipmob("calls")
    assert out.returncode == 0 and "handed off to Living room (speaker, tv)" in out.stdout, out.stdout
    (record,) = phone.calls()
    assert record["members"] == ["speaker", "tv"] and record["handed_off_to"] == "living-room"

    # the worst stranger: one who has learnt the dialog identifiers (from the store, here)
    ((_, _, saved),) = list(Store(mdsm.state).load())
    call_id, _, tags = saved["replaced"].partition(";")
    to_tag = re.search(r"to-tag=([^;]+)", tags).group(1)  # type: ignore[union-attr]
    from_tag = re.search(r"from-tag=([^;]+)", tags).group(1)  # type: ignore[union-attr]
    bye_to = f"Refer-To: <{saved['cn']['uri']};method=BYE>\r\n"
    status = stranger_sends(mdsm.port, "REFER", mdsm.uri("living-room"),
                            f"{bye_to}Target-Dialog: {call_id};local-tag={from_tag};remote-tag={to_tag}\r\n")
    assert status == 403
    seen = from_cn(speaker)
    assert until(lambda: from_cn(speaker) > seen + 25, 5), "media stopped after the stranger's REFER"
    assert speaker.count("terminated") == 0 and tv.count("terminated") == 0
    (ours,) = [c for c in cn.calls() if "living-room" in c["remote_uri"]]
    assert ours["state"] == "CONFIRMED"
    assert len(Store(mdsm.state)) == 1

    n = len(cn.events)
    out = phone.sipmob("hangup", "1")
    assert out.returncode == 0, out.stderr + phone.output() + mdsm.output()
    assert out.stdout.strip() == "call 1 hung up by Living room", out.stdout
    cn.wait_call_state("DISCONNECTED", call=ours["id"], timeout=10, start=n)
    assert speaker.wait("terminated bye", 10) and tv.wait("terminated bye", 10), mdsm.output()
    assert phone.calls() == []
    assert len(Store(mdsm.state)) == 0
    # on the wire: the phone's REFER as the MDSM read it
    assert re.search(r"hangs up: BYE to the CN and to speaker, tv", mdsm.output())
    # with no call left here, a stranger is still told nothing but 403
    assert stranger_sends(mdsm.port, "REFER", mdsm.uri("living-room"), bye_to) == 403


def test_a_phone_killed_after_a_handoff_still_lists_the_call_and_hangs_it_up(home: dict[str, Any]) -> None:
    """The handed-off call is in the phone's SQLite store: after a kill -9 and a restart ``sipmob
    calls`` lists it as before, and ``sipmob hangup`` REFERs the MDSM (method=BYE, Target-Dialog),
    which ends PJSIP's call and both members' legs."""
    phone, cn, speaker, tv, mdsm = home["phone"], home["cn"], home["speaker"], home["tv"], home["mdsm"]
    call_and_hand_over(home)
    assert speaker.wait("established", 5) and tv.wait("established", 5), mdsm.output()
    phone.kill()
    phone.restart()
    out = phone.sipmob("calls")
    assert out.returncode == 0 and "handed off to Living room (speaker, tv)" in out.stdout, \
        out.stdout + out.stderr + phone.output()
    (record,) = phone.calls()
    assert record["id"] == "1" and record["handed_off_to"] == "living-room", record
    (ours,) = [c for c in cn.calls() if "living-room" in c["remote_uri"]]
    n = len(cn.events)
    out = phone.sipmob("hangup", "1")
    assert out.returncode == 0, out.stderr + phone.output() + mdsm.output()
    assert out.stdout.strip() == "call 1 hung up by Living room", out.stdout
    cn.wait_call_state("DISCONNECTED", call=ours["id"], timeout=10, start=n)
    assert speaker.wait("terminated bye", 10) and tv.wait("terminated bye", 10), mdsm.output()
    assert phone.calls() == []
    # and it stays gone: a second restart lists nothing
    phone.kill()
    phone.restart()
    assert phone.calls() == [], phone.output()


def test_tshark_decodes_the_hang_up_refer_its_notify_and_the_byes(home: dict[str, Any]) -> None:
    phone, cn, speaker, mdsm = home["phone"], home["cn"], home["speaker"], home["mdsm"]
    call_and_hand_over(home)
    assert speaker.wait("established", 5), mdsm.output()
    capture = tshark.LiveCapture(mdsm.directory / "hangup.pcapng",
                                 f"udp port {phone.port} or udp port {mdsm.port} or udp port {cn.port}")
    try:
        out = phone.sipmob("hangup", "1")
        assert out.returncode == 0, out.stderr + mdsm.output()
        assert speaker.wait("terminated bye", 10)
    finally:
        path = capture.stop()
    # decoded as SIP by port: an ephemeral port may belong to another dissector's defaults
    decode = [a for p in (phone.port, mdsm.port, cn.port) for a in ("-d", f"udp.port=={p},sip")]
    out = tshark.tshark("-r", str(path), *decode, "-Y", "sip && sip.Request-Line", "-T", "fields",
                        *(a for f in ("sip.Method", "udp.srcport", "udp.dstport", "sip.Refer-To",
                                      "sip.Target-Dialog") for a in ("-e", f)))
    rows = [line.split("\t") for line in out.splitlines() if line]
    sent = {(row[0], int(row[1]), int(row[2])) for row in rows}
    refers = [row for row in rows if row[0] == "REFER"]
    assert len(refers) == 1, rows
    (refer,) = refers
    assert (int(refer[1]), int(refer[2])) == (phone.port, mdsm.port)
    assert "method=BYE" in refer[3] and ";local-tag=" in refer[4] and ";remote-tag=" in refer[4], refer
    assert {("NOTIFY", mdsm.port, phone.port), ("BYE", mdsm.port, cn.port)} <= sent, sent
    assert tshark.malformed(path, "sip") == ""
    assert tshark.expert_errors(path, "sip") == []


def test_hanging_up_a_handed_off_call_the_cn_ended_meanwhile(home: dict[str, Any]) -> None:
    """PJSIP hangs up first: the phone, no longer in the call, still lists it; its hang-up REFER
    gets 481 from the MDSM (no such call) and the phone drops the call from its list."""
    phone, cn, speaker, mdsm = home["phone"], home["cn"], home["speaker"], home["mdsm"]
    call_and_hand_over(home)
    assert speaker.wait("established", 5), mdsm.output()
    cn.hangup()
    assert speaker.wait("terminated bye", 10), mdsm.output()
    assert [c["state"] for c in phone.calls()] == ["handed off to Living room (speaker, tv)"]
    out = phone.sipmob("hangup", "1")
    assert out.returncode == 0, out.stderr + mdsm.output()
    assert "had ended already" in out.stdout, out.stdout
    assert phone.calls() == []


def test_a_strangers_refer_is_refused_and_nothing_is_invited(home: dict[str, Any]) -> None:
    mdsm, speaker, tv, cn = home["mdsm"], home["speaker"], home["tv"], home["cn"]
    status = stranger_sends(mdsm.port, "REFER", mdsm.uri("living-room"),
                            f"Refer-To: <{cn.uri}?Replaces=abc%3Bto-tag%3D1%3Bfrom-tag%3D2>\r\n")
    assert status == 403
    time.sleep(0.5)
    assert speaker.count("established") == 0 and tv.count("established") == 0
    assert not any(e["event"] == "incoming_call" for e in cn.events)
    # and a virtual device that does not exist
    assert stranger_sends(mdsm.port, "REFER", mdsm.uri("attic"), f"Refer-To: <{cn.uri}>\r\n") == 404


def test_a_strangers_invite_to_the_virtual_device_is_refused(home: dict[str, Any]) -> None:
    mdsm, speaker = home["mdsm"], home["speaker"]
    sdp = "v=0\r\no=s 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 9 RTP/AVP 0\r\n"
    status = stranger_sends(mdsm.port, "INVITE", mdsm.uri("living-room"),
                            "Content-Type: application/sdp\r\n", sdp)
    assert status == 403
    assert speaker.count("established") == 0


def test_a_member_that_hangs_up_has_its_stream_disabled_and_the_call_goes_on(home: dict[str, Any]) -> None:
    cn, speaker, tv, mdsm = home["cn"], home["speaker"], home["tv"], home["mdsm"]
    call_and_hand_over(home)
    assert tv.wait("established", 5) and speaker.probe.wait_for_packets(10, 10)
    n = len(cn.events)
    tv.hang_up()
    assert tv.wait("terminated local", 5)
    cn.wait_event(lambda e: e["event"] == "media_state", timeout=10, start=n)
    assert until(lambda: "member tv left" in mdsm.output(), 5), mdsm.output()
    # the re-INVITE PJSIP got: the video line disabled, the speaker's audio line as it was
    assert until(lambda: video_off_audio_on(cn), 5), cn.log()[-3000:]
    assert "re-INVITE to the CN failed" not in mdsm.output()
    seen = from_cn(speaker)
    assert until(lambda: from_cn(speaker) > seen + 25, 5), "the speaker's media stopped"
    assert speaker.count("terminated") == 0
    cn.hangup()
    assert speaker.wait("terminated bye", 10)


def test_sighup_adds_and_removes_systems_without_touching_the_call(home: dict[str, Any]) -> None:
    phone, cn, speaker, tv, mdsm = home["phone"], home["cn"], home["speaker"], home["tv"], home["mdsm"]
    call_and_hand_over(home)
    assert speaker.probe.wait_for_packets(10, 10)
    mdsm.write('[[system]]\nname = "kitchen"\nmembers = ["speaker"]\nowners = ["sip:mn@127.0.0.1"]\n')
    mdsm.hup()
    assert until(lambda: "kitchen" in phone.sipmob("devices", "--json").stdout
                 and "living-room" not in phone.sipmob("devices", "--json").stdout, 10), mdsm.output()
    assert "configuration reloaded" in mdsm.output()
    seen = from_cn(speaker)
    assert until(lambda: from_cn(speaker) > seen + 25, 5), "media stopped at the reload"
    # a broken file is refused and the running configuration kept
    mdsm.write('[[system]]\nname = "Kitchen!"\nmembers = []\n')
    mdsm.hup()
    assert until(lambda: "reload refused" in mdsm.output(), 5)
    # the call handed to a system since removed still ends properly
    cn.hangup()
    assert speaker.wait("terminated bye", 10) and tv.wait("terminated bye", 10)


def test_check_config_names_the_file_key_and_problem(tmp_path: Path) -> None:
    bad = tmp_path / "mdsm.toml"
    bad.write_text(f'[devices]\ndirectory = "{tmp_path}"\n[[system]]\nname = "lr"\nmembers = ["attic-tv"]\n')
    out = subprocess.run([sys.executable, "-m", "sipmob.mdsm", "--config", str(bad), "--check-config"],
                         env=ENV, capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode == 1
    assert f"{bad}: system[0].members: no device 'attic-tv' in {tmp_path}" in out.stderr


def test_auto_per_room_makes_a_virtual_device_from_the_da_and_keeps_it_up_to_date(tmp_path: Path) -> None:
    """[auto] per_room: the kitchen's devices registered in the DA (as the SA proxy does) become
    the virtual device ``kitchen``, which takes a handed-off call; a device leaving the DA leaves it."""
    for d in ("da", "mn", "mdsm", "cn"):
        (tmp_path / d).mkdir()
    da = Slpda(tmp_path / "da").start()
    started: list[Any] = []
    try:
        address = f"{HOST}:{da.port}"
        cn = Pjsua(free_udp_port(), "cn", workdir=tmp_path / "cn")
        started.append(cn)
        speaker, tv = Member("speaker", "audio", "sendrecv"), Member("tv", "video", "recvonly")
        started += [speaker, tv]
        with da.client() as slp:
            slp.register(speaker.uri, "(name=Kitchen speaker),(room=kitchen),(media=audio-sendrecv),"
                                      "(mobility=basic)")
            slp.register(tv.uri, "(name=Kitchen TV),(room=kitchen),(media=video-recvonly),(mobility=basic)")
            # a restricted camera nobody here knows the allow list of: never a member
            slp.register("sip:cam@127.0.0.1:9", "(name=Cam),(room=kitchen),(media=video-sendonly),"
                                                "(restricted=true)")
        mdsm = Mdsm(tmp_path / "mdsm", address, "",
                    extra='[auto]\nper_room = true\nowners = ["sip:mn@127.0.0.1"]\nrefresh = 2\n')
        mdsm.start()
        started.append(mdsm)
        phone = Phone(tmp_path / "mn", address, auto_answer=True)
        started.append(phone)
        assert until(lambda: "members: kitchen-speaker, kitchen-tv" in phone.sipmob("devices").stdout, 10), \
            phone.sipmob("devices").stdout + mdsm.output()
        assert phone.sipmob("call", cn.uri).returncode == 0
        cn.wait_call_state("CONFIRMED", timeout=5)
        out = phone.sipmob("transfer", "1", "--to", "kitchen", "--mode", "handoff")
        assert out.returncode == 0, out.stderr + mdsm.output()
        assert speaker.wait("established", 5) and tv.wait("established", 5)
        assert speaker.probe.wait_for_packets(10, 10)
        with da.client() as slp:
            slp.deregister(tv.uri)
        # one device left in the kitchen: no virtual device there any more
        assert until(lambda: "sip:kitchen@" not in phone.sipmob("devices").stdout, 10), mdsm.output()
        # the call handed over earlier goes on: its legs are the MDSM's, not the room's
        seen = len(speaker.probe.snapshot())
        assert until(lambda: len(speaker.probe.snapshot()) > seen + 25, 5)
        cn.hangup()
        assert speaker.wait("terminated bye", 10) and tv.wait("terminated bye", 10)
    finally:
        for peer in reversed(started):
            peer.stop()
        da.stop()


def test_a_member_that_stops_answering_has_its_stream_removed(tmp_path: Path) -> None:
    """A TV switched off at the plug sends no BYE: the MDSM's OPTIONS go unanswered and it removes
    the TV's stream from PJSIP's session; the speaker's audio goes on."""
    for d in ("da", "mn", "mdsm", "cn"):
        (tmp_path / d).mkdir()
    da = Slpda(tmp_path / "da").start()
    started: list[Any] = []
    try:
        address = f"{HOST}:{da.port}"
        cn = Pjsua(free_udp_port(), "cn", workdir=tmp_path / "cn")
        speaker, tv = Member("speaker", "audio", "sendrecv"), Member("tv", "video", "recvonly")
        started += [cn, speaker, tv]
        mdsm = Mdsm(tmp_path / "mdsm", address,
                    f'[[system]]\nname = "living-room"\nmembers = ["{speaker.uri}", "{tv.uri}"]\n'
                    'owners = ["sip:mn@127.0.0.1"]\n',
                    extra="[limits]\nkeepalive = 1\nkeepalive_timeout = 1\n")
        mdsm.start()
        started.append(mdsm)
        phone = Phone(tmp_path / "mn", address, auto_answer=True)
        started.append(phone)
        assert until(lambda: "living-room" in phone.sipmob("devices", "--json").stdout, timeout=10)
        call_and_hand_over({"phone": phone, "cn": cn, "mdsm": mdsm})
        assert tv.wait("established", 5) and speaker.probe.wait_for_packets(10, 10)
        n = len(cn.events)
        os.kill(tv.proc.pid, signal.SIGKILL)
        cn.wait_event(lambda e: e["event"] == "media_state", timeout=10, start=n)
        assert "does not answer OPTIONS" in mdsm.output()
        assert until(lambda: video_off_audio_on(cn), 5), cn.log()[-3000:]
        seen = len(speaker.probe.snapshot())
        assert until(lambda: len(speaker.probe.snapshot()) > seen + 25, 5)
        assert speaker.count("terminated") == 0
    finally:
        for peer in reversed(started):
            peer.stop()
        da.stop()


def video_line(cn: Pjsua) -> str:
    """The m=video line of the last INVITE PJSIP logged."""
    last = cn.log().rsplit("INVITE sip:", 1)[-1]
    found = re.search(r"^m=video \d+", last, re.M)
    return found.group(0) if found else ""


def test_a_member_that_comes_back_is_invited_again_and_its_stream_restored(tmp_path: Path) -> None:
    """The TV stops answering (SIGSTOP: a device out of reach): its video line goes to port 0 in
    PJSIP's session. It answers OPTIONS again (SIGCONT): the MDSM INVITEs it without SDP, puts its
    offer back at the video line in a re-INVITE that PJSIP accepts, and ACKs the TV with its part
    of PJSIP's answer (this pjsua declines video, so that part says port 0, as it did at the
    handoff). A TV that BYEs and stays reachable (someone pressed hang-up on it) is not
    asked back. (PJSIP refuses a session whose audio line is disabled, so the audio member stays.)"""
    for d in ("da", "mn", "mdsm", "cn"):
        (tmp_path / d).mkdir()
    da = Slpda(tmp_path / "da").start()
    started: list[Any] = []
    try:
        address = f"{HOST}:{da.port}"
        cn = Pjsua(free_udp_port(), "cn", workdir=tmp_path / "cn")
        speaker, tv = Member("speaker", "audio", "sendrecv"), Member("tv", "video", "recvonly")
        started += [cn, speaker, tv]
        mdsm = Mdsm(tmp_path / "mdsm", address, SYSTEM,
                    extra="[limits]\nkeepalive = 1\nkeepalive_timeout = 1\n")
        (mdsm.devices / "speaker.toml").write_text(
            f'uri = "{speaker.uri}"\nname = "Living room speaker"\naudio = "sendrecv"\n')
        (mdsm.devices / "tv.toml").write_text(
            f'uri = "{tv.uri}"\nname = "Living room TV"\nvideo = "recvonly"\n')
        mdsm.start()
        started.append(mdsm)
        phone = Phone(tmp_path / "mn", address, auto_answer=True)
        started.append(phone)
        assert until(lambda: "living-room" in phone.sipmob("devices", "--json").stdout, timeout=10)
        call_and_hand_over({"phone": phone, "cn": cn, "mdsm": mdsm})
        assert tv.wait("established", 5) and speaker.probe.wait_for_packets(10, 10)
        assert video_line(cn) == f"m=video {tv.probe.port}", cn.log()[-3000:]

        os.kill(tv.proc.pid, signal.SIGSTOP)
        try:
            assert until(lambda: "member tv does not answer OPTIONS" in mdsm.output(), 10), mdsm.output()
            assert until(lambda: video_line(cn) == "m=video 0", 10), cn.log()[-3000:]
        finally:
            os.kill(tv.proc.pid, signal.SIGCONT)
        assert until(lambda: "member tv is back" in mdsm.output(), 15), mdsm.output()
        assert tv.count("established") == 2, tv.lines
        # PJSIP's re-INVITE offer has the TV's port again at the video line; it answered 200 (it
        # declines video here, as it did at the handoff) and the TV's ACK carries that answer
        assert video_line(cn) == f"m=video {tv.probe.port}", cn.log()[-3000:]
        acks = [line for line in tv.lines if line.startswith("ack")]
        assert len(acks) == 2 and acks[1].split("m=", 1)[1] == acks[0].split("m=", 1)[1], acks
        assert "re-INVITE to the CN failed" not in mdsm.output() and "did not take" not in mdsm.output()
        seen = from_cn(speaker)
        assert until(lambda: from_cn(speaker) > seen + 25, 10), "the speaker's media stopped"
        assert speaker.count("terminated") == 0

        # the TV hangs up and stays on: it is not asked back
        tv.hang_up()
        assert until(lambda: mdsm.output().count("member tv left") == 2, 10), mdsm.output()
        assert until(lambda: video_line(cn) == "m=video 0", 10), cn.log()[-3000:]
        time.sleep(3.5)  # three keepalive rounds, each answered by the TV
        assert tv.count("established") == 2
        assert mdsm.output().count("member tv is back") == 1
        cn.hangup()
        assert speaker.wait("terminated bye", 10)
    finally:
        for peer in reversed(started):
            peer.stop()
        da.stop()


def test_an_owner_with_a_password_must_answer_the_digest_challenge(tmp_path: Path) -> None:
    """With [auth] users_file, a REFER from an owner listed there is challenged (401): with the
    password our UA answers the challenge and the handoff goes through; with a wrong one, or a
    forged From and no credentials at all, it never gets further than 401 and nothing is invited."""
    for d in ("da", "mdsm", "cn"):
        (tmp_path / d).mkdir()
    (tmp_path / "users").write_text("# who may use the virtual devices\nmn s3cret-pass\n")
    da = Slpda(tmp_path / "da").start()
    started: list[Any] = []
    try:
        cn = Pjsua(free_udp_port(), "cn", workdir=tmp_path / "cn")
        speaker, tv = Member("speaker", "audio", "sendrecv"), Member("tv", "video", "recvonly")
        started += [cn, speaker, tv]
        mdsm = Mdsm(tmp_path / "mdsm", f"{HOST}:{da.port}",
                    f'[[system]]\nname = "living-room"\nmembers = ["{speaker.uri}", "{tv.uri}"]\n'
                    'owners = ["sip:mn@127.0.0.1"]\n',
                    extra=f'[auth]\nusers_file = "{tmp_path / "users"}"\n')
        mdsm.start()
        started.append(mdsm)

        def refer(password: str) -> str:
            out = subprocess.run([sys.executable, str(HERE / "referrer.py"), "mn", password,
                                  mdsm.uri("living-room"), cn.uri], env=ENV, capture_output=True, text=True,
                                 timeout=60, check=False)
            return out.stdout.strip() or out.stderr[-1000:]

        assert refer("-") == "401"
        assert refer("wrong-pass") == "401"
        time.sleep(0.5)
        assert speaker.count("established") == 0 and not any(e["event"] == "incoming_call" for e in cn.events)
        assert refer("s3cret-pass") == "200", mdsm.output()
        assert speaker.wait("established", 5) and tv.wait("established", 5)
        cn.wait_call_state("CONFIRMED", timeout=5)
    finally:
        for peer in reversed(started):
            peer.stop()
        da.stop()


def test_a_cn_that_refuses_gets_the_members_released_and_the_referrer_its_status(tmp_path: Path) -> None:
    """Fig. 6 failing at message 6: the CN answers 486; each member already INVITEd gets its ACK
    (every stream refused) and a BYE, the referrer's final NOTIFY says 486, nothing is saved."""
    (tmp_path / "mdsm").mkdir()
    speaker, tv = Member("speaker", "audio", "sendrecv"), Member("tv", "video", "recvonly")
    started: list[Any] = [speaker, tv]
    try:
        cn = SipmobUA(free_udp_port(), "cn", reject_status=486, workdir=tmp_path / "cn")
        started.append(cn)
        # no DA here: its registrations go to a loopback port nobody listens on (never multicast)
        mdsm = Mdsm(tmp_path / "mdsm", f"{HOST}:{free_udp_port()}",
                    f'[[system]]\nname = "living-room"\nmembers = ["{speaker.uri}", "{tv.uri}"]\n'
                    'owners = ["sip:mn@127.0.0.1"]\n')
        mdsm.start()
        started.append(mdsm)
        out = subprocess.run([sys.executable, str(HERE / "referrer.py"), "mn", "-", mdsm.uri("living-room"),
                              cn.uri], env=ENV, capture_output=True, text=True, timeout=60, check=False)
        assert out.stdout.strip() == "486", out.stderr + mdsm.output()
        assert speaker.wait("terminated bye", 5) and tv.wait("terminated bye", 5), mdsm.output()
        assert "m=audio 0" in (speaker.wait("ack") or "")
        assert len(Store(mdsm.state)) == 0
    finally:
        for peer in reversed(started):
            peer.stop()


def stop_all(started: list[Any]) -> None:
    """Stop what a test started, the last first; a referrer still running is killed."""
    for peer in reversed(started):
        if isinstance(peer, subprocess.Popen):
            if peer.poll() is None:
                peer.kill()
                peer.wait(timeout=10)
        else:
            peer.stop()


def refer_in_background(mdsm: Mdsm, cn_uri: str) -> subprocess.Popen[str]:
    """The phone's REFER to ``living-room`` (referrer.py), left running: it prints the final
    NOTIFY's status when the handoff ends."""
    return subprocess.Popen([sys.executable, str(HERE / "referrer.py"), "mn", "-", mdsm.uri("living-room"),
                             cn_uri], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def setup_legs(mdsm: Mdsm) -> dict[str, Any]:
    """The legs of the handoff being set up, as the MDSM saved them."""
    rows = list(Store(mdsm.state).setups())
    return rows[0][2]["legs"] if rows else {}


def test_a_handoff_half_done_when_the_mdsm_is_killed_is_rolled_back_on_restart(tmp_path: Path) -> None:
    """``kill -9`` between Fig. 6's messages 4 and 5: the speaker has answered (its ACK held back
    for the CN's answer), the TV is still ringing, the CN has not been invited. The state file
    says so; the restarted MDSM BYEs the speaker, CANCELs the TV's INVITE and sends the referrer a
    final NOTIFY saying the handoff failed. Nothing is left ringing and PJSIP never hears of it."""
    (tmp_path / "mdsm").mkdir()
    speaker = Member("speaker", "audio", "sendrecv")
    started: list[Any] = [speaker]
    try:
        tv = Member("tv", "video", "recvonly", ring=True)
        started.append(tv)
        cn = Pjsua(free_udp_port(), "cn", workdir=tmp_path / "cn")
        started.append(cn)
        mdsm = Mdsm(tmp_path / "mdsm", f"{HOST}:{free_udp_port()}",
                    f'[[system]]\nname = "living-room"\nmembers = ["{speaker.uri}", "{tv.uri}"]\n'
                    'owners = ["sip:mn@127.0.0.1"]\n', extra="[limits]\nsetup_timeout = 60\n")
        mdsm.start()
        started.append(mdsm)
        referrer = refer_in_background(mdsm, cn.uri)
        started.append(referrer)

        assert tv.wait("ringing", 10), tv.lines
        assert until(lambda: {k: sorted(v) for k, v in setup_legs(mdsm).items()}
                     == {speaker.uri: ["dialog", "uri"], tv.uri: ["ringing", "uri"]}, 10), setup_legs(mdsm)
        mdsm.kill9()
        assert tv.count("cancelled") == 0
        mdsm.start()
        assert tv.wait("cancelled", 10), tv.lines
        # its 200 was never ACKed: our BYE ends it before it ever counted as established
        assert speaker.wait("failed", 10), speaker.lines
        out, err = referrer.communicate(timeout=30)
        assert out.strip() == "500", out + err + mdsm.output()
        assert "was interrupted by a restart: rolled back" in mdsm.output()
        assert speaker.count("established") == 0
        assert not any(e["event"] == "incoming_call" for e in cn.events)
        assert list(Store(mdsm.state).setups()) == [] and len(Store(mdsm.state)) == 0
    finally:
        stop_all(started)


def test_a_handoff_killed_while_the_cn_rings_is_cancelled_on_restart(tmp_path: Path) -> None:
    """``kill -9`` after Fig. 6's message 5: both members have answered (ACKs held), the CN (our
    own UA, ringing and never answering) has our INVITE. The restarted MDSM CANCELs that INVITE,
    BYEs both members and sends the referrer a final NOTIFY 500."""
    (tmp_path / "mdsm").mkdir()
    speaker, tv = Member("speaker", "audio", "sendrecv"), Member("tv", "video", "recvonly")
    started: list[Any] = [speaker, tv]
    try:
        cn = SipmobUA(free_udp_port(), "cn", auto_answer=False, ringing=True, workdir=tmp_path / "cn")
        started.append(cn)
        mdsm = Mdsm(tmp_path / "mdsm", f"{HOST}:{free_udp_port()}",
                    f'[[system]]\nname = "living-room"\nmembers = ["{speaker.uri}", "{tv.uri}"]\n'
                    'owners = ["sip:mn@127.0.0.1"]\n', extra="[limits]\nsetup_timeout = 60\n")
        mdsm.start()
        started.append(mdsm)
        referrer = refer_in_background(mdsm, cn.uri)
        started.append(referrer)

        cn.wait("incoming_call", 10)
        assert until(lambda: {k: sorted(v) for k, v in setup_legs(mdsm).items()}
                     == {speaker.uri: ["dialog", "uri"], tv.uri: ["dialog", "uri"],
                         "CN": ["ringing", "uri"]}, 10), setup_legs(mdsm)
        mdsm.kill9()
        mdsm.start()
        cn.wait("incoming_cancelled", 10)
        assert speaker.wait("failed", 10) and tv.wait("failed", 10), speaker.lines + tv.lines
        out, err = referrer.communicate(timeout=30)
        assert out.strip() == "500", out + err + mdsm.output()
        assert re.search(r"rolled back \(.*CN cancelled", mdsm.output()), mdsm.output()
        assert cn.count("established") == 0
        assert list(Store(mdsm.state).setups()) == [] and len(Store(mdsm.state)) == 0
    finally:
        stop_all(started)


def test_a_call_to_the_virtual_device_killed_while_a_member_rings_is_cancelled_on_restart(
        tmp_path: Path) -> None:
    """MNC mode: an owner (our own UA) INVITEs the virtual device; its one member rings. ``kill -9``
    then: the restarted MDSM CANCELs the member's INVITE, so nothing is left ringing."""
    (tmp_path / "mdsm").mkdir()
    ringer = Member("speaker", "audio", "sendrecv", ring=True)
    started: list[Any] = [ringer]
    try:
        mdsm = Mdsm(tmp_path / "mdsm", f"{HOST}:{free_udp_port()}",
                    f'[[system]]\nname = "living-room"\nmembers = ["{ringer.uri}"]\n'
                    'owners = ["sip:mn@127.0.0.1"]\n', extra="[limits]\nsetup_timeout = 60\n")
        mdsm.start()
        started.append(mdsm)
        mn = SipmobUA(free_udp_port(), "mn", workdir=tmp_path / "mn")
        started.append(mn)
        mn.invite(mdsm.uri("living-room"))
        assert ringer.wait("ringing", 10), [*ringer.lines, mdsm.output()]
        assert until(lambda: any("ringing" in leg for _, _, d in Store(mdsm.state).setups()
                                 for leg in d["legs"].values()), 10)
        ((cut, _, _),) = list(Store(mdsm.state).setups())
        mdsm.kill9()
        mdsm.start()
        assert ringer.wait("cancelled", 10), ringer.lines
        assert "rolled back" in mdsm.output()
        # the caller may retransmit its INVITE to the restarted daemon: a new attempt, not this one
        assert cut not in {i for i, _, _ in Store(mdsm.state).setups()}
        assert len(Store(mdsm.state)) == 0
    finally:
        for peer in reversed(started):
            peer.stop()


def test_bad_requests_get_clear_errors_and_the_call_limit_holds(tmp_path: Path) -> None:
    """A malformed Refer-To is 400, a stranger's nested REFER 403, a REFER over ``max_calls`` 503;
    none of them invites anyone, and the call in progress is untouched."""
    (tmp_path / "mdsm").mkdir()
    speaker = Member("speaker", "audio", "sendrecv")
    started: list[Any] = [speaker]
    try:
        cn = Pjsua(free_udp_port(), "cn", workdir=tmp_path / "cn")
        started.append(cn)
        mdsm = Mdsm(tmp_path / "mdsm", f"{HOST}:{free_udp_port()}",
                    f'[[system]]\nname = "living-room"\nmembers = ["{speaker.uri}"]\n'
                    'owners = ["sip:mn@127.0.0.1"]\n', extra="[limits]\nmax_calls = 1\n")
        mdsm.start()
        started.append(mdsm)
        target = mdsm.uri("living-room")
        assert stranger_sends(mdsm.port, "REFER", target, "Refer-To: <not a uri\r\n") == 400
        inner = quote(f"<{cn.uri}>", safe="")
        assert stranger_sends(mdsm.port, "REFER", target,
                              f"Refer-To: <sip:x@127.0.0.1;method=REFER?Refer-To={inner}>\r\n") == 403

        def refer() -> str:
            out = subprocess.run([sys.executable, str(HERE / "referrer.py"), "mn", "-", target, cn.uri],
                                 env=ENV, capture_output=True, text=True, timeout=60, check=False)
            return out.stdout.strip()

        assert refer() == "200"
        assert speaker.wait("established", 5)
        assert refer() == "503"
        time.sleep(0.5)
        assert speaker.count("established") == 1
        assert len(Store(mdsm.state)) == 1
    finally:
        for peer in reversed(started):
            peer.stop()
