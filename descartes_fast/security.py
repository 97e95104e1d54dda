"""CurveZMQ keys, the ZAP handler that checks clients against an allowlist, and the loopback rule.

Keys are pyzmq certificate files: ``NAME.key`` holds a public key, ``NAME.key_secret`` the
pair. A server authorises the clients whose ``.key`` files are in its ``--authorized-keys``
directory; the ZAP handler (ZeroMQ's authentication hook, RFC 27) checks each new
connection against it, and the user id it hands back is the client's public key, so every
request can be checked again after the allowlist is reloaded.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
from pathlib import Path

import zmq
import zmq.auth
from zmq.utils import z85

from descartes_fast.admission import Throttle

__all__ = ["SecurityError", "keygen", "load_secret_key", "load_public_key", "load_allowlist",
           "ZapHandler", "is_local_endpoint", "curve_server", "curve_client"]

log = logging.getLogger("descartes_fast.security")

_REPEAT_LOG_AFTER = 60.0  # seconds: a refused client retries every 100 ms; say so once a minute

PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"
#: libzmq asks this endpoint, in the socket's own context, to authenticate each connection
ZAP_ENDPOINT = "inproc://zeromq.zap.01"


class SecurityError(ValueError):
    """A key file or key directory that cannot be used; the text names it."""


def keygen(name: str, directory: str | os.PathLike = ".", force: bool = False) -> tuple[Path, Path]:
    """Write ``NAME.key`` (public) and ``NAME.key_secret`` (mode 0600) in *directory*."""
    if not name or "/" in name or name.startswith("."):
        raise SecurityError(f"key name {name!r}: use a plain file name such as 'worker-1'")
    folder = Path(directory)
    public, secret = folder / (name + PUBLIC_SUFFIX), folder / (name + SECRET_SUFFIX)
    existing = [str(p) for p in (public, secret) if p.exists()]
    if existing and not force:
        raise SecurityError(f"{' and '.join(existing)} already exist(s); use --force to replace")
    old_umask = os.umask(0o077)  # the secret file is never readable by others, not even briefly
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for path in (public, secret):
            path.unlink(missing_ok=True)
        zmq.auth.create_certificates(folder, name)
    except OSError as exc:
        raise SecurityError(f"cannot write keys in {folder}: {exc}") from None
    finally:
        os.umask(old_umask)
    public.chmod(0o644)
    return public, secret


def _read(path: str | os.PathLike) -> tuple[bytes, bytes | None]:
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise SecurityError(f"cannot read key file {path}: {exc}") from None
    for kind, key in (("public", public), ("secret", secret)):
        if key is not None and (len(key) != 40 or len(_z85_decode(key)) != 32):
            raise SecurityError(f"key file {path}: the {kind} key is not a 40-character Z85 CURVE key")
    return public, secret


def _z85_decode(key: bytes) -> bytes:
    try:
        return z85.decode(key)
    except (ValueError, KeyError, IndexError):
        return b""


def load_secret_key(path: str | os.PathLike) -> tuple[bytes, bytes]:
    """(public, secret) Z85 keys from a ``.key_secret`` file."""
    public, secret = _read(path)
    if secret is None:
        raise SecurityError(f"key file {path} holds no secret key: give the NAME{SECRET_SUFFIX} file "
                            f"(NAME{PUBLIC_SUFFIX} is the public half)")
    return public, secret


def load_public_key(path: str | os.PathLike) -> bytes:
    """The Z85 public key of a ``.key`` (or ``.key_secret``) file."""
    return _read(path)[0]


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


def curve_server(sock: zmq.Socket, public: bytes, secret: bytes, domain: str) -> None:
    """Make *sock* a CURVE server whose connections the ZAP handler checks (tagged *domain*)."""
    sock.curve_server = True
    sock.curve_publickey = public
    sock.curve_secretkey = secret
    sock.zap_domain = domain.encode()


def curve_client(sock: zmq.Socket, server_public: bytes, public: bytes, secret: bytes) -> None:
    """Make *sock* a CURVE client of the server with *server_public*."""
    sock.curve_serverkey = server_public
    sock.curve_publickey = public
    sock.curve_secretkey = secret


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
        asyncio.get_running_loop().add_reader(self._sock.getsockopt(zmq.FD), self._on_readable)
        self._on_readable()

    def close(self) -> None:
        if not self._sock.closed:
            try:
                asyncio.get_running_loop().remove_reader(self._sock.getsockopt(zmq.FD))
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
