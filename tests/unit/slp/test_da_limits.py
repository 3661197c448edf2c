"""The DA's defences, driven in-process with a fake clock: cost bounds, memory bounds, ownership and
trust, rate pools, the journal of changes; and a bounded mutation fuzzer."""

from __future__ import annotations

import dataclasses
import random

from sipmob.slp import predicate, wire
from sipmob.slp.attrs import parse_attr_list
from sipmob.slp.da import DAConfig, DirectoryAgent
from sipmob.slp.messages import (
    AttrRply,
    AttrRqst,
    ErrorCode,
    Flags,
    FunctionId,
    Header,
    SrvAck,
    SrvDeReg,
    SrvReg,
    SrvRply,
    SrvRqst,
    SrvTypeRply,
    UrlEntry,
)

NOW = 1_700_000_000.0
BOX = ("127.0.0.1", 4000)
VICTIM = ("192.168.1.20", 4000)
ROGUE = ("192.168.1.66", 4000)


def make_da(**changes: object) -> DirectoryAgent:
    config = DAConfig(url="service:directory-agent://192.168.1.1", trusted_networks=("127.0.0.0/8",))
    return DirectoryAgent(dataclasses.replace(config, **changes), NOW)  # type: ignore[arg-type]


def send(da: DirectoryAgent, msg: object, source: tuple[str, int] = VICTIM, via: str = "udp",
         now: float = NOW) -> object:
    replies = da.handle(wire.encode(msg), source, via, now)  # type: ignore[arg-type]
    assert len(replies) == 1, replies
    return wire.decode(replies[0])


def reg(da: DirectoryAgent, url: str, attrs: str = "", source: tuple[str, int] = VICTIM,
        lifetime: int = 300, fresh: bool = True, stype: str = "service:sip-device") -> ErrorCode:
    ack = send(da, SrvReg(Header(FunctionId.SrvReg, 1, "en", Flags.FRESH if fresh else Flags(0)),
                          UrlEntry(url, lifetime), stype, "DEFAULT", attrs), source)
    assert isinstance(ack, SrvAck)
    return ack.error


def dereg(da: DirectoryAgent, url: str, tags: str = "", source: tuple[str, int] = VICTIM) -> ErrorCode:
    ack = send(da, SrvDeReg(Header(FunctionId.SrvDeReg, 2, "en"), "DEFAULT", UrlEntry(url, 0), tags), source)
    assert isinstance(ack, SrvAck)
    return ack.error


def attrs_of(da: DirectoryAgent, url: str, via: str = "udp") -> AttrRply:
    reply = send(da, AttrRqst(Header(FunctionId.AttrRqst, 3, "en"), "", url, "DEFAULT", ""), via=via)
    assert isinstance(reply, AttrRply)
    return reply


def find(da: DirectoryAgent, predicate: str = "", via: str = "udp",
         source: tuple[str, int] = VICTIM) -> SrvRply:
    reply = send(da, SrvRqst(Header(FunctionId.SrvRqst, 4, "en"), "", "service:sip-device", "DEFAULT",
                             predicate), source, via)
    assert isinstance(reply, SrvRply)
    return reply


# Cost ---------------------------------------------------------------------------------------------


def test_attr_rqst_by_type_merges_values_once_each_in_order() -> None:
    da = make_da()
    for i in range(300):
        assert reg(da, f"sip:d{i}@192.168.1.{i % 200 + 1}", f"(room=r{i % 3}),(media=audio-sendrecv)") == 0
    merged = parse_attr_list(attrs_of(da, "service:sip-device", via="tcp").attr_list)
    assert merged["room"].values == ("r0", "r1", "r2")
    assert merged["media"].values == ("audio-sendrecv",)


def test_attr_rqst_by_type_stops_at_the_reply_size_and_flags_overflow() -> None:
    da = make_da()
    for i in range(2000):
        reg(da, f"sip:d{i}@192.168.{i // 200}.{i % 200 + 1}", f"(name=Device number {i})")
    reply = attrs_of(da, "service:sip-device")
    # stopped long before the 2,000th registration; the one attribute is longer than a datagram,
    # so none of it is sent and the client asks again over TCP
    assert reply.header.overflow and da._work < 2000 and reply.attr_list == ""
    full = attrs_of(da, "service:sip-device", via="tcp")
    assert full.attr_list.startswith("(name=Device number 0,Device number 1000,")  # in URL order


def test_a_request_over_its_work_budget_is_cut_and_flagged() -> None:
    da = make_da(request_work=500)
    for i in range(2000):
        reg(da, f"sip:d{i}@192.168.{i // 200}.{i % 200 + 1}", f"(n={i})")
    reply = find(da, "(n>=0)", via="tcp")
    assert reply.header.overflow and 0 < len(reply.urls) < 2000
    assert da.counters.cut_by_work == 1


def test_service_type_lists_over_64_kb_are_cut_not_raised() -> None:
    da = make_da()
    for i in range(1300):
        reg(da, f"service:x-{'t' * 50}{i}://h{i}", stype=f"service:x-{'t' * 50}{i}", source=BOX)
    from sipmob.slp.messages import SrvTypeRqst
    reply = send(da, SrvTypeRqst(Header(FunctionId.SrvTypeRqst, 5, "en"), "", None, "DEFAULT"), via="tcp")
    assert isinstance(reply, SrvTypeRply) and reply.header.overflow
    types = ",".join(f"service:t{i}" for i in range(9000))
    big = SrvTypeRply(Header(FunctionId.SrvTypeRply), ErrorCode.OK, types)
    assert len(wire.encode_within(big, 0xFFFF)) <= 0xFFFF  # the list alone is over 64 KB


def test_predicates_over_the_size_or_item_limit_are_parse_errors() -> None:
    da = make_da(max_predicate=100, max_predicate_items=3)
    assert find(da, "(&(a=1)(b=2)(c=3))").error == ErrorCode.OK
    assert find(da, "(&(a=1)(b=2)(c=3)(d=4))").error == ErrorCode.PARSE_ERROR
    assert find(da, "(a=" + "x" * 200 + ")").error == ErrorCode.PARSE_ERROR


def test_predicate_cache_is_bounded_by_bytes() -> None:
    # Values with a space are not slots of a prepared shape (`predicate.prepare`): read as text.
    da = make_da(predicate_cache_bytes=20_000)
    for i in range(500):
        find(da, f"(&(a=v {i})(b=v {i})(c=v {i}))")
        find(da, f"(&(b=v {i})(a=v {i})(c=v {i}))")
    assert not da._predicates  # each asked once: none kept
    for i in range(500):
        find(da, f"(&(a=v {i})(b=v {i})(c=v {i}))")  # asked again: kept, within the bytes
    assert 0 < len(da._predicates) < 500 and da._predicate_bytes <= 20_000


def test_prepared_shapes_are_bounded() -> None:
    da = make_da()
    for i in range(3 * predicate._SHAPE_CACHE_SIZE):
        shape = "".join(f"(t{k}=1)" for k in range(i % 7 + 1))
        assert find(da, f"(&(s{i}=x){shape})").error == ErrorCode.OK
        assert find(da, f"(&(s{i}=y){shape})").error == ErrorCode.OK  # met again: prepared
    assert 0 < len(predicate._SHAPES) <= predicate._SHAPE_CACHE_SIZE
    assert len(predicate._SHAPES_SEEN) <= 8 * predicate._SHAPE_CACHE_SIZE
    long = "(&" + "(a=1)" * 60 + ")"  # over the shape's text limit: read as text every time
    for _ in range(3):
        assert find(da, long).error == ErrorCode.OK
    assert predicate.prepare(long) is None


# Memory ---------------------------------------------------------------------------------------------


def test_store_is_bounded_by_bytes_and_frees_as_registrations_go() -> None:
    da = make_da(max_store_bytes=300_000)
    big = "(v=" + ",".join(f"x{j}" for j in range(100)) + ")"
    errors = [reg(da, f"sip:d{i}@192.168.1.{i + 1}", big) for i in range(50)]
    first = errors.index(ErrorCode.DA_BUSY_NOW)
    assert first > 0 and set(errors[first:]) == {ErrorCode.DA_BUSY_NOW}
    assert da.store_bytes <= 300_000
    assert dereg(da, "sip:d0@192.168.1.1") == 0
    assert reg(da, "sip:new@192.168.1.20", big) == 0


def test_lifetimes_are_capped() -> None:
    da = make_da(max_lifetime=600)
    reg(da, "sip:tv@192.168.1.20", lifetime=65535)
    assert [u.lifetime for u in find(da).urls] == [600]


# Ownership and trust --------------------------------------------------------------------------------


def test_only_the_registering_address_may_change_or_remove_a_url() -> None:
    da = make_da()
    assert reg(da, "sip:tv@192.168.1.20", "(room=hall)") == 0
    assert reg(da, "sip:tv@192.168.1.20", "(room=evil)", ROGUE) == ErrorCode.AUTHENTICATION_FAILED
    assert reg(da, "sip:tv@192.168.1.20", "(x=1)", ROGUE, fresh=False) == ErrorCode.AUTHENTICATION_FAILED
    assert dereg(da, "sip:tv@192.168.1.20", "room", ROGUE) == ErrorCode.AUTHENTICATION_FAILED
    assert dereg(da, "sip:tv@192.168.1.20", "", ROGUE) == ErrorCode.AUTHENTICATION_FAILED
    assert parse_attr_list(attrs_of(da, "sip:tv@192.168.1.20").attr_list)["room"].values == ("hall",)
    assert reg(da, "sip:tv@192.168.1.20", "(room=study)") == 0
    # a trusted registrant may take an untrusted URL over; the reverse is refused
    assert reg(da, "sip:tv@192.168.1.20", "(room=hall)", BOX) == 0
    assert reg(da, "sip:tv@192.168.1.20", "(room=x)") == ErrorCode.AUTHENTICATION_FAILED


def test_the_trusted_attribute_is_set_and_stripped_by_the_da_only() -> None:
    da = make_da()
    reg(da, "sip:a@192.168.1.66", "(name=A),trusted", ROGUE)
    reg(da, "sip:b@127.0.0.1", "(name=B)", BOX)
    assert "trusted" not in parse_attr_list(attrs_of(da, "sip:a@192.168.1.66").attr_list)
    assert "trusted" in parse_attr_list(attrs_of(da, "sip:b@127.0.0.1").attr_list)
    assert [u.url for u in find(da, "(trusted=*)").urls] == ["sip:b@127.0.0.1"]
    dereg(da, "sip:b@127.0.0.1", "trusted", BOX)  # nor can its owner remove it
    assert "trusted" in parse_attr_list(attrs_of(da, "sip:b@127.0.0.1").attr_list)


def test_a_name_claimed_by_a_trusted_registration_cannot_be_claimed_by_others() -> None:
    da = make_da()
    assert reg(da, "sip:kitchen@192.168.1.30", "(name=Kitchen speaker)", BOX) == 0
    for name in ("Kitchen speaker", "KITCHEN-speaker", "kitchen   speaker."):
        assert reg(da, "sip:aaa@192.168.1.66", f"(name={name})", ROGUE) == ErrorCode.AUTHENTICATION_FAILED
    assert reg(da, "sip:aaa@192.168.1.66", "(name=Hall speaker)", ROGUE) == 0
    dereg(da, "sip:kitchen@192.168.1.30", "", BOX)
    assert reg(da, "sip:aaa@192.168.1.66", "(name=Kitchen speaker)", ROGUE) == 0  # free again


def test_control_characters_in_a_url_are_refused() -> None:
    da = make_da()
    for url in ("sip:a\x01@h", "sip:a\x7f@h", "sip:a\x85@h"):
        assert reg(da, url) == ErrorCode.INVALID_REGISTRATION


# Rates ----------------------------------------------------------------------------------------------


def test_strangers_share_a_pool_that_registered_clients_do_not_draw_from() -> None:
    da = make_da(rate=100.0, burst=100, stranger_rate=10.0, stranger_burst=20)
    assert reg(da, "sip:phone@192.168.1.20") == 0
    data = wire.encode(SrvRqst(Header(FunctionId.SrvRqst, 9, "en"), "", "service:sip-device", "DEFAULT", ""))
    answered = sum(bool(da.handle(data, (f"10.0.{i // 250}.{i % 250}", 1), "udp", NOW)) for i in range(1000))
    # the pool's burst (less the victim's registration, made while it was a stranger), then
    # silence: no DA_BUSY_NOW to each of a thousand
    assert answered == 19
    # registered sources have a pool of the same size of their own, untouched by the flood
    assert all(da.handle(data, VICTIM, "udp", NOW) for _ in range(20))


def test_a_subnet_shares_a_bucket_and_rate_state_is_bounded_without_a_reset() -> None:
    da = make_da(rate=100.0, burst=100, subnet_rate=10.0, subnet_burst=10, rate_sources=64)
    data = wire.encode(SrvRqst(Header(FunctionId.SrvRqst, 9, "en"), "", "service:sip-device", "DEFAULT", ""))
    answers = [da.handle(data, (f"10.0.0.{i + 1}", 1), "udp", NOW) for i in range(30)]
    assert sum(1 for a in answers if a and wire.decode(a[0]).error == ErrorCode.OK) == 10  # type: ignore[union-attr]
    for i in range(1000):
        da.handle(data, (f"10.{i // 250}.{i % 250}.1", 1), "udp", NOW)
    assert len(da._buckets) <= 64 and len(da._subnet_buckets) <= 64


def test_costly_requests_are_charged_more_than_one_token() -> None:
    da = make_da(rate=10.0, burst=10)
    for i in range(500):
        reg(da, f"sip:d{i}@192.168.{i // 200}.{i % 200 + 1}", f"(n={i}),(m={i})", BOX)
    # each of these evaluates a 4-item predicate against 500 registrations: 2,500 units, 2 extra tokens
    ok = 0
    for i in range(10):
        request = SrvRqst(Header(FunctionId.SrvRqst, 9, "en"), "", "service:sip-device", "DEFAULT",
                          f"(|(n={i})(m=-1)(m=-2)(m=-3))")
        for reply in da.handle(wire.encode(request), ROGUE, "udp", NOW):
            ok += wire.decode(reply).error == ErrorCode.OK  # type: ignore[union-attr]
    assert ok <= 4


# Journal ------------------------------------------------------------------------------------------


def test_changes_replayed_over_a_snapshot_give_the_same_store() -> None:
    da = make_da()
    reg(da, "sip:a@192.168.1.20", "(room=x)")
    snapshot = da.snapshot()
    da.pop_changes()
    reg(da, "sip:b@192.168.1.20", "(room=y)")
    reg(da, "sip:k@127.0.0.1", "(name=K)", BOX)
    dereg(da, "sip:a@192.168.1.20")
    dereg(da, "sip:b@192.168.1.20", "room")
    changes = da.pop_changes()
    again = make_da()
    again.restore(snapshot, NOW + 1)
    again.replay(changes, NOW + 1)
    assert again.snapshot()["registrations"] == da.snapshot()["registrations"]
    assert "trusted" in parse_attr_list(attrs_of(again, "sip:k@127.0.0.1").attr_list)


def test_replay_applies_the_limits_of_the_configuration() -> None:
    da = make_da()
    reg(da, "sip:a@192.168.1.20", "(room=x)", lifetime=3000)
    reg(da, "sip:k@192.168.1.66", "(name=K)", ROGUE)
    changes = da.pop_changes()
    changes.append({**changes[0], "url": "sip:bad\x01@h"})
    strict = make_da(max_lifetime=60, trusted_networks=("192.168.1.66/32",))
    assert strict.replay(changes, NOW) == 2
    assert [u.lifetime for u in find(strict, "(room=x)").urls] == [60]
    assert "trusted" in parse_attr_list(attrs_of(strict, "sip:k@192.168.1.66").attr_list)


# Fuzz -------------------------------------------------------------------------------------------------


def test_mutated_requests_never_raise_and_leave_the_store_consistent() -> None:
    """A bounded mutation loop: 20,000 packets from valid seeds, flipped, cut, spliced and grown."""
    rng = random.Random(2608)
    da = make_da(rate=0.0)
    seeds = [wire.encode(m) for m in (
        SrvReg(Header(FunctionId.SrvReg, 1, "en", Flags.FRESH), UrlEntry("sip:a@192.168.1.2", 60),
               "service:sip-device", "DEFAULT", "(name=A),(room=k),(n=1),kw"),
        SrvDeReg(Header(FunctionId.SrvDeReg, 2, "en"), "DEFAULT", UrlEntry("sip:a@192.168.1.2", 0), "room"),
        SrvRqst(Header(FunctionId.SrvRqst, 3, "en"), "", "service:sip-device", "DEFAULT",
                "(&(room=k)(n>=0))"),
        AttrRqst(Header(FunctionId.AttrRqst, 4, "en"), "", "service:sip-device", "DEFAULT", "name,r*"),
    )]
    for i in range(20_000):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            op = rng.random()
            if op < 0.5 and data:
                data[rng.randrange(len(data))] = rng.randrange(256)
            elif op < 0.7:
                data = data[:rng.randrange(len(data) + 1)]
            elif op < 0.85:
                other = rng.choice(seeds)
                data += other[rng.randrange(len(other)):]
            else:
                at = rng.randrange(len(data) + 1)
                data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
        source = rng.choice((VICTIM, ROGUE, BOX))
        for reply in da.handle(bytes(data), source, rng.choice(("udp", "tcp", "mcast")), NOW + i / 1000):  # type: ignore[arg-type]
            assert len(reply) <= 0xFFFF
    keys = {(r["url"], r["lang"]) for r in da.snapshot()["registrations"]}
    assert len(keys) == da.registration_count
    assert da.store_bytes == sum(r.cost for r in da._regs.values())


def _rqst(xid: int, predicate: str = "") -> bytes:
    return wire.encode(SrvRqst(Header(FunctionId.SrvRqst, xid, "en"), "", "service:sip-device",
                               "DEFAULT", predicate))


def test_a_batch_is_triaged_before_it_is_served_and_the_household_goes_first() -> None:
    da = make_da(rate=100.0, burst=100, stranger_rate=10.0, stranger_burst=20)
    assert reg(da, "sip:phone@192.168.1.20") == ErrorCode.OK
    strangers = [(f"10.0.{i // 250}.{i % 250 + 1}", 5000) for i in range(300)]
    batch = [(_rqst(i + 1, f"(x={i})"), s) for i, s in enumerate(strangers[:150])]
    batch.append((_rqst(7001), VICTIM))
    batch.append((_rqst(7002), BOX))
    batch += [(_rqst(i + 1, f"(x={i})"), s) for i, s in enumerate(strangers[150:], 150)]
    batch.append((_rqst(7003), VICTIM))
    answered = [(source, wire.decode(r)) for source, replies in da.handle_batch(batch, "udp", NOW)
                for r in replies]
    # The household's three requests are answered first, the victim's two in their own order...
    assert [(s, m.header.xid) for s, m in answered[:3]] == [(VICTIM, 7001), (BOX, 7002), (VICTIM, 7003)]
    # ...and the strangers' pool (a burst of 20, one token taken by the victim's registration while
    # it was a stranger) is spent on the first 19 of them: the rest are refused unparsed.
    served = [m for s, m in answered[3:]]
    assert len(served) == 19 and all(isinstance(m, SrvRply) and m.error == ErrorCode.OK for m in served)
    assert [m.header.xid for m in served] == list(range(1, 20))
    assert da.counters.rate_limited == 281
    assert da.counters.cache_hits + da.counters.cache_misses == 3 + 19  # what was looked at


def test_a_batch_answers_as_handle_does_one_by_one() -> None:
    batch = [(_rqst(i + 1, f"(n={i % 3})"), (f"10.0.0.{i % 5 + 1}", 5000)) for i in range(40)]
    batch.append((wire.encode(SrvReg(Header(FunctionId.SrvReg, 99, "en", Flags.FRESH),
                                     UrlEntry("sip:tv@10.0.1.1", 300), "service:sip-device", "DEFAULT",
                                     "(n=1)")), ("10.0.1.1", 5000)))
    batch.append((_rqst(100, "(n=1)"), ("10.0.1.1", 5000)))
    one_by_one = make_da(rate=5.0, burst=4)
    expected = [(s, one_by_one.handle(d, s, "udp", NOW)) for d, s in batch]
    together = make_da(rate=5.0, burst=4)
    got = list(together.handle_batch(batch, "udp", NOW))
    assert sorted(got) == sorted((s, r) for s, r in expected if r)
    assert wire.decode(got[-1][1][0]).urls[0].url == "sip:tv@10.0.1.1"  # type: ignore[union-attr]
