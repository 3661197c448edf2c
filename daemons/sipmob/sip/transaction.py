"""SIP transactions (RFC 3261 §17, with the RFC 6026 corrections), sans-I/O.

The four transaction machines are data: `TRANSITIONS` maps ``(machine, state, input)`` to the actions
to take and the next state, one row per arrow of RFC 3261 Figures 5-8 (Figures 5 and 7 as redrawn by
RFC 6026, with the "Accepted" state), so the table can be read against the figures line by line.
`TIMERS` says which timers run in each state; entering a state starts the ones it lists that are not
already running and stops the others, exactly as the figures' prose does.

`TransactionLayer` owns the live transactions. It takes bytes from the network (``receive``) and
requests and responses from the transaction user (``send_request``, ``send_response``, ``cancel``),
matches them to transactions (§17.1.3, §17.2.3, with the RFC 2543 fallback; CANCEL per §9.2) and
gives back events (``next_event``) and ``(bytes, Address)`` pairs to write (``messages_to_send``).
Time is always a ``now`` parameter; ``get_timer``/``handle_timer`` expose the next deadline.

A call may be bound to one of our local addresses (``bind_call``: a multihomed host puts each
session on an egress of its own). Every message of that Call-ID then says where it must leave from
(``messages_to_send_from`` gives ``(bytes, destination, local)``), its Via names that address and
our Contact in it is stamped with it, as Via is: the UA core builds one Contact for all its calls,
the layer that knows the call's egress puts the right host in it. Over TCP our Contact names our
TCP address with ``transport=tcp`` (bound call or not), so the peer's requests of the dialog keep TCP.
A transaction keeps the address it started from, so its retransmissions are the same datagram from
the same place (§17.1.1.2). A server transaction answers from the local address its request arrived
on, when the owner says which (``receive(..., local=)``: the socket it read the datagram from), bound
call or not: RFC 3581 §4 and §18.2.2 want the response from where the request went, and a peer with a
connected socket or a strict firewall drops any other. The call's binding still decides where our
requests leave from and the Contact of our answers, so the dialog moves with it.

Not here: parsing and building messages (`sipmob.sip.message`), where a message goes and how the Via
is stamped (`sipmob.sip.transport`), dialogs and the 2xx/ACK retransmission of the UA core
(RFC 3261 §13.3.1.4, §13.2.2.4: they are the TU's, and ride on ``send_response``/``send_ack``), sockets.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import heapq
import logging
import secrets
import sys
from collections.abc import Callable
from typing import TypeVar

from sipmob.sip.headers import CSeq, Via
from sipmob.sip.message import (
    Headers,
    Request,
    Response,
    SIPGarbage,
    SIPParseError,
    make_response,
    parse_message,
)
from sipmob.sip.transport import (
    MAGIC_COOKIE,
    UDP_SIZE_LIMIT,
    Address,
    Connections,
    apply_received,
    bad_request_response,
    is_reliable,
    new_branch,
    response_destination,
    sent_by_is_local,
    stamp_via,
    transport_for_size,
    via_destination,
)

log = logging.getLogger("sipmob.sip.transaction")


class LocalProtocolError(Exception):
    """Our own misuse of the layer: the TU asked for something the machine cannot do in its state."""


class Machine(enum.Enum):
    INVITE_CLIENT = "INVITE client transaction (Fig. 5)"
    NON_INVITE_CLIENT = "non-INVITE client transaction (Fig. 6)"
    INVITE_SERVER = "INVITE server transaction (Fig. 7)"
    NON_INVITE_SERVER = "non-INVITE server transaction (Fig. 8)"


class State(enum.Enum):
    CALLING = "Calling"
    TRYING = "Trying"
    PROCEEDING = "Proceeding"
    ACCEPTED = "Accepted"  # RFC 6026 §7.1, §7.2
    COMPLETED = "Completed"
    CONFIRMED = "Confirmed"
    TERMINATED = "Terminated"


class Timer(enum.Enum):
    A = "A"
    B = "B"
    C = "C"
    D = "D"
    E = "E"
    F = "F"
    G = "G"
    H = "H"
    I = "I"  # noqa: E741 - the RFC's name
    J = "J"
    K = "K"
    L = "L"
    M = "M"
    TRYING = "100 Trying"  # §17.2.1: 100 Trying if the TU has not answered in 200 ms


class Input(enum.Enum):
    # from the network
    RECV_1XX = "1xx"
    RECV_2XX = "2xx"
    RECV_300_699 = "300-699"
    RECV_REQUEST = "request retransmission"
    RECV_ACK = "ACK"
    # from the TU
    SEND_1XX = "1xx from TU"
    SEND_2XX = "2xx from TU"
    SEND_300_699 = "300-699 from TU"
    # from the transport
    TRANSPORT_ERROR = "transport error"
    # timers
    TIMER_A = "Timer A fires"
    TIMER_B = "Timer B fires"
    TIMER_C = "Timer C fires"
    TIMER_D = "Timer D fires"
    TIMER_E = "Timer E fires"
    TIMER_F = "Timer F fires"
    TIMER_G = "Timer G fires"
    TIMER_H = "Timer H fires"
    TIMER_I = "Timer I fires"
    TIMER_J = "Timer J fires"
    TIMER_K = "Timer K fires"
    TIMER_L = "Timer L fires"
    TIMER_M = "Timer M fires"
    TIMER_TRYING = "200 ms without a TU response"


FIRES: dict[Timer, Input] = {timer: Input[f"TIMER_{timer.name}"] for timer in Timer}
TU_INPUTS = frozenset({Input.SEND_1XX, Input.SEND_2XX, Input.SEND_300_699})


class Action(enum.Enum):
    SEND_REQUEST = "request sent"
    SEND_ACK = "ACK sent"  # §17.1.1.3, for a 300-699 only
    RESPONSE_TO_TU = "resp. to TU"
    ACK_TO_TU = "ACK to TU"  # RFC 6026 §7.1: the ACK for a 2xx belongs to the TU
    SEND_RESPONSE = "send response"  # the TU's response, remembered as the last one
    RESEND_RESPONSE = "send (last) response"
    SEND_100_TRYING = "send 100 Trying"
    RESET_A_DOUBLED = "reset A to twice its value"  # §17.1.1.2: no cap at T2 for INVITE
    RESET_E_BACKOFF = "E = min(2E, T2)"
    RESET_E_T2 = "E = T2"
    RESET_G_BACKOFF = "G = min(2G, T2)"
    STOP_TRYING_TIMER = "TU answered: no 100 Trying needed"
    INFORM_TU_TIMEOUT = "inform TU (timeout)"
    INFORM_TU_TRANSPORT_ERROR = "inform TU (transport error)"


ABSORB: tuple[Action, ...] = ()  # the input is swallowed: §17.1.1.2, §17.1.2.2, §17.2.1, §17.2.2

Row = tuple[tuple[Action, ...], State]

_A = Action
_I = Input
_S = State

# (machine, state, input) -> (actions, next state), in the order of the figures' arrows. A network
# input missing from a state is absorbed; a TU input missing from a state is a LocalProtocolError.
TRANSITIONS: dict[Machine, dict[State, dict[Input, Row]]] = {
    Machine.INVITE_CLIENT: {  # RFC 3261 Fig. 5 as corrected by RFC 6026 Fig. 3
        _S.CALLING: {
            _I.TIMER_A: ((_A.RESET_A_DOUBLED, _A.SEND_REQUEST), _S.CALLING),
            _I.TIMER_B: ((_A.INFORM_TU_TIMEOUT,), _S.TERMINATED),
            _I.TRANSPORT_ERROR: ((_A.INFORM_TU_TRANSPORT_ERROR,), _S.TERMINATED),
            _I.RECV_2XX: ((_A.RESPONSE_TO_TU,), _S.ACCEPTED),
            _I.RECV_1XX: ((_A.RESPONSE_TO_TU,), _S.PROCEEDING),
            _I.RECV_300_699: ((_A.SEND_ACK, _A.RESPONSE_TO_TU), _S.COMPLETED),
        },
        _S.PROCEEDING: {
            _I.RECV_1XX: ((_A.RESPONSE_TO_TU,), _S.PROCEEDING),
            _I.RECV_2XX: ((_A.RESPONSE_TO_TU,), _S.ACCEPTED),
            _I.RECV_300_699: ((_A.SEND_ACK, _A.RESPONSE_TO_TU), _S.COMPLETED),
            # Not in Fig. 5: see Timer C in `TIMERS`.
            _I.TIMER_C: ((_A.INFORM_TU_TIMEOUT,), _S.TERMINATED),
        },
        _S.ACCEPTED: {
            _I.RECV_2XX: ((_A.RESPONSE_TO_TU,), _S.ACCEPTED),  # RFC 6026 §8.4: each 2xx to the TU
            _I.RECV_1XX: (ABSORB, _S.ACCEPTED),
            _I.RECV_300_699: (ABSORB, _S.ACCEPTED),
            _I.TIMER_M: ((), _S.TERMINATED),
        },
        _S.COMPLETED: {
            _I.RECV_300_699: ((_A.SEND_ACK,), _S.COMPLETED),  # a retransmission: ACK it again
            _I.RECV_1XX: (ABSORB, _S.COMPLETED),
            _I.RECV_2XX: (ABSORB, _S.COMPLETED),
            _I.TRANSPORT_ERROR: ((_A.INFORM_TU_TRANSPORT_ERROR,), _S.TERMINATED),
            _I.TIMER_D: ((), _S.TERMINATED),
        },
    },
    Machine.NON_INVITE_CLIENT: {  # RFC 3261 Fig. 6
        _S.TRYING: {
            _I.TIMER_E: ((_A.RESET_E_BACKOFF, _A.SEND_REQUEST), _S.TRYING),
            _I.TIMER_F: ((_A.INFORM_TU_TIMEOUT,), _S.TERMINATED),
            _I.TRANSPORT_ERROR: ((_A.INFORM_TU_TRANSPORT_ERROR,), _S.TERMINATED),
            _I.RECV_1XX: ((_A.RESPONSE_TO_TU,), _S.PROCEEDING),
            _I.RECV_2XX: ((_A.RESPONSE_TO_TU,), _S.COMPLETED),
            _I.RECV_300_699: ((_A.RESPONSE_TO_TU,), _S.COMPLETED),
        },
        _S.PROCEEDING: {
            _I.TIMER_E: ((_A.RESET_E_T2, _A.SEND_REQUEST), _S.PROCEEDING),
            _I.RECV_1XX: ((_A.RESPONSE_TO_TU,), _S.PROCEEDING),
            _I.TIMER_F: ((_A.INFORM_TU_TIMEOUT,), _S.TERMINATED),
            _I.TRANSPORT_ERROR: ((_A.INFORM_TU_TRANSPORT_ERROR,), _S.TERMINATED),
            _I.RECV_2XX: ((_A.RESPONSE_TO_TU,), _S.COMPLETED),
            _I.RECV_300_699: ((_A.RESPONSE_TO_TU,), _S.COMPLETED),
        },
        _S.COMPLETED: {
            _I.RECV_1XX: (ABSORB, _S.COMPLETED),
            _I.RECV_2XX: (ABSORB, _S.COMPLETED),
            _I.RECV_300_699: (ABSORB, _S.COMPLETED),
            _I.TIMER_K: ((), _S.TERMINATED),
        },
    },
    Machine.INVITE_SERVER: {  # RFC 3261 Fig. 7 as corrected by RFC 6026 Fig. 5
        _S.PROCEEDING: {
            _I.TIMER_TRYING: ((_A.SEND_100_TRYING,), _S.PROCEEDING),
            _I.RECV_REQUEST: ((_A.RESEND_RESPONSE,), _S.PROCEEDING),
            _I.SEND_1XX: ((_A.STOP_TRYING_TIMER, _A.SEND_RESPONSE), _S.PROCEEDING),
            _I.TRANSPORT_ERROR: ((_A.INFORM_TU_TRANSPORT_ERROR,), _S.TERMINATED),
            _I.SEND_300_699: ((_A.SEND_RESPONSE,), _S.COMPLETED),
            _I.SEND_2XX: ((_A.SEND_RESPONSE,), _S.ACCEPTED),
        },
        _S.COMPLETED: {
            _I.RECV_REQUEST: ((_A.RESEND_RESPONSE,), _S.COMPLETED),
            _I.TIMER_G: ((_A.RESET_G_BACKOFF, _A.RESEND_RESPONSE), _S.COMPLETED),
            _I.TIMER_H: ((_A.INFORM_TU_TIMEOUT,), _S.TERMINATED),
            _I.TRANSPORT_ERROR: ((_A.INFORM_TU_TRANSPORT_ERROR,), _S.TERMINATED),
            _I.RECV_ACK: ((), _S.CONFIRMED),
        },
        _S.CONFIRMED: {
            _I.RECV_REQUEST: (ABSORB, _S.CONFIRMED),
            _I.RECV_ACK: (ABSORB, _S.CONFIRMED),
            _I.TIMER_I: ((), _S.TERMINATED),
        },
        _S.ACCEPTED: {
            _I.RECV_REQUEST: (ABSORB, _S.ACCEPTED),
            _I.SEND_2XX: ((_A.SEND_RESPONSE,), _S.ACCEPTED),  # the TU's retransmissions, §13.3.1.4
            _I.RECV_ACK: ((_A.ACK_TO_TU,), _S.ACCEPTED),
            # Not in RFC 6026 Fig. 5, which leaves it open: the TU hears of it and stops its own
            # 2xx retransmissions; the transaction keeps absorbing INVITE retransmissions until L.
            _I.TRANSPORT_ERROR: ((_A.INFORM_TU_TRANSPORT_ERROR,), _S.ACCEPTED),
            _I.TIMER_L: ((), _S.TERMINATED),
        },
    },
    Machine.NON_INVITE_SERVER: {  # RFC 3261 Fig. 8
        _S.TRYING: {
            _I.RECV_REQUEST: (ABSORB, _S.TRYING),  # §17.2.2: nothing to resend yet
            _I.SEND_1XX: ((_A.SEND_RESPONSE,), _S.PROCEEDING),
            _I.SEND_2XX: ((_A.SEND_RESPONSE,), _S.COMPLETED),
            _I.SEND_300_699: ((_A.SEND_RESPONSE,), _S.COMPLETED),
        },
        _S.PROCEEDING: {
            _I.SEND_1XX: ((_A.SEND_RESPONSE,), _S.PROCEEDING),
            _I.RECV_REQUEST: ((_A.RESEND_RESPONSE,), _S.PROCEEDING),
            _I.SEND_2XX: ((_A.SEND_RESPONSE,), _S.COMPLETED),
            _I.SEND_300_699: ((_A.SEND_RESPONSE,), _S.COMPLETED),
            _I.TRANSPORT_ERROR: ((_A.INFORM_TU_TRANSPORT_ERROR,), _S.TERMINATED),
        },
        _S.COMPLETED: {
            _I.RECV_REQUEST: ((_A.RESEND_RESPONSE,), _S.COMPLETED),
            _I.TRANSPORT_ERROR: ((_A.INFORM_TU_TRANSPORT_ERROR,), _S.TERMINATED),
            _I.TIMER_J: ((), _S.TERMINATED),
        },
    },
}

INITIAL_STATE: dict[Machine, State] = {
    Machine.INVITE_CLIENT: State.CALLING,
    Machine.NON_INVITE_CLIENT: State.TRYING,
    Machine.INVITE_SERVER: State.PROCEEDING,
    Machine.NON_INVITE_SERVER: State.TRYING,
}

# The timers that run in each state. Entering a state starts those listed that are not running and
# stops the rest. Timer C is RFC 3261's proxy timer (§16.6 item 11) applied to the UAC: Fig. 5 lets
# an INVITE client transaction sit in Proceeding for as long as the peer sends 1xx, and we do not let
# a peer keep a transaction alive forever. `TransactionLayer.cancel` shortens it to 64*T1 (§9.1).
TIMERS: dict[tuple[Machine, State], frozenset[Timer]] = {
    (Machine.INVITE_CLIENT, _S.CALLING): frozenset({Timer.A, Timer.B}),
    (Machine.INVITE_CLIENT, _S.PROCEEDING): frozenset({Timer.C}),
    (Machine.INVITE_CLIENT, _S.ACCEPTED): frozenset({Timer.M}),
    (Machine.INVITE_CLIENT, _S.COMPLETED): frozenset({Timer.D}),
    (Machine.NON_INVITE_CLIENT, _S.TRYING): frozenset({Timer.E, Timer.F}),
    (Machine.NON_INVITE_CLIENT, _S.PROCEEDING): frozenset({Timer.E, Timer.F}),
    (Machine.NON_INVITE_CLIENT, _S.COMPLETED): frozenset({Timer.K}),
    (Machine.INVITE_SERVER, _S.PROCEEDING): frozenset({Timer.TRYING}),
    (Machine.INVITE_SERVER, _S.COMPLETED): frozenset({Timer.G, Timer.H}),
    (Machine.INVITE_SERVER, _S.CONFIRMED): frozenset({Timer.I}),
    (Machine.INVITE_SERVER, _S.ACCEPTED): frozenset({Timer.L}),
    (Machine.NON_INVITE_SERVER, _S.TRYING): frozenset(),
    (Machine.NON_INVITE_SERVER, _S.PROCEEDING): frozenset(),
    (Machine.NON_INVITE_SERVER, _S.COMPLETED): frozenset({Timer.J}),
}


@dataclasses.dataclass(frozen=True, slots=True)
class TimerConfig:
    """§17.1.1.1 and Table 4: T1 (RTT estimate), T2 (cap on non-INVITE/response retransmission
    interval), T4 (how long the network holds a message); the rest follow from them."""

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0
    timer_c: float = 180.0  # §16.6: "greater than 3 minutes" for a proxy
    timer_d: float = 32.0  # §17.1.1.2: "at least 32 seconds for unreliable transports"
    trying_delay: float = 0.2  # §17.2.1

    def __post_init__(self) -> None:
        if not 0 < self.t1 <= self.t2:
            raise ValueError("timers need 0 < T1 <= T2")
        if self.t4 <= 0 or self.timer_c <= 0 or self.timer_d < 0 or self.trying_delay < 0:
            raise ValueError("timer values must be positive")

    def initial(self, timer: Timer, reliable: bool) -> float | None:
        """The first interval of `timer`, or None when it does not run on this kind of transport."""
        t1_64 = 64 * self.t1
        durations: dict[Timer, tuple[float | None, float | None]] = {
            # timer: (over an unreliable transport, over a reliable one)
            Timer.A: (self.t1, None),
            Timer.B: (t1_64, t1_64),
            Timer.C: (self.timer_c, self.timer_c),
            Timer.D: (self.timer_d, 0.0),
            Timer.E: (self.t1, None),
            Timer.F: (t1_64, t1_64),
            Timer.G: (self.t1, None),
            Timer.H: (t1_64, t1_64),
            Timer.I: (self.t4, 0.0),
            Timer.J: (t1_64, 0.0),
            Timer.K: (self.t4, 0.0),
            Timer.L: (t1_64, t1_64),
            Timer.M: (t1_64, t1_64),
            Timer.TRYING: (self.trying_delay, self.trying_delay),
        }
        return durations[timer][1 if reliable else 0]

    def lifetime_bound(self, machine: Machine) -> float:
        """The longest a transaction can live once its request is sent (clients) or its final
        response is sent (servers), whatever the peer does: used by tests and by nobody else."""
        t1_64 = 64 * self.t1
        return {
            Machine.INVITE_CLIENT: self.timer_c + max(self.timer_d, t1_64) + t1_64,
            Machine.NON_INVITE_CLIENT: t1_64 + self.t4,
            Machine.INVITE_SERVER: t1_64 + self.t4,
            Machine.NON_INVITE_SERVER: t1_64,
        }[machine]


# Keys and events ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class TransactionKey:
    """What identifies a transaction (§17.1.3, §17.2.3).

    ``method`` is INVITE for an ACK that belongs to an INVITE server transaction, and CANCEL for a
    CANCEL, which is a transaction of its own with the INVITE's branch (§9.2). ``sent_by`` is the
    top Via's sent-by on the server side (a client only ever sees its own). A request without the
    magic cookie (RFC 2543) has no usable branch: ``legacy`` holds what §17.2.3 matches it on
    instead (Call-ID, From tag, CSeq number, top Via).
    """

    role: str  # "client" | "server"
    method: str
    branch: str
    sent_by: str = ""
    legacy: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class RequestReceived:
    """A new request for the TU, with the server transaction that will carry its responses.

    For a CANCEL, ``cancels`` is the INVITE server transaction it matches (§9.2), or None, in
    which case the TU answers 481."""

    request: Request
    transaction_key: TransactionKey
    source: Address
    cancels: TransactionKey | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class ResponseReceived:
    """A response for the TU; ``transaction_key`` is None for a stray one (§18.1.2: "passed to
    the core"), such as a 2xx retransmitted after its INVITE transaction ended."""

    response: Response
    transaction_key: TransactionKey | None


@dataclasses.dataclass(frozen=True, slots=True)
class AckReceived:
    """An ACK for a 2xx: the dialog's, not a transaction's (§13.3.1.4, RFC 6026 §7.1).
    ``transaction_key`` is the INVITE server transaction in Accepted it matched, if any."""

    request: Request
    source: Address
    transaction_key: TransactionKey | None


@dataclasses.dataclass(frozen=True, slots=True)
class TransactionTerminated:
    transaction_key: TransactionKey


@dataclasses.dataclass(frozen=True, slots=True)
class TransactionTimedOut:
    """Timer B, F, H (or C, see `TIMERS`) fired: for a client, as good as a 408 (§8.1.3.1); for
    an INVITE server, the ACK never came."""

    transaction_key: TransactionKey
    timer: Timer


@dataclasses.dataclass(frozen=True, slots=True)
class TransportError:
    """The transport could not deliver to ``destination`` (§17.1.4, §17.2.4)."""

    transaction_key: TransactionKey
    destination: Address


@dataclasses.dataclass(frozen=True, slots=True)
class MessageDiscarded:
    """Bytes from the network that no one will see: garbage, a malformed response, a response not
    for us (§18.1.2). A malformed request that could be answered was answered with a 400."""

    source: Address
    reason: str


Event = (RequestReceived | ResponseReceived | AckReceived | TransactionTerminated
         | TransactionTimedOut | TransportError | MessageDiscarded)


# The layer ------------------------------------------------------------------------------------


class _Transaction:
    """One live transaction: which machine, its state, what it must be able to resend, its timers.

    A server transaction lets go of its request once its final response is sent (`_enter`): from
    then on it only resends that response, and thousands of them linger for Timer J or L. What
    routing and the RFC 2543 match still need is kept apart (``via``, ``legacy_match``)."""

    __slots__ = ("ack", "arrived", "deadlines", "destination", "intervals", "key", "last_response",
                 "legacy_match", "local", "machine", "reliable", "request", "request_bytes", "source",
                 "state", "via")

    def __init__(self, key: TransactionKey, machine: Machine, request: Request,
                 destination: Address, source: Address | None) -> None:
        self.key = key
        self.machine = machine
        self.state = INITIAL_STATE[machine]
        self.request: Request | None = request
        self.via: Via | None = None  # reliable server: the request's top Via, with received/rport
        # server, RFC 2543 peer: the Request-URI and To tag §17.2.3 also matches on
        self.legacy_match: tuple[str, str | None] | None = None
        self.request_bytes = b""
        self.destination = destination  # where requests (client) or responses (server) go
        self.source = source  # server: where the request came from
        self.local: Address | None = None  # the bound address it sends from; None: the default
        self.arrived: Address | None = None  # server: our address its request arrived on, if known
        self.reliable = is_reliable(destination.transport)
        self.last_response: bytes | None = None
        self.ack: bytes | None = None
        self.deadlines: dict[Timer, float] = {}
        self.intervals: dict[Timer, float] = {}


_BACKOFF = frozenset({Timer.A, Timer.E, Timer.G})  # the timers whose next interval doubles
_SERVERS = frozenset({Machine.INVITE_SERVER, Machine.NON_INVITE_SERVER})
_FINAL_SENT = frozenset({State.COMPLETED, State.ACCEPTED, State.CONFIRMED, State.TERMINATED})
# states in which a transaction sends nothing more of its own (Figures 5-8 with RFC 6026): a 2xx's
# ACK is the TU's, sent from the call's address of the moment
_QUIET = frozenset({(Machine.INVITE_CLIENT, State.ACCEPTED), (Machine.NON_INVITE_CLIENT, State.COMPLETED)})


def _silent(tx: _Transaction) -> bool:
    return tx.state in (State.CONFIRMED, State.TERMINATED) or (tx.machine, tx.state) in _QUIET


def _input_for_status(status: int, sending: bool) -> Input:
    if status < 200:
        return Input.SEND_1XX if sending else Input.RECV_1XX
    if status < 300:
        return Input.SEND_2XX if sending else Input.RECV_2XX
    return Input.SEND_300_699 if sending else Input.RECV_300_699


def _server_key(message: Request | Response) -> TransactionKey | None:
    """§17.2.3 (and for our own responses, the same key computed from the copied Via and CSeq)."""
    if "via" not in message.headers:
        return None
    via = message.top_via
    cseq = message.cseq
    method = "INVITE" if cseq.method == "ACK" else cseq.method
    sent_by = sys.intern(f"{via.host}:{via.port or ''}".lower())  # one copy per peer, not per key
    branch = via.branch or ""
    if branch.startswith(MAGIC_COOKIE):
        return TransactionKey("server", method, branch, sent_by)
    legacy = (message.call_id, message.from_.tag or "", str(cseq.seq), branch)
    return TransactionKey("server", method, "", sent_by, legacy)


def _client_key(message: Request | Response) -> TransactionKey | None:
    """§17.1.3: the top Via's branch and the CSeq method (a CANCEL shares the INVITE's branch)."""
    if "via" not in message.headers:
        return None
    branch = message.top_via.branch
    if not branch:
        return None
    return TransactionKey("client", message.cseq.method, branch)


class TransactionLayer:
    """All the transactions of one SIP element, fed by the network, the TU and the clock.

    `local` lists the addresses we listen on: our Via sent-by for each transport, and the set
    §18.1.2 checks responses against. Outputs are read with `messages_to_send`, events with
    `next_event`; after any call, `get_timer` gives the next deadline for `handle_timer`.
    """

    def __init__(self, local: list[Address], timers: TimerConfig | None = None,
                 udp_size_limit: int | None = UDP_SIZE_LIMIT,
                 branch_token: Callable[[], str] | None = None) -> None:
        if not local:
            raise ValueError("the layer needs at least one local address")
        self.timers = timers or TimerConfig()
        self._initial: tuple[TimerConfig | None, dict[tuple[Timer, bool], float | None]] = (None, {})
        self.connections = Connections()
        self._local = {addr.transport.lower(): addr for addr in local}
        self._local_sent_by = {(addr.host, addr.port) for addr in local}
        self._left_tcp: dict[tuple[str, int], Address] = {}  # our old UDP address -> its TCP one
        self._udp_size_limit = udp_size_limit
        self._branch_token = branch_token or (lambda: secrets.token_hex(8))
        self._transactions: dict[TransactionKey, _Transaction] = {}
        self._heap: list[tuple[float, int, TransactionKey, Timer]] = []
        self._seq = 0
        self._events: collections.deque[Event] = collections.deque()
        self._outgoing: list[tuple[bytes, Address, Address | None]] = []
        self._calls: dict[str, Address] = {}  # Call-ID -> the local address its messages leave from
        # (host, transport) -> our address there over another transport than a call is bound with
        self._also: dict[tuple[str, str], Address] = {}

    # What the owner reads -----------------------------------------------------------------------

    def __len__(self) -> int:
        """The number of live transactions."""
        return len(self._transactions)

    def state_of(self, key: TransactionKey) -> State:
        """The state of a live transaction; Terminated once it has gone."""
        tx = self._transactions.get(key)
        return tx.state if tx is not None else State.TERMINATED

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def messages_to_send(self) -> list[tuple[bytes, Address]]:
        """What to write, for a transport with one socket per transport (bound calls ignored)."""
        out, self._outgoing = self._outgoing, []
        return [(data, destination) for data, destination, _ in out]

    def messages_to_send_from(self) -> list[tuple[bytes, Address, Address | None]]:
        """What to write, each with the local address it must leave from (None: the default one)."""
        out, self._outgoing = self._outgoing, []
        return out

    def get_timer(self) -> float | None:
        heap = self._heap
        while heap:
            deadline, _, key, timer = heap[0]
            tx = self._transactions.get(key)
            if tx is not None and tx.deadlines.get(timer) == deadline:
                return deadline
            heapq.heappop(heap)  # stale: the timer was reset or stopped, or the transaction ended
        return None

    def handle_timer(self, now: float) -> None:
        while True:
            deadline = self.get_timer()
            if deadline is None or deadline > now:
                return
            _, _, key, timer = heapq.heappop(self._heap)
            tx = self._transactions[key]
            del tx.deadlines[timer]
            self._fire(tx, FIRES[timer], now, None)

    # From the TU --------------------------------------------------------------------------------

    def send_request(self, request: Request, destination: Address, now: float) -> TransactionKey:
        """Start a client transaction for `request` (not ACK: see `send_ack`) towards `destination`.

        The layer stamps our Via unless the request already has one (a CANCEL built by the TU),
        switches a large UDP request to TCP (§18.1.1) and sends it."""
        if request.method == "ACK":
            raise LocalProtocolError("an ACK is not a transaction: use send_ack (§17.1.1.3)")
        request, destination = self._stamp(request, destination)
        key = _client_key(request)
        if key is None:
            raise LocalProtocolError("request without CSeq")
        if key in self._transactions:
            raise LocalProtocolError(f"a transaction with branch {key.branch} exists already")
        machine = Machine.INVITE_CLIENT if request.method == "INVITE" else Machine.NON_INVITE_CLIENT
        tx = _Transaction(key, machine, request, destination, None)
        tx.local = self._bound(request, destination)
        tx.request_bytes = request.to_bytes()
        self._transactions[key] = tx
        self._start_timers(tx, now)
        self._outgoing.append((tx.request_bytes, destination, tx.local))
        return key

    def send_ack(self, ack: Request, destination: Address) -> None:
        """Send an ACK for a 2xx: outside any transaction, so the dialog layer retransmits it itself
        for each 2xx it sees (§13.2.2.4)."""
        ack, destination = self._stamp(ack, destination)
        self._outgoing.append((ack.to_bytes(), destination, self._bound(ack, destination)))

    def send_response(self, response: Response, now: float) -> None:
        """Send `response` (made with `make_response` from a request this layer delivered) on its
        server transaction, or statelessly per §18.2.2 when that transaction has gone."""
        key = _server_key(response)
        tx = self._transactions.get(key) if key is not None else None
        if tx is None:
            destination = response_destination(response, None, self.connections)
            if destination is None:
                raise LocalProtocolError("response without a Via to route it by")
            local = self._bound(response, destination)
            response = self._our_contact(response, destination)
            self._outgoing.append((response.to_bytes(), destination, local))
            return
        self._fire(tx, _input_for_status(response.status, sending=True), now, response)

    def cancel(self, key: TransactionKey, now: float) -> TransactionKey:
        """Send a CANCEL for the INVITE client transaction `key` (§9.1) and return the CANCEL's own
        transaction. Only once a provisional response has arrived ("Proceeding"): before that the
        CANCEL could overtake the INVITE, and §9.1 says to wait for one."""
        tx = self._transactions.get(key)
        if tx is None or tx.machine is not Machine.INVITE_CLIENT:
            raise LocalProtocolError("no INVITE client transaction to cancel")
        if tx.state is not State.PROCEEDING:
            raise LocalProtocolError(f"cannot CANCEL in {tx.state.value}: §9.1 waits for a 1xx")
        assert tx.request is not None  # a client transaction keeps its request
        cancel_key = self.send_request(make_cancel(tx.request), tx.destination, now)
        # §9.1: without a final response 64*T1 after the CANCEL, the INVITE is as good as cancelled.
        limit = now + 64 * self.timers.t1
        if tx.deadlines.get(Timer.C, limit + 1) > limit:
            self._set_timer(tx, Timer.C, limit)
        return cancel_key

    # From the network ---------------------------------------------------------------------------

    def transport_error(self, destination: Address, now: float) -> None:
        """The transport could not reach `destination`: every transaction sending there hears of it."""
        for tx in [tx for tx in self._transactions.values() if tx.destination == destination]:
            self._fire(tx, Input.TRANSPORT_ERROR, now, None)

    def receive(self, data: bytes, source: Address, now: float, local: Address | None = None) -> None:
        """One whole message (a datagram, or a message cut from a stream by `StreamFramer`);
        `local` is our address it arrived on (the socket's), where the answers to a request leave
        from (None: not known, the call's address or the default)."""
        try:
            message = parse_message(data)
        except SIPGarbage as exc:
            log.debug("dropped %d bytes of non-SIP from %s: %s", len(data), source, exc.reason)
            self._events.append(MessageDiscarded(source, exc.reason))
            return
        except SIPParseError as exc:
            self._answer_malformed(data, exc, source, local)
            return
        if isinstance(message, Request):
            self._receive_request(message, source, now, local)
        else:
            self._receive_response(message, source, now)

    def set_local(self, local: list[Address]) -> None:
        """New addresses to stamp in Via; responses to requests sent from the old ones are still
        ours (§18.1.2) while they are in flight."""
        udp, tcp = self._local.get("udp"), self._local.get("tcp")
        if udp is not None and tcp is not None:
            self._left_tcp[(udp.host, udp.port)] = tcp  # a REGISTER removes the Contact it bound
        self._local.update({addr.transport.lower(): addr for addr in local})
        self._local_sent_by |= {(addr.host, addr.port) for addr in local}

    def bind_call(self, call_id: str, local: Address | None) -> None:
        """Every message of `call_id` sent from now on (over `local`'s transport) leaves from
        `local`, its Via and our Contact naming it; None unbinds the call (the default address
        again). A request of the call still waiting in the output (made in the same step, before
        the owner could know its Call-ID) is stamped again; transactions already on the wire keep
        their address. Responses to Vias naming `local` are ours from now on."""
        if local is None:
            self._calls.pop(call_id, None)
            return
        self._calls[call_id] = local
        self._local_sent_by.add((local.host, local.port))
        for i, (data, destination, was) in enumerate(self._outgoing):
            over = self._bound_over(call_id, destination.transport.lower())  # TCP beside UDP too
            if over is None or was == over:
                continue
            tx = next((tx for tx in self._transactions.values()
                       if tx.request_bytes is data and tx.machine not in _SERVERS), None)
            if tx is None or tx.request is None or tx.request.call_id != call_id:
                continue
            branch = tx.request.top_via.branch or new_branch(self._branch_token())
            tx.request = self._our_contact(_with_sent_by(tx.request, over, branch), destination)
            tx.request_bytes = tx.request.to_bytes()
            tx.local = over
            self._outgoing[i] = (tx.request_bytes, destination, over)

    def bound(self, call_id: str) -> Address | None:
        """The local address `call_id` is bound to, if any."""
        return self._calls.get(call_id)

    def add_local(self, address: Address) -> None:
        """Our address on a bound host over another transport (TCP beside the UDP one a call is
        bound to): the call's messages over that transport leave from it, Via naming it."""
        self._also[(address.host, address.transport.lower())] = address
        self._local_sent_by.add((address.host, address.port))

    def _bound_over(self, call_id: str, transport: str) -> Address | None:
        bound = self._calls.get(call_id) if self._calls else None
        if bound is None or bound.transport == transport:
            return bound
        return self._also.get((bound.host, transport))

    def sends_from(self, host: str) -> bool:
        """Whether anything may still leave from `host`: a call bound to it, or a transaction that
        started there and may yet (re)send (a request not answered, a response a retransmitted
        request would get again). Transactions that only absorb late copies do not count."""
        if any(local.host == host for local in self._calls.values()):
            return True
        return any(tx.local is not None and tx.local.host == host and not _silent(tx)
                   for tx in self._transactions.values())

    def is_local_host(self, host: str) -> bool:
        """Whether `host` is one of the addresses we send from (now, or for messages in flight)."""
        return any(sent_host == host for sent_host, _port in self._local_sent_by)

    def forget_local(self, address: Address) -> None:
        """`address` is ours no more (its socket is closed): responses naming it are not ours."""
        if address not in self._local.values() and address not in self._calls.values():
            self._local_sent_by.discard((address.host, address.port))

    # Internals ----------------------------------------------------------------------------------

    def _stamp(self, request: Request, destination: Address) -> tuple[Request, Address]:
        transport = destination.transport.lower()
        local = self._local.get(transport)
        bound = self._bound_over(request.call_id, transport)
        if bound is not None:
            local = bound
        request = self._our_contact(request, destination)
        if local is None:
            raise LocalProtocolError(f"no local {transport} address to send from")
        branch = new_branch(self._branch_token())
        stamped = stamp_via(request, local, branch)
        size_transport = transport_for_size(len(stamped.to_bytes()), transport, self._udp_size_limit)
        if size_transport != transport and size_transport in self._local:
            destination = Address(destination.host, destination.port, size_transport)
            stamped = stamp_via(stamped, self._local[size_transport], branch)
        return stamped, destination

    def _our_contact(self, message: M, destination: Address) -> M:
        """`message` with our Contact naming where the peer must send its requests of the dialog:
        the call's address, over the transport the message travels (RFC 3261 §12.1: the Contact is
        the remote target; a Contact without ``transport=tcp`` would bring them back over UDP)."""
        transport = destination.transport.lower()
        bound = self._calls.get(message.call_id) if self._calls else None
        if bound is not None:
            local = self._bound_over(message.call_id, transport) if is_reliable(transport) else bound
            return _with_contact(message, local or bound, self._local_sent_by)
        udp, local = self._local.get("udp"), self._local.get(transport)
        if udp is None or local is None or not is_reliable(transport):
            return message
        # the Contact naming our default address; an old one a REGISTER removes, as it was bound
        return _with_contacts(message, {**self._left_tcp, (udp.host, udp.port): local})

    def _bound(self, message: Request | Response, destination: Address) -> Address | None:
        """The local address `message` leaves from, when its call is bound (over that transport)."""
        if not self._calls:
            return None
        return self._bound_over(message.call_id, destination.transport.lower())

    def _answer_malformed(self, data: bytes, exc: SIPParseError, source: Address,
                          local: Address | None) -> None:
        response = None
        is_request = data.lstrip(b"\r\n")[:4].upper() != b"SIP/"
        if is_request and isinstance(exc.headers, Headers):
            response = bad_request_response(exc.headers, exc.status, exc.reason, self._branch_token())
        if response is None:
            log.debug("dropped a malformed message from %s: %s", source, exc)
            self._events.append(MessageDiscarded(source, exc.reason))
            return
        log.debug("answered a malformed request from %s with %s", source, exc)
        response = apply_received(response, source)
        destination = response_destination(response, source, self.connections)
        if destination is not None:
            self._outgoing.append((response.to_bytes(), destination, local))

    def _receive_request(self, request: Request, source: Address, now: float,
                         local: Address | None) -> None:
        key = _server_key(request)  # before apply_received, which makes the Via parsed anew
        if key is None:  # parse_message guarantees Via and CSeq; this is a belt for the braces
            self._events.append(MessageDiscarded(source, "request without Via or CSeq"))
            return
        request = apply_received(request, source)
        tx = self._transactions.get(key)
        if tx is not None and not self._legacy_match(tx, request):
            tx = None
        if request.method == "ACK":
            if tx is None or tx.state is State.ACCEPTED:
                # §17.2.3 / RFC 6026: an ACK for a 2xx has its own branch (or, from an RFC 2543
                # peer, may match an Accepted transaction): either way it is the TU's.
                if tx is not None:
                    self._fire(tx, Input.RECV_ACK, now, request)
                else:
                    self._events.append(AckReceived(request, source, None))
                return
            self._fire(tx, Input.RECV_ACK, now, request)
            return
        if tx is not None:
            self._fire(tx, Input.RECV_REQUEST, now, request)
            return
        machine = Machine.INVITE_SERVER if request.method == "INVITE" else Machine.NON_INVITE_SERVER
        destination = response_destination(request, source, self.connections)
        if destination is None:
            self._events.append(MessageDiscarded(source, "request without a usable Via"))
            return
        if destination == source:
            destination = source  # one Address for both, for as long as the transaction lingers
        tx = _Transaction(key, machine, request, destination, source)
        tx.arrived = tx.local = local  # a 100 Trying or a 1xx leaves from there too
        if tx.reliable:
            tx.via = request.top_via  # to route each response anew (`_send_response_bytes`)
        if key.legacy:
            tx.legacy_match = (str(request.uri), request.to.tag)
        self._transactions[key] = tx
        self._start_timers(tx, now)
        cancels = None
        if request.method == "CANCEL":
            cancels = self._cancelled(request, key)
        self._events.append(RequestReceived(request, key, source, cancels))

    def _cancelled(self, cancel: Request, key: TransactionKey) -> TransactionKey | None:
        """§9.2: the INVITE server transaction a CANCEL is for (17.2.3 with the method ignored)."""
        invite_key = dataclasses.replace(key, method="INVITE")
        tx = self._transactions.get(invite_key)
        if tx is None or tx.machine is not Machine.INVITE_SERVER or not self._legacy_match(tx, cancel):
            return None
        return invite_key

    @staticmethod
    def _legacy_match(tx: _Transaction, request: Request) -> bool:
        """The parts of the §17.2.3 RFC 2543 rule the key does not hold: the Request-URI, and the
        To tag, which for an ACK is the one of the response we sent."""
        if not tx.key.legacy:
            return True
        assert tx.legacy_match is not None
        uri, to_tag = tx.legacy_match
        if str(request.uri) != uri:
            return False
        if request.method == "ACK":
            sent = parse_message(tx.last_response) if tx.last_response is not None else None
            return sent is not None and request.to.tag == sent.to.tag
        return request.to.tag == to_tag

    def _receive_response(self, response: Response, source: Address, now: float) -> None:
        if not sent_by_is_local(response, self._local_sent_by):
            self._events.append(MessageDiscarded(source, "response whose Via sent-by is not ours"))
            return
        key = _client_key(response)
        tx = self._transactions.get(key) if key is not None else None
        if tx is None:
            self._events.append(ResponseReceived(response, None))
            return
        self._fire(tx, _input_for_status(response.status, sending=False), now, response)

    def _fire(self, tx: _Transaction, input_: Input, now: float,
              message: Request | Response | None) -> None:
        row = TRANSITIONS[tx.machine][tx.state].get(input_)
        if row is None:
            if input_ in TU_INPUTS:
                raise LocalProtocolError(f"{input_.value} in {tx.state.value}: not allowed by "
                                         f"the {tx.machine.value}")
            return  # anything else from the network that the figure does not mention is absorbed
        actions, next_state = row
        for action in actions:
            self._act(tx, action, input_, now, message)
        if next_state is not tx.state:
            self._enter(tx, next_state, now)

    def _act(self, tx: _Transaction, action: Action, input_: Input, now: float,
             message: Request | Response | None) -> None:
        t = self.timers
        if action is Action.SEND_REQUEST:
            self._outgoing.append((tx.request_bytes, tx.destination, tx.local))
        elif action is Action.SEND_ACK:
            assert isinstance(message, Response)
            if tx.ack is None:
                assert tx.request is not None  # a client transaction keeps its request
                tx.ack = make_ack(tx.request, message).to_bytes()
            self._outgoing.append((tx.ack, tx.destination, tx.local))
        elif action is Action.RESPONSE_TO_TU:
            assert isinstance(message, Response)
            self._events.append(ResponseReceived(message, tx.key))
        elif action is Action.ACK_TO_TU:
            assert isinstance(message, Request)
            self._events.append(AckReceived(message, tx.source or tx.destination, tx.key))
        elif action is Action.SEND_RESPONSE:
            assert isinstance(message, Response)
            # where the request arrived (RFC 3581 §4), else the call's address when the final
            # response goes; kept for its retransmissions
            tx.local = tx.arrived or self._bound(message, tx.destination)
            message = self._our_contact(message, tx.destination)
            tx.last_response = message.to_bytes()
            self._send_response_bytes(tx, tx.last_response)
        elif action is Action.RESEND_RESPONSE:
            if tx.last_response is not None:
                self._send_response_bytes(tx, tx.last_response)
        elif action is Action.SEND_100_TRYING:
            assert tx.request is not None  # only in Proceeding, before any final response
            tx.last_response = make_response(tx.request, 100, "Trying").to_bytes()
            self._send_response_bytes(tx, tx.last_response)
        elif action is Action.RESET_A_DOUBLED:
            self._restart(tx, Timer.A, 2 * tx.intervals[Timer.A], now)
        elif action is Action.RESET_E_BACKOFF:
            self._restart(tx, Timer.E, min(2 * tx.intervals[Timer.E], t.t2), now)
        elif action is Action.RESET_E_T2:
            self._restart(tx, Timer.E, t.t2, now)
        elif action is Action.RESET_G_BACKOFF:
            self._restart(tx, Timer.G, min(2 * tx.intervals[Timer.G], t.t2), now)
        elif action is Action.STOP_TRYING_TIMER:
            tx.deadlines.pop(Timer.TRYING, None)
        elif action is Action.INFORM_TU_TIMEOUT:
            self._events.append(TransactionTimedOut(tx.key, Timer[input_.name[len("TIMER_"):]]))
        elif action is Action.INFORM_TU_TRANSPORT_ERROR:
            self._events.append(TransportError(tx.key, tx.destination))

    def _send_response_bytes(self, tx: _Transaction, data: bytes) -> None:
        if tx.via is not None:
            # Routed again each time: the connection the request came on may have closed (§18.2.2).
            destination = via_destination(tx.via, tx.source, self.connections)
            if destination is not None:
                tx.destination = destination
        self._outgoing.append((data, tx.destination, tx.local))

    def _enter(self, tx: _Transaction, state: State, now: float) -> None:
        tx.state = state
        if state in _FINAL_SENT and tx.machine in _SERVERS:
            tx.request = None  # see `_Transaction`
        if state is State.TERMINATED:
            # §17.1.1.2 and friends: destroyed the instant it enters Terminated.
            tx.deadlines.clear()
            del self._transactions[tx.key]
            self._events.append(TransactionTerminated(tx.key))
            return
        self._start_timers(tx, now)

    def _start_timers(self, tx: _Transaction, now: float) -> None:
        wanted = TIMERS[(tx.machine, tx.state)]
        for timer in [timer for timer in tx.deadlines if timer not in wanted]:
            del tx.deadlines[timer]
        initial = self._initial_intervals()
        for timer in wanted:
            if timer in tx.deadlines:
                continue
            interval = initial[(timer, tx.reliable)]
            if interval is not None:
                self._restart(tx, timer, interval, now)

    def _initial_intervals(self) -> dict[tuple[Timer, bool], float | None]:
        # `TimerConfig.initial` for every timer, worked out again only if `timers` is replaced
        if self._initial[0] is not self.timers:
            self._initial = (self.timers, {(timer, reliable): self.timers.initial(timer, reliable)
                                           for timer in Timer for reliable in (False, True)})
        return self._initial[1]

    def _restart(self, tx: _Transaction, timer: Timer, interval: float, now: float) -> None:
        if timer in _BACKOFF:
            tx.intervals[timer] = interval
        self._set_timer(tx, timer, now + interval)

    def _set_timer(self, tx: _Transaction, timer: Timer, deadline: float) -> None:
        tx.deadlines[timer] = deadline
        self._seq += 1
        heapq.heappush(self._heap, (deadline, self._seq, tx.key, timer))


M = TypeVar("M", Request, Response)


def _with_contact(message: M, local: Address, ours: set[tuple[str, int]]) -> M:
    """`message` with our Contact (a URI naming one of `ours`) naming `local` instead, with
    ``transport=`` when `local` is not UDP."""
    return _with_contacts(message, dict.fromkeys(ours, local))


def _with_contacts(message: M, ours: dict[tuple[str, int], Address]) -> M:
    """`message` with each Contact naming a key of `ours` naming its value instead."""
    lines = message.headers.get_lines("Contact")
    if not lines:
        return message
    contacts = message.contact
    changed = []
    for c in contacts:
        local = ours.get((c.uri.host, c.uri.port or 5060))
        if local is not None:
            uri = c.uri.replace(host=local.host, port=local.port)
            if local.transport.lower() != "udp":
                uri = uri.with_params(transport=local.transport.lower())
            c = dataclasses.replace(c, uri=uri)
        changed.append(c)
    if changed == list(contacts):
        return message
    headers = message.headers.copy()
    headers.remove("Contact")
    for c in changed:
        headers.add("Contact", str(c))
    return message.replace(headers=headers)


def _with_sent_by(request: Request, local: Address, branch: str) -> Request:
    """`request` with its top Via (ours) naming `local`, the same branch."""
    headers = request.headers.copy()
    headers.remove_first("Via")
    return stamp_via(request.replace(headers=headers), local, branch)


def _same_transaction_request(request: Request, method: str, to: str) -> Request:
    # ACK for a non-2xx and CANCEL share the rule: the request's Request-URI, top Via alone (so the
    # same branch), Max-Forwards, Route set, From, Call-ID and CSeq number, with the given To.
    headers = Headers()
    headers.add("Via", str(request.vias[0]))
    for name in ("Max-Forwards", "Route"):
        for value in request.headers.get_lines(name):
            headers.add(name, value)
    headers.add("From", request.headers.get_lines("From")[0])
    headers.add("To", to)
    headers.add("Call-ID", request.call_id)
    headers.add("CSeq", str(CSeq(request.cseq.seq, method)))
    return Request(method, request.uri, headers)


def make_ack(request: Request, response: Response) -> Request:
    """§17.1.1.3: the ACK an INVITE client transaction sends for a 300-699 response: the INVITE's
    Request-URI, Call-ID, From, CSeq number and Route set, the response's To (with its tag), and
    the INVITE's top Via alone, so the ACK matches the server transaction."""
    return _same_transaction_request(request, "ACK", response.headers.get_lines("To")[0])


def make_cancel(request: Request) -> Request:
    """§9.1: a CANCEL for `request`, with the same Request-URI, Call-ID, To, From, CSeq number,
    Route set and the single top Via (so the same branch) as the request it cancels."""
    return _same_transaction_request(request, "CANCEL", request.headers.get_lines("To")[0])
