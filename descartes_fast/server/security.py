"""Who may connect: the ZAP handler that checks CURVE clients against an allowlist directory,
and the rule that keeps an unencrypted server on loopback.

A server authorises the clients whose ``.key`` files are in its ``--authorized-keys``
directory; the ZAP handler (ZeroMQ's authentication hook, RFC 27) checks each new
connection against it, and the user id it hands back is the client's public key, so every
request can be checked again after the allowlist is reloaded (:mod:`descartes_fast.server.admission`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
from pathlib import Path

import zmq
from zmq.utils import z85

from descartes_fast.server.admission import Throttle
from descartes_fast.wire.curve import PUBLIC_SUFFIX, SecurityError, load_public_key

__all__ = ["SecurityError", "load_allowlist", "ZapHandler", "is_local_endpoint", "ZAP_ENDPOINT"]

log = logging.getLogger("descartes_fast.server.security")

_REPEAT_LOG_AFTER = 60.0  # seconds: a refused client retries every 100 ms; say so once a minute
#: libzmq asks this endpoint, in the socket's own context, to authenticate each connection
ZAP_ENDPOINT = "inproc://zeromq.zap.01"


def load_allowlist(directory: str | os.PathLike) -> dict[str, str]:
    """Public key (Z85 text) -> name (the file's stem) for every ``*.key`` file in *directory*.

    A file that cannot be read is skipped with a warning: it authorises nobody.
    """
    folder = Path(directory)
    if not folder.is_dir():
        raise SecurityError(f"authorized keys directory {folder} does not exist or is not a directory")
    keys: dict[str, str] = {}
    try:
        paths = sorted(folder.glob("*" + PUBLIC_SUFFIX))
    except OSError as exc:
        raise SecurityError(f"cannot list authorized keys in {folder}: {exc}") from None
    for path in paths:
        try:
            keys.setdefault(load_public_key(path).decode("ascii"), path.stem)
        except SecurityError as exc:
            log.warning("skipped %s", exc)
    return keys


def is_local_endpoint(endpoint: str) -> bool:
    """Whether only this machine can reach *endpoint* (loopback TCP, ipc, inproc)."""
    scheme, _, rest = endpoint.partition("://")
    if scheme in ("ipc", "inproc"):
        return True
    if scheme != "tcp":
        return False
    host = rest.rsplit(":", 1)[0].strip("[]")
    if host in ("localhost", "lo"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # '*', a host name or an interface other than lo


class ZapHandler:
    """Answers libzmq's authentication requests from an allowlist directory.

    Bind it (in the sockets' context) before any CURVE socket binds: without a handler,
    libzmq would let every client in.
    """

    def __init__(self, ctx: zmq.Context, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        self.keys = load_allowlist(self.directory)
        self.accepted = 0
        self.refused = 0
        self._refusals = Throttle(_REPEAT_LOG_AFTER)  # per client key
        self._sock = ctx.socket(zmq.REP)
        self._sock.linger = 0
        self._sock.bind(ZAP_ENDPOINT)

    def start(self) -> None:
        """Answer requests on the running event loop."""
        asyncio.get_running_loop().add_reader(self._sock.fileno(), self._on_readable)
        self._on_readable()

    def close(self) -> None:
        if not self._sock.closed:
            try:
                asyncio.get_running_loop().remove_reader(self._sock.fileno())
            except RuntimeError:
                pass  # no loop running: nothing was registered
            self._sock.close()

    def reload(self) -> set[str]:
        """Read the directory again; returns the names whose keys were removed.

        If the directory cannot be read, no client is authorised until it can be (fail closed).
        """
        try:
            keys = load_allowlist(self.directory)
        except SecurityError as exc:
            log.error("%s: no client is authorized until this is fixed and SIGHUP is sent again", exc)
            keys = {}
        removed = {name for key, name in self.keys.items() if key not in keys}
        added = {name for key, name in keys.items() if key not in self.keys}
        self.keys = keys
        log.info("authorized keys reloaded from %s: %d key(s); added: %s; removed: %s", self.directory,
                 len(keys), ", ".join(sorted(added)) or "none", ", ".join(sorted(removed)) or "none")
        return removed

    def _on_readable(self) -> None:
        while True:
            try:
                frames = self._sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._sock.send_multipart(self.answer(frames))

    def answer(self, frames: list[bytes]) -> list[bytes]:
        """The ZAP reply to one request (RFC 27: version, request id, code, text, user id, metadata)."""
        if len(frames) < 6 or frames[0] != b"1.0":
            return [b"1.0", frames[1] if len(frames) > 1 else b"", b"500", b"malformed ZAP request", b"", b""]
        version, request_id, domain, address, _routing_id, mechanism, *credentials = frames
        where = f"{address.decode(errors='replace')} on the {domain.decode(errors='replace') or '?'} socket"
        if mechanism != b"CURVE" or len(credentials) != 1 or len(credentials[0]) != 32:
            self.refused += 1
            log.warning("refused a client from %s: it did not use CURVE (%s)", where,
                        mechanism.decode(errors="replace"))
            return [version, request_id, b"400", b"CURVE required", b"", b""]
        key = z85.encode(credentials[0]).decode("ascii")
        name = self.keys.get(key)
        if name is None:
            self.refused += 1
            unsaid = self._refusals.due(key)
            if unsaid is not None:
                again = f" ({unsaid} more attempts since last logged)" if unsaid else ""
                log.warning("refused client key %s from %s: not in %s%s", key, where, self.directory, again)
            return [version, request_id, b"400", b"key not authorized", b"", b""]
        self.accepted += 1
        log.info("accepted client %r (key %s) from %s", name, key, where)
        return [version, request_id, b"200", b"OK", key.encode("ascii"), b""]
