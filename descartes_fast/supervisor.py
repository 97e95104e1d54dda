"""The agent supervisor: runs agent processes and keeps the one registry (no ZeroMQ here).

Each agent runs in its own session (process group). Exits are seen through a pidfd on the
event loop and output through non-blocking pipes on the event loop: nothing polls. Output is
kept as bytes, split into lines, in a bounded buffer per stream; finished agents stay
queryable until the retention limits evict them. What happens is reported to a
:class:`Listener` (the server publishes it on PUB).

Error texts follow the Rust reference (§4.4, §4.6) where it has one, so a Rust client sees
the messages it knows.

A :class:`~descartes_fast.policy.SpawnPolicy` decides what a spawn request may ask for (backends,
environment, working directory, AGENT_EXTRA_ARGS) and the limits each agent runs under: CPU
time and open files (``prlimit`` on the new process), the resident memory of its process group
(a watchdog on the event loop) and wall-clock time (a loop timer). An agent ended by a limit
ends ``failed``, with the limit named in its final status message.

Processes that leave the agent's process group (``setsid``, ``setpgid``) escape the group
signals and the memory watchdog; RLIMIT_CPU is per process (each child gets its own budget).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import os
import re
import resource
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from typing import Final, Protocol

from descartes_fast.backends import (
    BackendError,
    BackendRegistry,
    Launch,
    ProgramCliDisabled,
)
from descartes_fast.policy import PolicyRefusal, SpawnPolicy
from descartes_fast.schema import (
    AgentConfig,
    AgentInfo,
    AgentStatus,
    LogStreamType,
    PauseMode,
    StatusUpdateType,
)

__all__ = [
    "PAUSE_LINE",
    "RESUME_LINE",
    "SIGNALS",
    "Agent",
    "AgentLimitError",
    "AgentNotFoundError",
    "ClientLimitError",
    "Listener",
    "OutputBuffer",
    "SpawnError",
    "SpawnPolicyError",
    "Supervisor",
    "SupervisorError",
]

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
_MEMORY_TICK: Final = 0.25     # seconds between scans of the memory watchdog
_CPU_HARD_EXTRA: Final = 5     # RLIMIT_CPU hard limit = soft + this (SIGXCPU first, SIGKILL at hard)
_MiB: Final = 1024 * 1024
_PAGE: Final = os.sysconf("SC_PAGE_SIZE")


class SupervisorError(Exception):
    """A request the supervisor refuses; ``str()`` is the text for the client."""


class SpawnError(SupervisorError):
    """The agent could not be started."""


class AgentLimitError(SpawnError):
    """``max_agents`` agents are active already (the reference replies without a prefix)."""


class SpawnPolicyError(SpawnError):
    """The spawn policy refuses the request; the text says what and why."""


class ClientLimitError(AgentLimitError, SpawnPolicyError):
    """The client has ``max_agents_per_client`` active agents already (no prefix, like AgentLimitError)."""


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
    owner: str | None = None              # the client identity that spawned it (None: not counted)
    cpu_secs: int | None = None           # the limits it runs under (None: none)
    memory_mb: int | None = None
    wall_secs: float | None = None
    limit_hit: bool = False               # a limit ended it: ``failed`` with ``reason``, whatever the exit
    process: subprocess.Popen | None = field(default=None, repr=False)
    exited: asyncio.Future | None = field(default=None, repr=False)
    stdin_fd: int | None = field(default=None, repr=False)
    _pending_stdin: bytearray = field(default_factory=bytearray, repr=False)
    _unsent: dict = field(default_factory=dict, repr=False)  # stream -> partial line not yet published
    _close_stdin_when_flushed: bool = field(default=False, repr=False)
    _wall_timer: asyncio.TimerHandle | None = field(default=None, repr=False)

    def info(self) -> AgentInfo:
        return AgentInfo(self.id, self.config.name, self.status, self.config.model_backend,
                         self.started_at, self.config.task, self.paused_at, self.pause_mode)

    @property
    def running(self) -> bool:
        """The process has not been reaped yet."""
        return self.exit_code is None

    def buffer(self, stream: LogStreamType) -> OutputBuffer:
        return self.stdout if stream == LogStreamType.STDOUT else self.stderr


def _ignore(signum: int, frame: object) -> None:
    """Does nothing: stands in for SIG_IGN (see _give_agents_default_signals)."""


def _give_agents_default_signals() -> None:
    """A process started in the background ignores SIGINT and SIGQUIT, and exec keeps an ignored
    signal ignored: its agents could not be interrupted. A handler that does nothing keeps this
    process ignoring them, and exec resets a handled signal to the default for the agents."""
    for sig in (signal.SIGINT, signal.SIGQUIT):
        if signal.getsignal(sig) == signal.SIG_IGN:
            try:
                signal.signal(sig, _ignore)
            except ValueError:
                pass  # not the main thread: agents inherit the ignore


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
    policy : what requests may ask for and the per-agent limits (default: ``SpawnPolicy()``)
    """

    def __init__(self, backends: BackendRegistry | None = None, *, max_agents: int = 100,
                 stop_grace: float = 2.0, output_limit: int = 8 * 1024 * 1024,
                 retention: float = 3600.0, max_retained: int = 1000,
                 listener: Listener | None = None, policy: SpawnPolicy | None = None) -> None:
        self.backends = backends or BackendRegistry()
        self.policy = policy or SpawnPolicy()
        self.max_agents = max_agents
        self.stop_grace = stop_grace
        self.output_limit = output_limit
        self.retention = retention
        self.max_retained = max_retained
        self.listener: Listener = listener or _Silent()
        self._agents: dict[uuid.UUID, Agent] = {}
        self._finished: collections.deque[uuid.UUID] = collections.deque()
        self._env = {k: v for k, v in os.environ.items() if k != "CLAUDECODE"}
        _give_agents_default_signals()
        self._starting: collections.Counter[str | None] = collections.Counter()  # spawns under way, by owner
        self._memory_watched: set[Agent] = set()
        self._memory_timer: asyncio.TimerHandle | None = None

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

    def active_count(self, owner: str | None = None) -> int:
        """Active agents (of *owner* only, if given)."""
        return sum(1 for a in self._agents.values()
                   if a.status in _ACTIVE and (owner is None or a.owner == owner))

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

    async def spawn(self, config: AgentConfig, *, owner: str | None = None, timeout_secs: int | None = None,
                    metadata: dict[str, str] | None = None) -> Agent:
        """Start an agent; raises SpawnError with the reference's texts, SpawnPolicyError for what
        the policy refuses (ClientLimitError past ``max_agents_per_client``).

        *owner* is the client identity counted by ``max_agents_per_client`` (None: not counted),
        *timeout_secs* the request's wall-clock limit (0 or None: none; ``max_wall_secs`` caps
        it), *metadata* the request's metadata (``cwd`` chooses the working directory).
        """
        policy = self.policy
        if self.active_count() + sum(self._starting.values()) >= self.max_agents:
            raise AgentLimitError(f"Maximum agent limit reached: {self.max_agents}")
        per_client = policy.max_agents_per_client
        if per_client is not None and owner is not None:
            count = self.active_count(owner) + self._starting[owner]
            if count >= per_client:
                raise ClientLimitError(f"spawn refused: client '{owner}' already has {count} active "
                                       f"agent{'' if count == 1 else 's'} (max_agents_per_client = {per_client})")
        try:
            cwd = policy.check_request(config, metadata)
            backend = self.backends.resolve(config.model_backend, allow_program_cli=policy.allow_program_cli)
            launch = backend.build(config)
        except (PolicyRefusal, ProgramCliDisabled) as exc:
            raise SpawnPolicyError(f"spawn refused by this server's policy: {exc}") from None
        except BackendError as exc:
            raise SpawnError(f"Agent spawn failed: {exc}") from None
        agent_id = uuid.uuid4()
        make_dir = None
        if cwd is None and launch.cwd is None and policy.workdir is not None:
            make_dir = os.path.join(policy.workdir, str(agent_id))
        launch = dataclasses.replace(launch, cwd=cwd or make_dir or launch.cwd)
        loop = asyncio.get_running_loop()
        self._starting[owner] += 1
        try:
            process = await loop.run_in_executor(None, self._start, launch, make_dir, policy)
        except (OSError, ValueError) as exc:
            raise SpawnError(f"Agent spawn failed: Failed to spawn process for backend "
                             f"'{config.model_backend}': {exc}") from None
        finally:
            self._starting[owner] -= 1
            if not self._starting[owner]:
                del self._starting[owner]
        half = max(1, self.output_limit // 2)
        agent = Agent(agent_id, config, launch, time.time_ns(), pid=process.pid, process=process,
                      stdout=OutputBuffer(half), stderr=OutputBuffer(half), exited=loop.create_future(),
                      owner=owner, cpu_secs=policy.cpu_secs, memory_mb=policy.memory_mb,
                      wall_secs=policy.wall_limit(timeout_secs))
        self._agents[agent.id] = agent
        if launch.stdin == "pipe":
            agent.stdin_fd = process.stdin.fileno()
            os.set_blocking(agent.stdin_fd, False)
        for stream, pipe in ((LogStreamType.STDOUT, process.stdout), (LogStreamType.STDERR, process.stderr)):
            os.set_blocking(pipe.fileno(), False)
            loop.add_reader(pipe.fileno(), self._on_readable, agent, stream)
        pidfd = os.pidfd_open(process.pid)
        loop.add_reader(pidfd, self._on_exit, agent, pidfd)
        if agent.wall_secs is not None:
            agent._wall_timer = loop.call_later(agent.wall_secs, self._wall_expired, agent)
        if agent.memory_mb is not None:
            self._memory_watched.add(agent)
            if self._memory_timer is None:
                self._memory_timer = loop.call_later(_MEMORY_TICK, self._watch_memory)
        self.listener.on_status(agent, StatusUpdateType.STATUS_CHANGED, "spawned")
        return agent

    def _start(self, launch: Launch, make_dir: str | None, policy: SpawnPolicy) -> subprocess.Popen:
        """In a worker thread: the agent's directory (a new one under ``workdir``), the process,
        its resource limits."""
        if make_dir is not None:
            try:
                os.makedirs(os.path.dirname(make_dir), mode=0o700, exist_ok=True)
                os.mkdir(make_dir, 0o700)
                os.chmod(make_dir, 0o700)  # whatever the umask
            except OSError as exc:
                raise SpawnError(f"Agent spawn failed: cannot create the agent's working directory "
                                 f"'{make_dir}': {exc.strerror}") from None
        try:
            process = self._popen(launch)
        except BaseException:
            if make_dir is not None:
                try:
                    os.rmdir(make_dir)
                except OSError:
                    pass
            raise
        try:
            _apply_rlimits(process.pid, policy)
        except OSError as exc:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait()
            for pipe in (process.stdin, process.stdout, process.stderr):
                if pipe is not None:
                    pipe.close()
            raise SpawnError(f"Agent spawn failed: cannot apply the resource limits (cpu_secs = "
                             f"{policy.cpu_secs}, open_files = {policy.open_files}): {exc.strerror}") from None
        return process

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
        pid, status, usage = os.wait4(agent.pid, os.WNOHANG)
        if pid == 0:
            return
        loop = asyncio.get_running_loop()
        loop.remove_reader(pidfd)
        os.close(pidfd)
        agent.exit_code = os.waitstatus_to_exitcode(status)
        agent.process.returncode = agent.exit_code
        agent.ended_at = time.monotonic()
        if agent._wall_timer is not None:
            agent._wall_timer.cancel()
            agent._wall_timer = None
        self._memory_watched.discard(agent)
        self._close_stdin(agent)
        self._drain(agent)
        if agent.status != AgentStatus.TERMINATED and not agent.limit_hit and \
                self._cpu_exceeded(agent, usage.ru_utime + usage.ru_stime):
            agent.reason = f"CPU time limit of {agent.cpu_secs} s exceeded (SIGXCPU)"
            agent.limit_hit = True
            self._signal_group(agent, signal.SIGKILL)  # what is left of its group is over the limit too
        if agent.status != AgentStatus.TERMINATED:  # stop and kill are sticky
            ok = agent.exit_code == 0 and not agent.limit_hit
            agent.status = AgentStatus.COMPLETED if ok else AgentStatus.FAILED
            if not ok and agent.reason is None:
                code = agent.exit_code
                agent.reason = f"killed by signal {-code}" if code < 0 else f"exited with status {code}"
            self.listener.on_status(agent, StatusUpdateType.COMPLETED if ok else StatusUpdateType.ERROR,
                                    agent.reason or "exited with status 0")
        self._finished.append(agent.id)
        agent.exited.set_result(agent.exit_code)
        self._evict()

    @staticmethod
    def _cpu_exceeded(agent: Agent, cpu_used: float) -> bool:
        """Killed by SIGXCPU (the soft limit), or by SIGKILL at the hard limit."""
        if agent.cpu_secs is None:
            return False
        return agent.exit_code == -signal.SIGXCPU or (
            agent.exit_code == -signal.SIGKILL and cpu_used >= agent.cpu_secs + _CPU_HARD_EXTRA - 0.5)

    # -- limits --

    def _limit_exceeded(self, agent: Agent, reason: str, graceful: bool) -> None:
        """End *agent* for exceeding a limit: SIGTERM (SIGKILL after ``stop_grace``) or SIGKILL
        at once; it ends ``failed`` with *reason* (unless stopped or killed already)."""
        if agent.status != AgentStatus.TERMINATED:
            agent.reason = reason
            agent.limit_hit = True
        if graceful:
            self._terminate_group(agent)
        else:
            self._signal_group(agent, signal.SIGKILL)

    def _wall_expired(self, agent: Agent) -> None:
        agent._wall_timer = None
        if agent.running and not agent.limit_hit:
            self._limit_exceeded(agent, f"wall-clock limit of {agent.wall_secs:g} s exceeded", graceful=True)

    def _watch_memory(self) -> None:
        """Every ``_MEMORY_TICK`` while a memory-limited agent runs: SIGKILL the groups whose
        resident memory is over their limit. (No RLIMIT_AS: it limits address space, not memory,
        and V8/node reserves far more address space than it uses.)"""
        self._memory_timer = None
        watched = {a.pid: a for a in self._memory_watched if a.running and not a.limit_hit}
        if not watched:
            return
        for pgid, rss in _group_rss(set(watched)).items():
            agent = watched[pgid]
            if rss > agent.memory_mb * _MiB:
                used = -(-rss // _MiB)
                self._limit_exceeded(agent, f"memory limit exceeded: {used} MiB resident in the process "
                                            f"group > {agent.memory_mb} MiB (memory_mb)", graceful=False)
        self._memory_timer = asyncio.get_running_loop().call_later(_MEMORY_TICK, self._watch_memory)

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

    def _terminate_group(self, agent: Agent) -> None:
        """SIGTERM to the agent's group, SIGKILL after ``stop_grace``."""
        self._signal_group(agent, signal.SIGTERM)
        self._signal_group(agent, signal.SIGCONT)  # a stopped group must wake to die
        asyncio.get_running_loop().call_later(self.stop_grace, self._signal_group, agent, signal.SIGKILL)

    def stop(self, agent_id: uuid.UUID) -> Agent:
        """SIGTERM to the agent's group, SIGKILL after ``stop_grace``; ``terminated`` at once."""
        agent = self.get(agent_id)
        if agent.running:
            self._terminate_group(agent)
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
        if self._memory_timer is not None:
            self._memory_timer.cancel()
            self._memory_timer = None
        if not live:
            return
        futures = [asyncio.shield(a.exited) for a in live]
        _, pending = await asyncio.wait(futures, timeout=grace)
        if pending:
            for agent in live:
                if agent.running:
                    self._signal_group(agent, signal.SIGKILL)
            await asyncio.wait(futures, timeout=5.0)


def _apply_rlimits(pid: int, policy: SpawnPolicy) -> None:
    """CPU time and open-file limits of the new process *pid*.

    Set with prlimit right after Popen returns, so the program runs unlimited for the few
    microseconds between its exec and this call (a child it forks in that window keeps the
    server's limits). preexec_fn would close the window but is not safe here: agents are spawned
    from a thread pool, and forking a threaded process then running Python code can deadlock.
    """
    try:
        if policy.cpu_secs is not None:
            resource.prlimit(pid, resource.RLIMIT_CPU, (policy.cpu_secs, policy.cpu_secs + _CPU_HARD_EXTRA))
        if policy.open_files is not None:
            resource.prlimit(pid, resource.RLIMIT_NOFILE, (policy.open_files, policy.open_files))
    except ProcessLookupError:
        pass  # it has exited already


def _group_rss(pgids: set[int]) -> dict[int, int]:
    """Resident bytes of every process group in *pgids*: one pass over /proc.

    A page shared by several processes counts once per process (conservative)."""
    totals = dict.fromkeys(pgids, 0)
    with os.scandir("/proc") as entries:
        for entry in entries:
            if not entry.name.isdigit():
                continue
            try:
                fd = os.open(f"/proc/{entry.name}/stat", os.O_RDONLY)
                try:
                    data = os.read(fd, 4096)
                finally:
                    os.close(fd)
            except OSError:
                continue  # gone meanwhile
            fields = data[data.rfind(b")") + 2:].split()  # fields from 3 (state) on: pgrp = 5, rss = 24
            if len(fields) > 21:
                pgrp = int(fields[2])
                if pgrp in totals:
                    totals[pgrp] += int(fields[21]) * _PAGE
    return totals

