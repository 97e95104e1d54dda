"""An agent's lifecycle as the real server tells it: the final status update comes when every
process of the agent's group is gone (with how it ended, when, and what it used), and stop,
kill and shutdown end what an agent's main process left behind in its group."""

from __future__ import annotations

import time
import uuid

import pytest
import zmq
from support.procs import alive, live_group_members
from support.server import Server
from support.waiting import until

from descartes_fast.wire import codec
from descartes_fast.wire.frames import status_topic
from descartes_fast.wire.schema import (
    AgentStatus,
    ControlCommandType,
    OutputQueryRequest,
    StatusUpdate,
    StatusUpdateType,
    ZmqOutputStream,
)

C = ControlCommandType
#: the main process dies of SIGTERM; the child it started in the background ignores SIGTERM
STUBBORN_CHILD = "(trap '' TERM; exec sleep 300) & echo $!; sleep 300"


@pytest.fixture
def server(implementation, tmp_path):
    srv = Server(tmp_path, implementation)  # stop_grace = 0.5 s (tests/support/server.py)
    yield srv
    srv.close()


def updates(server: Server, agent: uuid.UUID) -> zmq.Socket:
    sub = server.socket(zmq.SUB, SUBSCRIBE=status_topic(agent))
    time.sleep(0.3)  # the subscription reaches the server
    return sub


def next_update(sub: zmq.Socket) -> StatusUpdate:
    message = codec.decode(sub.recv().split(b"\x00", 1)[1])
    assert isinstance(message, StatusUpdate)
    return message


def child_of(server: Server, agent: uuid.UUID) -> int:
    until(lambda: server.call(OutputQueryRequest("o", agent, ZmqOutputStream.STDOUT)).total_lines == 1)
    return int(server.call(OutputQueryRequest("o", agent, ZmqOutputStream.STDOUT)).lines[0])


@pytest.mark.parametrize("kind", [C.STOP, C.KILL])
def test_the_final_status_update_comes_when_every_process_of_the_agent_is_gone(server, kind) -> None:
    # stop used to reply 'terminated' and publish nothing more: not when the processes were gone,
    # nor how they ended
    agent = server.spawn("sh", STUBBORN_CHILD)
    child = child_of(server, agent)
    sub = updates(server, agent)
    stopped, asked_ns = time.monotonic(), time.time_ns()
    assert server.control(agent, kind).success
    first = next_update(sub)
    assert first.status == AgentStatus.TERMINATED and first.data["ended_at"] is None
    final = next_update(sub)
    took = time.monotonic() - stopped
    assert not live_group_members(first.data["pid"]) and not alive(child)  # gone when it is said
    assert final.update_type == StatusUpdateType.TERMINATED and final.status == AgentStatus.TERMINATED
    signal = 15 if kind == C.STOP else 9
    assert final.data["signal"] == signal and final.data["exit_code"] == -signal
    # (the keeper reaps, and dates the end, as soon as the signal lands: it may be before the
    # server publishes 'terminated', never before the request)
    assert final.data["ended_at"] >= asked_ns and final.data["processes_left"] == 0
    assert final.data["cpu_secs"] >= 0 and final.data["max_rss_kib"] > 0
    name = "SIGTERM" if kind == C.STOP else "SIGKILL"
    assert final.message == f"{'stopped' if kind == C.STOP else 'killed'}: ended by signal {signal} ({name})"
    if kind == C.STOP:  # the child ignoring SIGTERM lasted until the SIGKILL at the end of the grace
        assert took >= 0.45, took


def test_stop_and_kill_end_what_a_finished_agent_left_in_its_group(server) -> None:
    # 'sleep 300 & exit 0': the agent completes, its child used to live on after stop (and after
    # the server's shutdown)
    for kind in (C.STOP, C.KILL):
        agent = server.spawn("sh", "sleep 300 & echo $!; exit 0")
        child = child_of(server, agent)
        server.wait_status(agent, (AgentStatus.COMPLETED,))
        assert alive(child)
        reply = server.control(agent, kind)
        assert reply.success and reply.status == AgentStatus.COMPLETED, reply
        until(lambda child=child: not alive(child))
        again = server.control(agent, kind)  # nothing left: said as for any ended agent
        assert again.success and "already" in again.data, again


def test_shutdown_leaves_no_process_of_any_agent(server) -> None:
    finished = server.spawn("sh", "sleep 300 & echo $!; exit 0")
    leftover = child_of(server, finished)
    server.wait_status(finished, (AgentStatus.COMPLETED,))
    stubborn = server.spawn("sh", STUBBORN_CHILD)
    child = child_of(server, stubborn)
    assert alive(leftover) and alive(child)
    assert server.close() == 0
    assert not alive(leftover) and not alive(child)


def test_stop_wait_returns_once_the_agent_is_gone_and_says_how_it_ended(server) -> None:
    import json
    import subprocess
    import sys

    agent = server.spawn("sh", STUBBORN_CHILD)
    child = child_of(server, agent)
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-P", "-m", "descartes_fast", "stop", str(agent), "--wait", "--json",
                           "--endpoint", server.bind], capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert not alive(child) and time.monotonic() - started >= 0.45  # the child needed the SIGKILL
    said = json.loads(proc.stdout)
    assert (said["done"], said["signal"], said["exit_code"]) == ("stopped", 15, -15) and said["ended_at"]
    again = subprocess.run([sys.executable, "-P", "-m", "descartes_fast", "kill", str(agent), "--wait",
                            "--endpoint", server.bind], capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and again.stdout == "already terminated; ended by signal 15\n", again
    state = server.control(agent, C.GET_STATUS).data
    assert state["status"] == "Terminated" and state["processes_left"] == 0 and state["signal"] == 15
