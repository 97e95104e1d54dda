"""Our client and CLI against a server that answers as the Rust Descartes server does.

The Rust server answers spawn, control, list and health only and never publishes status updates
(docs/protocol.md §9.3); ``descartes-fast logs``, ``logs -f`` and ``batch`` used to exit 3 against
it, and ``follow_logs`` never ended. The server here is a stand-in (``support/rust_like.py``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid

import pytest
from support.rust_like import RustLikeServer

from descartes_fast.client import Client
from descartes_fast.wire.schema import AgentConfig


@pytest.fixture
def rust(tmp_path):
    server = RustLikeServer(f"ipc://{tmp_path}/req", f"ipc://{tmp_path}/pub", forget_after=2.0)
    yield server
    server.close()


def cli(server: RustLikeServer, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-P", "-m", "descartes_fast", *argv, "--endpoint", server.endpoint,
                           "--timeout", "5"], capture_output=True, text=True, timeout=60)


def spawn(server: RustLikeServer, task: str) -> str:
    proc = cli(server, "spawn", "sh-cli", task, "-q")
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_the_client_tells_a_rust_server_from_ours(rust) -> None:
    with Client(endpoint=rust.endpoint, enable_heartbeat=False) as client:
        assert not client.descartes_fast_server
        assert client.server_metadata == {"server_id": "rust-like", "endpoint": rust.endpoint, "max_agents": "100"}


def test_batch_falls_back_to_one_command_per_agent(rust) -> None:
    agents = [spawn(rust, "sleep 30") for _ in range(2)]
    proc = cli(rust, "batch", "get_status", *agents, "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["successful"] == 2 and [r["id"] for r in result["results"]] == agents
    assert proc.stderr.count("not a descartes_fast server") == 1  # said once
    assert "batch_control_command" not in rust.unanswered


def test_logs_fall_back_to_read_stdout(rust) -> None:
    agent = spawn(rust, "echo one; echo two; echo oops >&2")
    time.sleep(0.5)
    proc = cli(rust, "logs", agent)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["one", "two", "oops"]
    assert proc.stderr.count("does not answer output queries") == 1
    assert "output_query_request" not in rust.unanswered


def test_follow_ends_when_the_agent_ends(rust) -> None:
    with Client(endpoint=rust.endpoint, enable_heartbeat=False) as client:
        info = client.spawn_remote(AgentConfig(name="f", model_backend="sh-cli",
                                               task="for i in 1 2 3 4 5; do echo $i; sleep 0.3; done"))
        started = time.monotonic()
        lines = [chunk.data for chunk in client.follow_logs(info.id)]
        assert time.monotonic() - started < 15  # it used to wait for a status update forever
    assert b"5\n" in lines


def test_follow_of_an_agent_the_server_forgot_ends(rust) -> None:
    agent = uuid.UUID(spawn(rust, "true"))
    time.sleep(3)  # ended, then forgotten after forget_after
    proc = cli(rust, "logs", str(agent), "--follow")
    assert proc.returncode == 4 and "Agent not found" in proc.stderr
