"""Durable state: atomic replacement and write coalescing."""

from __future__ import annotations

import json
import os

from twisted.internet.task import Clock

from sipmob.service.statefile import DebouncedWriter, Journal, atomic_write, read_json


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


def test_read_json_refuses_a_file_over_its_bound(tmp_path) -> None:
    path = tmp_path / "big.json"
    path.write_text(json.dumps({"a": "b" * 1000}))
    assert read_json(path, max_bytes=100) is None
    assert read_json(path, max_bytes=10_000) == {"a": "b" * 1000}


def test_journal_batches_appends_and_skips_a_torn_last_line(tmp_path) -> None:
    clock = Clock()
    journal = Journal(clock, tmp_path / "s.journal", interval=0.25)
    for i in range(10):
        journal.append([{"n": i}])
    assert journal.writes == 0
    clock.advance(0.25)
    assert journal.writes == 1
    with open(tmp_path / "s.journal", "ab") as fh:
        fh.write(b'{"n": 10')  # a crash in the middle of a write
    assert Journal.read(tmp_path / "s.journal", 1 << 20) == [{"n": i} for i in range(10)]
    assert len(Journal.read(tmp_path / "s.journal", 30)) < 10  # the bound cuts the reading


def test_journal_is_emptied_when_the_state_file_is_written(tmp_path) -> None:
    clock = Clock()
    journal = Journal(clock, tmp_path / "s.journal")
    writer = DebouncedWriter(clock, tmp_path / "s.json", lambda: b"{}", on_written=journal.reset)
    journal.append([{"n": 1}])
    journal.flush()
    journal.append([{"n": 2}])  # pending, already in the state file about to be written
    writer.mark_dirty()
    assert writer.flush()
    clock.advance(1)
    assert Journal.read(tmp_path / "s.journal", 1 << 20) == [] and journal.size == 0
