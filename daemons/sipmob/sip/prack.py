"""Reliable provisional responses (RFC 3262, 100rel and PRACK), sans-I/O.

Responsible for:

- `ReliableProvisionals`, the UAS's side of one INVITE, as a table of ``(state, input) -> (actions,
  next state)`` in the style of `sipmob.sip.transaction`: a reliable 1xx carries ``Require: 100rel``
  and an ``RSeq`` one higher than the last (§3), is sent again at T1, 2*T1, 4*T1... until its PRACK,
  and after 64*T1 without one the INVITE is rejected with a 5xx. Only one reliable 1xx is outstanding
  at a time: a later one waits in a queue, and so does a 2xx (held until every reliable 1xx before it
  is acknowledged, which §3 demands when one of them carried a session description and we do always,
  so the order of offer and answer can never be in doubt).
- `ReliableReceiver`, the UAC's side of one early dialog (§4): which reliable 1xx to acknowledge
  (the first, then each RSeq one higher) and which to drop (a retransmission, or one out of order).
- `RAck` (§7.2) and `RSeq` (§7.1), and whether a request asks for reliability (`uas_wants_reliable`).

Not here: sending (`sipmob.sip.invite` acts on the actions this module returns), PRACK's own
transaction (an ordinary non-INVITE one), the offer/answer in a reliable 1xx or a PRACK (§5: the
core keeps the bodies, `sipmob.sdp` reads them).
"""

from __future__ import annotations

import collections
import dataclasses
import enum

from sipmob.sip.message import Headers, Response

OPTION_TAG = "100rel"
_RSEQ_MAX = 2**31 - 1  # §3: the first RSeq is between 1 and 2**31 - 1


class PrackError(ValueError):
    """An RSeq or RAck header that cannot be read."""


@dataclasses.dataclass(frozen=True, slots=True)
class RAck:
    """``RAck: 776656 1 INVITE`` (§7.2): the RSeq acknowledged, and the CSeq it answered."""

    rseq: int
    cseq: int
    method: str

    @classmethod
    def parse(cls, value: str) -> RAck:
        parts = value.split()
        if len(parts) != 3 or not parts[0].isdigit() or not parts[1].isdigit():
            raise PrackError(f"RAck {value!r}: not 'rseq cseq method'")
        return cls(int(parts[0]), int(parts[1]), parts[2].upper())

    def __str__(self) -> str:
        return f"{self.rseq} {self.cseq} {self.method}"


def rseq_of(response: Response) -> int | None:
    """The RSeq of a reliable provisional response; None when the response is not one (§4: a
    1xx without ``Require: 100rel`` and ``RSeq`` is treated as unreliable)."""
    if not 100 < response.status < 200 or OPTION_TAG not in _tokens(response.headers, "Require"):
        return None
    value = (response.headers.get("RSeq") or "").strip()
    if not value.isdigit() or not 0 < int(value) <= 2**32 - 1:
        return None
    return int(value)


def uas_wants_reliable(invite_headers: Headers) -> tuple[bool, bool]:
    """(whether our 1xx go reliably, whether the UAC demanded it): ``Require: 100rel`` makes every
    1xx other than 100 reliable (§3); ``Supported: 100rel`` lets us, and we do."""
    required = OPTION_TAG in _tokens(invite_headers, "Require")
    return required or OPTION_TAG in _tokens(invite_headers, "Supported"), required


def _tokens(headers: Headers, name: str) -> set[str]:
    return {t.strip().lower() for value in headers.get_all(name) for t in value.split(",") if t.strip()}


# --- the UAS: one INVITE's reliable provisionals --------------------------------------------------

class State(enum.Enum):
    IDLE = "no reliable 1xx unacknowledged"
    AWAITING_PRACK = "a reliable 1xx is out, sent again until its PRACK"
    DONE = "the INVITE has its final response"


class Input(enum.Enum):
    SEND_1XX = "the application sends a 1xx"
    PRACK = "a PRACK whose RAck names the outstanding 1xx"
    RETRANSMIT_DUE = "the retransmission interval passed"
    GIVE_UP_DUE = "64*T1 without a PRACK"
    SEND_2XX = "the application sends a 2xx"
    SEND_FAILURE = "the application sends a 3xx-6xx, or the INVITE is cancelled"


class Action(enum.Enum):
    SEND = "send the response now"
    ARM = "arm the retransmission (T1) and give-up (64*T1) deadlines for what was sent"
    QUEUE = "keep the response until the outstanding 1xx is acknowledged"
    RETRANSMIT = "send the outstanding 1xx again and double the interval"
    RELEASE = "send what waits in the queue (one 1xx, then arm; or the 2xx)"
    REJECT = "reject the INVITE with 5xx (§3: no PRACK came)"
    DISARM = "disarm the deadlines"


_A = Action
_S = State
_I = Input

TRANSITIONS: dict[tuple[State, Input], tuple[tuple[Action, ...], State]] = {
    (_S.IDLE, _I.SEND_1XX): ((_A.SEND, _A.ARM), _S.AWAITING_PRACK),
    (_S.IDLE, _I.SEND_2XX): ((_A.SEND,), _S.DONE),
    (_S.IDLE, _I.SEND_FAILURE): ((_A.SEND,), _S.DONE),
    (_S.AWAITING_PRACK, _I.SEND_1XX): ((_A.QUEUE,), _S.AWAITING_PRACK),
    (_S.AWAITING_PRACK, _I.SEND_2XX): ((_A.QUEUE,), _S.AWAITING_PRACK),
    (_S.AWAITING_PRACK, _I.PRACK): ((_A.DISARM, _A.RELEASE), _S.IDLE),
    (_S.AWAITING_PRACK, _I.RETRANSMIT_DUE): ((_A.RETRANSMIT,), _S.AWAITING_PRACK),
    (_S.AWAITING_PRACK, _I.GIVE_UP_DUE): ((_A.DISARM, _A.REJECT), _S.DONE),
    # §3: a final response other than 2xx may go before the PRACKs
    (_S.AWAITING_PRACK, _I.SEND_FAILURE): ((_A.DISARM, _A.SEND), _S.DONE),
}
"""Pairs absent from the table are ignored: a PRACK with nothing outstanding is the caller's
mistake (481), anything after DONE is too late to matter."""


class ReliableProvisionals:
    """The UAS's reliable 1xx for one INVITE (§3). The caller makes each response with the headers
    of `next_headers`, passes it to `send`, and sends what comes back; `deadline` says when to call
    `expire`; `prack` takes each PRACK's RAck."""

    def __init__(self, invite_cseq: int, *, t1: float, first_rseq: int) -> None:
        if not 1 <= first_rseq <= _RSEQ_MAX:
            raise PrackError(f"first RSeq {first_rseq} outside 1..2**31-1")
        self.state = State.IDLE
        self.invite_cseq = invite_cseq
        self.t1 = t1
        self._rseq = first_rseq - 1
        self.outstanding: Response | None = None
        self.outstanding_rseq = 0
        self._queue: collections.deque[Response] = collections.deque()
        self._interval = t1
        self._next: float | None = None
        self._give_up: float | None = None

    @property
    def deadline(self) -> float | None:
        return self._next

    def next_headers(self) -> list[tuple[str, str]]:
        """What the next reliable 1xx carries (its RSeq taken now, so a queued one keeps its order)."""
        self._rseq += 1
        return [("Require", OPTION_TAG), ("RSeq", str(self._rseq))]

    def send(self, response: Response, now: float) -> list[Response]:
        """The application's response to the INVITE: what to send at once (possibly nothing)."""
        if response.status < 200:
            event = Input.SEND_1XX
        elif response.status < 300:
            event = Input.SEND_2XX
        else:
            event = Input.SEND_FAILURE
        return self._input(event, now, response)

    def prack(self, rack: RAck, now: float) -> tuple[bool, list[Response]]:
        """A PRACK: (whether it matched the outstanding 1xx, what to send now). One that does not
        match gets 481 from the caller (§3)."""
        if (self.state is not State.AWAITING_PRACK or rack.method != "INVITE"
                or rack.cseq != self.invite_cseq or rack.rseq != self.outstanding_rseq):
            return False, []
        return True, self._input(Input.PRACK, now, None)

    def expire(self, now: float) -> tuple[list[Response], bool]:
        """At `deadline` or later: (what to send again, whether to reject the INVITE with 5xx)."""
        if self._next is None or now < self._next:
            return [], False
        if self._give_up is not None and now >= self._give_up:
            self._input(Input.GIVE_UP_DUE, now, None)
            return [], True
        return self._input(Input.RETRANSMIT_DUE, now, None), False

    @property
    def holding_final(self) -> bool:
        return any(r.status >= 200 for r in self._queue)

    def _input(self, event: Input, now: float, response: Response | None) -> list[Response]:
        row = TRANSITIONS.get((self.state, event))
        if row is None:
            return []
        actions, self.state = row
        out: list[Response] = []
        for action in actions:
            if action is Action.SEND and response is not None:
                out.append(response)
            elif action is Action.ARM and response is not None:
                self._arm(response, now)
            elif action is Action.QUEUE and response is not None:
                self._queue.append(response)
            elif action is Action.RETRANSMIT and self.outstanding is not None:
                out.append(self.outstanding)
                self._interval *= 2  # §3: doubling, with no T2 cap
                assert self._give_up is not None
                self._next = min(now + self._interval, self._give_up)
            elif action is Action.DISARM:
                self._next = self._give_up = None
                self.outstanding = None
            elif action is Action.RELEASE:
                out += self._release(now)
        return out

    def _arm(self, response: Response, now: float) -> None:
        self.outstanding = response
        self.outstanding_rseq = int(response.headers.get("RSeq") or 0)
        self._interval = self.t1
        self._next = now + self.t1
        self._give_up = now + 64 * self.t1

    def _release(self, now: float) -> list[Response]:
        if not self._queue:
            return []
        head = self._queue.popleft()
        # the queue's head is sent as if it had just been handed over (table again: IDLE first)
        return self._input(Input.SEND_1XX if head.status < 200 else Input.SEND_2XX, now, head)


# --- the UAC: one early dialog's reliable provisionals ------------------------------------------------

class Verdict(enum.Enum):
    ACKNOWLEDGE = "new and in order: process it and send PRACK"
    DROP = "a retransmission or out of order: neither PRACK nor process it (§4)"


class ReliableReceiver:
    """The UAC's RSeq bookkeeping for one early dialog (§4)."""

    def __init__(self) -> None:
        self.last: int | None = None

    def receive(self, rseq: int) -> Verdict:
        if self.last is not None and rseq != self.last + 1:
            return Verdict.DROP
        self.last = rseq
        return Verdict.ACKNOWLEDGE
