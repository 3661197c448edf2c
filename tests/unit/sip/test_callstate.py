"""The call-state table of the user agent: its shape, every (state, input) pair, and that the real
core moves only along it (a random walk of two cores, as the transaction table is walked)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sipmob.sip.callstate import (
    INITIAL,
    TRANSITIONS,
    CallInput,
    CallState,
    CallStateError,
    next_state,
)


def reachable(start: CallState) -> set[CallState]:
    seen = {start}
    todo = [start]
    while todo:
        for target in TRANSITIONS[todo.pop()].values():
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def test_every_state_has_a_row_and_every_arrow_ends_in_a_state() -> None:
    assert set(TRANSITIONS) == set(CallState)
    for rows in TRANSITIONS.values():
        assert set(rows.values()) <= set(CallState)


def test_terminated_is_absorbing_and_reachable_from_everywhere() -> None:
    assert set(TRANSITIONS[CallState.TERMINATED].values()) == {CallState.TERMINATED}
    for state in CallState:
        assert CallState.TERMINATED in reachable(state)
        assert TRANSITIONS[state][CallInput.END] is CallState.TERMINATED


def test_every_state_is_reachable_from_a_start() -> None:
    assert set().union(*(reachable(s) for s in INITIAL)) == set(CallState)


@given(st.sampled_from(list(CallState)), st.sampled_from(list(CallInput)))
def test_every_state_input_pair_is_an_arrow_or_refused(state: CallState, event: CallInput) -> None:
    arrow = TRANSITIONS[state].get(event)
    if arrow is None:
        with pytest.raises(CallStateError):
            next_state(state, event)
    else:
        assert next_state(state, event) is arrow


def test_states_read_as_the_strings_they_always_were() -> None:
    # applications compare call_state() with these strings
    assert CallState.CONFIRMED == "confirmed" and CallState.TERMINATED == "terminated"
