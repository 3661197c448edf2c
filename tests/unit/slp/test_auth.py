"""Per-registrant secrets: the HMAC-SHA-256 blocks of `sipmob.slp.auth` and what the DA does with them.

Keys are made here for each test (never stored anywhere); the DA is driven with encoded messages
and a fake clock, as in test_da.py.
"""

from __future__ import annotations

import dataclasses
import json
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipmob.slp import auth, wire
from sipmob.slp.da import DAConfig, DirectoryAgent, Refused
from sipmob.slp.messages import (
    AuthBlock,
    ErrorCode,
    Flags,
    FunctionId,
    Header,
    SLPParseError,
    SrvAck,
    SrvDeReg,
    SrvReg,
    SrvRply,
    SrvRqst,
    UrlEntry,
)

NOW = 1_700_000_000.0
KEY = os.urandom(32)
OTHER_KEY = os.urandom(32)
URL = "sip:speaker@192.168.1.30"
HOME = ("192.168.1.30", 40000)
MOVED = ("192.168.1.77", 40001)  # the same device after DHCP gave it another address
ROGUE = ("192.168.1.66", 40002)


def srvreg(url: str = URL, attrs: str = "(name=Kitchen speaker)", lifetime: int = 300,
           fresh: bool = True, xid: int = 7) -> SrvReg:
    return SrvReg(Header(FunctionId.SrvReg, xid, "en", Flags.FRESH if fresh else Flags(0)),
                  UrlEntry(url, lifetime), "service:sip-device", "DEFAULT", attrs)


def srvdereg(url: str = URL, tags: str = "", xid: int = 8) -> SrvDeReg:
    return SrvDeReg(Header(FunctionId.SrvDeReg, xid, "en"), "DEFAULT", UrlEntry(url, 0), tags)


def make_da(**changes: object) -> DirectoryAgent:
    config = DAConfig(url="service:directory-agent://192.168.1.1",
                      keys=(("speaker", KEY), ("tv", OTHER_KEY)))
    return DirectoryAgent(dataclasses.replace(config, **changes), NOW)  # type: ignore[arg-type]


def send(da: DirectoryAgent, msg: SrvReg | SrvDeReg, source: tuple[str, int] = HOME,
         now: float = NOW) -> ErrorCode:
    (reply,) = da.handle(wire.encode(msg), source, "udp", now)
    ack = wire.decode(reply)
    assert isinstance(ack, SrvAck) and ack.header.xid == msg.header.xid
    return ack.error


def urls(da: DirectoryAgent) -> list[str]:
    (reply,) = da.handle(wire.encode(SrvRqst(Header(FunctionId.SrvRqst, 99), "", "service:sip-device",
                                             "DEFAULT", "")), ("192.168.1.2", 1), "udp", NOW)
    rply = wire.decode(reply)
    assert isinstance(rply, SrvRply)
    return [u.url for u in rply.urls]


def signed(msg: SrvReg | SrvDeReg, spi: str = "speaker", key: bytes = KEY, ts: int | None = None
           ) -> SrvReg | SrvDeReg:
    return auth.sign(msg, spi, key, int(NOW) + 30 if ts is None else ts)


# The block and its MAC -----------------------------------------------------------------------


def test_a_signed_registration_is_a_rfc_2608_block_that_round_trips_the_wire() -> None:
    msg = signed(srvreg())
    (block,) = msg.url_entry.auths
    assert (block.bsd, block.spi, block.timestamp) == (auth.BSD_HMAC_SHA256, "speaker", int(NOW) + 30)
    assert 0x8000 <= block.bsd <= 0x8FFF and len(block.structured_auth) == auth.MAC_LEN
    decoded = wire.decode(wire.encode(msg))
    assert decoded == msg
    assert isinstance(decoded, SrvReg) and auth.verify(decoded, block, KEY)
    assert not auth.verify(decoded, block, OTHER_KEY)


def test_the_mac_input_starts_with_the_url_components_of_section_9_2_1() -> None:
    data = auth.authenticated(srvreg(), "speaker", 0x01020304)
    url = URL.encode()
    assert data.startswith(b"\x00\x07speaker" + len(url).to_bytes(2, "big") + url + b"\x01\x02\x03\x04")


FIELDS = {
    "url": lambda m: dataclasses.replace(m, url_entry=dataclasses.replace(m.url_entry, url=URL + "x")),
    "lifetime": lambda m: dataclasses.replace(m, url_entry=dataclasses.replace(m.url_entry, lifetime=65535)),
    "attrs": lambda m: dataclasses.replace(m, attr_list="(name=Rogue)"),
    "type": lambda m: dataclasses.replace(m, service_type="service:sip-device:x"),
    "scopes": lambda m: dataclasses.replace(m, scope_list="OTHER"),
    "lang": lambda m: dataclasses.replace(m, header=dataclasses.replace(m.header, lang="de")),
    "fresh": lambda m: dataclasses.replace(m, header=dataclasses.replace(m.header, flags=Flags(0))),
}


@pytest.mark.parametrize("field", sorted(FIELDS))
def test_every_field_of_a_registration_is_covered(field: str) -> None:
    msg = signed(srvreg())
    assert isinstance(msg, SrvReg)
    (block,) = msg.url_entry.auths
    assert not auth.verify(FIELDS[field](msg), block, KEY)


def test_a_deregistration_block_covers_its_tags_and_is_not_a_registration_block() -> None:
    msg = signed(srvdereg(tags="name"))
    (block,) = msg.url_entry.auths
    assert auth.verify(msg, block, KEY)
    assert not auth.verify(dataclasses.replace(msg, tag_list=""), block, KEY)
    reg = dataclasses.replace(srvreg(lifetime=0, attrs=""), header=Header(FunctionId.SrvReg, 7, "en"))
    assert not auth.verify(reg, block, KEY)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_any_mutation_of_a_signed_message_fails_verification_or_decoding(data: st.DataObject) -> None:
    encoded = bytearray(wire.encode(signed(srvreg(attrs=data.draw(st.sampled_from(
        ["", "(a=1)", "(name=Living room),(codecs=PCMU,opus)"]))))))
    # Past the header (the XID is not covered), and not the URL entry's reserved byte (byte 16
    # after the language tag "en"): §4.3 gives it no meaning and the DA never keeps it.
    pos = data.draw(st.integers(17, len(encoded) - 1))
    encoded[pos] ^= data.draw(st.integers(1, 255))
    try:
        msg = wire.decode(bytes(encoded))
    except SLPParseError:  # a refusal by the decoder is fine
        return
    if not isinstance(msg, SrvReg) or not msg.url_entry.auths:
        return
    block = msg.url_entry.auths[0]
    assert not (block.spi == "speaker" and block.bsd == auth.BSD_HMAC_SHA256
                and auth.verify(msg, block, KEY))


@settings(max_examples=200, deadline=None)
@given(url=st.text(min_size=1, max_size=80), attrs=st.text(max_size=200),
       lifetime=st.integers(0, 0xFFFF), ts=st.integers(0, 0xFFFFFFFF))
def test_sign_then_verify_holds_for_any_content(url: str, attrs: str, lifetime: int, ts: int) -> None:
    msg = auth.sign(srvreg(url=url, attrs=attrs, lifetime=lifetime), "a.b-c_1", KEY, ts)
    assert isinstance(msg, SrvReg)
    (block,) = msg.url_entry.auths
    assert auth.verify(msg, block, KEY)
    assert not auth.verify(msg, dataclasses.replace(block, timestamp=(ts + 1) % 2**32), KEY)
    assert not auth.verify(msg, dataclasses.replace(block, spi="other"), KEY)
    assert not auth.verify(msg, dataclasses.replace(block, structured_auth=block.structured_auth[:-1]), KEY)


def test_keys_and_spis_are_checked() -> None:
    assert auth.check_key(b"x" * 15) and auth.check_key(b"x" * 16) is None
    assert auth.check_spi("saproxy") is None
    for bad in ("", "a b", "a,b", "x" * 65, "é"):
        assert auth.check_spi(bad)
    with pytest.raises(ValueError):
        auth.sign(srvreg(), "speaker", b"short", 1)
    assert "key" not in repr(auth.Signer("speaker", KEY)).lower().replace("spi", "")


def test_a_signer_never_reuses_a_timestamp_for_a_url() -> None:
    signer = auth.Signer("speaker", KEY)
    stamps = [signer.timestamp(URL, NOW) for _ in range(5)]
    assert stamps == sorted(set(stamps)) and stamps[0] == int(NOW) + auth.VALIDITY
    assert signer.timestamp("sip:other@h", NOW) == int(NOW) + auth.VALIDITY


def test_replay_guard_tells_new_duplicate_replayed_and_expired_apart() -> None:
    guard = auth.ReplayGuard(window=300, capacity=3)
    block = AuthBlock(auth.BSD_HMAC_SHA256, int(NOW) + 30, "speaker", b"m" * 32)
    assert guard.check(URL, block, NOW)[0] is auth.Freshness.NEW
    guard.accept(URL, block, ErrorCode.OK)
    assert guard.check(URL, block, NOW) == (auth.Freshness.DUPLICATE, 0)
    assert guard.check(URL, dataclasses.replace(block, structured_auth=b"n" * 32), NOW)[0] \
        is auth.Freshness.REPLAYED
    assert guard.check(URL, dataclasses.replace(block, timestamp=int(NOW) + 29), NOW)[0] \
        is auth.Freshness.REPLAYED
    assert guard.check(URL, dataclasses.replace(block, timestamp=int(NOW) + 31), NOW)[0] \
        is auth.Freshness.NEW
    assert guard.check(URL, dataclasses.replace(block, timestamp=int(NOW) - 301), NOW)[0] \
        is auth.Freshness.EXPIRED
    assert guard.check(URL, dataclasses.replace(block, timestamp=int(NOW) + 301), NOW)[0] \
        is auth.Freshness.EXPIRED
    # Bounded: full of live entries it refuses; once they left the window it forgets them.
    for i in range(2):
        guard.accept(f"sip:{i}@h", block, ErrorCode.OK)
    assert guard.check("sip:new@h", block, NOW)[0] is auth.Freshness.FULL
    assert guard.check("sip:new@h", dataclasses.replace(block, timestamp=int(NOW) + 700),
                       NOW + 600)[0] is auth.Freshness.NEW
    assert len(guard) == 0


# The DA ---------------------------------------------------------------------------------------


def test_the_owner_changes_its_registration_from_a_new_address_and_nobody_else_can() -> None:
    da = make_da()
    assert send(da, signed(srvreg())) == ErrorCode.OK
    # Another source without the key: neither a plain nor a forged request touches it.
    assert send(da, srvreg(attrs="(name=Rogue)"), ROGUE) == ErrorCode.AUTHENTICATION_ABSENT
    assert send(da, srvdereg(), ROGUE) == ErrorCode.AUTHENTICATION_ABSENT
    assert send(da, srvdereg(), HOME) == ErrorCode.AUTHENTICATION_ABSENT  # even from its own address
    assert send(da, signed(srvdereg(), key=OTHER_KEY), ROGUE) == ErrorCode.AUTHENTICATION_FAILED
    assert send(da, signed(srvdereg(), spi="tv", key=OTHER_KEY), ROGUE) == ErrorCode.AUTHENTICATION_FAILED
    assert send(da, signed(srvdereg(), spi="nobody", key=OTHER_KEY), ROGUE) == \
        ErrorCode.AUTHENTICATION_UNKNOWN
    assert urls(da) == [URL]
    assert da.counters.auth_failed == 2  # the bad MAC and the unknown SPI; "tv" was valid, not the owner
    # The device, readdressed by DHCP, refreshes and then deregisters its own URL.
    assert send(da, signed(srvreg(), ts=int(NOW) + 31), MOVED) == ErrorCode.OK
    assert send(da, signed(srvdereg(), ts=int(NOW) + 32), MOVED) == ErrorCode.OK
    assert urls(da) == []


def test_a_bad_mac_is_refused_counted_and_explained() -> None:
    da = make_da()
    msg = signed(srvreg())
    (block,) = msg.url_entry.auths
    forged = dataclasses.replace(msg, url_entry=dataclasses.replace(
        msg.url_entry, auths=(dataclasses.replace(block, structured_auth=bytes(32)),)))
    assert send(da, forged, ROGUE) == ErrorCode.AUTHENTICATION_FAILED
    (event,) = [e for e in da.pop_events() if isinstance(e, Refused)]
    assert "bad MAC for SPI speaker" in event.detail and "1 refused" in event.detail
    assert urls(da) == []


def test_replayed_blocks_are_refused_and_a_retransmission_changes_nothing() -> None:
    da = make_da()
    reg = signed(srvreg(), ts=int(NOW) + 30)
    dereg = signed(srvdereg(), ts=int(NOW) + 31)
    assert send(da, reg) == ErrorCode.OK
    registrations = da.counters.registrations
    assert send(da, reg) == ErrorCode.OK  # the SrvAck was lost: same answer, nothing applied
    assert da.counters.registrations == registrations
    assert send(da, dereg) == ErrorCode.OK
    assert send(da, reg, ROGUE) == ErrorCode.AUTHENTICATION_FAILED  # captured, replayed later
    assert urls(da) == []
    # The owner signing another request with a timestamp already used is refused too.
    assert send(da, signed(srvreg(attrs="(a=1)"), ts=int(NOW) + 31)) == ErrorCode.AUTHENTICATION_FAILED
    # A block that expired long ago, or stamped far ahead, is refused.
    assert send(da, signed(srvreg(), ts=int(NOW) - 400)) == ErrorCode.AUTHENTICATION_FAILED
    assert send(da, signed(srvreg(), ts=int(NOW) + 400)) == ErrorCode.AUTHENTICATION_FAILED
    assert send(da, signed(srvreg(), ts=int(NOW) + 40)) == ErrorCode.OK


def test_a_signed_incremental_registration_is_refused() -> None:
    da = make_da()
    assert send(da, signed(srvreg())) == ErrorCode.OK
    assert send(da, signed(srvreg(fresh=False), ts=int(NOW) + 40)) == ErrorCode.AUTHENTICATION_FAILED


def test_unsigned_registrations_keep_the_source_address_rule() -> None:
    da = make_da()
    assert send(da, srvreg()) == ErrorCode.OK
    assert send(da, srvreg(attrs="(name=Rogue)"), ROGUE) == ErrorCode.AUTHENTICATION_FAILED
    assert send(da, srvdereg(), ROGUE) == ErrorCode.AUTHENTICATION_FAILED
    # The same source may start signing; from then on the URL is its SPI's.
    assert send(da, signed(srvreg())) == ErrorCode.OK
    assert send(da, srvreg()) == ErrorCode.AUTHENTICATION_ABSENT
    # Another SPI cannot take over a URL registered by a source address it does not have.
    da2 = make_da()
    assert send(da2, srvreg()) == ErrorCode.OK
    assert send(da2, signed(srvreg(), spi="tv", key=OTHER_KEY), ROGUE) == ErrorCode.AUTHENTICATION_FAILED


def test_registrants_are_trusted_by_spi_and_their_names_cannot_be_shadowed() -> None:
    da = make_da(trusted_spis=("speaker",))
    assert send(da, signed(srvreg()), MOVED) == ErrorCode.OK
    reg = next(iter(da._regs.values()))
    assert reg.trusted and "trusted" in reg.attrs
    rogue = srvreg(url="sip:rogue@192.168.1.66", attrs="(name=Kitchen speaker)")
    assert send(da, rogue, ROGUE) == ErrorCode.AUTHENTICATION_FAILED
    # Signed by a known but untrusted SPI: not trusted either.
    assert send(da, signed(rogue, spi="tv", key=OTHER_KEY), ROGUE) == ErrorCode.AUTHENTICATION_FAILED


def test_ownership_and_replay_state_survive_a_restart() -> None:
    da = make_da()
    reg = signed(srvreg(), ts=int(NOW) + 30)
    assert send(da, reg) == ErrorCode.OK
    snapshot = json.loads(json.dumps(da.snapshot()))
    assert snapshot["registrations"][0]["spi"] == "speaker"
    again = make_da()
    assert again.restore(snapshot, NOW + 5) == 1
    assert send(again, srvdereg(), HOME, NOW + 5) == ErrorCode.AUTHENTICATION_ABSENT
    assert send(again, reg, ROGUE, NOW + 5) == ErrorCode.AUTHENTICATION_FAILED  # not new any more
    # A deregistration journalled before a restart keeps the older SrvReg refused after it.
    assert send(again, signed(srvdereg(), ts=int(NOW) + 35), HOME, NOW + 5) == ErrorCode.OK
    changes = again.pop_changes()
    third = make_da()
    third.replay([*snapshot["registrations"], *changes], NOW + 6)
    assert urls(third) == []
    assert send(third, signed(srvreg(), ts=int(NOW) + 34), ROGUE, NOW + 6) == \
        ErrorCode.AUTHENTICATION_FAILED
    assert send(third, signed(srvreg(), ts=int(NOW) + 36), MOVED, NOW + 6) == ErrorCode.OK


def test_a_block_of_another_kind_is_authentication_unknown() -> None:
    da = make_da()
    dsa = AuthBlock(0x0002, int(NOW) + 30, "speaker", b"\x30" * 46)
    msg = srvreg()
    msg = dataclasses.replace(msg, url_entry=dataclasses.replace(msg.url_entry, auths=(dsa,)))
    assert send(da, msg) == ErrorCode.AUTHENTICATION_UNKNOWN


def test_the_mac_is_not_computed_for_a_source_outside_the_allowed_networks(
        monkeypatch: pytest.MonkeyPatch) -> None:
    da = make_da(allowed_networks=("192.168.1.0/24",))
    calls = []
    monkeypatch.setattr(auth, "verify", lambda *a: calls.append(a) or True)
    assert send(da, signed(srvreg()), ("203.0.113.5", 1)) == ErrorCode.AUTHENTICATION_ABSENT
    assert send(da, signed(srvreg(url="bad url")), HOME) == ErrorCode.INVALID_REGISTRATION
    assert calls == []


# The registrant's side ------------------------------------------------------------------------


def test_a_service_agent_with_a_key_signs_once_per_request_and_the_da_takes_it() -> None:
    from sipmob.slp.agent import AgentConfig, Registration, ServiceAgent

    da = make_da()
    da_address = ("192.168.1.1", 427)
    agent = ServiceAgent(AgentConfig(das=(da_address,), auth_spi="speaker", auth_key=KEY), NOW)
    out = agent.register(Registration(URL, "service:sip-device", ("DEFAULT",), "(name=Kitchen)", 300),
                         NOW)
    (first,) = out
    msg = wire.decode(first.data)
    assert isinstance(msg, SrvReg)
    (block,) = msg.url_entry.auths
    assert block.spi == "speaker" and auth.verify(msg, block, KEY)
    # Unanswered: the retransmission is the same request, with the same block.
    due = agent.get_timer()
    assert due is not None
    (again,) = agent.handle_timer(due)
    assert again.data == first.data
    # The DA answers both alike, and applies the first only.
    replies = da.handle(first.data, MOVED, "udp", NOW)
    assert replies == da.handle(again.data, MOVED, "udp", NOW)
    assert da.counters.registrations == 1
    agent.receive(replies[0], da_address, NOW)
    # The deregistration is signed with a later timestamp, and accepted from another address.
    (bye,) = agent.deregister(URL, NOW + 1)
    dereg = wire.decode(bye.data)
    assert isinstance(dereg, SrvDeReg) and dereg.url_entry.auths[0].timestamp > block.timestamp
    (reply,) = da.handle(bye.data, HOME, "udp", NOW + 1)
    ack = wire.decode(reply)
    assert isinstance(ack, SrvAck) and ack.error == ErrorCode.OK
    assert urls(da) == []


def test_a_service_agent_without_a_key_sends_no_block() -> None:
    from sipmob.slp.agent import AgentConfig, Registration, ServiceAgent

    agent = ServiceAgent(AgentConfig(das=(("192.168.1.1", 427),)), NOW)
    (out,) = agent.register(Registration(URL, "service:sip-device", ("DEFAULT",)), NOW)
    msg = wire.decode(out.data)
    assert isinstance(msg, SrvReg) and msg.url_entry.auths == ()
    with pytest.raises(ValueError):
        AgentConfig(auth_spi="speaker", auth_key=b"short")


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_a_mutated_signed_request_from_a_rogue_changes_nothing_the_owner_did_not_sign(
        data: st.DataObject) -> None:
    da = make_da()
    assert send(da, signed(srvreg(), ts=int(NOW) + 30)) == ErrorCode.OK
    original = signed(data.draw(st.sampled_from([srvdereg(), srvdereg(tags="name"),
                                                  srvreg(attrs="(name=Rogue)")])), ts=int(NOW) + 31)
    encoded = bytearray(wire.encode(original))
    for _ in range(data.draw(st.integers(1, 3))):
        pos = data.draw(st.integers(0, len(encoded) - 1))
        encoded[pos] ^= data.draw(st.integers(1, 255))
    replies = da.handle(bytes(encoded), ROGUE, "udp", NOW)
    assert len(replies) <= 1
    reg = da._regs.get((URL, "en"))
    if reg is None or reg.attr_list != "(name=Kitchen speaker)":
        # Changed: only by a request whose covered fields are the owner's, unchanged.
        changed = wire.decode(bytes(encoded))
        assert isinstance(changed, SrvReg | SrvDeReg)
        assert auth.verify(changed, changed.url_entry.auths[0], KEY)
        assert auth.authenticated(changed, "speaker", int(NOW) + 31) == \
            auth.authenticated(original, "speaker", int(NOW) + 31)
