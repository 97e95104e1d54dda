"""CurveZMQ key files and socket setup, for servers and clients alike.

Keys are pyzmq certificate files: ``NAME.key`` holds a public key, ``NAME.key_secret`` the
pair (written readable by its owner only). Who is let in is the server's business
(:mod:`descartes_fast.server.security`).
"""

from __future__ import annotations

import os
from pathlib import Path

import zmq
import zmq.auth
from zmq.utils import z85

__all__ = ["SecurityError", "PUBLIC_SUFFIX", "SECRET_SUFFIX", "keygen", "load_secret_key", "load_public_key",
           "curve_server", "curve_client"]

PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"


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
