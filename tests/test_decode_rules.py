"""What the decoder accepts and rejects, mirroring rmp-serde (docs/protocol.md §3)."""

from __future__ import annotations

import struct
import uuid

import msgpack
import pytest
from support.golden import load

from descartes_fast.wire import errors as E
from descartes_fast.wire.schema import (
    MAX_MESSAGE_SIZE,
    AgentConfig,
    AgentInfo,
    AgentStatus,
    CommandResponse,
    ControlCommand,
    ControlCommandType,
    ErrorResponse,
    HealthCheckRequest,
    HealthCheckResponse,
    LogStreamMessage,
    LogStreamType,
    OutputQueryResponse,
    SpawnRequest,
    SpawnResponse,
    StatusUpdate,
)

U = uuid.UUID("00112233-4455-6677-8899-aabbccddeeff")
T = [1_700_000_000, 5]
NS = 1_700_000_000 * 10**9 + 5


def pack(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def cfg(*fields):
    return list(fields)


def control(command="pause", payload=None, agent=U.bytes):
    return ["control_command", "r", agent, command, payload]


def status(**over):
    fields = {"agent_id": U.bytes, "update_type": "status_changed", "status": None,
              "message": None, "data": None, "timestamp": T}
    fields.update(over)
    return ["status_update", *fields.values()]


def info(*, cut: int = 9):
    return [U.bytes, "a", "running", "claude", T, "t", None, None, None][:cut]


ACCEPTED = [
    ("shortened spawn_response", ["spawn_response", "r", True], SpawnResponse("r", True)),
    ("shortened health response", ["health_check_response", "r", True, "1.0.0"],
     HealthCheckResponse("r", True, "1.0.0")),
    ("shortened output_query_response", ["output_query_response", "r", U.bytes, True],
     OutputQueryResponse("r", U, True)),
    ("empty AgentConfig", ["spawn_request", "r", []], SpawnRequest("r", AgentConfig())),
    ("pre-model 6-field AgentConfig", ["spawn_request", "r", cfg("a", "b", "t", None, None, {})],
     SpawnRequest("r", AgentConfig("a", "b", "t"))),
    ("AgentInfo cut after task", ["spawn_response", "r", True, info(cut=6)],
     SpawnResponse("r", True, AgentInfo(U, "a", AgentStatus.RUNNING, "claude", NS, "t"))),
    ("tag as variant index", [7, "r"], HealthCheckRequest("r")),
    ("tag as index in a map", {"type": 7, "request_id": "r"}, HealthCheckRequest("r")),
    ("tag as bin", [b"health_check_request", "r"], HealthCheckRequest("r")),
    ("type key last", {"request_id": "r", "type": "health_check_request"}, HealthCheckRequest("r")),
    ("unknown map keys ignored", {"type": "health_check_request", "x": [1, {"y": b"z"}], "request_id": "r"},
     HealthCheckRequest("r")),
    ("field given by index key", {"type": "health_check_request", 0: "r"}, HealthCheckRequest("r")),
    ("mixed forms", ["spawn_request", "r", {"task": "t", "name": "a"}], SpawnRequest("r", AgentConfig("a", "", "t"))),
    ("uuid hyphenated", control(agent=str(U)), ControlCommand("r", U, ControlCommandType.PAUSE)),
    ("uuid simple", control(agent=U.hex), ControlCommand("r", U, ControlCommandType.PAUSE)),
    ("uuid braced", control(agent=f"{{{U}}}"), ControlCommand("r", U, ControlCommandType.PAUSE)),
    ("uuid urn", control(agent=U.urn), ControlCommand("r", U, ControlCommandType.PAUSE)),
    ("uuid upper-case", control(agent=str(U).upper()), ControlCommand("r", U, ControlCommandType.PAUSE)),
    ("str field as bin", [b"health_check_request", b"r"], HealthCheckRequest("r")),
    ("enum as one-entry map", control(command={"resume": None}), ControlCommand("r", U, ControlCommandType.RESUME)),
    ("enum as map with empty map", control(command={"resume": {}}), ControlCommand("r", U, ControlCommandType.RESUME)),
    ("nanos carried into secs", status(timestamp=[1, 1_000_000_000]),
     StatusUpdate(U, "status_changed", timestamp=2 * 10**9)),
    ("named timestamp", status(timestamp={"nanos_since_epoch": 5, "secs_since_epoch": 1_700_000_000}),
     StatusUpdate(U, "status_changed", timestamp=NS)),
    ("log data as bin (extension)", ["log_stream", U.bytes, "stderr", b"\xff\x00", T, 3],
     LogStreamMessage(U, LogStreamType.STDERR, b"\xff\x00", NS, 3)),
    ("error_response (extension)", ["error_response", "r", "bad"], ErrorResponse("r", "bad")),
]


@pytest.mark.parametrize("name,obj,expected", ACCEPTED, ids=[a[0] for a in ACCEPTED])
def test_accepted(impl, name, obj, expected) -> None:
    assert impl.decode(pack(obj)) == expected


def test_non_minimal_integers(impl) -> None:
    base = pack(["health_check_response", "r", True, "1.0.0", 42])
    for wide in (b"\xcf" + struct.pack(">Q", 42), b"\xd0\x2a", b"\xd3" + struct.pack(">q", 42)):
        message = impl.decode(base[:-1] + wide)
        assert message.uptime_secs == 42
        assert impl.encode(message) == impl.encode(impl.decode(base))


def test_json_floats(impl) -> None:
    f32 = b"\xca" + struct.pack(">f", 1.5)
    raw = pack(control(payload={"a": 0.0}))
    assert impl.decode(raw.replace(b"\xcb" + struct.pack(">d", 0.0), f32)).payload == {"a": 1.5}
    for bad in (float("nan"), float("inf"), float("-inf")):
        assert impl.decode(pack(control(payload={"a": bad}))).payload == {"a": None}


def test_trailing_bytes_ignored(impl) -> None:
    raw = pack(["health_check_request", "r"])
    assert impl.decode(raw + b"\xc1 garbage") == HealthCheckRequest("r")


def test_keys_reversed_in_every_named_vector(impl) -> None:
    def reverse(obj):
        if isinstance(obj, dict):
            return {k: reverse(v) for k, v in reversed(obj.items())}
        if isinstance(obj, list):
            return [reverse(v) for v in obj]
        return obj
    for v in load():
        named = msgpack.unpackb(bytes.fromhex(v["named_hex"]), raw=False, strict_map_key=False)
        assert impl.decode(pack(reverse(named))) == v["message"], v["name"]


REJECTED = [
    # (name, input bytes or object, error class, text the message must contain)
    ("enum as int", control(command=0), E.WrongTypeError, "ControlCommand.command_type: expected ControlCommandType, got int"),
    ("enum as bin", control(command=b"pause"), E.WrongTypeError, "got bin"),
    ("enum wrong case", control(command="Pause"), E.UnknownEnumValueError, "unknown ControlCommandType value 'Pause'"),
    ("enum map with two entries", control(command={"pause": None, "stop": None}), E.InvalidValueError, "one-entry map"),
    ("data as str", ["log_stream", U.bytes, "stdout", "hi", T, 0], E.WrongTypeError, "LogStreamMessage.data"),
    ("time as ext", status(timestamp=msgpack.Timestamp(1_700_000_000, 5)), E.WrongTypeError, "StatusUpdate.timestamp"),
    ("time as int", status(timestamp=1_700_000_000), E.WrongTypeError, "expected timestamp, got int"),
    ("time [secs] alone", status(timestamp=[1]), E.ArityError, "array of 1 elements, expected 2"),
    ("time map unknown key", status(timestamp={"secs": 1, "nanos_since_epoch": 0}), E.ArityError, "unknown field 'secs'"),
    ("time map missing key", status(timestamp={"secs_since_epoch": 1}), E.ArityError, "missing field 'nanos_since_epoch'"),
    ("nanos over u32", status(timestamp=[1, 2**32]), E.OutOfRangeError, "out of range for u32"),
    ("time past i64 seconds", status(timestamp=[2**63, 0]), E.OutOfRangeError, "timestamp"),
    ("nil for a defaulted non-Option", ["spawn_request", "r", cfg("a", "b", "t", None, None, None)],
     E.WrongTypeError, "SpawnRequest.config.environment: expected map, got nil"),
    ("nil for lines", ["output_query_response", "r", U.bytes, True, None], E.WrongTypeError, "OutputQueryResponse.lines"),
    ("int for bool", ["spawn_response", "r", 1], E.WrongTypeError, "SpawnResponse.success: expected bool, got int"),
    ("negative u64", ["spawn_request", "r", [], -1], E.OutOfRangeError, "SpawnRequest.timeout_secs: integer -1 out of range for u64"),
    ("float for u64", ["spawn_request", "r", [], 1.0], E.WrongTypeError, "expected u64, got float"),
    ("i64 overflow", ["spawn_response", "r", True, info(cut=8) + [["u", "k", 2**63]]], E.OutOfRangeError,
     "SpawnResponse.agent_info.attach_info.expires_at: integer 9223372036854775808 out of range for i64"),
    ("u8 overflow in data", ["log_stream", U.bytes, "stdout", [1, 256], T, 0], E.OutOfRangeError,
     "LogStreamMessage.data[1]: integer 256 out of range for u8"),
    ("bin inside a JSON value", control(payload={"a": b"x"}), E.WrongTypeError, "ControlCommand.payload: expected JSON value, got bin"),
    ("int key in a JSON map", control(payload={1: "x"}), E.WrongTypeError, "expected str map key, got int"),
    ("int key in a str map", ["spawn_request", "r", cfg("a", "b", "t", None, None, {1: "x"})], E.WrongTypeError,
     "SpawnRequest.config.environment: expected str map key, got int"),
    ("uuid as 16 ints", control(agent=list(U.bytes)), E.WrongTypeError, "ControlCommand.agent_id: expected UUID, got array"),
    ("uuid bin of 15", control(agent=U.bytes[:15]), E.InvalidValueError, "UUID bin must be 16 bytes, got 15"),
    ("uuid text misplaced hyphens", control(agent="0011223-34455-6677-8899-aabbccddeeff"), E.InvalidValueError, "invalid UUID string"),
    ("unknown tag", ["frobnicate", "r"], E.UnknownMessageTypeError, "unknown message type 'frobnicate'"),
    ("tag index out of range", [15, "r"], E.UnknownMessageTypeError, "unknown message type index 15"),
    ("tag not a string", [None, "r"], E.WrongTypeError, "expected message type tag, got nil"),
    ("empty array", [], E.UnknownMessageTypeError, "missing message type tag"),
    ("map without type", {"request_id": "r"}, E.UnknownMessageTypeError, "missing message type tag"),
    ("map with two types", {"type": "health_check_request", "request_id": "r", b"type": "x"}, E.ArityError, "duplicate field 'type'"),
    ("not an array", 42, E.WrongTypeError, "message: expected array or map, got int"),
    ("too many elements", ["health_check_request", "r", "extra"], E.ArityError,
     "HealthCheckRequest: array of 2 elements, expected 1"),
    ("required field cut", ["health_check_response", "r", True], E.ArityError, "array of 2 elements, expected 3 to 6"),
    ("StatusUpdate cannot be shortened", status()[:-1], E.ArityError, "StatusUpdate: array of 5 elements, expected 6"),
    ("missing field in map", {"type": "spawn_request", "request_id": "r"}, E.ArityError, "SpawnRequest.config: missing field"),
    ("duplicate field in map", ["spawn_request", "r", {"name": "a", b"name": "b"}], E.ArityError,
     "SpawnRequest.config.name: duplicate field"),
    ("bad field-name type", ["spawn_request", "r", {1.5: "a"}], E.WrongTypeError, "SpawnRequest.config: expected field name, got float"),
]


@pytest.mark.parametrize("name,obj,error,text", REJECTED, ids=[r[0] for r in REJECTED])
def test_rejected(impl, name, obj, error, text) -> None:
    with pytest.raises(error) as info_:
        impl.decode(pack(obj))
    assert text in str(info_.value)


@pytest.mark.parametrize("raw,error", [
    (b"", E.TruncatedError), (b"\xc1", E.MalformedError), (b"\x92\xc1", E.MalformedError),
    (b"\x92\xa0\xd9", E.UnknownMessageTypeError), (b"\x92\xd9", E.TruncatedError),
    (b"\x92\xb4health_check_request\xa1\xff", E.InvalidValueError),
    (b"\xdd\xff\xff\xff\xff\xaalog_stream", E.ArityError),
    (b"\x96\xaalog_stream\xc4\x10" + U.bytes + b"\xa6stdout\xdd\xff\xff\xff\xff\x01", E.TruncatedError),
    # a claimed count far beyond the input must not be allocated up front
    (b"\x94\xb4list_agents_response\xa1r\xc3\xdd\x7f\xff\xff\xff", E.TruncatedError),
])
def test_rejected_bytes(impl, raw, error) -> None:
    with pytest.raises(error):
        impl.decode(raw)


def test_every_prefix_of_every_vector_is_truncated(impl) -> None:
    for v in load():
        for form in ("compact_hex", "named_hex"):
            raw = bytes.fromhex(v[form])
            for cut in range(len(raw)):
                with pytest.raises(E.TruncatedError):
                    impl.decode(raw[:cut])


def test_error_names_type_and_field(impl) -> None:
    with pytest.raises(E.DecodeError) as info_:
        impl.decode(pack(["spawn_request", "r", cfg("a", "b", 7)]))
    err = info_.value
    assert (err.message_type, err.path) == ("SpawnRequest", ["config", "task"])
    assert str(err) == "SpawnRequest.config.task: expected str, got int"


def test_nesting_limit(impl) -> None:
    from descartes_fast.wire.constants import MAX_DEPTH

    def nested(levels):
        value = 0
        for _ in range(levels):
            value = [value]
        return value
    # the message is level 1, the payload's outer list level 2
    ok = impl.decode(pack(control(payload=nested(MAX_DEPTH - 1))))
    assert ok.payload == nested(MAX_DEPTH - 1)
    with pytest.raises(E.NestingTooDeepError, match=r"ControlCommand\.payload"):
        impl.decode(pack(control(payload=nested(MAX_DEPTH))))
    deep = b"\x91" * 100_000 + b"\x00"  # far deeper than Python's recursion limit
    with pytest.raises(E.NestingTooDeepError):
        impl.decode(b"\x82\xa4type\xb4health_check_request\xa1x" + deep)


def test_oversize_refused_before_decoding(impl) -> None:
    with pytest.raises(E.MessageTooLargeError):
        impl.decode(b"\xc1" * (MAX_MESSAGE_SIZE + 1))
    big = LogStreamMessage(U, LogStreamType.STDOUT, b"\x01" * (MAX_MESSAGE_SIZE - 64), NS, 0)
    raw = impl.encode(big)
    assert len(raw) <= MAX_MESSAGE_SIZE
    assert impl.decode(raw) == big
    with pytest.raises(E.MessageTooLargeError):
        impl.encode(LogStreamMessage(U, LogStreamType.STDOUT, b"\x01" * MAX_MESSAGE_SIZE, NS, 0))


def test_input_buffer_types(impl) -> None:
    import zmq
    raw = impl.encode(CommandResponse("r", U, True, AgentStatus.RUNNING, {"x": [1, "y"]}))
    expected = impl.decode(raw)
    for buf in (bytearray(raw), memoryview(raw), zmq.Frame(raw), memoryview(b"xx" + raw)[2:]):
        assert impl.decode(buf) == expected
    with pytest.raises(TypeError, match="bytes-like"):
        impl.decode(raw.hex())
    with pytest.raises(TypeError, match="contiguous"):
        impl.decode(memoryview(raw)[::2])
