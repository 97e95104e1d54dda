"""Server settings: defaults < TOML config file < DESCARTES_FAST_* variables < command-line flags.

The config file's ``[server]`` table takes the same names as the flags (with ``_``), its
``[backends.NAME]`` tables define backends (see :mod:`descartes_fast.agents.backends`) and its
``[policy]`` table says what a spawn request may do (see :mod:`descartes_fast.agents.policy`)::

    [server]
    bind = "tcp://0.0.0.0:5555"
    pub = "tcp://0.0.0.0:5556"        # "none" for no event socket
    server_id = "worker-7"
    max_agents = 100
    metrics = "127.0.0.1:9100"        # Prometheus metrics at http://127.0.0.1:9100/metrics
    labels = { gpu = "a100", zone = "b" }   # told in heartbeats: a fleet places spawns by them
    curve_secret_key = "keys/worker-7.key_secret"   # relative to this file
    authorized_keys = "keys/clients"

    [policy]
    backends = ["claude", "opencode"]
    memory_mb = 4096
"""

from __future__ import annotations

import argparse
import os
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from descartes_fast.agents.backends import BackendError, BackendRegistry
from descartes_fast.agents.policy import PolicyError, SpawnPolicy
from descartes_fast.agents.state import default_state_dir
from descartes_fast.server.config import MAX_EVENT_BYTES, ServerConfig, metrics_address
from descartes_fast.wire.constants import MAX_MESSAGE_SIZE

__all__ = ["SETTINGS", "add_arguments", "resolve", "SettingsError"]


class SettingsError(ValueError):
    """A setting with a value that cannot be used; the text names where it came from."""


@dataclass(frozen=True)
class Setting:
    name: str
    kind: Callable[[str], Any]
    default: Any
    help: str
    flag: bool = False  # a switch: --name sets it, no value
    metavar: str | None = None

    @property
    def env(self) -> str:
        return "DESCARTES_FAST_" + self.name.upper()


_TRANSPORTS = ("tcp", "ipc", "inproc", "ws", "wss", "tipc", "vmci", "pgm", "epgm")


def _endpoint(value: str) -> str:
    """A ZeroMQ endpoint, TRANSPORT://ADDRESS, with a port for tcp (checked before anything binds, so
    a typo is reported as one)."""
    scheme, sep, address = value.partition("://")
    ok = bool(sep) and scheme in _TRANSPORTS and bool(address)
    if ok and scheme == "tcp":
        host, colon, port = address.rpartition(":")
        ok = bool(colon and host) and (port == "*" or (port.isdigit() and int(port) < 65536))
    if not ok:
        raise ValueError(f"not an endpoint: give TRANSPORT://ADDRESS, such as tcp://127.0.0.1:5555, "
                         f"tcp://0.0.0.0:5555 or ipc:///run/descartes-fast.sock (transports: "
                         f"{', '.join(_TRANSPORTS)})")
    return value


_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


def _labels(value: str) -> dict[str, str]:
    """KEY=VALUE[,KEY=VALUE...]: this server's labels (keys and values: letters, digits, ``_.-``)."""
    labels: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        key, eq, val = item.partition("=")
        if not eq or not _LABEL.fullmatch(key.strip()) or not _LABEL.fullmatch(val.strip()):
            raise ValueError(f"{item!r} is not KEY=VALUE (letters, digits and _.- only, at most 63 each)")
        labels[key.strip()] = val.strip()
    return labels


def _pub(value: str) -> str | None:
    return None if value.strip().lower() in ("", "none", "off") else _endpoint(value)


def _metrics(value: str) -> str | None:
    """HOST:PORT for the metrics endpoint (checked here, bound at start-up), or none."""
    if value.strip().lower() in ("", "none", "off"):
        return None
    metrics_address(value)
    return value.strip()


def _positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(value: str) -> Any:
        out = kind(value)
        if out <= 0:
            raise ValueError("must be greater than 0")
        return out
    parse.__name__ = kind.__name__
    return parse


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("use true or false")


def _not_negative(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(value: str) -> Any:
        out = kind(value)
        if out < 0:
            raise ValueError("must be 0 or more")
        return out
    parse.__name__ = kind.__name__
    return parse


def _path(value: str) -> str:
    return str(Path(value).expanduser())


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_UNITS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}


def size(value: str) -> int:
    """Bytes: ``1048576``, ``64k``, ``64KiB``, ``128MiB``, ``4GiB`` (binary: K = 1024), or ``5MB``
    (decimal: MB = 1000000)."""
    match = _SIZE.match(value)
    if not match:
        raise ValueError("use a number of bytes, like 1048576, 64KiB, 128MiB or 4GiB")
    number, unit, suffix = match.groups()
    base = 1000 if suffix.lower() == "b" and unit else 1024
    out = int(float(number) * base ** _UNITS[unit.lower()])
    if out <= 0:
        raise ValueError("must be greater than 0")
    return out


def _at_least(minimum: int) -> Callable[[str], int]:
    """Bytes (as :func:`size`), no fewer than *minimum*."""
    def parse(value: str) -> int:
        out = size(value)
        if out < minimum:
            raise ValueError(f"must be at least {minimum:,} bytes, the largest message it must hold")
        return out
    parse.__name__ = "size"
    return parse


def _in_units(n: int) -> str:
    for unit, power in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << power and n % (1 << power) == 0:
            return f"{n >> power}{unit}"
    return str(n)


SETTINGS = (
    Setting("bind", _endpoint, "tcp://127.0.0.1:5555", "ROUTER endpoint for requests"),
    Setting("pub", _pub, "tcp://127.0.0.1:5556", "PUB endpoint for log chunks and status updates ('none' for none)"),
    Setting("server_id", str, None, "name reported in health checks and spawn replies"),
    Setting("max_agents", _positive(int), 100, "agents that may be active at once"),
    Setting("stop_grace", _positive(float), 5.0, "seconds from SIGTERM to SIGKILL when stopping an agent"),
    Setting("heartbeat_interval", _positive(float), 10.0, "seconds between server heartbeats on PUB"),
    Setting("state_dir", _path, str(default_state_dir()), "where agents' output and records are kept (created "
            "with mode 0700; one server per directory)", metavar="DIR"),
    Setting("output_limit", size, 1 << 20, "bytes of each agent's latest output kept in memory; the rest is "
            "read from the state directory", metavar="BYTES"),
    Setting("log_max_bytes", size, 128 << 20, "bytes of output kept on disk per agent (its oldest segments are "
            "dropped, and counted, past it)", metavar="BYTES"),
    Setting("state_max_bytes", size, 4 << 30, "bytes of output kept in the state directory in all (the oldest "
            "finished agents go first)", metavar="BYTES"),
    Setting("stdin_buffer", size, 1 << 20, "bytes written to an agent's stdin that may wait for it to read "
            "them; a write that would leave more waiting is refused whole", metavar="BYTES"),
    Setting("retention", _positive(float), 3600.0, "seconds a finished agent stays listed (after that it is "
            "still queryable by id while its output is stored)"),
    Setting("curve_secret_key", _path, None, "this server's secret key file (NAME.key_secret from "
            "'descartes-fast keygen'); turns on CURVE encryption and authentication", metavar="FILE"),
    Setting("authorized_keys", _path, None, "directory of the public key files (*.key) of the clients "
            "allowed in; re-read on SIGHUP", metavar="DIR"),
    Setting("insecure", _bool, False, "allow non-loopback endpoints without CURVE (trusted networks and "
            "Rust peers only)", flag=True),
    Setting("rate_limit", _not_negative(float), 100_000.0, "requests per second per CURVE key, else per "
            "connection (0: no limit); a request over it is answered 'rate limited: ... retry after N ms', "
            "which descartes_fast clients wait out and retry"),
    Setting("rate_burst", _positive(float), None, "requests a quiet client may send at once"),
    Setting("request_buffer", _at_least(MAX_MESSAGE_SIZE), 128 << 20, "bytes of requests held per client: "
            "libzmq queues as many of the largest (10 MiB) as fit, then stops reading from that client until "
            "the server catches up (nothing is lost); requests answered later (spawns, output reads and "
            "queries) hold their request and reply until answered, and one over it is answered 'busy: ... "
            "retry after N ms'", metavar="BYTES"),
    Setting("reply_hwm", _positive(int), 10_000, "replies queued per client that does not read them; past "
            "it, replies to it are dropped and counted (replies_dropped)"),
    Setting("pub_buffer", _at_least(MAX_EVENT_BYTES), 32 << 20, "bytes of events queued per subscriber; "
            "past it, that subscriber misses events until it catches up, counted in pub_overflows "
            "(descartes_fast followers refill what they missed from the output store)", metavar="BYTES"),
    Setting("keep_agents", _bool, False, "on SIGTERM or SIGINT, leave running agents to the keeper instead of "
            "stopping them, for the next server on this --state-dir to adopt (a planned upgrade)", flag=True),
    Setting("agents_die_with_server", _bool, False, "no agent outlives this server: when it exits, even by "
            "kill -9, the keeper ends every agent (a crash is not survived)", flag=True),
    Setting("containment", str.lower, "auto", "how an agent's processes are held together: 'cgroup' (its own "
            "cgroup v2: stop and kill reach processes that left its session), 'process-group', or 'auto' "
            "(cgroup where the unified hierarchy is writable); set when the keeper starts"),
    Setting("log_level", str.upper, "INFO", "DEBUG, INFO, WARNING or ERROR"),
    Setting("log_format", str.lower, "text", "the server's own log on stderr: text (a line per event) or json (an "
            "object per line: time, level, logger, message, and the exception if any)"),
    Setting("metrics", _metrics, None, "serve Prometheus metrics over HTTP at http://HOST:PORT/metrics "
            "(requests, latency, agents by status, spawns, refusals, drops; port 0: a free one, logged; IPv6 as "
            "[::1]:9100; 'none' for none). Plain HTTP without authentication: bind loopback or a trusted "
            "network", metavar="HOST:PORT"),
    Setting("labels", _labels, {}, "this server's labels, KEY=VALUE[,KEY=VALUE...] (in the config file: a table, "
            "labels = { gpu = \"a100\" }); told in its heartbeats and health, where a fleet places spawns that ask "
            "for them", metavar="LABELS"),
    Setting("loop", str.lower, "uvloop", "event loop: uvloop or asyncio"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The server's flags (every one also settable in the config file and the environment)."""
    parser.add_argument("--config", metavar="FILE",
                        help="TOML file with [server] settings, a [policy] table and [backends.NAME] "
                             "tables (env: DESCARTES_FAST_CONFIG)")
    for s in SETTINGS:
        option = "--" + s.name.replace("_", "-")
        if s.flag:
            parser.add_argument(option, dest=s.name, action="store_const", const="true",
                                help=f"{s.help} (env: {s.env}=1)")
            continue
        shown = {"server_id": "host-pid", "rate_burst": "the rate limit", "labels": "none"}.get(s.name, s.default)
        shown = "none" if shown is None else _in_units(shown) if s.metavar == "BYTES" else shown
        parser.add_argument(option, dest=s.name, metavar=s.metavar or s.name.split("_")[-1].upper(),
                            help=f"{s.help} (default: {shown}; env: {s.env})")


def resolve(args: argparse.Namespace) -> tuple[ServerConfig, str, str, str]:
    """The server config, log level, loop name and log format from every source, highest precedence last."""
    path = args.config or os.environ.get("DESCARTES_FAST_CONFIG")
    table: dict[str, Any] = {}
    backends = BackendRegistry()
    policy = SpawnPolicy()
    if path:
        try:
            data = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise SettingsError(f"cannot read config file {path}: {exc}") from None
        table = dict(data.get("server", {}))
        unknown = set(table) - {s.name for s in SETTINGS}
        if unknown:
            raise SettingsError(f"{path}: unknown [server] setting(s): {', '.join(sorted(unknown))}")
        unknown = set(data) - {"server", "backends", "policy", "client"}
        if unknown:
            raise SettingsError(f"{path}: unknown table(s): {', '.join(sorted(unknown))}")
        if isinstance(table.get("labels"), dict):  # (a TOML table: the flag's form)
            table["labels"] = ",".join(f"{k}={v}" for k, v in table["labels"].items())
        for key in ("curve_secret_key", "authorized_keys"):  # relative to the config file
            if isinstance(table.get(key), str):
                table[key] = str(Path(path).parent / Path(table[key]).expanduser())
        try:
            backends = BackendRegistry.from_tables(data.get("backends", {}), source=path)
            policy = SpawnPolicy.from_table(data.get("policy", {}), source=path)
        except (BackendError, PolicyError) as exc:
            raise SettingsError(str(exc)) from None
    values: dict[str, Any] = {}
    for s in SETTINGS:
        for source, raw in ((f"{path} [server] {s.name}", table.get(s.name)), (s.env, os.environ.get(s.env)),
                            ("--" + s.name.replace("_", "-"), getattr(args, s.name, None))):
            if raw is not None:
                try:
                    values[s.name] = s.kind(str(raw))
                except ValueError as exc:
                    raise SettingsError(f"{source}={raw!r}: {exc}") from None
        values.setdefault(s.name, s.default)
    if values["log_level"] not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise SettingsError(f"log level {values['log_level']!r}: use DEBUG, INFO, WARNING or ERROR")
    if values["containment"] not in ("auto", "cgroup", "process-group"):
        raise SettingsError(f"containment {values['containment']!r}: use auto, cgroup or process-group")
    if values["keep_agents"] and values["agents_die_with_server"]:
        raise SettingsError("--keep-agents and --agents-die-with-server contradict each other: choose one")
    if values["log_format"] not in ("text", "json"):
        raise SettingsError(f"log format {values['log_format']!r}: use text or json")
    if values["loop"] not in ("uvloop", "asyncio"):
        raise SettingsError(f"loop {values['loop']!r}: use uvloop or asyncio")
    config = ServerConfig(bind=values["bind"], pub=values["pub"], max_agents=values["max_agents"],
                          stop_grace=values["stop_grace"], heartbeat_interval=values["heartbeat_interval"],
                          output_limit=values["output_limit"], retention=values["retention"], backends=backends,
                          state_dir=values["state_dir"], log_max_bytes=values["log_max_bytes"],
                          state_max_bytes=values["state_max_bytes"], stdin_buffer=values["stdin_buffer"],
                          policy=policy, curve_secret_key=values["curve_secret_key"],
                          authorized_keys=values["authorized_keys"], insecure=values["insecure"],
                          rate_limit=values["rate_limit"], rate_burst=values["rate_burst"],
                          request_buffer=values["request_buffer"], reply_hwm=values["reply_hwm"],
                          pub_buffer=values["pub_buffer"], keep_agents=values["keep_agents"],
                          agents_die_with_server=values["agents_die_with_server"],
                          containment=values["containment"], metrics=values["metrics"], labels=values["labels"])
    if values["server_id"]:
        config.server_id = values["server_id"]
    return config, values["log_level"], values["loop"], values["log_format"]
