"""REGISTER bindings (RFC 3261 §10.2) kept fresh.

Responsible for: the refresh at half the expiry the registrar granted, a 423 retried with its
Min-Expires, the un-REGISTER, and after a failure the next attempt as RFC 5626 §4.5 says (30 s
doubling up to 30 min, then a random 50-100 % of that).

Not here: the registrar (we are only a client), DNS.
"""
from __future__ import annotations

from sipmob.sip.challenge import ChallengeRetry
from sipmob.sip.headers import CSeq
from sipmob.sip.message import Headers, Request, Response
from sipmob.sip.transaction import TransactionKey
from sipmob.sip.uabase import _RETRY_BASE, _RETRY_MAX, _Registration
from sipmob.sip.uaevents import Registered, RegistrationFailed, UAError, Unregistered
from sipmob.sip.uri import URI, NameAddr


class Registrations(ChallengeRetry):
    # Registration (§10.2) -------------------------------------------------------------------------

    def register(self, registrar: URI, now: float, *, aor: URI | None = None, expires: int = 3600) -> int:
        """Bind our Contact to `aor` (by default ours) at `registrar` for `expires` seconds and keep
        the binding fresh until `unregister`. Returns the registration's handle, which `Registered`,
        `RegistrationFailed` and `Unregistered` carry."""
        if expires <= 0:
            raise UAError("expires must be positive (use unregister to remove a binding)")
        handle = self._new_handle()
        r = _Registration(handle, registrar.replace(headers=()), aor or self.aor,
                          f"{self._token()}@{self.contact_uri.host}", expires)
        self._regs[handle] = r
        self._send_register(r, expires, now)
        self._pump(now)
        return handle

    def unregister(self, reg: int, now: float) -> None:
        """Remove the binding (REGISTER with expires 0, §10.2.2); `Unregistered` follows."""
        r = self._regs.get(reg)
        if r is None:
            raise UAError(f"no registration {reg}")
        r.refresh_at = None
        if r.state == "failed":
            del self._regs[reg]  # nothing is bound, so there is nothing to remove
            self._events.append(Unregistered(reg))
            return
        r.state = "unregistering"
        self._send_register(r, 0, now)
        self._pump(now)

    def registration_state(self, reg: int) -> str:
        """registering, registered, failed, unregistering, or "gone"."""
        r = self._regs.get(reg)
        return r.state if r is not None else "gone"

    def _send_register(self, r: _Registration, expires: int, now: float) -> None:
        # §10.2.4: the same Call-ID for every REGISTER of one binding, the CSeq one higher each time
        r.cseq += 1
        h = Headers()
        h.add("Max-Forwards", "70")
        h.add("From", str(NameAddr(self.display_name, r.aor, (("tag", self._token()),))))
        h.add("To", str(NameAddr(None, r.aor)))
        h.add("Call-ID", r.call_id)
        h.add("CSeq", str(CSeq(r.cseq, "REGISTER")))
        h.add("Contact", str(self.local_contact))
        if r.stale_contact is not None and expires:
            h.add("Contact", f"<{r.stale_contact}>;expires=0")  # §10.2.2, in the same request
            r.stale_contact = None
        h.add("Expires", str(expires))
        self._common_headers(h)
        request = Request("REGISTER", r.registrar, h)
        r.key = self._send(request, self.next_hop(r.registrar), None, now)

    def _reg_keys(self) -> set[TransactionKey]:
        return {r.key for r in self._regs.values() if r.key is not None}

    def _on_register_response(self, key: TransactionKey, response: Response, now: float) -> None:
        r = next(r for r in self._regs.values() if r.key == key)
        status = response.status
        if status < 200:
            return
        retry = self._auth_retry(key, response, now)
        if retry is not None:
            r.key = retry
            r.cseq = self._sent[retry].request.cseq.seq
            return
        r.key = None
        if 200 <= status < 300:
            if r.state == "unregistering":
                del self._regs[r.handle]
                self._events.append(Unregistered(r.handle))
                return
            granted = self._granted_expires(response, r.expires)
            r.state = "registered"
            r.failures = 0
            r.interval_retried = False
            r.refresh_at = now + max(granted / 2, 1.0)
            self._events.append(Registered(r.handle, granted))
            return
        if status == 423 and r.state != "unregistering" and not r.interval_retried:
            # §10.3 step 7: too brief; ask again with at least what the registrar wants
            try:
                minimum = int((response.headers.get("Min-Expires") or "").strip())
            except ValueError:
                minimum = 0
            if minimum > r.expires:
                r.expires = minimum
                r.interval_retried = True
                self._send_register(r, r.expires, now)
                return
        self._register_failed(r, status, response.reason, now)

    def _register_failed(self, r: _Registration, status: int, reason: str, now: float) -> None:
        r.key = None
        if r.state == "unregistering":
            del self._regs[r.handle]
            self._events.append(RegistrationFailed(r.handle, status, reason, None))
            self._events.append(Unregistered(r.handle))
            return
        r.failures += 1
        r.state = "failed"
        r.interval_retried = False
        wait = min(_RETRY_MAX, _RETRY_BASE * 2 ** r.failures)
        wait *= 0.5 + self._rng.random() / 2  # RFC 5626 §4.5: 50-100 % of the wait time
        r.refresh_at = now + wait
        self._events.append(RegistrationFailed(r.handle, status, reason, wait))

    def _granted_expires(self, response: Response, asked: int) -> int:
        """What the registrar granted (§10.2.4): our Contact's expires, else Expires, else ours."""
        ours = self.contact_uri
        for contact in response.contact:
            u = contact.uri
            if (u.user, u.host.lower(), u.port) == (ours.user, ours.host.lower(), ours.port):
                value = contact.param("expires")
                if value is not None and value.strip().isdigit():
                    return int(value)
        value = response.headers.get("Expires")
        if value is not None and value.strip().isdigit():
            return int(value)
        return asked


    def _registration_deadlines(self) -> list[float]:
        return [r.refresh_at for r in self._regs.values() if r.refresh_at is not None]

    def _registration_timers(self, now: float) -> None:
        for r in list(self._regs.values()):
            if r.refresh_at is not None and r.refresh_at <= now:
                r.refresh_at = None
                self._send_register(r, r.expires, now)

