"""``sipmob devices`` end to end: the real `sipmob-slpda` on loopback, devices registered with
``python -m sipmob.service.slptool register``, the ``sipmob`` command run as a process."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("sipmob.slpda.main", reason="the sipmob-slpda daemon is not in this tree")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "slpda"))
from slpda_process import HOST, ROOT, Slpda, free_port  # noqa: E402

ENV_PATH = str(ROOT / "daemons")

DEVICES = {
    "sip:tv@127.0.0.1:5070": "(name=Living room TV),(room=living-room),(media=video-recvonly,audio-recvonly),"
                             "(audio-codecs=PCMU,PCMA),(video-codecs=H263,H264),(mobility=basic)",
    "sip:cam@127.0.0.1:5072": "(name=Hall camera),(room=living-room),(media=video-sendonly),"
                              "(video-codecs=H263)",
    "sip:desk@127.0.0.1:5074": "(name=Desk phone),(room=study),(media=audio-sendrecv),(audio-codecs=PCMU)",
    "sip:speaker@127.0.0.1:5076": "(room=kitchen),(media=audio-sendrecv),(audio-codecs=opus,PCMU)",
}


def run(*args: str, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    env = {"PYTHONPATH": ENV_PATH, "PATH": "/usr/bin:/bin", "HOME": "/nonexistent"}
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


@pytest.fixture(scope="module")
def da(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    daemon = Slpda(tmp_path_factory.mktemp("slpda")).start()
    address = f"{HOST}:{daemon.port}"
    try:
        for url, attrs in DEVICES.items():
            done = run("-m", "sipmob.service.slptool", "--da", address, "register", "--lifetime", "600",
                       url, "service:sip-device", attrs)
            assert done.returncode == 0, done.stderr
        yield address
    finally:
        daemon.stop()


def sipmob(da: str, tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run("-m", "sipmob.mn.cli", "--config", str(tmp / "absent.toml"), "--da", da, *args)


def test_table_lists_every_device_with_short_names(da: str, tmp_path: Path) -> None:
    done = sipmob(da, tmp_path, "devices")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split()[:3] == ["SHORT", "NAME", "ROOM"]
    shorts = sorted(line.split()[0] for line in lines[1:])
    assert shorts == ["desk-phone", "hall-camera", "living-room-tv", "speaker"]


def test_json_carries_uri_name_and_attributes(da: str, tmp_path: Path) -> None:
    done = sipmob(da, tmp_path, "devices", "--json")
    assert done.returncode == 0, done.stderr
    found = {d["uri"]: d for d in json.loads(done.stdout)}
    assert set(found) == set(DEVICES)
    tv = found["sip:tv@127.0.0.1:5070"]
    assert tv["name"] == "Living room TV"
    assert tv["attributes"]["video-codecs"] == ["H263", "H264"]


def test_room_filter(da: str, tmp_path: Path) -> None:
    done = sipmob(da, tmp_path, "devices", "--room", "living-room", "--json")
    assert done.returncode == 0, done.stderr
    assert {d["short"] for d in json.loads(done.stdout)} == {"living-room-tv", "hall-camera"}


def test_media_filter_matches_any_direction(da: str, tmp_path: Path) -> None:
    done = sipmob(da, tmp_path, "devices", "--media", "audio", "--json")
    assert done.returncode == 0, done.stderr
    assert {d["short"] for d in json.loads(done.stdout)} == {"living-room-tv", "desk-phone", "speaker"}


def test_room_and_media_together(da: str, tmp_path: Path) -> None:
    done = sipmob(da, tmp_path, "devices", "--room", "living-room", "--media", "audio", "--json")
    assert done.returncode == 0, done.stderr
    assert [d["short"] for d in json.loads(done.stdout)] == ["living-room-tv"]


def test_no_match_says_so(da: str, tmp_path: Path) -> None:
    done = sipmob(da, tmp_path, "devices", "--room", "attic")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "no devices found"


def test_silent_da_is_one_line_and_exit_1(tmp_path: Path) -> None:
    done = sipmob(f"{HOST}:{free_port()}", tmp_path, "--timeout", "1", "devices")
    assert done.returncode == 1
    assert len(done.stderr.strip().splitlines()) == 1
    assert "DA" in done.stderr


def test_commands_without_a_running_phone_fail_with_one_line(tmp_path: Path) -> None:
    done = run("-m", "sipmob.mn.cli", "--config", str(tmp_path / "absent.toml"),
               "--control", str(tmp_path / "mn.sock"), "calls")
    assert done.returncode == 1
    assert done.stderr.strip() == (f"sipmob: no sipmob phone is running (nothing answers on "
                                   f"{tmp_path / 'mn.sock'}: No such file or directory)")
