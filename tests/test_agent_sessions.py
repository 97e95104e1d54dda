"""Agent sessions against the real server binary, with the fake claude/codex/gemini CLIs of
descartes_fast.demo.fakes (they hold real sessions and write the real event formats): turns sent
with ``say``, totals, tool calls, restarts that resume the session, backoff, both twins."""

from __future__ import annotations

import functools
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from descartes_fast.wire import codec
from descartes_fast.wire.frames import parse_pub_frame
from descartes_fast.wire.schema import (
    AgentConfig,
    AgentStatus,
    ControlCommandType,
    SpawnRequest,
    StatusUpdate,
)
from tests.support.server import Server
from tests.support.waiting import until

C = ControlCommandType


@functools.cache
def fakes() -> str:
    """The config tables that point the session backends at the fakes."""
    return subprocess.run([sys.executable, "-P", "-m", "descartes_fast.demo.fakes", "--config"], check=True,
                          capture_output=True, text=True).stdout


@pytest.fixture(params=["cython", "python"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Server]:
    srv = Server(tmp_path, request.param, config_tables=fakes() if "session" in request.node.name else "")
    try:
        yield srv
    finally:
        srv.close()


def cli(server: Server, *args: str) -> Any:
    proc = subprocess.run([sys.executable, "-P", "-m", "descartes_fast", *args, "--json", "--endpoint", server.bind,
                           "--pub-endpoint", server.pub], capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr.decode()
    return json.loads(proc.stdout)


def state(server: Server, agent: uuid.UUID) -> dict[str, Any]:
    reply = server.control(agent, C.GET_STATUS)
    assert reply.success, reply.error
    return {**reply.data, "agent_status": reply.status}


def spawn(server: Server, backend: str, task: str, env: dict[str, str] | None = None, **metadata: str) -> uuid.UUID:
    config = AgentConfig(name="sess", model_backend=backend, task=task, environment=env or {})
    reply = server.call(SpawnRequest("s", config, None, metadata or None))
    assert reply.success, reply.error
    return reply.agent_info.id


def turns_done(server: Server, agent: uuid.UUID, n: int) -> dict[str, Any]:
    until(lambda: state(server, agent)["turns"] >= n and state(server, agent)["agent_status"] == AgentStatus.IDLE,
          timeout=20, seen=lambda: state(server, agent))
    return state(server, agent)


def test_claude_session_takes_turns_from_say_and_adds_up_tokens_and_cost(server: Server) -> None:
    events = server.socket(zmq.SUB)
    events.setsockopt(zmq.SUBSCRIBE, b"")
    time.sleep(0.3)
    agent = uuid.UUID(cli(server, "spawn", "claude-session", "first turn")["id"])
    first = turns_done(server, agent, 1)
    assert first["session_id"] and first["turns"] == 1 and first["tool_calls"] >= 1
    assert cli(server, "say", str(agent), "second turn")["result"] == "sent"
    second = turns_done(server, agent, 2)
    assert cli(server, "say", str(agent), "third turn")["result"] == "sent"
    third = turns_done(server, agent, 3)
    assert third["session_id"] == first["session_id"] and third["pid"] == first["pid"]  # one process
    # per turn the fake says input 100 + 50 read from the cache, 20 out; $0.0125 (claude's total_cost_usd
    # is the running total of the process: 0.0125, 0.025, 0.0375); input_tokens counts the cached ones too
    assert (third["input_tokens"], third["output_tokens"], third["cached_input_tokens"]) == (3 * 150, 60, 150)
    assert third["cost_usd"] == pytest.approx(0.0375) and second["cost_usd"] == pytest.approx(0.025)
    facts = cli(server, "status", str(agent))
    assert facts["turns"] == 3 and facts["cost_usd"] == pytest.approx(third["cost_usd"])
    assert cli(server, "say", str(agent), "--end")["result"] == "ending"
    until(lambda: state(server, agent)["agent_status"] == AgentStatus.COMPLETED, timeout=20)
    assert state(server, agent)["exit_code"] == 0
    # the updates said what happened as it happened: tool calls, turns, with their data
    seen: list[dict[str, Any]] = []
    while events.poll(200):
        msg = server_decode(events.recv_multipart())
        if isinstance(msg, StatusUpdate) and msg.agent_id == agent and isinstance(msg.data, dict):
            seen.append(msg.data)
    kinds = [d.get("event") for d in seen]
    assert kinds.count("turn_started") == 3 and kinds.count("turn_completed") == 3 and "tool_call" in kinds
    assert "session" in kinds
    # the raw output is exactly what the CLI wrote: every line is the fake's JSON
    out = server.control(agent, C.QUERY_OUTPUT, {"max_lines": 1000}).data["stdout"]
    assert out and all(json.loads(line)["type"] for line in out)


def server_decode(frames: list[bytes]) -> Any:
    """A PUB message (topic, NUL, MessagePack)."""
    return codec.decode(parse_pub_frame(frames[-1])[1])


@pytest.mark.parametrize("backend", ["codex-session", "gemini-session"])
def test_turn_per_process_sessions_resume_their_session(server: Server, backend: str, tmp_path: Path) -> None:
    # (the fakes keep their sessions there: a resumed codex thread reports its running totals, as codex does)
    agent = spawn(server, backend, "first turn", env={"DESCARTES_FAKE_STATE_DIR": str(tmp_path / "fake-state")})
    first = turns_done(server, agent, 1)
    assert first["session_id"] and first["input_tokens"] == 100
    server.control(agent, C.CUSTOM_ACTION, {"action": "say", "params": {"text": "second turn"}})
    second = turns_done(server, agent, 2)
    assert second["session_id"] == first["session_id"] and second["pid"] != first["pid"]
    assert second["input_tokens"] == 200 and second["cost_usd"] is None
    reply = server.control(agent, C.CUSTOM_ACTION, {"action": "say", "params": {"end": True}})
    assert reply.success and reply.data["result"] == "ending"
    until(lambda: state(server, agent)["agent_status"] == AgentStatus.COMPLETED)


def test_a_session_killed_mid_turn_restarts_on_failure_and_resumes(server: Server) -> None:
    agent = spawn(server, "claude-session", "sleep 30", restart="on-failure", restart_backoff="0.2")
    until(lambda: state(server, agent)["session_id"] is not None, timeout=20)
    before = state(server, agent)
    subprocess.run(["kill", "-9", str(before["pid"])], check=True)
    until(lambda: state(server, agent)["restarts"] == 1 and state(server, agent)["pid"] != before["pid"]
          and state(server, agent)["agent_status"] == AgentStatus.THINKING, timeout=20,
          seen=lambda: state(server, agent))
    after = state(server, agent)
    assert after["session_id"] == before["session_id"]
    server.control(agent, C.STOP)
    until(lambda: state(server, agent)["agent_status"] == AgentStatus.TERMINATED)


def test_an_agent_that_keeps_failing_stops_after_the_maximum_with_backoff(server: Server) -> None:
    sub = server.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    time.sleep(0.3)
    agent = spawn(server, "sh", "echo run; exit 3", restart="on-failure", max_restarts="3", restart_backoff="0.2")
    until(lambda: state(server, agent)["agent_status"] == AgentStatus.FAILED, timeout=30)
    final = state(server, agent)
    assert final["restarts"] == 3 and final["exit_code"] == 3 and "max_restarts = 3" in final["reason"]
    starts = []
    while sub.poll(300):
        msg = server_decode(sub.recv_multipart())
        if isinstance(msg, StatusUpdate) and msg.agent_id == agent and msg.status == AgentStatus.RUNNING \
                and (msg.message or "").startswith("process "):
            starts.append(msg.timestamp / 1e9)
    assert len(starts) == 3, starts  # the three restarts
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert gaps[0] >= 0.4 and gaps[1] >= 0.8, gaps   # 0.2, 0.4, 0.8 s: doubled each time
    out = server.control(agent, C.QUERY_OUTPUT, {"max_lines": 100}).data["stdout"]
    assert out == ["run\n"] * 4    # one output history across its four processes


def test_say_is_refused_clearly(server: Server) -> None:
    plain = spawn(server, "sh", "sleep 30")
    reply = server.control(plain, C.CUSTOM_ACTION, {"action": "say", "params": {"text": "hi"}})
    assert not reply.success and "holds no session" in reply.error
    reply = server.call(SpawnRequest("s", AgentConfig(name="x", model_backend="sh", task="true"), None,
                                     {"restart": "sometimes"}))
    assert not reply.success and "restart must be one of never, on-failure, always" in reply.error


def test_metrics_count_restarts_tokens_and_cost_by_backend(tmp_path: Path) -> None:
    from tests.test_metrics import scrape, value
    server = Server(tmp_path, "cython", "--metrics", "127.0.0.1:0", log_level="INFO", config_tables=fakes())
    try:
        found: list[str] = []
        until(lambda: found.extend(re.findall(r"metrics on (http://127\.0\.0\.1:\d+/metrics)", server.log())) or found,
              seen=server.log)
        agent = spawn(server, "claude-session", "first turn")
        turns_done(server, agent, 1)
        server.control(agent, C.CUSTOM_ACTION, {"action": "say", "params": {"text": "second turn"}})
        turns_done(server, agent, 2)
        failing = spawn(server, "sh", "exit 3", restart="on-failure", max_restarts="2", restart_backoff="0.05")
        until(lambda: state(server, failing)["agent_status"] == AgentStatus.FAILED, timeout=20)
        got = scrape(found[0])
        b = "claude-session"
        assert value(got, "descartes_fast_tokens_total", backend=b, kind="input") == 300
        assert value(got, "descartes_fast_tokens_total", backend=b, kind="cached_input") == 100
        assert value(got, "descartes_fast_tokens_total", backend=b, kind="output") == 40
        assert value(got, "descartes_fast_cost_usd_total", backend=b) == pytest.approx(0.025)
        assert value(got, "descartes_fast_restarts_total", backend="sh") == 2
    finally:
        server.close()


@pytest.mark.parametrize("how", ["kill -9", "--keep-agents", "SIGTERM"])
def test_a_session_waiting_for_its_next_turn_outlives_the_server(main_implementation, tmp_path: Path,
                                                                 how: str) -> None:
    # a CLI that runs one process per turn has no process between turns: the records alone hold it
    old = Server(tmp_path, main_implementation, *(["--keep-agents"] if how == "--keep-agents" else []),
                 config_tables=fakes())
    agent = spawn(old, "codex-session", "first turn", env={"DESCARTES_FAKE_STATE_DIR": str(tmp_path / "fake")})
    first = turns_done(old, agent, 1)
    if how == "kill -9":
        old.kill9()
    else:
        assert old.close() == 0
    new = Server(tmp_path, main_implementation, config_tables=fakes())
    try:
        back = state(new, agent)
        if how == "SIGTERM":  # a plain stop ends every agent, this one too
            assert back["agent_status"] == AgentStatus.TERMINATED and back["reason"] == "server shutdown"
            return
        assert back["agent_status"] == AgentStatus.IDLE, back
        assert (back["session_id"], back["turns"], back["input_tokens"]) == (first["session_id"], 1, 100)
        assert new.control(agent, C.CUSTOM_ACTION, {"action": "say", "params": {"text": "second turn"}}).success
        second = turns_done(new, agent, 2)
        assert second["session_id"] == first["session_id"] and second["input_tokens"] == 200
        assert new.control(agent, C.CUSTOM_ACTION, {"action": "say", "params": {"end": True}}).success
        until(lambda: state(new, agent)["agent_status"] == AgentStatus.COMPLETED)
    finally:
        new.close()


def test_an_agent_whose_restart_was_due_when_the_server_was_killed_is_lost_and_says_so(main_implementation,
                                                                                       tmp_path: Path) -> None:
    old = Server(tmp_path, main_implementation)
    agent = spawn(old, "sh", "exit 3", restart="on-failure", restart_backoff="60")
    until(lambda: state(old, agent)["restarts"] == 1, seen=lambda: state(old, agent))
    old.kill9()
    new = Server(tmp_path, main_implementation)
    try:
        back = state(new, agent)
        assert back["agent_status"] == AgentStatus.FAILED and back["exit_code"] == 3
        assert back["reason"] == "lost: the server stopped before its next process started"
    finally:
        new.close()


def test_an_agent_adopted_after_a_kill_9_keeps_the_restart_policy_it_was_spawned_with(main_implementation,
                                                                                      tmp_path: Path) -> None:
    old = Server(tmp_path, main_implementation)  # (the sh backend restarts never; the spawn says otherwise)
    agent = spawn(old, "sh", "sleep 300", restart="on-failure", restart_backoff="0.2")
    pid = state(old, agent)["pid"]
    old.kill9()
    new = Server(tmp_path, main_implementation)
    try:
        assert state(new, agent)["pid"] == pid
        os.kill(pid, signal.SIGKILL)  # it fails: restarted, as its spawn asked
        until(lambda: state(new, agent)["restarts"] == 1 and state(new, agent)["agent_status"] == AgentStatus.RUNNING
              and state(new, agent)["pid"] != pid, timeout=20, seen=lambda: state(new, agent))
        new.control(agent, C.STOP)
        until(lambda: state(new, agent)["agent_status"] == AgentStatus.TERMINATED)
    finally:
        new.close()
