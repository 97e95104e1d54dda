"""A real ``descartes-fast-server`` process for tests, and raw pyzmq sockets to talk to it.

The server runs the installed package (``python -P``), with the twins the test asks for: for
``"cython"`` the compiled twins are required (``DESCARTES_FAST_REQUIRE_EXTENSIONS=1``), and the
harness checks the server's health metadata says so; for ``"python"`` the pure twins
(``DESCARTES_FAST_NO_EXTENSIONS=1``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import zmq

from descartes_fast.wire import codec
from descartes_fast.wire.schema import (
    AgentConfig,
    AgentStatus,
    CommandResponse,
    ControlCommand,
    ControlCommandType,
    HealthCheckRequest,
    SpawnRequest,
)

__all__ = ["CONFIG", "Server", "server_env"]

C = ControlCommandType
CONFIG = textwrap.dedent("""
    [server]
    heartbeat_interval = 0.5
    stop_grace = 0.5
    max_agents = 40

    [backends.sh]
    command = ["sh", "-c", "{task}"]

    [backends.cat]
    command = ["cat"]
    cooperative_pause = true

    [backends.py]
    command = ["PYTHON", "-c", "{task}"]
    stdin = "null"

    [policy]
    allow_extra_args = true
""").replace("PYTHON", sys.executable)


def server_env(implementation: str) -> dict[str, str]:
    """The environment of a server process on *implementation*'s twins ("cython" or "python")."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DESCARTES_FAST_")}
    env["DESCARTES_FAST_REQUIRE_EXTENSIONS" if implementation == "cython" else "DESCARTES_FAST_NO_EXTENSIONS"] = "1"
    return env


class Server:
    """A descartes-fast-server process on ipc:// endpoints, and sockets to talk to it."""

    def __init__(self, tmp_path: Path, implementation: str, *flags: str, policy: str = "allow_extra_args = true",
                 log_level: str = "WARNING", curve: tuple[bytes, bytes, bytes] | None = None,
                 config_tables: str = "", bind: str | None = None, pub: str | None = None) -> None:
        """*curve*: (server public, client public, client secret) for every socket made here;
        *config_tables*: TOML tables added to the config file; *bind*, *pub*: endpoints (default:
        ipc:// in *tmp_path*)."""
        self.curve = curve
        self.implementation = implementation
        config = tmp_path / "server.toml"
        config.write_text(CONFIG.replace("allow_extra_args = true", policy) + "\n" + config_tables)
        self.bind = bind or f"ipc://{tmp_path}/req"
        self.state_dir = tmp_path / "state"
        self.log_path = tmp_path / "server.log"
        self.pub = pub or f"ipc://{tmp_path}/pub"
        self.proc = subprocess.Popen(
            [sys.executable, "-P", "-m", "descartes_fast", "serve", "--config", str(config), "--bind", self.bind,
             "--pub", self.pub, "--server-id", "test-server", "--log-level", log_level,
             "--state-dir", str(self.state_dir), *flags],
            env=server_env(implementation), stdout=subprocess.DEVNULL, stderr=self.log_path.open("w"))
        self.ctx = zmq.Context()
        self.req = self.socket(zmq.REQ)
        health = self.call(HealthCheckRequest("ready"))
        assert health.healthy
        assert health.metadata["implementation"] == implementation, health.metadata

    def socket(self, kind: int, curve: tuple[bytes, bytes, bytes] | bool | None = True, **opts: Any) -> zmq.Socket:
        """A socket to the server; *curve*: this Server's keys (True), other keys, or None for no CURVE."""
        sock = self.ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, 15000)
        keys = self.curve if curve is True else curve
        if keys:
            sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = keys
        for name, value in opts.items():
            sock.setsockopt(getattr(zmq, name), value)
        sock.connect(self.pub if kind == zmq.SUB else self.bind)
        return sock

    def call(self, message: Any, raw: bytes | None = None) -> Any:
        self.req.send(raw if raw is not None else codec.encode(message))
        return codec.decode(self.req.recv())

    def spawn(self, backend: str, task: str = "", **cfg: Any) -> uuid.UUID:
        reply = self.call(SpawnRequest("s", AgentConfig(name="t", model_backend=backend, task=task, **cfg)))
        assert reply.success, reply.error
        return reply.agent_info.id

    def control(self, agent_id: uuid.UUID, kind: ControlCommandType, payload: Any = None) -> CommandResponse:
        return self.call(ControlCommand("c", agent_id, kind, payload))

    def wait_status(self, agent_id: uuid.UUID, statuses: Any, timeout: float = 15.0) -> AgentStatus:
        deadline = time.monotonic() + timeout
        while True:
            status = self.control(agent_id, C.GET_STATUS).status
            if status in statuses:
                return status
            assert time.monotonic() < deadline, f"agent still {status}"
            time.sleep(0.02)

    def log(self) -> str:
        return self.log_path.read_text()

    def kill9(self) -> None:
        """``kill -9`` of the server (its agents stay with their keeper, unless told otherwise)."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.ctx.destroy(linger=0)

    def close(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(30)
        self.ctx.destroy(linger=0)
        return code
