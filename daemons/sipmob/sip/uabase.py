"""The state every part of the SIP user agent shares, and the bookkeeping of its calls.

Responsible for: the constants of what we allow and support, the records the core keeps (`_Call`,
with its state moved only through `sipmob.sip.callstate.next_state`; a pending re-INVITE; a request
waiting for the application's answer; a request of ours waiting for its final response), and
`UABase`: the constructor, the read-only views, making handles, answering, and ending calls.

Not here: what each usage does (`sipmob.sip.invite`, `sipmob.sip.refer`, `sipmob.sip.register`,
`sipmob.sip.challenge`), the event pump and the dispatch (`sipmob.sip.ua`).
"""

from __future__ import annotations

import abc
import collections
import dataclasses
import logging
import random
import secrets
from collections.abc import Callable, Sequence

from sipmob.sip import transaction as tx
from sipmob.sip.auth import Challenge
from sipmob.sip.callstate import UP, CallInput, CallState, next_state
from sipmob.sip.dialog import Dialog, DialogId, uri_destination
from sipmob.sip.headers import CSeq
from sipmob.sip.message import Headers, Request, Response, make_response, reason_phrase
from sipmob.sip.policy import DEFAULT_POLICY, Admission, RequestPolicy
from sipmob.sip.prack import ReliableProvisionals, ReliableReceiver
from sipmob.sip.session_timer import Policy, SessionTimer, UasDecision
from sipmob.sip.transaction import TimerConfig, TransactionKey, TransactionLayer
from sipmob.sip.transport import Address, Connections, fits_transport
from sipmob.sip.uaevents import CallTerminated, CredentialsLookup, UAError, UAEvent
from sipmob.sip.uri import URI, NameAddr, SIPParseError

log = logging.getLogger("sipmob.sip.ua")

ALLOW = ("INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "INFO", "REFER", "NOTIFY", "SUBSCRIBE", "PRACK")
ACCEPT = ("application/sdp", "message/sipfrag")
SUPPORTED = ("replaces", "100rel")
SDP = "application/sdp"
SIPFRAG = "message/sipfrag"
_IN_DIALOG_ONLY = frozenset({"BYE", "INFO", "REFER", "NOTIFY", "PRACK"})
_GLARE_RETRIES = 3
REFER_EXPIRES = 60
# RFC 8760 §2.4: prefer the strongest algorithm a challenge offers
_ALGORITHM_STRENGTH = {"SHA-512-256": 3, "SHA-256": 2, "MD5": 1}
_MAX_NONCES = 64
_RETRY_BASE = 30.0  # RFC 5626 §4.5 base-time (no flow recovered) and max-time
_RETRY_MAX = 1800.0


# Internal state ---------------------------------------------------------------------------------


@dataclasses.dataclass(slots=True)
class _ServerRequest:
    request: Request
    key: TransactionKey
    call: int | None
    to_tag: str | None
    timer: UasDecision | None = None  # RFC 4028: what its 2xx states about session timers
    # RFC 3262 §5: what a PRACK carrying a new offer released (the 1xx or 2xx queued behind the
    # 1xx it acknowledges), sent after the PRACK's own 2xx with the answer
    held: list[Response] = dataclasses.field(default_factory=list)
    source: str = ""  # the host it came from (a request that may form a dialog: its peer's host)


@dataclasses.dataclass(slots=True)
class _Reinvite:
    """A re-INVITE of ours: `key` is None while it waits for its §14.1 glare retry."""

    op: int
    request: Request
    key: TransactionKey | None
    sdp: bytes | None
    retries: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class _ClientOp:
    """A request of ours other than INVITE and REGISTER, until its final response."""

    op: int
    call: int | None
    method: str
    bound: str | None = None  # the Call-ID bound to a local address for this request alone


@dataclasses.dataclass(slots=True)
class _Call:
    handle: int
    is_uac: bool
    state: CallState  # moved only by `UABase._move`, along `callstate.TRANSITIONS`
    invite: Request
    invite_key: TransactionKey | None = None
    dialog: Dialog | None = None
    local_sdp: bytes | None = None
    remote_sdp: bytes | None = None
    answer_for: Callable[[bytes], bytes] | None = None  # UAC late offer: our answer for the ACK
    cancel_wanted: bool = False
    cancelled: bool = False
    acks: dict[int, tuple[Request, Address]] = dataclasses.field(default_factory=dict)
    # UAS: the 2xx we retransmit until the ACK (§13.3.1.4)
    ok: Response | None = None
    ok_seq: int = 0
    ok_interval: float = 0.0
    ok_next: float | None = None
    ok_give_up: float = 0.0
    reinvite: _Reinvite | None = None  # the re-INVITE we sent, until its final response
    reinvite_retry_at: float | None = None
    reinvite_answer_for: Callable[[bytes], bytes] | None = None
    ack_pending: int | None = None  # CSeq of a 2xx whose ACK waits for `UACore.ack`
    kind: str = "invite"  # or "subscription" (RFC 6665), which has no INVITE, ACK or BYE
    # the host the dialog-forming request came from (UAS) or was sent to (UAC), as the core saw
    # it, whatever the peer's Contact says (a peer behind a NAT); an adopted dialog's as stored
    peer_host: str = ""
    # re-INVITE we received and have not answered finally yet
    incoming_reinvite: int | None = None
    replaces_call: int | None = None
    refers: dict[int, int] = dataclasses.field(default_factory=dict)  # REFER CSeq -> op
    refer_subs: dict[int, int] = dataclasses.field(default_factory=dict)  # rid -> REFER CSeq (theirs)
    # RFC 3262: the UAS's reliable 1xx (None: the caller did not ask for them), the UAC's RSeq per
    # early dialog (by the To tag)
    reliable: ReliableProvisionals | None = None
    reliable_required: bool = False
    rseqs: dict[str, ReliableReceiver] = dataclasses.field(default_factory=dict)
    # the early dialogs of forks other than `dialog` (each PRACK in its own, CSeq rising in it),
    # and the answer each fork's reliable 1xx carried (its 2xx then brings no new one)
    forks: dict[str, Dialog] = dataclasses.field(default_factory=dict)
    early_answers: dict[str, bytes] = dataclasses.field(default_factory=dict)
    # RFC 4028 (`sipmob.sip.session_refresh`): the call's timer, what our 2xx to the INVITE states,
    # the peer's Allow (UPDATE refreshes), our UPDATE refresh under way, whether a 422 was retried
    timer: SessionTimer | None = None
    timer_decision: UasDecision | None = None
    peer_allow: frozenset[str] = frozenset()
    refresh_key: TransactionKey | None = None
    timer_retried: bool = False


@dataclasses.dataclass(slots=True)
class _Sent:
    """A request as we made it (before the layer's Via), kept until its final response, so a
    401/407 can be answered by sending it again (§22.2)."""

    request: Request
    destination: Address
    dialog: Dialog | None
    # (header, realm) -> the challenge answered in this request; header is the one we send
    challenges: dict[tuple[str, str], Challenge] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(slots=True)
class _Registration:
    handle: int
    registrar: URI
    aor: URI
    call_id: str
    expires: int
    cseq: int = 0
    state: str = "registering"  # registered, failed, unregistering
    key: TransactionKey | None = None
    refresh_at: float | None = None
    failures: int = 0
    stale_contact: URI | None = None  # a Contact we left (HMMP): removed in the next REGISTER
    interval_retried: bool = False



class UABase(abc.ABC):
    """One SIP user agent: its calls, dialogs and the transactions under them.

    `local` are the addresses we listen on (the first one is our Contact); `capabilities_sdp`
    is the body of our OPTIONS answers (RFC 3261 §11.2). `token` makes tags, Call-IDs and branches;
    `rng` draws the §14.1 back-off: tests pass deterministic ones.
    """

    def __init__(self, local: Sequence[Address], *, user: str = "sipmob", display_name: str | None = None,
                 user_agent: str | None = "sipmob/0.1", timers: TimerConfig | None = None,
                 capabilities_sdp: Callable[[], bytes] | None = None,
                 token: Callable[[], str] | None = None, rng: random.Random | None = None,
                 credentials: CredentialsLookup | tuple[str, str] | None = None,
                 allow: Sequence[str] = ALLOW, aor: URI | None = None,
                 policy: RequestPolicy | None = None, session_timer: Policy | None = None) -> None:
        self.credentials = credentials
        # RFC 4028 as a full party when given (`sipmob.sip.session_refresh`); None: no timers
        self.session_policy = session_timer
        # asked before any request from outside a dialog becomes an event (sipmob.sip.policy)
        self.policy: RequestPolicy = policy if policy is not None else DEFAULT_POLICY
        # the methods we take; a UA that only probes (the SA proxy) allows OPTIONS alone
        self.allow = tuple(allow)
        self._token = token or (lambda: secrets.token_hex(8))
        self.layer = TransactionLayer(list(local), timers, branch_token=self._token)
        self.timers = self.layer.timers
        first = local[0]
        params: tuple[tuple[str, str | None], ...] = (
            (("transport", first.transport),) if first.transport != "udp" else ())
        host = f"[{first.host}]" if ":" in first.host else first.host
        self.contact_uri = URI("sip", user=user, host=first.host, port=first.port, params=params)
        self.aor = aor or URI.parse(f"sip:{user}@{host}")
        self.display_name = display_name
        self.user_agent = user_agent
        self.capabilities_sdp = capabilities_sdp
        self.app_methods: set[str] = set()  # out-of-dialog methods the application answers itself
        self._rng = rng or random.Random()
        self._calls: dict[int, _Call] = {}
        self._by_dialog: dict[DialogId, int] = {}
        self._by_invite_key: dict[TransactionKey, int] = {}
        self._server: dict[int, _ServerRequest] = {}
        self._client: dict[TransactionKey, _ClientOp] = {}
        self._events: collections.deque[UAEvent] = collections.deque()
        self._next = 0
        self._sent: dict[TransactionKey, _Sent] = {}
        self._nc: dict[str, int] = {}  # nonce -> requests made with it (RFC 7616 §3.4)
        self._regs: dict[int, _Registration] = {}
        # Where a request outside a dialog goes, from its Request-URI. The default takes IP literals
        # only; the edge replaces it to add DNS (RFC 3263) or an outbound proxy.
        self.next_hop: Callable[[URI], Address] = uri_destination

    # Output ---------------------------------------------------------------------------------------

    @property
    def local_contact(self) -> NameAddr:
        return NameAddr(None, self.contact_uri)

    def next_event(self) -> UAEvent | None:
        return self._events.popleft() if self._events else None

    def messages_to_send(self) -> list[tuple[bytes, Address]]:
        return self.layer.messages_to_send()

    def messages_to_send_from(self) -> list[tuple[bytes, Address, Address | None]]:
        """As `messages_to_send`, each with the local address it leaves from (a bound call's)."""
        return self.layer.messages_to_send_from()

    @property
    def connections(self) -> Connections:
        """The open TCP connections of our layer, which the transport below reports."""
        return self.layer.connections

    def call_state(self, call: int) -> CallState:
        """The call's state (terminated once it has gone); a str enum, equal to its name."""
        c = self._calls.get(call)
        return c.state if c is not None else CallState.TERMINATED

    def dialog(self, call: int) -> Dialog | None:
        c = self._calls.get(call)
        return c.dialog if c is not None else None

    def call_id(self, call: int) -> str:
        """The call's Call-ID (known from the moment its INVITE is made)."""
        return self._call(call).invite.call_id

    def sdp(self, call: int) -> tuple[bytes | None, bytes | None]:
        """The call's (local, remote) session descriptions as last negotiated."""
        c = self._call(call)
        return c.local_sdp, c.remote_sdp

    def peer_host(self, call: int) -> str:
        """Where the call's dialog-forming request came from or went to ("" if unknown or ended):
        what a restarted UA needs to `adopt` it with, for the policy to know its peer as before."""
        c = self._calls.get(call)
        return c.peer_host if c is not None else ""

    def __len__(self) -> int:
        """Live calls (dialogs being set up or established)."""
        return len(self._calls)

    # The event pump -------------------------------------------------------------------------------

    def _pump(self, now: float) -> None:
        while (event := self.layer.next_event()) is not None:
            self._handle(event, now)

    def _handle(self, event: tx.Event, now: float) -> None:
        try:
            self._dispatch(event, now)
        except ValueError as exc:
            # a header the parser only reads on demand was malformed (SIPParseError), or a
            # response lacked what a dialog needs
            log.debug("dropped a message the UA cannot use: %s", exc)
            if isinstance(event, tx.RequestReceived) and event.request.method != "ACK":
                reason = exc.reason if isinstance(exc, SIPParseError) else "Bad Request"
                self._reply(event.request, 400, now, reason=reason)

    @abc.abstractmethod
    def _dispatch(self, event: tx.Event, now: float) -> None:
        """Route one transaction-layer event; the whole core's (`sipmob.sip.ua.UACore`)."""

    def _refused(self, event: tx.RequestReceived, replaced: Dialog | None, now: float, *,
                 dialog: Dialog | None = None, peer: str = "") -> bool:
        """Ask the policy; answer a refusal here. True when the request was refused."""
        dialogs = sum(1 for c in self._calls.values() if c.kind == "invite")
        refusal = self.policy.admit(Admission(event.request, event.source, now, replaced, dialogs, dialog,
                                              peer))
        if refusal is None:
            return False
        log.debug("refused %s from %s:%d: %d %s", event.request.method, event.source.host, event.source.port,
                  refusal.status, refusal.reason or reason_phrase(refusal.status))
        self._reply(event.request, refusal.status, now, reason=refusal.reason, headers=refusal.headers)
        return True

    def _accept_in_dialog(self, sr: _ServerRequest, status: int) -> None:
        """§12.2.2 once the answer to a request within a dialog is decided: any but a 4xx (the
        request refused before it acted, e.g. 403 to a host that is not the peer) accepts it, its
        CSeq becomes the remote sequence number; a 2xx to a target refresh request (RFC 6665
        §4.1.2.4, §4.2.1.3, RFC 3311 §5.2; a re-INVITE's is `answer_reinvite`'s) takes its Contact
        as the remote target."""
        c = self._calls.get(sr.call) if sr.call is not None else None
        if c is None or c.dialog is None or sr.request.to.tag is None or 400 <= status < 500:
            return
        c.dialog.accept_remote_cseq(sr.request)
        if 200 <= status < 300 and sr.request.method in ("SUBSCRIBE", "NOTIFY", "UPDATE"):
            c.dialog.refresh_target(sr.request)

    @staticmethod
    def _fits(response: Response) -> bool:
        fits = fits_transport(response, len(response.to_bytes()))
        if not fits:
            log.warning("a %d to %s does not fit in a UDP datagram: answering 513 instead",
                        response.status, response.cseq.method)
        return fits

    def _reply(self, request: Request, status: int, now: float, *, reason: str | None = None,
               headers: Sequence[tuple[str, str]] = (), body: bytes = b"") -> None:
        if request.method == "ACK":
            return
        h = [*headers, *self._response_common()]
        self.layer.send_response(make_response(request, status, reason, to_tag=self._token(),
                                               headers=h, body=body), now)

    def _out_of_dialog_headers(self, method: str, target: URI) -> Headers:
        """The headers that start a request outside any dialog (§8.1.1): a new Call-ID and tag."""
        h = Headers()
        h.add("Max-Forwards", "70")
        h.add("From", str(NameAddr(self.display_name, self.aor, (("tag", self._token()),))))
        h.add("To", str(NameAddr(None, target.replace(headers=()))))
        h.add("Call-ID", f"{self._token()}@{self.contact_uri.host}")
        h.add("CSeq", str(CSeq(1, method)))
        return h

    def _common_headers(self, h: Headers) -> None:
        for name, value in self._request_common():
            h.add(name, value)
        h.add("Allow", ", ".join(self.allow))
        timer = ("timer",) if self.session_policy is not None else ()  # RFC 4028 §7.1
        h.add("Supported", ", ".join((*SUPPORTED, *timer)))

    def _request_common(self) -> list[tuple[str, str]]:
        return [("User-Agent", self.user_agent)] if self.user_agent else []

    def _response_common(self) -> list[tuple[str, str]]:
        return [("Server", self.user_agent)] if self.user_agent else []

    # Bookkeeping --------------------------------------------------------------------------------

    def _new_handle(self) -> int:
        self._next += 1
        return self._next

    def _call(self, call: int) -> _Call:
        c = self._calls.get(call)
        if c is None:
            raise UAError(f"no call {call}")
        return c

    def _move(self, c: _Call, event: CallInput) -> None:
        c.state = next_state(c.state, event)

    def _end(self, c: _Call, reason: str, now: float) -> None:
        was_up = c.state in UP
        self._forget(c, now)
        if was_up or reason in ("replaced", "no-ack"):
            self._events.append(CallTerminated(c.handle, reason))

    def _forget(self, c: _Call, now: float) -> None:
        """Terminated dialogs and calls are removed at once; their transactions end on their own."""
        self._move(c, CallInput.END)
        c.ok = None
        c.ok_next = None
        c.reinvite_retry_at = None
        c.reliable = None
        if c.timer is not None:
            c.timer.ended(now)
        if c.dialog is not None:
            c.dialog.terminate()
            self._by_dialog.pop(c.dialog.id, None)
        self._calls.pop(c.handle, None)
        for key in [k for k, h in self._by_invite_key.items() if h == c.handle]:
            del self._by_invite_key[key]
        for rid in [r for r, sr in self._server.items() if sr.call == c.handle]:
            # a request the application has not answered yet would hold its transaction forever
            sr = self._server.pop(rid)
            self.layer.send_response(make_response(sr.request, 481, headers=self._response_common()),
                                     now)




def _options(request: Request, name: str) -> list[str]:
    return [v.strip() for v in request.headers.get_all(name) if v.strip()]


