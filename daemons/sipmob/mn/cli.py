"""The ``sipmob`` command: find the home's devices and drive a running ``sipmob phone``.

    sipmob phone [--config PATH] [--control PATH] [--listen HOST:PORT] [--check-config]
                                                                  runs the phone (sipmob.mn.phone)
    sipmob devices [--room R] [--media audio|video] [--json]     asks the DA itself
    sipmob call URI                                               the rest ask the phone over
    sipmob calls [--json]                                         its control socket
    sipmob transfer CALL --to DEVICE[,DEVICE...] [--media audio|video|all] [--mode auto|mnc|handoff]
    sipmob split CALL --video-out DISPLAY --video-in CAMERA [--audio DEVICE]
    sipmob retrieve CALL [--media audio|video|all]

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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sipmob.mn import control
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

    transfer = sub.add_parser("transfer", help="move a call's media to one or more devices")
    transfer.add_argument("call")
    transfer.add_argument("--to", required=True, help="DEVICE[,DEVICE...] (short names, URIs or names)")
    transfer.add_argument("--media", choices=MEDIA_CHOICES, default="all")
    transfer.add_argument("--mode", choices=("auto", "mnc", "handoff"),
                          help="mnc: keep the call, move its media; handoff: the device takes the call "
                               "over (REFER); auto: handoff for mobility=enhanced devices "
                               "(default: [calls] mode)")

    split = sub.add_parser("split", help="video out to a display, video in from a camera")
    split.add_argument("call")
    split.add_argument("--video-out", required=True, metavar="DISPLAY")
    split.add_argument("--video-in", required=True, metavar="CAMERA")
    split.add_argument("--audio", metavar="DEVICE", help="also move audio to this device")

    retrieve = sub.add_parser("retrieve", help="bring a call's media back to the phone")
    retrieve.add_argument("call")
    retrieve.add_argument("--media", choices=MEDIA_CHOICES, default="all")
    return p


def _config(path: str) -> MnConfig:
    # The commands run on the phone's defaults when the file is absent (a user without /etc/sipmob).
    return load_config(MnConfig, path)


def _da(text: str) -> tuple[str, int]:
    try:
        return split_host_port(text, SLP_PORT)
    except ValueError as exc:
        raise ValueError(f"--da {exc}") from None


def _devices(args: argparse.Namespace, config: MnConfig) -> int:
    from twisted.internet import defer, task

    from sipmob.mn import devices
    from sipmob.service.slp import SLPClient
    from sipmob.slp.agent import SLPError

    da = _da(args.da) if args.da else config.da_address
    timeout = args.timeout if args.timeout is not None else config.slp.timeout
    outcome: dict[str, Any] = {}

    @defer.inlineCallbacks
    def run(reactor: Any) -> Any:
        client = SLPClient(reactor, da=da, scopes=config.slp.scopes, multicast=da is None)
        try:
            d = devices.discover(client, args.room, args.media)
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
    if "error" in outcome:
        print(f"{PROG}: {outcome['error']}", file=sys.stderr)
        return EXIT_FAILED
    found = outcome["found"]
    if args.json:
        print(json.dumps(devices.to_json(found), indent=2))
    else:
        print(devices.table(found))
    return EXIT_OK


def _where(da: tuple[str, int] | None) -> str:
    return "(multicast)" if da is None else f"{da[0]}:{da[1]}"


def _request(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    if args.command == "call":
        return "call", {"uri": args.uri}
    if args.command == "calls":
        return "calls", {}
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
    return "retrieve", {"call": args.call, "media": args.media}


def _detail(stream: dict[str, Any]) -> str:
    """" (PCMA/8000, held by the remote party)": the codec in use and who holds the stream."""
    parts = [str(stream[k]) for k in ("codec", "hold") if stream.get(k)]
    return f" ({', '.join(parts)})" if parts else ""


def format_calls(calls: Sequence[dict[str, Any]]) -> str:
    """One line per call: its id, the other party, its state and where each stream is."""
    if not calls:
        return "no calls"
    lines = []
    for c in calls:
        where = "; ".join(f"{s.get('media')}: {s.get('where')}{_detail(s)}" for s in c.get("streams", []))
        lines.append(f"{c.get('id')}  {c.get('peer')}  {c.get('state')}  {where or '-'}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["phone"]:
        from sipmob.mn import phone

        return phone.main(argv[1:])
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
    path = Path(args.control) if args.control else config.control_path
    timeout = args.timeout if args.timeout is not None else 60.0
    try:
        result = control.request(path, command, payload, timeout=timeout)
    except (control.CommandError, control.ControlUnavailable, TimeoutError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if command == "calls":
        print(json.dumps(result, indent=2) if args.json else format_calls(result or []))
    elif isinstance(result, str):
        print(result)
    elif result is not None:
        print(json.dumps(result))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
