"""sipmob's own `UserAgent` (sipmob.service.sipua) in a child process, driven like the other peers.

The Twisted reactor runs once per process, so interop tests run our UA as a program and talk to it
over a JSON-lines pipe, exactly as they talk to pjsua. The child is a small application on top of
`UserAgent`: it answers INVITEs (optionally after a delay) with a PCMU SDP whose RTP port it holds
open, and when a REFER arrives it does what a transferee does (RFC 3515, RFC 3892): accepts it,
INVITEs the Refer-To target carrying the REFER's Referred-By (and the Replaces embedded in
Refer-To, RFC 3891 §4), and reports the outcome in the final NOTIFY.

Calls are named by refs ("out1", "in2"...) that the child hands out. Events are dicts with an
"event" key: ready, incoming_call, incoming_cancelled, provisional, established, call_failed,
terminated, reinvite_done, reinvite_failed, bye_done, refer_accepted, refer_failed,
refer_final, refer_received, refer_outcome. Not responsible for any SIP rule: those are the UA's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
Event = dict[str, Any]


class SipmobUAError(RuntimeError):
    pass


class SipmobUA:
    """Our UA on `host`:`port` (UDP) as `sip:<user>@<host>:<port>`, in a child process.

    It answers INVITEs with 200 (after `answer_delay` seconds, with a 180 first if `ringing`), or
    with `reject_status` when given, or not at all without `auto_answer`.
    """

    def __init__(self, port: int, user: str = "sipmob", *, host: str = "127.0.0.1", auto_answer: bool = True,
                 answer_delay: float = 0.0, ringing: bool = False, reject_status: int | None = None,
                 t1: float = 0.5, t2: float = 4.0,
                 workdir: str | os.PathLike[str] | None = None, startup_timeout: float = 15.0) -> None:
        self.port = port
        self.user = user
        self.host = host
        self.uri = f"sip:{user}@{host}:{port}"
        self.workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="sipmob-ua-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.events: list[Event] = []
        self._responses: dict[int, Event] = {}
        self._cond = threading.Condition()
        self._next_id = 0
        options = {"port": port, "user": user, "auto_answer": auto_answer, "answer_delay": answer_delay,
                   "ringing": ringing, "reject_status": reject_status, "t1": t1, "t2": t2,
                   "host": host}
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "daemons"), str(ROOT)]))
        self._stderr_path = self.workdir / f"sipmob-{user}.stderr"
        self._stderr = self._stderr_path.open("wb")
        self.proc = subprocess.Popen([sys.executable, __file__, "--child", json.dumps(options)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
                                     env=env)
        self._reader = threading.Thread(target=self._read, name=f"sipmob-ua-{user}", daemon=True)
        self._reader.start()
        try:
            self.wait_event(lambda e: e["event"] == "ready", startup_timeout)
        except SipmobUAError:
            self.stop()
            raise SipmobUAError(f"the UA did not start: {self.stderr()}") from None

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

    def command(self, cmd: str, timeout: float = 10.0, **args: Any) -> Any:
        if self.proc.poll() is not None or self.proc.stdin is None:
            raise SipmobUAError(f"the UA has exited with {self.proc.returncode}: {self.stderr()}")
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
                    raise SipmobUAError(f"no answer to {cmd} within {timeout} s: {self.stderr()}")
                self._cond.wait(min(left, 0.2))
            response = self._responses.pop(ident)
        if not response.get("ok"):
            raise SipmobUAError(f"{cmd}({args}): {response.get('error')}")
        return response.get("result")

    def wait_event(self, predicate: Callable[[Event], bool], timeout: float = 5.0, start: int = 0) -> Event:
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
                    raise SipmobUAError(f"no matching event within {timeout} s; saw {seen}")
                self._cond.wait(left)

    def wait(self, name: str, timeout: float = 5.0, **fields: Any) -> Event:
        """The first event called `name` whose fields include `fields`."""
        return self.wait_event(lambda e: e["event"] == name and all(e.get(k) == v for k, v in fields.items()),
                               timeout)

    def count(self, name: str) -> int:
        with self._cond:
            return sum(1 for e in self.events if e["event"] == name)

    # Commands --------------------------------------------------------------------------------

    def invite(self, target: str, *, headers: list[tuple[str, str]] | None = None,
               cancel_on_provisional: bool = False) -> str:
        """Start a call; return its ref. `established` or `call_failed` follows as an event."""
        return str(self.command("invite", target=target, headers=[list(h) for h in headers or []],
                                cancel_on_provisional=cancel_on_provisional))

    def cancel(self, ref: str) -> None:
        self.command("cancel", ref=ref)

    def reinvite(self, ref: str) -> None:
        self.command("reinvite", ref=ref)

    def bye(self, ref: str) -> None:
        self.command("bye", ref=ref)

    def refer(self, ref: str, refer_to: str, *, replaces: str | None = None,
              referred_by: str | None = None) -> None:
        self.command("refer", ref=ref, refer_to=refer_to, replaces=replaces, referred_by=referred_by)

    def replaces_for(self, ref: str) -> str:
        """The Replaces value that names this call's dialog to its peer (RFC 3891 §3)."""
        return str(self.command("replaces_for", ref=ref))

    def calls(self) -> list[Event]:
        return list(self.command("calls"))

    # Lifetime --------------------------------------------------------------------------------

    def stderr(self) -> str:
        return self._stderr_path.read_text(errors="replace")[-4000:] if self._stderr_path.exists() else ""

    def stop(self, timeout: float = 5.0) -> None:
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

    def __enter__(self) -> SipmobUA:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# The child ---------------------------------------------------------------------------------------


def _child(options: dict[str, Any]) -> None:
    import logging

    from twisted.internet import defer, protocol, reactor, stdio
    from twisted.protocols.basic import LineReceiver

    from sipmob.service.sipua import Call, CallFailed, IncomingCall, SIPError, UserAgent
    from sipmob.sip.headers import Replaces
    from sipmob.sip.message import Request
    from sipmob.sip.transaction import TimerConfig
    from sipmob.sip.uri import URI, NameAddr

    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    out = sys.stdout

    def emit(message: Event) -> None:
        out.write(json.dumps(message) + "\n")
        out.flush()

    host = options["host"]
    rtp_port = reactor.listenUDP(0, protocol.DatagramProtocol(), interface=host).getHost().port
    versions: dict[str, int] = {}

    def sdp(ref: str) -> bytes:
        versions[ref] = versions.get(ref, 0) + 1
        return ("v=0\r\n"
                f"o=sipmob 4242 {versions[ref]} IN IP4 {host}\r\n"
                "s=-\r\n"
                f"c=IN IP4 {host}\r\n"
                "t=0 0\r\n"
                f"m=audio {rtp_port} RTP/AVP 0\r\n"
                "a=rtpmap:0 PCMU/8000\r\n"
                "a=sendrecv\r\n").encode()

    ua = UserAgent(reactor, listen=[(host, int(options["port"]), "udp")], user=options["user"],
                   timers=TimerConfig(t1=float(options["t1"]), t2=float(options["t2"])))
    calls: dict[str, Call] = {}
    pending: dict[str, defer.Deferred[Call]] = {}
    counter = [0]

    def new_ref(kind: str) -> str:
        counter[0] += 1
        return f"{kind}{counter[0]}"

    def ref_of(call: Call) -> str | None:
        return next((r for r, c in calls.items() if c is call), None)

    def adopt(ref: str, call: Call, role: str) -> Call:
        calls[ref] = call
        d = call.dialog
        emit({"event": "established", "ref": ref, "call_id": d.call_id, "role": role,
              "local_tag": d.local_tag, "remote_tag": d.remote_tag})
        call.on_terminated(lambda _c, reason: emit({"event": "terminated", "ref": ref, "reason": reason}))
        call.on_refer(lambda c, request: on_refer(ref, c, request))
        return call

    def failed(ref: str) -> Callable[[Any], None]:
        def report(failure: Any) -> None:
            exc = failure.value
            status = getattr(exc, "status", 0)
            emit({"event": "call_failed", "ref": ref, "status": status, "reason": str(exc)})
        return report

    def place_call(ref: str, target: str, headers: list[tuple[str, str]],
                   cancel_on_provisional: bool = False) -> defer.Deferred[Call]:
        def provisional(response: Any) -> None:
            emit({"event": "provisional", "ref": ref, "status": response.status})
            if cancel_on_provisional and response.status > 100 and ref in pending:
                pending.pop(ref).cancel()

        d = ua.invite(target, sdp(ref), headers=headers, on_provisional=provisional)
        pending[ref] = d
        d.addBoth(lambda result: (pending.pop(ref, None), result)[1])
        d.addCallback(lambda call: adopt(ref, call, "caller"))
        return d

    def on_incoming(incoming: IncomingCall) -> None:
        ref = new_ref("in")
        replaced = ref_of(incoming.replaced) if incoming.replaced is not None else None
        emit({"event": "incoming_call", "ref": ref, "call_id": incoming.request.call_id,
              "from": str(incoming.request.from_), "replaces": str(incoming.replaces) if incoming.replaces
              else None, "replaced_ref": replaced,
              "referred_by": str(incoming.referred_by) if incoming.referred_by else None})
        incoming.cancelled.addCallback(lambda _: emit({"event": "incoming_cancelled", "ref": ref}))
        if options["ringing"]:
            incoming.ringing()
        if options["reject_status"]:
            incoming.reject(int(options["reject_status"]))
            return
        if not options["auto_answer"]:
            return

        def accept() -> None:
            if incoming.cancelled.called:
                return
            d = incoming.accept(sdp(ref))
            d.addCallbacks(lambda call: adopt(ref, call, "callee"), failed(ref))

        reactor.callLater(float(options["answer_delay"]), accept)

    def on_refer(ref: str, call: Call, request: Request) -> defer.Deferred[Call]:
        # What a transferee does (RFC 3515 §2.4.2, RFC 3892 §3, RFC 3891 §4).
        refer_to = NameAddr.parse(request.headers.get("Refer-To") or "")
        referred_by = request.headers.get("Referred-By")
        emit({"event": "refer_received", "ref": ref, "refer_to": str(refer_to), "referred_by": referred_by})
        target = refer_to.uri
        headers: list[tuple[str, str]] = []
        for name, value in target.headers:
            if name.lower() == "replaces":
                headers.append(("Replaces", value))
        if referred_by:
            headers.append(("Referred-By", referred_by))
        new = new_ref("xfer")
        d = place_call(new, str(target.replace(headers=())), headers)
        emit({"event": "refer_invite", "ref": ref, "new_ref": new})

        def outcome(result: Any) -> Any:
            status = 200 if isinstance(result, Call) else getattr(result.value, "status", 503)
            emit({"event": "refer_outcome", "ref": ref, "new_ref": new, "status": status})
            if not isinstance(result, Call):
                emit({"event": "call_failed", "ref": new, "status": status, "reason": str(result.value)})
            return result

        d.addBoth(outcome)
        return d

    ua.on_incoming_call(on_incoming)

    def run(cmd: str, args: dict[str, Any]) -> Any:
        if cmd == "invite":
            ref = new_ref("out")
            d = place_call(ref, args["target"], [tuple(h) for h in args.get("headers", [])],
                           bool(args.get("cancel_on_provisional")))
            d.addErrback(failed(ref))
            return ref
        if cmd == "cancel":
            pending[args["ref"]].cancel()
            return None
        if cmd == "reinvite":
            ref = args["ref"]
            reinvited = calls[ref].reinvite(sdp(ref))
            reinvited.addCallbacks(
                lambda response: emit({"event": "reinvite_done", "ref": ref, "status": response.status}),
                lambda f: emit({"event": "reinvite_failed", "ref": ref,
                                "status": getattr(f.value, "status", 0)}))
            return None
        if cmd == "bye":
            ref = args["ref"]
            calls[ref].bye().addCallback(lambda _: emit({"event": "bye_done", "ref": ref}))
            return None
        if cmd == "refer":
            ref = args["ref"]
            replaces = Replaces.parse(args["replaces"]) if args.get("replaces") else None
            referred = calls[ref].refer(args["refer_to"], replaces=replaces,
                                        referred_by=args.get("referred_by"))

            def accepted(progress: Any) -> None:
                emit({"event": "refer_accepted", "ref": ref, "status": progress.response.status})
                progress.final.addCallback(lambda status: emit(
                    {"event": "refer_final", "ref": ref, "final": status, "statuses": progress.statuses}))

            referred.addCallbacks(accepted, lambda f: emit({"event": "refer_failed", "ref": ref,
                                                            "status": getattr(f.value, "status", 0)}))
            return None
        if cmd == "replaces_for":
            dialog = calls[args["ref"]].dialog
            # Named from the peer's side: its local tag is our remote tag (RFC 3891 §3).
            return str(Replaces(dialog.call_id, to_tag=dialog.remote_tag, from_tag=dialog.local_tag))
        if cmd == "calls":
            return [{"ref": ref, "state": call.state, "call_id": call.call_id,
                     "remote_target": str(call.dialog.remote_target)} for ref, call in calls.items()]
        raise ValueError(f"unknown command {cmd!r}")

    class Control(LineReceiver):
        delimiter = b"\n"

        def lineReceived(self, line: bytes) -> None:
            request = json.loads(line)
            try:
                result = run(request["cmd"], request.get("args", {}))
                emit({"id": request["id"], "ok": True, "result": result})
            except (KeyError, ValueError, SIPError, CallFailed) as exc:
                emit({"id": request["id"], "ok": False, "error": repr(exc)})

        def connectionLost(self, reason: Any = None) -> None:
            if reactor.running:
                reactor.stop()

    def started(_: Any) -> None:
        emit({"event": "ready", "uri": str(URI.parse(f"sip:{options['user']}@{host}:{options['port']}")),
              "contact": str(ua.contact), "rtp_port": rtp_port})

    ua.start().addCallbacks(started, lambda f: (emit({"event": "start_failed", "error": str(f.value)}),
                                                reactor.stop()))
    stdio.StandardIO(Control(), stdout=os.open(os.devnull, os.O_WRONLY))
    reactor.run()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        _child(json.loads(sys.argv[2]))
    else:
        sys.exit("usage: sipmob_ua.py --child OPTIONS_JSON (started by tests.peers.sipmob_ua.SipmobUA)")
