"""systemd integration that must degrade to nothing outside systemd."""

from __future__ import annotations

import logging
import os

from sipmob.service.systemd import FieldsFormatter, Notifier, journal_is_stderr, watchdog_interval


def test_notifier_is_silent_without_notify_socket(monkeypatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = Notifier()
    assert not notifier.active
    notifier.ready("x")  # must not raise


def test_status_is_sent_only_when_it_changes() -> None:
    sent: list[str] = []
    notifier = Notifier(send=sent.append)
    notifier.status("3 services")
    notifier.status("3 services")
    notifier.status("4 services")
    notifier.ready("4 services")
    assert sent == ["STATUS=3 services", "STATUS=4 services", "READY=1\nSTATUS=4 services"]


def test_watchdog_interval_is_half_of_watchdog_usec(monkeypatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog_interval() == 15.0


def test_watchdog_meant_for_another_process_is_ignored(monkeypatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", "1")
    assert watchdog_interval() is None


def test_no_watchdog_without_environment(monkeypatch) -> None:
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert watchdog_interval() is None


def test_journal_not_assumed_from_a_foreign_stream(monkeypatch) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", "1:2")
    assert not journal_is_stderr()


def test_structured_fields_appear_on_stderr_lines() -> None:
    record = logging.LogRecord("sipmob.x", logging.INFO, __file__, 1, "device up", None, None)
    record.SIPMOB_DEVICE = "tv"
    line = FieldsFormatter("sipmob-test").format(record)
    assert line.endswith("sipmob-test: device up [device=tv]")
