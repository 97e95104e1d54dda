"""A stand-in for the Rust Descartes server, for testing our client's fall-backs against it.

It behaves as docs/protocol.md §9.3 says the Rust ``ZmqAgentServer`` does, as far as a client can
see: it answers spawn, control, list and health requests only (anything else gets no reply at
all), reports only ``server_id``, ``endpoint`` and ``max_agents`` in its health metadata,
publishes each output line of an agent as a ``log_stream`` on the agent's topic but never a
status update, keeps unread lines for ``read_stdout`` / ``read_stderr`` (destructive), and forgets
an agent a while after it ended (``Agent not found``). Agents are real ``sh -c TASK`` processes.
It is not the Rust code: the real server could not be built here (no crates registry).
"""

from __future__ import annotations

import collections
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import zmq

from descartes_fast.wire import codec
from descartes_fast.wire.schema import (
    AgentInfo,
    AgentStatus,
    CommandResponse,
    ControlCommand,
    ControlCommandType,
    HealthCheckRequest,
    HealthCheckResponse,
    ListAgentsRequest,
    ListAgentsResponse,
    LogStreamMessage,
    LogStreamType,
    SpawnRequest,
    SpawnResponse,
    now,
)

__all__ = ["RustLikeServer"]

C = ControlCommandType


@dataclass
class _Agent:
    info: AgentInfo
    proc: subprocess.Popen[bytes]
    unread: dict[str, collections.deque[bytes]] = field(default_factory=lambda: {
        "stdout": collections.deque(), "stderr": collections.deque()})
    ended_at: float | None = None


class RustLikeServer:
    """Serve on *endpoint* (requests) and *pub* (log lines) from a thread until :meth:`close`."""

    def __init__(self, endpoint: str, pub: str, forget_after: float = 5.0) -> None:
        self.endpoint, self.pub, self.forget_after = endpoint, pub, forget_after
        self.unanswered: list[str] = []  # the tags of requests it did not answer
        self._ctx = zmq.Context()
        self._router = self._ctx.socket(zmq.ROUTER)
        self._router.bind(endpoint)
        self._pub = self._ctx.socket(zmq.PUB)
        self._pub.bind(pub)
        self._pub_lock = threading.Lock()
        self._agents: dict[uuid.UUID, _Agent] = {}
        self._started = time.monotonic()
        self._running = True
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._running = False
        self._thread.join(5)
        for agent in self._agents.values():
            if agent.proc.poll() is None:
                agent.proc.kill()
                agent.proc.wait()
        self._ctx.destroy(linger=0)

    # -- the request loop --

    def _serve(self) -> None:
        while self._running:
            if not self._router.poll(50):
                self._forget()
                continue
            frames = self._router.recv_multipart()
            message = codec.decode(frames[-1])
            reply = self._answer(message)
            if reply is None:
                self.unanswered.append(message.TAG)
                continue
            self._router.send_multipart([*frames[:-1], codec.encode(reply)])

    def _answer(self, message: Any) -> Any:
        if isinstance(message, HealthCheckRequest):
            return HealthCheckResponse(message.request_id, True, "1.0.0", int(time.monotonic() - self._started),
                                       len(self._agents), {"server_id": "rust-like", "endpoint": self.endpoint,
                                                           "max_agents": "100"})
        if isinstance(message, SpawnRequest):
            return self._spawn(message)
        if isinstance(message, ListAgentsRequest):
            return ListAgentsResponse(message.request_id, True, [a.info for a in self._agents.values()])
        if isinstance(message, ControlCommand):
            return self._control(message)
        return None  # custom_action_request, batch_control_command, output_query_request, ...

    def _spawn(self, msg: SpawnRequest) -> SpawnResponse:
        proc = subprocess.Popen(["sh", "-c", msg.config.task], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        info = AgentInfo(uuid.uuid4(), msg.config.name, AgentStatus.RUNNING, msg.config.model_backend, now(),
                         msg.config.task)
        agent = self._agents[info.id] = _Agent(info, proc)
        for stream, pipe in ((LogStreamType.STDOUT, proc.stdout), (LogStreamType.STDERR, proc.stderr)):
            threading.Thread(target=self._pump, args=(agent, stream, pipe), daemon=True).start()
        return SpawnResponse(msg.request_id, True, info, None, "rust-like")

    def _pump(self, agent: _Agent, stream: LogStreamType, pipe: Any) -> None:
        """Each line goes to the read queue and, as one log chunk, out on PUB (sequence from 0)."""
        for seq, line in enumerate(iter(pipe.readline, b"")):
            agent.unread[stream.value].append(line)
            with self._pub_lock:
                payload = codec.encode(LogStreamMessage(agent.info.id, stream, line, now(), seq))
                self._pub.send(str(agent.info.id).encode() + b"\x00" + payload)

    def _status(self, agent: _Agent) -> AgentStatus:
        if agent.info.status == AgentStatus.RUNNING and agent.proc.poll() is not None:
            agent.info.status = AgentStatus.COMPLETED if agent.proc.returncode == 0 else AgentStatus.FAILED
        if agent.info.status.is_terminal() and agent.ended_at is None:
            agent.ended_at = time.monotonic()
        return agent.info.status

    def _forget(self) -> None:
        """Like the Rust server's monitor: finished agents leave the command gate."""
        for agent_id, agent in list(self._agents.items()):
            self._status(agent)
            if agent.ended_at is not None and time.monotonic() - agent.ended_at > self.forget_after:
                del self._agents[agent_id]

    def _control(self, msg: ControlCommand) -> CommandResponse:
        agent = self._agents.get(msg.agent_id)
        if agent is None:
            return CommandResponse(msg.request_id, msg.agent_id, False, None, None, f"Agent not found: {msg.agent_id}")
        kind, data = msg.command_type, None
        if kind in (C.STOP, C.KILL):
            agent.proc.terminate() if kind == C.STOP else agent.proc.kill()
            agent.info.status = AgentStatus.TERMINATED
        elif kind in (C.READ_STDOUT, C.READ_STDERR):
            name = "stdout" if kind == C.READ_STDOUT else "stderr"
            queue = agent.unread[name]
            if queue:
                line = queue.popleft()
                data = {"bytes": len(line), "data": line.decode("utf-8", "replace")}
            else:
                data = {"bytes": 0, "data": None, "message": f"No data available in {name} buffer"}
        elif kind == C.GET_STATUS:
            data = {"status": self._status(agent).value.capitalize()}
        elif kind == C.STREAM_LOGS:
            data = {"enabled": True, "pub_endpoint": self.pub, "topic": str(agent.info.id)}
        else:
            return CommandResponse(msg.request_id, msg.agent_id, False, self._status(agent), None,
                                   f"not emulated: {kind}")
        return CommandResponse(msg.request_id, msg.agent_id, True, self._status(agent), data, None)
