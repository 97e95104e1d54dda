"""``descartes-fast-server`` (also ``descartes-fast serve``): run the agent server on this machine."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import descartes_fast
from descartes_fast.server.memory import keep_big_buffers

__all__ = ["add_serve_command", "serve", "server_main"]

SERVER_DESCRIPTION = (
    "Run agents on this machine for Descartes clients (descartes_fast's own, or the Rust "
    "ZmqClient): requests on a ROUTER socket, live output and status updates on a PUB socket. "
    "Every setting can also come from the config file's [server] table or a DESCARTES_FAST_* "
    "variable; flags win over variables, variables over the file.")
SERVER_EPILOG = """examples:
  descartes-fast-server                           loopback, ports 5555 (requests) and 5556 (events)
  descartes-fast-server --config server.toml      settings, spawn policy and backends from a file
  DESCARTES_FAST_MAX_AGENTS=500 descartes-fast-server --log-level DEBUG
  descartes-fast-server --metrics 127.0.0.1:9100  Prometheus metrics at http://127.0.0.1:9100/metrics
  descartes-fast-server --bind tcp://0.0.0.0:5555 --pub tcp://0.0.0.0:5556
      --curve-secret-key keys/server.key_secret --authorized-keys keys/clients
                                                  across machines: encrypted, clients by key

security: a non-loopback endpoint is refused unless CURVE is on (--curve-secret-key and
--authorized-keys; make keys with 'descartes-fast keygen NAME') or --insecure is given.
SIGHUP re-reads --authorized-keys: a removed key loses access at once. What a request may
spawn (backends, environment, working directory, CPU/memory/open-file/wall-clock limits,
agents per client) is set in the config file's [policy] table; see README, section Security.

backends: claude, claude-code-cli, opencode, codex, gemini and demo are built in (<program>-cli
only with [policy] allow_program_cli = true); a config file can add more:
  [backends.mytool]
  command = ["mytool", "--task", "{task}", ["--model", "{model}"]]
  stdin = "pipe"              # pipe | close | null
  cooperative_pause = false

agents and the keeper: agents are started by a small keeper process (one per --state-dir,
started by the server, logging to keeper.log there) that is their parent and holds their pipes.
  default                     SIGTERM or SIGINT stops the server gracefully: no new requests,
                              agents stopped (SIGTERM, then SIGKILL after --stop-grace), exit 0;
                              after a crash (kill -9) the agents run on, and the next server on
                              the same --state-dir adopts them with all their output
  --keep-agents               SIGTERM leaves the agents running for the next server (an upgrade:
                              stop this one, start the new version on the same --state-dir)
  --agents-die-with-server    no agent outlives the server, even after kill -9
containment: each agent gets its own cgroup where the unified cgroup v2 hierarchy is writable
(stop and kill then reach processes that called setsid; pause freezes it), else its process
group; --containment process-group forces the fallback. health says which is in use."""



def add_serve_command(commands: Any) -> None:
    """The ``serve`` subcommand of ``descartes-fast``, with every server flag."""
    from descartes_fast.server import settings
    parser = commands.add_parser("serve", help="run the agent server (same as descartes-fast-server)",
                                 description=SERVER_DESCRIPTION, epilog=SERVER_EPILOG,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    settings.add_arguments(parser)


def serve(args: argparse.Namespace, prog: str) -> int:
    """Run the server until SIGTERM/SIGINT; 0 after a clean stop, 1 if it cannot start, 2 on bad settings."""
    import asyncio
    import logging

    import zmq

    from descartes_fast.agents.keeper_link import KeeperError
    from descartes_fast.agents.state import StateError
    from descartes_fast.server import settings
    from descartes_fast.server.agent_server import AgentServer
    from descartes_fast.server.security import SecurityError

    try:
        config, level, loop_name, log_format = settings.resolve(args)
    except settings.SettingsError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    if log_format == "json":
        from descartes_fast.server.logformat import JsonLines
        handler = logging.StreamHandler()
        handler.setFormatter(JsonLines())
        logging.basicConfig(level=level, handlers=[handler])
    else:
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    fd_limit = _raise_fd_limit()
    keep_big_buffers()
    try:
        server = AgentServer(config)
    except (StateError, KeeperError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    try:
        server.bind()
    except SecurityError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except zmq.ZMQError as exc:
        logging.getLogger("descartes_fast.server").error("cannot bind %s / %s: %s", config.bind, config.pub, exc)
        return 1
    except OSError as exc:  # the metrics endpoint (--metrics): a busy port, an unknown host
        print(f"{prog}: error: {exc.strerror or exc}", file=sys.stderr)
        return 1
    _log_fd_room(fd_limit)
    factory = None
    if loop_name == "uvloop":
        import uvloop
        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(server.run())
    return 0


#: descriptors a running agent holds in the server: three pipes, and in the output store a
#: segment and its index per stream (and one to spare)
_FDS_PER_AGENT = 8


def _raise_fd_limit() -> int:
    """Allow as many open files as the system allows (agents hold several each); the soft limit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass  # keep the soft limit we have
    return soft


def _log_fd_room(limit: int) -> None:
    """Say how many agents the open-file limit leaves room for, past what the server holds itself."""
    import logging

    try:
        used = len(os.listdir("/proc/self/fd")) - 1  # (less the descriptor listdir itself opened)
    except OSError:
        used = 0
    logging.getLogger("descartes_fast.server").info(
        "open-file limit %d, %d in use by the server: room for about %d agents (%d descriptors each)",
        limit, used, max(0, limit - used) // _FDS_PER_AGENT, _FDS_PER_AGENT)


def server_main(argv: list[str] | None = None) -> int:
    """The ``descartes-fast-server`` command."""
    from descartes_fast.server import settings
    parser = argparse.ArgumentParser(prog="descartes-fast-server", description=SERVER_DESCRIPTION,
                                     epilog=SERVER_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version",
                        version=f"%(prog)s {descartes_fast.__version__} ({descartes_fast.IMPLEMENTATION})")
    settings.add_arguments(parser)
    return serve(parser.parse_args(argv), parser.prog)
