"""A dialog saved by the MDSM and taken up by a new user agent core after a restart: the peer's
re-INVITE and BYE are answered in it, and ours go out with a CSeq above any used before."""

from __future__ import annotations

import json

import pytest
from tests.unit.sip.test_ua import ALICE, ANSWER, BOB, OFFER, Net, core, establish, one

from sipmob.mdsm.store import Store, dialog_from_dict, dialog_to_dict
from sipmob.sip.message import Request
from sipmob.sip.ua import CallTerminated, ReinviteCompleted, ReinviteReceived, RequestCompleted, UAError


def restarted(net: Net, old_handle: int) -> tuple[object, int]:
    """Bob's core saved its dialog (through SQLite and JSON, as the MDSM does), died, and a new
    core on the same address took the dialog up again."""
    b = net.by_addr[BOB]
    dialog = b.dialog(old_handle)
    assert dialog is not None
    store = Store(":memory:")
    store.save("c1", "living-room", {"dialog": dialog_to_dict(dialog),
                                     "sdp": [ANSWER.decode(), OFFER.decode()]})
    ((_, _, data),) = list(store.load())
    data = json.loads(json.dumps(data))
    b2 = core(BOB, "bob2", seed=3)
    net.by_addr[BOB] = b2
    net.events[id(b2)] = []
    handle = b2.adopt(dialog_from_dict(data["dialog"]), local_sdp=data["sdp"][0].encode(),
                      remote_sdp=data["sdp"][1].encode())
    return b2, handle


def test_the_peers_reinvite_and_bye_reach_the_restored_dialog() -> None:
    a, b = core(ALICE, "alice"), core(BOB, "bob", seed=2)
    net = Net(a, b)
    ca, cb = establish(net, a, b)
    net.take(a), net.take(b)
    b2, handle = restarted(net, cb)
    assert b2.call_state(handle) == "confirmed" and b2.sdp(handle) == (ANSWER, OFFER)
    a.reinvite(ca, OFFER.replace(b"4000", b"4002"), net.now)
    net.run()
    rx = one(net.take(b2, ReinviteReceived))
    b2.answer_reinvite(handle, rx.rid, 200, net.now, sdp=ANSWER)  # type: ignore[attr-defined]
    net.run()
    assert one(net.take(a, ReinviteCompleted)).response.status == 200  # type: ignore[attr-defined]
    a.bye(ca, net.now)
    net.run()
    assert one(net.take(b2, CallTerminated)) == CallTerminated(handle, "bye")


def test_a_dialog_cannot_be_restored_twice() -> None:
    a, b = core(ALICE, "alice"), core(BOB, "bob", seed=2)
    net = Net(a, b)
    _, cb = establish(net, a, b)
    dialog = b.dialog(cb)
    assert dialog is not None
    with pytest.raises(UAError):
        b.adopt(dialog_from_dict(dialog_to_dict(dialog)))


def test_our_requests_after_the_restart_use_a_higher_cseq_than_any_before() -> None:
    a, b = core(ALICE, "alice"), core(BOB, "bob", seed=2)
    net = Net(a, b)
    ca, cb = establish(net, a, b)
    b.reinvite(cb, ANSWER, net.now)  # bob's CSeq moves on before the save
    net.run()
    net.take(a), net.take(b)
    rx_seq = max(m.cseq.seq for m in net.sent("INVITE") if isinstance(m, Request) and m.from_.tag
                 and m.from_.tag.startswith("bob"))
    b2, handle = restarted(net, cb)
    op = b2.bye(handle, net.now)
    net.run()
    assert one(net.take(a, CallTerminated)) == CallTerminated(ca, "bye")
    assert one(net.take(b2, RequestCompleted)).op == op  # type: ignore[attr-defined]
    bye = one([m for m in net.sent("BYE") if isinstance(m, Request)])
    assert bye.cseq.seq > rx_seq  # type: ignore[union-attr]
