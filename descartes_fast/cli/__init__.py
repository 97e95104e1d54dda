"""The ``descartes-fast`` command: ``serve`` (:mod:`.serve`), ``keygen`` (:mod:`.keygen`), the demos,
and the client commands that talk to a server (:mod:`.commands`)."""

from __future__ import annotations

import argparse
import os
import sys

import descartes_fast

__all__ = ["build_parser", "main"]

#: exit status after Ctrl-C (128 + SIGINT), and when the reader of our output went away (128 + SIGPIPE)
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141


def build_parser(client_only: bool = False) -> argparse.ArgumentParser:
    """The whole command line; with *client_only*, only the commands that talk to a server (what
    they need loads in a fraction of the time the server's settings take: ``logs | head`` starts fast)."""
    from descartes_fast.cli import commands

    parser = argparse.ArgumentParser(
        prog="descartes-fast",
        description="descartes_fast: run and control agent processes over ZeroMQ, wire-compatible "
                    "with the Rust Descartes ZMQ subsystem. 'serve' runs a server; the other commands "
                    "talk to one (see COMMAND --help).",
        epilog="Environment: DESCARTES_FAST_NO_EXTENSIONS=1 uses the pure-Python twins; "
               "DESCARTES_FAST_REQUIRE_EXTENSIONS=1 makes a missing compiled twin an error.")
    parser.add_argument("--version", action="version",
                        version=f"%(prog)s {descartes_fast.__version__} ({descartes_fast.IMPLEMENTATION})")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    if client_only:
        commands.add_commands(subparsers)
        return parser
    from descartes_fast.cli import keygen, serve
    subparsers.add_parser(
        "demo", help="run a swarm of demo agents on a local server and watch them (about 10 s)",
        description="Start descartes-fast serve on loopback with the demo backend, spawn five demo "
                    "agents, show their output and status changes live from the PUB socket, pause "
                    "and resume one, kill one, and print a summary table. Needs no LLM CLI.")
    codec_demo = subparsers.add_parser(
        "codec-demo", help="show the wire format, a typed decode error and a codec speed table",
        description="Encode and decode sample messages, check the bytes against rmp-serde's, show "
                    "a decode error, and time the compiled and pure-Python codecs against msgpack. "
                    "Takes a few seconds.")
    codec_demo.add_argument("--rounds", type=int, default=5, help="timing rounds per measurement (default 5)")
    keygen.add_keygen_command(subparsers)
    serve.add_serve_command(subparsers)
    commands.add_commands(subparsers)
    return parser


def _dispatch(argv: list[str] | None) -> int:
    from descartes_fast.cli import commands
    argv = sys.argv[1:] if argv is None else argv
    command = next((arg for arg in argv if not arg.startswith("-")), None)  # options follow the command
    parser = build_parser(client_only=command in commands.COMMANDS)
    args = parser.parse_args(argv)
    if args.command == "demo":
        from descartes_fast.demo import swarm
        return swarm.main()
    if args.command == "codec-demo":
        from descartes_fast.demo import codec
        return codec.main(rounds=max(1, args.rounds))
    if args.command == "serve":
        from descartes_fast.cli.serve import serve
        return serve(args, "descartes-fast serve")
    if args.command == "keygen":
        from descartes_fast.cli.keygen import keygen
        return keygen(args)
    if args.command in commands.COMMANDS:
        return commands.run(args)
    parser.print_help()
    return 2


def main(argv: list[str] | None = None) -> int:
    """The ``descartes-fast`` command; returns its exit status."""
    try:
        return _dispatch(argv)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # the reader went away (``descartes-fast logs ... | head``): stop quietly, as programs killed by
        # SIGPIPE do; point stdout at /dev/null so that flushing it at exit raises nothing more
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
