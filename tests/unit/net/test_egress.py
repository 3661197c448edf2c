"""The Egress List: health machine, path choice, failover, failback, flaps and address changes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipmob.net.egress import (
    LEAST_LOAD,
    TRANSITIONS,
    AddressChanged,
    EgressDown,
    EgressList,
    EgressSpec,
    EgressUp,
    Input,
    LocalError,
    MoveSession,
    ProbeDue,
    SessionStranded,
    State,
)

WAN1 = EgressSpec("wan1", interface="eth1", priority=1, probe="sip:probe@192.0.2.1")
WAN2 = EgressSpec("wan2", interface="eth2", priority=2, probe="sip:probe@192.0.2.1")


def events(egresses: EgressList) -> list[object]:
    out = []
    while (event := egresses.next_event()) is not None:
        out.append(event)
    return out


def both_up(**kw: object) -> EgressList:
    egresses = EgressList([WAN1, WAN2], **kw)  # type: ignore[arg-type]
    for ifname, address in (("eth1", "10.1.0.2"), ("eth2", "10.2.0.2")):
        egresses.address(ifname, address, True, 0.0)
        egresses.link(ifname, True, 0.0)
    egresses.start(0.0)
    events(egresses)
    return egresses


def test_an_egress_is_up_once_its_link_is_up_and_it_has_an_address() -> None:
    egresses = EgressList([WAN1])
    egresses.link("eth1", True, 0.0)
    assert events(egresses) == []
    egresses.address("eth1", "10.1.0.2", True, 0.0)
    assert events(egresses) == [EgressUp("wan1", "10.1.0.2")]


def test_new_sessions_take_the_usable_egress_of_lowest_priority() -> None:
    egresses = both_up()
    chosen = egresses.assign("call-1")
    assert chosen is not None and chosen.name == "wan1" and chosen.address == "10.1.0.2"


def test_least_load_spreads_new_sessions() -> None:
    egresses = both_up(policy=LEAST_LOAD)
    names = [egresses.assign(f"call-{i}").name for i in range(4)]  # type: ignore[union-attr]
    assert sorted(names) == ["wan1", "wan1", "wan2", "wan2"]


def test_link_down_moves_its_sessions_to_the_surviving_egress() -> None:
    egresses = both_up()
    egresses.assign("call-1")
    egresses.link("eth1", False, 5.0)
    assert events(egresses) == [EgressDown("wan1", "link down"),
                                MoveSession("call-1", "wan1", "wan2", "10.2.0.2", "wan1: link down")]
    assert egresses.egress_of("call-1").name == "wan2"  # type: ignore[union-attr]


def test_a_session_no_egress_can_carry_is_reported_stranded_then_rescued() -> None:
    egresses = both_up()
    egresses.assign("call-1")
    egresses.link("eth2", False, 1.0)
    egresses.link("eth1", False, 1.0)
    got = events(egresses)
    assert SessionStranded("call-1", "wan1", "link down") in got
    assert egresses.stranded == {"call-1": "wan1"}
    egresses.link("eth2", True, 2.0)
    egresses.handle_timer(2.0 + egresses.hold_down)
    got = events(egresses)
    assert MoveSession("call-1", "wan1", "wan2", "10.2.0.2", "wan2 is up") in got
    assert egresses.stranded == {}


def test_unanswered_probes_take_an_egress_down_after_down_after_misses() -> None:
    egresses = both_up(down_after=3)
    egresses.assign("call-1")
    egresses.probe_result("wan1", False, None, 1.0)
    egresses.probe_result("wan1", False, None, 2.0)
    assert events(egresses) == []
    egresses.probe_result("wan1", False, None, 3.0)
    got = events(egresses)
    assert got[0] == EgressDown("wan1", "3 probes unanswered")
    assert isinstance(got[1], MoveSession) and got[1].to_egress == "wan2"


def test_one_answered_probe_resets_the_misses() -> None:
    egresses = both_up(down_after=2)
    egresses.probe_result("wan1", False, None, 1.0)
    egresses.probe_result("wan1", True, 0.02, 2.0)
    egresses.probe_result("wan1", False, None, 3.0)
    assert events(egresses) == []
    assert egresses.egresses["wan1"].last_rtt == 0.02


def test_probes_are_due_every_interval_from_the_egress_address() -> None:
    egresses = both_up(probe_interval=1.0)
    assert egresses.get_timer() == 0.0
    egresses.handle_timer(0.0)
    assert events(egresses) == [ProbeDue("wan1", "10.1.0.2", "sip:probe@192.0.2.1"),
                                ProbeDue("wan2", "10.2.0.2", "sip:probe@192.0.2.1")]
    assert egresses.get_timer() == 1.0


def test_sticky_sessions_stay_on_the_backup_when_the_primary_returns() -> None:
    egresses = both_up(hold_down=10.0, sticky=True)
    egresses.assign("call-1")
    egresses.link("eth1", False, 1.0)
    egresses.link("eth1", True, 2.0)
    egresses.handle_timer(12.0)
    got = events(egresses)
    assert EgressUp("wan1", "10.1.0.2") in got
    assert not any(isinstance(e, MoveSession) and e.to_egress == "wan1" for e in got)
    assert egresses.assign("call-2").name == "wan1"  # type: ignore[union-attr]


def test_without_sticky_sessions_fail_back_only_after_hold_down() -> None:
    egresses = both_up(hold_down=10.0, sticky=False)
    egresses.assign("call-1")
    egresses.link("eth1", False, 1.0)
    egresses.link("eth1", True, 2.0)
    events(egresses)
    egresses.handle_timer(11.9)
    assert [e for e in events(egresses) if not isinstance(e, ProbeDue)] == []
    assert egresses.egresses["wan1"].hold_down_until == 12.0
    egresses.handle_timer(12.0)
    got = events(egresses)
    assert MoveSession("call-1", "wan2", "wan1", "10.1.0.2", "wan1 is back") in got


def test_a_flapping_link_is_not_used_again_and_causes_no_moves() -> None:
    egresses = both_up(hold_down=30.0, sticky=False)
    egresses.assign("call-1")
    egresses.link("eth1", False, 0.5)
    events(egresses)
    moves = 0
    for i in range(10):  # down/up every 2 s for 20 s
        now = 1.0 + 2 * i
        egresses.link("eth1", True, now)
        egresses.handle_timer(now)
        egresses.link("eth1", False, now + 1)
        egresses.handle_timer(now + 1)
        moves += sum(isinstance(e, MoveSession) for e in events(egresses))
    assert moves == 0
    assert egresses.egresses["wan1"].state is State.DOWN
    assert egresses.egresses["wan1"].flaps == 10


def test_an_address_change_on_an_up_egress_names_its_sessions() -> None:
    egresses = both_up()
    egresses.assign("call-1")
    egresses.address("eth1", "10.1.0.9", True, 1.0)
    egresses.address("eth1", "10.1.0.2", False, 1.0)
    assert events(egresses) == [AddressChanged("wan1", "10.1.0.2", "10.1.0.9", ("call-1",))]


def test_delete_then_add_on_a_single_egress_rescues_the_session_without_hold_down() -> None:
    egresses = EgressList([WAN1], hold_down=30.0)
    egresses.link("eth1", True, 0.0)
    egresses.address("eth1", "10.1.0.2", True, 0.0)
    egresses.assign("call-1")
    events(egresses)
    egresses.address("eth1", "10.1.0.2", False, 1.0)
    egresses.address("eth1", "10.1.0.9", True, 1.1)
    got = events(egresses)
    assert got[0] == EgressDown("wan1", "no address")
    assert got[1] == SessionStranded("call-1", "wan1", "no address")
    assert got[2] == EgressUp("wan1", "10.1.0.9")
    assert got[3] == MoveSession("call-1", "wan1", "wan1", "10.1.0.9", "wan1 is up")


def test_an_ipv4_address_is_preferred_to_an_ipv6_one() -> None:
    egresses = EgressList([WAN1])
    egresses.link("eth1", True, 0.0)
    egresses.address("eth1", "2001:db8::2", True, 0.0)
    egresses.address("eth1", "10.1.0.2", True, 0.0)
    assert egresses.egresses["wan1"].address == "10.1.0.2"
    egresses.address("eth1", "10.1.0.2", False, 1.0)
    assert egresses.egresses["wan1"].address == "2001:db8::2"


def test_once_routes_are_known_an_egress_needs_a_default_route() -> None:
    egresses = EgressList([WAN1, WAN2], hold_down=30.0)
    for ifname, address in (("eth1", "10.1.0.2"), ("eth2", "10.2.0.2")):
        egresses.link(ifname, True, 0.0)
        egresses.address(ifname, address, True, 0.0)
    egresses.default_route("eth2", 4, 102, True, 0.0)
    events(egresses)
    egresses.routes_known(0.0)
    assert events(egresses) == [EgressDown("wan1", "no default route")]
    egresses.default_route("eth1", 4, 101, True, 1.0)  # the DHCP client added it: no hold-down
    assert events(egresses) == [EgressUp("wan1", "10.1.0.2")]


def test_a_default_route_of_the_other_family_does_not_count() -> None:
    egresses = EgressList([WAN1])
    egresses.link("eth1", True, 0.0)
    egresses.address("eth1", "10.1.0.2", True, 0.0)
    egresses.default_route("eth1", 6, 254, True, 0.0)
    egresses.routes_known(0.0)
    assert egresses.egresses["wan1"].state is State.DOWN


def test_a_link_that_failed_waits_for_hold_down_even_when_its_route_comes_back_last() -> None:
    egresses = EgressList([WAN1], hold_down=30.0)
    egresses.link("eth1", True, 0.0)
    egresses.address("eth1", "10.1.0.2", True, 0.0)
    egresses.default_route("eth1", 4, 101, True, 0.0)
    egresses.routes_known(0.0)
    events(egresses)
    egresses.link("eth1", False, 1.0)
    egresses.default_route("eth1", 4, 101, False, 1.0)  # the kernel drops the route after the link
    egresses.link("eth1", True, 2.0)
    egresses.default_route("eth1", 4, 101, True, 2.1)
    assert events(egresses) == [EgressDown("wan1", "link down")]
    assert egresses.egresses["wan1"].state is State.RECOVERING
    egresses.handle_timer(32.1)
    assert events(egresses) == [EgressUp("wan1", "10.1.0.2")]


def test_a_fixed_address_egress_follows_its_address() -> None:
    egresses = EgressList([EgressSpec("lte", address="10.3.0.2")])
    egresses.start(0.0)
    assert events(egresses) == []
    egresses.address("wwan0", "10.3.0.2", True, 1.0)
    assert events(egresses) == [EgressUp("lte", "10.3.0.2")]


def test_misuse_is_a_local_error() -> None:
    with pytest.raises(LocalError):
        EgressSpec("x")
    with pytest.raises(LocalError):
        EgressList([WAN1, WAN1])
    with pytest.raises(LocalError):
        EgressList([WAN1], policy="random")
    with pytest.raises(LocalError):
        EgressList([WAN1]).probe_result("nope", True, 0.1, 0.0)


def test_the_table_covers_every_state() -> None:
    assert set(TRANSITIONS) == set(State)
    for rows in TRANSITIONS.values():
        for _actions, target in rows.values():
            assert target in State


STEPS = st.lists(st.tuples(st.sampled_from(["link", "addr", "route", "probe", "timer", "assign", "release"]),
                           st.sampled_from(["eth1", "eth2"]), st.booleans(),
                           st.sampled_from(["10.1.0.2", "10.1.0.3", "10.2.0.2"]),
                           st.integers(0, 5)), max_size=60)


@settings(max_examples=300, deadline=None)
@given(STEPS, st.booleans(), st.sampled_from(["priority", "least_load"]), st.booleans())
def test_walk_keeps_the_list_consistent(steps: list[tuple[str, str, bool, str, int]], sticky: bool,
                                        policy: str, routes: bool) -> None:
    """Any sequence of kernel news, probe results, timers and sessions: every session is on exactly
    one egress or stranded, sessions sit only on up egresses, every move goes to an up egress."""
    egresses = EgressList([WAN1, WAN2], policy=policy, sticky=sticky, hold_down=3.0, down_after=2)
    if routes:
        egresses.routes_known(0.0)
    now = 0.0
    live: set[str] = set()
    for kind, ifname, flag, address, n in steps:
        now += 0.7
        name = "wan1" if ifname == "eth1" else "wan2"
        if kind == "link":
            egresses.link(ifname, flag, now)
        elif kind == "addr":
            egresses.address(ifname, address, flag, now)
        elif kind == "route":
            egresses.default_route(ifname, 4, 100 + n, flag, now)
        elif kind == "probe":
            egresses.probe_result(name, flag, 0.01 if flag else None, now)
        elif kind == "timer":
            timer = egresses.get_timer()
            if timer is not None:
                now = max(now, timer)
                egresses.handle_timer(now)
        elif kind == "assign":
            if egresses.assign(f"s{n}") is not None:
                live.add(f"s{n}")
        elif kind == "release":
            egresses.release(f"s{n}")
            live.discard(f"s{n}")
        for event in events(egresses):
            if isinstance(event, MoveSession):
                target = egresses.egresses[event.to_egress]
                assert target.state is State.UP and target.address == event.address
        placed = [s for e in egresses.egresses.values() for s in e.sessions]
        assert len(placed) == len(set(placed))
        assert set(placed) | set(egresses.stranded) == live
        assert not set(placed) & set(egresses.stranded)
        for e in egresses.egresses.values():
            if e.sessions:
                assert e.state is State.UP, (e.name, e.state)
        for e in egresses.egresses.values():
            assert (e.state is State.RECOVERING) == (e.hold_down_until is not None)
    assert all(isinstance(i, Input) for rows in TRANSITIONS.values() for i in rows)
