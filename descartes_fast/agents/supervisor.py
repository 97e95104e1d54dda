"""The agent supervisor: the one registry of agents and their state machine (no ZeroMQ here).

Each agent is an :class:`~descartes_fast.agents.process.AgentProcess` (started by the keeper in
its own session and cgroup, pipes, stdin queue, exit from the keeper, signals to all of it) plus
what is known about it: its status, pause mode, output (:mod:`descartes_fast.agents.store`, on
disk in the state directory) and limits (:mod:`descartes_fast.agents.limits`). Every agent is
recorded in the state directory (:mod:`descartes_fast.agents.records`): a finished agent stays
in memory until the retention limits evict it, and stays queryable by id (status and output)
until the output store's budget evicts it, across restarts of the server. Agents still running
when a server went away (a crash, an upgrade) are adopted from the keeper
(:mod:`descartes_fast.agents.keeper`) by the next one. What happens is reported to a
:class:`Listener` (the server publishes it on PUB).

Error texts follow the Rust reference where it has one (docs/protocol.md §6), so a Rust client
sees the messages it knows. A :class:`~descartes_fast.agents.policy.SpawnPolicy` decides what a
spawn request may ask for and the limits each agent runs under; an agent ended by a limit
ends ``failed``, with the limit named in its final status message.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import logging
import os
import resource
import signal
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from descartes_fast.agents.backends import (
    BackendError,
    BackendRegistry,
    Launch,
    ProgramCliDisabled,
    terminal_size,
    user_turn,
)
from descartes_fast.agents.filters import FilterError, LineFilter
from descartes_fast.agents.keeper_link import Exit, Held, KeeperError, KeeperLink
from descartes_fast.agents.limits import Limits, MemoryWatchdog, apply_rlimits
from descartes_fast.agents.lineindex import LINE_MAX, line_ends
from descartes_fast.agents.policy import PolicyRefusal, SpawnPolicy
from descartes_fast.agents.process import AgentProcess, EndedProcess, StdinClosedError, StdinFullError
from descartes_fast.agents.records import AgentRecord, config_json
from descartes_fast.agents.sessions import DIALECTS, Session, SessionEvent
from descartes_fast.agents.state import StateDir
from descartes_fast.agents.store import HOLD_SECS, AgentOutput, Chunk, Facts, StreamLog
from descartes_fast.wire.schema import (
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
    "SpawnError",
    "SpawnPolicyError",
    "Supervisor",
    "SupervisorError",
]

#: the cooperative pause protocol: exact lines written to the agent's stdin (docs/protocol.md §7)
PAUSE_LINE: Final = b'{"type":"pause","action":"pause"}\n'
RESUME_LINE: Final = b'{"type":"pause","action":"resume"}\n'

#: signal names a ``signal`` command accepts (case-insensitive), as in the reference
SIGNALS: Final[dict[str, str]] = {
    **dict.fromkeys(("interrupt", "sigint", "int"), "interrupt"),
    **dict.fromkeys(("terminate", "sigterm", "term"), "terminate"),
    **dict.fromkeys(("kill", "sigkill"), "kill"),
    **dict.fromkeys(("stop", "sigstop", "pause", "force_pause"), "stop"),
    **dict.fromkeys(("continue", "sigcont", "cont", "resume"), "continue"),
}
_ACTIVE: Final = (AgentStatus.IDLE, AgentStatus.INITIALIZING, AgentStatus.RUNNING, AgentStatus.THINKING,
                  AgentStatus.PAUSED)
#: worker threads for output queries: each holds the interpreter lock between matches, and the
#: event loop waits its turn behind every one of them (health p99 with 8 filtered queries in
#: flight, bench/abuse_bench.py --only regex: 6 threads 8.9-9.5 ms, 2 threads 2.7-2.9, 1 4.2-4.4)
QUERY_THREADS: Final = 2
_TURNS_QUEUED: Final = 16  # turns a session keeps waiting for it at most
_PAST_KEPT: Final = 64  # agents of the records (evicted from memory, or of an earlier run) kept open at once
#: the reason given to agents that were running when the previous server stopped, and that its
#: keeper no longer holds (the keeper was killed, or the machine restarted)
LOST: Final = "lost: the server stopped while it ran, and its keeper no longer holds it"
#: the reason given to an agent whose restart was due when the server stopped (nothing is left to restart)
BETWEEN_LOST: Final = "lost: the server stopped before its next process started"
#: the reason given to live agents when the keeper goes away under this server
KEEPER_LOST: Final = "lost: the keeper (the agents' parent process) went away"

log = logging.getLogger("descartes_fast.supervisor")


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

    def on_output(self, agent: Agent, stream: LogStreamType, data: bytes, sequence: int) -> None: ...
    def on_status(self, agent: Agent, kind: StatusUpdateType, message: str | None,
                  event: dict[str, Any] | None = None) -> None: ...


class _Silent:
    def on_output(self, agent: Agent, stream: LogStreamType, data: bytes, sequence: int) -> None:
        pass

    def on_status(self, agent: Agent, kind: StatusUpdateType, message: str | None,
                  event: dict[str, Any] | None = None) -> None:
        pass


@dataclass(eq=False)
class Agent:
    """One agent: its process and everything known about it."""

    id: uuid.UUID
    config: AgentConfig
    launch: Launch | None                 # None for an agent known from the records only
    process: AgentProcess | EndedProcess = field(repr=False)
    started_at: int
    output: AgentOutput = field(repr=False)
    exited: asyncio.Future[int] | None = field(repr=False)
    limits: Limits = field(default_factory=Limits)
    owner: str | None = None              # the client identity that spawned it (None: not counted)
    status: AgentStatus = AgentStatus.RUNNING
    pause_mode: PauseMode | None = None
    paused_at: int | None = None
    ended_at: int | None = None           # time.time_ns() of the exit
    reason: str | None = None
    limit_hit: bool = False               # a limit ended it: ``failed`` with ``reason``, whatever the exit
    left: int = 0                         # processes of its group still there after its main process exited
    cursors: dict[LogStreamType, int] = field(default_factory=dict, repr=False)  # read_stdout/stderr: next line
    session: Session | None = None        # what its JSON events said (a backend with ``events``)
    restarts: int = 0                     # processes started again after one ended (restart policy)
    turn: str | None = None               # the text of the session's latest turn
    turn_open: bool = False               # ... which has not ended yet
    pending: collections.deque[str] = field(default_factory=collections.deque, repr=False)  # turns to come
    ending_session: bool = False          # ``say --end``: the session ends after its current turn
    _restart_timer: asyncio.TimerHandle | None = field(default=None, repr=False)
    _wall_timer: asyncio.TimerHandle | None = field(default=None, repr=False)
    _config_json: str = field(default="", repr=False)  # the config as the records keep it

    def info(self) -> AgentInfo:
        return AgentInfo(self.id, self.config.name, self.status, self.config.model_backend,
                         self.started_at, self.config.task, self.paused_at, self.pause_mode)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def exit_code(self) -> int | None:
        return self.process.exit_code

    @property
    def running(self) -> bool:
        """The process has not been reaped yet."""
        return self.process.running

    def ending(self) -> dict[str, Any]:
        """How its processes ended, as status updates and ``get_status`` say it: pid, exit code
        (negative: the signal), signal, end time (ns), the reason for its last transition and,
        once ended, the processes of it still running, its CPU time (s) and peak memory (KiB)
        (None while it runs)."""
        code = self.exit_code
        cpu = self.process.cpu_secs
        return {"pid": self.pid, "exit_code": code, "signal": -code if code is not None and code < 0 else None,
                "ended_at": self.ended_at, "processes_left": self.left if self.ended_at is not None else None,
                "reason": self.reason, "cpu_secs": round(cpu, 6) if cpu is not None else None,
                "max_rss_kib": self.process.max_rss_kib, "restarts": self.restarts,
                **(self.session.totals() if self.session is not None else {})}

    @property
    def between_processes(self) -> bool:
        """Not ended, and no process of it runs: a session waiting for its next turn, or an agent
        waiting to be restarted."""
        return not self.running and not self.status.is_terminal() and self.exited is not None \
            and not self.exited.done()

    def facts(self, stream: LogStreamType) -> Facts:
        """What its output *stream* holds (first retained, ever written, ended)."""
        return self.output[stream].facts()

    def record(self) -> AgentRecord:
        if not self._config_json:
            self._config_json = config_json(self.config)
        return AgentRecord(self.id, self.config, self.owner, self.started_at, self.status, self.pause_mode,
                           self.paused_at, self.pid, self.exit_code, self.reason, self.ended_at,
                           self.process.cpu_secs, self.process.max_rss_kib, self._session_state(), self._config_json)

    def _session_state(self) -> dict[str, Any] | None:
        restart = self.launch.restart if self.launch is not None else None
        if self.session is None and not self.restarts and (restart is None or restart.mode == "never"):
            return None
        session = {"dialect": self.session.dialect.name, **self.session.state()} if self.session else None
        return {"restarts": self.restarts, "session": session,
                "restart": restart.as_dict() if restart is not None else None}

    def restore(self, state: dict[str, Any] | None) -> None:
        """What the records kept of its restarts and session (see _session_state)."""
        if state:
            self.restarts = int(state.get("restarts") or 0)
            kept = state.get("session")
            if isinstance(kept, dict) and kept.get("dialect") in DIALECTS:
                self.session = Session.restore(DIALECTS[kept["dialect"]], kept)


def _terminal_size(launch: Launch, backend: str, metadata: dict[str, str]) -> tuple[int, int]:
    """The size of a terminal agent's terminal: the spawn's metadata ``rows``/``cols``, else the backend's."""
    if "rows" not in metadata and "cols" not in metadata:
        return launch.size
    if launch.stdin != "pty":
        raise BackendError(f"metadata 'rows'/'cols' set the size of a terminal, and backend {backend!r} runs "
                           "under none (stdin = \"pty\" gives one)")
    return terminal_size(metadata.get("rows", launch.size[0]), metadata.get("cols", launch.size[1]))


def _ending(exit_code: int) -> str:
    """How a process ended, from its exit code (negative: the signal that ended it)."""
    if exit_code < 0:
        try:
            return f"ended by signal {-exit_code} ({signal.Signals(-exit_code).name})"
        except ValueError:
            return f"ended by signal {-exit_code}"
    return f"exited with status {exit_code}"


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
    state : the state directory (agent records and output store)
    backends : how ``model_backend`` names become command lines
    max_agents : agents that may be active (not completed/failed/terminated) at once
    stop_grace : seconds between SIGTERM and SIGKILL for ``stop``
    retention : seconds a finished agent stays in memory (listed); after that it is queryable by id
    max_retained : finished agents kept in memory at most (the oldest go first)
    policy : what requests may ask for and the per-agent limits (default: ``SpawnPolicy()``)
    keeper : the link to the agents' keeper (default: the keeper of *state*, started if none runs,
             which keeps the agents if this process goes away without :meth:`shutdown`)
    """

    def __init__(self, state: StateDir, backends: BackendRegistry | None = None, *, max_agents: int = 100,
                 stop_grace: float = 2.0, retention: float = 3600.0, max_retained: int = 1000,
                 listener: Listener | None = None, policy: SpawnPolicy | None = None,
                 stdin_buffer: int = 1 << 20, keeper: KeeperLink | None = None) -> None:
        self.state = state
        self.stdin_buffer = stdin_buffer  # bytes of an agent's stdin that may wait for it to read them
        self.backends = backends or BackendRegistry()
        self.policy = policy or SpawnPolicy()
        self.max_agents = max_agents
        self.stop_grace = stop_grace
        self.retention = retention
        self.max_retained = max_retained
        self.listener: Listener = listener or _Silent()
        self._agents: dict[uuid.UUID, Agent] = {}
        self._active: dict[uuid.UUID, Agent] = {}  # those of _agents whose status is active (see _track)
        self._finished: collections.deque[uuid.UUID] = collections.deque()
        self._past: collections.OrderedDict[uuid.UUID, Agent] = collections.OrderedDict()  # of the records
        self._env = {k: v for k, v in os.environ.items() if k != "CLAUDECODE"}
        _give_agents_default_signals()
        self._starting: collections.Counter[str | None] = collections.Counter()  # spawns under way, by owner
        self._by_pid: dict[int, Agent] = {}
        self._memory = MemoryWatchdog(self._memory_exceeded)
        self._queries = concurrent.futures.ThreadPoolExecutor(max_workers=QUERY_THREADS, thread_name_prefix="query")
        state.store.on_evicted = self._output_evicted
        self.keeper = keeper or KeeperLink(state.path)
        self.keeper.on_lost = self._keeper_lost
        self._loop: asyncio.AbstractEventLoop | None = None
        self._load_records()
        try:
            self.attach(asyncio.get_running_loop())
        except RuntimeError:
            pass  # not on a loop yet: the server attaches when it starts serving

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Run on *loop* from now on: hear the keeper, watch the agents adopted from it (once)."""
        if self._loop is not None:
            return
        self._loop = loop
        self.keeper.attach(loop)
        for agent in self._agents.values():
            if isinstance(agent.process, AgentProcess):
                agent.exited = loop.create_future()
                self._watch(agent, loop)
            elif agent.exited is None and not agent.status.is_terminal():  # (a session waiting again)
                agent.exited = loop.create_future()

    # -- registry --

    def get(self, agent_id: uuid.UUID) -> Agent:
        """The agent, from memory, or from the records (a finished agent evicted from memory, or one
        of an earlier run of the server) while its output is stored."""
        self._evict()
        agent = self._agents.get(agent_id) or self._past.get(agent_id)
        if agent is None:
            record = self.state.records.get(agent_id)
            if record is None:  # (an agent's record goes when the store's budget deletes its output)
                raise AgentNotFoundError(agent_id)
            agent = self._past[agent_id] = self._from_record(record, self.state.store.open(agent_id, ended=True))
            while len(self._past) > _PAST_KEPT:
                self.state.store.release(self._past.popitem(last=False)[0])
        return agent

    @staticmethod
    def _from_record(record: AgentRecord, output: AgentOutput) -> Agent:
        process = EndedProcess(record.pid, record.exit_code, record.cpu_secs, record.max_rss_kib)
        agent = Agent(record.id, record.config, None, process, record.started_at, output, None, owner=record.owner,
                      status=record.status, ended_at=record.ended_at, reason=record.reason)
        agent.restore(record.session)
        return agent

    def _load_records(self) -> None:
        """At start: what an earlier run left. Agents that had not ended are adopted from the
        keeper, which still holds them (a crash or an upgrade), or else marked lost; a session
        that waited for its next turn waits again; one whose restart was due is marked lost;
        finished ones come back into memory within the retention limits (so they are listed again)."""
        records = self.state.records
        held = dict(self.keeper.held)
        now = time.time_ns()
        back: list[Agent] = []
        for record in records.unended():
            got = held.pop(str(record.id), None)
            if got is not None:
                back.append(self._adopt(record, got))
                continue
            ended = self.keeper.recorded.get(str(record.id))
            if ended is not None:  # its keeper wrote down how it ended, then let go of it
                record.status = AgentStatus.COMPLETED if ended.code == 0 else AgentStatus.FAILED
                record.exit_code, record.ended_at = ended.code, ended.ended_at
                record.cpu_secs = ended.usage.ru_utime + ended.usage.ru_stime
                record.max_rss_kib = ended.usage.ru_maxrss
                record.reason = f"{_ending(ended.code)} while no server ran"
            else:
                record.status, record.reason, record.ended_at = AgentStatus.FAILED, LOST, now
            records.put(record)
            self.state.store.open(record.id, ended=True)  # repairs what the crash cut short
            self.state.store.release(record.id)
            log.warning("agent %s (%s) was running when the previous server stopped, and its keeper no longer "
                        "holds it: %s", record.id, record.config.model_backend, record.reason)
        for stray in held.values():  # started for a server that crashed before it recorded the agent
            log.warning("the keeper holds agent %s (pid %d), which the records do not know: killing it",
                        stray.id, stray.pid)
            AgentProcess(stray, self.keeper).abandon()
        horizon = now - int(self.retention * 1e9)
        kept = []
        for record in records.ended():
            if not record.status.is_terminal():  # none of its processes ran: between two of them
                waiting = self._waiting_again(record)
                if waiting is not None:
                    back.append(waiting)
                    continue
                record.status, record.reason = AgentStatus.FAILED, BETWEEN_LOST
                records.put(record)
                log.warning("agent %s (%s) was about to start its next process when the previous server stopped: "
                            "%s", record.id, record.config.model_backend, record.reason)
            if (record.ended_at or 0) > horizon:
                kept.append(record)
        for record in kept[-self.max_retained:]:
            back.append(self._from_record(record, self.state.store.open(record.id, ended=True)))
            self._finished.append(record.id)
        for agent in sorted(back, key=lambda a: a.started_at):  # listed in spawn order, as before
            self._agents[agent.id] = agent
            self._track(agent)
        if self.keeper.held:
            log.info("adopted %d agent(s) from the keeper", sum(isinstance(a.process, AgentProcess) for a in back))

    def _launch_of(self, record: AgentRecord) -> Launch | None:
        """How the agent of an earlier run was launched: its backend's command for its config, with
        the restart policy it was spawned with (its spawn metadata may have set one, the records
        keep it); None if its backend is gone or no longer allowed."""
        try:
            launch = self.backends.resolve(record.config.model_backend, allow_program_cli=True).build(record.config)
        except (BackendError, ProgramCliDisabled):
            return None
        kept = (record.session or {}).get("restart")
        if not isinstance(kept, dict):
            return launch
        try:
            return dataclasses.replace(launch, restart=launch.restart.with_values(kept, "the records"))
        except ValueError:
            return launch

    def _waiting_again(self, record: AgentRecord) -> Agent | None:
        """A session of an earlier run that waited for its next turn (``idle``, no process: a CLI
        that runs one process per turn) waits again, its session and totals as they were; None
        for anything else (or a backend that no longer runs one process per turn)."""
        launch = self._launch_of(record) if record.status == AgentStatus.IDLE else None
        if launch is None or launch.turns != "process":
            return None
        agent = Agent(record.id, record.config, launch,
                      EndedProcess(record.pid, record.exit_code, record.cpu_secs, record.max_rss_kib),
                      record.started_at, self.state.store.open(record.id, ended=True), None,
                      Limits.of(self.policy, None), record.owner, status=record.status, reason=record.reason)
        agent.restore(record.session)
        if agent.session is None:
            self.state.store.release(record.id)  # (its output is opened again if it is kept)
            return None
        log.info("agent %s (%s) waits again for its next turn in session %s", agent.id, record.config.model_backend,
                 agent.session.session_id)
        return agent

    def _adopt(self, record: AgentRecord, held: Held) -> Agent:
        """An agent of an earlier run that its keeper still holds: running, or ended since."""
        launch = self._launch_of(record)  # (None: no cooperative pause, no restarts)
        process = AgentProcess(held, self.keeper)
        agent = Agent(record.id, record.config, launch, process, record.started_at,
                      self.state.store.open(record.id, ended=False), None, Limits.of(self.policy, None),
                      record.owner, status=record.status, pause_mode=record.pause_mode, paused_at=record.paused_at,
                      reason=record.reason)
        agent.restore(record.session)
        log.info("adopted agent %s (pid %d, %s)%s", agent.id, agent.pid, agent.status,
                 ", which exited while no server ran" if held.exit is not None else "")
        return agent

    def _keeper_lost(self) -> None:
        """The keeper went away under this server: its agents can no longer be watched (their
        exits would reach nobody). What is left of them is killed and they end ``failed``; a new
        keeper is started for the agents to come."""
        lost = self.keeper
        for agent in list(self._agents.values()):
            if isinstance(agent.process, AgentProcess) and agent.running:
                agent.process.signal_group(signal.SIGKILL)
                if agent.status != AgentStatus.TERMINATED:
                    agent.reason = KEEPER_LOST
                # (made here: a struct_rusage in a module global breaks CPython 3.11 at exit)
                agent.process.exited(Exit(-signal.SIGKILL, time.time_ns(), resource.struct_rusage((0,) * 16)))
        try:
            self.keeper = lost.successor()
        except KeeperError as exc:
            log.error("cannot start a new keeper: %s; spawns fail until one runs", exc)
            return
        self.keeper.on_lost = self._keeper_lost
        if self._loop is not None:
            self.keeper.attach(self._loop)
        log.warning("started a new keeper (pid %d) for the agents to come", self.keeper.keeper_pid)

    def _output_evicted(self, agent_id: uuid.UUID) -> None:
        """The output store deleted a finished agent's output to stay within its budget: it is gone."""
        self.state.records.delete(agent_id)
        self._past.pop(agent_id, None)
        if self._agents.pop(agent_id, None) is not None:
            try:
                self._finished.remove(agent_id)
            except ValueError:
                pass

    def agents(self, status: AgentStatus | None = None, limit: int | None = None) -> list[Agent]:
        """Agents in spawn order, optionally only those with *status*, at most *limit*."""
        self._evict()
        found = [a for a in self._agents.values() if status is None or a.status == status]
        return found if limit is None else found[:limit]

    def active_count(self, owner: str | None = None) -> int:
        """Active agents (of *owner* only, if given)."""
        if owner is None:
            return len(self._active)  # (asked at every spawn: not a scan of every agent retained)
        return sum(1 for a in self._active.values() if a.owner == owner)

    def _track(self, agent: Agent) -> None:
        """Keep ``_active`` true to *agent*'s status; called wherever a status is set."""
        if agent.status in _ACTIVE:
            self._active[agent.id] = agent
        else:
            self._active.pop(agent.id, None)

    def _evict(self) -> None:
        """Finished agents past the retention limits leave memory (their records and output stay)."""
        if not self._finished:
            return
        horizon = time.time_ns() - int(self.retention * 1e9)
        while self._finished:
            oldest = self._agents.get(self._finished[0])
            if oldest is not None and len(self._finished) <= self.max_retained and \
                    (oldest.ended_at or 0) > horizon:
                break
            self._finished.popleft()
            if oldest is not None:
                del self._agents[oldest.id]
                self.state.store.release(oldest.id)

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
            resume = (metadata or {}).get("resume") or None
            if resume is not None and backend.events is None:
                raise BackendError(f"metadata 'resume' resumes a session, and backend {backend.name!r} has none")
            launch = backend.build(config, session_id=resume)
            launch = dataclasses.replace(launch, restart=launch.restart.with_values(metadata or {}, "spawn metadata"),
                                         size=_terminal_size(launch, backend.name, metadata or {}))
        except (PolicyRefusal, ProgramCliDisabled) as exc:
            raise SpawnPolicyError(f"spawn refused by this server's policy: {exc}") from None
        except (BackendError, ValueError) as exc:
            raise SpawnError(f"Agent spawn failed: {exc}") from None
        agent_id = uuid.uuid4()
        make_dir = None
        if cwd is None and launch.cwd is None and policy.workdir is not None:
            make_dir = os.path.join(policy.workdir, str(agent_id))
        launch = dataclasses.replace(launch, cwd=cwd or make_dir or launch.cwd)
        loop = asyncio.get_running_loop()
        self.attach(loop)
        self._starting[owner] += 1
        try:
            process = await self._start(agent_id, launch, make_dir, policy)
        except (OSError, ValueError) as exc:
            raise SpawnError(f"Agent spawn failed: Failed to spawn process for backend "
                             f"'{config.model_backend}': {exc}") from None
        finally:
            self._starting[owner] -= 1
            if not self._starting[owner]:
                del self._starting[owner]
        agent = Agent(agent_id, config, launch, process, process.started_at, self.state.store.create(agent_id),
                      loop.create_future(), Limits.of(policy, timeout_secs), owner)
        if launch.events is not None:
            agent.session = Session(DIALECTS[launch.events], session_id=resume)
        self._agents[agent.id] = agent
        self._track(agent)
        self.state.records.put(agent.record())
        self._watch(agent, loop)
        self.listener.on_status(agent, StatusUpdateType.STATUS_CHANGED, "spawned")
        if launch.turns is not None and config.task:
            self._turn_started(agent, config.task)
        return agent

    # -- terminals (stdin = "pty") --

    def resize(self, agent_id: uuid.UUID, rows: Any, cols: Any) -> dict[str, int]:
        """Set the size of the agent's terminal; what it is now."""
        agent = self.get(agent_id)
        try:
            rows, cols = terminal_size(rows, cols)
        except ValueError as exc:
            raise SupervisorError(f"Agent execution error: resize: {exc}") from None
        if not agent.process.pty and agent.status.is_terminal() and agent.launch is None:
            raise SupervisorError(f"Agent execution error: cannot resize agent {agent.id}: it has ended")
        if not agent.process.pty:
            raise SupervisorError(f"Agent execution error: agent {agent.id} (backend '{agent.config.model_backend}') "
                                  "runs under no terminal: resize works with backends whose stdin is \"pty\"")
        try:
            agent.process.resize(rows, cols)
        except (StdinClosedError, OSError) as exc:
            raise SupervisorError(f"Agent execution error: cannot resize agent {agent.id}: {exc}") from None
        return {"rows": rows, "cols": cols}

    # -- sessions --

    def _turn_started(self, agent: Agent, text: str) -> None:
        """*text* goes to the session as its next turn (claude: a line on its stdin; codex and
        gemini: the process just started for it has it in its arguments)."""
        assert agent.launch is not None
        if agent.launch.turns == "stdin":
            self._write(agent, user_turn(text))
        agent.turn, agent.turn_open = text, True
        n = (agent.session.turns + agent.session.failed_turns + 1) if agent.session is not None else 1
        self._set(agent, AgentStatus.THINKING, f"turn {n} started", event={"event": "turn_started", "turn": n})

    def say(self, agent_id: uuid.UUID, text: str | None, end: bool = False) -> str:
        """Send *text* to the agent's session as its next turn; with *end*, end the session once
        its turns are done. Returns what happened: ``sent``, ``queued`` or ``ending``."""
        agent = self.get(agent_id)
        launch = agent.launch
        if launch is None or launch.turns is None:
            raise SupervisorError(f"Agent execution error: agent {agent.id} (backend '{agent.config.model_backend}') "
                                  "holds no session: say works with the session backends (claude-session, "
                                  "codex-session, gemini-session); write_stdin sends raw input")
        if agent.status.is_terminal():
            raise SupervisorError(f"Agent execution error: the session of agent {agent.id} has ended ({agent.status})")
        if not text and not end:
            raise SupervisorError("Agent execution error: say needs a text, or end")
        if agent.status == AgentStatus.PAUSED:
            raise SupervisorError(f"Agent execution error: agent {agent.id} is paused: resume it first")
        done = "sent"
        if text:
            if launch.turns == "stdin" and agent.running:
                self._turn_started(agent, text)
            elif agent.between_processes and agent._restart_timer is None:
                self._next_process(agent, text)
            else:  # a turn's process runs, or the agent is about to be restarted
                if len(agent.pending) >= _TURNS_QUEUED:
                    raise SupervisorError(f"Agent execution error: agent {agent.id} has {_TURNS_QUEUED} turns "
                                          "waiting already")
                agent.pending.append(text)
                done = "queued"
        if end:
            agent.ending_session = True
            if launch.turns == "stdin" and agent.running:
                agent.process.close_stdin(when_flushed=True)
            elif agent.between_processes and agent._restart_timer is None and not agent.pending and not text:
                agent.reason = "its session was ended (say --end)"
                self._ended(agent, agent.exit_code or 0, None)
            done = "ending" if not text else done
        return done

    def _session_events(self, agent: Agent, events: list[SessionEvent]) -> None:
        for event in events:
            status = agent.status
            if event.kind in ("turn_completed", "turn_failed"):
                agent.turn_open = False
                if status == AgentStatus.THINKING:
                    status = AgentStatus.IDLE
            if event.kind == "session":
                self.state.records.put(agent.record())
            if status != agent.status:
                self._set(agent, status, event.message, event=event.data)
            else:
                self.listener.on_status(agent, StatusUpdateType.STATUS_CHANGED, event.message, event.data)
            if event.kind in ("turn_completed", "turn_failed") and agent.running and agent.pending \
                    and agent.launch is not None and agent.launch.turns == "stdin":
                self._turn_started(agent, agent.pending.popleft())

    def _next_process(self, agent: Agent, turn: str | None) -> None:
        """Start the agent's next process: a restart, or the process of a session's next turn
        (it resumes the session where one is known; *turn*: the turn it takes)."""
        assert agent.launch is not None and self._loop is not None
        agent._restart_timer = None
        session_id = agent.session.session_id if agent.session is not None else None
        try:
            launch = self.backends.resolve(agent.config.model_backend, allow_program_cli=True) \
                .build(agent.config, session_id=session_id, prompt=turn if agent.launch.turns == "process" else None)
        except BackendError as exc:
            self._cannot_go_on(agent, f"cannot build its next command: {exc}")
            return
        launch = dataclasses.replace(launch, cwd=agent.launch.cwd, restart=agent.launch.restart)
        self._set(agent, AgentStatus.INITIALIZING, "starting its next process")

        async def start() -> None:
            try:
                process = await self._start(agent.id, launch, None, self.policy)
            except (OSError, ValueError, SpawnError, KeeperError) as exc:
                self._cannot_go_on(agent, f"cannot start its next process: {exc}")
                return
            if agent.status == AgentStatus.TERMINATED:  # stopped meanwhile
                process.abandon()
                return
            agent.launch, agent.process = launch, process
            agent.ended_at = None
            if agent.session is not None:
                agent.session.new_process()
            agent.output.resume()
            assert self._loop is not None
            self._watch(agent, self._loop)
            self._set(agent, AgentStatus.RUNNING, f"process {agent.restarts + 1} started (pid {process.pid})")
            if turn is not None:
                self._turn_started(agent, turn)
        self._loop.create_task(start())

    def _cannot_go_on(self, agent: Agent, why: str) -> None:
        if agent.status == AgentStatus.TERMINATED:
            return
        agent.reason, agent.limit_hit = why, True  # (limit_hit: it ends failed, whatever its last exit)
        self._ended(agent, agent.exit_code or 0, None)

    def _goes_on(self, agent: Agent, exit_code: int, usage: resource.struct_rusage | None) -> bool:
        """After a process of *agent* exited: its session waits for its next turn, or takes it, or
        its restart policy starts it again (True); or it has ended (False)."""
        launch = agent.launch
        if launch is None or agent.status == AgentStatus.TERMINATED or agent.limit_hit or usage is None or \
                agent.limits.cpu_exceeded(exit_code, usage):
            return False
        if exit_code == 0 and launch.turns == "process" and (agent.pending or not agent.ending_session):
            self._process_over(agent)
            agent.turn_open = False
            if agent.pending:
                self._next_process(agent, agent.pending.popleft())
            else:
                self._set(agent, AgentStatus.IDLE, "waiting for its next turn (say)")
            return True
        failed = exit_code != 0
        if agent.ending_session and not failed:
            return False
        if not launch.restart.wants(failed, agent.restarts):
            if failed and launch.restart.mode != "never":
                agent.reason = f"{_ending(exit_code)}; not restarted again after {agent.restarts} restart(s) " \
                               f"(max_restarts = {launch.restart.max_restarts})"
            return False
        self._process_over(agent)
        agent.restarts += 1
        delay = launch.restart.delay(agent.restarts)
        turn = agent.turn if agent.turn_open or (agent.session is not None and agent.session.session_id is None) \
            else None
        if launch.turns == "process" and turn is None and agent.pending:
            turn = agent.pending.popleft()
        assert self._loop is not None
        agent._restart_timer = self._loop.call_later(delay, self._next_process, agent, turn)
        self._set(agent, AgentStatus.INITIALIZING,
                  f"{_ending(exit_code)}: restart {agent.restarts} of {launch.restart.max_restarts} in {delay:g} s",
                  event={"event": "restarting", "restart": agent.restarts, "delay_secs": delay,
                         "exit_code": exit_code})
        return True

    def _watch(self, agent: Agent, loop: asyncio.AbstractEventLoop) -> None:
        """Hear the agent's output and exit; its wall-clock and memory limits."""
        assert isinstance(agent.process, AgentProcess)
        agent.process.watch(loop, lambda stream, fd, most: self._on_output(agent, stream, fd, most),
                            lambda code, usage: self._on_exit(agent, code, usage))
        limits = agent.limits
        # one wall clock for all its processes, from its start (an adopted agent: what is left of it)
        if limits.wall_secs is not None and agent._wall_timer is None:
            left = limits.wall_secs - (time.time_ns() - agent.started_at) / 1e9
            agent._wall_timer = loop.call_later(max(0.0, left), self._wall_expired, agent)
        if limits.memory_mb is not None:
            self._by_pid[agent.pid] = agent
            self._memory.watch(agent.pid, limits.memory_mb)

    async def _start(self, agent_id: uuid.UUID, launch: Launch, make_dir: str | None,
                     policy: SpawnPolicy) -> AgentProcess:
        """The agent's directory (a new one under ``workdir``), the process (the keeper starts
        it), its resource limits."""
        if make_dir is not None:
            try:
                os.makedirs(os.path.dirname(make_dir), mode=0o700, exist_ok=True)
                os.mkdir(make_dir, 0o700)
                os.chmod(make_dir, 0o700)  # whatever the umask
            except OSError as exc:
                raise SpawnError(f"Agent spawn failed: cannot create the agent's working directory "
                                 f"'{make_dir}': {exc.strerror}") from None
        try:
            process = await AgentProcess.start(self.keeper, str(agent_id), launch, {**self._env, **launch.env})
        except BaseException:
            if make_dir is not None:
                try:
                    os.rmdir(make_dir)
                except OSError:
                    pass
            raise
        try:
            apply_rlimits(process.pid, policy)
        except OSError as exc:
            process.abandon()
            raise SpawnError(f"Agent spawn failed: cannot apply the resource limits (cpu_secs = "
                             f"{policy.cpu_secs}, open_files = {policy.open_files}): {exc.strerror}") from None
        return process

    def _on_output(self, agent: Agent, stream: LogStreamType, fd: int | None, most: int) -> int:
        """Output waiting in a pipe: moved into the store (how many bytes), and what it completes
        (whole lines) published; at the end of a stream (*fd* None) its unfinished line becomes a
        line. Of a terminal, each read is published whole (a prompt has no newline); of a pipe,
        reads that follow each other closely are held to become one chunk, for ``HOLD_SECS`` at
        most (:meth:`StreamLog.take`)."""
        log = agent.output[stream]
        if fd is None:
            taken, chunks = 0, log.finish(time.time_ns())
        elif agent.process.pty:
            taken, chunks = agent.output.take(stream, fd, most)
            if (rest := log.cut(time.time_ns())) is not None:
                chunks.append(rest)
        else:
            held = log.held
            taken, chunks = agent.output.take(stream, fd, most, hold=True)
            if log.held and not held:  # (a release is due once HOLD_SECS have passed)
                asyncio.get_running_loop().call_later(HOLD_SECS, self._release, agent, stream)
        self._publish(agent, stream, chunks)
        return taken

    def _release(self, agent: Agent, stream: LogStreamType) -> None:
        """What the store has held of *stream* for HOLD_SECS becomes chunks."""
        log = agent.output[stream]
        if log.held:
            self._publish(agent, stream, log.release(time.time_ns()))

    def _publish(self, agent: Agent, stream: LogStreamType, chunks: list[Chunk]) -> None:
        """Tell the listener (and the agent's session) of new *chunks* of *stream*."""
        session = agent.session if stream == LogStreamType.STDOUT else None
        for chunk in chunks:
            self.listener.on_output(agent, stream, chunk.data, chunk.sequence)
            if session is not None and (events := session.feed(chunk.data)):
                self._session_events(agent, events)

    def _on_exit(self, agent: Agent, exit_code: int, usage: resource.struct_rusage) -> None:
        if not self._goes_on(agent, exit_code, usage):
            self._ended(agent, exit_code, usage)

    def _process_over(self, agent: Agent) -> None:
        """Its (latest) process has exited: its end time (kept where none has run since), the chunks
        its unfinished lines became (what it wrote is all there will be), no more memory watch."""
        if agent.ended_at is None:
            agent.ended_at = agent.process.ended_at or time.time_ns()
        for stream, chunk in agent.output.finish():
            self.listener.on_output(agent, stream, chunk.data, chunk.sequence)
        self._memory.forget(agent.pid)
        self._by_pid.pop(agent.pid, None)

    def _ended(self, agent: Agent, exit_code: int, usage: resource.struct_rusage | None) -> None:
        """The agent has ended (its last process has exited, or none runs: *usage* None)."""
        if agent._restart_timer is not None:
            agent._restart_timer.cancel()
            agent._restart_timer = None
        self._process_over(agent)
        if agent._wall_timer is not None:
            agent._wall_timer.cancel()
            agent._wall_timer = None
        if agent.status != AgentStatus.TERMINATED and not agent.limit_hit and usage is not None and \
                agent.limits.cpu_exceeded(exit_code, usage):
            agent.reason = agent.limits.cpu_text()
            agent.limit_hit = True
            agent.process.signal_group(signal.SIGKILL)  # what is left of its group is over the limit too
        if agent.status != AgentStatus.TERMINATED:  # stop and kill are sticky
            ok = exit_code == 0 and not agent.limit_hit
            agent.status = AgentStatus.COMPLETED if ok else AgentStatus.FAILED
            self._track(agent)
            if not ok and agent.reason is None:
                agent.reason = f"killed by signal {-exit_code}" if exit_code < 0 else \
                    f"exited with status {exit_code}"
            self.listener.on_status(agent, StatusUpdateType.COMPLETED if ok else StatusUpdateType.ERROR,
                                    agent.reason or "exited with status 0")
        self.state.records.put(agent.record())
        self._finished.append(agent.id)
        assert agent.exited is not None
        agent.exited.set_result(exit_code)
        agent.left = agent.process.members()
        if agent.status == AgentStatus.TERMINATED:  # stopped or killed: said once more when all of it is gone
            if agent.left and agent.reason == "killed":
                agent.process.signal_group(signal.SIGKILL)
            self._until_gone(agent, StatusUpdateType.TERMINATED, f"{agent.reason}: {_ending(exit_code)}")
        elif agent.left:
            log.info("agent %s exited leaving %d process(es) in its group: stop or kill ends them, and so "
                     "does the server's shutdown", agent.id, agent.left)
        self._evict()

    def _until_gone(self, agent: Agent, kind: StatusUpdateType, message: str) -> None:
        """Publish *message* once no process of the agent's group is left (checked every 20 ms,
        for at most ``stop_grace`` + 5 s: then it says how many could not be ended)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.stop_grace + 5.0

        def check() -> None:
            agent.left = agent.process.members()
            if agent.left and loop.time() < deadline:
                loop.call_later(0.02, check)
                return
            said = message if not agent.left else f"{message}; {agent.left} process(es) of its group could not be ended"
            if not agent.left:
                agent.process.forget()
            self.listener.on_status(agent, kind, said)
        check()

    def _end_leftovers(self, agent: Agent, graceful: bool) -> bool:
        """Stop or kill what the agent's main process left in its group; False if nothing is left."""
        if not agent.left or not agent.process.members():
            agent.left = 0
            return False
        if graceful:
            agent.process.terminate(self.stop_grace)
        else:
            agent.process.signal_group(signal.SIGKILL)
        self._until_gone(agent, StatusUpdateType.STATUS_CHANGED, "the processes its group had left have ended")
        return True

    # -- limits --

    def _limit_exceeded(self, agent: Agent, reason: str, graceful: bool) -> None:
        """End *agent* for exceeding a limit: SIGTERM (SIGKILL after ``stop_grace``) or SIGKILL
        at once; it ends ``failed`` with *reason* (unless stopped or killed already)."""
        if agent.status != AgentStatus.TERMINATED:
            agent.reason = reason
            agent.limit_hit = True
        if graceful:
            agent.process.terminate(self.stop_grace)
        else:
            agent.process.signal_group(signal.SIGKILL)

    def _wall_expired(self, agent: Agent) -> None:
        agent._wall_timer = None
        if agent.running and not agent.limit_hit:
            self._limit_exceeded(agent, agent.limits.wall_text(), graceful=True)

    def _memory_exceeded(self, pgid: int, reason: str) -> None:
        agent = self._by_pid.get(pgid)
        if agent is not None and agent.running and not agent.limit_hit:
            self._limit_exceeded(agent, reason, graceful=False)

    async def wait(self, agent_id: uuid.UUID) -> int | None:
        """The agent's exit code, once its process has exited."""
        agent = self.get(agent_id)
        if agent.exited is None:
            return agent.exit_code
        return await asyncio.shield(agent.exited)

    def _set(self, agent: Agent, status: AgentStatus, message: str,
             kind: StatusUpdateType = StatusUpdateType.STATUS_CHANGED, event: dict[str, Any] | None = None) -> None:
        agent.status = status
        self._track(agent)
        if status != AgentStatus.PAUSED:
            agent.pause_mode = agent.paused_at = None
        self.state.records.put(agent.record())
        self.listener.on_status(agent, kind, message, event)

    def stop(self, agent_id: uuid.UUID) -> bool:
        """SIGTERM to the agent's group, SIGKILL after ``stop_grace``; ``terminated`` at once.
        False (nothing done) when the agent has ended or is being stopped already."""
        agent = self.get(agent_id)
        if agent.between_processes:
            return self._end_between(agent, "stopped")
        if not agent.running:
            return self._end_leftovers(agent, graceful=True)
        if agent.status.is_terminal():
            return False
        agent.process.terminate(self.stop_grace)
        agent.reason = "stopped"
        self._set(agent, AgentStatus.TERMINATED, "stopped", StatusUpdateType.TERMINATED)
        return True

    def kill(self, agent_id: uuid.UUID) -> bool:
        """SIGKILL to the agent's whole process group; ``terminated`` at once (also cuts a stop's
        grace short). False (nothing done) when the agent's process has exited already."""
        agent = self.get(agent_id)
        if agent.between_processes:
            return self._end_between(agent, "killed")
        if not agent.running:
            return self._end_leftovers(agent, graceful=False)
        agent.process.signal_group(signal.SIGKILL)
        if agent.status != AgentStatus.TERMINATED:
            agent.reason = "killed"
            self._set(agent, AgentStatus.TERMINATED, "killed", StatusUpdateType.TERMINATED)
        return True

    def _end_between(self, agent: Agent, how: str) -> bool:
        """Stop or kill an agent none of whose processes runs (between turns, or before a restart)."""
        agent.reason = how
        agent.status = AgentStatus.TERMINATED
        self._ended(agent, agent.exit_code or 0, None)
        return True

    def pause(self, agent_id: uuid.UUID, force: bool = False) -> PauseMode:
        """Pause: cooperative (the pause line on stdin) where the backend honours it, else SIGSTOP."""
        agent = self.get(agent_id)
        if agent.status == AgentStatus.PAUSED:
            raise SupervisorError("Agent execution error: Agent is already paused")
        if agent.status not in (AgentStatus.RUNNING, AgentStatus.THINKING):
            what = "terminal state" if agent.status.is_terminal() else "state"
            raise SupervisorError(f"Agent execution error: Cannot pause agent in {what}: {agent.status}")
        cooperative = (not force and agent.launch is not None and agent.launch.cooperative_pause
                       and agent.process.stdin_fd is not None)
        if cooperative:
            self._write(agent, PAUSE_LINE)
        else:
            agent.process.freeze()
        agent.pause_mode = PauseMode.COOPERATIVE if cooperative else PauseMode.FORCED
        agent.paused_at = time.time_ns()
        agent.status = AgentStatus.PAUSED
        self._track(agent)
        self.state.records.put(agent.record())
        self.listener.on_status(agent, StatusUpdateType.STATUS_CHANGED, f"paused ({agent.pause_mode})")
        return agent.pause_mode

    def resume(self, agent_id: uuid.UUID) -> Agent:
        """Undo a pause the way it was made."""
        agent = self.get(agent_id)
        if agent.status != AgentStatus.PAUSED:
            raise SupervisorError(f"Agent execution error: Agent is not paused, current status: {agent.status}")
        if agent.pause_mode == PauseMode.FORCED:
            agent.process.thaw()
        elif agent.process.stdin_fd is not None:
            self._write(agent, RESUME_LINE)
        self._set(agent, AgentStatus.RUNNING, "resumed")
        return agent

    def send_signal(self, agent_id: uuid.UUID, name: str) -> str:
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
                agent.process.signal_group(signal.SIGCONT)
        elif agent.running:
            agent.process.signal_group(signal.SIGINT)
        return name

    # -- stdin --

    def write_stdin(self, agent_id: uuid.UUID, data: bytes, eof: bool = False) -> tuple[int, int]:
        """Write *data* to the agent's stdin (never blocks; what the pipe cannot take waits, up to
        ``stdin_buffer`` bytes); close it afterwards if *eof*. Returns the bytes the pipe took at
        once and the bytes now waiting for the agent to read them."""
        agent = self.get(agent_id)
        if not agent.process.stdin_open:
            raise SupervisorError(f"Agent execution error: stdin of agent {agent.id} is closed")
        taken = self._write(agent, data) if data else 0
        if eof:
            agent.process.close_stdin(when_flushed=True)
        return taken, agent.process.stdin_queued

    def check_stdin_room(self, agent_id: uuid.UUID, size: int) -> None:
        """Raise the SupervisorError a write of *size* bytes to the agent's stdin would raise for
        want of room (so that the server refuses a write too large before it builds its bytes)."""
        agent = self.get(agent_id)
        if agent.process.stdin_open:
            self._write(agent, size)

    def _write(self, agent: Agent, data: bytes | int) -> int:
        """Write *data*; an int: only check that a write of that many bytes would be taken (0)."""
        try:
            if isinstance(data, int):
                agent.process.check_room(data, self.stdin_buffer)
                return 0
            return agent.process.write(data, self.stdin_buffer)
        except StdinClosedError:
            raise SupervisorError(f"Agent execution error: stdin of agent {agent.id} is closed "
                                  "(the process stopped reading)") from None
        except StdinFullError as exc:
            raise SupervisorError(f"Agent execution error: stdin of agent {agent.id} is full: {exc}") from None

    # -- output --

    def read_next(self, agent_id: uuid.UUID, stream: LogStreamType) -> bytes | None:
        """The next unread line of *stream* (the reference's destructive ``read_stdout``), or None.
        Lines dropped by the retention budget are skipped (they are counted in the facts)."""
        agent = self.get(agent_id)
        log = agent.output[stream]
        facts = log.facts()
        line = max(agent.cursors.get(stream, 0), facts.first_line)
        if line >= facts.end_line:
            return None
        got = log.read(line=line, max_chunks=1)
        ends = line_ends(got.data, 1, LINE_MAX)
        agent.cursors[stream] = line + 1
        return got.data[:ends[0]] if ends else got.data

    async def query(self, agent_id: uuid.UUID, streams: tuple[LogStreamType, ...], *, offset: int = 0,
                    limit: int | None = None, pattern: str | None = None) -> tuple[list[str], int, bool]:
        """Stored lines of *streams* (one after the other) matching *pattern*: (page, total
        matching, has_more). Reading and matching run on a worker thread, not the event loop."""
        agent = self.get(agent_id)
        try:
            regex = LineFilter(pattern) if pattern is not None else None
        except FilterError as exc:
            raise SupervisorError(f"Agent execution error: invalid filter regex {pattern!r}: {exc}") from None
        logs = [agent.output[s] for s in streams]
        snapshots = [log.snapshot() for log in logs]
        return await asyncio.get_running_loop().run_in_executor(
            self._queries, _query, logs, snapshots, offset, limit, regex)

    # -- shutdown --

    async def shutdown(self, grace: float | None = None, keep_agents: bool = False) -> None:
        """Stop every live agent (SIGTERM, SIGKILL after *grace*) and wait until all of each has
        exited; or, with *keep_agents*, leave them running to the keeper for the next server."""
        grace = self.stop_grace if grace is None else grace
        live = [a for a in self._agents.values() if a.running]
        if keep_agents:
            self._memory.close()
            self._queries.shutdown(wait=False, cancel_futures=True)
            for agent in self._agents.values():
                if isinstance(agent.process, AgentProcess):
                    agent.process.detach()
            self.keeper.close()
            log.info("left %d running agent(s) to the keeper (pid %d) for the next server", len(live),
                     self.keeper.keeper_pid)
            return
        for agent in live:
            agent.process.signal_group(signal.SIGTERM)
            agent.process.signal_group(signal.SIGCONT)
            if agent.status != AgentStatus.TERMINATED:
                agent.reason = "server shutdown"
                self._set(agent, AgentStatus.TERMINATED, "server shutdown", StatusUpdateType.TERMINATED)
        for agent in list(self._agents.values()):  # a session waiting for its next turn, a restart not yet due
            if agent.between_processes:
                self._end_between(agent, "server shutdown")
        self._memory.close()
        self._queries.shutdown(wait=False, cancel_futures=True)
        futures = [asyncio.shield(a.exited) for a in live if a.exited is not None]
        if futures:
            _, pending = await asyncio.wait(futures, timeout=grace)
            if pending:
                for agent in live:
                    if agent.running:
                        agent.process.signal_group(signal.SIGKILL)
                await asyncio.wait(futures, timeout=5.0)
        await self._end_every_group(grace)
        for agent in self._agents.values():  # (a pipe that a process out of reach holds open is let go)
            if isinstance(agent.process, AgentProcess) and not agent.running and not agent.process.released:
                agent.process.detach()
                self.keeper.release(str(agent.id))
        self.keeper.close()

    async def _end_every_group(self, grace: float) -> None:
        """What agents' main processes left in their groups: SIGTERM, SIGKILL after *grace*; until
        none is left (or 5 s more)."""
        left = [a for a in self._agents.values() if not a.running and a.left and a.process.members()]
        if not left:
            return
        log.info("ending what %d agent(s) left in their process groups", len(left))
        for agent in left:
            agent.process.signal_group(signal.SIGTERM)
            agent.process.signal_group(signal.SIGCONT)
        loop = asyncio.get_running_loop()
        killed, deadline = False, loop.time() + grace
        while left:
            await asyncio.sleep(0.02)
            left = [a for a in left if a.process.members()]
            if left and not killed and loop.time() >= deadline:
                for agent in left:
                    agent.process.signal_group(signal.SIGKILL)
                killed, deadline = True, loop.time() + 5.0
            elif left and killed and loop.time() >= deadline:
                log.warning("could not end every process of agents %s", ", ".join(str(a.id) for a in left))
                return


def _query(logs: list[StreamLog], snapshots: list[tuple[Any, Facts]], offset: int, limit: int | None,
           regex: LineFilter | None,
           page: int = 4096) -> tuple[list[str], int, bool]:
    """On a worker thread: the lines of *logs* (their stored lines, one log after the other) from the
    *offset*-th match on, at most *limit*, the number of matches, and whether more follow."""
    out: list[str] = []
    total = 0
    want = limit if limit is not None else 1 << 62
    for log, snapshot in zip(logs, snapshots):
        facts = snapshot[1]
        if regex is None:  # no filter: counting is arithmetic and the page is read directly
            count = facts.end_line - facts.first_line
            skip = max(0, offset - total)
            if skip < count and len(out) < want:
                out += log.lines(facts.first_line + skip, min(want - len(out), count - skip), snapshot)
            total += count
            continue
        line = facts.first_line
        while line < facts.end_line:
            texts = log.lines(line, page, snapshot)
            if not texts:
                break
            line += len(texts)
            for i in regex.matching(texts):
                if total >= offset and len(out) < want:
                    out.append(texts[i])
                total += 1
    return out, total, offset + len(out) < total
