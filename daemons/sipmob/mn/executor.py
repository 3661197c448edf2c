"""Carrying out a `sipmob.mn.mobility.Plan` on the reactor, and undoing it when a step fails.

`execute(plan, control, reactor)` walks the plan's steps in order through a `CallControl` (the SIP
and media operations of the phone: INVITE a device, re-INVITE the CN, ACK, BYE, CANCEL, start and
stop our own media) and returns a Deferred `Outcome`: whether the call moved, the one line for the
user, where the streams are now and the devices' current descriptions. A device that rejects its
INVITE, or does not answer within ``device_timeout`` (it is then CANCELled), and a CN that rejects
the re-INVITE make it run the plan's rollback for that failure point instead, so the call stays
where it was. Failures after the CN accepted (a BYE or a device re-INVITE that fails) cannot be
undone and are only logged: the media already flows where the plan said.

Not here: which steps, in which order (`sipmob.mn.mobility`), the SIP stack (the `CallControl` the
phone gives it).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from twisted.internet import defer, task

from sipmob.mn.mobility import (
    AckCN,
    AckDevice,
    ByeDevice,
    CancelDevice,
    Failure,
    FailureKind,
    Grace,
    InviteDevice,
    Layout,
    Plan,
    ReinviteCN,
    ReinviteDevice,
    Report,
    StartLocalMedia,
    Step,
    StopLocalMedia,
)
from sipmob.sdp import Origin, SessionDescription

log = logging.getLogger("sipmob.mn")


class SignallingFailed(Exception):
    """A request was answered with a failure (``status``) or not at all (``status`` None)."""

    def __init__(self, status: int | None, reason: str = "") -> None:
        super().__init__(f"{status} {reason}".strip() if status is not None else reason or "no answer")
        self.status = status
        self.reason = reason


class CallControl(Protocol):
    """What the executor needs from the phone for one call."""

    def cn_origin(self) -> Origin:
        """The ``o=`` of our dialog with the CN (the phone stamps the version when it sends)."""

    def invite_device(self, device: str, offer: SessionDescription) -> defer.Deferred[SessionDescription]:
        """New dialog; fires with the device's answer (its 200, not yet ACKed) or `SignallingFailed`."""

    def cancel_device(self, device: str) -> None:
        """CANCEL the INVITE still pending (its Deferred was cancelled first, on the timeout)."""

    def ack_device(self, device: str) -> None: ...

    def bye_device(self, device: str) -> defer.Deferred[Any] | None: ...

    def reinvite_device(self, device: str,
                        offer: SessionDescription) -> defer.Deferred[SessionDescription]: ...

    def reinvite_cn(self, offer: SessionDescription) -> defer.Deferred[SessionDescription]:
        """Fires with the CN's answer (its 200, not yet ACKed) or `SignallingFailed`."""

    def ack_cn(self) -> None: ...

    def start_local_media(self, indices: Sequence[int]) -> None: ...

    def stop_local_media(self, indices: Sequence[int]) -> None: ...


@dataclasses.dataclass(frozen=True, slots=True)
class Outcome:
    ok: bool
    message: str
    layout: Layout  # where the streams are now (the plan's on success, the old one otherwise)
    device_sdps: Mapping[str, SessionDescription]  # answers of the devices now in a dialog
    cn_sdp: SessionDescription  # the CN's description now


class _Failed(Exception):
    def __init__(self, failure: Failure, detail: str) -> None:
        super().__init__(detail)
        self.failure = failure
        self.detail = detail


def _detail(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, SignallingFailed) else f"{type(exc).__name__}: {exc}"


@defer.inlineCallbacks
def _invite(control: CallControl, reactor: Any, step: InviteDevice, timeout: float) -> Any:
    # On timeout the Deferred is cancelled; the CANCEL itself is the rollback's `CancelDevice`.
    d = control.invite_device(step.device, step.offer)
    d.addTimeout(timeout, reactor)
    try:
        return (yield d)
    except defer.TimeoutError:
        raise _Failed(Failure(FailureKind.DEVICE_NO_ANSWER, step.device),
                      f"no answer in {timeout:g} s") from None
    except SignallingFailed as exc:
        kind = FailureKind.DEVICE_NO_ANSWER if exc.status in (None, 408) else FailureKind.DEVICE_REJECTED
        raise _Failed(Failure(kind, step.device), str(exc)) from None


def _quietly(what: str, d: defer.Deferred[Any] | None) -> defer.Deferred[Any]:
    if d is None:
        return defer.succeed(None)
    return d.addErrback(lambda f: log.warning("%s failed: %s", what, f.getErrorMessage()))


@defer.inlineCallbacks
def _run_rollback(plan: Plan, control: CallControl, failed: _Failed) -> Any:
    message = ""
    for step in plan.rollback(failed.failure, failed.detail):
        if isinstance(step, CancelDevice):
            control.cancel_device(step.device)
        elif isinstance(step, AckDevice):
            control.ack_device(step.device)
        elif isinstance(step, ByeDevice):
            yield _quietly(f"BYE to {step.device}", control.bye_device(step.device))
        elif isinstance(step, Report):
            message = step.message
    return message


@defer.inlineCallbacks
def execute(plan: Plan, control: CallControl, reactor: Any, *, device_timeout: float = 8.0,
            on_step: Callable[[Step], None] | None = None) -> Any:
    """Run ``plan``; Deferred[`Outcome`]. ``on_step`` sees each step as it starts (for the log)."""
    answers: dict[str, SessionDescription] = {}
    cn_answer: SessionDescription | None = None
    message = plan.summary
    released: set[str] = set()
    updated: dict[str, SessionDescription] = {}
    try:
        for step in plan.steps:
            if on_step is not None:
                on_step(step)
            if isinstance(step, InviteDevice):
                answers[step.device] = yield _invite(control, reactor, step, device_timeout)
            elif isinstance(step, ReinviteCN):
                offer = plan.cn_offer(answers, control.cn_origin())
                try:
                    cn_answer = yield control.reinvite_cn(offer)
                except SignallingFailed as exc:
                    raise _Failed(Failure(FailureKind.CN_REJECTED), str(exc)) from None
            elif isinstance(step, AckCN):
                control.ack_cn()
            elif isinstance(step, AckDevice):
                control.ack_device(step.device)
                assert cn_answer is not None
                for update in plan.device_updates(cn_answer):
                    if update.device == step.device:
                        # The CN answered with other parameters than the ones the device was offered.
                        try:
                            updated[step.device] = yield control.reinvite_device(update.device, update.offer)
                        except Exception as exc:  # the CN's media may not reach it; nothing to undo
                            log.warning("re-INVITE of %s failed: %s", step.device, _detail(exc))
            elif isinstance(step, StartLocalMedia):
                control.start_local_media(step.indices)
            elif isinstance(step, Grace):
                yield task.deferLater(reactor, step.seconds, lambda: None)
            elif isinstance(step, StopLocalMedia):
                control.stop_local_media(step.indices)
            elif isinstance(step, ReinviteDevice):
                try:
                    updated[step.device] = yield control.reinvite_device(step.device, step.offer)
                except Exception as exc:
                    log.warning("re-INVITE of %s failed: %s", step.device, _detail(exc))
            elif isinstance(step, ByeDevice):
                released.add(step.device)
                yield _quietly(f"BYE to {step.device}", control.bye_device(step.device))
            elif isinstance(step, Report):
                message = step.message
    except _Failed as failed:
        text = yield _run_rollback(plan, control, failed)
        return Outcome(False, text, plan.call.layout, dict(plan.call.device_sdps), plan.call.cn_sdp)
    sdps = {**plan.call.device_sdps, **answers, **updated}
    for device in released:
        sdps.pop(device, None)
    return Outcome(True, message, plan.layout, sdps, cn_answer if cn_answer is not None else plan.call.cn_sdp)
