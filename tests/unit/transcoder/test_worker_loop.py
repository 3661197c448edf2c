"""The media worker's loop: when it blocks in epoll, when it lets packets gather, and for how long.

The poller, the clock and the sleep are replaced by scripted ones, so the rounds are exact: what is
checked is the decision of each round (block with a timeout, or sleep the rest of `gather` and take
what arrived without waiting), not how long anything took on this machine.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from sipmob.transcoder.worker import Worker

FD = 1000  # a socket of a call, as far as the loop can tell
GATHER = 0.004


class Script:
    """Each poll returns the next scripted round: (events, seconds the poll waited)."""

    def __init__(self, rounds: list[tuple[list[tuple[int, int]], float]], worker: Worker) -> None:
        self.rounds = rounds
        self.worker = worker
        self.now = 100.0
        self.calls: list[tuple[str, float]] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.calls.append(("sleep", round(seconds, 6)))
        self.now += seconds

    def poll(self, timeout: float) -> list[tuple[int, int]]:
        self.calls.append(("poll", 0.0 if timeout == 0 else 1.0))
        if not self.rounds:
            self.worker.running = False
            return []
        events, waited = self.rounds.pop(0)
        self.now += waited
        return events

    def close(self) -> None:
        pass


@pytest.fixture
def worker() -> Iterator[Worker]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    w = Worker(ours, gather=GATHER)
    yield w
    w.poller.close()
    theirs.close()


def run(worker: Worker, rounds: list[tuple[list[tuple[int, int]], float]],
        handler_takes: tuple[float, ...] = ()) -> tuple[Script, list[float]]:
    script = Script(rounds, worker)
    worker.poller.close()
    worker.poller = script  # type: ignore[assignment]
    worker.clock, worker.sleep = script.clock, script.sleep
    worker._due = 1e9  # no timer due in these rounds
    served: list[float] = []

    def handler(now: float) -> None:
        if len(served) < len(handler_takes):
            script.now += handler_takes[len(served)]
        served.append(now)

    worker.handlers[FD] = handler
    worker.run()
    return script, served


def test_sparse_packets_each_wake_the_loop_blocked_in_epoll(worker: Worker) -> None:
    # A packet every 20 ms (one call): nothing to gather, every wait is a blocking poll.
    script, served = run(worker, [([(FD, 1)], 0.020)] * 3)
    assert script.calls == [("poll", 1.0)] * 4
    assert served == pytest.approx([100.02, 100.04, 100.06])  # each handler gets its wake-up's time


def test_packets_within_gather_are_served_a_round_per_gather_until_one_finds_none(worker: Worker) -> None:
    script, served = run(worker, [([(FD, 1)], 0.020), ([(FD, 1)], 0.001), ([], 0.0),
                                  ([(FD, 1), (FD, 1)], 0.0), ([], 0.0), ([], 0.0)])
    # Woken 1 ms after the previous round: from then on, nothing still ready, it sleeps the rest of
    # `gather` and polls without waiting, until a round finds nothing; then it blocks again.
    assert script.calls == [("poll", 1.0), ("poll", 1.0), ("poll", 0.0), ("sleep", 0.004), ("poll", 0.0),
                            ("poll", 0.0), ("sleep", 0.004), ("poll", 0.0), ("poll", 1.0)]
    assert served == pytest.approx([100.020, 100.021, 100.025, 100.025])


def test_a_round_longer_than_gather_does_not_sleep(worker: Worker) -> None:
    # Once gathering, a round that takes 5 ms (a loaded worker) is followed by no pause at all:
    # pausing would only lose capacity. A round of 1 ms is followed by the rest of `gather`.
    script, _ = run(worker, [([(FD, 1)], 0.020), ([(FD, 1)], 0.001), ([], 0.0), ([(FD, 1)], 0.0), ([], 0.0),
                             ([(FD, 1)], 0.0), ([], 0.0), ([], 0.0)], handler_takes=(0.0, 0.005, 0.001, 0.0))
    assert script.calls == [("poll", 1.0), ("poll", 1.0), ("poll", 0.0), ("poll", 0.0),
                            ("poll", 0.0), ("sleep", 0.003), ("poll", 0.0),
                            ("poll", 0.0), ("sleep", 0.004), ("poll", 0.0), ("poll", 1.0)]


def test_a_socket_still_ready_after_its_round_is_served_without_a_pause(worker: Worker) -> None:
    # One datagram per socket and round: a socket with a backlog (after a stall) is ready again at
    # once, and is served at once rather than at one packet per `gather`.
    script, served = run(worker, [([(FD, 1)], 0.020), ([(FD, 1)], 0.001), ([(FD, 1)], 0.0), ([(FD, 1)], 0.0),
                                  ([], 0.0), ([], 0.0)])
    assert script.calls == [("poll", 1.0), ("poll", 1.0), ("poll", 0.0), ("poll", 0.0), ("poll", 0.0),
                            ("sleep", 0.004), ("poll", 0.0), ("poll", 1.0)]
    assert served == pytest.approx([100.020, 100.021, 100.021, 100.021])


def test_gather_zero_always_blocks(worker: Worker) -> None:
    worker.gather = 0.0
    script, _ = run(worker, [([(FD, 1)], 0.0001)] * 4)
    assert script.calls == [("poll", 1.0)] * 5


def test_a_command_is_carried_out_before_the_packets_of_its_round(worker: Worker) -> None:
    # epoll lists a socket that was ready in the last round before one that became ready since:
    # a packet sent after a re-INVITE's 200 would meet the old formats unless commands go first.
    order: list[str] = []
    control = worker.control.fileno()
    worker._control_ready = lambda now: order.append("command")  # type: ignore[method-assign]
    worker.handlers[control] = lambda now: None
    script = Script([([(FD, 1), (control, 1)], 0.020)], worker)
    worker.poller.close()
    worker.poller = script  # type: ignore[assignment]
    worker.clock, worker.sleep = script.clock, script.sleep
    worker._due = 1e9
    worker.handlers[FD] = lambda now: order.append("packet")
    worker.run()
    assert order == ["command", "packet"]
