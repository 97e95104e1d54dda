"""How a client reaches its server: the Rust ``ZmqRunnerConfig``, plus descartes_fast's additions."""

from __future__ import annotations

from dataclasses import dataclass

from descartes_fast.wire.curve import SecurityError, load_public_key, load_secret_key

__all__ = ["ZmqRunnerConfig", "curve_keys"]


@dataclass
class ZmqRunnerConfig:
    """The Rust ``ZmqRunnerConfig`` (docs/protocol.md §8), every field in use; times in seconds."""

    endpoint: str = "tcp://localhost:5555"
    connection_timeout_secs: float = 30.0
    request_timeout_secs: float = 30.0
    auto_reconnect: bool = True
    max_reconnect_attempts: int = 3
    reconnect_delay_secs: float = 5.0
    enable_heartbeat: bool = True
    heartbeat_interval_secs: float = 30.0
    server_id: str | None = None
    #: descartes_fast addition: the PUB endpoint; by default what the server says (its health
    #: metadata, or its ``stream_logs`` answer), with a wildcard host replaced by the request endpoint's
    pub_endpoint: str | None = None
    #: descartes_fast addition, for a CURVE server: its public key file (``NAME.key``) ...
    server_key: str | None = None
    #: ... and this client's secret key file (``NAME.key_secret``, from ``descartes-fast keygen``)
    client_key: str | None = None
    #: descartes_fast addition: events kept per subscription for a consumer that falls behind
    #: (the oldest go first, counted in ``dropped``)
    subscription_queue: int = 100_000
    #: descartes_fast addition: a request the server answers "rate limited: ... retry after N ms" is
    #: sent again after N ms (up to twice that, at random), within the request's timeout; False
    #: hands the error to the caller at once
    retry_rate_limited: bool = True
    #: descartes_fast addition: how long a follow (``follow_logs``) waits for its server to answer
    #: again after it stopped answering (a crash or an upgrade, then a restart) before it raises
    #: RequestTimeoutError; it resumes where it was, with no chunk lost or repeated (0: raise at once)
    follow_resume_secs: float = 300.0


def curve_keys(config: ZmqRunnerConfig) -> tuple[bytes, bytes, bytes] | None:
    """(server public, client public, client secret) when CURVE is configured; raises SecurityError."""
    if config.server_key is None and config.client_key is None:
        return None
    if config.server_key is None or config.client_key is None:
        raise SecurityError("CURVE needs both server_key (the server's NAME.key) and client_key (this "
                            "client's NAME.key_secret)")
    return (load_public_key(config.server_key), *load_secret_key(config.client_key))
