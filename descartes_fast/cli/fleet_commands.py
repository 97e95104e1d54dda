"""The client commands across a fleet (``--fleet FILE``, ``DESCARTES_FAST_FLEET``,
``DESCARTES_FAST_SERVERS``), and the fleet-wide ones on one server (``wait``, ``top``,
``logs --follow --all``: a fleet of one).

A command about one agent finds the agent's server and runs there exactly as it does against
one server; ``list``, ``health``, ``events``, ``batch``, ``spawn``, ``wait``, ``top`` and
``logs -f --all`` cover the fleet.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from descartes_fast.cli import commands
from descartes_fast.cli.commands import _emit, _emit_update, _fail, _table, _Usage, guarded
from descartes_fast.client import Client, ZmqRunnerConfig
from descartes_fast.client.errors import RequestTimeoutError
from descartes_fast.fleet import AgentNotFoundError, AmbiguousAgentError, FleetSpec, ServerSpec, ServerState, SyncFleet
from descartes_fast.wire.schema import AgentStatus, ControlCommandType, HealthCheckResponse

__all__ = ["run_fleet"]

#: the most seconds health and top wait for a heartbeat of each server (a server's interval is 10 s by default)
_HEARD_SECS = 11.0


def run_fleet(args: argparse.Namespace, spec: FleetSpec | None, config: ZmqRunnerConfig) -> int:
    """Run a client command on the fleet *spec* (None: the one server of *config*)."""
    if spec is None:
        spec = FleetSpec((ServerSpec(_short(config.endpoint), config.endpoint, config.pub_endpoint,
                                     config.server_key),))
    fleet = SyncFleet(spec, config)
    where = ", ".join([s.endpoint for s in spec.servers] + [f"dns:{d.name}" for d in spec.dns])

    def command() -> int:
        fleet.start(args.timeout)
        if not any(v.state == ServerState.UP for v in fleet.servers()):
            raise RequestTimeoutError(f"no server of the fleet answered within {args.timeout:g} s")
        if args.command in ("health", "top"):  # (their load and memory come with their heartbeats)
            fleet.run(fleet.fleet.heard(min(args.timeout, _HEARD_SECS)))
        handler = _FLEET.get(args.command)
        of_one = args.command in ("events", "logs") and args.agent is not None
        try:
            if handler is not None and not of_one:
                return handler(fleet, args)
            return _on_its_server(fleet, args, config)
        except AgentNotFoundError as exc:
            return _fail(exc, 4)
        except AmbiguousAgentError as exc:
            return _fail(exc, 2)
    try:
        return guarded(command, where, bool(config.client_key))
    finally:
        fleet.close()


def _short(endpoint: str) -> str:
    return endpoint.split("://", 1)[-1]


def _on_its_server(fleet: SyncFleet, args: argparse.Namespace, config: ZmqRunnerConfig) -> int:
    """A command about one agent, run on the server that has it."""
    if getattr(args, "agent", None) is None:
        raise _Usage(f"{args.command} needs an agent (or --follow --all)")
    agent_id, server = fleet.locate(args.agent)
    spec = fleet.fleet.spec_of(server)
    client = Client(config, endpoint=spec.endpoint, pub_endpoint=spec.pub_endpoint,
                    server_key=spec.server_key or config.server_key)
    try:
        client.connect()
        args.agent = agent_id
        return commands._HANDLERS[args.command](client, args)
    finally:
        client.close()


def _list(fleet: SyncFleet, args: argparse.Namespace) -> int:
    agents = fleet.agents(AgentStatus(args.status) if args.status else None)[:args.limit]
    rows = [[a.server, str(a.id), a.info.name, a.status, a.info.model_backend, a.info.task[:40]] for a in agents]
    return _emit(args, [{**commands._info(a.info), "status": a.status, "server": a.server, "reachable": a.reachable}
                        for a in agents],
                 lambda: _table(rows, ["SERVER", "ID", "NAME", "STATUS", "BACKEND", "TASK"]) if rows else "no agents")


def _spawn(fleet: SyncFleet, args: argparse.Namespace) -> int:
    agent = fleet.spawn(commands.spawn_config(args), server=args.server, labels=commands.pairs(args.label, "--label"),
                        timeout_secs=args.time_limit, metadata=commands.spawn_metadata(args))
    return commands.spawned(args, agent.info, agent.server)


def _health(fleet: SyncFleet, args: argparse.Namespace) -> int:
    health = fleet.health()
    data, rows = [], []
    for view in fleet.servers():
        got = health.get(view.name)
        facts = view.facts
        entry: dict[str, Any] = {"server": view.name, "endpoint": view.endpoint, "state": view.state.value,
                                 "labels": dict(view.labels), "facts": dict(facts)}
        if isinstance(got, Exception):
            entry["error"] = str(got)
        elif got is not None:
            entry.update(healthy=got.healthy, active_agents=got.active_agents, uptime_secs=got.uptime_secs)
        data.append(entry)
        active = got.active_agents if isinstance(got, HealthCheckResponse) else facts.get("active_agents", "-")
        rows.append([view.name, view.state.value, f"{active}/{facts.get('max_agents', '-')}",
                     _load(facts), _memory(facts), ",".join(f"{k}={v}" for k, v in sorted(view.labels.items())),
                     view.endpoint])
    up = sum(v.state == ServerState.UP for v in fleet.servers())
    _emit(args, data, lambda: _table(rows, ["SERVER", "STATE", "AGENTS", "LOAD", "MEM FREE", "LABELS", "ENDPOINT"])
          + f"\n{up} of {len(rows)} server(s) up")
    return 0 if up == len(rows) else 3


def _load(facts: Any) -> str:
    load, cpus = facts.get("load_1m"), facts.get("cpus")
    return f"{load:.2f}/{cpus}" if isinstance(load, (int, float)) else "-"


def _memory(facts: Any) -> str:
    free = facts.get("memory_available_bytes")
    return f"{free / (1 << 30):.1f} GiB" if isinstance(free, (int, float)) else "-"


def _events(fleet: SyncFleet, args: argparse.Namespace) -> int:
    seen = 0
    for event in fleet.events():
        if event.update is None:
            state = event.server_state.value if event.server_state else "?"
            _emit(args, {"server": event.server, "server_state": state}, f"{event.server}  server {state}")
        else:
            _emit_update(args, event.update, event.server)
        seen += 1
        if args.count is not None and seen >= args.count:
            break
    return 0


def _batch(fleet: SyncFleet, args: argparse.Namespace) -> int:
    payload = {"force": True} if args.force else None
    results = fleet.batch(args.agents, ControlCommandType(args.operation), payload, args.fail_fast)
    ok = sum(r.success for _s, r in results)
    data = [{"server": s, "id": str(r.agent_id), "success": r.success, "status": r.status.value if r.status else None,
             "error": r.error} for s, r in results]
    rows = [[str(d["server"]), str(d["id"]), "ok" if d["success"] else "FAILED", str(d["status"] or "-"),
             str(d["error"] or "")] for d in data]
    _emit(args, {"success": ok == len(results), "successful": ok, "failed": len(results) - ok, "results": data},
          lambda: _table(rows, ["SERVER", "ID", "RESULT", "STATUS", "ERROR"])
          + f"\n{ok} ok, {len(results) - ok} failed")
    return 0 if ok == len(results) else 1


def _logs(fleet: SyncFleet, args: argparse.Namespace) -> int:
    if not (args.all and args.follow):
        raise _Usage("logs needs an agent, or --follow --all (every agent)")
    out = sys.stdout.buffer
    rest: dict[tuple[Any, ...], bytes] = {}  # an unfinished line, per agent and stream, until its end comes
    for item in fleet.follow(None, from_now=args.start == "now"):
        chunk = item.chunk
        if args.json:
            for line in chunk.data.decode("utf-8", "replace").splitlines():
                _emit(args, {"server": item.server, "agent_id": str(chunk.agent_id), "name": item.name,
                             "stream": chunk.stream_type.value, "line": line}, "")
            continue
        tag = f"[{item.server}/{item.name or str(chunk.agent_id)[:8]}] ".encode()
        key = (item.server, chunk.agent_id, chunk.stream_type)
        data = rest.pop(key, b"") + chunk.data
        lines = data.split(b"\n")
        if lines[-1]:
            rest[key] = lines[-1]
        out.write(b"".join(tag + line + b"\n" for line in lines[:-1]))
        out.flush()
    return 0


def _wait(fleet: SyncFleet, args: argparse.Namespace) -> int:
    try:
        ended = fleet.wait(args.agents, args.wait_timeout)
    except TimeoutError as exc:
        print(f"descartes-fast: {exc} after {args.wait_timeout:g} s", file=sys.stderr)
        return 1
    data = list(ended.values())
    rows = [[f["id"], f.get("name") or "", f["server"], commands._status_line(AgentStatus(f["status"]), f)]
            for f in data]
    _emit(args, data, lambda: _table(rows, ["ID", "NAME", "SERVER", "ENDED"]))
    return 0 if all(f["status"] == AgentStatus.COMPLETED.value for f in data) else 1


def _top(fleet: SyncFleet, args: argparse.Namespace) -> int:
    from descartes_fast.cli.top import top
    return top(fleet, interval=args.interval, once=args.once)


#: the commands that cover the fleet (the others, and events and logs of one agent, run on its server)
_FLEET: dict[str, Callable[[SyncFleet, argparse.Namespace], int]] = {
    "list": _list, "spawn": _spawn, "health": _health, "events": _events, "batch": _batch, "wait": _wait,
    "top": _top, "logs": _logs,
}
