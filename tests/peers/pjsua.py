"""PJSIP (pjsua2) as a SIP phone in a child process, driven over a JSON-lines pipe.

pjsua2 runs its own threads and may crash or hang at shutdown; in a child process that is
harmless to pytest and the parent can always stop it by PID. The child runs pjsua2 on one thread
(`threadCnt = 0`, `mainThreadOnly`), polling the library and its stdin in turn, binds SIP over UDP
and RTP to 127.0.0.1 (or `host`; `wrap` runs the child another way, e.g. in a network
namespace), uses the null audio device with VAD off, and lets the library itself handle
REFER (blind and with Replaces) and INVITE with Replaces, reporting each step as an event.

Parent side: `Pjsua(port, user)` with `make_call`, `answer`, `hangup`, `transfer` (blind REFER),
`transfer_replaces` (attended: REFER whose Refer-To carries Replaces), `reinvite`, `calls()` and
`events` / `wait_event()`, `dtmf` (SIP INFO or RFC 2833 events). Events are dicts with an "event"
key: incoming_call (with the whole INVITE in "message"), call_state, media_state, transfer_request,
transfer_status, replace_request, replaced, dtmf (a digit received, with its method). ``codecs``
keeps only the codecs named (by id prefix). Not responsible for judging PJSIP's behaviour: tests do that.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

Event = dict[str, Any]


class PjsuaError(RuntimeError):
    """The child failed to start, a command failed, or an awaited event never came."""


class Pjsua:
    """One pjsua2 endpoint with one account `sip:<user>@127.0.0.1:<port>`, in a child process."""

    def __init__(self, port: int, user: str = "pjsua", auto_answer: bool = True,
                 workdir: str | os.PathLike[str] | None = None, log_level: int = 5,
                 startup_timeout: float = 15.0, session_expires: int | None = None,
                 prack: str | None = None, host: str = "127.0.0.1",
                 wrap: Callable[[list[str]], list[str]] | None = None,
                 codecs: list[str] | None = None) -> None:
        self.port = port
        self.user = user
        self.uri = f"sip:{user}@{host}:{port}"
        self.workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="pjsua-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / f"pjsua-{user}.log"
        self.events: list[Event] = []
        self._responses: dict[int, Event] = {}
        self._cond = threading.Condition()
        self._next_id = 0
        options = {"port": port, "user": user, "auto_answer": auto_answer,
                   "log": str(self.log_path), "log_level": log_level,
                   "session_expires": session_expires, "prack": prack, "host": host, "codecs": codecs}
        self._stderr = (self.workdir / f"pjsua-{user}.stderr").open("wb")
        argv = [sys.executable, __file__, "--child", json.dumps(options)]
        self.proc = subprocess.Popen(wrap(argv) if wrap is not None else argv,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr)
        self._reader = threading.Thread(target=self._read, name=f"pjsua-{user}", daemon=True)
        self._reader.start()
        try:
            self.wait_event(lambda e: e["event"] == "ready", startup_timeout)
        except PjsuaError:
            self.stop()
            raise PjsuaError(f"pjsua did not start: {self.stderr()}") from None

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            with self._cond:
                if "id" in message:
                    self._responses[message["id"]] = message
                else:
                    message["received_at"] = time.monotonic()
                    self.events.append(message)
                self._cond.notify_all()
        with self._cond:
            self.events.append({"event": "exited", "received_at": time.monotonic()})
            self._cond.notify_all()

    def command(self, cmd: str, timeout: float = 10.0, **args: Any) -> Any:
        """Run one command in the child; return its result or raise PjsuaError with its error."""
        if self.proc.poll() is not None or self.proc.stdin is None:
            raise PjsuaError(f"pjsua has exited with {self.proc.returncode}")
        with self._cond:
            self._next_id += 1
            ident = self._next_id
        self.proc.stdin.write((json.dumps({"id": ident, "cmd": cmd, "args": args}) + "\n").encode())
        self.proc.stdin.flush()
        deadline = time.monotonic() + timeout
        with self._cond:
            while ident not in self._responses:
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise PjsuaError(f"no answer to {cmd} within {timeout} s")
                self._cond.wait(min(left, 0.2))
            response = self._responses.pop(ident)
        if not response.get("ok"):
            raise PjsuaError(f"{cmd}({args}): {response.get('error')}")
        return response.get("result")

    def wait_event(self, predicate: Callable[[Event], bool], timeout: float = 5.0, start: int = 0) -> Event:
        """The first event from index `start` on for which `predicate` holds, within `timeout`."""
        deadline = time.monotonic() + timeout
        with self._cond:
            index = start
            while True:
                while index < len(self.events):
                    event = self.events[index]
                    index += 1
                    if predicate(event):
                        return event
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = [e["event"] for e in self.events[start:]]
                    raise PjsuaError(f"no matching event within {timeout} s; saw {seen}")
                self._cond.wait(left)

    def wait_call_state(self, state: str, call: int | None = None, timeout: float = 5.0,
                        start: int = 0) -> Event:
        """Wait for a call (any, or `call`) to reach a state: CALLING, EARLY, CONFIRMED, DISCONNECTED..."""
        return self.wait_event(lambda e: e["event"] == "call_state" and e["state"] == state
                               and (call is None or e["call"] == call), timeout, start)

    # Commands --------------------------------------------------------------------------------

    def make_call(self, uri: str) -> int:
        """INVITE `uri`; return pjsua's call id for the new call."""
        return int(self.command("make_call", uri=uri))

    def answer(self, call: int, code: int = 200) -> None:
        self.command("answer", call=call, code=code)

    def hangup(self, call: int | None = None) -> None:
        """Hang up one call, or all calls."""
        self.command("hangup", call=call)

    def transfer(self, call: int, uri: str) -> None:
        """Blind transfer: REFER on `call` with Refer-To `uri`."""
        self.command("transfer", call=call, uri=uri)

    def transfer_replaces(self, call: int, other_call: int) -> None:
        """Attended transfer: REFER on `call` to the peer of `other_call`, with Replaces for it."""
        self.command("transfer_replaces", call=call, other_call=other_call)

    def reinvite(self, call: int) -> None:
        self.command("reinvite", call=call)

    def hold(self, call: int) -> None:
        """Put `call` on hold: re-INVITE offering ``a=sendonly`` (pjsua's default hold)."""
        self.command("hold", call=call)

    def unhold(self, call: int) -> None:
        """Take `call` off hold: re-INVITE offering ``a=sendrecv``."""
        self.command("unhold", call=call)

    def reinvite_new_media(self, call: int) -> None:
        """re-INVITE with the media transport recreated (a new RTP port, as after a network change)."""
        self.command("reinvite_new_media", call=call)

    def update(self, call: int, new_media: bool = False) -> None:
        """UPDATE with a new offer (in an early dialog as in a confirmed one)."""
        self.command("update", call=call, new_media=new_media)

    def dtmf(self, call: int, digits: str, method: str = "info", duration_ms: int = 0) -> None:
        """Send ``digits`` as SIP INFO (``application/dtmf-relay``) or as RFC 2833/4733 events."""
        self.command("dtmf", call=call, digits=digits, method=method, duration=duration_ms)

    def stream(self, call: int) -> Event:
        """The audio stream of `call`: local RTP port, where it sends, RTP packets received."""
        return dict(self.command("stream", call=call))

    def calls(self) -> list[Event]:
        """Every call pjsua knows: id, state, remote URI and contact, SIP Call-ID, last status."""
        return list(self.command("calls"))

    # Lifetime --------------------------------------------------------------------------------

    def stderr(self) -> str:
        path = self.workdir / f"pjsua-{self.user}.stderr"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def running(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the child to quit, then stop it by its PID (SIGTERM, then SIGKILL)."""
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write(b'{"id": 0, "cmd": "quit", "args": {}}\n')
                self.proc.stdin.flush()
                self.proc.wait(timeout)
            except (OSError, subprocess.TimeoutExpired):
                pass
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if self.proc.poll() is None:
                os.kill(self.proc.pid, sig)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    continue
        if self.proc.stdin is not None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        self._reader.join(timeout)
        self._stderr.close()

    def __enter__(self) -> Pjsua:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# The child ---------------------------------------------------------------------------------------


def _child(options: dict[str, Any]) -> None:
    # pjsua2 writes its console log to fd 1: keep the protocol on a private copy of stdout.
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    import pjsua2 as pj

    def emit(message: Event) -> None:
        protocol.write(json.dumps(message) + "\n")

    calls: dict[int, Any] = {}  # pjsua call id -> the Call object for the id's current call
    # Every Call object ever made stays referenced: pjsua reuses call ids, and a collected Call's
    # destructor hangs up whatever call now has its id.
    every_call: list[Any] = []
    state_names = {getattr(pj, n): n[len("PJSIP_INV_STATE_"):] for n in dir(pj)
                   if n.startswith("PJSIP_INV_STATE_")}
    auto_answer = bool(options["auto_answer"])

    class Call(pj.Call):  # type: ignore[misc]
        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            every_call.append(self)

        def onCallState(self, prm: Any) -> None:
            info = self.getInfo()
            emit({"event": "call_state", "call": info.id,
                  "state": state_names.get(info.state, str(info.state)),
                  "state_text": info.stateText, "last_status": int(info.lastStatusCode),
                  "last_reason": info.lastReason, "remote_uri": info.remoteUri,
                  "call_id": info.callIdString})

        def onCallMediaState(self, prm: Any) -> None:
            info = self.getInfo()
            active = False
            for index, media in enumerate(info.media):
                if media.type == pj.PJMEDIA_TYPE_AUDIO and media.status == pj.PJSUA_CALL_MEDIA_ACTIVE:
                    audio = self.getAudioMedia(index)
                    manager = pj.Endpoint.instance().audDevManager()
                    # Without these connections the call sends no RTP at all.
                    manager.getCaptureDevMedia().startTransmit(audio)
                    audio.startTransmit(manager.getPlaybackDevMedia())
                    active = True
            emit({"event": "media_state", "call": info.id, "active": active})

        def onDtmfDigit(self, prm: Any) -> None:
            emit({"event": "dtmf", "call": self.getId(), "digit": prm.digit,
                  "method": "info" if prm.method == pj.PJSUA_DTMF_METHOD_SIP_INFO else "rfc2833",
                  "duration": int(prm.duration)})

        def onCallTransferRequest(self, prm: Any) -> None:
            new_call = Call(account)
            prm.newCall = new_call
            pending.append(new_call)
            emit({"event": "transfer_request", "call": self.getId(), "dst_uri": prm.dstUri,
                  "status": int(prm.statusCode)})

        def onCallTransferStatus(self, prm: Any) -> None:
            emit({"event": "transfer_status", "call": self.getId(), "code": int(prm.statusCode),
                  "reason": prm.reason, "final": bool(prm.finalNotify)})

        def onCallReplaceRequest(self, prm: Any) -> None:
            emit({"event": "replace_request", "call": self.getId(), "status": int(prm.statusCode),
                  "message": prm.rdata.wholeMsg})

        def onCallReplaced(self, prm: Any) -> None:
            new_call = Call(account, prm.newCallId)
            prm.newCall = new_call
            calls[prm.newCallId] = new_call
            emit({"event": "replaced", "old_call": self.getId(), "new_call": prm.newCallId})

    class Account(pj.Account):  # type: ignore[misc]
        def onIncomingCall(self, prm: Any) -> None:
            call = Call(self, prm.callId)
            calls[prm.callId] = call
            info = call.getInfo()
            emit({"event": "incoming_call", "call": prm.callId, "remote_uri": info.remoteUri,
                  "call_id": info.callIdString, "message": prm.rdata.wholeMsg})
            if auto_answer:
                answer = pj.CallOpParam()
                answer.statusCode = 200
                call.answer(answer)

    pending: list[Any] = []  # calls created for REFER targets, adopted once they have an id

    endpoint = pj.Endpoint()
    endpoint.libCreate()
    config = pj.EpConfig()
    config.uaConfig.threadCnt = 0
    config.uaConfig.mainThreadOnly = True
    config.uaConfig.maxCalls = 16
    config.uaConfig.userAgent = f"pjsua2 {endpoint.libVersion().full}"
    config.logConfig.level = int(options["log_level"])
    config.logConfig.consoleLevel = 0
    config.logConfig.filename = options["log"]
    config.medConfig.noVad = True
    config.medConfig.hasIoqueue = True
    endpoint.libInit(config)
    transport = pj.TransportConfig()
    transport.port = int(options["port"])
    host = options.get("host") or "127.0.0.1"
    transport.boundAddress = host
    transport.publicAddress = host
    endpoint.transportCreate(pj.PJSIP_TRANSPORT_UDP, transport)
    endpoint.libStart()
    endpoint.audDevManager().setNullDev()
    if options.get("codecs"):
        # Only these (codec id prefixes, "PCMA/8000"): a party sharing no codec with another.
        for codec in endpoint.codecEnum2():
            keep = any(codec.codecId.lower().startswith(c.lower()) for c in options["codecs"])
            endpoint.codecSetPriority(codec.codecId, 128 if keep else 0)

    account_config = pj.AccountConfig()
    account_config.idUri = f"sip:{options['user']}@{host}:{options['port']}"
    account_config.regConfig.registerOnAdd = False
    account_config.natConfig.sipStunUse = pj.PJSUA_STUN_USE_DISABLED
    account_config.natConfig.mediaStunUse = pj.PJSUA_STUN_USE_DISABLED
    account_config.natConfig.iceEnabled = False
    account_config.mediaConfig.transportConfig.boundAddress = host
    account_config.mediaConfig.transportConfig.publicAddress = host
    account_config.mediaConfig.transportConfig.port = 0  # let the OS choose: many instances at once
    if options.get("session_expires"):
        # RFC 4028 with the given interval: Session-Expires sent, refreshes by pjsua itself.
        account_config.callConfig.timerUse = pj.PJSUA_SIP_TIMER_ALWAYS
        account_config.callConfig.timerSessExpiresSec = int(options["session_expires"])
        account_config.callConfig.timerMinSESec = min(90, int(options["session_expires"]))
    if options.get("prack") == "mandatory":
        # RFC 3262 required both ways: Require: 100rel in its INVITEs, reliable 18x as callee
        account_config.callConfig.prackUse = pj.PJSUA_100REL_MANDATORY
    account = Account()
    account.create(account_config)

    def adopt_pending() -> None:
        for call in list(pending):
            ident = call.getId()
            if ident >= 0:
                calls[ident] = call
                pending.remove(call)

    def describe(ident: int, call: Any) -> Event:
        info = call.getInfo()
        return {"id": ident, "state": state_names.get(info.state, str(info.state)),
                "state_text": info.stateText, "remote_uri": info.remoteUri,
                "remote_contact": info.remoteContact, "call_id": info.callIdString,
                "role": "caller" if info.role == pj.PJSIP_ROLE_UAC else "callee",
                "last_status": int(info.lastStatusCode)}

    def live_calls() -> dict[int, Any]:
        adopt_pending()
        alive = {}
        for ident, call in calls.items():
            try:
                if call.isActive():
                    alive[ident] = call
            except pj.Error:
                continue
        return alive

    def run(cmd: str, args: dict[str, Any]) -> Any:
        live = live_calls()
        if cmd == "make_call":
            call = Call(account)
            call.makeCall(args["uri"], pj.CallOpParam(True))
            calls[call.getId()] = call
            return call.getId()
        if cmd == "answer":
            prm = pj.CallOpParam()
            prm.statusCode = int(args.get("code", 200))
            live[args["call"]].answer(prm)
            return None
        if cmd == "hangup":
            if args.get("call") is None:
                endpoint.hangupAllCalls()
            else:
                live[args["call"]].hangup(pj.CallOpParam())
            return None
        if cmd == "transfer":
            live[args["call"]].xfer(args["uri"], pj.CallOpParam(True))
            return None
        if cmd == "transfer_replaces":
            live[args["call"]].xferReplaces(live[args["other_call"]], pj.CallOpParam(True))
            return None
        if cmd == "reinvite":
            prm = pj.CallOpParam(True)
            prm.opt.flag = pj.PJSUA_CALL_UPDATE_CONTACT
            live[args["call"]].reinvite(prm)
            return None
        if cmd == "update":
            # UPDATE (RFC 3311) with a new offer; PJSIP sends one in an early dialog too, once the
            # INVITE's offer is answered reliably. REINIT_MEDIA: on a new port.
            prm = pj.CallOpParam(True)
            prm.opt.flag = pj.PJSUA_CALL_REINIT_MEDIA if args.get("new_media") else 0
            live[args["call"]].update(prm)
            return None
        if cmd == "hold":
            live[args["call"]].setHold(pj.CallOpParam(True))
            return None
        if cmd in ("unhold", "reinvite_new_media"):
            prm = pj.CallOpParam(True)
            prm.opt.flag = pj.PJSUA_CALL_UNHOLD | (pj.PJSUA_CALL_REINIT_MEDIA
                                                    if cmd == "reinvite_new_media" else 0)
            live[args["call"]].reinvite(prm)
            return None
        if cmd == "dtmf":
            prm = pj.CallSendDtmfParam()
            prm.digits = args["digits"]
            prm.method = pj.PJSUA_DTMF_METHOD_SIP_INFO if args.get("method") == "info" \
                else pj.PJSUA_DTMF_METHOD_RFC2833
            if args.get("duration"):
                prm.duration = int(args["duration"])
            live[args["call"]].sendDtmf(prm)
            return None
        if cmd == "stream":
            call = live[args["call"]]
            info = call.getInfo()
            index = next(i for i, m in enumerate(info.media) if m.type == pj.PJMEDIA_TYPE_AUDIO)
            transport = call.getMedTransportInfo(index)
            stat = call.getStreamStat(index)
            stream = call.getStreamInfo(index)
            return {"local_rtp": transport.localRtpName, "remote_rtp": stream.remoteRtpAddress,
                    "codec": stream.codecName, "pt": int(stream.txPt), "dir": int(stream.dir),
                    "rx_packets": int(stat.rtcp.rxStat.pkt), "tx_packets": int(stat.rtcp.txStat.pkt)}
        if cmd == "calls":
            return [describe(ident, call) for ident, call in sorted(live.items())]
        raise ValueError(f"unknown command {cmd!r}")

    emit({"event": "ready", "uri": account_config.idUri, "version": endpoint.libVersion().full})
    buffer = b""
    quitting = False
    while not quitting:
        endpoint.libHandleEvents(10)
        readable, _, _ = select.select([0], [], [], 0)
        if not readable:
            continue
        chunk = os.read(0, 65536)
        if not chunk:
            break  # the parent went away
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            request = json.loads(line)
            if request["cmd"] == "quit":
                quitting = True
                break
            try:
                result = run(request["cmd"], request.get("args", {}))
                emit({"id": request["id"], "ok": True, "result": result})
            except (pj.Error, KeyError, ValueError) as exc:
                text = exc.info() if isinstance(exc, pj.Error) else repr(exc)
                emit({"id": request["id"], "ok": False, "error": text})
    try:
        endpoint.hangupAllCalls()
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline and live_calls():
            endpoint.libHandleEvents(10)
    finally:
        protocol.flush()
        # libDestroy with Python-owned Call objects can crash; the process ends here anyway.
        os._exit(0)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        _child(json.loads(sys.argv[2]))
    else:
        sys.exit("usage: pjsua.py --child OPTIONS_JSON (started by tests.peers.pjsua.Pjsua)")
