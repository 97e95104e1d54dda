"""``descartes-fast keygen``: write a CURVE key pair for a server or a client."""

from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = ["add_keygen_command", "keygen"]


def add_keygen_command(commands: Any) -> None:
    parser = commands.add_parser(
        "keygen", help="write a CURVE key pair: NAME.key (public) and NAME.key_secret",
        description="Write a CurveZMQ key pair in pyzmq's certificate format: NAME.key holds the public "
                    "key (give it to the other side: a client's goes in the server's --authorized-keys "
                    "directory, the server's to its clients as --server-key), NAME.key_secret holds both "
                    "halves and is written readable by its owner only (give it to --curve-secret-key on "
                    "a server, --client-key on a client).")
    parser.add_argument("name", metavar="NAME", help="file name without suffix, e.g. worker-1 or alice")
    parser.add_argument("--dir", default=".", help="directory to write to (created if needed; default: .)")
    parser.add_argument("--force", action="store_true", help="replace existing files of that name")


def keygen(args: argparse.Namespace) -> int:
    """``descartes-fast keygen``: 0 when written, 2 if the name is bad or the files exist."""
    from descartes_fast.wire.curve import SecurityError
    from descartes_fast.wire.curve import keygen as write_keys

    try:
        public, secret = write_keys(args.name, args.dir, force=args.force)
    except SecurityError as exc:
        print(f"descartes-fast keygen: error: {exc}", file=sys.stderr)
        return 2
    print(f"public key: {public}   (share it)\nsecret key: {secret}   (keep it; mode 0600)")
    return 0
