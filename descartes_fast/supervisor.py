"""The agent supervisor: runs agent processes and keeps the one registry (no ZeroMQ here).

Each agent runs in its own session (process group). Exits are seen through a pidfd on the
event loop and output through non-blocking pipes on the event loop: nothing polls. Output is
kept as bytes, split into lines, in a bounded buffer per stream; finished agents stay
queryable until the retention limits evict them. What happens is reported to a
:class:`Listener` (the server publishes it on PUB).

Error texts follow the Rust reference (§4.4, §4.6) where it has one, so a Rust client sees
the messages it knows.
"""

from __future__ import annotations

import asyncio
import collections
import os
import re
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from typing import Protocol

from descartes_fast.backends import BackendError, BackendRegistry, Launch
from descartes_fast.schema import (
    AgentConfig, AgentInfo, AgentStatus, LogStreamType, PauseMode, StatusUpdateType)

__all__ = ["Supervisor", "Agent", "OutputBuffer", "Listener", "SupervisorError", "SpawnError",
           "AgentLimitError", "AgentNotFoundError", "PAUSE_LINE", "RESUME_LINE", "SIGNALS"]

#: the cooperative pause protocol: exact lines written to the agent's stdin (reference §4.6)
PAUSE_LINE = b'{"type":"pause","action":"pause"}\n'
RESUME_LINE = b'{"type":"pause","action":"resume"}\n'

#: signal names a ``signal`` command accepts (case-insensitive), as in the reference
SIGNALS: dict[str, str] = {
    **dict.fromkeys(("interrupt", "sigint", "int"), "interrupt"),
    **dict.fromkeys(("terminate", "sigterm", "term"), "terminate"),
    **dict.fromkeys(("kill", "sigkill"), "kill"),
    **dict.fromkeys(("stop", "sigstop", "pause", "force_pause"), "stop"),
    **dict.fromkeys(("continue", "sigcont", "cont", "resume"), "continue"),
}
_READ_SIZE = 65536
_ACTIVE = (AgentStatus.IDLE, AgentStatus.INITIALIZING, AgentStatus.RUNNING, AgentStatus.THINKING,
           AgentStatus.PAUSED)


class SupervisorError(Exception):
    """A request the supervisor refuses; ``str()`` is the text for the client."""


class SpawnError(SupervisorError):
    """The agent could not be started."""


class AgentLimitError(SpawnError):
    """``max_agents`` agents are active already (the reference replies without a prefix)."""


class AgentNotFoundError(SupervisorError):
    def __init__(self, agent_id: uuid.UUID) -> None:
        super().__init__(f"Agent not found: {agent_id}")


class Listener(Protocol):
    """Receives what happens to agents (the server turns it into PUB messages)."""

    def on_output(self, agent: Agent, stream: LogStreamType, data: bytes) -> None: ...
    def on_status(self, agent: Agent, kind: StatusUpdateType, message: str | None) -> None: ...


class _Silent:
    def on_output(self, agent: Agent, stream: LogStreamType, data: bytes) -> None:
        pass

    def on_status(self, agent: Agent, kind: StatusUpdateType, message: str | None) -> None:
        pass


class OutputBuffer:
    """One stream's output as lines of bytes, oldest dropped (and counted) past *limit* bytes."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.lines: collections.deque[bytes] = collections.deque()
        self.first = 0          # absolute index of lines[0]
        self.size = 0           # bytes held in lines
        self.dropped_lines = 0
        self.dropped_bytes = 0
        self.total_bytes = 0    # everything ever received
        self.cursor = 0         # next line for read_next()
        self._partial = bytearray()

    def append(self, data: bytes) -> None:
        self.total_bytes += len(data)
        self._partial += data
        start = 0
        while True:
            end = self._partial.find(b"\n", start)
            if end < 0:
                break
            self._keep(bytes(self._partial[start:end + 1]))
            start = end + 1
        del self._partial[:start]
        if len(self._partial) >= self.limit:  # one line longer than the whole budget
            self._keep(bytes(self._partial))
            self._partial.clear()

    def close(self) -> None:
        """End of stream: an unterminated last line becomes a line."""
        if self._partial:
            self._keep(bytes(self._partial))
            self._partial.clear()

    def _keep(self, line: bytes) -> None:
        self.lines.append(line)
        self.size += len(line)
        while self.size > self.limit and len(self.lines) > 1:
            old = self.lines.popleft()
            self.first += 1
            self.size -= len(old)
            self.dropped_lines += 1
            self.dropped_bytes += len(old)

    @property
    def total_lines(self) -> int:
        """Lines seen so far, dropped ones included."""
        return self.first + len(self.lines)

    def read_next(self) -> bytes | None:
        """The next unread line (the reference's destructive ``read_stdout``), or None."""
        self.cursor = max(self.cursor, self.first)
        if self.cursor >= self.total_lines:
            return None
        line = self.lines[self.cursor - self.first]
        self.cursor += 1
        return line

    def text_lines(self) -> list[str]:
        """Retained lines as text (invalid UTF-8 replaced), without their line ends."""
        return [line.decode("utf-8", "replace").rstrip("\r\n") for line in self.lines]


@dataclass(eq=False)
class Agent:
    """One agent process and everything known about it."""

    id: uuid.UUID
    config: AgentConfig
    launch: Launch
    started_at: int
    status: AgentStatus = AgentStatus.RUNNING
    pause_mode: PauseMode | None = None
    paused_at: int | None = None
    pid: int = 0
    exit_code: int | None = None
    ended_at: float | None = None
    reason: str | None = None
    stdout: OutputBuffer = field(default_factory=lambda: OutputBuffer(1))
    stderr: OutputBuffer = field(default_factory=lambda: OutputBuffer(1))
    process: subprocess.Popen | None = field(default=None, repr=False)
    exited: asyncio.Future | None = field(default=None, repr=False)
    stdin_fd: int | None = field(default=None, repr=False)
    _pending_stdin: bytearray = field(default_factory=bytearray, repr=False)
    _unsent: dict = field(default_factory=dict, repr=False)  # stream -> partial line not yet published
    _close_stdin_when_flushed: bool = field(default=False, repr=False)

    def info(self) -> AgentInfo:
        return AgentInfo(self.id, self.config.name, self.status, self.config.model_backend,
                         self.started_at, self.config.task, self.paused_at, self.pause_mode)

    @property
    def running(self) -> bool:
        """The process has not been reaped yet."""
        return self.exit_code is None

    def buffer(self, stream: LogStreamType) -> OutputBuffer:
        return self.stdout if stream == LogStreamType.STDOUT else self.stderr


class Supervisor:
    """Spawns and controls agents; see the module docstring.

    Parameters
    ----------
    backends : how ``model_backend`` names become command lines
    max_agents : agents that may be active (not completed/failed/terminated) at once
    stop_grace : seconds between SIGTERM and SIGKILL for ``stop``
    output_limit : bytes kept per agent (half per stream); older lines are dropped
    retention : seconds a finished agent stays queryable
    max_retained : finished agents kept at most (the oldest go first)
    """

    def __init__(self, backends: BackendRegistry | None = None, *, max_agents: int = 100,
                 stop_grace: float = 2.0, output_limit: int = 8 * 1024 * 1024,
                 retention: float = 3600.0, max_retained: int = 1000,
                 listener: Listener | None = None) -> None:
        self.backends = backends or BackendRegistry()
        self.max_agents = max_agents
        self.stop_grace = stop_grace
        self.output_limit = output_limit
        self.retention = retention
        self.max_retained = max_retained
        self.listener: Listener = listener or _Silent()
        self._agents: dict[uuid.UUID, Agent] = {}
        self._finished: collections.deque[uuid.UUID] = collections.deque()
        self._env = {k: v for k, v in os.environ.items() if k != "CLAUDECODE"}

    # -- registry --

    def get(self, agent_id: uuid.UUID) -> Agent:
        self._evict()
        try:
            return self._agents[agent_id]
        except KeyError:
            raise AgentNotFoundError(agent_id) from None

    def list(self, status: AgentStatus | None = None, limit: int | None = None) -> list[Agent]:
        """Agents in spawn order, optionally only those with *status*, at most *limit*."""
        self._evict()
        found = [a for a in self._agents.values() if status is None or a.status == status]
        return found if limit is None else found[:limit]

    def active_count(self) -> int:
        return sum(1 for a in self._agents.values() if a.status in _ACTIVE)

    def _evict(self) -> None:
        if not self._finished:
            return
        horizon = time.monotonic() - self.retention
        while self._finished:
            oldest = self._agents.get(self._finished[0])
            if oldest is not None and len(self._finished) <= self.max_retained and \
                    (oldest.ended_at or 0) > horizon:
                break
            self._finished.popleft()
            if oldest is not None:
                del self._agents[oldest.id]

    # -- lifecycle --

    async def spawn(self, config: AgentConfig) -> Agent:
        """Start an agent; raises SpawnError with the reference's texts."""
        if self.active_count() >= self.max_agents:
            raise AgentLimitError(f"Maximum agent limit reached: {self.max_agents}")
        try:
            launch = self.backends.resolve(config.model_backend).build(config)
        except BackendError as exc:
            raise SpawnError(f"Agent spawn failed: {exc}") from None
        loop = asyncio.get_running_loop()
        try:
            process = await loop.run_in_executor(None, self._popen, launch)
        except (OSError, ValueError) as exc:
            raise SpawnError(f"Agent spawn failed: Failed to spawn process for backend "
                             f"'{config.model_backend}': {exc}") from None
        half = max(1, self.output_limit // 2)
        agent = Agent(uuid.uuid4(), config, launch, time.time_ns(), pid=process.pid, process=process,
                      stdout=OutputBuffer(half), stderr=OutputBuffer(half), exited=loop.create_future())
        self._agents[agent.id] = agent
        if launch.stdin == "pipe":
            agent.stdin_fd = process.stdin.fileno()
            os.set_blocking(agent.stdin_fd, False)
        for stream, pipe in ((LogStreamType.STDOUT, process.stdout), (LogStreamType.STDERR, process.stderr)):
            os.set_blocking(pipe.fileno(), False)
            loop.add_reader(pipe.fileno(), self._on_readable, agent, stream)
        pidfd = os.pidfd_open(process.pid)
        loop.add_reader(pidfd, self._on_exit, agent, pidfd)
        self.listener.on_status(agent, StatusUpdateType.STATUS_CHANGED, "spawned")
        return agent

    def _popen(self, launch: Launch) -> subprocess.Popen:
        stdin = subprocess.DEVNULL if launch.stdin == "null" else subprocess.PIPE
        process = subprocess.Popen(launch.argv, stdin=stdin, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, cwd=launch.cwd, env={**self._env, **launch.env},
                                   start_new_session=True, close_fds=True)
        if launch.stdin == "close":
            process.stdin.close()
        return process

    def _on_readable(self, agent: Agent, stream: LogStreamType) -> None:
        pipe = agent.process.stdout if stream == LogStreamType.STDOUT else agent.process.stderr
        try:
            data = os.read(pipe.fileno(), _READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            agent.buffer(stream).append(data)
            self._publish(agent, stream, data)
            return
        asyncio.get_running_loop().remove_reader(pipe.fileno())
        agent.buffer(stream).close()
        pipe.close()
        self._publish(agent, stream, b"", end=True)

    def _publish(self, agent: Agent, stream: LogStreamType, data: bytes, end: bool = False) -> None:
        """Hand output to the listener in whole lines: a partial line waits for its end
        (or for EOF, or until it is longer than one read)."""
        data = agent._unsent.pop(stream, b"") + data
        cut = len(data) if end or len(data) > _READ_SIZE else data.rfind(b"\n") + 1
        if cut < len(data):
            agent._unsent[stream] = data[cut:]
        if cut:
            self.listener.on_output(agent, stream, data[:cut])

    def _drain(self, agent: Agent) -> None:
        """Read what an exited process left in its pipes, before its final status goes out."""
        for stream, pipe in ((LogStreamType.STDOUT, agent.process.stdout),
                             (LogStreamType.STDERR, agent.process.stderr)):
            while not pipe.closed:
                before = agent.buffer(stream).total_bytes
                self._on_readable(agent, stream)
                if agent.buffer(stream).total_bytes == before:
                    break

    def _on_exit(self, agent: Agent, pidfd: int) -> None:
        pid, status = os.waitpid(agent.pid, os.WNOHANG)
        if pid == 0:
            return
        loop = asyncio.get_running_loop()
        loop.remove_reader(pidfd)
        os.close(pidfd)
        agent.exit_code = os.waitstatus_to_exitcode(status)
        agent.process.returncode = agent.exit_code
        agent.ended_at = time.monotonic()
        self._close_stdin(agent)
        self._drain(agent)
        if agent.status != AgentStatus.TERMINATED:  # stop and kill are sticky
            ok = agent.exit_code == 0
            agent.status = AgentStatus.COMPLETED if ok else AgentStatus.FAILED
            if not ok and agent.reason is None:
                code = agent.exit_code
                agent.reason = f"killed by signal {-code}" if code < 0 else f"exited with status {code}"
            self.listener.on_status(agent, StatusUpdateType.COMPLETED if ok else StatusUpdateType.ERROR,
                                    agent.reason or "exited with status 0")
        self._finished.append(agent.id)
        agent.exited.set_result(agent.exit_code)
        self._evict()

    async def wait(self, agent_id: uuid.UUID) -> int:
        """The agent's exit code, once its process has exited."""
        return await asyncio.shield(self.get(agent_id).exited)

    def _set(self, agent: Agent, status: AgentStatus, message: str,
             kind: StatusUpdateType = StatusUpdateType.STATUS_CHANGED) -> None:
        agent.status = status
        if status != AgentStatus.PAUSED:
            agent.pause_mode = agent.paused_at = None
        self.listener.on_status(agent, kind, message)

    def _signal_group(self, agent: Agent, sig: int) -> None:
        try:
            os.killpg(agent.pid, sig)
        except ProcessLookupError:
            pass  # the whole group is gone already

    def stop(self, agent_id: uuid.UUID) -> Agent:
        """SIGTERM to the agent's group, SIGKILL after ``stop_grace``; ``terminated`` at once."""
        agent = self.get(agent_id)
        if agent.running:
            self._signal_group(agent, signal.SIGTERM)
            self._signal_group(agent, signal.SIGCONT)  # a stopped group must wake to die
            asyncio.get_running_loop().call_later(self.stop_grace, self._signal_group, agent, signal.SIGKILL)
            agent.reason = "stopped"
            self._set(agent, AgentStatus.TERMINATED, "stopped", StatusUpdateType.TERMINATED)
        return agent

    def kill(self, agent_id: uuid.UUID) -> Agent:
        """SIGKILL to the agent's whole process group; ``terminated`` at once."""
        agent = self.get(agent_id)
        if agent.running:
            self._signal_group(agent, signal.SIGKILL)
            agent.reason = "killed"
            self._set(agent, AgentStatus.TERMINATED, "killed", StatusUpdateType.TERMINATED)
        return agent

    def pause(self, agent_id: uuid.UUID, force: bool = False) -> PauseMode:
        """Pause: cooperative (the pause line on stdin) where the backend honours it, else SIGSTOP."""
        agent = self.get(agent_id)
        if agent.status == AgentStatus.PAUSED:
            raise SupervisorError("Agent execution error: Agent is already paused")
        if agent.status not in (AgentStatus.RUNNING, AgentStatus.THINKING):
            what = "terminal state" if agent.status.is_terminal() else "state"
            raise SupervisorError(f"Agent execution error: Cannot pause agent in {what}: {agent.status}")
        cooperative = not force and agent.launch.cooperative_pause and agent.stdin_fd is not None
        if cooperative:
            self._write(agent, PAUSE_LINE)
        else:
            self._signal_group(agent, signal.SIGSTOP)
        agent.pause_mode = PauseMode.COOPERATIVE if cooperative else PauseMode.FORCED
        agent.paused_at = time.time_ns()
        agent.status = AgentStatus.PAUSED
        self.listener.on_status(agent, StatusUpdateType.STATUS_CHANGED, f"paused ({agent.pause_mode})")
        return agent.pause_mode

    def resume(self, agent_id: uuid.UUID) -> Agent:
        """Undo a pause the way it was made."""
        agent = self.get(agent_id)
        if agent.status != AgentStatus.PAUSED:
            raise SupervisorError(f"Agent execution error: Agent is not paused, current status: {agent.status}")
        if agent.pause_mode == PauseMode.FORCED:
            self._signal_group(agent, signal.SIGCONT)
        elif agent.stdin_fd is not None:
            self._write(agent, RESUME_LINE)
        self._set(agent, AgentStatus.RUNNING, "resumed")
        return agent

    def signal(self, agent_id: uuid.UUID, name: str) -> str:
        """Send a named signal (see SIGNALS) to the agent's group; returns the name given."""
        agent = self.get(agent_id)
        kind = SIGNALS.get(name.lower())
        if kind is None:
            raise SupervisorError(f"Agent execution error: Unknown signal type: '{name}'. "
                                  "Valid signals: interrupt, terminate, kill, stop, continue")
        if kind == "terminate":
            self.stop(agent_id)
        elif kind == "kill":
            self.kill(agent_id)
        elif kind == "stop":
            self.pause(agent_id, force=True)
        elif kind == "continue":
            if agent.status == AgentStatus.PAUSED and agent.pause_mode == PauseMode.FORCED:
                self.resume(agent_id)
            elif agent.running:
                self._signal_group(agent, signal.SIGCONT)
        elif agent.running:
            self._signal_group(agent, signal.SIGINT)
        return name

    # -- stdin --

    def write_stdin(self, agent_id: uuid.UUID, data: bytes, eof: bool = False) -> int:
        """Queue *data* for the agent's stdin (never blocks); close it afterwards if *eof*."""
        agent = self.get(agent_id)
        if agent.stdin_fd is None or agent._close_stdin_when_flushed:
            raise SupervisorError(f"Agent execution error: stdin of agent {agent.id} is closed")
        if data:
            self._write(agent, data)
        if eof:
            agent._close_stdin_when_flushed = True
            if not agent._pending_stdin:
                self._close_stdin(agent)
        return len(data)

    def _write(self, agent: Agent, data: bytes) -> None:
        if agent._pending_stdin:
            agent._pending_stdin += data
            return
        try:
            sent = os.write(agent.stdin_fd, data)
        except BlockingIOError:
            sent = 0
        except BrokenPipeError:
            self._close_stdin(agent)
            raise SupervisorError(f"Agent execution error: stdin of agent {agent.id} is closed "
                                  "(the process stopped reading)") from None
        if sent < len(data):
            agent._pending_stdin += data[sent:]
            asyncio.get_running_loop().add_writer(agent.stdin_fd, self._flush_stdin, agent)

    def _flush_stdin(self, agent: Agent) -> None:
        try:
            sent = os.write(agent.stdin_fd, agent._pending_stdin)
        except BlockingIOError:
            return
        except OSError:
            self._close_stdin(agent)
            return
        del agent._pending_stdin[:sent]
        if not agent._pending_stdin:
            asyncio.get_running_loop().remove_writer(agent.stdin_fd)
            if agent._close_stdin_when_flushed:
                self._close_stdin(agent)

    def _close_stdin(self, agent: Agent) -> None:
        if agent.stdin_fd is None:
            return
        if agent._pending_stdin:
            asyncio.get_running_loop().remove_writer(agent.stdin_fd)
            agent._pending_stdin.clear()
        agent.stdin_fd = None
        agent.process.stdin.close()

    # -- output --

    def read_next(self, agent_id: uuid.UUID, stream: LogStreamType) -> bytes | None:
        """The next unread line of *stream* (None when there is none)."""
        return self.get(agent_id).buffer(stream).read_next()

    def query(self, agent_id: uuid.UUID, streams: tuple[LogStreamType, ...], *, offset: int = 0,
              limit: int | None = None, pattern: str | None = None) -> tuple[list[str], int, bool]:
        """Retained lines of *streams* matching *pattern*: (page, total matching, has_more)."""
        agent = self.get(agent_id)
        try:
            regex = re.compile(pattern) if pattern is not None else None
        except re.error as exc:
            raise SupervisorError(f"Agent execution error: invalid filter regex {pattern!r}: {exc}") from None
        lines = [line for s in streams for line in agent.buffer(s).text_lines()
                 if regex is None or regex.search(line)]
        page = lines[offset:] if limit is None else lines[offset:offset + limit]
        return page, len(lines), offset + len(page) < len(lines)

    # -- shutdown --

    async def shutdown(self, grace: float | None = None) -> None:
        """Stop every live agent (SIGTERM, SIGKILL after *grace*) and wait until all have exited."""
        grace = self.stop_grace if grace is None else grace
        live = [a for a in self._agents.values() if a.running]
        for agent in live:
            self._signal_group(agent, signal.SIGTERM)
            self._signal_group(agent, signal.SIGCONT)
            if agent.status != AgentStatus.TERMINATED:
                agent.reason = "server shutdown"
                self._set(agent, AgentStatus.TERMINATED, "server shutdown", StatusUpdateType.TERMINATED)
        if not live:
            return
        futures = [asyncio.shield(a.exited) for a in live]
        _, pending = await asyncio.wait(futures, timeout=grace)
        if pending:
            for agent in live:
                if agent.running:
                    self._signal_group(agent, signal.SIGKILL)
            await asyncio.wait(futures, timeout=5.0)

