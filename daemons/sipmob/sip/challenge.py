"""Answering Digest challenges (RFC 3261 §22.2-22.3 with RFC 7616/8760 via `sipmob.sip.auth`).

Responsible for: keeping every request we send as we made it until its final response, so a 401 or
407 can be answered by sending it again, once per challenge, with a new CSeq and branch and the
credentials the application gave; the strongest algorithm a challenge offers; nonce counts.

Not here: the Digest computation (`sipmob.sip.auth`), what a usage does with the retried request.
"""
from __future__ import annotations

from sipmob.sip.auth import Challenge, authorization
from sipmob.sip.dialog import Dialog
from sipmob.sip.headers import CSeq
from sipmob.sip.message import Request, Response
from sipmob.sip.transaction import TransactionKey
from sipmob.sip.transport import Address
from sipmob.sip.uabase import _ALGORITHM_STRENGTH, _MAX_NONCES, UABase, _Sent, log
from sipmob.sip.uri import SIPParseError


class ChallengeRetry(UABase):
    # Digest challenges (§22.2, §22.3) -------------------------------------------------------------

    def _send(self, request: Request, destination: Address, dialog: Dialog | None, now: float,
              challenges: dict[tuple[str, str], Challenge] | None = None) -> TransactionKey:
        key = self.layer.send_request(request, destination, now)
        self._sent[key] = _Sent(request, destination, dialog, challenges or {})
        return key

    def _credentials_for(self, realm: str) -> tuple[str, str] | None:
        if self.credentials is None or isinstance(self.credentials, tuple):
            return self.credentials
        return self.credentials(realm)

    def _auth_retry(self, key: TransactionKey, response: Response, now: float) -> TransactionKey | None:
        """Send the request of `key` again answering the 401/407 `response`; None when we cannot
        (no credentials for a realm, nothing we support, or the realm rejected what we sent)."""
        sent = self._sent.pop(key, None)
        if sent is None or response.status not in (401, 407) or self.credentials is None:
            return None
        if response.status == 401:
            offered, answer = "WWW-Authenticate", "Authorization"
        else:
            offered, answer = "Proxy-Authenticate", "Proxy-Authorization"
        best: dict[str, Challenge] = {}
        for value in response.headers.get_lines(offered):
            try:
                challenge = Challenge.parse(value)
            except SIPParseError:
                continue
            if not challenge.supported:
                continue
            known = best.get(challenge.realm)
            if known is None or (_ALGORITHM_STRENGTH.get(challenge.algorithm.upper().removesuffix("-SESS"), 0)
                                 > _ALGORITHM_STRENGTH.get(known.algorithm.upper().removesuffix("-SESS"), 0)):
                best[challenge.realm] = challenge
        if not best:
            return None
        challenges = dict(sent.challenges)
        for realm, challenge in best.items():
            if (answer, realm) in sent.challenges and not challenge.stale:
                log.info("%s rejected our credentials for realm %r", response.status, realm)
                return None  # we answered this realm already: wrong user or password
            if self._credentials_for(realm) is None:
                return None
            challenges[(answer, realm)] = challenge
        request = sent.request.copy()
        request.headers.remove("Via")
        request.headers.remove("Authorization")
        request.headers.remove("Proxy-Authorization")
        if sent.dialog is not None:  # §12.2.1.1: in a dialog, the next of the dialog's CSeqs
            sent.dialog.local_seq += 1
            seq = sent.dialog.local_seq
        else:
            seq = request.cseq.seq + 1
        request.headers.set("CSeq", str(CSeq(seq, request.method)))
        for (header, realm), challenge in challenges.items():
            creds = self._credentials_for(realm)
            if creds is None:
                return None
            self._nc[challenge.nonce] = nc = self._nc.pop(challenge.nonce, 0) + 1
            while len(self._nc) > _MAX_NONCES:
                del self._nc[next(iter(self._nc))]
            request.headers.add(header, authorization(challenge, request.method, str(request.uri),
                                                      creds[0], creds[1], self._token(), nc,
                                                      request.body))
        return self._send(request, sent.destination, sent.dialog, now, challenges)

