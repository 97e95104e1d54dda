"""What the encoder refuses, and how it names the place."""

from __future__ import annotations

import uuid
from collections import OrderedDict

import pytest

from descartes_fast.wire import errors as E
from descartes_fast.wire.schema import (
    AgentConfig,
    AgentStatus,
    CommandResponse,
    ControlCommand,
    ControlCommandType,
    HealthCheckRequest,
    ListAgentsRequest,
    LogStreamMessage,
    LogStreamType,
    SpawnRequest,
    StatusUpdate,
    StatusUpdateType,
)

U = uuid.UUID(int=1)


def spawn(**cfg) -> SpawnRequest:
    return SpawnRequest("r", AgentConfig(**cfg))


BAD = [
    (HealthCheckRequest(7), "HealthCheckRequest.request_id: expected str, got int"),
    (HealthCheckRequest(None), "HealthCheckRequest.request_id: expected str, got NoneType"),
    (spawn(environment={"k": 1}), "SpawnRequest.config.environment['k']: expected str, got int"),
    (spawn(environment={1: "v"}), "SpawnRequest.config.environment: expected str map key, got int"),
    (spawn(agents={"a": {1, 2}}), "SpawnRequest.config.agents['a']: expected JSON value, got set"),
    (spawn(name="\ud800"), "SpawnRequest.config.name: str is not encodable as UTF-8"),
    (SpawnRequest("r", {"name": "a"}), "SpawnRequest.config: expected AgentConfig, got dict"),
    (SpawnRequest("r", AgentConfig(), timeout_secs=-1), "SpawnRequest.timeout_secs: integer -1 out of range for u64"),
    (SpawnRequest("r", AgentConfig(), timeout_secs=2**64), "integer 18446744073709551616 out of range for u64"),
    (SpawnRequest("r", AgentConfig(), timeout_secs=True), "expected u64, got bool"),
    (SpawnRequest("r", AgentConfig(), timeout_secs=1.0), "expected u64, got float"),
    (ControlCommand("r", str(U), ControlCommandType.PAUSE), "ControlCommand.agent_id: expected UUID, got str"),
    (ControlCommand("r", U, "Pause"), "ControlCommand.command_type: 'Pause' is not a ControlCommandType value"),
    (ControlCommand("r", U, 3), "expected ControlCommandType, got int"),
    (ControlCommand("r", U, ControlCommandType.PAUSE, {"x": float("nan")}), "JSON numbers cannot be nan"),
    (ControlCommand("r", U, ControlCommandType.PAUSE, {"x": 2**64}), "out of range for a JSON number"),
    (ControlCommand("r", U, ControlCommandType.PAUSE, {"x": b"raw"}), "expected JSON value, got bytes"),
    (StatusUpdate(U, StatusUpdateType.HEARTBEAT, timestamp=-1), "StatusUpdate.timestamp: timestamp -1 is before 1970"),
    (StatusUpdate(U, StatusUpdateType.HEARTBEAT, timestamp=2**63 * 10**9), "out of range"),
    (LogStreamMessage(U, LogStreamType.STDOUT, "text", 0, 0), "LogStreamMessage.data: expected bytes, got str"),
    (LogStreamMessage(U, LogStreamType.STDOUT, memoryview(b"abcd")[::2], 0, 0), "memoryview is not contiguous"),
    (ListAgentsRequest("r", "paused", "10"), "ListAgentsRequest.limit: expected u64, got str"),
    ("not a message", "message: expected a message, got str"),
    (AgentConfig(), "message: expected a message, got AgentConfig"),
]


@pytest.mark.parametrize("message,text", BAD, ids=[t for _, t in BAD])
def test_refused(impl, message, text) -> None:
    with pytest.raises(E.EncodeError) as info:
        impl.encode(message)
    assert text in str(info.value)


def test_unset_field(impl) -> None:
    message = object.__new__(HealthCheckRequest)
    with pytest.raises(E.EncodeError, match=r"HealthCheckRequest\.request_id: field is not set"):
        impl.encode(message)


def test_plain_strings_and_other_enums_are_accepted_for_enums(impl) -> None:
    as_str = CommandResponse("r", U, True, "paused")
    as_member = CommandResponse("r", U, True, AgentStatus.PAUSED)
    assert impl.encode(as_str) == impl.encode(as_member)
    assert impl.decode(impl.encode(as_str)).status is AgentStatus.PAUSED


def test_accepted_python_types(impl) -> None:
    payload = {"t": (1, 2), "o": OrderedDict([("b", 1), ("a", 2)]), "neg": -(2**63), "big": 2**64 - 1}
    message = ControlCommand("r", U, ControlCommandType.CUSTOM_ACTION, payload)
    decoded = impl.decode(impl.encode(message))
    assert decoded.payload == {"t": [1, 2], "o": {"b": 1, "a": 2}, "neg": -(2**63), "big": 2**64 - 1}
    assert list(decoded.payload["o"]) == ["b", "a"]  # insertion order is kept
    data = LogStreamMessage(U, LogStreamType.STDOUT, bytearray(b"\x00\x80\xff"), 0, 0)
    assert impl.decode(impl.encode(data)).data == b"\x00\x80\xff"


def test_subclass_of_a_message_encodes_as_the_message(impl) -> None:
    class Mine(HealthCheckRequest):
        pass
    assert impl.encode(Mine("x")) == impl.encode(HealthCheckRequest("x"))


def test_encoder_nesting_limit(impl) -> None:
    from descartes_fast.wire.constants import MAX_DEPTH
    value: object = 0
    for _ in range(MAX_DEPTH):
        value = [value]
    with pytest.raises(E.EncodeError, match="nested deeper"):
        impl.encode(ControlCommand("r", U, ControlCommandType.PAUSE, value))
