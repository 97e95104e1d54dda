"""Which servers make a fleet: a fleet file, ``DESCARTES_FAST_SERVERS``, or a DNS name that
resolves to several addresses (a Kubernetes headless service).

The fleet file is TOML, one table per server, and an optional ``[client]`` table::

    [client]
    client_key = "keys/me.key_secret"          # this client's CURVE secret key (relative to this file)
    request_timeout_secs = 10

    [servers.worker-1]
    endpoint = "tcp://worker-1.example.internal:5555"
    pub_endpoint = "tcp://worker-1.example.internal:5556"   # optional: else the server's own answer
    server_key = "keys/worker-1.key"           # optional: CURVE
    labels = { gpu = "a100", zone = "b" }      # optional (added to those the server tells)

    [dns.workers]                              # optional: every address a name resolves to
    name = "descartes-fast.agents.svc.cluster.local"
    port = 5555                                # its pub_endpoint: the next port, unless pub_port is set
    server_key = "keys/workers.key"

``DESCARTES_FAST_SERVERS`` is a comma-separated list of endpoints (``tcp://a:5555,tcp://b:5555``),
where ``dns://NAME:PORT`` stands for every address of NAME.
"""

from __future__ import annotations

import socket
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["FleetFileError", "ServerSpec", "DnsSpec", "FleetSpec", "load", "from_env", "resolve_dns"]


class FleetFileError(ValueError):
    """A fleet file or server list that cannot be used; the text says where and what."""


@dataclass(frozen=True)
class ServerSpec:
    """One server of the fleet, as the fleet file (or the environment) names it."""

    name: str
    endpoint: str
    pub_endpoint: str | None = None
    server_key: str | None = None       # its public key file (CURVE)
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class DnsSpec:
    """A name whose every address is a server (re-resolved while the fleet runs)."""

    name: str
    port: int = 5555
    pub_port: int | None = None         # default: port + 1
    server_key: str | None = None
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class FleetSpec:
    """Servers, names to resolve, and the ``[client]`` settings (``client_key``, timeouts)."""

    servers: tuple[ServerSpec, ...] = ()
    dns: tuple[DnsSpec, ...] = ()
    client: dict[str, Any] = field(default_factory=dict)


_SERVER_KEYS = {"endpoint", "pub_endpoint", "server_key", "labels"}
_DNS_KEYS = {"name", "port", "pub_port", "server_key", "labels"}
_CLIENT_KEYS = {"client_key", "request_timeout_secs", "connection_timeout_secs"}


def load(path: str | Path) -> FleetSpec:
    """Read a fleet file; FleetFileError naming the file, table and key of what is wrong."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise FleetFileError(f"cannot read fleet file {path}: {exc}") from None
    unknown = set(data) - {"servers", "dns", "client"}
    if unknown:
        raise FleetFileError(f"{path}: unknown table(s) {', '.join(sorted(unknown))} (a fleet file has "
                             "[servers.NAME], [dns.NAME] and [client])")
    base = path.parent

    def relative(value: Any, where: str) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            raise FleetFileError(f"{where} must be a path (a string)")
        return str(base / Path(value).expanduser())

    servers = []
    for name, table in _tables(data.get("servers", {}), f"{path}: [servers]"):
        where = f"{path}: [servers.{name}]"
        _known(table, _SERVER_KEYS, where)
        endpoint = table.get("endpoint")
        if not isinstance(endpoint, str) or "://" not in endpoint:
            raise FleetFileError(f"{where}: endpoint must be a ZeroMQ endpoint such as tcp://host:5555")
        pub = table.get("pub_endpoint")
        if pub is not None and (not isinstance(pub, str) or "://" not in pub):
            raise FleetFileError(f"{where}: pub_endpoint must be a ZeroMQ endpoint such as tcp://host:5556")
        servers.append(ServerSpec(name, endpoint, pub, relative(table.get("server_key"), f"{where}: server_key"),
                                  _labels(table.get("labels", {}), where)))
    dns = []
    for name, table in _tables(data.get("dns", {}), f"{path}: [dns]"):
        where = f"{path}: [dns.{name}]"
        _known(table, _DNS_KEYS, where)
        host = table.get("name")
        if not isinstance(host, str) or not host:
            raise FleetFileError(f"{where}: name must be a DNS name")
        port, pub_port = table.get("port", 5555), table.get("pub_port")
        for key, value in (("port", port), ("pub_port", pub_port)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 65536):
                raise FleetFileError(f"{where}: {key} must be a port number (1-65535)")
        dns.append(DnsSpec(host, port, pub_port, relative(table.get("server_key"), f"{where}: server_key"),
                           _labels(table.get("labels", {}), where)))
    client = data.get("client", {})
    if not isinstance(client, dict):
        raise FleetFileError(f"{path}: [client] must be a table")
    _known(client, _CLIENT_KEYS, f"{path}: [client]")
    client = dict(client)
    if "client_key" in client:
        client["client_key"] = relative(client["client_key"], f"{path}: [client] client_key")
    names = [s.name for s in servers]
    if len(set(names)) != len(names):  # (TOML refuses a table twice; kept for tables made by hand)
        raise FleetFileError(f"{path}: a server is named twice")
    if not servers and not dns:
        raise FleetFileError(f"{path}: no [servers.NAME] or [dns.NAME] table: a fleet needs at least one server")
    return FleetSpec(tuple(servers), tuple(dns), client)


def from_env(value: str) -> FleetSpec:
    """The servers of ``DESCARTES_FAST_SERVERS``: endpoints, and ``dns://NAME:PORT`` entries."""
    servers, dns = [], []
    for item in filter(None, (part.strip() for part in value.split(","))):
        if item.startswith("dns://"):
            host, _, port = item[len("dns://"):].rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise FleetFileError(f"DESCARTES_FAST_SERVERS: {item!r}: write dns://NAME:PORT")
            dns.append(DnsSpec(host, int(port)))
        elif "://" in item:
            servers.append(ServerSpec(item.split("://", 1)[1], item))
        else:
            raise FleetFileError(f"DESCARTES_FAST_SERVERS: {item!r} is not an endpoint (tcp://HOST:PORT) "
                                 "or dns://NAME:PORT")
    if not servers and not dns:
        raise FleetFileError("DESCARTES_FAST_SERVERS names no server")
    return FleetSpec(tuple(servers), tuple(dns))


def resolve_dns(spec: DnsSpec) -> list[ServerSpec]:
    """A server for every address *spec*'s name resolves to now (sorted; none if it does not resolve)."""
    try:
        infos = socket.getaddrinfo(spec.name, spec.port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return []
    addresses = sorted({str(info[4][0]) for info in infos})
    pub_port = spec.pub_port or spec.port + 1
    out = []
    for address in addresses:
        host = f"[{address}]" if ":" in address else address
        out.append(ServerSpec(f"{host}:{spec.port}", f"tcp://{host}:{spec.port}", f"tcp://{host}:{pub_port}",
                              spec.server_key, dict(spec.labels)))
    return out


def _tables(value: Any, where: str) -> list[tuple[str, dict[str, Any]]]:
    if not isinstance(value, dict) or not all(isinstance(t, dict) for t in value.values()):
        raise FleetFileError(f"{where} must hold tables ([servers.NAME], [dns.NAME])")
    return list(value.items())


def _known(table: dict[str, Any], keys: set[str], where: str) -> None:
    unknown = set(table) - keys
    if unknown:
        raise FleetFileError(f"{where}: unknown key(s) {', '.join(sorted(unknown))} (known: {', '.join(sorted(keys))})")


def _labels(value: Any, where: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise FleetFileError(f"{where}: labels must be a table of strings, such as {{ gpu = \"a100\" }}")
    return dict(value)
