"""The ``sipmob`` command: find the home's devices and drive a running ``sipmob phone``.

    sipmob phone [--config PATH] [--control PATH] [--listen HOST:PORT] [--check-config]
                                                                  runs the phone (sipmob.mn.phone)
    sipmob devices [--room R] [--media audio|video] [--json]     asks the DA itself
    sipmob call URI                                               the rest ask the phone over
    sipmob calls [--json]                                         its control socket
    sipmob egress [--json] [--mdsm-control PATH]                  (status, sessions, probe RTT per egress;
                                                                  the MDSM's calls per egress too)
    sipmob transfer CALL --to DEVICE[,DEVICE...] [--media audio|video|all]
                    [--mode auto|mnc|handoff] [--untrusted]
    sipmob split CALL --video-out DISPLAY --video-in CAMERA [--audio DEVICE] [--untrusted]
    sipmob retrieve CALL [--media audio|video|all]
    sipmob answer|reject|hangup|hold|resume CALL                  the phone's call controls
    sipmob dtmf CALL DIGITS                                       (sipmob.mn.controls)
    sipmob watch [--json]                                         prints the phone's events as they come
    sipmob web-password [--stdin]                                 sets the web page's password
    sipmob keygen NAME [--copy FILE]                              makes a phone's SLP key (service.slpkeys)

Global options: ``--config PATH`` (default /etc/sipmob/mn.toml; the control path and the DA come from
it), ``--control PATH``, ``--da HOST:PORT``. Exit status: 0 done, 1 refused or failed (one line on
stderr saying why), 2 usage or a broken configuration file.

Not here: the phone itself (`sipmob.mn.phone`), the control protocol (`sipmob.mn.control`), discovery
(`sipmob.mn.devices`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sipmob.mn import control_client as control
from sipmob.mn.config import DEFAULT_CONFIG, MnConfig
from sipmob.service.config import ConfigError, load_config, split_host_port
from sipmob.slp.messages import SLP_PORT

PROG = "sipmob"
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
MEDIA_CHOICES = ("audio", "video", "all")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Move live calls between the devices of a home.")
    p.add_argument("--config", default=os.environ.get("SIPMOB_MN_CONFIG", DEFAULT_CONFIG),
                   help="the phone's configuration file (default %(default)s)")
    p.add_argument("--control", help="the phone's control socket (default: from the configuration)")
    p.add_argument("--da", help="the SLP Directory Agent, HOST:PORT (default: from the configuration)")
    p.add_argument("--timeout", type=float, default=None,
                   help="seconds to wait for an answer (default: 3 for devices, 60 otherwise)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    phone = sub.add_parser("phone", help="run the phone (sipmob phone --help for its options)",
                           add_help=False)
    phone.add_argument("options", nargs=argparse.REMAINDER)

    devices = sub.add_parser("devices", help="list the devices the DA knows")
    devices.add_argument("--room", help="only devices in this room")
    devices.add_argument("--media", choices=("audio", "video"), help="only devices that handle this media")
    devices.add_argument("--json", action="store_true", help="print JSON instead of a table")

    call = sub.add_parser("call", help="call a SIP URI from the phone")
    call.add_argument("uri")

    calls = sub.add_parser("calls", help="list the phone's calls and where their media is")
    calls.add_argument("--json", action="store_true")
    egress = sub.add_parser("egress", help="the phone's egress list: status, sessions, last probe RTT; "
                                           "and the MDSM's calls per egress when it runs")
    egress.add_argument("--json", action="store_true")
    egress.add_argument("--mdsm-control", default=os.environ.get("SIPMOB_MDSM_CONTROL", MDSM_CONTROL),
                        help="the MDSM's egress socket ([egress] control; default %(default)s)")

    transfer = sub.add_parser("transfer", help="move a call's media to one or more devices")
    transfer.add_argument("call")
    transfer.add_argument("--to", required=True, help="DEVICE[,DEVICE...] (short names, URIs or names)")
    transfer.add_argument("--media", choices=MEDIA_CHOICES, default="all")
    transfer.add_argument("--mode", choices=("auto", "mnc", "handoff"),
                          help="mnc: keep the call, move its media; handoff: the device takes the call "
                               "over (REFER); auto: handoff for mobility=enhanced devices "
                               "(default: [calls] mode)")
    transfer.add_argument("--untrusted", action="store_true",
                          help="allow devices the DA does not mark trusted (registered by a stranger "
                               "on the network, not by the SA proxy or a configured device)")

    split = sub.add_parser("split", help="video out to a display, video in from a camera")
    split.add_argument("call")
    split.add_argument("--video-out", required=True, metavar="DISPLAY")
    split.add_argument("--video-in", required=True, metavar="CAMERA")
    split.add_argument("--audio", metavar="DEVICE", help="also move audio to this device")
    split.add_argument("--untrusted", action="store_true",
                       help="allow devices the DA does not mark trusted (as for transfer)")

    retrieve = sub.add_parser("retrieve", help="bring a call's media back to the phone")
    retrieve.add_argument("call")
    retrieve.add_argument("--media", choices=MEDIA_CHOICES, default="all")
    _add_call_controls(sub)
    web = sub.add_parser("web-password", help="set the web page's password (sipmob web-password --help)",
                         add_help=False)
    web.add_argument("options", nargs=argparse.REMAINDER)
    keygen = sub.add_parser("keygen", help="make a phone's or device's SLP key (sipmob keygen --help)",
                            add_help=False)
    keygen.add_argument("options", nargs=argparse.REMAINDER)
    return p


CALL_CONTROLS = {"answer": "answer a ringing call", "reject": "refuse a ringing call (603 Decline)",
                 "hangup": "end a call", "hold": "put a call on hold", "resume": "take a call off hold"}


def _add_call_controls(sub: Any) -> None:
    for name, text in CALL_CONTROLS.items():
        sub.add_parser(name, help=text).add_argument("call")
    dtmf = sub.add_parser("dtmf", help="send DTMF digits (RFC 4733 events, or SIP INFO)")
    dtmf.add_argument("call")
    dtmf.add_argument("digits", help="0-9 * # A-D")
    watch = sub.add_parser("watch", help="print incoming calls and call changes as they happen")
    watch.add_argument("--json", action="store_true", help="one JSON object per line")


def format_event(event: dict[str, Any]) -> str:
    """One line per event of `sipmob watch`."""
    when = time.strftime("%H:%M:%S", time.localtime(float(event.get("time", 0))))
    kind, cid, peer = event.get("event"), event.get("call"), event.get("peer")
    if kind == "incoming":
        who = f"{event['display']} <{peer}>" if event.get("display") else peer
        return f"{when}  call {cid}: {who} is calling (sipmob answer {cid} / sipmob reject {cid})"
    if kind == "dtmf":
        return f"{when}  call {cid}: sent {event.get('digits')} ({event.get('method')})"
    reason = f" ({event['reason']})" if event.get("reason") else ""
    return f"{when}  call {cid} with {peer}: {event.get('state')}{reason}"


def _watch(path: Path, as_json: bool) -> int:
    since: int | None = None
    try:
        while True:
            result = control.request(path, "events", {"since": since, "wait": 25}, timeout=35)
            for event in result.get("events", []):
                print(json.dumps(event) if as_json else format_event(event), flush=True)
            since = int(result.get("next", since or 0))
    except KeyboardInterrupt:
        return EXIT_OK
    except (control.CommandError, control.ControlUnavailable, TimeoutError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_FAILED


def _config(path: str) -> MnConfig:
    # The commands run on the phone's defaults when the file is absent (a user without /etc/sipmob).
    return load_config(MnConfig, path)


def _da(text: str) -> tuple[str, int]:
    try:
        return split_host_port(text, SLP_PORT)
    except ValueError as exc:
        raise ValueError(f"--da {exc}") from None


def _discover(args: argparse.Namespace, config: MnConfig, room: str | None = None,
              media: str | None = None) -> dict[str, Any]:
    """{"found": [Found, ...]} or {"error": text}: one discovery through the DA."""
    from twisted.internet import defer, task

    from sipmob.mn import devices
    from sipmob.service.slp import SLPClient
    from sipmob.slp.agent import SLPError

    da = _da(args.da) if args.da else config.da_address
    timeout = args.timeout if args.timeout is not None and args.command == "devices" else config.slp.timeout
    outcome: dict[str, Any] = {}

    @defer.inlineCallbacks
    def run(reactor: Any) -> Any:
        client = SLPClient(reactor, da=da, scopes=config.slp.scopes, multicast=da is None)
        try:
            d = devices.discover(client, room, media)
            d.addTimeout(timeout, reactor)
            outcome["found"] = yield d
        except defer.TimeoutError:
            outcome["error"] = f"no answer from the DA {_where(da)} within {timeout:g} s"
        except SLPError as exc:
            outcome["error"] = f"the DA {_where(da)} failed the request: {exc}"
        finally:
            yield client.close()

    try:
        task.react(lambda reactor: run(reactor))
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise
    return outcome


def _devices(args: argparse.Namespace, config: MnConfig) -> int:
    from sipmob.mn import devices

    outcome = _discover(args, config, args.room, args.media)
    if "error" in outcome:
        print(f"{PROG}: {outcome['error']}", file=sys.stderr)
        return EXIT_FAILED
    found = outcome["found"]
    if args.json:
        print(json.dumps(devices.to_json(found), indent=2))
    else:
        print(devices.table(found))
    return EXIT_OK


def _uris(args: argparse.Namespace, config: MnConfig, names: Sequence[str]) -> list[str]:
    from sipmob.mn import devices

    outcome = _discover(args, config)
    if "error" in outcome:
        raise LookupError(outcome["error"])
    return [devices.resolve(outcome["found"], name, allow_untrusted=True).uri for name in names]


def _where(da: tuple[str, int] | None) -> str:
    return "(multicast)" if da is None else f"{da[0]}:{da[1]}"


def _request(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    if args.command == "call":
        return "call", {"uri": args.uri}
    if args.command == "calls":
        return "calls", {}
    if args.command == "egress":
        return "egress", {}
    if args.command == "watch":
        return "watch", {}
    if args.command == "transfer":
        targets = [t.strip() for t in args.to.split(",") if t.strip()]
        if not targets:
            raise ValueError("--to names no device")
        request = {"call": args.call, "to": targets, "media": args.media}
        if args.mode:
            request["mode"] = args.mode
        return "transfer", request
    if args.command == "split":
        return "split", {"call": args.call, "video_out": args.video_out, "video_in": args.video_in,
                         "audio": args.audio}
    if args.command in CALL_CONTROLS:
        return args.command, {"call": args.call}
    if args.command == "dtmf":
        return "dtmf", {"call": args.call, "digits": args.digits}
    return "retrieve", {"call": args.call, "media": args.media}


def _detail(stream: dict[str, Any]) -> str:
    """" (PCMA/8000, held by the remote party)": the codec in use and who holds the stream."""
    parts = [str(stream[k]) for k in ("codec", "transcoder", "hold") if stream.get(k)]
    return f" ({', '.join(parts)})" if parts else ""


def format_calls(calls: Sequence[dict[str, Any]]) -> str:
    """One line per call: its id, the other party, its state and where each stream is."""
    if not calls:
        return "no calls"
    lines = []
    for c in calls:
        where = "; ".join(f"{s.get('media')}: {s.get('where')}{_detail(s)}" for s in c.get("streams", []))
        peer = f"{c['display']} <{c.get('peer')}>" if c.get("display") else c.get("peer")
        lines.append(f"{c.get('id')}  {peer}  {c.get('state')}  {where or '-'}")
    return "\n".join(lines)


def format_egress(listing: dict[str, Any]) -> str:
    """One line per egress: name, status, address, sessions, last probe RTT, its calls; then the
    other gateways followed, the calls relayed through them, the last moves."""
    lines = []
    for e in listing.get("egresses", []):
        rtt = f"{e['last_rtt'] * 1000:.1f} ms" if e.get("last_rtt") is not None else "-"
        mark = "*" if e.get("name") == listing.get("current") else " "
        lines.append(f"{mark} {e.get('name')}  {e.get('status')}  {e.get('address') or '-'}  "
                     f"sessions {e.get('sessions')}  rtt {rtt}  flaps {e.get('flaps')}"
                     + (f"  calls {','.join(e['calls'])}" if e.get("calls") else ""))
    for p in listing.get("peers", []):
        egresses = ", ".join(f"{e['name']} {'ON' if e['on'] else 'OFF'} load {e['load']}"
                             for e in p["egresses"])
        lines.append(f"  gateway {p['gateway']}: {egresses or 'no egress'}")
    for call, outside in sorted(listing.get("relayed", {}).items()):
        lines.append(f"  call {call} relayed, seen outside as {outside}")
    for m in listing.get("moves", []):
        lines.append(f"  call {m['call']} moved to {m['to']} in {m['seconds']} s ({m['reason']})")
    return "\n".join(lines) or "no egress"


MDSM_CONTROL = "/run/sipmob-mdsm/egress.sock"


def _egress(path: Path, mdsm_path: str, timeout: float, as_json: bool) -> int:
    """The phone's list and, when an MDSM answers on `mdsm_path`, its calls per egress."""
    phone: Any = None
    mdsm: Any = None
    problems = []
    try:
        phone = control.request(path, "egress", {}, timeout=timeout)
    except (control.CommandError, control.ControlUnavailable, TimeoutError) as exc:
        problems.append(str(exc))
    if mdsm_path:
        try:
            mdsm = control.request(mdsm_path, "egress", {}, timeout=timeout)
        except control.ControlUnavailable:
            pass  # no MDSM here: the phone's list alone
        except (control.CommandError, TimeoutError, OSError) as exc:
            problems.append(f"MDSM at {mdsm_path}: {exc}")
    if phone is None and mdsm is None:
        for problem in problems:
            print(f"{PROG}: {problem}", file=sys.stderr)
        return EXIT_FAILED
    if as_json:
        print(json.dumps({**(phone or {}), **({"mdsm": mdsm} if mdsm is not None else {})}, indent=2))
    else:
        if phone is not None:
            print(format_egress(phone))
        if mdsm is not None:
            print("MDSM:\n" + "\n".join(f"  {line}" for line in format_egress(mdsm).splitlines()))
    for problem in problems:
        print(f"{PROG}: {problem}", file=sys.stderr)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["phone"]:
        from sipmob.mn import phone

        return phone.main(argv[1:])
    if argv[:1] == ["web-password"]:
        from sipmob.web import password

        return password.main(argv[1:])
    if argv[:1] == ["keygen"]:
        from sipmob.service import slpkeys

        return slpkeys.main(argv[1:])
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        config = _config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE
    try:
        if args.command == "devices":
            return _devices(args, config)
        command, payload = _request(args)
    except ValueError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if command in ("transfer", "split") and args.untrusted:
        # The phone resolves names to trusted devices only; a device named by its full URI is
        # taken as it is, so the names are turned into URIs here, untrusted devices allowed.
        try:
            if command == "transfer":
                payload["to"] = _uris(args, config, payload["to"])
            else:
                keys = [k for k in ("video_out", "video_in", "audio") if payload.get(k)]
                payload.update(zip(keys, _uris(args, config, [payload[k] for k in keys]), strict=True))
        except LookupError as exc:
            print(f"{PROG}: {exc}", file=sys.stderr)
            return EXIT_FAILED
    path = Path(args.control) if args.control else config.control_path
    if command == "watch":
        return _watch(path, args.json)
    timeout = args.timeout if args.timeout is not None else 60.0
    if command == "egress":
        return _egress(path, args.mdsm_control, timeout, args.json)
    try:
        result = control.request(path, command, payload, timeout=timeout)
    except (control.CommandError, control.ControlUnavailable, TimeoutError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if command == "calls":
        print(json.dumps(result, indent=2) if args.json else format_calls(result or []))
    elif command == "egress":
        print(json.dumps(result, indent=2) if args.json else format_egress(result or {}))
    elif isinstance(result, str):
        print(result)
    elif result is not None:
        print(json.dumps(result))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
