"""The client commands of ``descartes-fast``: spawn, list, status, pause, ... against a server.

The request endpoint comes from ``--endpoint``, else ``DESCARTES_FAST_BIND``, else the config
file's ``[server]`` table (the same settings the server reads), else loopback. The event endpoint
comes from the same place (``--pub-endpoint``, ``DESCARTES_FAST_PUB``, ``pub``); where that place
does not name one, the client asks the server (see :meth:`AsyncClient._pub_endpoint`). CURVE keys
come from ``--server-key`` / ``--client-key``, else ``DESCARTES_FAST_SERVER_KEY`` /
``DESCARTES_FAST_CLIENT_KEY``, else the config file's ``[client]`` table (``server_key``,
``client_key``; relative to the file). Output is a table, or JSON with ``--json`` (one object per
line for ``logs`` and ``events``).

Repeating a command is harmless: pausing a paused agent, resuming a running one, stopping or
killing one that has ended does nothing, says so, and exits 0.

Agents are named by id, a unique id prefix (at least 4 characters) or a unique name. With
``--fleet FILE`` (or ``DESCARTES_FAST_FLEET``, or ``DESCARTES_FAST_SERVERS``) every command
works on a fleet of servers (:mod:`.fleet_commands`): an agent is found on whichever server
runs it, ``list``/``health``/``events``/``batch`` cover them all, ``spawn`` places the agent.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import tomllib
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from descartes_fast.client import Client, ClientError, RequestTimeoutError, ServerError, ZmqRunnerConfig
from descartes_fast.server.memory import keep_big_buffers
from descartes_fast.wire.curve import SecurityError
from descartes_fast.wire.schema import (
    AgentConfig,
    AgentInfo,
    AgentStatus,
    CommandResponse,
    ControlCommandType,
    StatusUpdate,
    ZmqOutputStream,
)

__all__ = ["add_commands", "run", "COMMANDS", "EXIT_CODES"]

EXIT_CODES = """exit codes:
  0  done
  1  the server refused (its message is printed)
  2  bad arguments or settings
  3  the server did not answer (unreachable, or timed out)
  4  no such agent on the server
  130  interrupted (Ctrl-C)"""

COMMANDS = ("spawn", "list", "status", "pause", "resume", "stop", "kill", "send", "say", "resize", "logs", "events",
            "health", "batch", "wait", "top")


class _Usage(Exception):
    """A bad argument found after parsing (exit 2)."""


_AGENT = "agent id, id prefix (4+ characters) or name"


def _agent_ref(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty agent id or name")
    return text


def resolve(agents: list[AgentInfo], ref: str | uuid.UUID) -> uuid.UUID:
    """The id of the one agent of *agents* that *ref* names (id, unique prefix or unique name)."""
    text = str(ref).lower()
    exact = [a for a in agents if str(a.id) == text]
    found = exact or [a for a in agents if len(text) >= 4 and str(a.id).startswith(text)] or \
        [a for a in agents if a.name and a.name == str(ref)]
    if len(found) == 1:
        return found[0].id
    if found:
        raise _Usage(f"{str(ref)!r} fits {len(found)} agents: "
                     + ", ".join(f"{a.id} ({a.name or 'no name'})" for a in found[:10]))
    raise ServerError(f"Agent not found: no agent {str(ref)!r} (by id, id prefix or name)")


def add_commands(commands: Any) -> None:
    """Add the client subcommands to the ``descartes-fast`` parser."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--endpoint", help="server request endpoint (env: DESCARTES_FAST_BIND; default: "
                                           "the config file's [server] bind, else tcp://127.0.0.1:5555)")
    common.add_argument("--pub-endpoint", help="server event endpoint (env: DESCARTES_FAST_PUB; default: the "
                                               "config file's [server] pub, else what the server says)")
    common.add_argument("--server-key", metavar="FILE", help="the server's public key file (NAME.key) when it "
                                                             "uses CURVE (env: DESCARTES_FAST_SERVER_KEY)")
    common.add_argument("--client-key", metavar="FILE", help="this client's secret key file (NAME.key_secret "
                                                             "from 'descartes-fast keygen'; env: "
                                                             "DESCARTES_FAST_CLIENT_KEY)")
    common.add_argument("--config", metavar="FILE", help="TOML file with [server] and [client] tables "
                                                         "(env: DESCARTES_FAST_CONFIG)")
    common.add_argument("--fleet", metavar="FILE", help="work on the fleet of servers this file names (TOML: "
                                                        "[servers.NAME] tables; env: DESCARTES_FAST_FLEET, or "
                                                        "DESCARTES_FAST_SERVERS=tcp://a:5555,tcp://b:5555)")
    common.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the server (default 10)")
    common.add_argument("--json", action="store_true", help="print JSON for scripts instead of tables")

    def sub(name: str, help_: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, parents=[common], help=help_, description=help_ + ".",
                                   epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)

    p = sub("spawn", "start an agent on the server")
    p.add_argument("backend", help="model backend: claude, opencode, codex, gemini, demo, one from the "
                                   "server's config, or <program>-cli if the server's policy allows it")
    p.add_argument("task", help="what the agent should do")
    p.add_argument("--name", default="", help="a name for the agent")
    p.add_argument("--model", help="model to ask the backend for")
    p.add_argument("--system-prompt", help="system prompt")
    p.add_argument("--context", help="context (the agent sees it as AGENT_CONTEXT)")
    p.add_argument("--tool-level", help="tool level (claude: minimal, readonly, full, ...)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="environment for the agent "
                                                                                  "(repeatable)")
    p.add_argument("--time-limit", type=float, metavar="SECS", help="end the agent (failed) after this many "
                                                                    "seconds of wall-clock time")
    p.add_argument("--resume", metavar="SESSION_ID", help="a session backend: resume this session (claude's "
                                                           "session_id, codex's thread_id, gemini's session id)")
    p.add_argument("--restart", choices=("never", "on-failure", "always"),
                   help="start it again when it ends on its own: never (default), on-failure, always")
    p.add_argument("--max-restarts", type=int, metavar="N", help="with --restart: at most N times (default 3)")
    p.add_argument("--restart-backoff", type=float, metavar="SECS",
                   help="with --restart: wait SECS before the first restart, twice as long before each next "
                        "(default 1, at most 60)")
    p.add_argument("--rows", type=int, help="a backend with stdin = \"pty\": its terminal's rows (default: the "
                                            "backend's, else 24)")
    p.add_argument("--cols", type=int, help="a backend with stdin = \"pty\": its terminal's columns (default: "
                                            "the backend's, else 80)")
    p.add_argument("--server", metavar="NAME", help="with a fleet: spawn on this server (default: the placement "
                                                    "policy's choice, the least loaded that fits)")
    p.add_argument("--label", action="append", default=[], metavar="KEY=VALUE",
                   help="with a fleet: only on a server with this label (repeatable)")
    p.add_argument("-q", "--quiet", action="store_true", help="print the agent id only (for scripts)")
    p = sub("resize", "set the terminal size of an agent that runs under one (a backend with stdin = \"pty\"); "
                      "the program gets SIGWINCH")
    p.add_argument("agent", type=_agent_ref, help=_AGENT)
    p.add_argument("rows", type=int, help="rows (1-65535)")
    p.add_argument("cols", type=int, help="columns (1-65535)")
    p = sub("say", "send a session agent (claude-session, codex-session, gemini-session) its next turn")
    p.add_argument("agent", type=_agent_ref, help=_AGENT)
    p.add_argument("text", nargs="?", help="the turn's text (default: read this command's stdin, unless --end)")
    p.add_argument("--end", action="store_true", help="end the session once its turns are done (it ends "
                                                      "completed)")
    p = sub("list", "list the server's agents")
    p.add_argument("--status", choices=[s.value for s in AgentStatus], metavar="STATUS",
                   help=f"only agents with this status ({', '.join(s.value for s in AgentStatus)})")
    p.add_argument("--limit", type=int, help="at most this many")
    for name, text in (("status", "show an agent's status"), ("resume", "resume a paused agent")):
        sub(name, text).add_argument("agent", type=_agent_ref, help=_AGENT)
    for name, text in (("stop", "stop an agent (SIGTERM to its process group, SIGKILL after the grace); "
                                "of an agent that has ended, what it left running in its group"),
                       ("kill", "kill an agent's process group (SIGKILL); of an agent that has ended, what it "
                                "left running in its group")):
        p = sub(name, text)
        p.add_argument("agent", type=_agent_ref, help=_AGENT)
        p.add_argument("--wait", action="store_true", help="return once every process of the agent is gone, "
                                                           "and say how it ended")
        p.add_argument("--wait-timeout", type=float, default=60.0, metavar="SECS",
                       help="with --wait: give up (exit 1) after this long (default: 60)")
    p = sub("pause", "pause an agent (cooperatively where its backend can, else SIGSTOP)")
    p.add_argument("agent", type=_agent_ref, help=_AGENT)
    p.add_argument("--force", action="store_true", help="always SIGSTOP")
    p = sub("send", "write to an agent's stdin")
    p.add_argument("agent", type=_agent_ref, help=_AGENT)
    p.add_argument("text", nargs="?", help="what to write (default: read this command's stdin)")
    p.add_argument("--newline", action="store_true", help="append a newline to TEXT")
    p.add_argument("--eof", action="store_true", help="close the agent's stdin afterwards")
    p = sub("logs", "print an agent's stored output, exactly as it wrote it; --follow then prints what comes "
                    "next until the agent ends (every chunk once); --follow --all follows every agent")
    p.add_argument("agent", type=_agent_ref, nargs="?", help=_AGENT)
    p.add_argument("--all", action="store_true", help="with --follow: every agent that runs now or starts later "
                                                      "(of every server of a fleet), each line prefixed with "
                                                      "[server/agent]; until Ctrl-C")
    p.add_argument("--stream", choices=[s.value for s in ZmqOutputStream], default=ZmqOutputStream.BOTH.value,
                   metavar="STREAM", help="stdout, stderr or both (default; in the order they were written)")
    p.add_argument("--follow", "-f", action="store_true", help="then print new output until the agent ends")
    p.add_argument("--from", dest="start", default="start", metavar="WHERE",
                   help="with --follow, where to start: start (the first stored byte; default), now, line:N or "
                        "sequence:N")
    p = sub("events", "print status updates as they happen (Ctrl-C to stop)")
    p.add_argument("agent", type=_agent_ref, nargs="?", help="only this agent's (default: all, heartbeats included)")
    p.add_argument("--count", type=int, help="stop after this many")
    sub("health", "check that the server answers, and show what it reports")
    p = sub("batch", "run one control command on several agents")
    p.add_argument("operation", choices=[c.value for c in ControlCommandType], metavar="COMMAND",
                   help=f"one of {', '.join(c.value for c in ControlCommandType)}")
    p.add_argument("agents", type=_agent_ref, nargs="+", metavar="AGENT", help="agent ids, prefixes or names")
    p.add_argument("--fail-fast", action="store_true", help="stop at the first failure")
    p.add_argument("--force", action="store_true", help="with pause: always SIGSTOP")
    p = sub("wait", "block until the agents have ended; exit 0 if every one completed, 1 if any did not "
                    "(failed or terminated), and say how each ended")
    p.add_argument("agents", type=_agent_ref, nargs="+", metavar="AGENT", help="agent ids, prefixes or names")
    p.add_argument("--wait-timeout", type=float, metavar="SECS", help="give up (exit 1) after this long "
                                                                       "(default: wait as long as it takes)")
    p = sub("top", "a live view of every server and agent (of the fleet, or of the one server): status, age, "
                   "CPU, memory, output rate, server load; q or Ctrl-C to quit")
    p.add_argument("--interval", type=float, default=1.0, metavar="SECS", help="refresh every SECS (default 1)")
    p.add_argument("--once", action="store_true", help="print one view and exit (no terminal needed)")


def connection(args: argparse.Namespace) -> dict[str, Any]:
    """endpoint, pub_endpoint, server_key and client_key from flags, environment, config file, defaults."""
    data: dict[str, Any] = {}
    path = args.config or os.environ.get("DESCARTES_FAST_CONFIG")
    if path:
        try:
            data = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise _Usage(f"cannot read config file {path}: {exc}") from None
    server, client = data.get("server", {}), data.get("client", {})
    # the event endpoint comes from where the request endpoint came from: a --endpoint of another server
    # must not be paired with the variable's or the file's event endpoint of this one
    endpoint, pub = "tcp://127.0.0.1:5555", None
    for bind, event in ((server.get("bind"), server.get("pub")),
                        (os.environ.get("DESCARTES_FAST_BIND"), os.environ.get("DESCARTES_FAST_PUB")),
                        (args.endpoint, args.pub_endpoint)):
        if bind:
            endpoint, pub = bind, event
        elif event:
            pub = event
    if isinstance(pub, str) and pub.strip().lower() in ("", "none", "off"):
        pub = None
    local = lambda e: e.replace("://0.0.0.0:", "://127.0.0.1:").replace("://*:", "://127.0.0.1:")
    keys = {}
    for name in ("server_key", "client_key"):
        in_file = client.get(name)
        keys[name] = (getattr(args, name) or os.environ.get("DESCARTES_FAST_" + name.upper())
                      or (str(Path(path).parent / in_file) if path and isinstance(in_file, str) else None))
    return {"endpoint": local(endpoint), "pub_endpoint": local(pub) if pub else None, **keys}


#: commands that work on many agents at once: on one server, they run as on a fleet of one
FLEET_WIDE = ("top", "wait")


def run(args: argparse.Namespace) -> int:
    """Run one client command; returns the exit status (see EXIT_CODES)."""
    try:
        where = connection(args)
        fleet = fleet_of(args)
        config = ZmqRunnerConfig(**where, request_timeout_secs=args.timeout, connection_timeout_secs=args.timeout,
                                 enable_heartbeat=False, auto_reconnect=False)
        if fleet is not None or args.command in FLEET_WIDE or getattr(args, "all", False):
            from descartes_fast.cli.fleet_commands import run_fleet
            return run_fleet(args, fleet, config)
        if getattr(args, "server", None) or getattr(args, "label", None):
            raise _Usage("--server and --label place a spawn in a fleet: give --fleet FILE")
        client = Client(config)
    except (_Usage, SecurityError, ValueError) as exc:  # (FleetFileError is a ValueError)
        return _fail(exc, 2)

    def command() -> int:
        client.connect()
        _resolve_refs(client, args)
        return _HANDLERS[args.command](client, args)
    try:
        return guarded(command, where["endpoint"], bool(where["server_key"]))
    finally:
        client.close()


def guarded(command: Callable[[], int], endpoint: str, curve: bool) -> int:
    """Run *command*; its errors as messages and exit statuses (see EXIT_CODES)."""
    try:
        return command()
    except RequestTimeoutError as exc:
        hint = ("a CURVE server does not answer a client whose key is not in its allowlist" if curve
                else "if the server uses CURVE, give --server-key and --client-key")
        return _fail(f"the server at {endpoint} did not answer: {exc} ({hint})", 3)
    except ServerError as exc:
        return _fail(exc, 4 if str(exc).startswith("Agent not found") else 1)
    except (ClientError, _Usage) as exc:
        return _fail(exc, 2 if isinstance(exc, _Usage) else 1)


def fleet_of(args: argparse.Namespace) -> Any:
    """The FleetSpec that --fleet, DESCARTES_FAST_FLEET or DESCARTES_FAST_SERVERS names; None for one server."""
    path = args.fleet or os.environ.get("DESCARTES_FAST_FLEET")
    if args.fleet and args.endpoint:
        raise _Usage("--fleet and --endpoint: give one (a fleet, or one server)")
    if path or (not args.endpoint and os.environ.get("DESCARTES_FAST_SERVERS")):
        from descartes_fast.fleet import servers
        return servers.load(path) if path else servers.from_env(os.environ["DESCARTES_FAST_SERVERS"])
    return None


def _resolve_refs(client: Client, args: argparse.Namespace) -> None:
    """Agent names and id prefixes in *args* become ids (full ids need no request)."""
    refs = [args.agent] if getattr(args, "agent", None) is not None else list(getattr(args, "agents", None) or [])
    if not refs:
        return
    ids: list[uuid.UUID] = []
    listed: list[AgentInfo] | None = None
    for ref in refs:
        try:
            ids.append(uuid.UUID(ref))
            continue
        except ValueError:
            pass
        if listed is None:
            listed = client.list_remote_agents()
        ids.append(resolve(listed, ref))
    if getattr(args, "agent", None) is not None:
        args.agent = ids[0]
    else:
        args.agents = ids


def _fail(error: object, code: int) -> int:
    print(f"descartes-fast: error: {error}", file=sys.stderr)
    return code


def _emit(args: argparse.Namespace, data: Any, text: str | Callable[[], str]) -> int:
    print(json.dumps(data, default=str) if args.json else (text() if callable(text) else text), flush=True)
    return 0


def _info(info: AgentInfo) -> dict[str, Any]:
    return {"id": str(info.id), "name": info.name, "status": info.status.value, "backend": info.model_backend,
            "started_at_ns": info.started_at, "task": info.task,
            "pause_mode": info.pause_mode.value if info.pause_mode else None}


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows])


def pairs(items: list[str], option: str) -> dict[str, str]:
    """KEY=VALUE items of a repeatable option."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise _Usage(f"{option} wants KEY=VALUE, not {item!r}")
        out[key] = value
    return out


def spawn_config(args: argparse.Namespace) -> AgentConfig:
    return AgentConfig(name=args.name, model_backend=args.backend, task=args.task, context=args.context,
                       system_prompt=args.system_prompt, environment=pairs(args.env, "--env"), model=args.model,
                       tool_level=args.tool_level)


def spawned(args: argparse.Namespace, info: AgentInfo, server: str | None = None) -> int:
    if args.quiet and not args.json:
        return _emit(args, None, str(info.id))
    where = f"  on {server}" if server else ""
    return _emit(args, {**_info(info), **({"server": server} if server else {})},
                 f"{info.id}  {info.status}  {info.model_backend}  {info.task}{where}")


def _spawn(client: Client, args: argparse.Namespace) -> int:
    info = client.spawn_remote(spawn_config(args), args.time_limit, spawn_metadata(args))
    return spawned(args, info)


def spawn_metadata(args: argparse.Namespace) -> dict[str, str]:
    given = {"resume": args.resume, "restart": args.restart, "max_restarts": args.max_restarts,
             "restart_backoff": args.restart_backoff, "rows": args.rows, "cols": args.cols}
    return {k: str(v) for k, v in given.items() if v is not None}


def _say(client: Client, args: argparse.Namespace) -> int:
    text = args.text
    if text is None and not args.end:
        text = sys.stdin.read()
    done = client.say(args.agent, text, end=args.end)
    return _emit(args, {"id": str(args.agent), "result": done}, done)


def _resize(client: Client, args: argparse.Namespace) -> int:
    size = client.resize(args.agent, args.rows, args.cols)
    return _emit(args, {"id": str(args.agent), **size}, f"{size['rows']} rows x {size['cols']} columns")


def _list(client: Client, args: argparse.Namespace) -> int:
    agents = client.list_remote_agents(AgentStatus(args.status) if args.status else None, args.limit)
    facts = {a.id: _facts_of(client, a.id) for a in agents} if client.descartes_fast_server else {}
    rows = [[str(a.id), a.name, a.status.value, _outcome(facts.get(a.id, {})), _session(facts.get(a.id, {})),
             a.model_backend, a.task[:40]] for a in agents]
    return _emit(args, [{**_info(a), **{k: v for k, v in facts.get(a.id, {}).items() if k in _FACTS}}
                        for a in agents],
                 lambda: _table(rows, ["ID", "NAME", "STATUS", "EXIT", "SESSION", "BACKEND", "TASK"]) if rows
                 else "no agents")


def _facts_of(client: Client, agent: uuid.UUID) -> dict[str, Any]:
    """get_status's facts of *agent* (none if it went between the list and this)."""
    try:
        return client.agent_state(agent)
    except ServerError:
        return {}


def _outcome(facts: dict[str, Any]) -> str:
    if facts.get("signal") is not None:
        return f"signal {facts['signal']}"
    return f"{facts['exit_code']}" if facts.get("exit_code") is not None else ""


def _session(facts: dict[str, Any]) -> str:
    if "turns" not in facts:
        return ""
    cost = f" ${facts['cost_usd']:.4f}" if facts.get("cost_usd") is not None else ""
    return f"{facts['turns']} turns{cost}"


#: what ``status`` tells beyond the status, as a descartes_fast server's get_status gives it
_FACTS = ("pid", "exit_code", "signal", "ended_at", "reason", "cpu_secs", "max_rss_kib", "processes_left",
          "restarts", "session_id", "turns", "failed_turns", "input_tokens", "output_tokens", "cached_input_tokens",
          "cost_usd", "tool_calls", "unparsed_lines", "terminal")


def _status(client: Client, args: argparse.Namespace) -> int:
    status = client.get_agent_status(args.agent)
    facts = client.agent_state(args.agent) if client.descartes_fast_server else {}
    data = {"id": str(args.agent), "status": status.value, **{k: facts.get(k) for k in _FACTS if k in facts}}
    return _emit(args, data, lambda: _status_line(status, facts))


def _status_line(status: AgentStatus, facts: dict[str, Any]) -> str:
    """``failed  exit 2  pid 41  ended 2026-12-02 06:20:01 UTC  cpu 0.01 s  peak 3.2 MiB  (why)``"""
    parts = [status.value]
    code, sig = facts.get("exit_code"), facts.get("signal")
    if sig is not None:
        try:
            parts.append(f"signal {sig} ({signal.Signals(sig).name})")
        except ValueError:
            parts.append(f"signal {sig}")
    elif code is not None:
        parts.append(f"exit {code}")
    if facts.get("pid"):
        parts.append(f"pid {facts['pid']}")
    if facts.get("ended_at") is not None:
        ended = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(facts["ended_at"] / 1e9))
        parts.append(f"ended {ended} UTC")
    if facts.get("cpu_secs") is not None:
        parts.append(f"cpu {facts['cpu_secs']:.2f} s")
    if facts.get("max_rss_kib") is not None:
        parts.append(f"peak {facts['max_rss_kib'] / 1024:.1f} MiB")
    if facts.get("session_id") is not None or facts.get("turns"):
        cost = f"  ${facts['cost_usd']:.4f}" if facts.get("cost_usd") is not None else ""
        parts.append(f"session {facts.get('session_id')}  {facts.get('turns', 0)} turn(s)  "
                     f"{facts.get('tool_calls', 0)} tool call(s)  tokens {facts.get('input_tokens', 0)} in "
                     f"({facts.get('cached_input_tokens', 0)} cached) / {facts.get('output_tokens', 0)} out{cost}")
    if facts.get("restarts"):
        parts.append(f"{facts['restarts']} restart(s)")
    if facts.get("terminal"):
        parts.append(f"terminal {facts['terminal']['rows']}x{facts['terminal']['cols']}")
    if facts.get("processes_left"):
        parts.append(f"{facts['processes_left']} process(es) still running")
    if facts.get("reason"):
        parts.append(f"({facts['reason']})")
    return "  ".join(parts)


def _status_in(exc: ServerError, *statuses: AgentStatus) -> AgentStatus | None:
    """The agent's status in a refused command's reply, if it is one of *statuses*."""
    status = exc.reply.status if isinstance(exc.reply, CommandResponse) else None
    return status if status in statuses else None


def _pause(client: Client, args: argparse.Namespace) -> int:
    try:
        mode = client.pause_agent(args.agent, force=args.force)
    except ServerError as exc:
        if not _status_in(exc, AgentStatus.PAUSED):
            raise
        return _emit(args, {"id": str(args.agent), "paused": True, "already": True}, "already paused")
    return _emit(args, {"id": str(args.agent), "paused": True, "mode": mode}, f"paused ({mode})")


def _resume(client: Client, args: argparse.Namespace) -> int:
    try:
        client.resume_agent(args.agent)
    except ServerError as exc:
        status = _status_in(exc, AgentStatus.RUNNING, AgentStatus.THINKING, AgentStatus.IDLE,
                            AgentStatus.INITIALIZING)
        if status is None:
            raise
        return _emit(args, {"id": str(args.agent), "done": "resumed", "already": True},
                     f"not paused ({status.value})")
    return _emit(args, {"id": str(args.agent), "done": "resumed"}, "resumed")


def _ender(action: str) -> Callable[[Client, argparse.Namespace], int]:
    """stop or kill: done, or nothing to do when the agent has ended already."""
    def handler(client: Client, args: argparse.Namespace) -> int:
        acted = client.stop_agent(args.agent) if action == "stop" else client.kill_agent(args.agent)
        done = {"stop": "stopped", "kill": "killed"}[action]
        result: dict[str, Any] = {"id": str(args.agent), "done": done}
        if not acted:  # it has ended: say how (terminated, completed, failed)
            result.update(already=True, status=client.get_agent_status(args.agent).value)
        text = f"already {result['status']}" if not acted else done
        if args.wait:
            state = _gone(client, args.agent, args.wait_timeout)
            if state is None:
                print(f"descartes-fast: agent {args.agent} still has processes running after "
                      f"{args.wait_timeout:g} s", file=sys.stderr)
                return 1
            result.update({k: state.get(k) for k in ("exit_code", "signal", "ended_at")})
            text += f"; {_how_it_ended(state)}"
        return _emit(args, result, text)
    return handler


def _gone(client: Client, agent: uuid.UUID, timeout: float) -> dict[str, Any] | None:
    """The agent's state once no process of it is left (None if some still run after *timeout*)."""
    deadline = time.monotonic() + timeout
    while True:
        state = client.agent_state(agent)
        if "ended_at" not in state:  # not a descartes_fast server: its status is all there is
            if str(state.get("status", "")).lower() in ("completed", "failed", "terminated"):
                return state
        elif state["ended_at"] is not None and not state.get("processes_left"):
            return state
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.05)


def _how_it_ended(state: dict[str, Any]) -> str:
    if state.get("signal"):
        return f"ended by signal {state['signal']}"
    if state.get("exit_code") is not None:
        return f"exited with status {state['exit_code']}"
    return "ended"


def _send(client: Client, args: argparse.Namespace) -> int:
    data: bytes | str = args.text + ("\n" if args.newline else "") if args.text is not None \
        else sys.stdin.buffer.read()
    written = client.write_agent_stdin(args.agent, data, eof=args.eof)
    return _emit(args, {"id": str(args.agent), "bytes_written": written}, f"{written} bytes written")


def _start(text: str) -> dict[str, Any]:
    """``--from``: start, now, line:N or sequence:N, as follow_logs' keywords."""
    kind, _, number = text.partition(":")
    if text in ("start", "") and not number:
        return {}
    if text == "now":
        return {"from_now": True}
    if kind in ("line", "sequence") and number.isdigit():
        return {f"from_{kind}": int(number)}
    raise _Usage(f"--from wants start, now, line:N or sequence:N, not {text!r}")


def _logs(client: Client, args: argparse.Namespace) -> int:
    keep_big_buffers()  # output comes in pages of hundreds of KiB
    stream = ZmqOutputStream(args.stream)
    start = _start(args.start)
    if not client.descartes_fast_server:  # a Rust server stores no output: what read_stdout gives, then live
        live = client.follow_logs(args.agent) if args.follow else None  # subscribe before reading
        for line in client.read_output_lines(args.agent, stream):
            _emit(args, {"stream": None, "line": line}, line)
        chunks: Any = live or ()
    elif args.follow:
        chunks = client.follow_logs(args.agent, streams=stream, **start)
    else:
        if start:
            raise _Usage("--from is for --follow (without it, logs prints everything stored)")
        chunks = client.stored_output(args.agent, stream)
    out = sys.stdout.buffer
    wanted = {ZmqOutputStream.BOTH: ("stdout", "stderr")}.get(stream, (stream.value,))
    for chunk in chunks:
        if chunk.stream_type.value not in wanted:
            continue
        if args.json:
            for line in chunk.data.decode("utf-8", "replace").splitlines():
                _emit(args, {"stream": chunk.stream_type.value, "sequence": chunk.sequence, "line": line}, "")
            continue
        out.write(chunk.data)  # the bytes exactly as the agent wrote them
        if args.follow:
            out.flush()
    out.flush()
    return 0


def _emit_update(args: argparse.Namespace, update: StatusUpdate, server: str | None = None) -> None:
    """One status update, as JSON or a line (prefixed with its *server* in a fleet)."""
    facts = {"agent_id": str(update.agent_id), "type": update.update_type.value,
             "status": update.status.value if update.status else None, "message": update.message,
             "data": update.data, "timestamp_ns": update.timestamp}
    line = f"{update.agent_id}  {update.update_type.value:<16} {update.status or '-':<11} {update.message or ''}"
    if server is not None:
        facts, line = {"server": server, **facts}, f"{server}  {line}"
    _emit(args, facts, line)


def _events(client: Client, args: argparse.Namespace) -> int:
    seen = 0
    for update in client.subscribe_status_updates(args.agent):
        _emit_update(args, update)
        seen += 1
        if args.count is not None and seen >= args.count:
            break
    return 0


def _health(client: Client, args: argparse.Namespace) -> int:
    h = client.health_check()
    data = {"healthy": h.healthy, "protocol_version": h.protocol_version, "uptime_secs": h.uptime_secs,
            "active_agents": h.active_agents, "metadata": h.metadata}
    rows = [["healthy", str(h.healthy)], ["protocol", h.protocol_version], ["uptime", f"{h.uptime_secs} s"],
            ["active agents", str(h.active_agents)]] + [[k, v] for k, v in sorted((h.metadata or {}).items())]
    return _emit(args, data, lambda: _table(rows, ["FIELD", "VALUE"]))


def _batch(client: Client, args: argparse.Namespace) -> int:
    payload = {"force": True} if args.force else None
    reply = client.batch_control(args.agents, ControlCommandType(args.operation), payload, args.fail_fast)
    results = [{"id": str(r.agent_id), "success": r.success, "status": r.status.value if r.status else None,
                "error": r.error} for r in reply.results]
    rows = [[str(r["id"]), "ok" if r["success"] else "FAILED", str(r["status"] or "-"), str(r["error"] or "")]
            for r in results]
    _emit(args, {"success": reply.success, "successful": reply.successful, "failed": reply.failed,
                 "results": results},
          lambda: _table(rows, ["ID", "RESULT", "STATUS", "ERROR"]) + f"\n{reply.successful} ok, {reply.failed} failed")
    return 0 if reply.success else 1


_HANDLERS: dict[str, Callable[[Client, argparse.Namespace], int]] = {
    "spawn": _spawn, "list": _list, "status": _status, "pause": _pause, "resume": _resume,
    "stop": _ender("stop"), "kill": _ender("kill"), "send": _send, "say": _say, "resize": _resize, "logs": _logs,
    "events": _events, "health": _health, "batch": _batch,
}
