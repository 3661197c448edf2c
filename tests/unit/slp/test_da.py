"""The Directory Agent core, driven with encoded messages and a fake clock."""

from __future__ import annotations

import dataclasses
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from sipmob.slp import wire
from sipmob.slp.attrs import parse_attr_list
from sipmob.slp.da import (
    DAConfig,
    DirectoryAgent,
    Expired,
    RateLimited,
    Registered,
    Via,
)
from sipmob.slp.messages import (
    AttrRply,
    AttrRqst,
    DAAdvert,
    ErrorCode,
    Extension,
    Flags,
    FunctionId,
    Header,
    SrvAck,
    SrvDeReg,
    SrvReg,
    SrvRply,
    SrvRqst,
    SrvTypeRply,
    SrvTypeRqst,
    UrlEntry,
)
from sipmob.slp.predicate import Predicate

NOW = 1_700_000_000.0
DA_ADDR = "192.168.1.1"
SA = ("192.168.1.20", 40000)
TV = "sip:tv@192.168.1.20"


def make_da(now: float = NOW, **changes: object) -> DirectoryAgent:
    config = DAConfig(url=f"service:directory-agent://{DA_ADDR}", addresses=frozenset({DA_ADDR}))
    return DirectoryAgent(dataclasses.replace(config, **changes), now)  # type: ignore[arg-type]


def one(da: DirectoryAgent, msg: object, via: Via = "udp", now: float = NOW,
        source: tuple[str, int] = SA) -> object:
    replies = da.handle(wire.encode(msg), source, via, now)  # type: ignore[arg-type]
    assert len(replies) == 1, replies
    return wire.decode(replies[0])


def silent(da: DirectoryAgent, msg: object, via: Via = "mcast", now: float = NOW) -> bool:
    return da.handle(wire.encode(msg), SA, via, now) == []  # type: ignore[arg-type]


def register(da: DirectoryAgent, url: str = TV, attrs: str = "(room=kitchen)", *,
             service_type: str = "service:sip-device", lifetime: int = 300, fresh: bool = True,
             scopes: str = "DEFAULT", lang: str = "en", now: float = NOW,
             source: tuple[str, int] = SA) -> ErrorCode:
    flags = Flags.FRESH if fresh else Flags(0)
    msg = SrvReg(Header(FunctionId.SrvReg, 7, lang, flags), UrlEntry(url, lifetime), service_type,
                 scopes, attrs)
    ack = one(da, msg, now=now, source=source)
    assert isinstance(ack, SrvAck) and ack.header.xid == 7
    return ack.error


def deregister(da: DirectoryAgent, url: str = TV, tags: str = "", scopes: str = "DEFAULT",
               lang: str = "en", source: tuple[str, int] = SA) -> ErrorCode:
    ack = one(da, SrvDeReg(Header(FunctionId.SrvDeReg, 8, lang), scopes, UrlEntry(url, 0), tags),
              source=source)
    assert isinstance(ack, SrvAck)
    return ack.error


def rqst(service_type: str = "service:sip-device", predicate: str = "", scopes: str = "DEFAULT",
         lang: str = "en", xid: int = 11, prlist: str = "", mcast: bool = False) -> SrvRqst:
    flags = Flags.REQUEST_MCAST if mcast else Flags(0)
    return SrvRqst(Header(FunctionId.SrvRqst, xid, lang, flags), prlist, service_type, scopes, predicate)


def find(da: DirectoryAgent, *args: str, now: float = NOW, **kw: str) -> list[str]:
    reply = one(da, rqst(*args, **kw), now=now)  # type: ignore[arg-type]
    assert isinstance(reply, SrvRply) and reply.error == ErrorCode.OK, reply
    return [u.url for u in reply.urls]


def error_of(da: DirectoryAgent, msg: object) -> ErrorCode:
    reply = one(da, msg)
    return reply.error  # type: ignore[attr-defined,no-any-return]


# Registration -------------------------------------------------------------------------------


def test_fresh_registration_is_acked_and_found() -> None:
    da = make_da()
    assert register(da) == ErrorCode.OK
    assert find(da) == [TV]


def test_reply_lifetime_is_the_remaining_time() -> None:
    da = make_da()
    register(da, lifetime=300)
    reply = one(da, rqst(), now=NOW + 100.5)
    assert isinstance(reply, SrvRply)
    assert reply.urls == (UrlEntry(TV, 200),)


def test_registration_expires_when_its_lifetime_runs_out() -> None:
    da = make_da(heartbeat=0)
    register(da, lifetime=60)
    assert da.get_timer() == NOW + 60
    da.handle_timer(NOW + 59)
    assert da.registration_count == 1
    da.handle_timer(NOW + 60)
    assert da.registration_count == 0
    assert Expired(TV, "service:sip-device", "en") in da.pop_events()
    assert da.get_timer() is None


def test_refresh_postpones_expiry() -> None:
    da = make_da(heartbeat=0)
    register(da, lifetime=60)
    register(da, lifetime=60, now=NOW + 50)
    da.handle_timer(NOW + 60)
    assert da.registration_count == 1
    assert da.get_timer() == NOW + 110


def test_zero_lifetime_is_an_invalid_registration() -> None:
    assert register(make_da(), lifetime=0) == ErrorCode.INVALID_REGISTRATION


def test_url_without_a_scheme_is_an_invalid_registration() -> None:
    assert register(make_da(), url="tv at home") == ErrorCode.INVALID_REGISTRATION


def test_service_url_of_another_type_is_an_invalid_registration() -> None:
    da = make_da()
    assert register(da, url="service:printer:lpr://192.168.1.9", service_type="service:sip-device") \
        == ErrorCode.INVALID_REGISTRATION
    assert register(da, url="service:printer:lpr://192.168.1.9", service_type="service:printer:lpr") \
        == ErrorCode.OK


def test_unparsable_attribute_list_is_a_parse_error() -> None:
    assert register(make_da(), attrs="(room=kitchen") == ErrorCode.PARSE_ERROR


def test_registration_in_an_unserved_scope_is_refused() -> None:
    da = make_da()
    assert register(da, scopes="DEFAULT,garage") == ErrorCode.SCOPE_NOT_SUPPORTED
    assert da.registration_count == 0


def test_incremental_registration_without_an_existing_one_is_an_invalid_update() -> None:
    assert register(make_da(), fresh=False) == ErrorCode.INVALID_UPDATE


def test_incremental_registration_merges_attributes() -> None:
    da = make_da()
    register(da, attrs="(room=kitchen),(floor=1)")
    assert register(da, attrs="(floor=2),(vendor=acme)", fresh=False) == ErrorCode.OK
    reply = one(da, AttrRqst(Header(FunctionId.AttrRqst, 3), "", TV, "DEFAULT"))
    assert isinstance(reply, AttrRply)
    assert parse_attr_list(reply.attr_list) == parse_attr_list("(room=kitchen),(floor=2),(vendor=acme)")


def test_incremental_registration_with_other_scopes_or_type_is_an_invalid_update() -> None:
    da = make_da(scopes=("DEFAULT", "home"))
    register(da)
    assert register(da, fresh=False, scopes="home") == ErrorCode.INVALID_UPDATE
    assert register(da, fresh=False, service_type="service:sip-mdsm") == ErrorCode.INVALID_UPDATE


def test_fresh_registration_replaces_attributes() -> None:
    da = make_da()
    register(da, attrs="(room=kitchen),(floor=1)")
    register(da, attrs="(room=hall)")
    assert find(da, predicate="(floor=1)") == []
    assert find(da, predicate="(room=hall)") == [TV]


def test_registrations_are_per_url_and_language() -> None:
    da = make_da()
    register(da, attrs="(room=kitchen)", lang="en")
    register(da, attrs="(room=Kueche)", lang="de")
    assert da.registration_count == 2
    assert find(da, predicate="(room=kitchen)", lang="de") == []
    assert find(da, predicate="(room=kueche)", lang="de") == [TV]


def test_deregistration_removes_the_url_in_every_language() -> None:
    da = make_da()
    register(da, lang="en")
    register(da, lang="de")
    assert deregister(da) == ErrorCode.OK
    assert da.registration_count == 0
    assert find(da) == []


def test_deregistration_of_tags_removes_only_those_attributes() -> None:
    da = make_da()
    register(da, attrs="(room=kitchen),(floor=1),(media=audio-sendrecv)")
    assert deregister(da, tags="fl*,media") == ErrorCode.OK
    assert find(da) == [TV]
    assert find(da, predicate="(floor=1)") == []
    assert find(da, predicate="(room=kitchen)") == [TV]


def test_registration_from_outside_the_allowed_networks_lacks_authentication() -> None:
    da = make_da(allowed_networks=("192.168.0.0/16",))
    assert register(da, source=("203.0.113.5", 427)) == ErrorCode.AUTHENTICATION_ABSENT
    assert register(da) == ErrorCode.OK
    assert deregister(da, source=("203.0.113.5", 427)) == ErrorCode.AUTHENTICATION_ABSENT
    assert da.registration_count == 1


def test_a_full_store_answers_da_busy_now() -> None:
    da = make_da(max_registrations=2)
    register(da, url="sip:a@192.168.1.2")
    register(da, url="sip:b@192.168.1.3")
    assert register(da, url="sip:c@192.168.1.4") == ErrorCode.DA_BUSY_NOW
    assert register(da, url="sip:a@192.168.1.2") == ErrorCode.OK  # a refresh still fits


def test_an_oversized_attribute_list_is_an_invalid_registration() -> None:
    da = make_da(max_attr_list=64)
    assert register(da, attrs="(name=" + "x" * 80 + ")") == ErrorCode.INVALID_REGISTRATION


def test_multicast_registration_is_dropped() -> None:
    msg = SrvReg(Header(FunctionId.SrvReg, 1, "en", Flags.FRESH), UrlEntry(TV, 60),
                 "service:sip-device", "DEFAULT", "")
    da = make_da()
    assert silent(da, msg, via="mcast")
    assert da.registration_count == 0


# SrvRqst --------------------------------------------------------------------------------------


def test_abstract_type_request_finds_concrete_registrations() -> None:
    da = make_da()
    register(da, url="service:printer:lpr://192.168.1.9", service_type="service:printer:lpr", attrs="")
    register(da, url="service:printer.acme:ipp://192.168.1.8", service_type="service:printer.acme:ipp",
             attrs="")
    assert find(da, "service:printer") == ["service:printer:lpr://192.168.1.9"]
    assert find(da, "service:printer:ipp") == []
    assert find(da, "service:printer.acme") == ["service:printer.acme:ipp://192.168.1.8"]


def test_empty_scope_list_in_a_request_means_default() -> None:
    da = make_da()
    register(da)
    assert find(da, scopes="") == [TV]


def test_unicast_request_in_unserved_scopes_is_answered_scope_not_supported() -> None:
    da = make_da()
    assert error_of(da, rqst(scopes="garage")) == ErrorCode.SCOPE_NOT_SUPPORTED
    assert silent(da, rqst(scopes="garage", mcast=True))


def test_predicate_selects_registrations() -> None:
    da = make_da()
    register(da, url="sip:tv@192.168.1.20", attrs="(room=kitchen),(media=audio-sendrecv,video-recvonly)")
    register(da, url="sip:phone@192.168.1.21", attrs="(room=kitchen),(media=audio-sendrecv)")
    register(da, url="sip:cam@192.168.1.22", attrs="(room=hall),(media=video-sendonly)")
    assert find(da, predicate="(&(room=kitchen)(media=video-recvonly))") == ["sip:tv@192.168.1.20"]
    assert sorted(find(da, predicate="(|(room=hall)(media=audio-sendrecv))")) == [
        "sip:cam@192.168.1.22", "sip:phone@192.168.1.21", "sip:tv@192.168.1.20"]


def test_unparsable_predicate_is_a_parse_error() -> None:
    da = make_da()
    register(da)
    assert error_of(da, rqst(predicate="(&(room=kitchen)")) == ErrorCode.PARSE_ERROR


ROOMS = ["kitchen", "hall", "den"]
MEDIA = ["audio-sendrecv", "video-recvonly", "video-sendonly"]


@settings(max_examples=40, deadline=None)
@given(devices=st.lists(st.tuples(st.sampled_from(ROOMS), st.sets(st.sampled_from(MEDIA), max_size=3),
                                  st.integers(0, 3)), max_size=12),
       room=st.sampled_from(ROOMS), media=st.sampled_from(MEDIA), floor=st.integers(0, 3),
       shape=st.sampled_from(["(room={r})", "(&(room={r})(media={m}))", "(|(room={r})(floor={f}))",
                              "(&(room={r})(!(media={m})))", "(&(floor>={f})(media={m}))",
                              "(room=*{t})"]))
def test_indexed_search_finds_exactly_what_a_scan_finds(devices: list[tuple[str, set[str], int]],
                                                         room: str, media: str, floor: int,
                                                         shape: str) -> None:
    da = make_da()
    attrs_of = {}
    for i, (r, m, f) in enumerate(devices):
        attrs = f"(room={r}),(floor={f})" + (f",(media={','.join(sorted(m))})" if m else "")
        attrs_of[f"sip:d{i}@192.168.1.{i + 2}"] = attrs
        register(da, url=f"sip:d{i}@192.168.1.{i + 2}", attrs=attrs)
    predicate = shape.format(r=room, m=media, f=floor, t=room[-2:])
    expected = sorted(url for url, attrs in attrs_of.items()
                      if Predicate.parse(predicate).matches(parse_attr_list(attrs)))
    assert sorted(find(da, predicate=predicate)) == expected


def test_multicast_request_with_no_result_gets_no_reply_but_unicast_gets_an_empty_one() -> None:
    da = make_da()
    assert silent(da, rqst(mcast=True))
    assert find(da) == []


def test_multicast_request_listing_us_as_previous_responder_is_ignored() -> None:
    da = make_da()
    register(da)
    assert silent(da, rqst(prlist=f"192.168.1.7,{DA_ADDR}", mcast=True))
    assert not silent(da, rqst(prlist="192.168.1.7", mcast=True))


def test_directory_agent_request_is_answered_with_a_daadvert() -> None:
    da = make_da(scopes=("DEFAULT", "home"))
    for via, scopes in (("udp", "home"), ("mcast", ""), ("tcp", "DEFAULT")):
        advert = one(da, rqst(DA := "service:directory-agent", scopes=scopes, mcast=via == "mcast"),
                     via=via)  # type: ignore[arg-type]
        assert isinstance(advert, DAAdvert), DA
        assert advert.header.xid == 11
        assert advert.url == f"service:directory-agent://{DA_ADDR}"
        assert advert.scope_list == "DEFAULT,home"
        assert advert.boot_timestamp == int(NOW)


def test_directory_agent_request_in_other_scopes_is_not_answered_on_multicast() -> None:
    assert silent(make_da(), rqst("service:directory-agent", scopes="garage", mcast=True))


def test_udp_reply_over_the_limit_overflows_and_tcp_reply_is_complete() -> None:
    da = make_da(udp_reply_limit=300)
    for i in range(20):
        register(da, url=f"sip:device-number-{i:02}@192.168.1.{i + 2}")
    udp = one(da, rqst())
    tcp = one(da, rqst(), via="tcp")
    assert isinstance(udp, SrvRply) and isinstance(tcp, SrvRply)
    assert udp.header.overflow and 0 < len(udp.urls) < 20
    assert not tcp.header.overflow and len(tcp.urls) == 20


# AttrRqst and SrvTypeRqst -----------------------------------------------------------------


def attrs_for(da: DirectoryAgent, url: str, tags: str = "", scopes: str = "DEFAULT",
              lang: str = "en") -> dict[str, object]:
    reply = one(da, AttrRqst(Header(FunctionId.AttrRqst, 5, lang), "", url, scopes, tags))
    assert isinstance(reply, AttrRply) and reply.error == ErrorCode.OK, reply
    return dict(parse_attr_list(reply.attr_list))


def test_attribute_request_by_url_with_wildcard_tags() -> None:
    da = make_da()
    register(da, attrs="(room=kitchen),(audio-codecs=PCMU,opus),(video-codecs=H264),(vendor=acme)")
    assert attrs_for(da, TV, tags="*-codecs") == parse_attr_list("(audio-codecs=PCMU,opus),"
                                                                  "(video-codecs=H264)")
    assert attrs_for(da, TV) == parse_attr_list("(room=kitchen),(audio-codecs=PCMU,opus),"
                                                "(video-codecs=H264),(vendor=acme)")


def test_attribute_request_by_service_type_merges_every_registration() -> None:
    da = make_da()
    register(da, url="sip:a@192.168.1.2", attrs="(room=kitchen),(mobility=basic)")
    register(da, url="sip:b@192.168.1.3", attrs="(room=hall),(mobility=basic)")
    merged = attrs_for(da, "service:sip-device", tags="room,mobility")
    assert merged == parse_attr_list("(room=kitchen,hall),(mobility=basic)")


def test_attribute_request_in_another_language_finds_nothing() -> None:
    da = make_da()
    register(da)
    assert attrs_for(da, TV, lang="fr") == {}


def test_attribute_request_with_a_malformed_tag_list_is_a_parse_error() -> None:
    da = make_da()
    register(da)
    assert error_of(da, AttrRqst(Header(FunctionId.AttrRqst, 5), "", TV, "DEFAULT", "a,,b")) \
        == ErrorCode.PARSE_ERROR


def srv_types(da: DirectoryAgent, authority: str | None, scopes: str = "DEFAULT") -> list[str]:
    reply = one(da, SrvTypeRqst(Header(FunctionId.SrvTypeRqst, 9), "", authority, scopes))
    assert isinstance(reply, SrvTypeRply) and reply.error == ErrorCode.OK
    return reply.srvtype_list.split(",") if reply.srvtype_list else []


def test_service_type_request_by_naming_authority() -> None:
    da = make_da()
    register(da)
    register(da, url="sip:mdsm@192.168.1.1", service_type="service:sip-mdsm", attrs="")
    register(da, url="service:printer.acme:ipp://192.168.1.8", service_type="service:printer.acme:ipp",
             attrs="")
    assert srv_types(da, None) == ["service:printer.acme:ipp", "service:sip-device", "service:sip-mdsm"]
    assert srv_types(da, "") == ["service:sip-device", "service:sip-mdsm"]
    assert srv_types(da, "ACME") == ["service:printer.acme:ipp"]


# Adverts and the boot timestamp -----------------------------------------------------------


def test_heartbeat_multicasts_a_daadvert_and_rearms() -> None:
    da = make_da(heartbeat=600)
    start = wire.decode(da.announce(NOW))
    assert isinstance(start, DAAdvert) and start.header.xid == 0 and start.boot_timestamp == int(NOW)
    assert da.get_timer() == NOW + 600
    assert da.handle_timer(NOW + 599) == []
    (beat,) = da.handle_timer(NOW + 600)
    assert isinstance(wire.decode(beat), DAAdvert)
    assert da.get_timer() == NOW + 1200


def test_goodbye_advert_has_boot_timestamp_zero() -> None:
    advert = wire.decode(make_da().goodbye())
    assert isinstance(advert, DAAdvert) and advert.boot_timestamp == 0


def test_boot_timestamp_changes_on_a_restart_within_the_same_second() -> None:
    first = make_da()
    second = make_da(now=NOW + 0.5)
    second.restore(first.snapshot(), NOW + 0.5)
    assert second.boot_timestamp > first.boot_timestamp


# Persistence ------------------------------------------------------------------------------


def test_restore_keeps_only_what_has_not_expired() -> None:
    da = make_da()
    register(da, url="sip:short@192.168.1.2", lifetime=60)
    register(da, url="sip:long@192.168.1.3", lifetime=600, attrs="(room=hall)")
    snapshot = json.loads(json.dumps(da.snapshot()))
    later = make_da(now=NOW + 100)
    assert later.restore(snapshot, NOW + 100) == 1
    reply = one(later, rqst(predicate="(room=hall)"), now=NOW + 100)
    assert isinstance(reply, SrvRply)
    assert reply.urls == (UrlEntry("sip:long@192.168.1.3", 500),)


def test_restore_skips_broken_entries() -> None:
    da = make_da()
    register(da)
    snapshot = da.snapshot()
    snapshot["registrations"].append({"url": "sip:x@192.168.1.9", "attr_list": "(broken"})
    assert make_da().restore(snapshot, NOW) == 1


def test_reconfigure_keeps_registrations() -> None:
    da = make_da()
    register(da)
    da.reconfigure(dataclasses.replace(da.config, scopes=("DEFAULT", "home")), NOW)
    assert find(da, scopes="home,DEFAULT") == [TV]
    assert register(da, url="sip:x@192.168.1.9", scopes="home") == ErrorCode.OK


# Errors, cache, limits ----------------------------------------------------------------------


def test_garbage_is_dropped() -> None:
    da = make_da()
    for data in (b"", b"\x02", b"hello world, this is not SLP", bytes(64)):
        assert da.handle(data, SA, "udp", NOW) == []
    assert da.counters.garbage >= 3


def test_malformed_unicast_request_is_answered_parse_error_and_multicast_one_is_not() -> None:
    data = bytearray(wire.encode(rqst()))
    data[-3] ^= 0xFF  # the predicate's length no longer fits the message
    da = make_da()
    (reply,) = da.handle(bytes(data), SA, "udp", NOW)
    decoded = wire.decode(reply)
    assert isinstance(decoded, SrvRply) and decoded.error == ErrorCode.PARSE_ERROR
    assert decoded.header.xid == 11
    assert da.handle(bytes(data), SA, "mcast", NOW) == []


def test_unknown_mandatory_extension_is_answered_option_not_understood() -> None:
    msg = dataclasses.replace(rqst(), header=Header(FunctionId.SrvRqst, 11, "en", Flags(0),
                                                    (Extension(0x4001, b"x"),)))
    assert error_of(make_da(), msg) == ErrorCode.OPTION_NOT_UNDERSTOOD


def test_other_version_with_a_readable_header_is_answered_ver_not_supported() -> None:
    data = bytearray(wire.encode(rqst()))
    data[0] = 3
    (reply,) = make_da().handle(bytes(data), SA, "udp", NOW)
    decoded = wire.decode(reply)
    assert isinstance(decoded, SrvRply) and decoded.error == ErrorCode.VER_NOT_SUPPORTED


def test_unknown_function_id_is_dropped() -> None:
    data = bytearray(wire.encode(rqst()))
    data[1] = 99
    assert make_da().handle(bytes(data), SA, "udp", NOW) == []


def test_replies_and_adverts_from_other_agents_get_no_answer() -> None:
    da = make_da()
    assert silent(da, SrvRply(Header(FunctionId.SrvRply, 1), ErrorCode.OK), via="udp")
    assert silent(da, DAAdvert(Header(FunctionId.DAAdvert), ErrorCode.OK, 5,
                               "service:directory-agent://192.168.1.50", "DEFAULT"), via="udp")


def test_cached_reply_carries_the_new_xid() -> None:
    da = make_da()
    register(da)
    first = one(da, rqst(xid=100))
    second = one(da, rqst(xid=200))
    third = one(da, rqst(xid=300))
    assert isinstance(first, SrvRply) and isinstance(second, SrvRply) and isinstance(third, SrvRply)
    assert (first.header.xid, second.header.xid, third.header.xid) == (100, 200, 300)
    assert first.urls == second.urls == third.urls
    assert da.counters.cache_hits == 1


def test_a_request_is_cached_only_once_it_repeats() -> None:
    da = make_da()
    register(da)
    for n in range(50):
        one(da, rqst(xid=n + 1, predicate=f"(!(n={n}))"))
    assert (da.counters.cache_hits, len(da._reply_cache)) == (0, 0)
    one(da, rqst(xid=100, predicate="(!(n=7))"))
    assert len(da._reply_cache) == 1
    one(da, rqst(xid=101, predicate="(!(n=7))"))
    assert da.counters.cache_hits == 1


def test_a_concrete_type_finds_only_its_own_registrations() -> None:
    # Two concrete types under one abstract type: each answers for itself, the abstract for both.
    da = make_da()
    register(da, url="service:printer:lpr://192.168.1.40", service_type="service:printer:lpr")
    register(da, url="service:printer:ipp://192.168.1.41", service_type="service:printer:ipp")
    assert find(da, service_type="service:printer:ipp") == ["service:printer:ipp://192.168.1.41"]
    assert find(da, service_type="SERVICE:Printer:LPR") == ["service:printer:lpr://192.168.1.40"]
    assert find(da, service_type="service:printer") == ["service:printer:ipp://192.168.1.41",
                                                         "service:printer:lpr://192.168.1.40"]
    reply = one(da, SrvTypeRqst(Header(FunctionId.SrvTypeRqst, 9), "", None, "DEFAULT"))
    assert isinstance(reply, SrvTypeRply)
    assert reply.srvtype_list == "service:printer:ipp,service:printer:lpr"


def test_reply_cache_is_invalidated_by_a_registration_and_by_expiry() -> None:
    da = make_da(heartbeat=0)
    register(da, lifetime=30)
    assert find(da) == [TV]
    register(da, url="sip:radio@192.168.1.30", lifetime=600)
    assert sorted(find(da)) == ["sip:radio@192.168.1.30", TV]
    da.handle_timer(NOW + 30)
    assert find(da, now=NOW + 30) == ["sip:radio@192.168.1.30"]


def test_cached_lifetimes_are_never_more_than_a_second_stale() -> None:
    da = make_da()
    register(da, lifetime=300)
    one(da, rqst(), now=NOW)
    reply = one(da, rqst(), now=NOW + 5)
    assert isinstance(reply, SrvRply) and reply.urls[0].lifetime == 295


def test_source_over_its_rate_gets_one_da_busy_now_then_silence() -> None:
    da = make_da(rate=10.0, burst=3)
    data = wire.encode(rqst())
    answers = [da.handle(data, SA, "udp", NOW) for _ in range(6)]
    assert all(len(a) == 1 for a in answers[:4])
    busy = wire.decode(answers[3][0])
    assert isinstance(busy, SrvRply) and busy.error == ErrorCode.DA_BUSY_NOW
    assert answers[4:] == [[], []]
    assert [e for e in da.pop_events() if isinstance(e, RateLimited)] == [RateLimited(SA[0], 1)]
    assert len(da.handle(data, SA, "udp", NOW + 0.2)) == 1  # the bucket refilled two tokens
    other = da.handle(data, ("192.168.1.99", 1), "udp", NOW)
    assert wire.decode(other[0]).error == ErrorCode.OK  # type: ignore[union-attr]


def test_drop_mode_stays_silent_over_the_rate() -> None:
    da = make_da(rate=1.0, burst=1, over_rate="drop")
    data = wire.encode(rqst())
    assert len(da.handle(data, SA, "udp", NOW)) == 1
    assert da.handle(data, SA, "udp", NOW) == []


def test_registration_event_names_url_and_source() -> None:
    da = make_da()
    register(da, lifetime=120)
    assert da.pop_events() == [Registered(TV, "service:sip-device", "en", 120, True, SA[0])]
