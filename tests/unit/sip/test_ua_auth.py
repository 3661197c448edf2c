"""The UA core answering Digest challenges (RFC 3261 §22.2-22.3, RFC 7616/8760) and keeping a
REGISTER binding (§10.2): two in-memory cores, one of them the challenging registrar or UAS,
checking credentials with `sip.auth.DigestServer`, on fake time."""

from __future__ import annotations

import itertools
import random

import pytest

from sipmob.sip.auth import DigestServer, compute_ha1
from sipmob.sip.message import Request, make_response, parse_message
from sipmob.sip.transaction import TimerConfig
from sipmob.sip.transport import Address
from sipmob.sip.ua import (
    CallEstablished,
    CallFailed,
    IncomingInvite,
    Registered,
    RegistrationFailed,
    ReinviteCompleted,
    ReinviteReceived,
    RequestCompleted,
    RequestReceived,
    UACore,
    Unregistered,
)
from sipmob.sip.uri import URI

ALICE = Address("127.0.0.1", 5070, "udp")
SERVER = Address("127.0.0.1", 5080, "udp")
REALM = "home.test"
SECRET = b"0123456789abcdef0123"
SDP = b"v=0\r\no=a 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"


def core(addr: Address, name: str, **kw: object) -> UACore:
    counter = itertools.count()
    return UACore([addr], user=name, token=lambda: f"{name}{next(counter)}", rng=random.Random(7),
                  timers=TimerConfig(t1=0.5), **kw)  # type: ignore[arg-type]


class Pair:
    """Alice (the client under test) and a server core, one fake wire and one fake clock."""

    def __init__(self, **alice_kw: object) -> None:
        self.alice = core(ALICE, "alice", **alice_kw)
        self.server = core(SERVER, "server")
        self.server.app_methods.update({"REGISTER", "MESSAGE", "OPTIONS"})
        self.now = 0.0
        self.sent: list[bytes] = []  # Alice's messages, as sent
        self.events: list[object] = []  # Alice's events
        self.server_events: list[object] = []

    def step(self) -> int:
        moved = 0
        for data, dest in self.alice.messages_to_send():
            self.sent.append(data)
            if (dest.host, dest.port) == (SERVER.host, SERVER.port):
                self.server.receive(data, ALICE, self.now)
                moved += 1
        for data, _dest in self.server.messages_to_send():
            self.alice.receive(data, SERVER, self.now)
            moved += 1
        while (e := self.alice.next_event()) is not None:
            self.events.append(e)
        while (e := self.server.next_event()) is not None:
            self.server_events.append(e)
        return moved

    def take_server_event(self) -> object:
        for _ in range(20):
            if self.server_events:
                return self.server_events.pop(0)
            self.step()
        raise AssertionError("the server got nothing")

    def run(self) -> None:
        for _ in range(20):
            if not self.step():
                return

    def advance(self, until: float) -> None:
        for _ in range(1000):
            due = [t for ua in (self.alice, self.server) if (t := ua.get_timer()) is not None and t <= until]
            if not due:
                break
            self.now = max(self.now, min(due))
            for ua in (self.alice, self.server):
                t = ua.get_timer()
                if t is not None and t <= self.now:
                    ua.handle_timer(self.now)
            self.step()
        self.now = max(self.now, until)

    def requests(self, method: str) -> list[Request]:
        """Alice's requests of `method`, one per CSeq (retransmissions left out)."""
        out: dict[tuple[str, int], Request] = {}
        for data in self.sent:
            msg = parse_message(data)
            if isinstance(msg, Request) and msg.method == method:
                out.setdefault((msg.call_id, msg.cseq.seq), msg)
        return list(out.values())


class Checker:
    """The server's side of Digest: challenges, and verifies with `DigestServer`."""

    def __init__(self, password: str = "secret", algorithm: str = "SHA-256") -> None:
        self.digest = DigestServer(REALM, SECRET, algorithm=algorithm)
        self.password = password
        self.results: list[str] = []

    def lookup(self, user: str, realm: str, algorithm: str) -> str | None:
        return compute_ha1(algorithm, user, realm, self.password) if user == "alice" else None

    def check(self, request: Request, header: str, now: float) -> bool:
        value = request.headers.get(header)
        if value is None:
            return False
        result = self.digest.verify(value, request.method, self.lookup, now, request_uri=str(request.uri),
                                    body=request.body)
        self.results.append(result.status.value)
        return result.ok

    def challenge(self, now: float, *, stale: bool = False) -> str:
        return str(self.digest.make_challenge(now, stale=stale))


def serve_requests(p: Pair, checker: Checker, *, status: int = 401, times: int = 1) -> None:
    """Answer the next `times` out-of-dialog requests: challenge without valid credentials, else 200."""
    header = "Authorization" if status == 401 else "Proxy-Authorization"
    offered = "WWW-Authenticate" if status == 401 else "Proxy-Authenticate"
    for _ in range(times):
        e = p.take_server_event()
        assert isinstance(e, RequestReceived)
        if checker.check(e.request, header, p.now):
            p.server.respond(e.rid, 200, p.now, headers=[("Contact", f"<sip:alice@{ALICE.host}:{ALICE.port}>"
                                                                      ";expires=600")])
        else:
            p.server.respond(e.rid, status, p.now, headers=[(offered, checker.challenge(p.now))])
        p.run()


SERVER_URI = URI.parse(f"sip:{SERVER.host}:{SERVER.port}")


def test_a_401_is_answered_with_credentials_the_server_accepts() -> None:
    p = Pair(credentials=("alice", "secret"))
    checker = Checker()
    op = p.alice.request("MESSAGE", SERVER_URI, p.now, body=b"hi", content_type="text/plain")
    serve_requests(p, checker, times=2)
    assert checker.results == ["ok"]
    done = [e for e in p.events if isinstance(e, RequestCompleted)]
    assert [(e.op, e.response.status if e.response else None) for e in done] == [(op, 200)]


def test_the_retry_has_a_new_cseq_and_branch_and_the_same_call_id_and_from_tag() -> None:
    p = Pair(credentials=("alice", "secret"))
    p.alice.request("OPTIONS", SERVER_URI, p.now)
    serve_requests(p, Checker(), times=2)
    first, second = p.requests("OPTIONS")
    assert second.cseq.seq == first.cseq.seq + 1
    assert second.vias[0].branch != first.vias[0].branch
    assert (second.call_id, second.from_.tag) == (first.call_id, first.from_.tag)


def test_the_strongest_algorithm_offered_is_answered() -> None:
    p = Pair(credentials=("alice", "secret"))
    md5, sha = DigestServer(REALM, SECRET, algorithm="MD5"), DigestServer(REALM, SECRET)
    p.alice.request("OPTIONS", SERVER_URI, p.now)
    e = p.take_server_event()
    assert isinstance(e, RequestReceived)
    p.server.respond(e.rid, 401, p.now, headers=[("WWW-Authenticate", str(md5.make_challenge(p.now))),
                                                 ("WWW-Authenticate", str(sha.make_challenge(p.now)))])
    p.run()
    retry = p.requests("OPTIONS")[-1]
    assert "algorithm=SHA-256" in (retry.headers.get("Authorization") or "")


def test_a_wrong_password_fails_after_one_retry() -> None:
    p = Pair(credentials=("alice", "wrong"))
    checker = Checker()
    op = p.alice.request("OPTIONS", SERVER_URI, p.now)
    serve_requests(p, checker, times=2)
    assert checker.results == ["bad response"]
    assert len(p.requests("OPTIONS")) == 2
    done = [e for e in p.events if isinstance(e, RequestCompleted)]
    assert [(e.op, e.response.status if e.response else None) for e in done] == [(op, 401)]


def test_without_credentials_the_401_is_the_answer() -> None:
    p = Pair()
    p.alice.request("OPTIONS", SERVER_URI, p.now)
    serve_requests(p, Checker())
    assert len(p.requests("OPTIONS")) == 1
    assert [e.response.status for e in p.events if isinstance(e, RequestCompleted) and e.response] == [401]


def test_credentials_are_asked_for_by_realm() -> None:
    asked: list[str] = []

    def lookup(realm: str) -> tuple[str, str] | None:
        asked.append(realm)
        return ("alice", "secret")

    p = Pair(credentials=lookup)
    checker = Checker()
    p.alice.request("OPTIONS", SERVER_URI, p.now)
    serve_requests(p, checker, times=2)
    assert checker.results == ["ok"] and set(asked) == {REALM}


def test_a_stale_nonce_is_retried_with_the_new_one() -> None:
    p = Pair(credentials=("alice", "secret"))
    checker = Checker()
    checker.digest.nonce_lifetime = 10.0
    p.alice.request("OPTIONS", SERVER_URI, p.now)
    serve_requests(p, checker)  # the first challenge
    e = p.take_server_event()  # the answer to it, held until its nonce is old
    assert isinstance(e, RequestReceived)
    p.now += 20.0
    assert not checker.check(e.request, "Authorization", p.now) and checker.results == ["stale nonce"]
    p.server.respond(e.rid, 401, p.now, headers=[("WWW-Authenticate", checker.challenge(p.now, stale=True))])
    p.run()
    serve_requests(p, checker)
    assert checker.results == ["stale nonce", "ok"]
    assert [e.response.status for e in p.events if isinstance(e, RequestCompleted) and e.response] == [200]


def test_a_407_is_answered_with_proxy_authorization() -> None:
    p = Pair(credentials=("alice", "secret"))
    checker = Checker(algorithm="MD5")
    p.alice.request("OPTIONS", SERVER_URI, p.now)
    serve_requests(p, checker, status=407, times=2)
    retry = p.requests("OPTIONS")[-1]
    assert retry.headers.get("Authorization") is None and checker.results == ["ok"]


def test_nonce_counts_go_up_for_each_request_with_the_same_nonce() -> None:
    p = Pair(credentials=("alice", "secret"))
    checker = Checker()
    p.alice.request("OPTIONS", SERVER_URI, p.now)
    e = p.take_server_event()
    assert isinstance(e, RequestReceived)
    challenge = checker.challenge(p.now)
    p.server.respond(e.rid, 401, p.now, headers=[("WWW-Authenticate", challenge)])
    p.run()
    e = p.take_server_event()
    assert isinstance(e, RequestReceived)
    p.server.respond(e.rid, 200, p.now)
    p.run()
    p.alice.request("OPTIONS", SERVER_URI, p.now)
    e = p.take_server_event()
    assert isinstance(e, RequestReceived)
    p.server.respond(e.rid, 401, p.now, headers=[("WWW-Authenticate", challenge)])
    p.run()
    ncs = [r.headers.get("Authorization") for r in p.requests("OPTIONS")]
    assert "nc=00000001" in (ncs[1] or "") and "nc=00000002" in (ncs[3] or "")


def answer_invites(p: Pair, checker: Checker, status: int = 401) -> None:
    header = "Authorization" if status == 401 else "Proxy-Authorization"
    offered = "WWW-Authenticate" if status == 401 else "Proxy-Authenticate"
    for _ in range(2):
        e = p.take_server_event()
        assert isinstance(e, IncomingInvite)
        if checker.check(e.request, header, p.now):
            p.server.answer_invite(e.call, 200, p.now, sdp=SDP)
        else:
            p.server.answer_invite(e.call, status, p.now, headers=[(offered, checker.challenge(p.now))])
        p.run()
        if any(isinstance(x, CallEstablished | CallFailed) for x in p.events):
            return


@pytest.mark.parametrize("status", [401, 407])
def test_an_invite_challenged_is_sent_again_and_the_call_established(status: int) -> None:
    p = Pair(credentials=("alice", "secret"))
    checker = Checker()
    call = p.alice.invite(URI.parse(f"sip:server@{SERVER.host}:{SERVER.port}"), SDP, p.now)
    answer_invites(p, checker, status)
    assert checker.results == ["ok"]
    assert [type(e) for e in p.events if isinstance(e, CallEstablished | CallFailed)] == [CallEstablished]
    assert p.alice.call_state(call) == "confirmed"
    invites = p.requests("INVITE")
    assert invites[1].cseq.seq == invites[0].cseq.seq + 1
    assert len(p.requests("ACK")) == 2  # the transaction's ACK of the challenge, the dialog's of the 2xx


def test_an_invite_with_the_wrong_password_fails_with_the_challenge_status() -> None:
    p = Pair(credentials=("alice", "nope"))
    call = p.alice.invite(URI.parse(f"sip:server@{SERVER.host}:{SERVER.port}"), SDP, p.now)
    answer_invites(p, Checker(), 407)
    failed = [e for e in p.events if isinstance(e, CallFailed)]
    assert [(e.call, e.status) for e in failed] == [(call, 407)]


def test_an_in_dialog_request_is_answered_with_the_dialogs_next_cseq() -> None:
    p = Pair(credentials=("alice", "secret"))
    checker = Checker()
    call = p.alice.invite(URI.parse(f"sip:server@{SERVER.host}:{SERVER.port}"), SDP, p.now)
    e = p.take_server_event()
    assert isinstance(e, IncomingInvite)
    p.server.answer_invite(e.call, 200, p.now, sdp=SDP)
    p.run()
    p.server_events.clear()
    p.alice.request_in_call(call, "INFO", p.now, body=b"x", content_type="text/plain")
    for _ in range(2):
        r = p.take_server_event()
        assert isinstance(r, RequestReceived)
        if checker.check(r.request, "Authorization", p.now):
            p.server.respond(r.rid, 200, p.now)
        else:
            p.server.respond(r.rid, 401, p.now, headers=[("WWW-Authenticate", checker.challenge(p.now))])
        p.run()
    infos = p.requests("INFO")
    assert [i.cseq.seq for i in infos] == [2, 3] and checker.results == ["ok"]
    dialog = p.alice.dialog(call)
    assert dialog is not None and dialog.local_seq == 3


# REGISTER ---------------------------------------------------------------------------------------


def registrar_answers(p: Pair, *, status: int = 200, headers: list[tuple[str, str]] | None = None) -> Request:
    e = p.take_server_event()
    assert isinstance(e, RequestReceived) and e.request.method == "REGISTER"
    p.server.respond(e.rid, status, p.now, headers=headers or [])
    p.run()
    return e.request


def test_register_is_challenged_then_registered_with_what_the_registrar_granted() -> None:
    p = Pair(credentials=("alice", "secret"))
    checker = Checker(algorithm="MD5")
    reg = p.alice.register(SERVER_URI, p.now, expires=3600)
    serve_requests(p, checker, times=2)
    assert checker.results == ["ok"]
    assert [e for e in p.events if isinstance(e, Registered)] == [Registered(reg, 600)]
    first = p.requests("REGISTER")[0]
    assert first.headers.get("Expires") == "3600" and first.to.uri == p.alice.aor
    assert first.contact[0].uri == p.alice.contact_uri


def test_register_refreshes_at_half_the_granted_expiry_with_the_same_call_id() -> None:
    p = Pair()
    reg = p.alice.register(SERVER_URI, p.now, expires=600)
    registrar_answers(p, headers=[("Expires", "100")])
    p.advance(49.0)
    assert len(p.requests("REGISTER")) == 1
    p.advance(51.0)
    first, refresh = p.requests("REGISTER")
    assert refresh.call_id == first.call_id and refresh.cseq.seq == first.cseq.seq + 1
    registrar_answers(p, headers=[("Expires", "100")])
    assert [e for e in p.events if isinstance(e, Registered)] == [Registered(reg, 100)] * 2


def test_423_is_retried_with_min_expires() -> None:
    p = Pair()
    reg = p.alice.register(SERVER_URI, p.now, expires=60)
    registrar_answers(p, status=423, headers=[("Min-Expires", "1800")])
    registrar_answers(p)
    first, retry = p.requests("REGISTER")
    assert retry.headers.get("Expires") == "1800" and retry.cseq.seq == first.cseq.seq + 1
    assert [e for e in p.events if isinstance(e, Registered)] == [Registered(reg, 1800)]


def test_a_failed_register_is_reported_and_retried_after_a_back_off() -> None:
    p = Pair()
    reg = p.alice.register(SERVER_URI, p.now, expires=600)
    registrar_answers(p, status=403)
    (failed,) = [e for e in p.events if isinstance(e, RegistrationFailed)]
    assert (failed.reg, failed.status) == (reg, 403)
    assert failed.retry_in is not None and 30.0 <= failed.retry_in <= 60.0  # RFC 5626 §4.5, first failure
    assert p.alice.registration_state(reg) == "failed"
    p.advance(failed.retry_in + 0.01)
    assert len(p.requests("REGISTER")) == 2


def test_the_back_off_doubles_with_each_failure() -> None:
    p = Pair()
    p.alice.register(SERVER_URI, p.now, expires=600)
    for _ in range(3):
        registrar_answers(p, status=503)
        wait = [e for e in p.events if isinstance(e, RegistrationFailed)][-1].retry_in
        assert wait is not None
        p.advance(p.now + wait + 0.01)
    waits = [e.retry_in for e in p.events if isinstance(e, RegistrationFailed)]
    assert len(waits) == 3 and all(w is not None for w in waits)
    assert 60.0 <= waits[1] <= 120.0 and 120.0 <= waits[2] <= 240.0  # type: ignore[operator]


def test_unregister_sends_expires_zero_and_reports_unregistered() -> None:
    p = Pair()
    reg = p.alice.register(SERVER_URI, p.now, expires=600)
    registrar_answers(p)
    p.alice.unregister(reg, p.now)
    request = registrar_answers(p)
    assert request.headers.get("Expires") == "0"
    assert request.call_id == p.requests("REGISTER")[0].call_id
    assert Unregistered(reg) in p.events and p.alice.registration_state(reg) == "gone"
    p.advance(p.now + 3600)
    assert len(p.requests("REGISTER")) == 2  # no refresh once unregistered


def test_a_register_timing_out_is_a_408_failure() -> None:
    p = Pair()
    p.alice.register(URI.parse("sip:127.0.0.1:5999"), p.now)
    p.advance(40.0)
    failed = [e for e in p.events if isinstance(e, RegistrationFailed)]
    assert [e.status for e in failed] == [408]


def test_a_reinvite_challenged_is_sent_again_with_the_dialogs_next_cseq() -> None:
    p = Pair(credentials=("alice", "secret"))
    checker = Checker()
    call = p.alice.invite(URI.parse(f"sip:server@{SERVER.host}:{SERVER.port}"), SDP, p.now)
    e = p.take_server_event()
    assert isinstance(e, IncomingInvite)
    p.server.answer_invite(e.call, 200, p.now, sdp=SDP)
    p.run()
    p.server_events.clear()  # the INVITE's CallEstablished
    op = p.alice.reinvite(call, SDP, p.now)
    (data, _dest), = p.alice.messages_to_send()  # held back from the server: we answer it here
    reinvite = parse_message(data)
    assert isinstance(reinvite, Request)
    challenge = make_response(reinvite, 407, headers=[("Proxy-Authenticate", checker.challenge(p.now))])
    p.alice.receive(challenge.to_bytes(), SERVER, p.now)
    p.run()
    received = p.take_server_event()
    assert isinstance(received, ReinviteReceived)
    assert checker.check(received.request, "Proxy-Authorization", p.now)
    assert received.request.cseq.seq == reinvite.cseq.seq + 1
    p.server.answer_reinvite(received.call, received.rid, 200, p.now, sdp=SDP)
    p.run()
    done = next(e for e in p.events if isinstance(e, ReinviteCompleted) and e.op == op)
    assert done.response is not None and done.response.status == 200
