"""Session Handoff mode with a `sipmob phone` as the remote party (CN): it honours the TV's INVITE
with Replaces (ending the phone's dialog, Fig. 4) and the phone's on retrieval (ending the TV's,
Fig. 5), so the call moves with no peer of ours ignoring Replaces. This is also the second CN of
tests/bench/bench_sh.py, which tells PJSIP's part of a media lapse from ours."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / "slpda"), str(Path(__file__).resolve().parent)]
from phone_process import Phone, until  # noqa: E402
from slpda_process import HOST, Slpda  # noqa: E402

pytestmark = [pytest.mark.peer]


@pytest.fixture
def home(tmp_path: Path) -> Iterator[dict[str, Any]]:
    for sub in ("da", "mn", "tv", "cn"):
        (tmp_path / sub).mkdir()
    da = Slpda(tmp_path / "da").start()
    started: list[Any] = []
    try:
        address = f"{HOST}:{da.port}"
        # every handoff and retrieval is a new INVITE from the loopback address
        cn = Phone(tmp_path / "cn", address, auto_answer=True, user="cn",
                   calls="setups_per_minute = 600.0\n")
        started.append(cn)
        tv = Phone(tmp_path / "tv", address, user="tv", extra=(
            '[device]\nenabled = true\nname = "TV"\nowners = ["sip:mn@127.0.0.1"]\n'))
        started.append(tv)
        phone = Phone(tmp_path / "mn", address)
        started.append(phone)
        assert until(lambda: "enhanced" in phone.sipmob("devices", "--json").stdout, timeout=10), \
            phone.sipmob("devices", "--json")
        yield {"phone": phone, "tv": tv, "cn": cn}
    finally:
        for peer in reversed(started):
            peer.stop()
        da.stop()


def peers(cn: Phone) -> list[str]:
    return [c["peer"] for c in cn.calls()]


def test_a_sipmob_phone_as_cn_takes_the_handoff_and_the_retrieval(home: dict[str, Any]) -> None:
    phone, tv, cn = home["phone"], home["tv"], home["cn"]
    assert phone.sipmob("call", cn.uri).returncode == 0, phone.output()
    assert until(lambda: phone.calls() and phone.received() > 20), phone.calls()
    for _ in range(2):  # a second round: the calls of the first are all gone
        out = phone.sipmob("transfer", "1", "--to", "tv", "--mode", "handoff")
        assert out.returncode == 0, out.stderr + phone.output() + tv.output() + cn.output()
        # the CN ended the phone's dialog itself: nothing "ignored Replaces"
        assert "handed off to TV [REFER 202, NOTIFY 100, 200]" in out.stdout, out.stdout
        assert until(lambda: peers(cn) == ["sip:tv@127.0.0.1"]), cn.calls()
        assert until(lambda: tv.calls() and tv.received() > 20), tv.calls()

        out = phone.sipmob("retrieve", "1")
        assert out.returncode == 0, out.stderr + phone.output() + tv.output() + cn.output()
        assert "retrieved from TV" in out.stdout
        assert until(lambda: peers(cn) == ["sip:mn@127.0.0.1"]), cn.calls()
        assert until(lambda: not tv.calls()), tv.calls()
        (pc,) = phone.calls()
        assert pc["id"] == "1" and pc["state"] == "confirmed"
        assert until(lambda: phone.received() > 20), phone.calls()
