"""The ``descartes-fast`` command (also ``python -m descartes_fast``)."""

from __future__ import annotations

import argparse
import sys

import descartes_fast


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="descartes-fast",
        description="descartes_fast: run and control agent processes over ZeroMQ, wire-compatible "
                    "with the Rust Descartes ZMQ subsystem.",
        epilog="Environment: DESCARTES_FAST_NO_EXTENSIONS=1 uses the pure-Python twins; "
               "DESCARTES_FAST_REQUIRE_EXTENSIONS=1 makes a missing compiled twin an error.")
    parser.add_argument("--version", action="version",
                        version=f"%(prog)s {descartes_fast.__version__} ({descartes_fast.IMPLEMENTATION})")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser(
        "demo", help="show the wire format, a typed decode error and a codec speed table",
        description="Encode and decode sample messages, check the bytes against rmp-serde's, show "
                    "a decode error, and time the compiled and pure-Python codecs against msgpack. "
                    "Takes a few seconds.")
    demo.add_argument("--rounds", type=int, default=5, help="timing rounds per measurement (default 5)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        from descartes_fast import demo
        return demo.main(rounds=max(1, args.rounds))
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
