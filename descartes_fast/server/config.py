"""The settings of one server (``descartes-fast-server --help`` lists them; :mod:`.settings`
reads them from flags, the environment and the config file)."""

from __future__ import annotations

import os
import pwd
import socket
from dataclasses import dataclass, field

from descartes_fast import _impl
from descartes_fast.agents.backends import BackendRegistry
from descartes_fast.agents.policy import SpawnPolicy
from descartes_fast.agents.state import default_state_dir
from descartes_fast.agents.store import CHUNK_MAX
from descartes_fast.server.security import SecurityError, is_local_endpoint
from descartes_fast.wire.constants import MAX_MESSAGE_SIZE

__all__ = ["ServerConfig", "SecurityError", "MAX_EVENT_BYTES", "metrics_address"]

#: the most bytes one event on PUB takes: a log chunk of CHUNK_MAX bytes, each encoded as a
#: MessagePack integer of up to 2 bytes (the Rust form), with its topic and fields
MAX_EVENT_BYTES = 2 * CHUNK_MAX + 512


@dataclass
class ServerConfig:
    """Settings of one server (see ``descartes-fast-server --help``)."""

    bind: str = "tcp://127.0.0.1:5555"
    pub: str | None = "tcp://127.0.0.1:5556"
    server_id: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    max_agents: int = 100
    stop_grace: float = 5.0
    heartbeat_interval: float = 10.0
    state_dir: str = field(default_factory=lambda: str(default_state_dir()))
    output_limit: int = 1 << 20           # bytes of each agent's latest output in memory
    log_max_bytes: int = 128 << 20        # bytes of output on disk per agent
    state_max_bytes: int = 4 << 30        # bytes of output in the state directory
    stdin_buffer: int = 1 << 20           # bytes of an agent's stdin that may wait for it to read them
    retention: float = 3600.0
    backends: BackendRegistry = field(default_factory=BackendRegistry)
    policy: SpawnPolicy = field(default_factory=SpawnPolicy)
    curve_secret_key: str | None = None   # the server's .key_secret file
    authorized_keys: str | None = None    # directory of the clients' .key files
    insecure: bool = False                # allow non-loopback endpoints without CURVE
    rate_limit: float = 100_000.0         # requests per second per CURVE key, else per connection (0: none)
    rate_burst: float | None = None       # default: one second's worth
    request_buffer: int = 128 << 20       # bytes of requests (and deferred replies) held per client
    reply_hwm: int = 10_000               # replies queued per client before more are dropped
    pub_buffer: int = 32 << 20            # bytes of events queued per subscriber
    keep_agents: bool = False             # SIGTERM leaves running agents to the keeper
    agents_die_with_server: bool = False  # the keeper ends every agent when the server goes, even by kill -9
    containment: str = "auto"             # auto, cgroup or process-group (the keeper's, when it starts)
    metrics: str | None = None            # HOST:PORT of the Prometheus endpoint (None: none; see .metrics)
    labels: dict[str, str] = field(default_factory=dict)  # told in heartbeats (a fleet's placement)
    implementation: str = _impl.IMPLEMENTATION

    @property
    def curve(self) -> bool:
        return self.curve_secret_key is not None

    @property
    def pub_hwm(self) -> int:
        """Events queued per subscriber: as many of the largest as fit in ``pub_buffer``."""
        return max(1, self.pub_buffer // MAX_EVENT_BYTES)

    @property
    def request_hwm(self) -> int:
        """Requests libzmq queues per client: as many of the largest as fit in ``request_buffer``."""
        return max(1, self.request_buffer // MAX_MESSAGE_SIZE)

    def check_security(self) -> None:
        """Raise SecurityError for a configuration that would expose the server unprotected."""
        if (self.curve_secret_key is None) != (self.authorized_keys is None):
            raise SecurityError("CURVE needs both --curve-secret-key (this server's NAME.key_secret) and "
                                "--authorized-keys (the directory of the clients' .key files)")
        exposed = [e for e in (self.bind, self.pub) if e and not is_local_endpoint(e)]
        if exposed and not self.curve and not self.insecure:
            raise SecurityError(
                f"refusing to serve {' and '.join(exposed)} without encryption: anyone who can reach it could "
                f"run programs on this machine as user {_user()}. Give --curve-secret-key and --authorized-keys "
                f"(make keys with 'descartes-fast keygen'; README, section Security), bind 127.0.0.1, or "
                f"add --insecure on a network you trust (Rust peers need it: they cannot use CURVE)")


def metrics_address(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[IPV6]:PORT`` for an IPv6 address) as (host, port); port 0 picks a free
    one. ValueError, with what to give instead, for anything else."""
    text = value.strip()
    if text.startswith("["):
        host, close, rest = text[1:].partition("]")
        colon, port = rest[:1], rest[1:]
        ok = bool(close and host) and colon == ":"
    else:
        host, colon, port = text.rpartition(":")
        if ":" in host:
            raise ValueError("an IPv6 address goes in brackets, as in [::1]:9100")
        ok = bool(colon and host)
    if not (ok and port.isdigit() and int(port) < 65536):
        raise ValueError("give HOST:PORT, such as 127.0.0.1:9100, 0.0.0.0:9100, [::1]:9100 or "
                         "localhost:0 (port 0: any free port)")
    return host, int(port)


def _user() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())
