"""The control protocol's server side, driven through an in-memory transport (no sockets)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from twisted.internet import defer
from twisted.internet.testing import StringTransport

from sipmob.mn.control import MAX_LINE, CommandError, _ControlProtocol, encode


def connect(handler: Any) -> tuple[_ControlProtocol, StringTransport]:
    proto = _ControlProtocol(handler)
    transport = StringTransport()
    proto.makeConnection(transport)
    return proto, transport


def replies(transport: StringTransport) -> list[dict[str, Any]]:
    return [json.loads(line) for line in transport.value().splitlines()]


def echo(command: str, args: Mapping[str, Any]) -> Any:
    return {"command": command, "args": dict(args)}


def test_request_gets_its_result_with_its_id() -> None:
    proto, transport = connect(echo)
    proto.dataReceived(encode({"id": 7, "command": "calls", "args": {"x": 1}}))
    assert replies(transport) == [{"id": 7, "ok": True, "result": {"command": "calls", "args": {"x": 1}}}]


def test_missing_args_default_to_empty() -> None:
    proto, transport = connect(echo)
    proto.dataReceived(b'{"id": 1, "command": "calls"}\n')
    assert replies(transport)[0]["result"] == {"command": "calls", "args": {}}


def test_command_error_is_answered_with_its_message() -> None:
    def refuse(command: str, args: Mapping[str, Any]) -> Any:
        raise CommandError("no call 9")

    proto, transport = connect(refuse)
    proto.dataReceived(encode({"id": 2, "command": "retrieve", "args": {"call": "9"}}))
    assert replies(transport) == [{"id": 2, "ok": False, "error": "no call 9"}]


def test_unexpected_exception_is_an_internal_error_not_a_traceback() -> None:
    def broken(command: str, args: Mapping[str, Any]) -> Any:
        raise KeyError("oops")

    proto, transport = connect(broken)
    proto.dataReceived(encode({"id": 3, "command": "transfer"}))
    assert replies(transport) == [{"id": 3, "ok": False, "error": "internal error in transfer"}]


def test_deferred_result_is_answered_when_it_fires() -> None:
    pending: defer.Deferred[Any] = defer.Deferred()
    proto, transport = connect(lambda command, args: pending)
    proto.dataReceived(encode({"id": 4, "command": "transfer"}))
    assert transport.value() == b""
    pending.callback("moved")
    assert replies(transport) == [{"id": 4, "ok": True, "result": "moved"}]


def test_replies_come_in_the_order_requests_finish() -> None:
    slow: defer.Deferred[Any] = defer.Deferred()
    proto, transport = connect(lambda command, args: slow if command == "transfer" else "list")
    proto.dataReceived(encode({"id": 1, "command": "transfer"}) + encode({"id": 2, "command": "calls"}))
    slow.callback("done")
    assert [r["id"] for r in replies(transport)] == [2, 1]


def test_malformed_json_is_a_bad_request() -> None:
    proto, transport = connect(echo)
    proto.dataReceived(b"{not json\n")
    reply = replies(transport)[0]
    assert reply["ok"] is False and reply["error"].startswith("bad request")


def test_request_without_command_is_a_bad_request() -> None:
    proto, transport = connect(echo)
    proto.dataReceived(b'{"id": 5, "args": {}}\n')
    assert replies(transport)[0]["error"] == "bad request: a request is an object with a string 'command'"


def test_non_object_args_are_a_bad_request() -> None:
    proto, transport = connect(echo)
    proto.dataReceived(b'{"command": "calls", "args": [1]}\n')
    assert replies(transport)[0]["error"] == "bad request: 'args' must be an object"


def test_blank_lines_are_ignored() -> None:
    proto, transport = connect(echo)
    proto.dataReceived(b"\n \n")
    assert transport.value() == b""


def test_overlong_line_closes_the_connection() -> None:
    proto, transport = connect(echo)
    proto.dataReceived(b"x" * (MAX_LINE + 10))
    assert transport.disconnecting
