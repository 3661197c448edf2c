"""Dialog state (RFC 3261 §12): creation on both sides, route sets, CSeq rules, in-dialog requests."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipmob.sip.dialog import Dialog, DialogState, uri_destination
from sipmob.sip.message import Headers, Request, Response, make_response
from sipmob.sip.transport import Address
from sipmob.sip.uri import URI, NameAddr

CONTACT_A = NameAddr(None, URI.parse("sip:alice@127.0.0.1:5070"))
CONTACT_B = NameAddr(None, URI.parse("sip:bob@127.0.0.1:5080"))


def invite(*, record_route: tuple[str, ...] = (), seq: int = 7) -> Request:
    h = Headers([("Via", "SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1"), ("Max-Forwards", "70"),
                 ("From", "Alice <sip:alice@example.org>;tag=a1"), ("To", "<sip:bob@example.org>"),
                 ("Call-ID", "c1@host"), ("CSeq", f"{seq} INVITE"), ("Contact", str(CONTACT_A))])
    for rr in record_route:
        h.add("Record-Route", rr)
    return Request("INVITE", URI.parse("sip:bob@example.org"), h)


def answer(request: Request, status: int = 200, contact: str = "<sip:bob@127.0.0.1:5080>") -> Response:
    return make_response(request, status, to_tag="b1", headers=[("Contact", contact)] + [
        ("Record-Route", v) for v in request.headers.get_lines("Record-Route")])


def test_uac_dialog_takes_ids_target_and_reversed_record_route_from_the_2xx() -> None:
    req = invite(record_route=("<sip:p1.example.org;lr>", "<sip:p2.example.org;lr>"))
    d = Dialog.from_uac(req, answer(req), CONTACT_A)
    assert (d.call_id, d.local_tag, d.remote_tag) == ("c1@host", "a1", "b1")
    assert d.state is DialogState.CONFIRMED and d.is_uac
    assert [str(r.uri) for r in d.route_set] == ["sip:p2.example.org;lr", "sip:p1.example.org;lr"]
    assert str(d.remote_target) == "sip:bob@127.0.0.1:5080"
    assert d.local_seq == 7 and d.remote_seq is None


def test_uas_dialog_keeps_record_route_in_order_and_the_remote_cseq() -> None:
    req = invite(record_route=("<sip:p1.example.org;lr>", "<sip:p2.example.org;lr>"))
    d = Dialog.from_uas(req, "b1", CONTACT_B)
    assert (d.local_tag, d.remote_tag) == ("b1", "a1") and not d.is_uac
    assert [str(r.uri) for r in d.route_set] == ["sip:p1.example.org;lr", "sip:p2.example.org;lr"]
    assert d.remote_seq == 7 and d.state is DialogState.EARLY
    assert str(d.remote_target) == "sip:alice@127.0.0.1:5070"


def test_provisional_with_tag_makes_an_early_dialog_that_a_2xx_confirms() -> None:
    req = invite()
    d = Dialog.from_uac(req, answer(req, 180), CONTACT_A)
    assert d.state is DialogState.EARLY
    d.update_from_response(answer(req, 200, "<sip:bob@127.0.0.1:5999>"))
    assert d.state is DialogState.CONFIRMED and d.remote_target.port == 5999


def test_requests_carry_dialog_ids_and_increasing_cseq() -> None:
    req = invite()
    d = Dialog.from_uac(req, answer(req), CONTACT_A)
    bye = d.create_request("BYE")
    info = d.create_request("INFO", body=b"x", content_type="text/plain")
    assert (bye.cseq.seq, info.cseq.seq) == (8, 9)
    assert bye.from_.tag == "a1" and bye.to.tag == "b1" and bye.call_id == "c1@host"
    assert str(bye.uri) == "sip:bob@127.0.0.1:5080" and "Route" not in bye.headers
    assert info.content_type == "text/plain" and "Contact" in info.headers and "Contact" not in bye.headers


def test_loose_route_set_goes_in_route_and_the_target_in_the_request_uri() -> None:
    req = invite(record_route=("<sip:p1.example.org;lr>",))
    d = Dialog.from_uac(req, answer(req), CONTACT_A)
    r = d.create_request("BYE")
    assert str(r.uri) == "sip:bob@127.0.0.1:5080"
    assert r.headers.get_all("Route") == ["<sip:p1.example.org;lr>"]
    assert d.next_hop() == URI.parse("sip:p1.example.org;lr")


def test_strict_router_gets_the_request_uri_and_the_target_goes_last_in_route() -> None:
    req = invite(record_route=("<sip:p1.example.org;lr>", "<sip:strict.example.org>"))
    d = Dialog.from_uac(req, answer(req), CONTACT_A)  # route set: strict, p1
    r = d.create_request("BYE")
    assert str(r.uri) == "sip:strict.example.org"
    assert r.headers.get_all("Route") == ["<sip:p1.example.org;lr>", "<sip:bob@127.0.0.1:5080>"]


def test_ack_for_2xx_reuses_the_invite_cseq_and_carries_the_answer() -> None:
    req = invite()
    d = Dialog.from_uac(req, answer(req), CONTACT_A)
    ack = d.create_ack(7, b"v=0\r\n", "application/sdp")
    assert ack.method == "ACK" and ack.cseq.seq == 7 and ack.cseq.method == "ACK"
    assert ack.body == b"v=0\r\n" and d.local_seq == 7


def test_remote_cseq_must_increase() -> None:
    req = invite(seq=5)
    d = Dialog.from_uas(req, "b1", CONTACT_B)
    bye = Request("BYE", URI.parse("sip:bob@x"), Headers([("CSeq", "4 BYE")]))
    later = Request("INFO", URI.parse("sip:bob@x"), Headers([("CSeq", "6 INFO")]))
    ack = Request("ACK", URI.parse("sip:bob@x"), Headers([("CSeq", "5 ACK")]))
    assert not d.check_remote_cseq(bye)
    assert d.check_remote_cseq(ack)
    assert d.check_remote_cseq(later) and d.remote_seq == 6
    assert not d.check_remote_cseq(later)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=2**31 - 1), min_size=1, max_size=20))
def test_remote_cseq_accepts_exactly_the_strictly_increasing_numbers(seqs: list[int]) -> None:
    d = Dialog.from_uas(invite(seq=0), "b1", CONTACT_B)
    highest = 0
    for seq in seqs:
        info = Request("INFO", URI.parse("sip:b@x"), Headers([("CSeq", f"{seq} INFO")]))
        accepted = d.check_remote_cseq(info)
        assert accepted == (seq > highest)
        highest = max(highest, seq)
        assert d.remote_seq == highest


def test_target_refresh_follows_the_new_contact() -> None:
    d = Dialog.from_uas(invite(), "b1", CONTACT_B)
    reinvite = Request("INVITE", URI.parse("sip:bob@x"), Headers([("Contact", "<sip:alice@127.0.0.1:6000>")]))
    d.refresh_target(reinvite)
    assert d.remote_target == URI.parse("sip:alice@127.0.0.1:6000")


def test_dialog_needs_tags_and_a_contact() -> None:
    req = invite()
    with pytest.raises(ValueError):
        Dialog.from_uac(req, make_response(req, 200), CONTACT_A)  # no To tag
    no_contact = req.copy()
    no_contact.headers.remove("Contact")
    with pytest.raises(ValueError):
        Dialog.from_uas(no_contact, "b1", CONTACT_B)


@pytest.mark.parametrize(("uri", "address"), [
    ("sip:bob@127.0.0.1", Address("127.0.0.1", 5060, "udp")),
    ("sip:bob@127.0.0.1:5080;transport=tcp", Address("127.0.0.1", 5080, "tcp")),
    ("sip:bob@[::1]:5070", Address("::1", 5070, "udp")),
    ("sips:bob@127.0.0.1", Address("127.0.0.1", 5061, "tls")),
    ("sip:bob@example.org;maddr=127.0.0.2", Address("127.0.0.2", 5060, "udp")),
])
def test_uri_destination(uri: str, address: Address) -> None:
    assert uri_destination(URI.parse(uri)) == address


def test_cseq_in_order_changes_nothing_until_accepted() -> None:
    d = Dialog.from_uas(invite(seq=5), "b1", CONTACT_B)
    highest = Request("INFO", URI.parse("sip:bob@x"), Headers([("CSeq", f"{2**31 - 1} INFO")]))
    assert d.cseq_in_order(highest) and d.remote_seq == 5  # a stranger's, refused later: not recorded
    later = Request("INFO", URI.parse("sip:bob@x"), Headers([("CSeq", "6 INFO")]))
    assert d.cseq_in_order(later)
    d.accept_remote_cseq(highest)
    d.accept_remote_cseq(later)  # answered after a higher one: the number never goes back
    assert d.remote_seq == 2**31 - 1 and not d.cseq_in_order(later)
