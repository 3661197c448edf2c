"""The main loop every sipmob daemon shares.

A daemon is described by a `DaemonSpec`: its name, its configuration dataclass, optional command-line
flags that override the file, and a factory that turns a checked configuration into an `App`. `run`
then does the rest the same way for every daemon:

- ``--config PATH`` (default ``/etc/sipmob/<name>.toml``), ``--check-config`` (print every problem,
  one line each, exit 1; exit 0 when valid), ``--log-level``;
- logging to the journal under systemd, to stderr otherwise;
- ``READY=1`` only once `App.start` has bound its sockets, ``STATUS=`` from `App.status`,
  ``WATCHDOG=1`` from the reactor, ``STOPPING=1`` on the way out;
- SIGHUP re-reads the file: a valid one is handed to `App.reload`, a broken one is logged and the
  running configuration stays;
- SIGTERM and SIGINT stop cleanly through `App.stop`.

Exit codes: 0 clean stop, 1 bad configuration, 2 usage, 3 could not start (for example a port in use).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any, Generic, Protocol, TypeVar

from twisted.internet import defer
from twisted.internet.task import LoopingCall

from sipmob.service.config import ConfigError, ConfigProblem, load_config
from sipmob.service.systemd import Notifier, setup_logging, watchdog_interval

log = logging.getLogger("sipmob.service")

C = TypeVar("C")

EXIT_OK, EXIT_CONFIG, EXIT_USAGE, EXIT_START = 0, 1, 2, 3


class App(Protocol[C]):  # type: ignore[misc]
    def start(self) -> defer.Deferred[Any] | None:
        """Bind sockets and begin; the Deferred (if any) fires once the daemon can serve."""

    def reload(self, config: C) -> None:
        """Apply a new, already validated configuration without dropping state."""

    def stop(self) -> defer.Deferred[Any] | None:
        """Release sockets and flush state; the Deferred (if any) fires when done."""

    def status(self) -> str:
        """One line for `systemctl status`, such as "12 services registered in 1 scope"."""


@dataclasses.dataclass
class Runtime:
    """What the daemon main loop gives an app besides its configuration."""

    reactor: Any
    notifier: Notifier
    config_path: str
    args: argparse.Namespace

    def status_changed(self, app: App[Any]) -> None:
        """Apps call this when what `App.status` would say has changed."""
        self.notifier.status(app.status())


@dataclasses.dataclass
class DaemonSpec(Generic[C]):
    name: str  # "slpda": the config file is /etc/sipmob/<name>.toml, the program sipmob-<name>
    config_type: type[C]
    build: Callable[[C, Runtime], App[C]]
    description: str = ""
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None
    # Flags override the file: return the configuration with the given flags applied.
    override: Callable[[C, argparse.Namespace], C] | None = None
    # A daemon that speaks no TLS keeps pyOpenSSL and cryptography out of its process (see main_for).
    uses_tls: bool = False
    # The name it gives itself in messages, when not "sipmob-<name>" (such as "sipmob phone").
    prog: str = ""

    @property
    def program(self) -> str:
        return self.prog or f"sipmob-{self.name}"


def parse_args(spec: DaemonSpec[Any], argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=spec.program, description=spec.description)
    parser.add_argument("--config", default=f"/etc/sipmob/{spec.name}.toml", metavar="PATH",
                        help="configuration file (default: %(default)s)")
    parser.add_argument("--check-config", action="store_true",
                        help="check the configuration, print every problem and exit")
    parser.add_argument("--log-level", default=None,
                        choices=["debug", "info", "warning", "error"],
                        help="override the configured log level")
    if spec.add_arguments is not None:
        spec.add_arguments(parser)
    args = parser.parse_args(argv)
    # The default file may be absent (the daemon then runs on its defaults); a file named on the
    # command line must exist, or a typo would silently run with the system's state file.
    args.config_required = any(a == "--config" or a.startswith("--config=")
                               for a in (argv if argv is not None else sys.argv[1:]))
    return args


def load(spec: DaemonSpec[C], args: argparse.Namespace) -> C:
    """The configuration file with the command-line overrides applied; raises ConfigError."""
    config = load_config(spec.config_type, args.config,
                         required=getattr(args, "config_required", False))
    if spec.override is not None:
        try:
            config = spec.override(config, args)
        except ValueError as exc:
            raise ConfigError([ConfigProblem("command line", "", str(exc))]) from None
    return config


def run(spec: DaemonSpec[C], argv: Sequence[str] | None = None, reactor: Any = None) -> int:
    args = parse_args(spec, argv)
    try:
        config = load(spec, args)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"{spec.program}: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    if args.check_config:
        print(f"{spec.program}: {args.config}: configuration is valid")
        return EXIT_OK

    level = args.log_level or getattr(getattr(config, "log", None), "level", "info")
    setup_logging(spec.program, level)
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    notifier = Notifier()
    runtime = Runtime(reactor=reactor, notifier=notifier, config_path=args.config, args=args)
    outcome = {"code": EXIT_OK}

    try:
        app = spec.build(config, runtime)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"{spec.program}: {problem}", file=sys.stderr)
        return EXIT_CONFIG

    def started(_: Any) -> None:
        notifier.ready(app.status())
        log.info("%s ready: %s", spec.program, app.status())
        interval = watchdog_interval()
        if interval is not None:
            LoopingCall(notifier.watchdog).start(interval, now=True)

    def failed(failure: Any) -> None:
        log.error("%s could not start: %s", spec.program, failure.getErrorMessage())
        outcome["code"] = EXIT_START
        reactor.stop()

    def reload_config() -> None:
        notifier.reloading()
        try:
            new = load(spec, args)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("reload refused, keeping the running configuration: %s", problem)
        else:
            try:
                app.reload(new)
                log.info("configuration reloaded from %s", args.config)
            except ConfigError as exc:
                for problem in exc.problems:
                    log.error("reload refused, keeping the running configuration: %s", problem)
            except Exception:
                log.exception("reload failed, keeping the running configuration")
        notifier.ready(app.status())

    def shutdown() -> defer.Deferred[Any]:
        notifier.stopping()
        log.info("%s stopping", spec.program)
        return defer.maybeDeferred(app.stop)

    signal.signal(signal.SIGHUP, lambda *_: reactor.callFromThread(reload_config))
    reactor.addSystemEventTrigger("before", "shutdown", shutdown)
    reactor.callWhenRunning(
        lambda: defer.maybeDeferred(app.start).addCallbacks(started, failed))
    reactor.run()
    return outcome["code"]


def keep_tls_out() -> None:
    """Keep pyOpenSSL and cryptography out of a process that speaks no TLS.

    Twisted's reactor imports them when it can: some 10 MB of resident memory on the gateway. Marked
    unimportable before the reactor loads, they stay out and Twisted runs without TLS support.
    """
    sys.modules.setdefault("OpenSSL", None)  # type: ignore[arg-type]


def main_for(spec: DaemonSpec[Any]) -> Callable[[], None]:
    """A console-script entry point for `spec`."""

    def main() -> None:
        if not spec.uses_tls:
            keep_tls_out()
        sys.exit(run(spec))

    return main
