"""Session timers (RFC 4028), sans-I/O: negotiating them and keeping one dialog's timer.

Negotiation, as functions over `Headers`:

- `uac_headers`: what an INVITE (or UPDATE) we send carries: ``Supported: timer``, ``Session-Expires``
  and ``Min-SE`` (§7.1); `after_422` raises our interval to the ``Min-SE`` a 422 demands (§7.3).
- `uas_decide`: what we answer a request that may carry ``Session-Expires`` (§9): a 422 when its
  interval is below our ``Min-SE``, else the response headers (``Session-Expires`` with the refresher,
  ``Require: timer`` when the UAC refreshes) and the `Agreement`; the refresher the request names is
  kept, else the UAC refreshes when it supports timers, else we do.
- `uac_agreement`: the agreement a 2xx to our request states (§7.2; no ``Session-Expires`` in it: no
  session expiration).

One dialog's timer is `SessionTimer`: a table of ``(state, input) -> (actions, next state)`` in the
style of `sipmob.sip.transaction`. The refresher sends a refresh at half the interval (§10); the
other side, when no refresh came, sends BYE at the interval minus min(32, interval/3) (§10). Every
agreed refresh (a 2xx to a re-INVITE or UPDATE, either way) starts the interval again. Time is a
``now`` parameter; ``deadline`` says when to call ``expire``.

Not here: sending the refresh or the BYE (the user agent does, on the actions), the SDP of a
refresh (an unchanged offer: `sipmob.sdp.OfferAnswerState` keeps its version), UPDATE itself.
"""

from __future__ import annotations

import dataclasses
import enum

from sipmob.sip.message import Headers

MIN_SE = 90  # §4: the smallest interval allowed, and the default Min-SE
DEFAULT_INTERVAL = 1800  # §4: the recommended Session-Expires
BYE_MARGIN = 32  # §10: the BYE leaves min(32, interval/3) seconds before the expiry


class SessionTimerError(ValueError):
    """A Session-Expires or Min-SE header that cannot be read, or an interval below 90 s."""


class Refresher(enum.Enum):
    UAC = "uac"
    UAS = "uas"


@dataclasses.dataclass(frozen=True, slots=True)
class SessionExpires:
    """``Session-Expires: 1800;refresher=uac`` (§4)."""

    interval: int
    refresher: Refresher | None = None

    @classmethod
    def parse(cls, value: str) -> SessionExpires:
        delta, *params = (p.strip() for p in value.split(";"))
        if not delta.isdigit():
            raise SessionTimerError(f"Session-Expires {value!r}: not delta-seconds")
        refresher = None
        for param in params:
            key, _, val = param.partition("=")
            if key.strip().lower() == "refresher":
                try:
                    refresher = Refresher(val.strip().lower())
                except ValueError:
                    raise SessionTimerError(f"Session-Expires {value!r}: refresher must be uac or uas") \
                        from None
        return cls(int(delta), refresher)

    def __str__(self) -> str:
        return f"{self.interval};refresher={self.refresher.value}" if self.refresher else str(self.interval)


def _tokens(headers: Headers, name: str) -> set[str]:
    return {t.strip().lower() for value in headers.get_all(name) for t in value.split(",") if t.strip()}


def _min_se(headers: Headers) -> int:
    value = headers.get("Min-SE")
    if value is None:
        return MIN_SE
    delta = value.split(";", 1)[0].strip()
    if not delta.isdigit():
        raise SessionTimerError(f"Min-SE {value!r}: not delta-seconds")
    return max(MIN_SE, int(delta))


@dataclasses.dataclass(frozen=True, slots=True)
class Policy:
    """Our wishes: the interval we ask for (UAC) and the smallest we accept (UAS)."""

    interval: int = DEFAULT_INTERVAL
    min_se: int = MIN_SE

    def __post_init__(self) -> None:
        if self.min_se < MIN_SE or self.interval < self.min_se:
            raise SessionTimerError(f"interval {self.interval} s and Min-SE {self.min_se} s: "
                                    f"both at least {MIN_SE} s, the interval at least the Min-SE")


@dataclasses.dataclass(frozen=True, slots=True)
class Agreement:
    """What one exchange agreed: the interval and whether we are the refresher."""

    interval: int
    we_refresh: bool


def uac_headers(policy: Policy) -> list[tuple[str, str]]:
    """§7.1: the headers of an INVITE or UPDATE we send (the refresher left to the UAS)."""
    return [("Supported", "timer"), ("Session-Expires", str(policy.interval)),
            ("Min-SE", str(policy.min_se))]


def after_422(policy: Policy, response: Headers) -> Policy:
    """§7.3: the policy for the new request after a 422: at least the Min-SE it names."""
    demanded = _min_se(response)
    return Policy(max(policy.interval, demanded), max(policy.min_se, demanded))


@dataclasses.dataclass(frozen=True, slots=True)
class UasDecision:
    """Reject with `status` (422) and `headers`, or answer 2xx adding `headers`; `agreement` is
    None when the session has no timer."""

    status: int | None
    headers: tuple[tuple[str, str], ...]
    agreement: Agreement | None


def uas_decide(request: Headers, policy: Policy, *, insist: bool = False) -> UasDecision:
    """§9: our answer to a request (INVITE, re-INVITE, UPDATE) as to session timers.

    ``insist`` makes us use a timer even when the request asked for none (we refresh then, §9).
    """
    value = request.get("Session-Expires")
    uac_supports = "timer" in _tokens(request, "Supported")
    if value is None:
        if not insist:
            return UasDecision(None, (), None)
        asked = SessionExpires(policy.interval)
    else:
        asked = SessionExpires.parse(value)
        if asked.interval < policy.min_se:
            return UasDecision(422, (("Min-SE", str(policy.min_se)),), None)
    # §9: we may lower the interval, never below the request's Min-SE nor our own.
    interval = max(min(asked.interval, policy.interval), _min_se(request), policy.min_se)
    refresher = asked.refresher or (Refresher.UAC if uac_supports else Refresher.UAS)
    if refresher is Refresher.UAC and not uac_supports:
        refresher = Refresher.UAS  # a UAC that does not know timers cannot be made to refresh
    headers: list[tuple[str, str]] = [("Session-Expires", str(SessionExpires(interval, refresher)))]
    if refresher is Refresher.UAC:
        headers.append(("Require", "timer"))
    return UasDecision(None, tuple(headers), Agreement(interval, we_refresh=refresher is Refresher.UAS))


def uac_agreement(response: Headers) -> Agreement | None:
    """§7.2: what the 2xx to our request agreed; None when it carries no Session-Expires."""
    value = response.get("Session-Expires")
    if value is None:
        return None
    se = SessionExpires.parse(value)
    if se.interval < MIN_SE:
        raise SessionTimerError(f"Session-Expires {value!r}: below {MIN_SE} s")
    # A missing refresher in a 2xx breaks §9; the UAC refreshing is the safe reading (it keeps
    # the session alive whatever the UAS thinks).
    return Agreement(se.interval, we_refresh=se.refresher in (None, Refresher.UAC))


# --- one dialog's timer -----------------------------------------------------------------------------

class State(enum.Enum):
    OFF = "off"  # no timer agreed
    REFRESHING = "refreshing"  # we refresh at half the interval
    WATCHING = "watching"  # the peer refreshes; we end the session when it does not
    REFRESH_SENT = "refresh sent"  # our refresh is outstanding
    EXPIRED = "expired"


class Input(enum.Enum):
    AGREED_WE_REFRESH = "agreed, we refresh"
    AGREED_PEER_REFRESHES = "agreed, the peer refreshes"
    AGREED_NONE = "agreed, no timer"
    DUE = "due"  # the deadline passed
    REFRESH_FAILED = "refresh failed"  # our refresh got a non-2xx (other than 491) or no answer
    ENDED = "ended"  # BYE either way


class Action(enum.Enum):
    SEND_REFRESH = "send a refresh (re-INVITE or UPDATE)"
    SEND_BYE = "send BYE"
    ARM_REFRESH = "arm the refresh deadline"
    ARM_EXPIRY = "arm the expiry deadline"
    DISARM = "disarm"


_AGREED: dict[Input, tuple[tuple[Action, ...], State]] = {
    Input.AGREED_WE_REFRESH: ((Action.ARM_REFRESH,), State.REFRESHING),
    Input.AGREED_PEER_REFRESHES: ((Action.ARM_EXPIRY,), State.WATCHING),
    Input.AGREED_NONE: ((Action.DISARM,), State.OFF),
    Input.ENDED: ((Action.DISARM,), State.EXPIRED),
}

# (state, input) -> (actions, next state). Any agreement restarts the interval in every live state.
TRANSITIONS: dict[tuple[State, Input], tuple[tuple[Action, ...], State]] = {
    **{(s, i): row for s in (State.OFF, State.REFRESHING, State.WATCHING, State.REFRESH_SENT)
       for i, row in _AGREED.items()},
    (State.REFRESHING, Input.DUE): ((Action.SEND_REFRESH, Action.ARM_EXPIRY), State.REFRESH_SENT),
    # §10: a refresh that failed leaves the session to expire; BYE at the margin.
    (State.REFRESH_SENT, Input.REFRESH_FAILED): ((), State.REFRESH_SENT),
    (State.REFRESH_SENT, Input.DUE): ((Action.SEND_BYE, Action.DISARM), State.EXPIRED),
    (State.WATCHING, Input.DUE): ((Action.SEND_BYE, Action.DISARM), State.EXPIRED),
}


class SessionTimer:
    """One dialog's session timer (§10), driven by agreements, deadlines and the dialog's end."""

    def __init__(self) -> None:
        self.state = State.OFF
        self.interval: int | None = None
        self.deadline: float | None = None
        self._agreed_at = 0.0

    def _input(self, event: Input, now: float) -> list[Action]:
        row = TRANSITIONS.get((self.state, event))
        if row is None:
            return []  # e.g. DUE after the session ended: a stale deadline
        actions, self.state = row
        interval = self.interval or 0
        for action in actions:
            if action is Action.ARM_REFRESH:
                self.deadline = self._agreed_at + interval / 2
            elif action is Action.ARM_EXPIRY:
                self.deadline = self._agreed_at + interval - min(BYE_MARGIN, interval / 3)
            elif action is Action.DISARM:
                self.deadline = None
        return [a for a in actions if a in (Action.SEND_REFRESH, Action.SEND_BYE)]

    def agreed(self, agreement: Agreement | None, now: float) -> list[Action]:
        """An exchange (the INVITE, a re-INVITE or UPDATE, either way) ended in a 2xx."""
        if agreement is None:
            self.interval = None
            return self._input(Input.AGREED_NONE, now)
        self.interval, self._agreed_at = agreement.interval, now
        event = Input.AGREED_WE_REFRESH if agreement.we_refresh else Input.AGREED_PEER_REFRESHES
        return self._input(event, now)

    def refresh_failed(self, now: float) -> list[Action]:
        return self._input(Input.REFRESH_FAILED, now)

    def expire(self, now: float) -> list[Action]:
        """Call at `deadline` (or later); what to send now."""
        if self.deadline is None or now < self.deadline:
            return []
        return self._input(Input.DUE, now)

    def ended(self, now: float) -> list[Action]:
        return self._input(Input.ENDED, now)
