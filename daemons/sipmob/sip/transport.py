"""The SIP transport layer's rules (RFC 3261 §18, RFC 3581), sans-I/O.

Responsible for the decisions the transport layer makes about a message, as plain functions of the
message, the address it came from and the connections that are open:

- stamping our Via on a request we send (§18.1.1, §8.1.1.7: sent-by, a branch with the magic
  cookie, an empty ``rport`` asking for RFC 3581 symmetric response routing);
- which transport carries a request: §18.1.1 says a request within 200 bytes of the path MTU, or
  larger than 1300 bytes when the MTU is unknown, MUST go over a congestion-controlled transport,
  so a large request meant for UDP goes over TCP to the same address, with its Via changed to say
  so (`transport_for_size`);
- ``received`` and ``rport`` on a request we receive (§18.2.1, RFC 3581 §4), and the transport it
  really came on when its Via names another one;
- where a response goes (§18.2.2, RFC 3581 §4): back over the connection the request came on while
  it is open, else to ``maddr``, ``received``/``rport`` or the sent-by;
- whether a response is for us at all (§18.1.2: the top Via's sent-by is one of ours);
- which reliable connections are open, so responses and requests reuse them (`Connections`).

Not here: sockets and connection setup (`sipmob.service.sipnet`), framing of a byte stream
(`sipmob.sip.message.StreamFramer`), transactions (`sipmob.sip.transaction`), DNS (RFC 3263).
"""

from __future__ import annotations

from typing import NamedTuple, TypeVar

from sipmob.sip.headers import Via
from sipmob.sip.message import Headers, Request, Response

MAGIC_COOKIE = "z9hG4bK"  # §8.1.1.7: a branch that starts with it was made by an RFC 3261 element
DEFAULT_PORTS = {"udp": 5060, "tcp": 5060, "sctp": 5060, "tls": 5061, "ws": 80, "wss": 443}
RELIABLE_TRANSPORTS = frozenset({"tcp", "tls", "sctp", "ws", "wss"})
UDP_SIZE_LIMIT = 1300  # §18.1.1: the MTU is unknown to us, so 1300 bytes
MAX_DATAGRAM = 65507  # the largest UDP payload over IPv4 (65535 less the IP and UDP headers)

M = TypeVar("M", Request, Response)


class Address(NamedTuple):
    """Where a message comes from or goes to: a host (IP literal), a port and a transport name
    in lower case ("udp", "tcp")."""

    host: str
    port: int
    transport: str


def is_reliable(transport: str) -> bool:
    return transport.lower() in RELIABLE_TRANSPORTS


def default_port(transport: str) -> int:
    return DEFAULT_PORTS.get(transport.lower(), 5060)


def transport_for_size(size: int, transport: str, limit: int | None = UDP_SIZE_LIMIT) -> str:
    """§18.1.1: the transport that must carry a request of `size` bytes meant for `transport`.

    Only UDP is ever switched, and only to TCP; ``limit=None`` turns the rule off (for a peer known
    to listen on UDP only, where a large request is better tried than not sent).
    """
    if limit is not None and transport.lower() == "udp" and size > limit:
        return "tcp"
    return transport.lower()


def fits_transport(message: Response, size: int) -> bool:
    """Whether a response of `size` bytes can go where its top Via sends it: over UDP, only up
    to `MAX_DATAGRAM` (§18.2.2 has no fallback to TCP for responses; 513 is the honest answer)."""
    top = _top_via(message)
    return top is None or is_reliable(top.transport) or size <= MAX_DATAGRAM


def new_branch(token: str) -> str:
    """A branch for a new transaction: the magic cookie and a token unique in space and time."""
    return MAGIC_COOKIE + token


def stamp_via(request: Request, sent_by: Address, branch: str) -> Request:
    """The request as sent: with our Via on top (§18.1.1), or, when the TU already put one there
    (a CANCEL or an ACK for a non-2xx must repeat the INVITE's, §9.1, §17.1.1.3), with that Via's
    transport corrected to the one that carries it."""
    top = _top_via(request)
    transport = sent_by.transport.upper()
    if top is not None:
        if top.transport == transport:
            return request
        return _with_top_via(request, Via(transport, top.host, top.port, top.params))
    headers = request.headers.copy()
    via = Via(transport, sent_by.host, sent_by.port, (("branch", branch), ("rport", None)))
    headers.add("Via", str(via), first=True)
    return request.replace(headers=headers)


def apply_received(request: M, source: Address) -> M:
    """§18.2.1 and RFC 3581 §4: note on the top Via where the request really came from.

    ``received`` when the sent-by host is not the source address (always, when the client asked for
    ``rport``), and the source port in ``rport`` when the client asked for it.
    """
    top = _top_via(request)
    if top is None:
        return request
    if top.transport.lower() != source.transport:
        # A Via naming another transport than the one the request came on (UDP saying TCP) would
        # have us open connections to a host and port the sender chose: the response goes back
        # to the source over the transport it came on (§18.2.2 as RFC 3581 §4 applies it), so
        # the Via is made to say so, and every later response (2xx retransmissions included)
        # follows it.
        params = [(n, v) for n, v in top.params if n.lower() not in ("received", "rport")]
        params += [("received", source.host), ("rport", str(source.port))]
        return _with_top_via(request, Via(source.transport.upper(), top.host, top.port, tuple(params)))
    asked_rport = top.rport == ""
    if not asked_rport and top.host == source.host:
        return request
    params = list(top.params)
    names = [n.lower() for n, _ in params]
    news = (("rport", str(source.port)), ("received", source.host)) if asked_rport else \
        (("received", source.host),)
    for name, value in news:
        if name in names:
            params[names.index(name)] = (params[names.index(name)][0], value)
        else:
            params.append((name, value))
    return _with_top_via(request, Via(top.transport, top.host, top.port, tuple(params)))


def response_destination(response: Response | Request, source: Address | None,
                         connections: Connections | None = None) -> Address | None:
    """§18.2.2 and RFC 3581 §4: where a response to a request goes, from the request's top Via (as
    noted by `apply_received`) and the address the request came from. None without a usable Via."""
    top = _top_via(response)
    if top is None:
        return None
    return via_destination(top, source, connections)


def via_destination(top: Via, source: Address | None,
                    connections: Connections | None = None) -> Address | None:
    """`response_destination` from the request's top Via alone, for a transaction that keeps
    only that much of its request."""
    transport = top.transport.lower()
    if is_reliable(transport):
        # Back over the connection the request arrived on, while it is open; if it has closed, a
        # new connection to the received address and the sent-by port.
        if source is not None and (connections is None or source in connections):
            return source
        host = top.received or top.host
        return Address(host, top.port or default_port(transport), transport)
    if top.maddr:
        return Address(top.maddr, top.port or default_port(transport), transport)
    if top.received:
        rport = top.rport
        if isinstance(rport, int):
            return Address(top.received, rport, transport)
        return Address(top.received, top.port or default_port(transport), transport)
    return Address(top.host, top.port or default_port(transport), transport)


def sent_by_is_local(response: Response, local: set[tuple[str, int]]) -> bool:
    """§18.1.2: a response whose top Via sent-by is not one of our addresses is not for us."""
    top = _top_via(response)
    if top is None:
        return False
    if not local:
        return True
    return (top.host, top.port or default_port(top.transport)) in local


class Connections:
    """The reliable connections that are open, by the remote address, so that a message for that
    address reuses its connection (§18: "the same connection" for responses, and no new connection
    per request to a peer we already hold one with)."""

    def __init__(self) -> None:
        self._open: set[Address] = set()

    def opened(self, remote: Address) -> None:
        self._open.add(remote)

    def closed(self, remote: Address) -> None:
        self._open.discard(remote)

    def __contains__(self, remote: object) -> bool:
        return remote in self._open

    def __len__(self) -> int:
        return len(self._open)


def _top_via(message: Request | Response) -> Via | None:
    if "via" not in message.headers:
        return None
    return message.top_via


def _with_top_via(message: M, via: Via) -> M:
    rest: list[Via] = message.vias[1:]
    headers = message.headers.copy()
    headers.replace_top("Via", str(via), [via, *rest])  # the Vias, as parsing them would give
    if isinstance(message, Request):
        return Request(message.method, message.uri, headers, message.body)
    return Response(message.status, message.reason, headers, message.body)


def bad_request_response(headers: Headers, status: int, reason: str, to_tag: str) -> Response | None:
    """A stateless answer to a request we could not parse (§8.2, §21.4.1), built from the headers
    the parser could read: None when there is not enough to route or match it (no Via, From, To,
    Call-ID or CSeq), or when it was an ACK, which is never answered (§17.1.1.3)."""
    if any(name not in headers for name in ("Via", "From", "To", "Call-ID", "CSeq")):
        return None
    cseq = headers.get("CSeq") or ""
    if cseq.split()[-1:] == ["ACK"]:
        return None
    out = Headers()
    for name in ("Via", "From", "To", "Call-ID", "CSeq"):
        for value in headers.get_lines(name):
            out.add(name, value)
    response = Response(status, reason, out)
    to = response.to
    if to.tag is None:  # §8.2.6.2: a final response carries our To tag
        out.set("To", str(to.with_tag(to_tag)))
    return response
