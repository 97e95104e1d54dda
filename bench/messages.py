"""Benchmark content: realistic messages, and the same content in every reference form.

Each case gives one message object (what a descartes_fast user encodes) and, built
once from it outside any timing:

* ``list_form``  - the rmp-serde compact layout as plain Python data
  (``[tag, field1, ...]``, UUID = 16 ``bytes``, timestamp = ``[secs, nanos]``,
  LogStream ``data`` = list of ints); ``msgpack.packb(list_form)`` is the wire bytes;
* ``dict_form``  - the same content in the named layout (``rmp_serde::to_vec_named``):
  every struct a map keyed by field name, the tag under ``"type"`` first, a
  timestamp ``{"secs_since_epoch": s, "nanos_since_epoch": ns}``;
* ``struct``     - a msgspec ``Struct(array_like=True)`` instance (classes below), whose
  encoding is the same bytes as the compact form.

The msgspec classes are declared here by hand (field order from ``schema.py`` /
docs/protocol.md §4), so comparing their bytes with our encoder's is an independent check.
UUIDs stay :class:`uuid.UUID` (the encoder uses ``uuid_format="bytes"``, giving bin8 of 16
bytes like rmp-serde), enums stay the schema's StrEnum classes, timestamps are
``tuple[int, int]`` and LogStream data is ``list[int]``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Union

import msgpack
import msgspec

from descartes_fast.wire import layout as L
from descartes_fast.wire.schema import (
    AgentConfig,
    AgentInfo,
    AgentStatus,
    AttachInfo,
    CommandResponse,
    ControlCommand,
    ControlCommandType,
    ListAgentsResponse,
    LogStreamMessage,
    LogStreamType,
    PauseMode,
    SpawnRequest,
    SpawnResponse,
    StatusUpdate,
    StatusUpdateType,
)

__all__ = ["Case", "CASES", "CASE_IDS", "MSGSPEC_TYPES", "msgspec_encoder", "msgspec_decoder",
           "to_list_form", "to_dict_form"]

NANOS = 1_000_000_000

# -- the msgspec reference classes (array_like = rmp-serde compact layout) -------------

Timestamp = tuple[int, int]  # [secs, nanos]


class AttachInfoS(msgspec.Struct, array_like=True):
    connect_url: str
    token: str
    expires_at: int


class AgentConfigS(msgspec.Struct, array_like=True):
    name: str = ""
    model_backend: str = ""
    task: str = ""
    context: str | None = None
    system_prompt: str | None = None
    environment: dict[str, str] = {}
    model: str | None = None
    tool_level: str | None = None
    agents: dict[str, Any] | None = None


class AgentInfoS(msgspec.Struct, array_like=True):
    id: uuid.UUID
    name: str
    status: AgentStatus
    model_backend: str
    started_at: Timestamp
    task: str
    paused_at: Timestamp | None = None
    pause_mode: PauseMode | None = None
    attach_info: AttachInfoS | None = None


class _Msg(msgspec.Struct, array_like=True, tag_field="type"):
    pass


class SpawnRequestS(_Msg, tag="spawn_request"):
    request_id: str
    config: AgentConfigS
    timeout_secs: int | None = None
    metadata: dict[str, str] | None = None


class SpawnResponseS(_Msg, tag="spawn_response"):
    request_id: str
    success: bool
    agent_info: AgentInfoS | None = None
    error: str | None = None
    server_id: str | None = None


class ControlCommandS(_Msg, tag="control_command"):
    request_id: str
    agent_id: uuid.UUID
    command_type: ControlCommandType
    payload: Any = None


class CommandResponseS(_Msg, tag="command_response"):
    request_id: str
    agent_id: uuid.UUID
    success: bool
    status: AgentStatus | None = None
    data: Any = None
    error: str | None = None


class StatusUpdateS(_Msg, tag="status_update"):
    agent_id: uuid.UUID
    update_type: StatusUpdateType
    status: AgentStatus | None
    message: str | None
    data: Any
    timestamp: Timestamp


class ListAgentsResponseS(_Msg, tag="list_agents_response"):
    request_id: str
    success: bool
    agents: list[AgentInfoS] = []
    error: str | None = None


class LogStreamMessageS(_Msg, tag="log_stream"):
    agent_id: uuid.UUID
    stream_type: LogStreamType
    data: list[int]  # Vec<u8> is an array of ints on the wire
    timestamp: Timestamp
    sequence: int


MSGSPEC_TYPES = (SpawnRequestS, SpawnResponseS, ControlCommandS, CommandResponseS,
                 StatusUpdateS, ListAgentsResponseS, LogStreamMessageS)


def msgspec_encoder() -> msgspec.msgpack.Encoder:
    """A reusable encoder writing UUIDs as bin8 of 16 bytes (as rmp-serde does)."""
    return msgspec.msgpack.Encoder(uuid_format="bytes")


def msgspec_decoder(*types: type) -> msgspec.msgpack.Decoder:
    """A decoder of the tagged union of *types* (default: every reference class)."""
    types = types or MSGSPEC_TYPES
    return msgspec.msgpack.Decoder(Union[types] if len(types) > 1 else types[0])  # type: ignore[valid-type]  # noqa: UP007


# -- generic conversions of a schema object (done once, outside the timing) ----------


def _value(v: Any, t: L.TypeSpec, named: bool) -> Any:
    if v is None:
        return None
    k = t.kind
    if k == L.K_UUID:
        return v.bytes
    if k == L.K_TIME:
        secs, nanos = divmod(v, NANOS)
        return {"secs_since_epoch": secs, "nanos_since_epoch": nanos} if named else [secs, nanos]
    if k == L.K_ENUM:
        return v.value
    if k == L.K_STRUCT:
        return _struct(v, L.BY_CLASS[t.ref], named)
    if k == L.K_BYTES:
        return list(v)
    if k == L.K_BIN:
        return bytes(v)
    if k == L.K_LIST:
        return [_value(e, t.elem, named) for e in v]
    if k == L.K_MAP:
        return {key: _value(e, t.elem, named) for key, e in v.items()}
    return v  # str, bool, ints, JSON values


def _struct(obj: Any, spec: L.StructSpec, named: bool) -> Any:
    if named:
        out: Any = {"type": spec.tag} if spec.tag is not None else {}
        for f in spec.fields:
            out[f.name] = _value(getattr(obj, f.name), f.type, True)
        return out
    out = [spec.tag] if spec.tag is not None else []
    out.extend(_value(getattr(obj, f.name), f.type, False) for f in spec.fields)
    return out


def to_list_form(msg: Any) -> list:
    """The rmp-serde compact layout of *msg* as plain Python data."""
    return _struct(msg, L.BY_CLASS[type(msg)], named=False)


def to_dict_form(msg: Any) -> dict:
    """The rmp-serde named layout (``to_vec_named``) of *msg* as plain Python data."""
    return _struct(msg, L.BY_CLASS[type(msg)], named=True)


# -- the content -----------------------------------------------------------------------

T0 = 1_763_966_492_118_734_201  # 2025-11-24T06:41:32.118734201Z, in ns
AGENT_ID = uuid.UUID("3f2b8c1e-9d4a-4e7b-a1c6-5e8f0d2b7a94")


def spawn_request() -> SpawnRequest:
    """A typical spawn: one-sentence task, system prompt, one environment entry, model, 300 s."""
    return SpawnRequest(
        request_id="req-5b1e7c42-spawn",
        config=AgentConfig(
            name="payments-reviewer",
            model_backend="claude",
            task="Review the open pull request in the payments service and list every correctness or security issue.",
            system_prompt="You are a careful senior engineer. Be concise and cite file paths and line numbers.",
            environment={"GIT_BRANCH": "feature/refund-retries"},
            model="claude-sonnet-4-5",
        ),
        timeout_secs=300,
    )


def _agent_info(i: int, agent_id: uuid.UUID, full: bool) -> AgentInfo:
    started = T0 - (i + 1) * 37_000_000_123
    if full:
        return AgentInfo(
            id=agent_id,
            name=f"payments-reviewer-{i}",
            status=AgentStatus.PAUSED,
            model_backend="claude",
            started_at=started,
            task="Review the open pull request in the payments service and list every correctness or security issue.",
            paused_at=started + 12_500_000_000,
            pause_mode=PauseMode.FORCED,
            attach_info=AttachInfo(
                connect_url=f"ipc:///run/descartes/attach/{agent_id}.sock",
                token="att_9fQk2LxV7mR4tW1zB8cN3yH6",
                expires_at=(started // NANOS) + 3600,
            ),
        )
    return AgentInfo(
        id=agent_id,
        name=f"worker-{i:03d}",
        status=(AgentStatus.RUNNING, AgentStatus.THINKING, AgentStatus.IDLE,
                AgentStatus.COMPLETED)[i % 4],
        model_backend=("claude", "opencode")[i % 2],
        started_at=started,
        task=f"Fix the failing test number {i} in tests/integration and open a pull request.",
    )


def spawn_response() -> SpawnResponse:
    """A successful spawn reply with every AgentInfo field set (paused, forced, attach info)."""
    return SpawnResponse(request_id="req-5b1e7c42-spawn", success=True,
                         agent_info=_agent_info(0, AGENT_ID, full=True),
                         server_id="descartes-node-eu-west-1a")


def control_command() -> ControlCommand:
    return ControlCommand(request_id="req-9c03d1aa-pause", agent_id=AGENT_ID,
                          command_type=ControlCommandType.PAUSE, payload={"force": True})


def command_response() -> CommandResponse:
    # JSON object keys sorted, as serde_json (BTreeMap) would write them; one float,
    # which every candidate writes as float64.
    return CommandResponse(
        request_id="req-9c03d1aa-pause", agent_id=AGENT_ID, success=True,
        status=AgentStatus.PAUSED,
        data={"cpu_seconds": 12.75, "mode": "forced", "paused_at": "2025-11-24T06:41:32.118Z",
              "pid": 48213, "queued_messages": 3})


def status_update() -> StatusUpdate:
    return StatusUpdate(agent_id=AGENT_ID, update_type=StatusUpdateType.STATUS_CHANGED,
                        status=AgentStatus.RUNNING, message="Agent resumed after pause",
                        data={"previous": "paused"}, timestamp=T0)


_LOG_LINE = b"2025-11-24T06:41:32.118Z INFO tool_call read_file path=src/payments/refund.py\n"


def log_stream(size: int) -> LogStreamMessage:
    """A stdout chunk of exactly *size* bytes of log lines."""
    data = (_LOG_LINE * (size // len(_LOG_LINE) + 1))[:size]
    return LogStreamMessage(agent_id=AGENT_ID, stream_type=LogStreamType.STDOUT, data=data,
                            timestamp=T0, sequence=1742)


def list_agents_response(n: int = 100) -> ListAgentsResponse:
    agents = [_agent_info(i, uuid.UUID(int=(AGENT_ID.int + i * 0x9E3779B97F4A7C15) % (1 << 128)),
                          full=(i % 10 == 0)) for i in range(n)]
    return ListAgentsResponse(request_id="req-1d7e22f0-list", success=True, agents=agents)


@dataclass(frozen=True)
class Case:
    """One message and the same content in every reference form (built once)."""

    id: str
    msg: Any
    list_form: list
    dict_form: dict
    compact: bytes   # msgpack.packb(list_form): the rmp-serde wire bytes
    named: bytes     # msgpack.packb(dict_form)
    struct: Any      # msgspec Struct(array_like=True) with the same content


def _case(case_id: str, msg: Any) -> Case:
    list_form = to_list_form(msg)
    dict_form = to_dict_form(msg)
    compact = msgpack.packb(list_form, use_bin_type=True)
    # The Struct is built by msgspec itself from the compact bytes, then checked to
    # re-encode to exactly those bytes; every Struct field is typed, so this is a real
    # conversion (bytes -> UUID, str -> enum, arrays -> nested Structs).
    struct = msgspec_decoder().decode(compact)
    assert msgspec_encoder().encode(struct) == compact, case_id
    return Case(case_id, msg, list_form, dict_form, compact,
                msgpack.packb(dict_form, use_bin_type=True), struct)


def _build() -> dict[str, Case]:
    return {c.id: c for c in (
        _case("spawn_request", spawn_request()),
        _case("spawn_response", spawn_response()),
        _case("control_command", control_command()),
        _case("command_response", command_response()),
        _case("status_update", status_update()),
        _case("log_stream_80B", log_stream(80)),
        _case("log_stream_64KiB", log_stream(64 * 1024)),
        _case("list_agents_100", list_agents_response(100)),
    )}


CASES: dict[str, Case] = _build()
CASE_IDS: list[str] = list(CASES)


if __name__ == "__main__":  # print the sizes
    for c in CASES.values():
        print(f"{c.id:18} compact {len(c.compact):7,} B   named {len(c.named):7,} B")
