"""What the page shows, fetched from where it lives: the DA's devices, the phone's calls, the
daemons' health. Each source keeps its last snapshot and tells `on_change` when it differs.

Responsible for:
- `DeviceWatch`: the devices of ``service:sip-device`` from the DA (a SrvRqst every
  ``poll_interval``; one AttrRqst per URL only when the URL is new or every `ATTR_REFRESH`
  seconds, so a steady home costs the DA one request per interval). Polls only while someone
  watches (`start`/`stop`), so an idle daemon sends nothing. A device that deregisters stays
  listed as down (the SA proxy deregisters a device that stops answering OPTIONS) for
  `GONE_KEPT` seconds;
- `PhoneLink`: requests on the phone's control socket (the protocol of `sipmob.mn.control`,
  one connection per request), and a long poll of its ``events`` so a call change reaches the page
  as it happens; the calls are asked again after every event and every `CALLS_REFRESH` seconds
  (RTP counters);
- `Health`: the DA's DAAdvert (reachable, its round trip) and registration count, each unit's
  ``ActiveState`` and ``STATUS=`` (``systemctl show``: readable without privileges) and the last
  warnings of the journal when this user may read it.

Not here: HTTP and the page (`sipmob.web.app`), SLP itself (`sipmob.service.slp`).
"""

from __future__ import annotations

import abc
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from twisted.internet import defer, protocol
from twisted.internet.utils import getProcessOutputAndValue
from twisted.protocols.basic import LineOnlyReceiver

from sipmob.mn import devices as discovery
from sipmob.service.slp import SLPClient

log = logging.getLogger("sipmob.web")

ATTR_REFRESH = 30.0
GONE_KEPT = 3600.0
MAX_GONE = 100
CALLS_REFRESH = 5.0
PHONE_RETRY = 5.0
PHONE_TIMEOUT = 30.0
HEALTH_INTERVAL = 10.0
MAX_REPLY = 1 << 20


def device_view(found: discovery.Found, up: bool, since: float | None = None) -> dict[str, Any]:
    a = found.attributes
    return {"uri": found.uri, "short": found.short, "name": found.name,
            "room": (a.get("room") or ("",))[0], "media": list(a.get("media", ())),
            "audio_codecs": list(a.get("audio-codecs", ())), "video_codecs": list(a.get("video-codecs", ())),
            "members": list(a.get("members", ())), "mobility": (a.get("mobility") or ("",))[0],
            "up": up, "gone_since": since}


class _Ticking(abc.ABC):
    """Something that asks again on a timer while a page is open: `start` runs the first `_tick`,
    which re-arms `_call`; `stop` cancels whatever is armed."""

    _call: Any = None
    _running = False

    def start(self) -> None:
        if not self._running:
            self._running = True
            self._tick()

    def stop(self) -> None:
        self._running = False
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    @abc.abstractmethod
    def _tick(self) -> None:
        """Ask once, and re-arm `_call` while running."""


class DeviceWatch(_Ticking):
    def __init__(self, reactor: Any, client: SLPClient, interval: float,
                 on_change: Callable[[list[dict[str, Any]]], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.reactor = reactor
        self.client = client
        self.interval = interval
        self.on_change = on_change
        self.clock = clock
        self.snapshot: list[dict[str, Any]] | None = None
        self.updated: float | None = None  # monotonic time of the last complete answer
        self.error: str | None = None
        self._attrs: dict[str, tuple[float, Mapping[str, Any]]] = {}
        self._gone: dict[str, tuple[float, float, dict[str, Any]]] = {}  # uri -> (mono, wall, view)
        self._call: Any = None
        self._running = False
        self._inflight: defer.Deferred[Any] | None = None

    def _tick(self) -> None:
        self._call = None
        d = self.refresh()

        def again(_: Any) -> None:
            if self._running and self._call is None:
                self._call = self.reactor.callLater(self.interval, self._tick)

        d.addBoth(again)

    def refresh(self) -> defer.Deferred[Any]:
        """Ask the DA now (or join the question already on its way); fires with the snapshot."""
        if self._inflight is None:
            self._inflight = self._ask()

            def done(result: Any) -> Any:
                self._inflight = None
                return result

            self._inflight.addBoth(done)
        waiting: defer.Deferred[Any] = defer.Deferred()
        self._inflight.addBoth(lambda r: (waiting.callback(self.snapshot), r)[1])
        return waiting

    @defer.inlineCallbacks
    def _ask(self) -> Any:
        try:
            d = self.client.find_services(discovery.SERVICE_TYPE)
            d.addTimeout(max(self.interval * 4, 2.0), self.reactor)
            urls = yield d
        except Exception as exc:
            self._set_error(f"no answer from the DA ({type(exc).__name__})")
            return None
        now = self.clock()
        wanted = sorted({entry.url for entry in urls})
        stale = [u for u in wanted if u not in self._attrs or now - self._attrs[u][0] > ATTR_REFRESH]
        if stale:
            results = yield defer.DeferredList([self.client.find_attributes(u) for u in stale],
                                               consumeErrors=True)
            for url, (ok, attrs) in zip(stale, results, strict=True):
                if ok:
                    self._attrs[url] = (now, attrs)
                elif url not in self._attrs:
                    self._attrs[url] = (now - ATTR_REFRESH, {})  # listed bare; asked again next time
        found = discovery.build([(u, self._attrs[u][1]) for u in wanted])
        views = [device_view(f, True) for f in found]
        present = set(wanted)
        for url in [u for u in self._attrs if u not in present]:
            old = next((v for v in self.snapshot or [] if v["uri"] == url), None)
            if old is not None:
                self._gone[url] = (now, time.time(), dict(old, up=False, gone_since=round(time.time())))
            del self._attrs[url]
        for url in [u for u, (t, _, _) in self._gone.items() if u in present or now - t > GONE_KEPT]:
            del self._gone[url]
        while len(self._gone) > MAX_GONE:
            del self._gone[min(self._gone, key=lambda u: self._gone[u][0])]
        views += [g[2] for g in self._gone.values()]
        views.sort(key=lambda v: (v["room"] or "~", v["name"].lower(), v["uri"]))
        self.updated = now
        changed = views != self.snapshot or self.error is not None
        self.snapshot, self.error = views, None
        if changed:
            self.on_change(views)
        return views

    def _set_error(self, error: str) -> None:
        if error != self.error:
            self.error = error
            self.on_change(self.snapshot or [])


# The phone ---------------------------------------------------------------------------------------

class _OneRequest(LineOnlyReceiver):
    delimiter = b"\n"
    MAX_LENGTH = MAX_REPLY

    def __init__(self, line: bytes, result: defer.Deferred[Any]) -> None:
        self.line = line
        self.result = result

    def connectionMade(self) -> None:
        self.transport.write(self.line)

    def lineReceived(self, line: bytes) -> None:
        if not self.result.called:
            try:
                self.result.callback(json.loads(line))
            except ValueError:
                self.result.errback(PhoneError("the phone sent something that is not JSON"))
        self.transport.loseConnection()

    def lineLengthExceeded(self, line: bytes) -> None:
        if not self.result.called:
            self.result.errback(PhoneError("the phone's reply is too long"))
        self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        if not self.result.called:
            self.result.errback(PhoneError("the phone closed the connection"))


class _OneRequestFactory(protocol.ClientFactory):
    def __init__(self, line: bytes, result: defer.Deferred[Any]) -> None:
        self.line = line
        self.result = result

    def buildProtocol(self, addr: Any) -> _OneRequest:
        return _OneRequest(self.line, self.result)

    def clientConnectionFailed(self, connector: Any, reason: Any) -> None:
        if not self.result.called:
            self.result.errback(PhoneUnavailable("the phone is not running (nothing answers on its "
                                                 "control socket)"))


class PhoneError(Exception):
    """The phone refused or failed a request; the message is the phone's."""


class PhoneUnavailable(PhoneError):
    """Nothing answers on the phone's control socket."""


class PhoneLink:
    def __init__(self, reactor: Any, path: str,
                 on_calls: Callable[[list[dict[str, Any]] | None, str | None], None]) -> None:
        self.reactor = reactor
        self.path = path
        self.on_calls = on_calls
        self.calls: list[dict[str, Any]] | None = None
        self.error: str | None = None
        self._running = False
        self._since: int | None = None
        self._poll: defer.Deferred[Any] | None = None
        self.refresh_call: Any = None

    def request(self, command: str, args: Mapping[str, Any] | None = None,
                timeout: float = PHONE_TIMEOUT) -> defer.Deferred[Any]:
        """One request; fires with its ``result`` or errbacks `PhoneError` with the phone's message."""
        raw: defer.Deferred[Any] = defer.Deferred()
        line = json.dumps({"id": 1, "command": command, "args": dict(args or {})}).encode() + b"\n"
        connector = self.reactor.connectUNIX(self.path, _OneRequestFactory(line, raw), timeout=5)
        raw.addTimeout(timeout, self.reactor)
        raw.addBoth(lambda result: (connector.disconnect(), result)[1])  # a phone that never answers

        def unpack(reply: Any) -> Any:
            if not isinstance(reply, dict) or not reply.get("ok"):
                error = reply.get("error", "failed") if isinstance(reply, dict) else "a bad reply"
                raise PhoneError(str(error))
            return reply.get("result")

        def timed_out(failure: Any) -> Any:
            failure.trap(defer.TimeoutError)
            raise PhoneError(f"no answer from the phone within {timeout:g} s")

        return raw.addCallback(unpack).addErrback(timed_out)

    @property
    def running(self) -> bool:
        return self._running

    def start(self) -> None:
        if not self._running:
            self._running = True
            self.refresh()
            self._watch()

    def stop(self) -> None:
        self._running = False
        if self.refresh_call is not None and self.refresh_call.active():
            self.refresh_call.cancel()
        self.refresh_call = None

    def refresh(self) -> defer.Deferred[Any]:
        if self.refresh_call is not None and self.refresh_call.active():
            self.refresh_call.cancel()
        self.refresh_call = None
        d = self.request("calls", timeout=10)

        def got(calls: Any) -> None:
            calls = calls if isinstance(calls, list) else []
            if calls != self.calls or self.error is not None:
                self.calls, self.error = calls, None
                self.on_calls(calls, None)

        def failed(failure: Any) -> None:
            error = str(failure.value) if failure.check(PhoneError) else "the phone did not answer"
            if error != self.error:
                self.calls, self.error = None, error
                self.on_calls(None, error)

        def again(_: Any) -> None:
            if self._running and self.refresh_call is None:
                self.refresh_call = self.reactor.callLater(CALLS_REFRESH, self.refresh)

        return d.addCallbacks(got, failed).addBoth(again)

    def _watch(self) -> None:
        if not self._running or self._poll is not None:
            return
        self._poll = self.request("events", {"since": self._since, "wait": 25}, timeout=35)

        def got(result: Any) -> None:
            self._poll = None
            if isinstance(result, dict):
                self._since = int(result.get("next", self._since or 0))
                if result.get("events"):
                    self.refresh()
            self._watch()

        def failed(failure: Any) -> None:
            self._poll = None
            self.reactor.callLater(PHONE_RETRY, self._watch)

        self._poll.addCallbacks(got, failed)


# Health ------------------------------------------------------------------------------------------

class Health(_Ticking):
    def __init__(self, reactor: Any, client: SLPClient, units: Sequence[str],
                 devices: DeviceWatch, on_change: Callable[[dict[str, Any]], None]) -> None:
        self.reactor = reactor
        self.client = client
        self.units = list(units)
        self.devices = devices
        self.on_change = on_change
        self.snapshot: dict[str, Any] = {}
        self._call: Any = None
        self._running = False

    def _tick(self) -> None:
        self._call = None

        def again(_: Any) -> None:
            if self._running:
                self._call = self.reactor.callLater(HEALTH_INTERVAL, self._tick)

        self.check().addBoth(again)

    @defer.inlineCallbacks
    def check(self) -> Any:
        da: dict[str, Any] = {}
        started = time.monotonic()
        try:
            d = self.client.find_das()
            d.addTimeout(3.0, self.reactor)
            found = yield d
            da = {"reachable": bool(found), "round_trip_ms": round((time.monotonic() - started) * 1000, 1),
                  "url": found[0].url if found else None}
        except Exception as exc:
            da = {"reachable": False, "error": type(exc).__name__}
        snapshot = self.devices.snapshot or []
        da["registrations"] = sum(1 for d in snapshot if d["up"])
        units = yield self._units()
        journal = yield self._journal()
        self.snapshot = {"da": da, "units": units, "journal": journal, "checked": round(time.time())}
        self.on_change(self.snapshot)
        return self.snapshot

    @defer.inlineCallbacks
    def _units(self) -> Any:
        out: list[dict[str, str]] = []
        if not self.units:
            return out
        try:
            stdout, _, code = yield getProcessOutputAndValue(
                "/bin/systemctl", ["show", "--no-pager", "-p", "Id,ActiveState,SubState,StatusText",
                                   *self.units], env={}, reactor=self.reactor)
        except Exception:
            return [{"unit": u, "state": "unknown", "status": ""} for u in self.units]
        for block in stdout.decode(errors="replace").strip().split("\n\n"):
            fields = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
            if fields.get("Id"):
                out.append({"unit": fields["Id"].removesuffix(".service"),
                            "state": f"{fields.get('ActiveState', '?')} ({fields.get('SubState', '?')})",
                            "status": fields.get("StatusText", "")[:200]})
        if code != 0 and not out:  # no systemd to ask (a container, a test): say so per unit
            out = [{"unit": u, "state": "unknown (systemd does not answer)", "status": ""}
                   for u in self.units]
        return out

    @defer.inlineCallbacks
    def _journal(self) -> Any:
        if not self.units:
            return []  # nothing to show (journalctl without -u would show the whole machine's warnings)
        args = ["--no-pager", "-q", "-o", "short-iso", "-p", "warning", "-n", "10"]
        for unit in self.units:
            args += ["-u", unit]
        try:
            stdout, _, code = yield getProcessOutputAndValue("/bin/journalctl", args, env={},
                                                             reactor=self.reactor)
        except Exception:
            return None
        if code != 0:
            return None
        return [line[:300] for line in stdout.decode(errors="replace").splitlines()[-10:]]
