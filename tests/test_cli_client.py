"""The descartes-fast client commands end to end, against the real server binary."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid

import pytest
from support.server import Server
from support.waiting import until


@pytest.fixture(scope="module")
def server(tmp_path_factory, main_implementation):
    srv = Server(tmp_path_factory.mktemp("cli"), main_implementation)
    yield srv
    srv.close()


def cli(server: Server | None, *argv: str, stdin: bytes | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess:
    where = ["--endpoint", server.bind, "--pub-endpoint", server.pub] if server else []
    return subprocess.run([sys.executable, "-P", "-m", "descartes_fast", *argv, *where], input=stdin,
                          capture_output=True, timeout=timeout)


def js(server, *argv: str, **kw):
    proc = cli(server, *argv, "--json", **kw)
    assert proc.returncode == 0, proc.stderr.decode()
    return [json.loads(line) for line in proc.stdout.decode().splitlines() if line.strip()]


def test_agent_lifecycle_from_the_shell(server) -> None:
    assert js(server, "health")[0]["healthy"] is True
    cat = js(server, "spawn", "cat", "", "--name", "echoer")[0]
    agent = cat["id"]
    assert cat["status"] == "running" and cat["name"] == "echoer"
    assert js(server, "status", agent)[0]["status"] == "running"
    assert js(server, "send", agent, "hello", "--newline")[0]["bytes_written"] == 6
    assert js(server, "send", agent, stdin=b"from stdin\n")[0]["bytes_written"] == 11
    assert js(server, "pause", agent)[0]["mode"] == "cooperative"
    assert js(server, "resume", agent)[0]["done"] == "resumed"
    time.sleep(0.3)
    lines = [row["line"] for row in js(server, "logs", agent)]
    assert lines[:2] == ["hello", "from stdin"]
    listed = js(server, "list", "--status", "running")[0]
    assert agent in [a["id"] for a in listed]
    table = cli(server, "list").stdout.decode()
    assert table.splitlines()[0].split() == ["ID", "NAME", "STATUS", "EXIT", "SESSION", "BACKEND", "TASK"]
    assert agent in table
    other = js(server, "spawn", "sh", "sleep 30")[0]["id"]
    batch = js(server, "batch", "get_status", agent, other)[0]
    assert batch["successful"] == 2 and batch["success"]
    assert js(server, "stop", other)[0]["done"] == "stopped"
    assert js(server, "kill", agent)[0]["done"] == "killed"
    assert js(server, "status", agent)[0]["status"] == "terminated"


def test_status_tells_how_an_agent_ended(server) -> None:
    agent = js(server, "spawn", "sh", "exit 3")[0]["id"]
    until(lambda: js(server, "status", agent)[0]["status"] == "failed")
    facts = js(server, "status", agent)[0]
    assert facts["exit_code"] == 3 and facts["signal"] is None and facts["pid"] > 0
    assert facts["ended_at"] > 0 and facts["reason"] == "exited with status 3"
    assert facts["cpu_secs"] >= 0 and facts["max_rss_kib"] > 0 and facts["processes_left"] == 0
    line = cli(server, "status", agent).stdout.decode()
    assert line.startswith(f"failed  exit 3  pid {facts['pid']}  ended ") and line.rstrip().endswith(
        "(exited with status 3)"), line
    killed = js(server, "spawn", "sh", "sleep 30")[0]["id"]
    assert js(server, "kill", killed, "--wait")[0]["done"] == "killed"
    assert js(server, "status", killed)[0]["signal"] == 9
    assert "signal 9 (SIGKILL)" in cli(server, "status", killed).stdout.decode()
    listed = {a["id"]: a for a in js(server, "list")[0]}
    assert listed[agent]["exit_code"] == 3 and listed[agent]["reason"] == "exited with status 3"
    assert listed[killed]["signal"] == 9 and listed[agent]["ended_at"] == facts["ended_at"]
    row = next(r for r in cli(server, "list").stdout.decode().splitlines() if r.startswith(agent))
    assert row.split()[1:3] == ["failed", "3"], row  # (no name)
    running = js(server, "status", js(server, "spawn", "sh", "sleep 30")[0]["id"])[0]
    assert running["status"] == "running" and running["exit_code"] is None and running["ended_at"] is None


def test_logs_follow_and_events(server) -> None:
    events = subprocess.Popen([sys.executable, "-P", "-m", "descartes_fast", "events", "--count", "3", "--json",
                               "--endpoint", server.bind, "--pub-endpoint", server.pub], stdout=subprocess.PIPE)
    time.sleep(1.0)
    agent = js(server, "spawn", "demo", "follow me", "--env", "AGENT_EXTRA_ARGS=--steps 4 --interval 0.2")[0]["id"]
    follow = cli(server, "logs", agent, "--follow", timeout=60)
    assert follow.returncode == 0
    text = follow.stdout.decode()
    assert '"type": "start"' in text and '"type": "done"' in text
    out, _ = events.communicate(timeout=30)
    updates = [json.loads(line) for line in out.decode().splitlines()]
    assert len(updates) == 3 and all({"agent_id", "type", "status"} <= set(u) for u in updates)


def test_errors_have_one_line_and_an_exit_code(server) -> None:
    missing = str(uuid.uuid4())
    proc = cli(server, "status", missing)
    assert proc.returncode == 4 and proc.stderr.decode().strip() == f"descartes-fast: error: Agent not found: {missing}"
    proc = cli(server, "spawn", "anthropic", "x")
    assert proc.returncode == 1 and "Unsupported model backend" in proc.stderr.decode()
    proc = cli(server, "status", "not-a-uuid")  # (a name, or an id prefix: no agent has it)
    assert proc.returncode == 4 and "Agent not found: no agent 'not-a-uuid' (by id, id prefix or name)" in \
        proc.stderr.decode()
    proc = cli(server, "spawn", "sh", "x", "--env", "NOEQUALS")
    assert proc.returncode == 2 and "KEY=VALUE" in proc.stderr.decode()
    proc = cli(None, "health", "--endpoint", "tcp://127.0.0.1:9", "--timeout", "0.5")
    assert proc.returncode == 3 and "did not answer" in proc.stderr.decode()
    assert len(proc.stderr.decode().strip().splitlines()) == 1


def test_spawn_with_a_time_limit(server) -> None:
    agent = js(server, "spawn", "sh", "sleep 30", "--time-limit", "0.5")[0]["id"]
    deadline = time.monotonic() + 15
    while (status := js(server, "status", agent)[0]["status"]) == "running":
        assert time.monotonic() < deadline, "the agent outlived its time limit"
        time.sleep(0.2)
    assert status == "failed"


def _cli_only_endpoint(server: Server, *argv: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-P", "-m", "descartes_fast", *argv, "--endpoint", server.bind],
                          capture_output=True, **kw)


def test_only_the_request_endpoint_is_needed(server) -> None:
    # The server is on ipc:// endpoints, not the default ports: without --pub-endpoint the CLI used to
    # assume tcp://127.0.0.1:5556 and wait there forever. It must find the event endpoint itself.
    agent = js(server, "spawn", "sh", "for i in 1 2 3; do echo line $i; sleep 0.2; done")[0]["id"]
    follow = _cli_only_endpoint(server, "logs", agent, "--follow", timeout=30)
    assert follow.returncode == 0, follow.stderr.decode()
    assert "line 3" in follow.stdout.decode()
    events = _cli_only_endpoint(server, "events", "--count", "1", timeout=30)  # a heartbeat comes every 0.5 s
    assert events.returncode == 0 and "heartbeat" in events.stdout.decode()


def test_output_cut_short_by_its_reader_ends_quietly(server) -> None:
    # 7 MB: far more than a pipe holds, so the writer surely meets the closed pipe
    agent = js(server, "spawn", "sh", "seq 1 1000000")[0]["id"]
    server.wait_status(uuid.UUID(agent), ("completed",))
    script = (f'set -o pipefail; "{sys.executable}" -P -m descartes_fast logs {agent} --endpoint "{server.bind}" '
              '| head -n 1; echo "status=${PIPESTATUS[0]}"')
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.stdout.splitlines() == ["1", "status=141"], proc.stdout
    assert proc.stderr == ""  # no BrokenPipeError traceback


def test_ctrl_c_exits_130(server) -> None:
    events = subprocess.Popen([sys.executable, "-P", "-m", "descartes_fast", "events", "--endpoint", server.bind],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert events.stdout is not None and events.stdout.readline()  # it is running: a heartbeat came
    events.send_signal(signal.SIGINT)
    _, err = events.communicate(timeout=30)
    assert events.returncode == 130 and b"Traceback" not in err


def test_spawn_quiet_and_repeated_commands(server) -> None:
    quiet = cli(server, "spawn", "cat", "", "-q")
    agent = quiet.stdout.decode().strip()
    assert quiet.returncode == 0 and str(uuid.UUID(agent)) == agent  # the id alone, for $(...) in scripts
    assert cli(server, "pause", agent).stdout.decode().strip() == "paused (cooperative)"
    again = cli(server, "pause", agent)
    assert (again.returncode, again.stdout.decode().strip()) == (0, "already paused")
    assert cli(server, "resume", agent).stdout.decode().strip() == "resumed"
    again = cli(server, "resume", agent)
    assert (again.returncode, again.stdout.decode().strip()) == (0, "not paused (running)")
    assert cli(server, "stop", agent).stdout.decode().strip() == "stopped"
    again = cli(server, "stop", agent)  # terminated at once: a second stop has nothing to do
    assert (again.returncode, again.stdout.decode().strip()) == (0, "already terminated")
    until(lambda: js(server, "kill", agent)[0].get("already") is True)  # and kill, once the process is gone
    again = cli(server, "kill", agent)
    assert (again.returncode, again.stdout.decode().strip()) == (0, "already terminated")
    done = cli(server, "spawn", "sh", "true", "-q").stdout.decode().strip()
    until(lambda: js(server, "status", done)[0].get("status") == "completed")
    assert cli(server, "kill", done).stdout.decode().strip() == "already completed"


def test_a_bad_status_lists_the_valid_ones(server) -> None:
    proc = cli(server, "list", "--status", "bogus")
    err = proc.stderr.decode()
    assert proc.returncode == 2 and "invalid choice: 'bogus'" in err
    assert all(status in err for status in ("idle", "running", "paused", "completed", "failed", "terminated"))
