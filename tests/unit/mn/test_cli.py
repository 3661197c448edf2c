"""The sipmob command line: what each command asks the phone, output, exit codes (no phone needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sipmob.mn import cli
from sipmob.mn import control_client as control


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, dict[str, Any]]]:
    calls: list[tuple[str, str, dict[str, Any]]] = []

    def fake_request(path: Any, command: str, args: Any = None, *, timeout: float = 30.0) -> Any:
        calls.append((str(path), command, dict(args or {})))
        if command == "calls":
            return [{"id": "1", "peer": "sip:cn@192.0.2.1", "state": "confirmed",
                     "streams": [{"media": "audio", "where": "Desk phone"}]}]
        return f"call {args.get('call')}: done" if args else None

    monkeypatch.setattr(control, "request", fake_request)
    return calls


def run(tmp_path: Path, *argv: str) -> int:
    return cli.main(["--config", str(tmp_path / "absent.toml"), "--control", str(tmp_path / "s"), *argv])


def test_transfer_sends_every_device_and_the_media(tmp_path: Path, sent: list[Any]) -> None:
    assert run(tmp_path, "transfer", "1", "--to", "tv, speaker", "--media", "video") == 0
    assert sent == [(str(tmp_path / "s"), "transfer",
                     {"call": "1", "to": ["tv", "speaker"], "media": "video"})]


def test_transfer_media_defaults_to_all(tmp_path: Path, sent: list[Any]) -> None:
    run(tmp_path, "transfer", "1", "--to", "tv")
    assert sent[0][2]["media"] == "all"


def test_split_sends_display_camera_and_audio(tmp_path: Path, sent: list[Any]) -> None:
    run(tmp_path, "split", "2", "--video-out", "tv", "--video-in", "cam", "--audio", "desk")
    assert sent[0][1:] == ("split", {"call": "2", "video_out": "tv", "video_in": "cam", "audio": "desk"})


def test_retrieve_and_call(tmp_path: Path, sent: list[Any]) -> None:
    run(tmp_path, "retrieve", "3", "--media", "audio")
    run(tmp_path, "call", "sip:cn@192.0.2.1")
    assert [s[1:] for s in sent] == [("retrieve", {"call": "3", "media": "audio"}),
                                     ("call", {"uri": "sip:cn@192.0.2.1"})]


def test_phone_message_is_printed(tmp_path: Path, sent: list[Any],
                                  capsys: pytest.CaptureFixture[str]) -> None:
    run(tmp_path, "retrieve", "3")
    assert capsys.readouterr().out == "call 3: done\n"


def test_calls_are_one_line_each(tmp_path: Path, sent: list[Any], capsys: pytest.CaptureFixture[str]) -> None:
    assert run(tmp_path, "calls") == 0
    assert capsys.readouterr().out == "1  sip:cn@192.0.2.1  confirmed  audio: Desk phone\n"


def test_no_calls_says_so() -> None:
    assert cli.format_calls([]) == "no calls"


def test_control_path_comes_from_the_config_file(tmp_path: Path, sent: list[Any]) -> None:
    config = tmp_path / "mn.toml"
    config.write_text(f'[control]\npath = "{tmp_path / "from-config.sock"}"\n')
    cli.main(["--config", str(config), "calls"])
    assert sent[0][0] == str(tmp_path / "from-config.sock")


def test_empty_device_list_is_a_usage_error(tmp_path: Path, sent: list[Any],
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert run(tmp_path, "transfer", "1", "--to", ",") == cli.EXIT_USAGE
    assert capsys.readouterr().err == "sipmob: --to names no device\n"
    assert sent == []


def test_refusal_is_one_line_on_stderr_and_exit_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    def refuse(*args: Any, **kw: Any) -> Any:
        raise control.CommandError("no common audio codec: sip:cn@192.0.2.1 has PCMU/8000; "
                                   "TV has opus/48000/2")

    monkeypatch.setattr(control, "request", refuse)
    assert run(tmp_path, "transfer", "1", "--to", "tv") == cli.EXIT_FAILED
    assert capsys.readouterr().err == ("sipmob: no common audio codec: sip:cn@192.0.2.1 has PCMU/8000; "
                                       "TV has opus/48000/2\n")


def test_broken_config_file_is_named_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "mn.toml"
    config.write_text('[calls]\ngrace_period = "soon"\n')
    assert cli.main(["--config", str(config), "calls"]) == cli.EXIT_USAGE
    assert f"{config}: calls.grace_period" in capsys.readouterr().err


def test_unknown_media_is_rejected_by_the_parser(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        run(tmp_path, "transfer", "1", "--to", "tv", "--media", "text")
    assert exc.value.code == 2


@pytest.mark.parametrize("command", ["answer", "reject", "hangup", "hold", "resume"])
def test_call_controls_send_the_call(tmp_path: Path, sent: list[Any], command: str) -> None:
    assert run(tmp_path, command, "3") == 0
    assert sent[-1][1:] == (command, {"call": "3"})


def test_dtmf_sends_the_digits(tmp_path: Path, sent: list[Any]) -> None:
    assert run(tmp_path, "dtmf", "1", "12#") == 0
    assert sent[-1][1:] == ("dtmf", {"call": "1", "digits": "12#"})


def test_watch_lines_say_who_calls_and_what_changed() -> None:
    incoming = {"event": "incoming", "call": "2", "peer": "sip:alice@h", "display": "Alice", "time": 0}
    assert cli.format_event(incoming).endswith(
        "call 2: Alice <sip:alice@h> is calling (sipmob answer 2 / sipmob reject 2)")
    ended = {"event": "state", "call": "2", "peer": "sip:alice@h", "state": "ended", "reason": "rejected"}
    assert cli.format_event(ended).endswith("call 2 with sip:alice@h: ended (rejected)")


def test_ringing_calls_show_the_callers_name() -> None:
    line = cli.format_calls([{"id": "4", "peer": "sip:bob@h", "display": "Bob", "state": "ringing"}])
    assert line == "4  Bob <sip:bob@h>  ringing  -"


def test_transfer_untrusted_sends_the_uris_of_the_devices_named(tmp_path: Path, sent: list[Any],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from sipmob.mn import devices
    from sipmob.slp.attrs import parse_attr_list

    found = devices.build([("sip:aaa@192.168.1.66", parse_attr_list("(name=Kitchen speaker)")),
                           ("sip:tv@192.168.1.20", parse_attr_list("(name=TV),trusted"))])
    monkeypatch.setattr(cli, "_discover", lambda *a, **k: {"found": found})
    assert run(tmp_path, "transfer", "1", "--to", "kitchen-speaker,tv", "--untrusted") == 0
    assert sent[0][2]["to"] == ["sip:aaa@192.168.1.66", "sip:tv@192.168.1.20"]


def test_transfer_without_untrusted_leaves_the_names_to_the_phone(tmp_path: Path, sent: list[Any],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "_discover", lambda *a, **k: pytest.fail("no discovery expected"))
    assert run(tmp_path, "transfer", "1", "--to", "kitchen-speaker") == 0
    assert sent[0][2]["to"] == ["kitchen-speaker"]  # the phone resolves it to trusted devices only


def test_calls_show_each_streams_codec_and_who_holds_it() -> None:
    line = cli.format_calls([{"id": "1", "peer": "sip:cn@192.0.2.1", "state": "confirmed", "streams": [
        {"media": "audio", "where": "this phone", "codec": "PCMA/8000", "hold": "held by the remote party"},
        {"media": "video", "where": "TV"}]}])
    assert line == ("1  sip:cn@192.0.2.1  confirmed  "
                    "audio: this phone (PCMA/8000, held by the remote party); video: TV")


def test_split_untrusted_sends_the_uris_of_the_devices_named(tmp_path: Path, sent: list[Any],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from sipmob.mn import devices
    from sipmob.slp.attrs import parse_attr_list

    found = devices.build([("sip:aaa@192.168.1.66", parse_attr_list("(name=Kitchen camera)")),
                           ("sip:tv@192.168.1.20", parse_attr_list("(name=TV),trusted"))])
    monkeypatch.setattr(cli, "_discover", lambda *a, **k: {"found": found})
    assert run(tmp_path, "split", "1", "--video-out", "tv", "--video-in", "kitchen-camera",
               "--untrusted") == 0
    assert (sent[0][2]["video_out"], sent[0][2]["video_in"], sent[0][2]["audio"]) == (
        "sip:tv@192.168.1.20", "sip:aaa@192.168.1.66", None)


def test_split_without_untrusted_leaves_the_names_to_the_phone(tmp_path: Path, sent: list[Any],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "_discover", lambda *a, **k: pytest.fail("no discovery expected"))
    assert run(tmp_path, "split", "1", "--video-out", "tv", "--video-in", "kitchen-camera") == 0
    assert sent[0][2]["video_in"] == "kitchen-camera"  # the phone resolves it to trusted devices only
