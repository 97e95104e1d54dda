"""The ``descartes-fast`` command (also ``python -m descartes_fast``)."""

from __future__ import annotations

import argparse
import sys

import descartes_fast

SERVER_DESCRIPTION = (
    "Run agents on this machine for Descartes clients (descartes_fast's own, or the Rust "
    "ZmqClient): requests on a ROUTER socket, live output and status updates on a PUB socket. "
    "Every setting can also come from the config file's [server] table or a DESCARTES_FAST_* "
    "variable; flags win over variables, variables over the file.")
SERVER_EPILOG = """examples:
  descartes-fast-server                           loopback, ports 5555 (requests) and 5556 (events)
  descartes-fast-server --config server.toml      settings, spawn policy and backends from a file
  DESCARTES_FAST_MAX_AGENTS=500 descartes-fast-server --log-level DEBUG
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

SIGTERM or SIGINT stops the server gracefully: no new requests, agents stopped
(SIGTERM, then SIGKILL after --stop-grace), events flushed, exit status 0."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="descartes-fast",
        description="descartes_fast: run and control agent processes over ZeroMQ, wire-compatible "
                    "with the Rust Descartes ZMQ subsystem. 'serve' runs a server; the other commands "
                    "talk to one (see COMMAND --help).",
        epilog="Environment: DESCARTES_FAST_NO_EXTENSIONS=1 uses the pure-Python twins; "
               "DESCARTES_FAST_REQUIRE_EXTENSIONS=1 makes a missing compiled twin an error.")
    parser.add_argument("--version", action="version",
                        version=f"%(prog)s {descartes_fast.__version__} ({descartes_fast.IMPLEMENTATION})")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser(
        "demo", help="run a swarm of demo agents on a local server and watch them (about 10 s)",
        description="Start descartes-fast serve on loopback with the demo backend, spawn five demo "
                    "agents, show their output and status changes live from the PUB socket, pause "
                    "and resume one, kill one, and print a summary table. Needs no LLM CLI.")
    codec_demo = commands.add_parser(
        "codec-demo", help="show the wire format, a typed decode error and a codec speed table",
        description="Encode and decode sample messages, check the bytes against rmp-serde's, show "
                    "a decode error, and time the compiled and pure-Python codecs against msgpack. "
                    "Takes a few seconds.")
    codec_demo.add_argument("--rounds", type=int, default=5, help="timing rounds per measurement (default 5)")
    keygen = commands.add_parser(
        "keygen", help="write a CURVE key pair: NAME.key (public) and NAME.key_secret",
        description="Write a CurveZMQ key pair in pyzmq's certificate format: NAME.key holds the public "
                    "key (give it to the other side: a client's goes in the server's --authorized-keys "
                    "directory, the server's to its clients as --server-key), NAME.key_secret holds both "
                    "halves and is written readable by its owner only (give it to --curve-secret-key on "
                    "a server, --client-key on a client).")
    keygen.add_argument("name", metavar="NAME", help="file name without suffix, e.g. worker-1 or alice")
    keygen.add_argument("--dir", default=".", help="directory to write to (created if needed; default: .)")
    keygen.add_argument("--force", action="store_true", help="replace existing files of that name")
    serve = commands.add_parser("serve", help="run the agent server (same as descartes-fast-server)",
                                description=SERVER_DESCRIPTION, epilog=SERVER_EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    from descartes_fast import cli, settings
    settings.add_arguments(serve)
    cli.add_commands(commands)
    return parser


def serve(args: argparse.Namespace, prog: str) -> int:
    """Run the server until SIGTERM/SIGINT; 0 after a clean stop, 1 if it cannot start, 2 on bad settings."""
    import asyncio
    import logging

    import zmq

    from descartes_fast import settings
    from descartes_fast.server import AgentServer, SecurityError

    try:
        config, level, loop_name = settings.resolve(args)
    except settings.SettingsError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _raise_fd_limit()
    server = AgentServer(config)
    try:
        server.bind()
    except SecurityError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except zmq.ZMQError as exc:
        logging.getLogger("descartes_fast.server").error("cannot bind %s / %s: %s", config.bind, config.pub, exc)
        return 1
    factory = None
    if loop_name == "uvloop":
        import uvloop
        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(server.run())
    return 0


def keygen(args: argparse.Namespace) -> int:
    """``descartes-fast keygen``: 0 when written, 2 if the name is bad or the files exist."""
    from descartes_fast.security import SecurityError, keygen as write_keys

    try:
        public, secret = write_keys(args.name, args.dir, force=args.force)
    except SecurityError as exc:
        print(f"descartes-fast keygen: error: {exc}", file=sys.stderr)
        return 2
    print(f"public key: {public}   (share it)\nsecret key: {secret}   (keep it; mode 0600)")
    return 0


def _raise_fd_limit() -> None:
    """Each agent holds about four descriptors (three pipes and a pidfd): allow what the system allows."""
    import logging
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass  # keep the soft limit we have
    logging.getLogger("descartes_fast.server").info("open-file limit %d (about %d agents)", soft, soft // 4)


def server_main(argv: list[str] | None = None) -> int:
    """The ``descartes-fast-server`` command."""
    from descartes_fast import settings
    parser = argparse.ArgumentParser(prog="descartes-fast-server", description=SERVER_DESCRIPTION,
                                     epilog=SERVER_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version",
                        version=f"%(prog)s {descartes_fast.__version__} ({descartes_fast.IMPLEMENTATION})")
    settings.add_arguments(parser)
    return serve(parser.parse_args(argv), parser.prog)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        from descartes_fast import demo
        return demo.main()
    if args.command == "codec-demo":
        from descartes_fast import codec_demo
        return codec_demo.main(rounds=max(1, args.rounds))
    if args.command == "serve":
        return serve(args, "descartes-fast serve")
    if args.command == "keygen":
        return keygen(args)
    from descartes_fast import cli
    if args.command in cli.COMMANDS:
        return cli.run(args)
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
