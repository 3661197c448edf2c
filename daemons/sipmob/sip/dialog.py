"""SIP dialogs (RFC 3261 §12, §13.2.2.4), sans-I/O.

Responsible for the state one dialog keeps and the rules that use it: creating it on the UAC side
from a request and a response with a To tag (§12.1.2) and on the UAS side from a request (§12.1.1),
early and confirmed states, the route set from Record-Route, local and remote CSeq numbers and the
§12.2.2 ordering check, remote-target refresh, and building requests within the dialog
(§12.2.1.1, loose and strict routing) including the ACK for a 2xx (§13.2.2.4). `uri_destination`
turns the next hop into an address without DNS.

Not here: what a method means or when to send it (`sipmob.sip.ua`), transactions and timers
(`sipmob.sip.transaction`), sockets.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Sequence

from sipmob.sip.headers import CSeq
from sipmob.sip.message import Headers, Request, Response
from sipmob.sip.transport import Address, default_port
from sipmob.sip.uri import URI, NameAddr

__all__ = ["Dialog", "DialogId", "DialogState", "uri_destination"]

MAX_FORWARDS = "70"


class DialogState(enum.Enum):
    EARLY = "early"
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


@dataclasses.dataclass(frozen=True, slots=True)
class DialogId:
    """§12: Call-ID, local tag and remote tag, from this side's point of view."""

    call_id: str
    local_tag: str
    remote_tag: str


def uri_destination(uri: URI) -> Address:
    """The address a request for `uri` goes to: its host (an IP literal; no RFC 3263 DNS), its port
    or the transport's default, and its ``transport`` parameter (UDP when absent)."""
    transport = uri.transport or ("tls" if uri.is_secure else "udp")
    host = uri.param("maddr") or uri.host
    return Address(host, uri.port or default_port(transport), transport)


class Dialog:
    """The state of one dialog (§12.1): its id, CSeq numbers, URIs, remote target and route set.

    `is_uac` says which side created it (the Call-ID is ours when True: §14.1 uses that for glare).
    """

    __slots__ = ("call_id", "is_uac", "local_contact", "local_seq", "local_tag", "local_uri",
                 "remote_seq", "remote_tag", "remote_target", "remote_uri", "route_set", "secure",
                 "state")

    def __init__(self, *, call_id: str, local_tag: str, remote_tag: str, local_uri: NameAddr,
                 remote_uri: NameAddr, remote_target: URI, route_set: list[NameAddr],
                 local_seq: int, remote_seq: int | None, is_uac: bool, local_contact: NameAddr,
                 state: DialogState, secure: bool = False) -> None:
        self.call_id = call_id
        self.local_tag = local_tag
        self.remote_tag = remote_tag
        self.local_uri = local_uri
        self.remote_uri = remote_uri
        self.remote_target = remote_target
        self.route_set = route_set
        self.local_seq = local_seq
        self.remote_seq = remote_seq
        self.is_uac = is_uac
        self.local_contact = local_contact
        self.state = state
        self.secure = secure

    def __repr__(self) -> str:
        return f"<Dialog {self.call_id} {self.local_tag}/{self.remote_tag} {self.state.value}>"

    @property
    def id(self) -> DialogId:
        return DialogId(self.call_id, self.local_tag, self.remote_tag)

    # Creation (§12.1) -------------------------------------------------------------------------

    @classmethod
    def from_uac(cls, request: Request, response: Response, local_contact: NameAddr) -> Dialog:
        """§12.1.2: the dialog a 1xx (with a To tag) or 2xx to our `request` creates."""
        remote_tag = response.to.tag
        local_tag = request.from_.tag
        if not remote_tag or not local_tag:
            raise ValueError("a dialog needs both tags")
        contacts = response.contact
        target = contacts[0].uri if contacts else request.uri
        return cls(
            call_id=request.call_id, local_tag=local_tag, remote_tag=remote_tag,
            local_uri=_without_tag(request.from_), remote_uri=_without_tag(request.to),
            remote_target=target, route_set=list(reversed(response.record_route)),
            local_seq=request.cseq.seq, remote_seq=None, is_uac=True, local_contact=local_contact,
            state=DialogState.CONFIRMED if response.status >= 200 else DialogState.EARLY,
            secure=request.uri.is_secure,
        )

    @classmethod
    def from_uas(cls, request: Request, local_tag: str, local_contact: NameAddr, *,
                 confirmed: bool = False, initial_seq: int = 1) -> Dialog:
        """§12.1.1: the dialog our response (1xx or 2xx with `local_tag`) to `request` creates."""
        remote_tag = request.from_.tag
        if not remote_tag:
            raise ValueError("a request without a From tag creates no dialog")
        contacts = request.contact
        if not contacts:
            raise ValueError("a dialog-creating request needs a Contact")
        return cls(
            call_id=request.call_id, local_tag=local_tag, remote_tag=remote_tag,
            local_uri=_without_tag(request.to), remote_uri=_without_tag(request.from_),
            remote_target=contacts[0].uri, route_set=list(request.record_route),
            local_seq=initial_seq - 1, remote_seq=request.cseq.seq, is_uac=False,
            local_contact=local_contact,
            state=DialogState.CONFIRMED if confirmed else DialogState.EARLY,
            secure=request.uri.is_secure,
        )

    # Durable form -----------------------------------------------------------------------------

    def to_record(self) -> dict[str, object]:
        """The dialog as plain data (strings, numbers, lists), for a daemon's state file."""
        return {"call_id": self.call_id, "local_tag": self.local_tag, "remote_tag": self.remote_tag,
                "local_uri": str(self.local_uri), "remote_uri": str(self.remote_uri),
                "remote_target": str(self.remote_target), "route_set": [str(r) for r in self.route_set],
                "local_seq": self.local_seq, "remote_seq": self.remote_seq, "is_uac": self.is_uac,
                "local_contact": str(self.local_contact), "state": self.state.value, "secure": self.secure}

    @classmethod
    def from_record(cls, record: dict[str, object], *, seq_margin: int = 0) -> Dialog:
        """The dialog `to_record` gave; raises ValueError (or SIPParseError) for a damaged record.
        `seq_margin` moves the local CSeq on, so that requests after a restart stay above any that
        went out after the record was written (§12.2.1.1 asks only that it grows)."""
        def text(name: str) -> str:
            value = record.get(name)
            if not isinstance(value, str):
                raise ValueError(f"dialog record: {name} missing")
            return value

        local_seq, remote_seq = record.get("local_seq"), record.get("remote_seq")
        if not isinstance(local_seq, int) or not (remote_seq is None or isinstance(remote_seq, int)):
            raise ValueError("dialog record: bad CSeq numbers")
        routes = record.get("route_set") or []
        if not isinstance(routes, list):
            raise ValueError("dialog record: bad route set")
        return cls(call_id=text("call_id"), local_tag=text("local_tag"), remote_tag=text("remote_tag"),
                   local_uri=NameAddr.parse(text("local_uri")), remote_uri=NameAddr.parse(text("remote_uri")),
                   remote_target=URI.parse(text("remote_target")),
                   route_set=[NameAddr.parse(str(r)) for r in routes], local_seq=local_seq + seq_margin,
                   remote_seq=remote_seq, is_uac=bool(record.get("is_uac")),
                   local_contact=NameAddr.parse(text("local_contact")), state=DialogState(text("state")),
                   secure=bool(record.get("secure")))

    # Updates ----------------------------------------------------------------------------------

    def update_from_response(self, response: Response) -> None:
        """A later response to the dialog-creating request, or a 2xx to a target refresh: an
        early dialog's route set is recomputed (§12.1.2, §13.2.2.4), a 2xx confirms it, the remote
        target follows the Contact (§12.2.1.2)."""
        if self.state is DialogState.EARLY and self.is_uac:
            self.route_set = list(reversed(response.record_route))
        if 200 <= response.status < 300 and self.state is DialogState.EARLY:
            self.state = DialogState.CONFIRMED
        contacts = response.contact
        if contacts and (response.status < 300):
            self.remote_target = contacts[0].uri

    def confirm(self) -> None:
        if self.state is DialogState.EARLY:
            self.state = DialogState.CONFIRMED

    def terminate(self) -> None:
        self.state = DialogState.TERMINATED

    def cseq_in_order(self, request: Request) -> bool:
        """§12.2.2: False for a request whose CSeq is not above the last one accepted (answer
        500). ACK and CANCEL carry the INVITE's number and are not checked. Nothing changes here:
        the number is recorded by `accept_remote_cseq` once the request is accepted, so a request
        refused first (a stranger's, 403) cannot push the peer's next requests out of order."""
        if request.method in ("ACK", "CANCEL"):
            return True
        # equal means a request we have seen, which a transaction would have absorbed
        return self.remote_seq is None or request.cseq.seq > self.remote_seq

    def accept_remote_cseq(self, request: Request) -> None:
        """§12.2.2: the remote sequence number becomes the accepted request's (never lower: two
        requests may be answered in another order than they came)."""
        if request.method in ("ACK", "CANCEL"):
            return
        if self.remote_seq is None or request.cseq.seq > self.remote_seq:
            self.remote_seq = request.cseq.seq

    def check_remote_cseq(self, request: Request) -> bool:
        """`cseq_in_order`, recording the number when it is: for a request accepted as it comes."""
        if not self.cseq_in_order(request):
            return False
        self.accept_remote_cseq(request)
        return True

    def refresh_target(self, request: Request) -> None:
        """§12.2.2: a target refresh request (re-INVITE, UPDATE, SUBSCRIBE...) replaces the remote
        target with its Contact."""
        contacts = request.contact
        if contacts:
            self.remote_target = contacts[0].uri

    # Requests (§12.2.1.1) -----------------------------------------------------------------------

    def next_hop(self) -> URI:
        """Where the next request goes: the first route, or the remote target without one."""
        return self.route_set[0].uri if self.route_set else self.remote_target

    def destination(self) -> Address:
        return uri_destination(self.next_hop())

    def create_request(self, method: str, *, headers: Sequence[tuple[str, str]] = (),
                       body: bytes = b"", content_type: str | None = None,
                       cseq: int | None = None) -> Request:
        """A request within the dialog (§12.2.1.1): To, From, Call-ID from the dialog, the next
        local CSeq (or `cseq` for an ACK or CANCEL), Request-URI and Route from the remote target
        and route set (strict routing when the first route lacks ``lr``), our Contact."""
        if cseq is None:
            self.local_seq += 1
            cseq = self.local_seq
        if not self.route_set:
            ruri = self.remote_target
            routes = [str(r) for r in self.route_set]
        elif self.route_set[0].uri.has_param("lr"):
            ruri = self.remote_target
            routes = [str(r) for r in self.route_set]
        else:
            # strict router: it gets the Request-URI, the remote target goes last in Route
            ruri = self.route_set[0].uri.without_params("method", "maddr", "ttl", "transport", "lr")
            routes = [str(r) for r in self.route_set[1:]] + [f"<{self.remote_target}>"]
        h = Headers()
        h.add("Max-Forwards", MAX_FORWARDS)
        for route in routes:
            h.add("Route", route)
        h.add("From", str(self.local_uri.with_tag(self.local_tag)))
        h.add("To", str(self.remote_uri.with_tag(self.remote_tag)))
        h.add("Call-ID", self.call_id)
        h.add("CSeq", str(CSeq(cseq, method)))
        if method not in ("ACK", "CANCEL", "BYE"):
            h.add("Contact", str(self.local_contact))
        for name, value in headers:
            h.add(name, value)
        if body:
            h.add("Content-Type", content_type or "application/sdp")
        return Request(method, ruri, h, body)

    def create_ack(self, invite_cseq: int, body: bytes = b"",
                   content_type: str | None = None) -> Request:
        """§13.2.2.4: the ACK for a 2xx to the INVITE with CSeq `invite_cseq`, built like any
        request within the dialog, with the INVITE's CSeq number (and the answer for a late offer)."""
        return self.create_request("ACK", body=body, content_type=content_type, cseq=invite_cseq)


def _without_tag(addr: NameAddr) -> NameAddr:
    return dataclasses.replace(addr, params=tuple(p for p in addr.params if p[0].lower() != "tag"))
