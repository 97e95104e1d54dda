"""Agents outlive the server: ``kill -9`` of the real server binary mid-output, a new server on
the same state directory adopts every agent from the keeper (output complete, exits that came
during the gap, control working); the planned upgrade (``--keep-agents``); and
``--agents-die-with-server``, where nothing survives. Both containments: cgroup (where this
machine has a writable unified hierarchy) and process groups (forced)."""

from __future__ import annotations

import hashlib
import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from support.procs import alive, paused
from support.server import Server
from support.waiting import until

from descartes_fast.agents.cgroups import find_hierarchy
from descartes_fast.wire.schema import (
    AgentStatus,
    ControlCommandType,
    HealthCheckRequest,
    ListAgentsRequest,
    LogStreamType,
    OutputReadRequest,
)

C = ControlCommandType
HAVE_CGROUPS = find_hierarchy() is not None
CONTAINMENTS = [pytest.param("cgroup", marks=pytest.mark.skipif(not HAVE_CGROUPS, reason="no writable cgroup v2 "
                                                                "hierarchy on this machine")), "process-group"]


def writer(lines: int, sha_file: Path, sigpipe: str, gate: Path | None = None, cap: int | None = None) -> str:
    """A chatty agent: numbered lines as fast as it can (a short sleep every 50), then the sha256
    of all it wrote into *sha_file*. *sigpipe*: ``default`` (a closed pipe kills it, as it kills
    most programs) or ``ignore`` (as Node.js does: the write fails and it exits 1). Without
    *gate*, *lines* lines; with it, it writes on until that file exists (the test makes it right
    after a crash), then *lines* more: the crash comes in the middle of its output, while the
    server reads it (and a read can be on its way to the store), and the rest is written while no
    server runs. With *cap* too, it waits for the gate after *cap* lines (a slow reader keeps up)."""
    until_gate = f"os.path.exists({str(gate)!r})" if gate is not None else "True"
    wait = (f"    while i == {cap} and not {until_gate}:\n"
            f"        time.sleep(0.01)\n") if cap is not None else ""
    return (f"import hashlib, os, signal, sys, time\n"
            f"signal.signal(signal.SIGPIPE, signal.SIG_{'DFL' if sigpipe == 'default' else 'IGN'})\n"
            f"h = hashlib.sha256()\n"
            f"i, end = 0, None\n"
            f"while end is None or i < end:\n" + wait +
            f"    if end is None and i % 50 == 0:\n"
            f"        time.sleep(0.001)\n"
            f"        if {until_gate}:\n"
            f"            end = i + {lines}\n"
            f"    line = b'%08d %s\\n' % (i, b'x' * 60)\n"
            f"    h.update(line)\n"
            f"    try:\n"
            f"        os.write(1, line)\n"
            f"    except BrokenPipeError:\n"
            f"        sys.exit(1)\n"
            f"    i += 1\n"
            f"open({str(sha_file)!r}, 'w').write(h.hexdigest())\n")


def writing(server: Server, agent: uuid.UUID, at_least: int = 1 << 20) -> None:
    """The *writer* is under way: the server has stored *at_least* bytes of it (and it goes on)."""
    until(lambda: len(stdout_of(server, agent)) >= at_least)


def stdout_of(server: Server, agent: uuid.UUID) -> bytes:
    """Every byte of the agent's stdout the server stores (read as a client would)."""
    out, offset = bytearray(), 0
    while True:
        reply = server.call(OutputReadRequest("r", agent, LogStreamType.STDOUT, offset=offset, max_bytes=4 << 20))
        assert reply.success, reply.error
        out += reply.data
        offset += len(reply.data)
        if not reply.data:
            return bytes(out)


def status_data(server: Server, agent: uuid.UUID) -> dict:
    reply = server.control(agent, C.GET_STATUS)
    assert reply.success, reply.error
    return reply.data


def keeper_pid(state_dir: Path) -> int:
    return int((state_dir / "keeper.lock").read_text().strip() or 0)


def restart(server: Server, tmp_path: Path, *flags: str) -> Server:
    """A new server on the same state directory and endpoints."""
    return Server(tmp_path, server.implementation, *flags)


def nothing_left(pids: list[int], keeper: int, cgroups: str) -> None:
    """None of *pids* runs, nor the keeper, and the agents' cgroups (if any) are gone."""
    until(lambda: not any(alive(p) for p in pids), seen=lambda: [p for p in pids if alive(p)])
    until(lambda: not alive(keeper), seen=lambda: f"keeper {keeper}")
    if cgroups:
        until(lambda: not [c for c in Path(cgroups).iterdir() if c.is_dir()] if Path(cgroups).exists() else True,
              seen=lambda: list(Path(cgroups).iterdir()))


def facts(server: Server) -> tuple[int, str]:
    """The keeper's pid and the agents' cgroups directory ("" without cgroups), from health."""
    metadata = server.call(HealthCheckRequest("h")).metadata
    return int(metadata["keeper_pid"]), metadata["cgroups"]


@pytest.mark.parametrize("containment", CONTAINMENTS)
def test_kill_9_of_the_server_loses_no_agent_and_no_output(implementation, tmp_path, containment) -> None:
    first = Server(tmp_path, implementation, "--containment", containment)
    assert first.call(HealthCheckRequest("h")).metadata["containment"] == containment
    gate = tmp_path / "crashed"  # the chatty ones write their second half while no server runs
    kinds = {
        "chatty": first.spawn("py", writer(40_000, tmp_path / "chatty.sha", "default", gate)),
        "nodejs": first.spawn("py", writer(40_000, tmp_path / "nodejs.sha", "ignore", gate)),
        "silent": first.spawn("sh", "sleep 300"),
        "stubborn": first.spawn("sh", "trap '' TERM; echo ready; sleep 300"),
        "setsid": first.spawn("sh", "setsid sleep 300 & echo $!; sleep 300"),
        "gap": first.spawn("sh", "sleep 1.5; echo bye; exit 7"),
        "stdin": first.spawn("cat"),
    }
    until(lambda: stdout_of(first, kinds["setsid"]).strip() != b"")
    grandchild = int(stdout_of(first, kinds["setsid"]))
    before = {a.id: a for a in first.call(ListAgentsRequest("l")).agents}
    pids = {name: status_data(first, agent)["pid"] for name, agent in kinds.items()}
    keeper, cgroups = facts(first)
    for name in ("chatty", "nodejs"):
        writing(first, kinds[name])

    first.kill9()  # in the middle of the chatty ones' output
    crashed = time.time_ns()
    gate.touch()
    assert all(alive(pids[n]) for n in ("chatty", "nodejs", "silent", "stubborn", "setsid", "stdin"))
    until(lambda: not alive(pids["gap"]))  # it exits while no server runs
    time.sleep(0.5)  # the chatty ones fill their pipes and wait
    assert alive(pids["chatty"]) and alive(pids["nodejs"])
    restarted = time.time_ns()

    second = restart(first, tmp_path, "--containment", containment)
    try:
        assert keeper_pid(second.state_dir) == keeper  # the same keeper: it outlived the server
        after = {a.id: a for a in second.call(ListAgentsRequest("l")).agents}
        assert set(after) == set(before)
        for agent_id, info in before.items():
            again = after[agent_id]
            assert (again.name, again.started_at, again.model_backend) == (info.name, info.started_at,
                                                                            info.model_backend)
        for name, agent in kinds.items():
            assert status_data(second, agent)["pid"] == pids[name], name
        # the agent that exited during the gap: its real exit code and end time
        assert second.wait_status(kinds["gap"], {AgentStatus.FAILED}) == AgentStatus.FAILED
        gap = status_data(second, kinds["gap"])
        assert gap["exit_code"] == 7 and crashed <= gap["ended_at"] <= restarted
        assert stdout_of(second, kinds["gap"]) == b"bye\n"
        # control works on adopted agents
        reply = second.control(kinds["stdin"], C.WRITE_STDIN, {"data": "after the crash\n"})
        assert reply.success, reply.error
        until(lambda: stdout_of(second, kinds["stdin"]) == b"after the crash\n")
        assert second.control(kinds["silent"], C.PAUSE, {"force": True}).success
        until(lambda: paused(pids["silent"]))
        assert second.control(kinds["silent"], C.RESUME).success
        until(lambda: not paused(pids["silent"]))
        # every byte the chatty agents wrote, across the crash
        for name in ("chatty", "nodejs"):
            assert second.wait_status(kinds[name], {AgentStatus.COMPLETED, AgentStatus.FAILED}, 60) == \
                AgentStatus.COMPLETED, (name, status_data(second, kinds[name]))
            wrote = (tmp_path / f"{name}.sha").read_text()
            assert hashlib.sha256(stdout_of(second, kinds[name])).hexdigest() == wrote, name
        assert second.control(kinds["stubborn"], C.STOP).success  # SIGTERM ignored: SIGKILL after the grace
        until(lambda: not alive(pids["stubborn"]))
        assert second.control(kinds["setsid"], C.KILL).success
        until(lambda: not alive(pids["setsid"]))
        if containment == "cgroup":  # it left the agent's session, not its cgroup
            until(lambda: not alive(grandchild))
    finally:
        assert second.close() == 0
    if containment != "cgroup":
        os.kill(grandchild, signal.SIGKILL)  # what process groups cannot reach (README: Containment)
    nothing_left([p for n, p in pids.items() if n != "gap"] + [grandchild], keeper, cgroups)


def test_a_planned_upgrade_with_keep_agents_loses_nothing(implementation, tmp_path) -> None:
    old = Server(tmp_path, implementation, "--keep-agents")
    gate = tmp_path / "upgrading"  # the rest is written while no server runs
    chatty = old.spawn("py", writer(30_000, tmp_path / "chatty.sha", "default", gate))
    silent = old.spawn("sh", "sleep 300")
    writing(old, chatty)
    pids = [status_data(old, a)["pid"] for a in (chatty, silent)]
    assert old.close() == 0  # SIGTERM with --keep-agents: the server exits, the agents run on
    gate.touch()
    assert all(alive(p) for p in pids)
    new = restart(old, tmp_path)  # the next version, without the flag
    try:
        assert new.control(silent, C.GET_STATUS).status == AgentStatus.RUNNING
        assert new.wait_status(chatty, {AgentStatus.COMPLETED}, 60) == AgentStatus.COMPLETED
        assert hashlib.sha256(stdout_of(new, chatty)).hexdigest() == (tmp_path / "chatty.sha").read_text()
        keeper, cgroups = facts(new)
    finally:
        assert new.close() == 0  # a plain SIGTERM: agents are stopped
    nothing_left(pids, keeper, cgroups)


@pytest.mark.parametrize("containment", CONTAINMENTS)
def test_with_agents_die_with_server_nothing_survives_kill_9(implementation, tmp_path, containment) -> None:
    server = Server(tmp_path, implementation, "--agents-die-with-server", "--containment", containment)
    assert server.call(HealthCheckRequest("h")).metadata["lifecycle"] == "agents-die-with-server"
    agents = [server.spawn("py", writer(10_000_000, tmp_path / "never.sha", "ignore")),
              server.spawn("sh", "trap '' TERM; sleep 300"),
              server.spawn("sh", "sleep 300 & sleep 300")]
    pids = [status_data(server, a)["pid"] for a in agents]
    keeper, cgroups = facts(server)
    server.kill9()
    nothing_left(pids, keeper, cgroups)  # SIGTERM ignored: SIGKILL after the keeper's grace
    again = restart(server, tmp_path)
    try:
        for agent in agents:  # how they ended, as the keeper recorded it
            data = status_data(again, agent)
            assert again.control(agent, C.GET_STATUS).status == AgentStatus.FAILED
            assert data["signal"] in (signal.SIGTERM, signal.SIGKILL), data
    finally:
        assert again.close() == 0


def as_nobody(path: Path) -> str:
    """Connect to the unix socket *path* as uid 65534 and say hello: what happened."""
    import socket
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # (the child does a few system calls only, then leaves)
        code = "?"
        try:
            os.setgid(65534)
            os.setuid(65534)
            s = socket.socket(socket.AF_UNIX)
            try:
                s.connect(str(path))
                s.sendall(b'\0\0\0\x28{"op":"hello","version":1,"mode":"keep"}')
                code = "closed" if s.recv(10) == b"" else "answered"
            except (ConnectionResetError, BrokenPipeError):  # the keeper may close before we write
                code = "closed"
            except PermissionError:
                code = "no access"
            except OSError as e:  # anything else: say what, for the failure's message
                code = f"{type(e).__name__}: {e}"
        finally:
            os.write(w, code.encode())
            os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    with os.fdopen(r) as f:
        return f.read()


def test_only_the_servers_own_user_may_talk_to_the_keeper(main_implementation, tmp_path) -> None:
    server = Server(tmp_path, main_implementation)
    sock = server.state_dir / "keeper.sock"
    try:
        assert (sock.stat().st_mode & 0o777) == 0o600 and (server.state_dir.stat().st_mode & 0o777) == 0o700
        assert as_nobody(sock) == "no access"
        # past the file modes (as if they were loosened: a link to the socket where anyone may
        # reach it), the keeper itself refuses another uid
        import tempfile
        with tempfile.TemporaryDirectory() as open_dir:
            os.chmod(open_dir, 0o755)
            os.link(sock, Path(open_dir) / "keeper.sock")
            sock.chmod(0o777)
            assert as_nobody(Path(open_dir) / "keeper.sock") == "closed"
            sock.chmod(0o600)
        assert "refused a connection of uid 65534" in (server.state_dir / "keeper.log").read_text()
        assert server.spawn("sh", "true")  # the server's own connection is untouched
    finally:
        assert server.close() == 0


def test_a_follower_across_a_crash_and_restart_gets_every_line_once(main_implementation, tmp_path) -> None:
    import asyncio

    from descartes_fast.client import AsyncClient, ZmqRunnerConfig

    first = Server(tmp_path, main_implementation)
    gate = tmp_path / "crashed"  # the rest of the output is written while no server runs
    # (the pure twins' client decodes slower than the agent writes: it waits for the crash after 20,000 lines)
    agent = first.spawn("py", writer(40_000, tmp_path / "chatty.sha", "default", gate, cap=20_000))
    servers = [first]

    async def follow() -> tuple[bytes, int, float]:
        config = ZmqRunnerConfig(endpoint=first.bind, pub_endpoint=first.pub, request_timeout_secs=1.0,
                                 heartbeat_interval_secs=0.5, auto_reconnect=False)
        async with AsyncClient(config) as client:
            got = bytearray()
            replay = await client.follow_logs(agent)
            crashed_at = None
            noticed = 0.0
            back: asyncio.Future[None] | None = None
            async for chunk in replay:
                assert chunk.stream_type == LogStreamType.STDOUT
                got += chunk.data
                if crashed_at is None and len(got) > 200_000:
                    first.kill9()  # in the middle of its output
                    crashed_at = time.monotonic()
                    gate.touch()
                    while client.is_connected():  # within two heartbeat intervals of the crash
                        await asyncio.sleep(0.05)
                    noticed = time.monotonic() - crashed_at
                    back = asyncio.ensure_future(restart_later(replay))  # the follow waits meanwhile
            assert back is not None
            await back
            return bytes(got), replay.resumed, noticed

    async def restart_later(replay: Any) -> None:
        # only once a read of the follow (its quiet poll, 5 s) went unanswered and was asked again: a
        # fixed wait raced with it on a loaded machine (a read sent just before the restart is answered)
        deadline = time.monotonic() + 60
        while not replay.resumed:
            assert time.monotonic() < deadline, "no read of the follow went unanswered"
            await asyncio.sleep(0.05)
        servers.append(await asyncio.to_thread(restart, first, tmp_path))

    try:
        got, resumed, noticed = asyncio.run(asyncio.wait_for(follow(), 120))
    finally:
        assert servers[-1].close() == 0
    assert resumed > 0 and noticed <= 2 * 0.5 + 0.2, (resumed, noticed)  # two heartbeat intervals
    assert hashlib.sha256(got).hexdigest() == (tmp_path / "chatty.sha").read_text()
    lines = got.splitlines()
    assert [int(line.split()[0]) for line in lines] == list(range(len(lines)))  # each once, in order
    assert len(lines) >= 40_000


def test_a_keeper_killed_under_a_running_server_is_replaced(main_implementation, tmp_path) -> None:
    server = Server(tmp_path, main_implementation)
    try:
        agent = server.spawn("sh", "sleep 300")
        pid = status_data(server, agent)["pid"]
        keeper, cgroups = facts(server)
        os.kill(keeper, signal.SIGKILL)
        # its agents can no longer be watched: they are ended, and say why
        assert server.wait_status(agent, {AgentStatus.FAILED}) == AgentStatus.FAILED
        until(lambda: not alive(pid))
        assert status_data(server, agent)["signal"] == signal.SIGKILL
        until(lambda: facts(server)[0] != keeper)  # a new keeper, for the agents to come
        assert f"lost the keeper (pid {keeper})" in server.log() and "started a new keeper" in server.log()
        again = server.spawn("sh", "echo after")
        assert server.wait_status(again, {AgentStatus.COMPLETED}) == AgentStatus.COMPLETED
        assert stdout_of(server, again) == b"after\n"
        new_keeper = facts(server)[0]
    finally:
        assert server.close() == 0
    nothing_left([pid], new_keeper, cgroups)  # (the new keeper removes what the killed one left)
