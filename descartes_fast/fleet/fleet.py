"""Many servers driven as one: :class:`Fleet` (asyncio).

Each server stays the only source of truth for its agents; the fleet only derives: one
:class:`~descartes_fast.client.AsyncClient` per server, the server's heartbeats (load, memory,
backends, labels) and status updates from its event socket, and its agent list. A server
whose heartbeats stop for three of its intervals (or that lets a request time out) is
``unreachable``: its agents are shown from what it said last, marked so, and the rest of the
fleet carries on; when its heartbeats come back, its list is read again, so agents it
re-adopted after a restart are found by id again. Nothing is stored by the fleet: no broker,
no database, no consensus.

Agents are named by id, unique id prefix or unique name (:meth:`Fleet.locate`); spawns are
placed by :mod:`descartes_fast.fleet.placement`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import json
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import zmq

from descartes_fast.client.async_client import AsyncClient
from descartes_fast.client.config import ZmqRunnerConfig
from descartes_fast.client.errors import ClientError, RequestTimeoutError, ServerError
from descartes_fast.fleet import placement
from descartes_fast.fleet.servers import DnsSpec, FleetSpec, ServerSpec, from_env, load, resolve_dns
from descartes_fast.wire.schema import (
    AgentConfig,
    AgentInfo,
    AgentStatus,
    BatchAgentResult,
    ControlCommandType,
    HealthCheckResponse,
    LogStreamMessage,
    StatusUpdate,
    StatusUpdateType,
)

__all__ = ["Fleet", "FleetAgent", "FleetChunk", "FleetEvent", "FleetError", "ServerState", "ServerView",
           "AgentNotFoundError", "AmbiguousAgentError", "NoServerError"]

log = logging.getLogger("descartes_fast.fleet")

NIL = uuid.UUID(int=0)
#: heartbeats a server may miss before it is unreachable
MISSED_HEARTBEATS = 3
#: seconds between attempts to reach a server that did not answer at all yet
_RETRY_SECS = 2.0
#: seconds an update of an agent the fleet does not know waits for others before the list is read
_REFRESH_DELAY = 0.1


class FleetError(ClientError):
    """Something the fleet as a whole cannot do (no server to place a spawn on, …)."""


class NoServerError(FleetError):
    """No server can take a spawn; the text says why each one cannot."""


class AgentNotFoundError(FleetError):
    """No server of the fleet knows an agent by that id, prefix or name."""


class AmbiguousAgentError(FleetError):
    """An id prefix or name that fits more than one agent; the text lists them."""


class ServerState(enum.Enum):
    CONNECTING = "connecting"   # not answered yet
    UP = "up"
    UNREACHABLE = "unreachable"  # heartbeats stopped, or a request timed out


@dataclass(frozen=True)
class ServerView:
    """One server as the fleet sees it now."""

    name: str
    endpoint: str
    state: ServerState
    facts: Mapping[str, Any]          # its latest heartbeat's data
    labels: Mapping[str, str]
    agents: int                       # agents it listed last
    seen_secs_ago: float | None       # since its last heartbeat (None: none yet)


class FleetAgent(NamedTuple):
    """An agent and the server that runs it (``reachable`` False: shown from what it said last)."""

    info: AgentInfo
    server: str
    reachable: bool

    @property
    def id(self) -> uuid.UUID:
        return self.info.id

    @property
    def status(self) -> str:
        """Its status, or ``unreachable`` while its server is."""
        return self.info.status.value if self.reachable else ServerState.UNREACHABLE.value


@dataclass(frozen=True)
class FleetEvent:
    """A status update of an agent (``update``), or a server that became ``up`` or ``unreachable``
    (``server_state``, with ``update`` None)."""

    server: str
    update: StatusUpdate | None = None
    server_state: ServerState | None = None


@dataclass(frozen=True)
class FleetChunk:
    """A chunk of an agent's output, with the agent's server and name (a follow across the fleet)."""

    server: str
    name: str
    chunk: LogStreamMessage


@dataclass(eq=False)
class _Member:
    spec: ServerSpec
    client: AsyncClient
    state: ServerState = ServerState.CONNECTING
    facts: dict[str, Any] = field(default_factory=dict)
    last_seen: float | None = None
    agents: dict[uuid.UUID, AgentInfo] = field(default_factory=dict)
    placed: int = 0
    task: asyncio.Task[None] | None = None
    answered: asyncio.Event = field(default_factory=asyncio.Event)  # it answered, or failed to, once
    heard: asyncio.Event = field(default_factory=asyncio.Event)  # a heartbeat of it has come
    refreshing: asyncio.Task[None] | None = None  # a list asked for because of agents it does not know yet
    # (the agents dict, its size, its ids as text): for prefix lookups; the dict is held, so that
    # a new one cannot be taken for it (agents are only added to a dict, or it is replaced)
    _ids: tuple[dict[uuid.UUID, AgentInfo], int, list[tuple[str, uuid.UUID]]] | None = None

    def id_texts(self) -> list[tuple[str, uuid.UUID]]:
        """Its agents' ids as text (kept until its agents change: prefix lookups scan these)."""
        if self._ids is None or self._ids[0] is not self.agents or self._ids[1] != len(self.agents):
            self._ids = (self.agents, len(self.agents), [(str(i), i) for i in self.agents])
        return self._ids[2]

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def labels(self) -> dict[str, str]:
        told = self.facts.get("labels")
        return {**(told if isinstance(told, dict) else {}), **self.spec.labels}

    @property
    def interval(self) -> float:
        value = self.facts.get("heartbeat_interval_secs") or (self.client.server_metadata or {}).get(
            "heartbeat_interval_secs") or 10.0
        return float(value)


def _told(metadata: Mapping[str, str]) -> dict[str, Any]:
    """What a server's health metadata says of its capacity (until its first heartbeat)."""
    facts: dict[str, Any] = {}
    with contextlib.suppress(ValueError, TypeError):
        if "max_agents" in metadata:
            facts["max_agents"] = int(metadata["max_agents"])
        if "backends" in metadata:
            facts["backends"] = [b for b in metadata["backends"].split(",") if b]
        if "labels" in metadata:
            facts["labels"] = json.loads(metadata["labels"])
    return facts


class Fleet:
    """Servers driven as one; see the module docstring. ``async with Fleet.from_file(path) as fleet:``.

    *config* gives what every server's client shares (``client_key``, timeouts); each server's
    endpoint, event endpoint and key come from its :class:`ServerSpec`; *context*: the ZeroMQ
    context of their sockets (see :class:`AsyncClient`)."""

    def __init__(self, spec: FleetSpec | Iterable[ServerSpec], config: ZmqRunnerConfig | None = None, *,
                 spawn_attempts: int = 3, dns_refresh_secs: float = 30.0, context: zmq.Context | None = None) -> None:
        self.spec = spec if isinstance(spec, FleetSpec) else FleetSpec(tuple(spec))
        given = {k: v for k, v in self.spec.client.items() if v is not None}
        self.config = dataclasses.replace(config or ZmqRunnerConfig(), **given, enable_heartbeat=False,
                                          auto_reconnect=False)
        self.spawn_attempts = max(1, spawn_attempts)
        self.dns_refresh_secs = dns_refresh_secs
        self.context = context  # the ZeroMQ context of every server's client (None: pyzmq's shared one)
        self._members: dict[str, _Member] = {}
        self._listeners: list[asyncio.Queue[FleetEvent | None]] = []
        self._watch: asyncio.Task[None] | None = None
        self._dns_names: dict[str, set[str]] = {}  # DNS name -> the servers it resolved to last

    @classmethod
    def from_file(cls, path: str | Path, config: ZmqRunnerConfig | None = None, **kw: Any) -> Fleet:
        return cls(load(path), config, **kw)

    @classmethod
    def from_env(cls, config: ZmqRunnerConfig | None = None, **kw: Any) -> Fleet:
        """The servers of ``DESCARTES_FAST_SERVERS`` (comma-separated endpoints or ``dns://NAME:PORT``)."""
        return cls(from_env(os.environ.get("DESCARTES_FAST_SERVERS", "")), config, **kw)

    # -- membership --

    async def start(self, timeout: float | None = None) -> None:
        """Reach every server (in parallel) and read its agent list; returns once each has answered
        or failed to within *timeout* (default: the connection timeout). Servers that did not
        answer are tried again in the background."""
        for server in self.spec.servers:
            self.add(server)
        for name in self.spec.dns:
            await self._resolve(name)
        loop = asyncio.get_running_loop()
        self._watch = loop.create_task(self._watchdog())
        wait = timeout if timeout is not None else self.config.connection_timeout_secs
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(m.answered.wait() for m in self._members.values())), wait)

    async def heard(self, timeout: float) -> None:
        """Wait (up to *timeout*) until a heartbeat of every reachable server has come: its load and
        memory are known."""
        waits = [m.heard.wait() for m in self._members.values() if m.state == ServerState.UP]
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.gather(*waits), timeout)

    def add(self, spec: ServerSpec) -> None:
        """Add a server at run time (it is reached in the background)."""
        if spec.name in self._members:
            raise FleetError(f"the fleet has a server named {spec.name!r} already")
        client = AsyncClient(self.config, context=self.context, endpoint=spec.endpoint, pub_endpoint=spec.pub_endpoint,
                             server_key=spec.server_key or self.config.server_key)
        member = self._members[spec.name] = _Member(spec, client)
        member.task = asyncio.get_running_loop().create_task(self._run(member))

    async def remove(self, name: str) -> None:
        """Stop driving a server (its agents run on; the fleet no longer shows them)."""
        member = self._members.pop(name, None)
        if member is None:
            raise FleetError(f"the fleet has no server named {name!r}")
        await self._close_member(member)

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
        for member in list(self._members.values()):
            await self._close_member(member)
        self._members.clear()
        for queue in self._listeners:
            queue.put_nowait(None)

    async def __aenter__(self) -> Fleet:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _close_member(self, member: _Member) -> None:
        if member.refreshing is not None:
            member.refreshing.cancel()
        if member.task is not None:
            member.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await member.task
        await member.client.disconnect()

    def spec_of(self, name: str) -> ServerSpec:
        """How the server *name* is reached (its endpoints and key)."""
        member = self._members.get(name)
        if member is None:
            raise FleetError(f"the fleet has no server named {name!r}")
        return member.spec

    def servers(self) -> list[ServerView]:
        now = time.monotonic()
        return [ServerView(m.name, m.spec.endpoint, m.state, dict(m.facts), m.labels, len(m.agents),
                           now - m.last_seen if m.last_seen is not None else None)
                for m in sorted(self._members.values(), key=lambda m: m.name)]

    # -- each server: reach it, hear it --

    async def _run(self, member: _Member) -> None:
        client = member.client
        while True:  # reach it (a server that is down at start is tried again)
            try:
                await client.connect(timeout=min(self.config.connection_timeout_secs, 5.0))
                break
            except (ClientError, OSError) as exc:
                if member.state != ServerState.UNREACHABLE:
                    log.warning("server %s (%s) does not answer: %s", member.name, member.spec.endpoint, exc)
                    self._set_state(member, ServerState.UNREACHABLE)
                member.answered.set()
                await asyncio.sleep(_RETRY_SECS)
        events = await client.subscribe_status_updates(None)  # its agents' updates and its heartbeats
        member.facts = {**_told(client.server_metadata or {}), **member.facts}
        member.last_seen = time.monotonic()
        await self._refresh(member)
        self._set_state(member, ServerState.UP)
        member.answered.set()
        async for update in events:
            if update.agent_id == NIL and update.update_type == StatusUpdateType.HEARTBEAT:
                member.facts = dict(update.data) if isinstance(update.data, dict) else {}
                member.placed = 0
                member.last_seen = time.monotonic()
                member.heard.set()
                if member.state != ServerState.UP:
                    log.info("server %s is back", member.name)
                    with contextlib.suppress(ClientError):
                        await self._refresh(member)
                    self._set_state(member, ServerState.UP)
                continue
            known = member.agents.get(update.agent_id)
            if known is not None and update.status is not None:
                member.agents[update.agent_id] = dataclasses.replace(known, status=update.status)
            elif known is None:
                self._refresh_soon(member)  # (one list for the many agents a burst of spawns brings)
            self._tell(FleetEvent(member.name, update))

    def _refresh_soon(self, member: _Member) -> asyncio.Task[None]:
        """A list of the server's agents shortly (one for all the calls until it is read)."""
        if member.refreshing is None or member.refreshing.done():
            async def refresh() -> None:
                await asyncio.sleep(_REFRESH_DELAY)
                with contextlib.suppress(ClientError):
                    await self._refresh(member)
            member.refreshing = asyncio.get_running_loop().create_task(refresh())
        return member.refreshing

    async def _refresh(self, member: _Member) -> None:
        """Read the server's agent list again (what it says replaces what it said; its count of
        active agents is newer than the last heartbeat's, which placement goes by)."""
        agents = await self._call(member, member.client.list_remote_agents())
        member.agents = {a.id: a for a in agents}
        member.facts = {**member.facts, "active_agents": sum(not a.status.is_terminal() for a in agents)}
        member.placed = 0

    def _set_state(self, member: _Member, state: ServerState) -> None:
        if member.state != state:
            member.state = state
            self._tell(FleetEvent(member.name, None, state))

    async def _call(self, member: _Member, call: Any) -> Any:
        """Await *call* (a request to *member*); a timeout makes it unreachable until it is heard again."""
        try:
            return await call
        except RequestTimeoutError:
            if member.state == ServerState.UP:
                log.warning("server %s let a request time out: unreachable until it is heard again", member.name)
                self._set_state(member, ServerState.UNREACHABLE)
            raise

    async def _watchdog(self) -> None:
        """Mark servers whose heartbeats stopped; resolve the DNS names again now and then."""
        resolved = time.monotonic()
        while True:
            await asyncio.sleep(0.2)
            now = time.monotonic()
            for member in list(self._members.values()):
                if member.state == ServerState.UP and member.last_seen is not None and \
                        now - member.last_seen > MISSED_HEARTBEATS * member.interval:
                    log.warning("server %s missed %d heartbeats: unreachable", member.name, MISSED_HEARTBEATS)
                    self._set_state(member, ServerState.UNREACHABLE)
            if self.spec.dns and now - resolved > self.dns_refresh_secs:
                resolved = now
                for name in self.spec.dns:
                    await self._resolve(name)

    async def _resolve(self, dns: DnsSpec) -> None:
        """Add the servers *dns*'s name resolves to now, and remove those it no longer does (the
        lookup runs in a thread: the loop goes on meanwhile)."""
        found = {s.name: s for s in await asyncio.to_thread(resolve_dns, dns)}
        before = self._dns_names.get(dns.name, set())
        for name in set(found) - before:
            if name not in self._members:
                self.add(found[name])
        for name in before - set(found):
            member = self._members.pop(name, None)
            if member is not None:
                asyncio.get_running_loop().create_task(self._close_member(member))
        self._dns_names[dns.name] = set(found)
        if not found:
            log.warning("DNS name %s resolves to no address", dns.name)

    def _tell(self, event: FleetEvent) -> None:
        for queue in self._listeners:
            queue.put_nowait(event)

    # -- agents --

    async def agents(self, status: AgentStatus | None = None) -> list[FleetAgent]:
        """Every agent of the fleet: read from each reachable server (in parallel), and what
        unreachable ones said last (marked). Sorted by start time."""
        members = list(self._members.values())
        await asyncio.gather(*(self._refresh(m) for m in members if m.state == ServerState.UP),
                             return_exceptions=True)
        out = [FleetAgent(info, m.name, m.state == ServerState.UP) for m in members for info in m.agents.values()
               if status is None or info.status == status]
        return sorted(out, key=lambda a: (a.info.started_at, a.info.id.int))

    def known(self) -> list[FleetAgent]:
        """The agents as the fleet knows them now, with no request: from the servers' last lists
        and the status updates since. Sorted by start time."""
        out = [FleetAgent(info, m.name, m.state == ServerState.UP) for m in self._members.values()
               for info in m.agents.values()]
        return sorted(out, key=lambda a: (a.info.started_at, a.info.id.int))

    async def locate(self, ref: str | uuid.UUID) -> tuple[AsyncClient, uuid.UUID, str]:
        """(client, agent id, server name) of the agent *ref* names: an id, a unique id prefix
        or a unique name. The lists are read again once before it is declared unknown."""
        for attempt in range(2):
            found = self._find(ref)
            if len(found) == 1:
                member, info = found[0]
                return member.client, info.id, member.name
            if len(found) > 1:
                listed = ", ".join(f"{info.id} ({info.name or 'no name'} on {m.name})" for m, info in found[:10])
                raise AmbiguousAgentError(f"{str(ref)!r} fits {len(found)} agents: {listed}")
            if attempt == 0:
                await asyncio.gather(*(self._refresh(m) for m in self._members.values()
                                       if m.state == ServerState.UP), return_exceptions=True)
        raise AgentNotFoundError(f"no server of the fleet knows an agent {str(ref)!r} (by id, id prefix or "
                                 f"name; {sum(m.state != ServerState.UP for m in self._members.values())} "
                                 "server(s) unreachable)")

    def _find(self, ref: str | uuid.UUID) -> list[tuple[_Member, AgentInfo]]:
        members = list(self._members.values())
        try:
            exact = ref if isinstance(ref, uuid.UUID) else uuid.UUID(ref)
        except ValueError:
            exact = None
        if exact is not None:
            return [(m, m.agents[exact]) for m in members if exact in m.agents][:1]
        text = str(ref).lower()
        found = [(m, m.agents[i]) for m in members for t, i in m.id_texts() if t.startswith(text)] \
            if len(text) >= 4 else []
        ids = {info.id for _m, info in found}
        return found + [(m, info) for m in members for info in m.agents.values()
                        if info.name == ref and info.id not in ids]

    async def spawn(self, config: AgentConfig, *, server: str | None = None, labels: Mapping[str, str] | None = None,
                    timeout_secs: float | None = None, metadata: dict[str, str] | None = None) -> FleetAgent:
        """Start an agent on the server named *server*, else on the one the placement policy
        chooses (:mod:`.placement`); a spawn that fails there is tried on the next (up to
        ``spawn_attempts`` servers)."""
        if server is not None:
            member = self._members.get(server)
            if member is None:
                raise FleetError(f"the fleet has no server named {server!r} (it has "
                                 f"{', '.join(sorted(self._members)) or 'none'})")
            order = [member]
        else:
            wanted = dict(labels or {})
            candidates = {m.name: m for m in self._members.values()}
            views = [placement.Candidate(m.name, m.state == ServerState.UP, m.facts, m.labels, m.placed)
                     for m in candidates.values()]
            ranked = placement.rank(views, config.model_backend, wanted)
            if not ranked:
                raise NoServerError(f"spawn of backend {config.model_backend!r}"
                                    f"{' with ' + str(wanted) if wanted else ''}: "
                                    + placement.why_none(views, config.model_backend, wanted))
            order = [candidates[c.name] for c in ranked[:self.spawn_attempts]]
        failures = []
        for member in order:
            try:
                info = await self._call(member, member.client.spawn_remote(config, timeout_secs, metadata))
            except (ServerError, RequestTimeoutError) as exc:
                failures.append(f"{member.name}: {exc}")
                log.warning("spawn on %s failed (%s)%s", member.name, exc,
                            ": trying the next server" if member is not order[-1] else "")
                continue
            member.agents[info.id] = info
            member.placed += 1
            return FleetAgent(info, member.name, True)
        if len(order) == 1:
            raise FleetError(f"spawn failed on {failures[0]}")
        raise FleetError(f"spawn failed on {len(failures)} server(s): " + " | ".join(failures))

    async def status(self, ref: str | uuid.UUID) -> dict[str, Any]:
        """``get_status``'s facts of the agent, with its ``id``, ``name``, ``server`` and typed ``status``."""
        client, agent_id, name = await self.locate(ref)
        member = self._members[name]
        state = await self._call(member, client.agent_state(agent_id))
        info = member.agents.get(agent_id)
        return {"id": str(agent_id), "name": info.name if info else None, "server": name,
                "status": AgentStatus(state["status"].lower()).value if "status" in state else None,
                **{k: v for k, v in state.items() if k != "status"}}

    async def health(self) -> dict[str, HealthCheckResponse | Exception]:
        """Every server's health check, in parallel (an exception for a server that did not answer)."""
        members = list(self._members.values())
        got = await asyncio.gather(*(self._call(m, m.client.health_check()) for m in members), return_exceptions=True)
        return {m.name: r for m, r in zip(members, got, strict=True)}  # type: ignore[misc]

    async def batch(self, refs: Iterable[str | uuid.UUID], command: ControlCommandType, payload: Any = None,
                    fail_fast: bool = False) -> list[tuple[str, BatchAgentResult]]:
        """One command on many agents: one batch per server, the servers in parallel; a result per
        agent, with its server, in the order asked (a server that does not answer fails its agents)."""
        located = [await self.locate(ref) for ref in refs]
        groups: dict[str, list[uuid.UUID]] = {}
        for _client, agent_id, name in located:
            groups.setdefault(name, []).append(agent_id)

        async def one(name: str, ids: list[uuid.UUID]) -> dict[uuid.UUID, BatchAgentResult]:
            member = self._members[name]
            try:
                reply = await self._call(member, member.client.batch_control(ids, command, payload, fail_fast))
            except ClientError as exc:
                return {i: BatchAgentResult(i, False, None, f"server {name}: {exc}") for i in ids}
            return {r.agent_id: r for r in reply.results}

        results: dict[uuid.UUID, BatchAgentResult] = {}
        for part in await asyncio.gather(*(one(n, ids) for n, ids in groups.items())):
            results.update(part)
        return [(name, results.get(agent_id) or BatchAgentResult(agent_id, False, None, "not run (fail_fast)"))
                for _client, agent_id, name in located]

    # -- events and output --

    async def events(self) -> AsyncIterator[FleetEvent]:
        """Status updates of every agent of every server, and servers becoming up or unreachable,
        as they happen (heartbeats are not given: see :meth:`servers`)."""
        queue: asyncio.Queue[FleetEvent | None] = asyncio.Queue()
        self._listeners.append(queue)
        try:
            while (event := await queue.get()) is not None:
                yield event
        finally:
            self._listeners.remove(queue)

    async def follow(self, refs: Iterable[str | uuid.UUID] | None = None, *,
                     from_now: bool = False) -> AsyncIterator[FleetChunk]:
        """The output of the agents *refs* names, or of every agent that runs now or starts later
        (None): each agent's stored chunks, then its live ones, every chunk once (see
        :meth:`AsyncClient.follow_logs`), tagged with its server and name. With *refs* it ends once
        they have all ended; for every agent it runs until cancelled."""
        queue: asyncio.Queue[FleetChunk | None] = asyncio.Queue(maxsize=10_000)
        tasks: dict[uuid.UUID, asyncio.Task[None]] = {}
        loop = asyncio.get_running_loop()

        async def pump(client: AsyncClient, agent_id: uuid.UUID, server: str, name: str) -> None:
            follow = await client.follow_logs(agent_id, from_now=from_now)
            async for chunk in follow:
                await queue.put(FleetChunk(server, name, chunk))

        def start(client: AsyncClient, agent_id: uuid.UUID, server: str, name: str) -> None:
            if agent_id not in tasks:
                tasks[agent_id] = loop.create_task(pump(client, agent_id, server, name))
                tasks[agent_id].add_done_callback(lambda _t: queue.put_nowait(None))

        async def watch_new() -> None:
            async for event in self.events():
                update = event.update
                if update is not None and update.agent_id not in tasks and update.status is not None \
                        and not update.status.is_terminal():
                    member = self._members.get(event.server)
                    if member is not None:
                        if update.agent_id not in member.agents:  # (spawned by another client: its name)
                            await self._refresh_soon(member)
                        info = member.agents.get(update.agent_id)
                        start(member.client, update.agent_id, event.server, info.name if info else "")

        watcher = None
        if refs is None:
            watcher = loop.create_task(watch_new())
            for agent in await self.agents():
                if agent.reachable and not agent.info.status.is_terminal():
                    start(self._members[agent.server].client, agent.id, agent.server, agent.info.name)
        else:
            for ref in refs:
                client, agent_id, server = await self.locate(ref)
                info = self._members[server].agents.get(agent_id)
                start(client, agent_id, server, info.name if info else "")
        try:
            while True:
                item = await queue.get()
                if item is not None:
                    yield item
                    continue
                for task in list(tasks.values()):  # a follow ended: say why if it failed
                    if task.done() and not task.cancelled() and task.exception() is not None:
                        raise task.exception()  # type: ignore[misc]
                if watcher is None and all(t.done() for t in tasks.values()) and queue.empty():
                    return
        finally:
            if watcher is not None:
                watcher.cancel()
            for task in tasks.values():
                task.cancel()

    async def wait(self, refs: Iterable[str | uuid.UUID], timeout: float | None = None) -> dict[str, dict[str, Any]]:
        """Block until the agents have all ended; each one's facts (:meth:`status`) by the id asked."""
        refs = list(refs)
        located = {str(ref): await self.locate(ref) for ref in refs}
        deadline = None if timeout is None else time.monotonic() + timeout
        out: dict[str, dict[str, Any]] = {}
        while len(out) < len(located):
            for ref, (_client, agent_id, _name) in located.items():
                if ref in out:
                    continue
                try:
                    facts = await self.status(agent_id)
                except RequestTimeoutError:
                    continue  # (unreachable for now: asked again)
                # ended, and (a descartes_fast server says when) its processes are gone
                if AgentStatus(facts["status"]).is_terminal() and ("pid" not in facts or
                                                                   facts.get("ended_at") is not None):
                    out[ref] = facts
            if len(out) < len(located):
                if deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError(f"{len(located) - len(out)} agent(s) still running")
                await asyncio.sleep(0.2)
        return out

    # -- one agent --

    async def client_of(self, ref: str | uuid.UUID) -> tuple[AsyncClient, uuid.UUID]:
        """The client of the agent's server, and its id: for any :class:`AsyncClient` call
        (``client.stop_agent(agent_id)``, ``client.say(agent_id, …)``)."""
        client, agent_id, _name = await self.locate(ref)
        return client, agent_id
