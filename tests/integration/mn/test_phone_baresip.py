"""``sipmob phone`` end to end in Mobile Node Control mode: the phone as a process, baresip as the CN
and as the devices, the real `sipmob-slpda` for discovery, the ``sipmob`` command as the user.

Evidence that media moved comes from both sides: the phone's own RTP counters (it stops receiving
the CN's audio once the CN is re-INVITEd to the device, and gets it back on retrieval) and the
device's recording of what it received (the CN's tone). Loopback only; every process is stopped
by its PID.
"""

from __future__ import annotations

import json
import re
import socket
import sqlite3
import subprocess
import sys
import time
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.peers.baresip import BARESIP, Baresip
from tests.peers.ports import free_udp_port
from tests.peers.sipp import SIPP, SippProcess

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / "slpda"), str(Path(__file__).resolve().parent)]
from phone_process import ENV, Phone, until  # noqa: E402
from slpda_process import HOST, Slpda  # noqa: E402

SCENARIOS = Path(__file__).resolve().parent / "scenarios"


def places(call: dict[str, Any]) -> list[dict[str, Any]]:
    """Each stream's kind and place (the codec and hold state beside them are tested elsewhere)."""
    return [{"media": s["media"], "where": s["where"]} for s in call["streams"]]

pytestmark = [pytest.mark.peer,
              pytest.mark.skipif(BARESIP is None, reason="baresip is not installed (apt baresip-core)")]


@pytest.fixture
def home(tmp_path: Path) -> Iterator[dict[str, Any]]:
    (tmp_path / "da").mkdir()
    da = Slpda(tmp_path / "da").start()
    peers: list[Baresip] = []
    phone: Phone | None = None
    try:
        cn = Baresip(tmp_path, user="cn")
        peers.append(cn)
        desk = Baresip(tmp_path, user="desk", record_dir=tmp_path / "desk-rec")
        peers.append(desk)
        deaf = Baresip(tmp_path, user="deaf", auto_answer=False)
        peers.append(deaf)
        address = f"{HOST}:{da.port}"
        with da.client() as slp:
            slp.register(desk.uri, "(name=Desk phone),(media=audio-sendrecv),(audio-codecs=PCMU,PCMA)")
            slp.register(deaf.uri, "(name=Deaf phone),(media=audio-sendrecv),(audio-codecs=PCMU)")
            slp.register("sip:opus@127.0.0.1:5999",
                         "(name=Opus speaker),(media=audio-sendrecv),(audio-codecs=opus)")
        phone = Phone(tmp_path, address, auto_answer=True)
        yield {"phone": phone, "cn": cn, "desk": desk, "deaf": deaf, "dir": tmp_path}
    finally:
        if phone is not None:
            phone.stop()
        for peer in peers:
            peer.stop()
        da.stop()


def loud(path: Path) -> bool:
    """Whether a WAV baresip is still writing (its header sizes not final yet) holds a loud sample."""
    data = path.read_bytes()
    start = data.find(b"data")
    if start < 0:
        return False
    body = data[start + 8:]
    samples = array("h", body[:len(body) // 2 * 2])
    return bool(samples) and max(abs(s) for s in samples) > 1000


def test_transfer_to_a_device_and_retrieve(home: dict[str, Any]) -> None:
    phone, cn, desk = home["phone"], home["cn"], home["desk"]
    done = phone.sipmob("call", cn.uri)
    assert done.returncode == 0, done.stderr + phone.output()
    assert until(lambda: phone.received() > 20), "no RTP from the CN"

    done = phone.sipmob("transfer", "1", "--to", "desk-phone")
    assert done.returncode == 0, done.stderr + phone.output()
    assert done.stdout.strip() == "call 1: audio on Desk phone"
    done = phone.sipmob("calls")
    assert done.returncode == 0 and done.stdout.strip().endswith("confirmed  audio: Desk phone (PCMU/8000)")
    [call] = phone.calls()
    assert places(call) == [{"media": "audio", "where": "Desk phone"}]
    assert call["sending"] is False  # the grace period is over
    desk.wait_call_event("CALL_ESTABLISHED")
    # The CN now sends to the desk phone: our count stops growing.
    time.sleep(0.3)
    settled = phone.received()
    time.sleep(1.0)
    assert phone.received() - settled <= 2
    assert until(lambda: any(loud(p) for p in (home["dir"] / "desk-rec").glob("*-dec.wav")), 5), \
        "the desk phone did not receive the CN's tone"

    start = len(desk.events)
    done = phone.sipmob("retrieve", "1")
    assert done.returncode == 0, done.stderr + phone.output()
    assert done.stdout.strip() == "call 1: audio on this phone"
    desk.wait_call_event("CALL_CLOSED", start=start)
    before = phone.received()
    assert until(lambda: phone.received() > before + 20), "the CN's audio did not come back"
    assert phone.calls()[0]["sending"] is True


def test_device_that_never_answers_leaves_the_call_where_it_was(home: dict[str, Any]) -> None:
    phone, cn = home["phone"], home["cn"]
    assert phone.sipmob("call", cn.uri).returncode == 0
    done = phone.sipmob("transfer", "1", "--to", "deaf-phone")
    assert done.returncode == 1
    assert done.stderr.strip() == ("sipmob: transfer of call 1 failed: Deaf phone did not answer "
                                   "(no answer in 2 s); the call stays as it was")
    [call] = phone.calls()
    assert places(call) == [{"media": "audio", "where": "this phone"}] and call["devices"] == []
    before = phone.received()
    assert until(lambda: phone.received() > before + 20)


def test_no_common_codec_is_refused_naming_both_sides(home: dict[str, Any]) -> None:
    phone, cn = home["phone"], home["cn"]
    assert phone.sipmob("call", cn.uri).returncode == 0
    done = phone.sipmob("transfer", "1", "--to", "opus-speaker")
    assert done.returncode == 1
    assert done.stderr.startswith(f"sipmob: no common audio codec: {cn.uri} has ")
    # No transcoder in this home's DA (tests/integration/mn/test_phone_transcoder.py has one).
    assert done.stderr.strip().endswith("Opus speaker has opus/48000/2, and no transcoder in the DA "
                                        "converts between PCMU/PCMA and opus; the call stays as it was")
    assert places(phone.calls()[0]) == [{"media": "audio", "where": "this phone"}]


def test_unknown_device_is_named_with_the_known_ones(home: dict[str, Any]) -> None:
    phone, cn = home["phone"], home["cn"]
    assert phone.sipmob("call", cn.uri).returncode == 0
    done = phone.sipmob("transfer", "1", "--to", "fridge")
    assert done.returncode == 1
    assert done.stderr.strip() == ("sipmob: no device 'fridge' (known: deaf-phone, desk-phone, "
                                   "opus-speaker)")


def test_device_that_rejects_rolls_the_transfer_back(home: dict[str, Any]) -> None:
    phone, cn, deaf = home["phone"], home["cn"], home["deaf"]
    assert phone.sipmob("call", cn.uri).returncode == 0
    start = len(deaf.events)
    transfer = subprocess.Popen([sys.executable, "-m", "sipmob.mn.cli", "--config", str(phone.config),
                                 "transfer", "1", "--to", "deaf-phone"], env=ENV, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deaf.wait_call_event("CALL_INCOMING", start=start)
        deaf.hangup()  # refuses the ringing call
        _, err = transfer.communicate(timeout=10)
    finally:
        if transfer.poll() is None:
            transfer.kill()
            transfer.wait(5)
    assert transfer.returncode == 1
    assert err.startswith("sipmob: transfer of call 1 failed: Deaf phone rejected it (4")
    assert err.strip().endswith("; the call stays as it was")
    assert places(phone.calls()[0]) == [{"media": "audio", "where": "this phone"}]


def test_incoming_call_moves_and_cn_hangup_releases_the_device(home: dict[str, Any]) -> None:
    phone, cn, desk = home["phone"], home["cn"], home["desk"]
    cn.dial(phone.uri)
    assert until(lambda: phone.calls()), "the phone did not answer " + phone.output()
    assert phone.calls()[0]["peer"].startswith("sip:cn@127.0.0.1")
    done = phone.sipmob("transfer", "1", "--to", "desk-phone")
    assert done.returncode == 0, done.stderr + phone.output()
    desk.wait_call_event("CALL_ESTABLISHED")
    start = len(desk.events)
    cn.hangup()
    desk.wait_call_event("CALL_CLOSED", start=start)
    assert until(lambda: phone.calls() == [])


@pytest.mark.skipif(SIPP is None, reason="sipp is not installed (apt sip-tester)")
def test_cn_that_refuses_the_reinvite_keeps_the_call_and_releases_the_device(home: dict[str, Any]) -> None:
    phone, desk = home["phone"], home["desk"]
    cn = SippProcess(SCENARIOS / "uas_reject_reinvite.xml", extra_args=["-aa", "-mp", str(free_udp_port())],
                     workdir=home["dir"] / "sipp", timeout=30)
    try:
        cn.wait_listening()
        uri = f"sip:cn@127.0.0.1:{cn.local_port}"
        done = phone.sipmob("call", uri)
        assert done.returncode == 0, done.stderr + phone.output()
        start = len(desk.events)
        done = phone.sipmob("transfer", "1", "--to", "desk-phone")
        assert done.returncode == 1
        assert done.stderr.strip() == (f"sipmob: transfer of call 1 failed: {uri} refused the new media "
                                       "(488 Not Acceptable Here); the call stays as it was")
        desk.wait_call_event("CALL_CLOSED", start=start)
        [call] = phone.calls()
        assert places(call) == [{"media": "audio", "where": "this phone"}] and call["devices"] == []
        assert call["sending"] is True
    finally:
        cn.stop()


def test_a_phone_killed_mid_call_takes_the_call_back_when_restarted(home: dict[str, Any]) -> None:
    """kill -9 with the call's audio on a device: the restarted phone finds the call in its state
    file, takes its dialogs back (the CN and the device notice nothing), lists it, and can still
    retrieve it and hang it up."""
    phone, cn, desk = home["phone"], home["cn"], home["desk"]
    assert phone.sipmob("call", cn.uri).returncode == 0
    done = phone.sipmob("transfer", "1", "--to", "desk-phone")
    assert done.returncode == 0, done.stderr + phone.output()
    desk.wait_call_event("CALL_ESTABLISHED")
    cn_start, desk_start = len(cn.events), len(desk.events)
    # where each dialog was formed with is kept: the restarted phone's policy knows the CN by it
    # (a CN behind a NAT: its Contact names another host), as it did before the kill
    db = sqlite3.connect(phone.config.parent / "calls.sqlite")
    try:
        [(text,)] = db.execute("SELECT record FROM calls").fetchall()
    finally:
        db.close()
    record = json.loads(text)
    assert record["peer_host"] == "127.0.0.1" and record["device_peer_hosts"] == {desk.uri: "127.0.0.1"}
    phone.kill()
    phone.restart()
    [call] = phone.calls()
    assert call["id"] == "1" and call["peer"] == cn.uri and call["devices"] == [desk.uri]
    assert places(call) == [{"media": "audio", "where": "Desk phone"}] and call["state"] == "confirmed"
    done = phone.sipmob("retrieve", "1")
    assert done.returncode == 0, done.stderr + phone.output()
    desk.wait_call_event("CALL_CLOSED", start=desk_start)
    before = phone.received()
    assert until(lambda: phone.received() > before + 20), "the CN's audio did not come back"
    assert not [e for e in cn.events[cn_start:] if e.get("type") == "CALL_CLOSED"]
    assert phone.sipmob("call", cn.uri).stdout.strip().startswith("call 2 with ")


def test_a_call_playing_on_the_phone_plays_again_after_a_kill(home: dict[str, Any]) -> None:
    phone, cn = home["phone"], home["cn"]
    assert phone.sipmob("call", cn.uri).returncode == 0
    assert until(lambda: phone.received() > 20)
    phone.kill()
    phone.restart()
    [call] = phone.calls()
    assert places(call) == [{"media": "audio", "where": "this phone"}] and call["sending"] is True
    assert until(lambda: phone.received() > 20), "the CN's audio does not reach the restarted phone"
    assert until(lambda: phone.calls()[0]["rtp_sent"] > 20)


def test_a_call_that_cannot_be_taken_back_is_ended_on_every_leg(home: dict[str, Any]) -> None:
    """The same, with the call's RTP port taken meanwhile: the phone cannot take the call back, so
    the CN and the device both get a BYE (no orphan RTP between them), and `sipmob calls` says so."""
    phone, cn, desk = home["phone"], home["cn"], home["desk"]
    assert phone.sipmob("call", cn.uri).returncode == 0
    assert phone.sipmob("transfer", "1", "--to", "desk-phone").returncode == 0
    desk.wait_call_event("CALL_ESTABLISHED")
    cn_start, desk_start = len(cn.events), len(desk.events)
    port = _audio_port(phone)
    phone.kill()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as squatter:
        squatter.bind(("127.0.0.1", port))
        phone.restart()
        cn.wait_call_event("CALL_CLOSED", timeout=10, start=cn_start)
        desk.wait_call_event("CALL_CLOSED", timeout=10, start=desk_start)
    [left] = phone.calls()
    assert left["id"] == "1" and left["peer"] == cn.uri and left["devices"] == [desk.uri]
    assert until(lambda: phone.calls()[0]["state"] == "ended (the phone restarted)", 5)
    done = phone.sipmob("calls")
    assert done.returncode == 0 and "ended (the phone restarted)  audio: Desk phone" in done.stdout


def _audio_port(phone: Phone) -> int:
    import sqlite3

    with sqlite3.connect(phone.config.parent / "calls.sqlite") as db:
        [(record,)] = db.execute("SELECT record FROM calls").fetchall()
    return int(re.search(r"m=audio (\d+)", json.loads(record)["local_sdp"]).group(1))  # type: ignore[union-attr]
