"""The state of one call (an INVITE dialog, or a dialog of a subscription or a REFER) as data.

Responsible for: the states a call of `sipmob.sip.ua.UACore` goes through and `TRANSITIONS`, the one
table of the arrows between them (RFC 3261 §12-§13 as a UA sees them: the UAC's INVITE from Calling
through an early dialog to Confirmed, the UAS's from Incoming through Answered (its 2xx retransmitted
until the ACK, §13.3.1.4) to Confirmed; a SUBSCRIBE or out-of-dialog REFER of ours waits in
Subscribing for its 2xx, RFC 6665 §4.1.2.1). `next_state` is the only way a state changes, so the
table can be read against the RFC and walked by a test.

Not here: what the UA sends on each arrow (`sipmob.sip.ua` and the modules it is split into), the
dialog's own early/confirmed flag (`sipmob.sip.dialog`), the transactions under it.
"""

from __future__ import annotations

import enum


class CallState(enum.StrEnum):
    """A str enum, so ``call_state(...) == "confirmed"`` reads as it always has."""

    CALLING = "calling"  # UAC: INVITE sent, no dialog yet
    EARLY = "early"  # an early dialog (UAC: a 1xx with a To tag; UAS: we sent 18x)
    INCOMING = "incoming"  # UAS: an INVITE the application has not answered
    ANSWERED = "answered"  # UAS: our 2xx is out, the ACK has not come
    CONFIRMED = "confirmed"
    SUBSCRIBING = "subscribing"  # our SUBSCRIBE (or REFER outside a dialog) waits for its 2xx
    TERMINATED = "terminated"


class CallInput(enum.Enum):
    PROVISIONAL = "a 1xx with a To tag to our INVITE"
    RING = "we send 18x"
    ANSWER = "we send 2xx to the INVITE"
    ACK = "the ACK for our 2xx"
    ACCEPTED = "a 2xx to our INVITE"
    CHALLENGED = "our INVITE sent again answering 401/407 (the early dialog ends)"
    SUBSCRIBED = "a 2xx to our SUBSCRIBE or REFER"
    END = "BYE, CANCEL, a failure or a timeout"


_S = CallState
_I = CallInput

TRANSITIONS: dict[CallState, dict[CallInput, CallState]] = {
    _S.CALLING: {_I.PROVISIONAL: _S.EARLY, _I.ACCEPTED: _S.CONFIRMED, _I.CHALLENGED: _S.CALLING,
                 _I.END: _S.TERMINATED},
    _S.EARLY: {_I.PROVISIONAL: _S.EARLY, _I.RING: _S.EARLY, _I.ANSWER: _S.ANSWERED,
               _I.ACCEPTED: _S.CONFIRMED, _I.CHALLENGED: _S.CALLING, _I.END: _S.TERMINATED},
    _S.INCOMING: {_I.RING: _S.EARLY, _I.ANSWER: _S.ANSWERED, _I.END: _S.TERMINATED},
    _S.ANSWERED: {_I.ACK: _S.CONFIRMED, _I.END: _S.TERMINATED},
    _S.CONFIRMED: {_I.END: _S.TERMINATED},
    _S.SUBSCRIBING: {_I.SUBSCRIBED: _S.CONFIRMED, _I.END: _S.TERMINATED},
    _S.TERMINATED: {_I.END: _S.TERMINATED},
}

INITIAL = frozenset({_S.CALLING, _S.INCOMING, _S.SUBSCRIBING, _S.CONFIRMED})
"""Where a call starts: our INVITE, theirs, our SUBSCRIBE or REFER, or a dialog confirmed at once
(the notifier's side of a subscription, RFC 6665 §4.2.1)."""

UP = frozenset({_S.ANSWERED, _S.CONFIRMED})
"""States in which ending the call is reported as `CallTerminated` (rather than `CallFailed`)."""

SETTING_UP = frozenset({_S.CALLING, _S.EARLY})
"""A UAC's INVITE without a final response yet (CANCEL applies)."""

UNANSWERED = frozenset({_S.INCOMING, _S.EARLY})
"""A UAS's INVITE without a final response yet."""


class CallStateError(Exception):
    """An input that has no arrow from the call's state: a bug of the UA, never the peer's."""


def next_state(state: CallState, event: CallInput) -> CallState:
    row = TRANSITIONS[state].get(event)
    if row is None:
        raise CallStateError(f"no transition from {state.value} on {event.name}")
    return row
