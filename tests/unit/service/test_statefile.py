"""Durable state: atomic replacement and write coalescing."""

from __future__ import annotations

import json
import os

from twisted.internet.task import Clock

from sipmob.service.statefile import DebouncedWriter, atomic_write, read_json


def test_atomic_write_replaces_content_and_leaves_no_temporary(tmp_path) -> None:
    path = tmp_path / "sub" / "state.json"
    atomic_write(path, b"one")
    atomic_write(path, b"two")
    assert path.read_bytes() == b"two"
    assert os.listdir(path.parent) == ["state.json"]


def test_read_json_tolerates_absent_and_corrupt_files(tmp_path) -> None:
    assert read_json(tmp_path / "absent.json") is None
    broken = tmp_path / "broken.json"
    broken.write_text('{"half": ')
    assert read_json(broken) is None
    good = tmp_path / "good.json"
    good.write_text('{"a": 1}')
    assert read_json(good) == {"a": 1}


def test_burst_of_changes_is_one_write_after_quiet_delay(tmp_path) -> None:
    clock = Clock()
    state = {"n": 0}
    writer = DebouncedWriter(clock, tmp_path / "s.json", lambda: json.dumps(state).encode(),
                             delay=2, max_delay=30)
    for i in range(50):
        state["n"] = i
        writer.mark_dirty()
        clock.advance(0.1)
    assert writer.writes == 0
    clock.advance(2)
    assert writer.writes == 1
    assert json.loads((tmp_path / "s.json").read_text()) == {"n": 49}


def test_continuous_changes_still_written_within_max_delay(tmp_path) -> None:
    clock = Clock()
    writer = DebouncedWriter(clock, tmp_path / "s.json", lambda: b"{}", delay=2, max_delay=10)
    for _ in range(100):
        writer.mark_dirty()
        clock.advance(1)
        if writer.writes:
            break
    assert writer.writes == 1
    assert clock.seconds() <= 10


def test_flush_writes_pending_changes_once(tmp_path) -> None:
    clock = Clock()
    writer = DebouncedWriter(clock, tmp_path / "s.json", lambda: b"{}")
    writer.flush()
    assert writer.writes == 0
    writer.mark_dirty()
    writer.flush()
    writer.flush()
    assert writer.writes == 1
    assert not clock.getDelayedCalls()


def test_write_failure_is_logged_not_raised(tmp_path, caplog) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    writer = DebouncedWriter(Clock(), blocker / "s.json", lambda: b"{}")
    writer.mark_dirty()
    writer.flush()
    assert writer.writes == 0
    assert "cannot write state file" in caplog.text
