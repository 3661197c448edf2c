"""The phone's call store (sipmob.mn.store) and where it lives (``[state] file``)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from sipmob.mn.config import DEFAULT_STATE_FILE, MnConfig
from sipmob.mn.store import CallStore, StoredCall
from sipmob.service.config import parse_config
from sipmob.sip.dialog import Dialog, DialogState
from sipmob.sip.uri import URI, NameAddr


def dialog() -> Dialog:
    return Dialog(call_id="c1@h", local_tag="l", remote_tag="r", local_uri=NameAddr.parse("<sip:mn@h>"),
                  remote_uri=NameAddr.parse('"CN" <sip:cn@10.0.0.5:5070>'),
                  remote_target=URI.parse("sip:cn@10.0.0.5:5070"),
                  route_set=[NameAddr.parse("<sip:proxy@10.0.0.1;lr>")], local_seq=7, remote_seq=3,
                  is_uac=True, local_contact=NameAddr.parse("<sip:mn@10.0.0.2:5060>"),
                  state=DialogState.CONFIRMED)


def test_a_dialog_record_round_trips_with_the_cseq_moved_on() -> None:
    d = Dialog.from_record(dialog().to_record(), seq_margin=100)
    assert (d.call_id, d.local_tag, d.remote_tag, d.local_seq, d.remote_seq) == ("c1@h", "l", "r", 107, 3)
    assert str(d.remote_uri) == str(dialog().remote_uri) and d.destination() == dialog().destination()
    bye = d.create_request("BYE")
    assert bye.cseq.seq == 108 and bye.headers.get("Route") == "<sip:proxy@10.0.0.1;lr>"


def test_a_damaged_dialog_record_is_a_value_error() -> None:
    record = dialog().to_record()
    del record["remote_tag"]
    with pytest.raises(ValueError):
        Dialog.from_record(record)


def test_calls_are_kept_per_owner_and_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "calls.sqlite"
    call = StoredCall("1", "sip:cn@h", dialog().to_record(), devices={"sip:tv@h": dialog().to_record()},
                      names={"sip:tv@h": "TV"}, streams=({"media": "audio", "where": "TV"},))
    store = CallStore(path, "sip:mn@10.0.0.2:5060")
    store.put(call)
    CallStore(path, "sip:other@10.0.0.2:5062").put(StoredCall("1", "sip:x@h", dialog().to_record()))
    store.close()
    again = CallStore(path, "sip:mn@10.0.0.2:5060")
    assert again.calls() == [call]
    again.delete("1")
    assert again.calls() == [] and len(CallStore(path, "sip:other@10.0.0.2:5062").calls()) == 1


def test_where_each_dialog_was_formed_survives_and_an_older_record_reads_as_unknown(tmp_path: Path) -> None:
    path = tmp_path / "calls.sqlite"
    call = StoredCall("1", "sip:cn@h", dialog().to_record(), devices={"sip:tv@h": dialog().to_record()},
                      peer_host="198.51.100.9", device_peer_hosts={"sip:tv@h": "192.168.1.30"})
    CallStore(path, "me").put(call)
    again = CallStore(path, "me").calls()
    assert again == [call] and again[0].peer_host == "198.51.100.9"
    assert again[0].device_peer_hosts == {"sip:tv@h": "192.168.1.30"}
    older = json.loads(call.to_json())
    del older["peer_host"], older["device_peer_hosts"]
    assert StoredCall.from_json(json.dumps(older)).peer_host == ""


def test_a_damaged_record_is_dropped_not_raised(tmp_path: Path) -> None:
    path = tmp_path / "calls.sqlite"
    store = CallStore(path, "me")
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO calls VALUES ('me', '9', 'not json', 0)")
    assert store.calls() == []
    assert store.calls() == []  # and gone


def test_the_state_file_follows_systemd_then_xdg_then_var_lib(monkeypatch: pytest.MonkeyPatch) -> None:
    config = parse_config(MnConfig, {})
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/sipmob-mn:/other")
    assert config.state_file == Path("/var/lib/sipmob-mn/mn-calls.sqlite")
    monkeypatch.delenv("STATE_DIRECTORY")
    monkeypatch.setenv("XDG_STATE_HOME", "/home/u/.state")
    assert config.state_file == Path("/home/u/.state/sipmob/mn-calls.sqlite")
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setattr("os.geteuid", lambda: 0)
    assert config.state_file == Path(DEFAULT_STATE_FILE)
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    monkeypatch.setenv("HOME", "/home/u")
    assert config.state_file == Path("/home/u/.local/state/sipmob/mn-calls.sqlite")
    assert parse_config(MnConfig, {"state": {"file": "/x.sqlite"}}).state_file == Path("/x.sqlite")
