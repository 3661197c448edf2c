"""RFC 4028 session timers: negotiation as UAC and UAS (refresher, 422 Min-SE) and one dialog's
timer table (refresh at half the interval, BYE before the expiry when the peer's refresh is late)."""

from __future__ import annotations

import pytest

from sipmob.sip.message import Headers
from sipmob.sip.session_timer import (
    TRANSITIONS,
    Action,
    Agreement,
    Policy,
    Refresher,
    SessionExpires,
    SessionTimer,
    SessionTimerError,
    State,
    after_422,
    uac_agreement,
    uac_headers,
    uas_decide,
)


def h(**kw: str) -> Headers:
    return Headers([(k.replace("_", "-"), v) for k, v in kw.items()])


def test_session_expires_round_trips_and_bad_values_are_refused() -> None:
    assert SessionExpires.parse("1800;refresher=uac") == SessionExpires(1800, Refresher.UAC)
    assert SessionExpires.parse(" 90 ; Refresher=UAS ") == SessionExpires(90, Refresher.UAS)
    assert str(SessionExpires(90, Refresher.UAS)) == "90;refresher=uas"
    for bad in ("soon", "90;refresher=both", ""):
        with pytest.raises(SessionTimerError):
            SessionExpires.parse(bad)
    with pytest.raises(SessionTimerError):
        Policy(interval=60)


def test_uas_keeps_the_requested_refresher_and_requires_timer_of_a_refreshing_uac() -> None:
    d = uas_decide(h(Session_Expires="120;refresher=uac", Supported="timer, replaces"), Policy())
    assert d.status is None and d.agreement == Agreement(120, we_refresh=False)
    assert dict(d.headers) == {"Session-Expires": "120;refresher=uac", "Require": "timer"}


def test_uas_chooses_uac_when_it_supports_timers_and_itself_when_not() -> None:
    d = uas_decide(h(Session_Expires="1800", Supported="timer"), Policy())
    assert d.agreement == Agreement(1800, we_refresh=False)
    d = uas_decide(h(Session_Expires="1800"), Policy())
    assert d.agreement == Agreement(1800, we_refresh=True)
    assert dict(d.headers) == {"Session-Expires": "1800;refresher=uas"}  # no Require to a UAC without timer


def test_uas_lowers_to_its_interval_but_never_below_the_requests_min_se() -> None:
    d = uas_decide(h(Session_Expires="3600", Min_SE="1000", Supported="timer"), Policy(interval=600))
    assert d.agreement is not None and d.agreement.interval == 1000


def test_too_short_an_interval_gets_422_with_our_min_se_and_the_uac_retries_above_it() -> None:
    d = uas_decide(h(Session_Expires="100"), Policy(interval=1800, min_se=300))
    assert (d.status, dict(d.headers), d.agreement) == (422, {"Min-SE": "300"}, None)
    retry = after_422(Policy(interval=120), h(Min_SE="300"))
    assert retry == Policy(interval=300, min_se=300)
    assert dict(uac_headers(retry))["Session-Expires"] == "300"
    assert uas_decide(h(**{k.replace("-", "_"): v for k, v in uac_headers(retry)}),
                      Policy(interval=1800, min_se=300)).status is None


def test_no_session_expires_no_timer_unless_we_insist() -> None:
    assert uas_decide(h(), Policy()).agreement is None
    d = uas_decide(h(), Policy(interval=600), insist=True)
    assert d.agreement == Agreement(600, we_refresh=True)


def test_uac_reads_the_2xx() -> None:
    assert uac_agreement(h()) is None
    assert uac_agreement(h(Session_Expires="90;refresher=uas")) == Agreement(90, we_refresh=False)
    assert uac_agreement(h(Session_Expires="90;refresher=uac")) == Agreement(90, we_refresh=True)
    with pytest.raises(SessionTimerError):
        uac_agreement(h(Session_Expires="30"))


def test_refresher_refreshes_at_half_and_each_agreement_restarts_the_interval() -> None:
    timer = SessionTimer()
    assert timer.agreed(Agreement(90, we_refresh=True), 0.0) == []
    assert timer.state is State.REFRESHING and timer.deadline == 45.0
    assert timer.expire(44.9) == []
    assert timer.expire(45.0) == [Action.SEND_REFRESH]
    assert timer.state is State.REFRESH_SENT and timer.deadline == 90 - 30  # min(32, 90/3)
    timer.agreed(Agreement(90, we_refresh=True), 45.2)
    assert timer.deadline == pytest.approx(90.2)


def test_a_refresh_that_fails_ends_in_bye_before_the_expiry() -> None:
    timer = SessionTimer()
    timer.agreed(Agreement(1800, we_refresh=True), 0.0)
    timer.expire(900.0)
    assert timer.refresh_failed(901.0) == []
    assert timer.expire(1800 - 32) == [Action.SEND_BYE]
    assert timer.state is State.EXPIRED and timer.deadline is None


def test_watching_side_sends_bye_when_the_peers_refresh_never_comes() -> None:
    timer = SessionTimer()
    timer.agreed(Agreement(90, we_refresh=False), 10.0)
    assert timer.state is State.WATCHING and timer.deadline == 10 + 60
    assert timer.expire(69.0) == []
    timer.agreed(Agreement(90, we_refresh=False), 55.0)  # the peer's refresh
    assert timer.expire(70.0) == []
    assert timer.expire(115.0) == [Action.SEND_BYE]
    assert timer.expire(200.0) == []  # once


def test_dialog_end_and_no_timer_disarm() -> None:
    timer = SessionTimer()
    timer.agreed(Agreement(90, we_refresh=False), 0.0)
    timer.agreed(None, 1.0)
    assert timer.state is State.OFF and timer.deadline is None
    timer.agreed(Agreement(90, we_refresh=True), 2.0)
    assert timer.ended(3.0) == [] and timer.state is State.EXPIRED and timer.expire(100.0) == []


def test_every_row_leads_to_a_state_and_only_known_actions() -> None:
    for (state, _), (actions, nxt) in TRANSITIONS.items():
        assert isinstance(nxt, State) and state is not State.EXPIRED
        assert all(isinstance(a, Action) for a in actions)
