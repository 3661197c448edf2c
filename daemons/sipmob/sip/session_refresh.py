"""Session timers (RFC 4028) in the user-agent core: the negotiation on the wire and each call's timer.

Responsible for, when the UA was given a `sipmob.sip.session_timer.Policy` (without one, nothing
here acts and the core behaves as before):

- stating ``Supported: timer``, ``Session-Expires`` and ``Min-SE`` in our INVITEs and re-INVITEs
  (§7.1, §7.4: a re-INVITE keeps the refresher), and sending the INVITE again with the ``Min-SE`` a
  422 demands (§7.3);
- as UAS, answering 422 with our ``Min-SE`` to an INVITE, re-INVITE or UPDATE whose interval is
  too small, before the application hears of it, and adding ``Session-Expires`` (and
  ``Require: timer`` when the UAC refreshes) to the 2xx (§9);
- one `SessionTimer` per call, started again by every agreed exchange either way: when we refresh,
  an UPDATE without a body at half the interval when the peer allows UPDATE, else a re-INVITE with
  our description unchanged (§10, RFC 3264 §8: same version); when the peer refreshes and does not,
  BYE at the interval minus min(32 s, a third), reported as ``CallTerminated(reason="session
  expired")``.

Not here: the rules themselves (`sipmob.sip.session_timer`, which this module only drives), the
SDP of a refresh (the last one we sent, opaque bytes).
"""

from __future__ import annotations

import abc

from sipmob.sip.challenge import ChallengeRetry
from sipmob.sip.dialog import DialogState
from sipmob.sip.headers import CSeq
from sipmob.sip.message import Request, Response
from sipmob.sip.session_timer import (
    Action,
    Agreement,
    Refresher,
    SessionExpires,
    SessionTimer,
    SessionTimerError,
    State,
    UasDecision,
    after_422,
    uac_agreement,
    uas_decide,
)
from sipmob.sip.transaction import TransactionKey
from sipmob.sip.uabase import SDP, _Call, _ClientOp, _Reinvite, log

_REFRESHING = (State.REFRESHING, State.REFRESH_SENT)


class SessionRefreshes(ChallengeRetry):
    @abc.abstractmethod
    def _send_bye(self, c: _Call, now: float) -> int:
        """BYE in the call's dialog (`sipmob.sip.invite`)."""

    @abc.abstractmethod
    def _send_final_or_1xx(self, c: _Call, responses: list[Response], now: float) -> None:
        """Send responses to the INVITE that reliable 1xx held back (`sipmob.sip.invite`)."""

    # What our requests carry --------------------------------------------------------------------

    def _timer_request_headers(self, c: _Call | None) -> list[tuple[str, str]]:
        """§7.1, §7.4: Supported, Session-Expires (our interval, or the one agreed; the refresher
        kept as it is) and Min-SE of an INVITE, re-INVITE or UPDATE we send."""
        policy = self.session_policy
        if policy is None:
            return []
        timer = c.timer if c is not None else None
        interval = (timer.interval if timer is not None and timer.interval else None) or policy.interval
        refresher = None
        if timer is not None and timer.state in _REFRESHING:
            refresher = Refresher.UAC  # we send it: we are its UAC
        elif timer is not None and timer.state is State.WATCHING:
            refresher = Refresher.UAS
        return [("Supported", "timer"), ("Session-Expires", str(SessionExpires(interval, refresher))),
                ("Min-SE", str(policy.min_se))]

    def _timer_retry_422(self, c: _Call, key: TransactionKey, response: Response,
                         now: float) -> TransactionKey | None:
        """§7.3: a 422 to our INVITE: the same request again (new CSeq and branch) with at least
        the Min-SE it names; once only, so two UAs that disagree cannot loop."""
        if self.session_policy is None or c.timer_retried or response.status != 422:
            return None
        sent = self._sent.pop(key, None)
        if sent is None:
            return None
        try:
            policy = after_422(self.session_policy, response.headers)
        except SessionTimerError:
            return None
        c.timer_retried = True
        request = sent.request.copy()
        request.headers.remove("Via")
        if sent.dialog is not None:
            sent.dialog.local_seq += 1
            seq = sent.dialog.local_seq
        else:
            seq = request.cseq.seq + 1
        request.headers.set("CSeq", str(CSeq(seq, request.method)))
        request.headers.set("Session-Expires", str(policy.interval))
        request.headers.set("Min-SE", str(policy.min_se))
        return self._send(request, sent.destination, sent.dialog, now)

    # Deciding what a request of the peer gets ------------------------------------------------------

    def _timer_decide(self, request: Request, now: float) -> tuple[bool, UasDecision | None]:
        """(whether to go on, the decision the 2xx applies): a 422 or a 400 is answered here."""
        if self.session_policy is None:
            return True, None
        try:
            decision = uas_decide(request.headers, self.session_policy)
        except SessionTimerError as exc:
            self._reply(request, 400, now, reason=str(exc)[:60])
            return False, None
        if decision.status is not None:
            self._reply(request, decision.status, now, reason="Session Interval Too Small",
                        headers=list(decision.headers))
            return False, None
        return True, decision

    # Each call's timer ---------------------------------------------------------------------------

    def _timer_agreed(self, c: _Call, agreement: Agreement | None, now: float) -> None:
        if self.session_policy is None:
            return
        if c.timer is None:
            c.timer = SessionTimer()
        c.timer.agreed(agreement, now)
        c.timer_retried = False

    def _timer_response(self, c: _Call, response: Response, now: float) -> None:
        """A 2xx to our INVITE, re-INVITE or UPDATE: what it agreed (§7.2)."""
        if self.session_policy is None:
            return
        allow = {m.strip().upper() for v in response.headers.get_all("Allow") for m in v.split(",")
                 if m.strip()}
        if allow:
            c.peer_allow = frozenset(allow)
        try:
            agreement = uac_agreement(response.headers)
        except SessionTimerError as exc:
            log.info("call %d: %s; no session timer", c.handle, exc)
            agreement = None
        self._timer_agreed(c, agreement, now)

    def _timer_failed(self, c: _Call, now: float) -> None:
        if c.timer is not None:
            c.timer.refresh_failed(now)

    def _timer_deadlines(self) -> list[float]:
        return [c.timer.deadline for c in self._calls.values()
                if c.timer is not None and c.timer.deadline is not None]

    def _timer_fire(self, now: float) -> None:
        for c in list(self._calls.values()):
            timer = c.timer
            if timer is None or timer.deadline is None or timer.deadline > now:
                continue
            for action in timer.expire(now):
                if action is Action.SEND_REFRESH:
                    self._send_refresh(c, now)
                elif action is Action.SEND_BYE:
                    log.warning("call %d: no session refresh within %d s (RFC 4028); ending the call",
                                c.handle, timer.interval or 0)
                    self._send_bye(c, now)
                    self._end(c, "session expired", now)

    def _send_refresh(self, c: _Call, now: float) -> None:
        """§10: UPDATE without a body when the peer allows it (no offer, nothing to negotiate),
        else a re-INVITE with our last description, unchanged."""
        if c.dialog is None or c.dialog.state is not DialogState.CONFIRMED:
            return
        if "UPDATE" in c.peer_allow:
            request = c.dialog.create_request("UPDATE", headers=[*self._request_common(),
                                                                 *self._timer_request_headers(c)])
            key = self._send(request, c.dialog.destination(), c.dialog, now)
            self._client[key] = _ClientOp(self._new_handle(), c.handle, "UPDATE")
            c.refresh_key = key
            return
        if c.reinvite is not None or c.incoming_reinvite is not None or c.ok is not None:
            return  # an INVITE transaction is under way: its 2xx refreshes the session anyway
        c.reinvite = _Reinvite(self._new_handle(), c.invite, None, c.local_sdp)
        c.reinvite_answer_for = None
        assert c.reinvite is not None
        request = c.dialog.create_request("INVITE", headers=[*self._request_common(),
                                                             *self._timer_request_headers(c)],
                                          body=c.local_sdp or b"", content_type=SDP)
        key = self._send(request, c.dialog.destination(), c.dialog, now)
        c.reinvite.request, c.reinvite.key = request, key
        self._by_invite_key[key] = c.handle

    def _refresh_completed(self, c: _Call, key: TransactionKey, response: Response | None,
                           now: float) -> bool:
        """The final response (None: a timeout) to a request of ours in `c`; True when it was our
        UPDATE refresh, which nobody else waits for."""
        if c.refresh_key != key:
            return False
        c.refresh_key = None
        if response is not None and 200 <= response.status < 300:
            self._timer_response(c, response, now)
        elif (response is not None and response.status == 422 and not c.timer_retried
              and c.timer is not None and c.timer.interval):
            # §7.3 for a refresh: once more with the peer's Min-SE
            c.timer_retried = True
            demanded = response.headers.get("Min-SE") or ""
            delta = demanded.split(";", 1)[0].strip()
            if delta.isdigit():
                c.timer.interval = max(c.timer.interval, int(delta))
            self._send_refresh(c, now)
        else:
            self._timer_failed(c, now)
        return True
