"""The sans-I/O SLP User Agent and Service Agent, driven with hand-made replies."""

from __future__ import annotations

import dataclasses
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from sipmob.slp import wire
from sipmob.slp.agent import (
    DA_SERVICE_TYPE,
    AgentConfig,
    DAFound,
    DALost,
    DARebooted,
    Deregistered,
    DeregistrationFailed,
    Outgoing,
    QueryDone,
    Registered,
    Registration,
    RegistrationFailed,
    ServiceAgent,
    SLPTimeout,
    UserAgent,
    refresh_margin,
)
from sipmob.slp.messages import (
    NO_FLAGS,
    AttrRply,
    AttrRqst,
    DAAdvert,
    ErrorCode,
    Flags,
    FunctionId,
    Header,
    Message,
    SrvAck,
    SrvDeReg,
    SrvReg,
    SrvRply,
    SrvRqst,
    SrvTypeRply,
    SrvTypeRqst,
    UrlEntry,
)

DA = ("127.0.0.1", 4427)
DA2 = ("127.0.0.2", 4427)
GROUP = ("239.255.255.253", 427)


def ua(**kw: object) -> UserAgent:
    config = dict(das=(DA,))
    config.update(kw)
    return UserAgent(AgentConfig(**config), now=0.0, rng=random.Random(1))  # type: ignore[arg-type]


def sa(**kw: object) -> ServiceAgent:
    config = dict(das=(DA,))
    config.update(kw)
    return ServiceAgent(AgentConfig(**config), now=0.0, rng=random.Random(1))  # type: ignore[arg-type]


def msgs(out: list[Outgoing]) -> list[Message]:
    return [wire.decode(o.data) for o in out]


def only(out: list[Outgoing]) -> Message:
    assert len(out) == 1, out
    return wire.decode(out[0].data)


def header(request: Message, function_id: FunctionId, flags: Flags = NO_FLAGS) -> Header:
    return Header(function_id, request.header.xid, request.header.lang, flags)


def srvrply(request: Message, *urls: str, error: ErrorCode = ErrorCode.OK,
            flags: Flags = NO_FLAGS) -> bytes:
    return wire.encode(SrvRply(header(request, FunctionId.SrvRply, flags), error,
                               tuple(UrlEntry(u, 300) for u in urls)))


def ack(request: Message, error: ErrorCode = ErrorCode.OK) -> bytes:
    return wire.encode(SrvAck(header(request, FunctionId.SrvAck), error))


def daadvert(url: str, boot: int, scopes: str = "DEFAULT", xid: int = 0) -> bytes:
    return wire.encode(DAAdvert(Header(FunctionId.DAAdvert, xid), ErrorCode.OK, boot, url, scopes))


def run_until(agent: UserAgent | ServiceAgent, until: float) -> list[tuple[float, Outgoing]]:
    """Fire every timer up to ``until``; what was sent, with when."""
    sent = []
    for _ in range(1000):
        due = agent.get_timer()
        if due is None or due > until:
            return sent
        sent.extend((due, o) for o in agent.handle_timer(due))
    raise AssertionError("timer loop did not settle")


def first_sends(sent: list[tuple[float, Outgoing]]) -> list[Message]:
    """The requests among ``sent``, without their retransmissions."""
    seen: dict[int, Message] = {}
    for _, o in sent:
        m = wire.decode(o.data)
        seen.setdefault(m.header.xid, m)
    return list(seen.values())


def rfc_schedule(retry: float, limit: float) -> list[float]:
    """§12.3: send at 0, then after waits of retry, 2*retry, 4*retry... while within limit."""
    times, t, wait = [0.0], 0.0, retry
    while t + wait < limit:
        t += wait
        times.append(t)
        wait *= 2
    return times


# UserAgent: unicast to a DA ---------------------------------------------------------------------


def test_find_services_sends_srvrqst_to_the_configured_da() -> None:
    agent = ua(scopes=("home",))
    query, out = agent.find_services("service:sip", 0.0, predicate="(room=kitchen)")
    assert [(o.dest, o.via) for o in out] == [(DA, "udp")]
    rq = only(out)
    assert isinstance(rq, SrvRqst)
    assert (rq.service_type, rq.scope_list, rq.predicate, rq.prlist) == (
        "service:sip", "home", "(room=kitchen)", "")
    assert not rq.header.request_mcast
    assert not query.done


def test_unanswered_request_is_retransmitted_with_the_rfc_backoff_then_times_out() -> None:
    agent = ua(retry=2.0, retry_max=15.0)
    query, out = agent.find_services("service:sip", 0.0)
    sent = [0.0] + [t for t, _ in run_until(agent, 100.0)]
    assert sent == rfc_schedule(2.0, 15.0)
    assert query.done and isinstance(query.error, SLPTimeout)
    assert agent.get_timer() is None


def test_retransmissions_keep_the_xid() -> None:
    agent = ua()
    _, out = agent.find_services("service:sip", 0.0)
    xids = {m.header.xid for m in msgs(out + [o for _, o in run_until(agent, 100.0)])}
    assert len(xids) == 1


def test_reply_completes_the_query_with_its_urls() -> None:
    agent = ua()
    query, out = agent.find_services("service:sip", 0.0)
    assert agent.receive(srvrply(only(out), "sip:tv@10.0.0.5", "sip:cam@10.0.0.6"), DA, 0.1) == []
    assert query.done and query.error is None
    assert query.result is not None
    assert [u.url for u in query.result] == ["sip:tv@10.0.0.5", "sip:cam@10.0.0.6"]
    assert next(e for e in agent.events() if isinstance(e, QueryDone)).query is query
    assert agent.get_timer() is None


def test_reply_with_another_xid_is_ignored() -> None:
    agent = ua()
    query, out = agent.find_services("service:sip", 0.0)
    rq = only(out)
    wrong = dataclasses.replace(rq, header=dataclasses.replace(rq.header, xid=rq.header.xid ^ 1))
    agent.receive(srvrply(wrong, "sip:x@h"), DA, 0.1)
    assert not query.done


def test_reply_from_another_source_is_ignored() -> None:
    agent = ua()
    query, out = agent.find_services("service:sip", 0.0)
    agent.receive(srvrply(only(out), "sip:x@h"), ("127.0.0.9", 4427), 0.1)
    assert not query.done


def test_garbage_is_dropped_and_counted() -> None:
    agent = ua()
    query, _ = agent.find_services("service:sip", 0.0)
    assert agent.receive(b"\x02\x02garbage", DA, 0.1) == []
    assert agent.dropped == 1 and not query.done


def test_error_reply_fails_the_query_with_the_da_error_code() -> None:
    agent = ua()
    query, out = agent.find_services("service:sip", 0.0)
    agent.receive(srvrply(only(out), error=ErrorCode.SCOPE_NOT_SUPPORTED), DA, 0.1)
    assert query.done and query.error is not None
    assert query.error.code == ErrorCode.SCOPE_NOT_SUPPORTED


def test_overflowed_reply_repeats_the_request_over_tcp() -> None:
    agent = ua()
    query, out = agent.find_services("service:sip", 0.0)
    rq = only(out)
    tcp = agent.receive(srvrply(rq, "sip:a@h", flags=Flags.OVERFLOW), DA, 0.1)
    assert [(o.dest, o.via) for o in tcp] == [(DA, "tcp")]
    assert only(tcp) == rq
    assert not query.done
    assert [o for _, o in run_until(agent, 10.0)] == []  # no UDP retransmission meanwhile
    agent.receive(srvrply(rq, "sip:a@h", "sip:b@h"), DA, 10.0)
    assert query.result is not None and len(query.result) == 2


def test_late_overflowed_udp_duplicate_does_not_complete_a_tcp_query() -> None:
    agent = ua()
    query, out = agent.find_services("service:sip", 0.0)
    rq = only(out)
    agent.receive(srvrply(rq, "sip:a@h", flags=Flags.OVERFLOW), DA, 0.1)
    assert agent.receive(srvrply(rq, "sip:a@h", flags=Flags.OVERFLOW), DA, 0.2) == []
    assert not query.done


def test_unanswered_discovered_da_is_dropped_and_the_next_one_asked() -> None:
    agent = ua(das=())
    agent.receive(daadvert("service:directory-agent://127.0.0.2", 100), (DA2[0], 4427), 0.0)
    agent.receive(daadvert("service:directory-agent://127.0.0.3", 100), ("127.0.0.3", 4427), 0.0)
    agent.events()
    query, out = agent.find_services("service:sip", 0.0)
    assert out[0].dest == DA2
    later = run_until(agent, 15.0)
    assert later[-1][1].dest == ("127.0.0.3", 4427)
    lost = [e for e in agent.events() if isinstance(e, DALost)]
    assert [e.da.address for e in lost] == [DA2]
    assert not query.done


def test_without_da_or_multicast_a_query_fails_at_once() -> None:
    agent = ua(das=())
    query, out = agent.find_services("service:sip", 0.0)
    assert out == [] and query.done and query.error is not None


def test_find_attributes_parses_the_attribute_list() -> None:
    agent = ua()
    query, out = agent.find_attributes("sip:tv@10.0.0.5", 0.0, tags="room")
    rq = only(out)
    assert isinstance(rq, AttrRqst) and (rq.url, rq.tag_list) == ("sip:tv@10.0.0.5", "room")
    agent.receive(wire.encode(AttrRply(header(rq, FunctionId.AttrRply), ErrorCode.OK,
                                       "(room=living room),(floor=1)")), DA, 0.1)
    assert query.result is not None
    assert query.result["room"].values == ("living room",)
    assert query.result["floor"].values == (1,)


def test_find_service_types_lists_the_types() -> None:
    agent = ua()
    query, out = agent.find_service_types(0.0)
    rq = only(out)
    assert isinstance(rq, SrvTypeRqst) and rq.naming_authority is None
    agent.receive(wire.encode(SrvTypeRply(header(rq, FunctionId.SrvTypeRply), ErrorCode.OK,
                                          "service:sip,service:mdsm")), DA, 0.1)
    assert query.result == ("service:sip", "service:mdsm")


# UserAgent: multicast convergence (§6.3) -----------------------------------------------------


def mc_agent(**kw: object) -> UserAgent:
    return ua(das=(), multicast=True, **kw)


def test_without_da_the_request_is_multicast() -> None:
    agent = mc_agent()
    _, out = agent.find_services("service:sip", 0.0)
    assert [(o.dest, o.via) for o in out] == [(GROUP, "multicast")]
    assert only(out).header.request_mcast


def test_multicast_retransmission_carries_the_previous_responders() -> None:
    agent = mc_agent()
    query, out = agent.find_services("service:sip", 0.0)
    rq = only(out)
    agent.receive(srvrply(rq, "sip:a@h"), ("10.0.0.5", 427), 0.5)
    agent.receive(srvrply(rq, "sip:b@h"), ("10.0.0.6", 427), 0.6)
    resent = agent.handle_timer(agent.get_timer() or 0.0)
    again = only(resent)
    assert isinstance(again, SrvRqst) and again.prlist == "10.0.0.5,10.0.0.6"
    assert again.header.xid == rq.header.xid


def test_multicast_converges_after_a_round_without_new_responders() -> None:
    agent = mc_agent(retry=2.0, mc_max=15.0)
    query, out = agent.find_services("service:sip", 0.0)
    rq = only(out)
    agent.receive(srvrply(rq, "sip:a@h"), ("10.0.0.5", 427), 0.5)
    sent = run_until(agent, 100.0)
    # one retransmission with the PR list, then a quiet round ends it
    assert [t for t, _ in sent] == [2.0]
    assert query.done and query.result is not None
    assert [u.url for u in query.result] == ["sip:a@h"]


def test_multicast_stops_at_mc_max_while_responders_keep_coming() -> None:
    agent = mc_agent(retry=2.0, mc_max=15.0)
    query, out = agent.find_services("service:sip", 0.0)
    rq = only(out)
    n = 0
    for _ in range(20):
        due = agent.get_timer()
        if due is None:
            break
        n += 1
        agent.receive(srvrply(rq, f"sip:{n}@h"), (f"10.0.0.{n}", 427), due - 0.1)
        agent.handle_timer(due)
    assert query.done and query.result is not None
    assert len(query.result) == n
    assert n == len(rfc_schedule(2.0, 15.0))


def test_multicast_answer_from_a_known_responder_is_ignored() -> None:
    agent = mc_agent()
    query, out = agent.find_services("service:sip", 0.0)
    rq = only(out)
    agent.receive(srvrply(rq, "sip:a@h"), ("10.0.0.5", 427), 0.5)
    agent.receive(srvrply(rq, "sip:evil@h"), ("10.0.0.5", 427), 0.6)
    run_until(agent, 100.0)
    assert query.result is not None and [u.url for u in query.result] == ["sip:a@h"]


def test_multicast_error_replies_are_ignored() -> None:
    agent = mc_agent()
    query, out = agent.find_services("service:sip", 0.0)
    agent.receive(srvrply(only(out), error=ErrorCode.SCOPE_NOT_SUPPORTED), ("10.0.0.5", 427), 0.5)
    run_until(agent, 100.0)
    assert query.error is None and query.result == ()


def test_multicast_stops_when_the_prlist_no_longer_fits() -> None:
    agent = mc_agent(mtu=120)
    query, out = agent.find_services("service:sip", 0.0)
    rq = only(out)
    for i in range(1, 20):
        agent.receive(srvrply(rq, f"sip:{i}@h"), (f"10.0.0.{i}", 427), 0.5)
    assert agent.handle_timer(2.0) == []
    assert query.done and query.result is not None and len(query.result) == 19


def test_multicast_attribute_replies_are_merged() -> None:
    agent = mc_agent()
    query, out = agent.find_attributes("service:sip", 0.0)
    rq = only(out)
    for i, attrs in enumerate(["(media=audio)", "(media=video),(floor=1)"]):
        agent.receive(wire.encode(AttrRply(header(rq, FunctionId.AttrRply), ErrorCode.OK, attrs)),
                      (f"10.0.0.{i}", 427), 0.5)
    run_until(agent, 100.0)
    assert query.result is not None
    assert set(query.result["media"].values) == {"audio", "video"}
    assert query.result["floor"].values == (1,)


# DA discovery (§12.2) -------------------------------------------------------------------------


def test_start_asks_each_configured_da_for_its_advert() -> None:
    agent = ua(das=(DA, DA2))
    out = agent.start(0.0)
    assert [o.dest for o in out] == [DA, DA2]
    assert all(isinstance(m, SrvRqst) and m.service_type == DA_SERVICE_TYPE for m in msgs(out))


def test_solicited_daadvert_records_the_da() -> None:
    agent = ua()
    rq = only(agent.start(0.0))
    agent.receive(daadvert("service:directory-agent://127.0.0.1:4427", 1000, "home,office",
                           xid=rq.header.xid), DA, 0.1)
    found = [e for e in agent.events() if isinstance(e, DAFound)]
    assert len(found) == 1
    da = found[0].da
    assert (da.address, da.boot_timestamp, da.scopes, da.static) == (DA, 1000, ("home", "office"), True)
    assert agent.das[da.url] == da


def test_unsolicited_daadvert_is_passive_discovery() -> None:
    agent = ua(das=())
    agent.receive(daadvert("service:directory-agent://10.0.0.1", 5), ("10.0.0.1", 427), 0.0)
    assert [type(e) for e in agent.events()] == [DAFound]
    assert agent.das_for(["DEFAULT"]) == [("10.0.0.1", 427)]
    assert agent.das_for(["other"]) == []


def test_new_boot_timestamp_reports_a_reboot() -> None:
    agent = ua(das=())
    url = "service:directory-agent://10.0.0.1"
    agent.receive(daadvert(url, 5), ("10.0.0.1", 427), 0.0)
    agent.receive(daadvert(url, 5), ("10.0.0.1", 427), 1.0)
    agent.receive(daadvert(url, 9), ("10.0.0.1", 427), 2.0)
    events = agent.events()
    assert [type(e) for e in events] == [DAFound, DARebooted]
    assert isinstance(events[1], DARebooted) and events[1].previous_boot_timestamp == 5


def test_boot_timestamp_zero_means_the_da_is_going_down() -> None:
    agent = ua(das=())
    url = "service:directory-agent://10.0.0.1"
    agent.receive(daadvert(url, 5), ("10.0.0.1", 427), 0.0)
    agent.receive(daadvert(url, 0), ("10.0.0.1", 427), 1.0)
    assert [type(e) for e in agent.events()] == [DAFound, DALost]
    assert agent.das == {}


def test_active_multicast_discovery_runs_after_start_wait_and_every_da_find() -> None:
    agent = mc_agent(start_wait=3.0, da_find=900.0)
    assert agent.start(0.0) == []
    sent = [(t, wire.decode(o.data)) for t, o in run_until(agent, 1000.0)]
    assert all(isinstance(m, SrvRqst) and m.service_type == DA_SERVICE_TYPE for _, m in sent)
    started = sorted({m.header.xid: t for t, m in reversed(sent)}.values())  # first send of each
    assert len(started) == 2
    assert 0.0 <= started[0] <= 3.0
    assert started[1] == started[0] + 900.0


def test_configured_das_are_asked_again_every_da_find() -> None:
    agent = ua(da_find=900.0)
    first = only(agent.start(0.0))
    agent.receive(daadvert("service:directory-agent://127.0.0.1", 5, xid=first.header.xid), DA, 0.1)
    assert agent.get_timer() == 900.0
    again = only(agent.handle_timer(900.0))
    assert isinstance(again, SrvRqst) and again.service_type == DA_SERVICE_TYPE
    agent.receive(daadvert("service:directory-agent://127.0.0.1", 6, xid=again.header.xid), DA, 900.1)
    events = [type(e) for e in agent.events() if not isinstance(e, QueryDone)]
    assert events == [DAFound, DARebooted]


def test_discover_das_returns_the_das_that_answered() -> None:
    agent = mc_agent()
    query, out = agent.discover_das(0.0)
    rq = only(out)
    agent.receive(daadvert("service:directory-agent://10.0.0.1", 5, xid=rq.header.xid),
                  ("10.0.0.1", 427), 0.2)
    run_until(agent, 100.0)
    assert query.result is not None
    assert [d.url for d in query.result] == ["service:directory-agent://10.0.0.1"]


# ServiceAgent ---------------------------------------------------------------------------------

TV = Registration("sip:tv@10.0.0.5", "service:sip", ("DEFAULT",), "(room=living room)", 600)


def test_register_sends_a_fresh_srvreg_to_the_da() -> None:
    agent = sa()
    out = agent.register(TV, 0.0)
    assert [(o.dest, o.via) for o in out] == [(DA, "udp")]
    reg = only(out)
    assert isinstance(reg, SrvReg) and reg.header.fresh
    assert (reg.url_entry, reg.service_type, reg.scope_list, reg.attr_list) == (
        UrlEntry(TV.url, TV.lifetime), TV.service_type, "DEFAULT", TV.attr_list)


def test_ack_reports_registered() -> None:
    agent = sa()
    reg = only(agent.register(TV, 0.0))
    agent.receive(ack(reg), DA, 0.1)
    assert agent.events() == [Registered(TV.url, DA, TV.lifetime)]
    assert agent.registered_at(TV.url) == [DA]


def test_registration_is_refreshed_before_its_lifetime_ends() -> None:
    agent = sa()
    reg = only(agent.register(TV, 10.0))
    agent.receive(ack(reg), DA, 10.2)
    due = agent.get_timer()
    assert due == 10.0 + TV.lifetime - refresh_margin(TV.lifetime)
    assert due is not None and 10.0 + TV.lifetime - due >= 15.0  # room for the retransmissions
    again = only(agent.handle_timer(due))
    assert isinstance(again, SrvReg) and again.url_entry.url == TV.url


def test_rejected_registration_is_reported_and_retried_later() -> None:
    agent = sa(reg_retry=30.0)
    reg = only(agent.register(TV, 0.0))
    agent.receive(ack(reg, ErrorCode.DA_BUSY_NOW), DA, 0.1)
    events = agent.events()
    assert isinstance(events[0], RegistrationFailed) and events[0].error == ErrorCode.DA_BUSY_NOW
    assert agent.get_timer() == 30.1
    assert isinstance(only(agent.handle_timer(30.1)), SrvReg)


def test_absent_da_is_retried_until_it_answers() -> None:
    agent = sa(reg_retry=30.0)
    agent.register(TV, 0.0)
    sent = run_until(agent, 100.0)
    failures = [e for e in agent.events() if isinstance(e, RegistrationFailed)]
    assert failures and all(e.error is None for e in failures)
    attempts = {m.header.xid for m in msgs([o for _, o in sent])}
    assert len(attempts) >= 2  # a new transaction after each give-up
    due = agent.get_timer()
    assert due is not None
    out = agent.handle_timer(due)
    agent.receive(ack(only(out)), DA, due + 0.1)
    assert agent.registered_at(TV.url) == [DA]


def test_attribute_update_is_a_fresh_reregistration() -> None:
    agent = sa()
    agent.receive(ack(only(agent.register(TV, 0.0))), DA, 0.1)
    update = dataclasses.replace(TV, attr_list="(room=kitchen)")
    reg = only(agent.register(update, 5.0))
    assert isinstance(reg, SrvReg) and reg.header.fresh and reg.attr_list == "(room=kitchen)"
    assert agent.registered_at(TV.url) == []
    agent.receive(ack(reg), DA, 5.1)
    assert agent.registered_at(TV.url) == [DA]


def test_scope_change_deregisters_the_old_then_registers_the_new() -> None:
    agent = sa()
    agent.receive(ack(only(agent.register(TV, 0.0))), DA, 0.1)
    moved = dataclasses.replace(TV, scopes=("upstairs",))
    dereg = only(agent.register(moved, 5.0))
    assert isinstance(dereg, SrvDeReg) and dereg.scope_list == "DEFAULT"
    reg = only(agent.receive(ack(dereg), DA, 5.1))
    assert isinstance(reg, SrvReg) and reg.scope_list == "upstairs"


def test_deregister_sends_srvdereg_and_reports_it() -> None:
    agent = sa()
    agent.receive(ack(only(agent.register(TV, 0.0))), DA, 0.1)
    agent.events()
    dereg = only(agent.deregister(TV.url, 1.0))
    assert isinstance(dereg, SrvDeReg) and dereg.url_entry.url == TV.url
    agent.receive(ack(dereg), DA, 1.1)
    assert agent.events() == [Deregistered(TV.url, DA)]
    assert agent.get_timer() is None  # no refresh of a removed registration


def test_stop_deregisters_everything() -> None:
    agent = sa()
    other = dataclasses.replace(TV, url="sip:cam@10.0.0.6")
    for r in (TV, other):
        agent.receive(ack(only(agent.register(r, 0.0))), DA, 0.1)
    out = agent.stop(1.0)
    deregs = msgs(out)
    assert {m.url_entry.url for m in deregs if isinstance(m, SrvDeReg)} == {TV.url, other.url}
    assert not agent.stopped
    for m in deregs:
        agent.receive(ack(m), DA, 1.1)
    assert agent.stopped


def test_stop_gives_up_on_a_silent_da() -> None:
    agent = sa()
    agent.receive(ack(only(agent.register(TV, 0.0))), DA, 0.1)
    agent.events()
    agent.stop(1.0)
    run_until(agent, 100.0)
    assert agent.stopped
    assert [type(e) for e in agent.events()] == [DeregistrationFailed]


def test_rebooted_da_gets_everything_registered_again() -> None:
    agent = sa(reg_wait=(1.0, 3.0))
    rq = only(agent.start(0.0))
    url = "service:directory-agent://127.0.0.1:4427"
    agent.receive(daadvert(url, 100, xid=rq.header.xid), DA, 0.1)
    agent.receive(ack(only(agent.register(TV, 1.0))), DA, 1.1)
    agent.receive(daadvert(url, 200), DA, 50.0)
    assert agent.registered_at(TV.url) == []
    due = agent.get_timer()
    assert due is not None and 51.0 <= due <= 53.0  # a random wait, not a storm
    reg = only(agent.handle_timer(due))
    assert isinstance(reg, SrvReg) and reg.url_entry.url == TV.url


def test_newly_found_da_gets_the_registrations_in_its_scopes() -> None:
    agent = sa(das=())
    agent.register(TV, 0.0)
    upstairs = dataclasses.replace(TV, url="sip:cam@h", scopes=("upstairs",))
    agent.register(upstairs, 0.0)
    agent.receive(daadvert("service:directory-agent://10.0.0.1", 5), ("10.0.0.1", 427), 10.0)
    sent = first_sends(run_until(agent, 20.0))
    assert [m.url_entry.url for m in sent if isinstance(m, SrvReg)] == [TV.url]


def test_registration_is_sent_only_in_the_scopes_the_da_serves() -> None:
    agent = sa(das=())
    both = dataclasses.replace(TV, scopes=("DEFAULT", "upstairs"))
    agent.register(both, 0.0)
    agent.receive(daadvert("service:directory-agent://10.0.0.1", 5), ("10.0.0.1", 427), 10.0)
    sent = first_sends(run_until(agent, 20.0))
    assert [m.scope_list for m in sent if isinstance(m, SrvReg)] == ["DEFAULT"]


def test_lost_da_stops_being_refreshed() -> None:
    agent = sa(das=())
    url = "service:directory-agent://10.0.0.1"
    source = ("10.0.0.1", 427)
    agent.register(TV, 0.0)
    agent.receive(daadvert(url, 5), source, 0.0)
    [reg] = first_sends(run_until(agent, 5.0))
    agent.receive(ack(reg), source, 5.0)
    agent.receive(daadvert(url, 0), source, 6.0)
    assert agent.get_timer() is None


@settings(max_examples=60, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=12))
def test_registration_converges_whatever_the_da_drops(answers: list[bool]) -> None:
    """Each SrvReg sent is answered or lost as drawn; once the DA answers one, it is registered."""
    agent = sa(reg_retry=10.0)
    out = agent.register(TV, 0.0)
    now = 0.0
    for answer in [*answers, True]:
        while not out:  # between attempts the SA only waits
            due = agent.get_timer()
            assert due is not None and due >= now
            now = due
            out = agent.handle_timer(now)
        if answer:
            agent.receive(ack(wire.decode(out[-1].data)), DA, now)
            break
        out = []
    assert agent.registered_at(TV.url) == [DA]
