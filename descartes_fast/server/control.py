"""Request handlers: what each message does to the supervisor, and the reply it gets.

Behaviour and texts follow the Rust server's (docs/protocol.md §6) with our fixes (§9). This
module knows nothing of sockets; :mod:`descartes_fast.server` wires it to ZeroMQ.
"""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from typing import Any, Final

from descartes_fast.agents.store import StoreError, WouldBlock
from descartes_fast.agents.supervisor import Agent, Supervisor, SupervisorError
from descartes_fast.wire.schema import (
    AgentStatus,
    BatchAgentResult,
    BatchControlCommand,
    BatchControlResponse,
    CommandResponse,
    ControlCommand,
    ControlCommandType,
    CustomActionRequest,
    ListAgentsRequest,
    ListAgentsResponse,
    LogStreamType,
    OutputQueryRequest,
    OutputQueryResponse,
    OutputReadRequest,
    OutputReadResponse,
    SpawnRequest,
    ZmqOutputStream,
)

__all__ = ["Controller", "debug_status", "read_size", "spawn_size"]

_STREAMS = {ZmqOutputStream.STDOUT: (LogStreamType.STDOUT,), ZmqOutputStream.STDERR: (LogStreamType.STDERR,),
            ZmqOutputStream.BOTH: (LogStreamType.STDOUT, LogStreamType.STDERR)}
_C = ControlCommandType
#: bytes an output_read answers with by default (measured: larger pages cost more than they save in page
#: faults of fresh buffers), and at most (a reply stays far below MAX_MESSAGE_SIZE,
#: and one read and its encoding stay well under a millisecond or two of the event loop)
READ_DEFAULT: Final = 512 << 10
READ_MAX: Final = 4 << 20


_DEBUG = {s: s.value.capitalize() for s in AgentStatus}


def debug_status(status: AgentStatus) -> str:
    """Rust's ``{:?}`` of AgentStatus (``"Running"``), used in some payloads (docs/protocol.md §6.6)."""
    return _DEBUG[status]


def _text(line: bytes) -> dict[str, Any]:
    """A line as JSON: text, plus the exact bytes when they are not UTF-8."""
    try:
        return {"data": line.decode("utf-8")}
    except UnicodeDecodeError:
        return {"data": line.decode("utf-8", "replace"), "raw": list(line)}


def read_size(msg: OutputReadRequest) -> int:
    """The most bytes of output an output_read answers with."""
    return min(msg.max_bytes or READ_DEFAULT, READ_MAX)


def spawn_size(msg: SpawnRequest) -> int:
    """About the bytes a spawn request holds while the agent starts (its text, as decoded)."""
    config = msg.config
    texts = (config.name, config.task, config.context, config.system_prompt, config.model, config.tool_level)
    return 1024 + sum(len(t) for t in texts if t) + sum(len(k) + len(v) for k, v in config.environment.items())


class Controller:
    """Runs control commands, custom actions, batches, list and output queries."""

    def __init__(self, supervisor: Supervisor, pub_endpoint: str | None) -> None:
        self.sup = supervisor
        self.pub_endpoint = pub_endpoint
        self._commands = {
            _C.PAUSE: self._pause, _C.RESUME: self._resume, _C.STOP: self._stop, _C.KILL: self._kill,
            _C.GET_STATUS: self._get_status, _C.WRITE_STDIN: self._write_stdin,
            _C.READ_STDOUT: self._read_stdout, _C.READ_STDERR: self._read_stderr, _C.SIGNAL: self._signal,
            _C.CUSTOM_ACTION: self._custom_action, _C.QUERY_OUTPUT: self._drain_output,
            _C.STREAM_LOGS: self._stream_logs,
        }
        assert set(self._commands) == set(_C)

    # -- control_command --

    def control(self, msg: ControlCommand, envelope: list | None = None) -> CommandResponse:
        return self.command(msg.request_id, msg.agent_id, msg.command_type, msg.payload)

    def command(self, request_id: str, agent_id: uuid.UUID, kind: ControlCommandType,
                payload: Any) -> CommandResponse:
        """One command; the reply carries the agent's status after it (docs/protocol.md §6.3)."""
        try:
            agent = self.sup.get(agent_id)
        except SupervisorError as exc:
            return CommandResponse(request_id, agent_id, False, None, None, str(exc))
        try:
            data = self._commands[kind](agent, payload if isinstance(payload, dict) else {}, payload)
        except SupervisorError as exc:
            return CommandResponse(request_id, agent_id, False, agent.status, None, str(exc))
        return CommandResponse(request_id, agent_id, True, agent.status, data, None)

    # Each command: (agent, payload as a dict or {}, payload as sent) -> reply data.

    def _pause(self, agent: Agent, args: dict, payload: Any) -> Any:
        mode = self.sup.pause(agent.id, force=args.get("force") is True)
        return {"mode": mode.value, "paused": True}

    def _resume(self, agent: Agent, args: dict, payload: Any) -> Any:
        self.sup.resume(agent.id)
        return {"resumed": True}

    def _stop(self, agent: Agent, args: dict, payload: Any) -> Any:
        return None if self.sup.stop(agent.id) else {"already": agent.status.value}

    def _kill(self, agent: Agent, args: dict, payload: Any) -> Any:
        return None if self.sup.kill(agent.id) else {"already": agent.status.value}

    def _get_status(self, agent: Agent, args: dict, payload: Any) -> Any:
        """Rust's ``status``, and (ours) how and when the agent's processes ended; with payload
        ``{"usage": true}``, what it uses now (read from the kernel: asked for by ``top`` only)."""
        size = agent.process.terminal_size()
        extra: dict[str, Any] = {"terminal": {"rows": size[0], "cols": size[1]}} if size is not None else {}
        if agent.running and args.get("usage") is True:
            cpu, memory = agent.process.usage_now()
            extra["usage"] = {"cpu_secs": round(cpu, 3) if cpu is not None else None, "memory_bytes": memory}
        extra["output_bytes"] = sum(agent.facts(s).end_offset for s in LogStreamType)
        return {"status": _DEBUG[agent.status], **agent.ending(), **extra}

    def _write_stdin(self, agent: Agent, args: dict, payload: Any) -> Any:
        raw = args.get("data")
        if isinstance(raw, bytes) or (isinstance(raw, str) and raw.isascii()):  # its size, without encoding it
            self.sup.check_stdin_room(agent.id, len(raw))
        data = _stdin_bytes(args)
        taken, queued = self.sup.write_stdin(agent.id, data, eof=args.get("eof") is True)
        # bytes_written (as Rust): all of it was accepted; of it the pipe took to_pipe at once, and
        # queued bytes (this write's and earlier ones) wait in the server for the agent to read them
        return {"bytes_written": len(data), "to_pipe": taken, "queued": queued,
                "stdin_buffer": self.sup.stdin_buffer}

    def _read_stdout(self, agent: Agent, args: dict, payload: Any) -> Any:
        return self._read(agent, LogStreamType.STDOUT)

    def _read_stderr(self, agent: Agent, args: dict, payload: Any) -> Any:
        return self._read(agent, LogStreamType.STDERR)

    def _read(self, agent: Agent, stream: LogStreamType) -> Any:
        line = self.sup.read_next(agent.id, stream)
        facts = {"output": agent.facts(stream).as_dict()}  # what exists and what was dropped (§6.20)
        if line is None:
            return {"bytes": 0, "data": None, "message": f"No data available in {stream.value} buffer", **facts}
        return {"bytes": len(line), **_text(line), **facts}

    def _signal(self, agent: Agent, args: dict, payload: Any) -> Any:
        name = args.get("signal")
        if not isinstance(name, str):
            raise SupervisorError("Agent execution error: Signal command requires payload with 'signal' field")
        return {"signal_sent": self.sup.send_signal(agent.id, name)}

    def _custom_action(self, agent: Agent, args: dict, payload: Any) -> Any:
        if payload is None:
            raise SupervisorError("Agent execution error: CustomAction command requires payload with "
                                  "'action' field")
        action = args.get("action")
        return self.custom(agent, action if isinstance(action, str) else "unknown", args.get("params"))

    def _stream_logs(self, agent: Agent, args: dict, payload: Any) -> Any:
        if self.pub_endpoint is None:
            raise SupervisorError("Agent execution error: Log streaming not enabled on this server "
                                  "(no pub_endpoint configured)")
        return {"enabled": True, "pub_endpoint": self.pub_endpoint, "topic": str(agent.id),
                "instructions": "Connect SUB socket to pub_endpoint, subscribe to topic filter",
                "output": {s.value: agent.facts(s).as_dict() for s in LogStreamType}}

    def custom(self, agent: Agent, action: str, params: Any) -> dict[str, Any]:
        """The built-in custom actions of the reference (echo, ping, get_env) and ours: say, resize."""
        if action == "echo":
            return {"action": "echo", "result": params}
        if action == "ping":
            return {"action": "ping", "agent_id": str(agent.id), "result": "pong"}
        if action == "get_env":
            since = (time.time_ns() - agent.started_at) // 1_000_000_000
            return {"action": "get_env", "result": {"agent_id": str(agent.id), "last_status_update_secs": since,
                                                    "name": agent.config.name,
                                                    "status": debug_status(agent.status),
                                                    "pid": agent.pid, "exit_code": agent.exit_code}}
        if action == "say":  # ours: a session's next turn
            args = params if isinstance(params, dict) else {}
            text, end = args.get("text"), args.get("end") is True
            if text is not None and not isinstance(text, str):
                raise SupervisorError("Agent execution error: say wants params {'text': str, 'end': bool}")
            return {"action": "say", "result": self.sup.say(agent.id, text, end)}
        if action == "resize":  # ours: the size of a terminal agent's terminal
            args = params if isinstance(params, dict) else {}
            if "rows" not in args or "cols" not in args:
                raise SupervisorError("Agent execution error: resize wants params {'rows': int, 'cols': int}")
            return {"action": "resize", "result": self.sup.resize(agent.id, args["rows"], args["cols"])}
        raise SupervisorError(f"Agent execution error: Unknown custom action '{action}'. "
                              "Available actions: echo, ping, get_env, say, resize")

    def _drain_output(self, agent: Agent, args: dict, payload: Any) -> dict[str, Any]:
        max_lines = args.get("max_lines")
        if not isinstance(max_lines, int) or isinstance(max_lines, bool) or max_lines < 0:
            max_lines = 100
        out: dict[str, Any] = {}
        for stream in (LogStreamType.STDERR, LogStreamType.STDOUT):
            lines: list[str] = []
            if args.get(stream.value) is not False:
                while len(lines) < max_lines and (line := self.sup.read_next(agent.id, stream)) is not None:
                    lines.append(line.decode("utf-8", "replace"))
            out[stream.value] = lines
            out[f"{stream.value}_lines"] = len(lines)
        out["output"] = {s.value: agent.facts(s).as_dict() for s in LogStreamType}
        return out

    # -- the other request types (handlers take the request and its envelope, unused here) --

    def custom_action(self, msg: CustomActionRequest, envelope: list | None = None) -> CommandResponse:
        return self.command(msg.request_id, msg.agent_id, _C.CUSTOM_ACTION,
                            {"action": msg.action, "params": msg.params})

    def batch(self, msg: BatchControlCommand, envelope: list | None = None) -> BatchControlResponse:
        results = []
        for agent_id in msg.agent_ids:
            reply = self.command(msg.request_id, agent_id, msg.command_type, msg.payload)
            results.append(BatchAgentResult(agent_id, reply.success, reply.status, reply.error))
            if msg.fail_fast and not reply.success:
                break
        ok = sum(r.success for r in results)
        return BatchControlResponse(msg.request_id, ok == len(msg.agent_ids), results, ok, len(results) - ok)

    def list_agents(self, msg: ListAgentsRequest, envelope: list | None = None) -> ListAgentsResponse:
        agents = self.sup.agents(msg.filter_status, msg.limit)
        return ListAgentsResponse(msg.request_id, True, [a.info() for a in agents])

    async def output_query(self, msg: OutputQueryRequest, envelope: list | None = None) -> OutputQueryResponse:
        """Stored lines (read and filtered on a worker thread: the event loop goes on meanwhile)."""
        try:
            lines, total, more = await self.sup.query(msg.agent_id, _STREAMS[msg.stream], offset=msg.offset or 0,
                                                      limit=msg.limit, pattern=msg.filter)
        except SupervisorError as exc:
            return OutputQueryResponse(msg.request_id, msg.agent_id, False, error=str(exc))
        return OutputQueryResponse(msg.request_id, msg.agent_id, True, lines, total, more)

    async def output_read(self, msg: OutputReadRequest, envelope: list | None = None) -> OutputReadResponse:
        """Stored bytes and the stream's facts (read on a worker thread; docs/protocol.md §6.21)."""
        try:
            agent = self.sup.get(msg.agent_id)
        except SupervisorError as exc:
            return OutputReadResponse(msg.request_id, msg.agent_id, False, error=str(exc))
        log = agent.output[msg.stream]
        read = functools.partial(log.read, offset=msg.offset, sequence=msg.sequence, line=msg.line,
                                 max_bytes=read_size(msg))
        try:  # what is in memory or the page cache is read here at once; what needs the disk, off the loop
            got = read(nowait=True)
        except WouldBlock:
            snapshot = log.snapshot()  # taken here, on the loop, where the stream is written
            try:
                got = await asyncio.get_running_loop().run_in_executor(None, functools.partial(read, snapshot=snapshot))
            except (OSError, StoreError):  # dropped meanwhile by the budget: read again from what is left
                got = read()
        f = got.facts
        return OutputReadResponse(msg.request_id, msg.agent_id, True, msg.stream, got.data, got.offset, got.sequence,
                                  got.line, got.chunk_ends, got.chunk_times, f.first_offset, f.first_sequence,
                                  f.first_line, f.end_offset, f.end_sequence, f.end_line, f.ended)


def _stdin_bytes(args: dict) -> bytes:
    """``data`` as str (UTF-8), bin, or an array of ints (each mod 256, others skipped)."""
    data = args.get("data")
    if isinstance(data, str):
        return data.encode()
    if isinstance(data, bytes):
        return data
    if isinstance(data, list):  # what a Rust client sends (Vec<u8>): bytes() takes it at C speed ...
        try:
            fast = bytes(data)
        except (TypeError, ValueError):
            pass
        else:  # ... unless it holds a byte a bool could have become (a bool is skipped, as in Rust)
            if b"\x00" not in fast and b"\x01" not in fast:
                return fast
        return bytes(x % 256 for x in data if isinstance(x, int) and not isinstance(x, bool))
    if data is None and args.get("eof") is True:
        return b""
    raise SupervisorError("Agent execution error: WriteStdin requires payload with 'data' field "
                          "(string or byte array)")
