"""Session Handoff mode with baresip as the remote party (CN): what it does with the TV's INVITE
with Replaces decides whether a call with it can be handed off."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.peers.baresip import BARESIP, Baresip

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / "slpda"), str(Path(__file__).resolve().parent)]
from phone_process import Phone, until  # noqa: E402
from slpda_process import HOST, Slpda  # noqa: E402

pytestmark = [pytest.mark.peer,
              pytest.mark.skipif(BARESIP is None, reason="baresip is not installed (apt baresip-core)")]


@pytest.fixture
def home(tmp_path: Path) -> Iterator[dict[str, Any]]:
    for sub in ("da", "mn", "tv"):
        (tmp_path / sub).mkdir()
    da = Slpda(tmp_path / "da").start()
    started: list[Any] = []
    try:
        address = f"{HOST}:{da.port}"
        cn = Baresip(tmp_path, user="cn")
        started.append(cn)
        tv = Phone(tmp_path / "tv", address, user="tv", extra=(
            '[device]\nenabled = true\nname = "TV"\nowners = ["sip:mn@127.0.0.1"]\n'))
        started.append(tv)
        phone = Phone(tmp_path / "mn", address)
        started.append(phone)
        assert until(lambda: "enhanced" in phone.sipmob("devices", "--json").stdout, timeout=10)
        yield {"phone": phone, "tv": tv, "cn": cn}
    finally:
        for peer in reversed(started):
            peer.stop()
        da.stop()


def test_baresip_ignores_replaces_so_the_phone_and_the_tv_end_their_dialogs(home: dict[str, Any]) -> None:
    """baresip answers the TV's INVITE with Replaces as a new call and keeps the replaced one, so
    the phone ends its own dialog (and on retrieval the TV ends its own): the call still moves,
    and the command says what happened."""
    phone, tv, cn = home["phone"], home["tv"], home["cn"]
    assert phone.sipmob("call", cn.uri).returncode == 0
    assert until(lambda: phone.calls() and phone.received() > 20)
    out = phone.sipmob("transfer", "1", "--to", "tv", "--mode", "handoff")
    assert out.returncode == 0, out.stderr + tv.output()
    assert "handed off to TV (the other party ignored Replaces" in out.stdout
    assert [c["state"] for c in phone.calls()] == ["handed off to TV"]
    assert until(lambda: tv.calls() and tv.received() > 20), tv.calls()
    out = phone.sipmob("retrieve", "1")
    assert out.returncode == 0, out.stderr + tv.output()
    assert until(lambda: not tv.calls(), timeout=5), tv.calls()
    (pc,) = phone.calls()
    assert pc["id"] == "1" and pc["state"] == "confirmed"
    seen = phone.received()
    assert until(lambda: phone.received() > seen + 20), phone.calls()
