"""The wire schema: every message and nested type, once.

This module is the single source of truth for the Descartes protocol. Each class
lists its fields in wire order (the order of the Rust struct, see
docs/protocol.md §4); both codec twins derive
their tables from these declarations (:mod:`descartes_fast.wire.layout`).

Conventions
-----------
* A field with a Python default is ``#[serde(default)]`` on the Rust side: it may be
  omitted from a shortened array or a map on the wire, and the default is used.
  A field without a default is required.
* ``u64`` / ``i64`` mark integer widths; ``Timestamp`` is an ``int`` of nanoseconds
  since the Unix epoch (the wire carries ``[secs, nanos]``, so it round-trips exactly);
  ``JsonValue`` is any JSON-like value (``None``, ``bool``, ``int``, ``float``,
  ``str``, ``list``, ``dict`` with ``str`` keys).
* UUIDs are :class:`uuid.UUID`; enums are :class:`enum.StrEnum` whose values are the
  wire strings.
"""

from __future__ import annotations

import enum
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Final, TypeVar, dataclass_transform

from descartes_fast.wire.constants import MAX_MESSAGE_SIZE, PROTOCOL_VERSION

__all__ = [
    "PROTOCOL_VERSION", "MAX_MESSAGE_SIZE", "u64", "i64", "Timestamp", "JsonValue",
    "now", "AgentStatus", "PauseMode", "ControlCommandType", "StatusUpdateType",
    "LogStreamType", "ZmqOutputStream", "AttachInfo", "AgentConfig", "AgentInfo",
    "BatchAgentResult", "SpawnRequest", "SpawnResponse", "ControlCommand",
    "CommandResponse", "StatusUpdate", "ListAgentsRequest", "ListAgentsResponse",
    "HealthCheckRequest", "HealthCheckResponse", "CustomActionRequest",
    "BatchControlCommand", "BatchControlResponse", "OutputQueryRequest",
    "OutputQueryResponse", "LogStreamMessage", "ErrorResponse", "OutputReadRequest", "OutputReadResponse",
    "Message", "Bin",
    "MESSAGE_TYPES", "RUST_MESSAGE_TYPES", "STRUCT_TYPES", "ENUM_TYPES",
]



class Wire(enum.StrEnum):
    """Wire representations that Python's own types do not pin down."""

    U64 = "u64"
    I64 = "i64"
    TIMESTAMP = "timestamp"
    JSON = "json"
    BIN = "bin"


u64 = Annotated[int, Wire.U64]
i64 = Annotated[int, Wire.I64]
Timestamp = Annotated[int, Wire.TIMESTAMP]
JsonValue = Annotated[Any, Wire.JSON]
#: bytes written as MessagePack ``bin`` (Rust's ``Vec<u8>`` is an array of ints: only in our extensions)
Bin = Annotated[bytes, Wire.BIN]


def now() -> int:
    """The current time as a :data:`Timestamp` (nanoseconds since the Unix epoch)."""
    return time.time_ns()


# -- enums (wire strings are the values) ---------------------------------------------


class AgentStatus(enum.StrEnum):
    IDLE = "idle"
    INITIALIZING = "initializing"
    RUNNING = "running"
    THINKING = "thinking"
    PAUSED = "paused"
    COMPLETED = "completed"
    FAILED = "failed"
    TERMINATED = "terminated"

    def is_terminal(self) -> bool:
        """True for ``completed``, ``failed`` and ``terminated``."""
        return self in _TERMINAL


_TERMINAL = frozenset({AgentStatus.COMPLETED, AgentStatus.FAILED, AgentStatus.TERMINATED})


class PauseMode(enum.StrEnum):
    COOPERATIVE = "cooperative"
    FORCED = "forced"


class ControlCommandType(enum.StrEnum):
    PAUSE = "pause"
    RESUME = "resume"
    STOP = "stop"
    KILL = "kill"
    WRITE_STDIN = "write_stdin"
    READ_STDOUT = "read_stdout"
    READ_STDERR = "read_stderr"
    GET_STATUS = "get_status"
    SIGNAL = "signal"
    CUSTOM_ACTION = "custom_action"
    QUERY_OUTPUT = "query_output"
    STREAM_LOGS = "stream_logs"


class StatusUpdateType(enum.StrEnum):
    STATUS_CHANGED = "status_changed"
    OUTPUT_AVAILABLE = "output_available"
    ERROR = "error"
    COMPLETED = "completed"
    TERMINATED = "terminated"
    HEARTBEAT = "heartbeat"


class LogStreamType(enum.StrEnum):
    STDOUT = "stdout"
    STDERR = "stderr"


class ZmqOutputStream(enum.StrEnum):
    STDOUT = "stdout"
    STDERR = "stderr"
    BOTH = "both"


# -- nested structs -------------------------------------------------------------------

_T = TypeVar("_T")
STRUCT_TYPES: list[type] = []
#: Every message class in Rust variant order (index = the variant index on the wire),
#: then the descartes_fast extensions.
MESSAGE_TYPES: list[type[Message]] = []


@dataclass_transform(field_specifiers=(field,))
def _struct(cls: type[_T]) -> type[_T]:
    out = dataclass(slots=True)(cls)
    STRUCT_TYPES.append(out)
    return out


@dataclass_transform(field_specifiers=(field,))
def _message(tag: str) -> Callable[[type[_T]], type[_T]]:
    def wrap(cls: type[_T]) -> type[_T]:
        out = dataclass(slots=True)(cls)
        out.TAG = tag  # type: ignore[attr-defined]  # the class attribute Message declares
        MESSAGE_TYPES.append(out)  # type: ignore[arg-type]
        return out

    return wrap


@_struct
class AttachInfo:
    connect_url: str
    token: str
    expires_at: i64


@_struct
class AgentConfig:
    name: str = ""
    model_backend: str = ""
    task: str = ""
    context: str | None = None
    system_prompt: str | None = None
    environment: dict[str, str] = field(default_factory=dict)
    model: str | None = None
    tool_level: str | None = None
    agents: dict[str, JsonValue] | None = None


@_struct
class AgentInfo:
    id: uuid.UUID
    name: str
    status: AgentStatus
    model_backend: str
    started_at: Timestamp
    task: str
    paused_at: Timestamp | None = None
    pause_mode: PauseMode | None = None
    attach_info: AttachInfo | None = None


@_struct
class BatchAgentResult:
    agent_id: uuid.UUID
    success: bool
    status: AgentStatus | None = None
    error: str | None = None


# -- messages (declaration order = Rust variant index) ---------------------------------


class Message:
    """Base of every message class; ``TAG`` is the wire tag (element 0)."""

    __slots__ = ()
    TAG: str


@_message("spawn_request")
class SpawnRequest(Message):
    request_id: str
    config: AgentConfig
    timeout_secs: u64 | None = None
    metadata: dict[str, str] | None = None


@_message("spawn_response")
class SpawnResponse(Message):
    request_id: str
    success: bool
    agent_info: AgentInfo | None = None
    error: str | None = None
    server_id: str | None = None


@_message("control_command")
class ControlCommand(Message):
    request_id: str
    agent_id: uuid.UUID
    command_type: ControlCommandType
    payload: JsonValue | None = None


@_message("command_response")
class CommandResponse(Message):
    request_id: str
    agent_id: uuid.UUID
    success: bool
    status: AgentStatus | None = None
    data: JsonValue | None = None
    error: str | None = None


@_message("status_update")
class StatusUpdate(Message):
    agent_id: uuid.UUID
    update_type: StatusUpdateType
    status: AgentStatus | None = None
    message: str | None = None
    data: JsonValue | None = None
    # Required on the wire; keyword-only in Python because it follows defaulted fields.
    timestamp: Timestamp = field(kw_only=True)


@_message("list_agents_request")
class ListAgentsRequest(Message):
    request_id: str
    filter_status: AgentStatus | None = None
    limit: u64 | None = None


@_message("list_agents_response")
class ListAgentsResponse(Message):
    request_id: str
    success: bool
    agents: list[AgentInfo] = field(default_factory=list)
    error: str | None = None


@_message("health_check_request")
class HealthCheckRequest(Message):
    request_id: str


@_message("health_check_response")
class HealthCheckResponse(Message):
    request_id: str
    healthy: bool
    protocol_version: str
    uptime_secs: u64 | None = None
    active_agents: u64 | None = None
    metadata: dict[str, str] | None = None


@_message("custom_action_request")
class CustomActionRequest(Message):
    request_id: str
    agent_id: uuid.UUID
    action: str
    params: JsonValue | None = None
    timeout_secs: u64 | None = None


@_message("batch_control_command")
class BatchControlCommand(Message):
    request_id: str
    agent_ids: list[uuid.UUID]
    command_type: ControlCommandType
    payload: JsonValue | None = None
    fail_fast: bool = False


@_message("batch_control_response")
class BatchControlResponse(Message):
    request_id: str
    success: bool
    results: list[BatchAgentResult]
    successful: u64
    failed: u64


@_message("output_query_request")
class OutputQueryRequest(Message):
    request_id: str
    agent_id: uuid.UUID
    stream: ZmqOutputStream
    filter: str | None = None
    limit: u64 | None = None
    offset: u64 | None = None


@_message("output_query_response")
class OutputQueryResponse(Message):
    request_id: str
    agent_id: uuid.UUID
    success: bool
    lines: list[str] = field(default_factory=list)
    total_lines: u64 | None = None
    has_more: bool = False
    error: str | None = None


@_message("log_stream")
class LogStreamMessage(Message):
    agent_id: uuid.UUID
    stream_type: LogStreamType
    data: bytes
    timestamp: Timestamp
    sequence: u64


#: The 15 variants of Rust's ``ZmqMessage``, in variant-index order.
RUST_MESSAGE_TYPES: Final = tuple(MESSAGE_TYPES)


@_message("error_response")
class ErrorResponse(Message):
    """Reply to a request that could not be decoded (docs/protocol.md §4.19; not a Rust variant).

    A Rust client reports it at once as an unknown variant instead of waiting for a
    timeout; our client raises it as the server's error.
    """

    request_id: str
    error: str


@_message("output_read_request")
class OutputReadRequest(Message):
    """Read an agent's stored output as raw bytes (docs/protocol.md §4.20; not a Rust variant).

    It starts at *offset* (a byte of the stream), *sequence* (a chunk, as numbered in the log
    stream), or *line*, whichever is given first; with none, at the first byte still stored.
    """

    request_id: str
    agent_id: uuid.UUID
    stream: LogStreamType
    offset: u64 | None = None
    sequence: u64 | None = None
    line: u64 | None = None
    max_bytes: u64 | None = None


@_message("output_read_response")
class OutputReadResponse(Message):
    """Stored output and the facts about the stream (docs/protocol.md §4.21; not a Rust variant).

    *data* holds the bytes from *offset*: the chunks numbered *sequence*, *sequence* + 1, ...,
    ending at *chunk_ends* (absolute offsets), written at *chunk_times*; *line* is the line
    number at *offset*. The ``first_*`` fields say what is still stored (what came before was
    dropped by the retention budget), the ``end_*`` fields what was ever written, and *ended*
    whether the agent has ended (nothing after the ``end_*`` will come).
    """

    request_id: str
    agent_id: uuid.UUID
    success: bool
    stream: LogStreamType | None = None
    data: Bin = b""
    offset: u64 = 0
    sequence: u64 = 0
    line: u64 = 0
    chunk_ends: list[u64] = field(default_factory=list)
    chunk_times: list[Timestamp] = field(default_factory=list)
    first_offset: u64 = 0
    first_sequence: u64 = 0
    first_line: u64 = 0
    end_offset: u64 = 0
    end_sequence: u64 = 0
    end_line: u64 = 0
    ended: bool = False
    error: str | None = None


ENUM_TYPES: Final = (AgentStatus, PauseMode, ControlCommandType, StatusUpdateType,
                     LogStreamType, ZmqOutputStream)
