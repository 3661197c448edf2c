"""``sipmob-web``: the gateway's web page, served on the LAN by a small daemon on twisted.web.

Why twisted.web, and why a daemon of its own: every sipmob daemon already runs on Twisted's
reactor (`sipmob.service.daemon`), and twisted.web is part of python3-twisted, so the page needs
no second event loop, no WSGI server and no package outside Debian; the same reactor that talks
SLP to the DA and JSON to the phone's control socket holds the browsers' event streams, with no
threads. A separate process (rather than a page inside the phone or the DA) keeps an HTTP
listener, and a password file, out of the daemons that hold calls and registrations: it fails
alone, runs with nothing but the sipmob user's rights, and talks to the others only over their
own wire (SLP, the control socket), as any other client would.

Responsible for: the HTTP routes and who may use them, listening only where configured, the
bounds on each request, and turning the sources' snapshots (`sipmob.web.sources`) into
server-sent events: ``devices`` (a diff: devices set or removed, all of them in the first event),
``calls``, ``health`` and ``action`` (an action's start and its outcome, as they happen).

Routes: ``GET /`` the page (the current snapshot embedded, so the first byte already carries the
rooms) or a redirect to ``/login``; ``GET|POST /login``; ``POST /logout``; ``GET /events`` the
stream; ``GET /api/state``; ``POST /api/action`` (JSON ``{"action": "transfer"|"retrieve"|
"split"|"hangup"|"answer"|"reject", "call": ..., ...}``, carried to the phone's control socket);
``GET /static/NAME``. ``{"action": "call", "uri": ...}`` places a call from the phone.

Rules, each with an attack test (tests/integration/web/test_web_security.py): nothing but the
login page and the static files without a session (401 for the API and the stream, 303 to the
login page for ``/``); every POST with a session also carries the session's CSRF token (header
``X-CSRF-Token`` or form field ``csrf``) and, when the browser sends one, an ``Origin`` of this
very host, else 403 (a login with another site's ``Origin`` too); the session cookie is
``HttpOnly; SameSite=Strict`` (not ``Secure``: the page is plain HTTP on the LAN); failed logins
are limited per source address and overall (429 with ``Retry-After``), and each failure is
answered after `FAILED_LOGIN_DELAY`; bodies above ``[limits] max_body`` get 413, a request not
complete within ``[limits] request_timeout`` is dropped, at most ``[limits] max_streams`` pages
stream at once (503), and at most `MAX_ACTIONS` actions wait for the phone at once (503).
Responses carry a Content-Security-Policy that allows only this origin's own files.

Not here: the sources (`sipmob.web.sources`), passwords and sessions (`sipmob.web.auth`), the
addresses we listen on (`sipmob.web.lan`).
"""

from __future__ import annotations

import json
import logging
import urllib.parse
from importlib import resources
from typing import Any

from twisted.internet import defer
from twisted.web import http, resource, server

from sipmob.service.config import split_host_port
from sipmob.service.daemon import Runtime
from sipmob.service.slp import SLPClient
from sipmob.slp.messages import SLP_PORT
from sipmob.web import auth
from sipmob.web.config import WebConfig
from sipmob.web.lan import listen_addresses
from sipmob.web.sources import DeviceWatch, Health, PhoneError, PhoneLink

log = logging.getLogger("sipmob.web")

COOKIE = b"sipmob_session"
FAILED_LOGIN_DELAY = 1.0  # seconds before a wrong password is answered
HEARTBEAT = 15.0  # seconds between comments on an idle event stream (a dead client shows up)
STATIC = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
CSP = (b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       b"form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
ACTIONS = {"call", "transfer", "retrieve", "split", "hangup", "answer", "reject"}
ACTION_TIMEOUT = 60.0
MAX_ACTIONS = 8  # actions waiting for the phone at once (each holds a connection to its socket)


def _static(name: str) -> bytes:
    return resources.files("sipmob.web").joinpath("static", name).read_bytes()


class _Channel(http.HTTPChannel):
    """HTTP with a bound on the body and on the time a whole request may take."""

    max_body = 16384
    request_timeout = 10.0

    def connectionMade(self) -> None:
        super().connectionMade()
        self._body_bytes = 0
        self._deadline: Any = None
        self._arm()

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.callLater(self.request_timeout, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if self.transport is not None:
            self.transport.abortConnection()

    def allHeadersReceived(self) -> None:
        if self.length is not None and self.length > self.max_body:
            self._refuse_body()
            return
        super().allHeadersReceived()

    def rawDataReceived(self, data: bytes) -> None:
        if not self._handlingRequest:
            self._body_bytes += len(data)
            if self._body_bytes > self.max_body + 64:  # chunked framing included
                self._refuse_body()
                return
        super().rawDataReceived(data)

    def _refuse_body(self) -> None:
        self.transport.write(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n"
                             b"Connection: close\r\n\r\n")
        # Closing with the client's body unread would reset the connection and lose the 413: read
        # and drop what comes for a moment, then close.
        self._refused = True
        self.callLater(1.0, self.transport.loseConnection)

    def dataReceived(self, data: bytes) -> None:
        if getattr(self, "_refused", False):
            return
        super().dataReceived(data)

    def allContentReceived(self) -> None:
        self._disarm()
        self._body_bytes = 0
        super().allContentReceived()

    def requestDone(self, request: Any) -> None:
        super().requestDone(request)
        if self.transport is not None and not self._handlingRequest:
            self._arm()

    def connectionLost(self, reason: Any) -> None:
        self._disarm()
        super().connectionLost(reason)


class _Site(server.Site):
    def __init__(self, root: resource.Resource, config: WebConfig, reactor: Any) -> None:
        super().__init__(root, timeout=config.limits.request_timeout, reactor=reactor)
        self.max_body = config.limits.max_body
        self.request_timeout = config.limits.request_timeout
        self.displayTracebacks = False

    def buildProtocol(self, addr: Any) -> Any:
        channel = super().buildProtocol(addr)
        channel.max_body = self.max_body
        channel.request_timeout = self.request_timeout
        return channel

    def log(self, request: Any) -> None:
        pass  # one line per request is not an event a person cares about


_Site.protocol = _Channel


class _Stream:
    def __init__(self, request: server.Request, token: str) -> None:
        self.request = request
        self.token = token
        self.open = True

    def send(self, event: str, data: Any) -> None:
        if self.open:
            payload = json.dumps(data, separators=(",", ":"))
            self.request.write(f"event: {event}\ndata: {payload}\n\n".encode())


def _diff(old: list[dict[str, Any]] | None, new: list[dict[str, Any]]) -> dict[str, Any]:
    before = {d["uri"]: d for d in old or []}
    after = {d["uri"]: d for d in new}
    return {"set": [d for u, d in after.items() if before.get(u) != d],
            "remove": [u for u in before if u not in after]}


class WebApp(resource.Resource):
    """The daemon (`sipmob.service.daemon.App`) and its one resource."""

    isLeaf = True

    def __init__(self, config: WebConfig, runtime: Runtime | None, reactor: Any = None) -> None:
        super().__init__()
        self.config = config
        self.runtime = runtime
        self.reactor = reactor if reactor is not None else runtime.reactor  # type: ignore[union-attr]
        self.sessions = auth.Sessions(config.auth.session_lifetime)
        self.limiter = auth.LoginLimiter(config.auth.max_failures, config.auth.max_failures_total)
        self.password_hash: str | None = None
        self.password_problem: str | None = None
        da = split_host_port(config.sources.da, SLP_PORT)
        self.slp = SLPClient(self.reactor, da=da, scopes=config.sources.scopes)
        self.devices = DeviceWatch(self.reactor, self.slp, config.sources.poll_interval,
                                   self._devices_changed)
        self.phone = PhoneLink(self.reactor, config.sources.phone_control, self._calls_changed)
        self.health = Health(self.reactor, self.slp, config.sources.units, self.devices,
                             self._health_changed)
        self.streams: list[_Stream] = []
        self.ports: list[Any] = []
        self.addresses: list[str] = []
        self._sent_devices: list[dict[str, Any]] | None = None
        self._heartbeat: Any = None
        self._next_action = 1
        self._actions_waiting = 0

    # App ----------------------------------------------------------------------------------------

    def start(self) -> None:
        self._load_password()
        self.addresses = self.config.listen.addresses or listen_addresses()
        site = _Site(self, self.config, self.reactor)
        for address in self.addresses:
            self.ports.append(self.reactor.listenTCP(self.config.listen.port, site, interface=address))
        log.info("serving http://%s:%d/ on %s", self.addresses[0] if len(self.addresses) == 1 else "HOST",
                 self.port, ", ".join(self.addresses))

    @property
    def port(self) -> int:
        return int(self.ports[0].getHost().port) if self.ports else self.config.listen.port

    def _load_password(self) -> None:
        try:
            self.password_hash = auth.read_hash(self.config.auth.password_file)
            self.password_problem = None
        except auth.PasswordFileError as exc:
            self.password_hash, self.password_problem = None, str(exc)
            log.warning("nobody can log in: %s", exc)

    def reload(self, config: WebConfig) -> None:
        self.config = config
        self._load_password()

    @defer.inlineCallbacks
    def stop(self) -> Any:
        for stream in list(self.streams):
            stream.open = False
            stream.request.finish()
        self.streams.clear()
        self._idle()
        for port in self.ports:
            yield port.stopListening()
        yield self.slp.close()

    def status(self) -> str:
        n = len(self.streams)
        return f"{n} page{'s' if n != 1 else ''} open; serving on {', '.join(self.addresses)}"

    # Sources ------------------------------------------------------------------------------------

    def _busy(self) -> None:
        self.devices.start()
        self.phone.start()
        self.health.start()
        if self._heartbeat is None:
            self._heartbeat = self.reactor.callLater(HEARTBEAT, self._beat)

    def _idle(self) -> None:
        self.devices.stop()
        self.phone.stop()
        self.health.stop()
        if self._heartbeat is not None and self._heartbeat.active():
            self._heartbeat.cancel()
        self._heartbeat = None

    def _beat(self) -> None:
        self._heartbeat = None
        now = self.reactor.seconds()
        for stream in list(self.streams):
            if self.sessions.get(stream.token, now) is None:
                self._close_stream(stream)
            else:
                stream.request.write(b": keep-alive\n\n")
        if self.streams:
            self._heartbeat = self.reactor.callLater(HEARTBEAT, self._beat)

    def _broadcast(self, event: str, data: Any) -> None:
        for stream in list(self.streams):
            stream.send(event, data)

    def _devices_changed(self, views: list[dict[str, Any]]) -> None:
        diff = _diff(self._sent_devices, views)
        self._sent_devices = views
        diff["error"] = self.devices.error
        self._broadcast("devices", diff)
        da = self.health.snapshot.get("da")
        if da is not None:  # the count moves with the devices, not only at the next health check
            da["registrations"] = sum(1 for d in views if d["up"])
            self._broadcast("health", self.health.snapshot)

    def _calls_changed(self, calls: list[dict[str, Any]] | None, error: str | None) -> None:
        self._broadcast("calls", {"calls": calls, "error": error})

    def _health_changed(self, snapshot: dict[str, Any]) -> None:
        self._broadcast("health", snapshot)

    @defer.inlineCallbacks
    def state(self) -> Any:
        """What the page shows now; the DA is asked when the snapshot is older than an interval."""
        updated = self.devices.updated
        if updated is None or self.devices.clock() - updated > self.config.sources.poll_interval:
            yield self.devices.refresh()
        if not self.phone.running:  # nobody follows the phone now: what we know may be old
            try:
                calls = yield self.phone.request("calls", timeout=5)
                self.phone.calls, self.phone.error = (calls if isinstance(calls, list) else []), None
            except PhoneError as exc:
                self.phone.calls, self.phone.error = None, str(exc)
        return {"devices": self.devices.snapshot or [], "devices_error": self.devices.error,
                "calls": self.phone.calls, "calls_error": self.phone.error,
                "health": self.health.snapshot}

    # HTTP ---------------------------------------------------------------------------------------

    def render(self, request: server.Request) -> Any:
        request.setHeader(b"Content-Security-Policy", CSP)
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
        # Not "no-referrer": under it the browser sends our own form POSTs with "Origin: null".
        request.setHeader(b"Referrer-Policy", b"same-origin")
        request.setHeader(b"X-Frame-Options", b"DENY")
        path = request.path.decode("latin-1")
        method = request.method.decode("latin-1")
        if path.startswith("/static/") and method in ("GET", "HEAD"):
            return self._serve_static(request, path[len("/static/"):])
        if path == "/login":
            if method == "GET":
                return self._login_page(request, "")
            if method == "POST":
                return self._login(request)
            return self._status(request, 405, "GET or POST")
        session = self.sessions.get(self._cookie(request), self.reactor.seconds())
        if session is None:
            if path == "/" and method == "GET":
                request.setResponseCode(303)
                request.setHeader(b"Location", b"/login")
                return b""
            return self._status(request, 401, "log in first")
        request.setHeader(b"Cache-Control", b"no-store")
        if method == "POST":
            if not self._origin_ok(request):
                return self._status(request, 403, "cross-origin request refused")
            header = request.getHeader(b"x-csrf-token")
            offered = header.decode("latin-1") if header is not None else None
            if path == "/logout":
                offered = offered or self._form(request).get("csrf")
            if not auth.csrf_ok(session, offered):
                return self._status(request, 403, "missing or wrong CSRF token")
            if path == "/logout":
                self.sessions.end(session.token)
                request.setResponseCode(303)
                request.setHeader(b"Location", b"/login")
                request.addCookie(COOKIE, b"", path=b"/", httpOnly=True, sameSite="strict", max_age="0")
                return b""
            if path == "/api/action":
                return self._action(request)
            return self._status(request, 404, "no such action")
        if method != "GET":
            return self._status(request, 405, "GET")
        if path == "/":
            return self._page(request, session)
        if path == "/events":
            return self._events(request, session)
        if path == "/api/state":
            return self._json_later(request, self.state())
        return self._status(request, 404, "not found")

    @staticmethod
    def _cookie(request: server.Request) -> str | None:
        value = request.getCookie(COOKIE)
        return value.decode("ascii", "replace") if value else None

    @staticmethod
    def _origin_ok(request: server.Request) -> bool:
        # Browsers send Origin on POSTs; it must name this host. Absent (curl, old browsers): the
        # CSRF token alone decides.
        origin = request.getHeader(b"origin")
        if origin is None:
            return True
        host = request.getHeader(b"host")
        parsed = urllib.parse.urlsplit(origin.decode("latin-1"))
        return host is not None and parsed.scheme == "http" and parsed.netloc == host.decode("latin-1")

    @staticmethod
    def _form(request: server.Request) -> dict[str, str]:
        body = request.content.read() if request.content is not None else b""
        try:
            return dict(urllib.parse.parse_qsl(body.decode("utf-8", "replace"), max_num_fields=8))
        except ValueError:  # more fields than any of our forms has
            return {}

    @staticmethod
    def _status(request: server.Request, code: int, message: str) -> bytes:
        request.setResponseCode(code)
        request.setHeader(b"Content-Type", b"application/json")
        return json.dumps({"ok": False, "error": message}).encode()

    def _serve_static(self, request: server.Request, name: str) -> bytes:
        kind = STATIC.get(name)
        if kind is None:
            return self._status(request, 404, "not found")
        request.setHeader(b"Content-Type", kind.encode())
        request.setHeader(b"Cache-Control", b"max-age=3600")
        return _static(name)

    def _login_page(self, request: server.Request, message: str) -> bytes:
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-store")
        if self.password_problem and not message:
            message = "No password is set: run sipmob web-password on the gateway."
        return _static("login.html").replace(b"{{message}}", _html(message).encode())

    def _login(self, request: server.Request) -> Any:
        if not self._origin_ok(request):  # another site's page posting its guesses through a browser
            return self._status(request, 403, "cross-origin request refused")
        source = request.getClientAddress().host
        now = self.reactor.seconds()
        wait = self.limiter.retry_after(source, now)
        if wait > 0:
            request.setResponseCode(429)
            request.setHeader(b"Retry-After", str(int(wait) + 1).encode())
            return self._login_page(request, f"Too many wrong passwords: try again in {int(wait) + 1} s.")
        password = self._form(request).get("password", "")
        ok = False
        if self.password_hash is not None:
            try:
                ok = auth.verify_password(password, self.password_hash)
            except auth.PasswordFileError:
                ok = False
        if not ok:
            self.limiter.failed(source, now)
            log.warning("failed login from %s", source)
            request.setResponseCode(401)
            page = self._login_page(request, "Wrong password.")

            def answer() -> None:
                if not request.finished and not getattr(request, "_disconnected", False):
                    request.write(page)
                    request.finish()

            self.reactor.callLater(FAILED_LOGIN_DELAY, answer)
            return server.NOT_DONE_YET
        self.limiter.succeeded(source)
        session = self.sessions.create(now)
        log.info("login from %s", source)
        request.addCookie(COOKIE, session.token.encode(), path=b"/", httpOnly=True, sameSite="strict",
                          max_age=str(int(self.config.auth.session_lifetime)))
        request.setResponseCode(303)
        request.setHeader(b"Location", b"/")
        return b""

    def _page(self, request: server.Request, session: auth.Session) -> Any:
        def render(state: Any) -> bytes:
            request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
            # </ cannot end the script element early: JSON escapes every < as \u003c.
            data = json.dumps(state, separators=(",", ":")).replace("<", "\\u003c")
            return (_static("index.html").replace(b"{{csrf}}", session.csrf.encode())
                    .replace(b"{{state}}", data.encode()))

        d = self.state()
        d.addCallback(render)
        return self._later(request, d)

    def _json_later(self, request: server.Request, d: defer.Deferred[Any]) -> Any:
        def encode(value: Any) -> bytes:
            request.setHeader(b"Content-Type", b"application/json")
            return json.dumps(value).encode()

        return self._later(request, d.addCallback(encode))

    def _later(self, request: server.Request, d: defer.Deferred[bytes]) -> Any:
        def write(body: bytes) -> None:
            if not request.finished and not getattr(request, "_disconnected", False):
                request.write(body)
                request.finish()

        def failed(failure: Any) -> None:
            log.error("request %s failed: %s", request.path, failure.getTraceback())
            write(self._status(request, 500, "internal error"))

        d.addCallbacks(write, failed)
        return server.NOT_DONE_YET

    def _events(self, request: server.Request, session: auth.Session) -> Any:
        if len(self.streams) >= self.config.limits.max_streams:
            return self._status(request, 503, "too many pages open")
        request.setHeader(b"Content-Type", b"text/event-stream")
        request.setHeader(b"X-Accel-Buffering", b"no")
        stream = _Stream(request, session.token)
        self.streams.append(stream)
        request.notifyFinish().addBoth(lambda _: self._close_stream(stream))
        request.write(b"retry: 2000\n\n")
        if self.devices.snapshot is not None:
            stream.send("devices", {"set": self.devices.snapshot, "remove": [], "reset": True,
                                    "error": self.devices.error})
        if self.phone.calls is not None or self.phone.error is not None:
            stream.send("calls", {"calls": self.phone.calls, "error": self.phone.error})
        if self.health.snapshot:
            stream.send("health", self.health.snapshot)
        self._sent_devices = self.devices.snapshot
        self._busy()
        if self.runtime is not None:
            self.runtime.status_changed(self)
        return server.NOT_DONE_YET

    def _close_stream(self, stream: _Stream) -> None:
        if stream in self.streams:
            self.streams.remove(stream)
            if stream.open:
                stream.open = False
                if not stream.request.finished and not getattr(stream.request, "_disconnected", False):
                    stream.request.finish()
        if not self.streams:
            self._idle()
        if self.runtime is not None:
            self.runtime.status_changed(self)

    def _action(self, request: server.Request) -> Any:
        try:
            body = json.loads(request.content.read() if request.content is not None else b"")
            if not isinstance(body, dict) or body.get("action") not in ACTIONS:
                raise ValueError(f"action must be one of {', '.join(sorted(ACTIONS))}")
            command, args, text = _command(body)
        except (ValueError, KeyError, TypeError) as exc:
            return self._status(request, 400, f"bad action: {exc}")
        if self._actions_waiting >= MAX_ACTIONS:
            return self._status(request, 503, "too many actions waiting for the phone")
        self._actions_waiting += 1
        aid = self._next_action
        self._next_action += 1
        self._broadcast("action", {"id": aid, "call": args.get("call"), "state": "running", "text": text})
        d = self.phone.request(command, args, timeout=ACTION_TIMEOUT)

        def settled(result: Any) -> Any:
            self._actions_waiting -= 1
            return result

        d.addBoth(settled)

        def done(result: Any) -> bytes:
            message = result if isinstance(result, str) else f"{text}: done"
            self._broadcast("action", {"id": aid, "call": args.get("call"), "state": "done", "text": message})
            self.phone.refresh()
            request.setHeader(b"Content-Type", b"application/json")
            return json.dumps({"ok": True, "id": aid, "message": message}).encode()

        def failed(failure: Any) -> bytes:
            reason = str(failure.value) if failure.check(PhoneError) else "internal error"
            if not failure.check(PhoneError):
                log.error("action %s failed: %s", command, failure.getTraceback())
            self._broadcast("action", {"id": aid, "call": args.get("call"), "state": "failed",
                                       "text": f"{text} failed: {reason}"})
            request.setResponseCode(502)
            request.setHeader(b"Content-Type", b"application/json")
            return json.dumps({"ok": False, "id": aid, "error": reason}).encode()

        d.addCallbacks(done, failed)
        return self._later(request, d)


def _text(value: Any, name: str, limit: int = 512) -> str:
    if not isinstance(value, str | int) or not str(value) or len(str(value)) > limit:
        raise ValueError(f"{name} must be a non-empty string")
    return str(value)


def _command(body: dict[str, Any]) -> tuple[str, dict[str, Any], str]:
    """The control command for an action of the page, and what the page says while it runs."""
    action = body["action"]
    if action == "call":
        uri = _text(body.get("uri"), "uri", 256).strip()
        if not uri.lower().startswith(("sip:", "sips:")) or any(c in uri for c in " <>\"\r\n"):
            raise ValueError("uri must be a sip: or sips: URI")
        return "call", {"uri": uri}, f"Calling {uri}"
    call = _text(body.get("call"), "call", 16)
    if action == "transfer":
        to = _text(body.get("to"), "to")
        media = body.get("media", "all")
        if media not in ("audio", "video", "all"):
            raise ValueError("media must be audio, video or all")
        return "transfer", {"call": call, "to": [to], "media": media}, \
            f"Moving call {call} to {body.get('label') or to}"
    if action == "retrieve":
        return "retrieve", {"call": call, "media": "all"}, f"Bringing call {call} back to the phone"
    if action == "split":
        args = {"call": call, "video_out": _text(body.get("video_out"), "video_out"),
                "video_in": _text(body.get("video_in"), "video_in"),
                "audio": _text(body["audio"], "audio") if body.get("audio") else None}
        return "split", args, f"Splitting call {call}"
    texts = {"hangup": "Hanging up call", "answer": "Answering call", "reject": "Rejecting call"}
    return action, {"call": call}, f"{texts[action]} {call}"


def _html(text: str) -> str:
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&quot;").replace("'", "&#39;"))

