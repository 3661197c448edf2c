"""The transport layer's rules: Via stamping, received/rport, response routing, the size rule."""

from __future__ import annotations

from sipmob.sip.message import Headers, Request, parse_message
from sipmob.sip.transaction import TimerConfig, TransactionLayer
from sipmob.sip.transport import (
    Address,
    Connections,
    apply_received,
    bad_request_response,
    response_destination,
    sent_by_is_local,
    stamp_via,
    transport_for_size,
)
from sipmob.sip.uri import URI

US_UDP = Address("192.0.2.1", 5060, "udp")
US_TCP = Address("192.0.2.1", 5060, "tcp")


def request(via: str | None = None) -> Request:
    headers = Headers([("Max-Forwards", "70"), ("From", "<sip:a@example.com>;tag=1"),
                       ("To", "<sip:b@example.com>"), ("Call-ID", "c"), ("CSeq", "1 OPTIONS")])
    if via is not None:
        headers.add("Via", via, first=True)
    return Request("OPTIONS", URI.parse("sip:b@example.com"), headers)


def test_stamp_via_puts_our_sent_by_a_cookie_branch_and_an_empty_rport_on_top() -> None:
    top = stamp_via(request(), US_UDP, "z9hG4bKabc").top_via
    assert (top.transport, top.host, top.port) == ("UDP", "192.0.2.1", 5060)
    assert top.branch == "z9hG4bKabc" and top.rport == ""


def test_stamp_via_keeps_a_via_the_tu_set_but_corrects_its_transport() -> None:
    stamped = stamp_via(request("SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKinvite"), US_TCP, "z9hG4bKnew")
    assert len(stamped.vias) == 1
    assert stamped.top_via.branch == "z9hG4bKinvite" and stamped.top_via.transport == "TCP"


def test_received_is_added_when_the_sent_by_host_is_not_the_source() -> None:
    req = apply_received(request("SIP/2.0/UDP pc33.example.com;branch=z9hG4bK1"),
                         Address("198.51.100.7", 5060, "udp"))
    assert req.top_via.received == "198.51.100.7" and req.top_via.rport is None


def test_nothing_is_added_when_the_sent_by_is_the_source_and_rport_was_not_asked() -> None:
    req = apply_received(request("SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bK1"),
                         Address("198.51.100.7", 5060, "udp"))
    assert req.top_via.received is None and req.top_via.rport is None


def test_rport_is_filled_with_the_source_port_and_received_always_added() -> None:
    req = apply_received(request("SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bK1;rport"),
                         Address("198.51.100.7", 40123, "udp"))
    assert req.top_via.rport == 40123 and req.top_via.received == "198.51.100.7"


def test_udp_response_goes_to_received_and_rport() -> None:
    req = apply_received(request("SIP/2.0/UDP 10.0.0.2:5062;branch=z9hG4bK1;rport"),
                         Address("203.0.113.5", 40000, "udp"))
    assert response_destination(req, None) == Address("203.0.113.5", 40000, "udp")


def test_udp_response_goes_to_received_and_sent_by_port_without_rport() -> None:
    req = apply_received(request("SIP/2.0/UDP 10.0.0.2:5062;branch=z9hG4bK1"),
                         Address("203.0.113.5", 40000, "udp"))
    assert response_destination(req, None) == Address("203.0.113.5", 5062, "udp")


def test_udp_response_goes_to_maddr_when_present() -> None:
    req = request("SIP/2.0/UDP 10.0.0.2;branch=z9hG4bK1;maddr=239.1.1.1;ttl=1")
    assert response_destination(req, None) == Address("239.1.1.1", 5060, "udp")


def test_response_goes_to_the_sent_by_with_the_default_port() -> None:
    req = request("SIP/2.0/UDP 198.51.100.7;branch=z9hG4bK1")
    assert response_destination(req, None) == Address("198.51.100.7", 5060, "udp")


def test_tcp_response_reuses_the_open_connection_the_request_came_on() -> None:
    source = Address("203.0.113.5", 40001, "tcp")
    connections = Connections()
    connections.opened(source)
    req = apply_received(request("SIP/2.0/TCP 10.0.0.2:5062;branch=z9hG4bK1"), source)
    assert response_destination(req, source, connections) == source


def test_tcp_response_opens_a_new_connection_to_received_and_sent_by_port_once_closed() -> None:
    source = Address("203.0.113.5", 40001, "tcp")
    connections = Connections()
    connections.opened(source)
    connections.closed(source)
    req = apply_received(request("SIP/2.0/TCP 10.0.0.2:5062;branch=z9hG4bK1"), source)
    assert response_destination(req, source, connections) == Address("203.0.113.5", 5062, "tcp")


def test_a_request_over_1300_bytes_for_udp_must_go_over_tcp() -> None:
    assert transport_for_size(1301, "udp") == "tcp"
    assert transport_for_size(1300, "udp") == "udp"
    assert transport_for_size(5000, "tcp") == "tcp"
    assert transport_for_size(5000, "udp", limit=None) == "udp"


def test_the_layer_sends_a_large_request_over_tcp_with_a_tcp_via() -> None:
    lyr = TransactionLayer([US_UDP, US_TCP], TimerConfig())
    big = request()
    big.body = b"x" * 1400
    lyr.send_request(big, Address("198.51.100.7", 5060, "udp"), 0.0)
    ((data, dest),) = lyr.messages_to_send()
    assert dest == Address("198.51.100.7", 5060, "tcp")
    assert parse_message(data).top_via.transport == "TCP"


def test_a_response_is_ours_only_if_its_top_via_sent_by_is_one_of_our_addresses() -> None:
    resp = parse_message(b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1\r\n"
                         b"From: <sip:a@x>;tag=1\r\nTo: <sip:b@x>;tag=2\r\nCall-ID: c\r\n"
                         b"CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")
    assert sent_by_is_local(resp, {("192.0.2.1", 5060)})  # default port
    assert not sent_by_is_local(resp, {("192.0.2.1", 5070)})


def test_bad_request_response_copies_the_readable_headers_and_adds_a_to_tag() -> None:
    headers = Headers([("Via", "SIP/2.0/UDP 192.0.2.9;branch=z9hG4bK1"), ("From", "<sip:a@x>;tag=1"),
                       ("To", "<sip:b@x>"), ("Call-ID", "c"), ("CSeq", "1 INVITE")])
    response = bad_request_response(headers, 400, "Bad Contact", "t1")
    assert response is not None
    assert (response.status, response.reason, response.to.tag) == (400, "Bad Contact", "t1")
    assert response.top_via.branch == "z9hG4bK1" and response.cseq.method == "INVITE"


def test_bad_request_response_is_none_without_a_via() -> None:
    headers = Headers([("From", "<sip:a@x>;tag=1"), ("To", "<sip:b@x>"), ("Call-ID", "c"),
                       ("CSeq", "1 INVITE")])
    assert bad_request_response(headers, 400, "Missing Via", "t1") is None


def test_bad_request_response_is_none_for_an_ack() -> None:
    headers = Headers([("Via", "SIP/2.0/UDP 192.0.2.9;branch=z9hG4bK1"), ("From", "<sip:a@x>;tag=1"),
                       ("To", "<sip:b@x>"), ("Call-ID", "c"), ("CSeq", "1 ACK")])
    assert bad_request_response(headers, 400, "Bad", "t1") is None


def test_connections_remember_what_is_open() -> None:
    connections = Connections()
    peer = Address("198.51.100.7", 5060, "tcp")
    connections.opened(peer)
    assert peer in connections and len(connections) == 1
    connections.closed(peer)
    assert peer not in connections and len(connections) == 0


def test_noted_via_reads_the_same_as_the_same_via_parsed_from_the_wire() -> None:
    for via, source in [("SIP/2.0/UDP pc33.example.com;branch=z9hG4bK1;rport;x=\"q\"", US_UDP),
                        ("SIP/2.0/TCP [2001:db8::1]:5070;branch=z9hG4bK2;RPORT=1;Received=x",
                         Address("2001:db8::9", 40000, "tcp")),
                        ("SIP/2.0/UDP a.example;branch=z9hG4bK3, SIP/2.0/UDP b.example;branch=z9hG4bK4",
                         US_UDP)]:
        noted = apply_received(request(via), source)
        assert noted.vias == parse_message(noted.to_bytes()).vias
