"""The real server binary, driven with raw pyzmq sockets sending Rust-compatible bytes.

Every test runs against the compiled and the pure-Python dispatcher (the latter with
DESCARTES_FAST_NO_EXTENSIONS=1 in the server's environment).
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid

import msgpack
import pytest
import zmq
from support.procs import LOOP, alive, live_group_members, paused, proc_state, rss_kib
from support.server import Server
from support.waiting import until

from descartes_fast.wire import codec
from descartes_fast.wire.schema import (
    AgentConfig,
    AgentStatus,
    BatchControlCommand,
    BatchControlResponse,
    CommandResponse,
    ControlCommandType,
    CustomActionRequest,
    ErrorResponse,
    HealthCheckRequest,
    HealthCheckResponse,
    ListAgentsRequest,
    ListAgentsResponse,
    LogStreamMessage,
    LogStreamType,
    OutputQueryRequest,
    OutputQueryResponse,
    SpawnRequest,
    SpawnResponse,
    StatusUpdate,
    StatusUpdateType,
    ZmqOutputStream,
)

C = ControlCommandType


@pytest.fixture
def server(implementation, tmp_path):
    srv = Server(tmp_path, implementation)
    yield srv
    srv.close()


def test_every_request_type(server) -> None:
    health = server.call(HealthCheckRequest("h"))
    assert isinstance(health, HealthCheckResponse) and health.protocol_version == "1.0.0"
    assert health.metadata["server_id"] == "test-server" and health.metadata["max_agents"] == "40"
    assert health.metadata["implementation"] in ("cython", "python") and "version" in health.metadata
    agent = server.spawn("cat")
    other = server.spawn("sh", "sleep 30")

    replies = {
        C.WRITE_STDIN: server.control(agent, C.WRITE_STDIN, {"data": "hello\n"}),
        C.PAUSE: server.control(agent, C.PAUSE),
        C.RESUME: server.control(agent, C.RESUME),
        C.SIGNAL: server.control(other, C.SIGNAL, {"signal": "SIGSTOP"}),
        C.CUSTOM_ACTION: server.control(agent, C.CUSTOM_ACTION, {"action": "echo", "params": [1, "x"]}),
        C.STREAM_LOGS: server.control(agent, C.STREAM_LOGS),
    }
    assert replies[C.WRITE_STDIN].data == {"bytes_written": 6, "to_pipe": 6, "queued": 0, "stdin_buffer": 1 << 20}
    assert replies[C.PAUSE].data == {"mode": "cooperative", "paused": True}
    assert replies[C.RESUME].data == {"resumed": True} and replies[C.RESUME].status == AgentStatus.RUNNING
    assert replies[C.SIGNAL].data == {"signal_sent": "SIGSTOP"} and replies[C.SIGNAL].status == AgentStatus.PAUSED
    assert replies[C.CUSTOM_ACTION].data == {"action": "echo", "result": [1, "x"]}
    assert replies[C.STREAM_LOGS].data["topic"] == str(agent) and replies[C.STREAM_LOGS].data["enabled"]
    # cat echoes hello, then the pause and resume lines
    until(lambda: server.call(OutputQueryRequest("o", agent, ZmqOutputStream.STDOUT)).total_lines >= 3)
    read = server.control(agent, C.READ_STDOUT)
    facts = read.data.pop("output")  # what the stream holds, and what it dropped (docs/protocol.md §6.20)
    assert read.data == {"bytes": 6, "data": "hello\n"}
    assert facts["first_line"] == facts["dropped_lines"] == facts["dropped_bytes"] == 0 and not facts["ended"]
    assert facts["total_bytes"] == 6 + 34 + 35  # hello, and cat's echo of the pause and resume lines
    empty = server.control(agent, C.READ_STDERR)
    assert empty.data["output"]["total_bytes"] == 0
    assert empty.data == {"bytes": 0, "data": None, "message": "No data available in stderr buffer",
                          "output": empty.data["output"]}
    query = server.control(agent, C.QUERY_OUTPUT, {"max_lines": 10})
    assert set(query.data) == {"stdout", "stdout_lines", "stderr", "stderr_lines", "output"}
    state = server.control(agent, C.GET_STATUS).data
    assert state == {"status": "Running", "pid": state["pid"], "exit_code": None, "signal": None, "ended_at": None,
                     "processes_left": None, "reason": None, "cpu_secs": None, "max_rss_kib": None, "restarts": 0,
                     "output_bytes": 6 + 34 + 35} and state["pid"] > 1
    usage = server.control(agent, C.GET_STATUS, {"usage": True}).data["usage"]  # read only when asked
    assert set(usage) == {"cpu_secs", "memory_bytes"} and usage["cpu_secs"] >= 0 and usage["memory_bytes"] > 0

    listed = server.call(ListAgentsRequest("l"))
    assert isinstance(listed, ListAgentsResponse) and {a.id for a in listed.agents} == {agent, other}
    assert [a.id for a in server.call(ListAgentsRequest("l", AgentStatus.PAUSED)).agents] == [other]
    assert len(server.call(ListAgentsRequest("l", None, 1)).agents) == 1

    ping = server.call(CustomActionRequest("ca", agent, "ping"))
    assert isinstance(ping, CommandResponse) and ping.data == {"action": "ping", "agent_id": str(agent),
                                                                "result": "pong"}
    unknown = server.call(CustomActionRequest("ca", agent, "dance"))
    assert not unknown.success and "Unknown custom action 'dance'" in unknown.error

    missing = uuid.uuid4()
    batch = server.call(BatchControlCommand("b", [agent, missing, other], C.GET_STATUS))
    assert isinstance(batch, BatchControlResponse) and not batch.success
    assert (batch.successful, batch.failed, len(batch.results)) == (2, 1, 3)
    assert batch.results[1].error == f"Agent not found: {missing}"
    fast = server.call(BatchControlCommand("b", [missing, agent], C.GET_STATUS, fail_fast=True))
    assert len(fast.results) == 1 and fast.failed == 1

    server.control(agent, C.WRITE_STDIN, {"data": [104, 105, 10, 256 + 33, "skip"]})  # "hi\n!"
    server.control(agent, C.WRITE_STDIN, {"data": "", "eof": True})
    assert server.wait_status(agent, {AgentStatus.COMPLETED}) == AgentStatus.COMPLETED
    out = server.call(OutputQueryRequest("o", agent, ZmqOutputStream.STDOUT, filter="^h", limit=1))
    assert isinstance(out, OutputQueryResponse)
    assert (out.lines, out.total_lines, out.has_more) == (["hello"], 2, True)
    page = server.call(OutputQueryRequest("o", agent, ZmqOutputStream.BOTH, offset=1))
    # cat echoed the pause and resume lines it was sent, between "hello" and "hi"
    assert page.lines == ['{"type":"pause","action":"pause"}', '{"type":"pause","action":"resume"}', "hi", "!"]
    assert not page.has_more

    for kind in (C.STOP, C.KILL):
        victim = server.spawn("sh", "sleep 30")
        reply = server.control(victim, kind)
        assert reply.success and reply.status == AgentStatus.TERMINATED and reply.data is None
    server.control(other, C.KILL)

    # messages that only a server sends are refused with error_response
    stray = server.call(StatusUpdate(agent, StatusUpdateType.HEARTBEAT, timestamp=0))
    assert isinstance(stray, ErrorResponse) and "unexpected message type 'status_update'" in stray.error
    assert isinstance(server.call(SpawnResponse("x", True)), ErrorResponse)
    assert isinstance(server.call(LogStreamMessage(agent, LogStreamType.STDOUT, b"", 0, 0)), ErrorResponse)


def test_reference_error_texts(server) -> None:
    missing = uuid.uuid4()
    reply = server.control(missing, C.GET_STATUS)
    assert (reply.success, reply.status, reply.error) == (False, None, f"Agent not found: {missing}")
    bad = server.call(SpawnRequest("s", AgentConfig(model_backend="anthropic")))
    # the prefix once (the Rust server says "Failed to spawn agent: Agent spawn failed: ...")
    assert bad.error == ("Agent spawn failed: Unsupported model backend for process spawning: anthropic. "
                         "Use API mode instead.")
    assert bad.server_id == "test-server"
    agent = server.spawn("sh", "sleep 30")
    assert server.control(agent, C.RESUME).error == \
        "Agent execution error: Agent is not paused, current status: running"
    assert "Unknown signal type: 'HUP'" in server.control(agent, C.SIGNAL, {"signal": "HUP"}).error
    assert "requires payload with 'signal' field" in server.control(agent, C.SIGNAL).error
    assert "WriteStdin requires payload" in server.control(agent, C.WRITE_STDIN, {}).error
    server.control(agent, C.KILL)
    server.wait_status(agent, {AgentStatus.TERMINATED})
    assert "Cannot pause agent in terminal state: terminated" in server.control(agent, C.PAUSE).error


def test_pause_is_observed_on_the_process(server) -> None:
    looping = server.spawn("sh", LOOP)
    pid = _pid(server, looping)
    reply = server.control(looping, C.PAUSE, {"force": True})
    assert reply.data == {"mode": "forced", "paused": True}
    until(lambda: paused(pid), seen=lambda: (_describe(pid), server.control(looping, C.GET_STATUS)))
    server.control(looping, C.RESUME)
    until(lambda: not paused(pid), seen=lambda: _describe(pid))
    cat = server.spawn("cat")  # cooperative: the reference's line arrives on the agent's stdin
    assert server.control(cat, C.PAUSE).data["mode"] == "cooperative"
    until(lambda: server.control(cat, C.READ_STDOUT).data.get("data") == '{"type":"pause","action":"pause"}\n')


def _pid(server: Server, agent_id) -> int:
    reply = server.call(CustomActionRequest("p", agent_id, "get_env"))
    assert reply.success and reply.data["result"]["status"] in ("Running", "Paused")
    return reply.data["result"]["pid"]


def _describe(pid: int) -> str:
    """State of a process and of its group, for failure messages."""
    try:
        state = proc_state(pid)
    except FileNotFoundError:
        state = "gone"
    return f"pid {pid} state {state}, live group members {live_group_members(pid)}"


@pytest.mark.parametrize("kind", [C.STOP, C.KILL])
def test_stop_and_kill_end_the_process_group(server, kind) -> None:
    agent = server.spawn("sh", "sleep 1000 & echo $!; wait")
    until(lambda: server.call(OutputQueryRequest("o", agent, ZmqOutputStream.STDOUT)).total_lines == 1)
    grandchild = int(server.call(OutputQueryRequest("o", agent, ZmqOutputStream.STDOUT)).lines[0])
    assert alive(grandchild)
    server.control(agent, kind)
    until(lambda: not alive(grandchild))


def test_large_output_is_complete_in_order_and_binary_safe(implementation, tmp_path) -> None:
    # a queue large enough for all of it: on a busy machine a reader in Python falls more than
    # the default --pub-buffer (32 MiB) behind the agent, and then misses chunks (test_bounds.py)
    server = Server(tmp_path, implementation, "--pub-buffer", "1GiB")
    try:
        _large_output_is_complete_in_order_and_binary_safe(server)
    finally:
        server.close()


def _large_output_is_complete_in_order_and_binary_safe(server: Server) -> None:
    sub = server.socket(zmq.SUB, SUBSCRIBE=b"", RCVHWM=0)
    time.sleep(0.3)  # let the subscription reach the server
    script = ("import sys\nw=sys.stdout.buffer.write\n"
              "for i in range(1_700_000): w(b'%08d\\xff\\xfe' % i + b'x' * 20 + b'\\n')\n")
    expected = b"".join(b"%08d\xff\xfe" % i + b"x" * 20 + b"\n" for i in range(1_700_000))
    assert len(expected) >= 50_000_000
    agent = server.spawn("py", script)
    data, seq, done = bytearray(), 0, False
    while not done:
        _, payload = sub.recv().split(b"\x00", 1)
        message = codec.decode(payload)
        if isinstance(message, LogStreamMessage) and message.agent_id == agent:
            assert message.sequence == seq  # no gaps for a subscriber that keeps up
            seq += 1
            data += message.data
        elif isinstance(message, StatusUpdate) and message.agent_id == agent:
            done = message.status == AgentStatus.COMPLETED
    assert bytes(data) == expected


def test_status_updates_and_heartbeats(server) -> None:
    sub = server.socket(zmq.SUB, SUBSCRIBE=b"status.")
    time.sleep(0.3)
    agent = server.spawn("demo", "x", environment={"AGENT_EXTRA_ARGS": "--steps 3 --interval 0.1"})
    server.control(agent, C.PAUSE)
    server.control(agent, C.RESUME)
    seen, heartbeat = [], None
    while not seen or seen[-1][1] != AgentStatus.COMPLETED:
        topic, payload = sub.recv().split(b"\x00", 1)
        update = codec.decode(payload)
        if update.update_type == StatusUpdateType.HEARTBEAT:
            assert topic == b"status.00000000-0000-0000-0000-000000000000"
            heartbeat = update
        else:
            assert topic == b"status." + str(agent).encode()
            seen.append((update.update_type, update.status))
    assert seen == [(StatusUpdateType.STATUS_CHANGED, AgentStatus.RUNNING),
                    (StatusUpdateType.STATUS_CHANGED, AgentStatus.PAUSED),
                    (StatusUpdateType.STATUS_CHANGED, AgentStatus.RUNNING),
                    (StatusUpdateType.COMPLETED, AgentStatus.COMPLETED)]
    while heartbeat is None:
        heartbeat = codec.decode(sub.recv().split(b"\x00", 1)[1])
        heartbeat = heartbeat if heartbeat.update_type == StatusUpdateType.HEARTBEAT else None
    assert heartbeat.message == "test-server" and "active_agents" in heartbeat.data


def test_spawns_do_not_delay_other_requests(server) -> None:
    dealer = server.socket(zmq.DEALER)
    for i in range(30):
        dealer.send_multipart([b"", codec.encode(SpawnRequest(f"s{i}", AgentConfig(model_backend="sh",
                                                                                   task="sleep 5")))])
    dealer.send_multipart([b"", codec.encode(HealthCheckRequest("health"))])
    replies = [codec.decode(dealer.recv_multipart()[1]) for _ in range(31)]
    at = [i for i, r in enumerate(replies) if isinstance(r, HealthCheckResponse)]
    # Usually first; never queued behind the spawns (a spawn started in an earlier drain of
    # the socket may answer before the health check has even arrived).
    assert len(at) == 1 and at[0] < 20, at
    assert all(r.success for r in replies if not isinstance(r, HealthCheckResponse))


def test_bad_input_gets_error_replies_and_the_server_goes_on(server) -> None:
    cases = [
        b"",                                                       # empty
        b"\xc1\xc1\xc1",                                           # not msgpack
        codec.encode(HealthCheckRequest("cut"))[:-2],              # truncated
        msgpack.packb(["launch_rockets", "r1"]),                   # unknown type
    ]
    for raw in cases:
        reply = server.call(None, raw=raw)
        assert isinstance(reply, ErrorResponse) and reply.error.startswith("invalid request:"), reply
    assert server.call(None, raw=msgpack.packb(["launch_rockets", "r1"])).request_id == "r1"
    bad_body = server.call(None, raw=msgpack.packb(["control_command", "r2", b"\x01" * 16, "explode"]))
    assert isinstance(bad_body, CommandResponse) and not bad_body.success
    assert bad_body.request_id == "r2" and "unknown ControlCommandType value 'explode'" in bad_body.error
    health = server.call(HealthCheckRequest("after"))
    assert health.healthy and int(health.metadata["decode_errors"]) == 6


def test_a_reply_over_the_message_limit_becomes_an_error_reply_and_the_connection_goes_on(server) -> None:
    # 200 lines of 64 KiB of bytes >= 0x80: as text (U+FFFD for each) one page of them is ~39 MB.
    # The reply used to raise inside the server's receive callback: no answer, and the
    # connection's next requests timed out too.
    agent = server.spawn("py", "import sys; [sys.stdout.buffer.write(b'\\xff' * 65535 + b'\\n') for _ in range(200)]")
    server.wait_status(agent, (AgentStatus.COMPLETED,))
    started = time.monotonic()
    reply = server.call(OutputQueryRequest("big", agent, ZmqOutputStream.STDOUT, limit=1000))
    assert isinstance(reply, OutputQueryResponse) and not reply.success and reply.request_id == "big"
    assert reply.error.startswith("reply too large: ") and "over the 10,485,760-byte message limit" in reply.error
    assert "limit, then offset" in reply.error, reply.error
    assert server.call(HealthCheckRequest("next")).healthy  # the same connection, at once
    assert time.monotonic() - started < 10
    page = server.call(OutputQueryRequest("small", agent, ZmqOutputStream.STDOUT, limit=20))
    assert page.success and len(page.lines) == 20 and page.lines[0] == "\ufffd" * 65535
    health = server.call(HealthCheckRequest("counts"))
    assert int(health.metadata["failures"]) == 1 and health.metadata["replies_dropped"] == "0"
    assert "not sent: reply too large" in server.log()


def test_the_client_pages_a_query_whose_page_would_be_too_large(server) -> None:
    from descartes_fast.client import Client

    agent = server.spawn("py", "import sys; [sys.stdout.buffer.write(b'\\xfe' * 65535 + b'\\n') for _ in range(300)]")
    server.wait_status(agent, (AgentStatus.COMPLETED,))
    with Client(endpoint=server.bind, pub_endpoint=server.pub, enable_heartbeat=False) as c:
        lines = list(c.read_output_lines(agent, ZmqOutputStream.STDOUT))
    assert lines == ["\ufffd" * 65535] * 300


def test_stdin_that_nobody_reads_is_bounded_in_bytes(server) -> None:
    # 31 writes of 9 MB to an agent that never reads used to answer bytes_written=9000000 each and
    # grow the server by ~300 MB
    agent = server.spawn("sh", "sleep 60")
    before = rss_kib(server.proc.pid)
    for _ in range(31):
        reply = server.control(agent, C.WRITE_STDIN, {"data": "x" * 9_000_000})
        assert not reply.success and "is full: 0 bytes already wait for the agent" in reply.error, reply.error
        assert "over the limit of 1,048,576 (--stdin-buffer)" in reply.error
    assert rss_kib(server.proc.pid) - before < 48 * 1024  # (each 9 MB request is decoded, then let go)
    first = server.control(agent, C.WRITE_STDIN, {"data": "y" * 600_000}).data
    assert first == {"bytes_written": 600_000, "to_pipe": 65536, "queued": 600_000 - 65536, "stdin_buffer": 1 << 20}
    second = server.control(agent, C.WRITE_STDIN, {"data": "z" * 520_000})  # 1,054,464 would wait
    assert not second.success and "534,464 bytes already wait" in second.error
    assert server.control(agent, C.WRITE_STDIN, {"data": "z" * 400_000}).data["queued"] == 934_464
    assert server.call(HealthCheckRequest("h")).healthy


def test_dealer_without_delimiter_is_answered_in_the_same_shape(server) -> None:
    dealer = server.socket(zmq.DEALER)
    dealer.send(codec.encode(HealthCheckRequest("nodelim")))
    frames = dealer.recv_multipart()
    assert len(frames) == 1 and codec.decode(frames[0]).request_id == "nodelim"
    dealer.send_multipart([b"", codec.encode(HealthCheckRequest("delim"))])
    assert dealer.recv_multipart()[0] == b""


def test_sigterm_stops_every_agent_and_exits_0(server) -> None:
    groups = [server.spawn("sh", "trap '' TERM; sleep 1000 & wait") for _ in range(3)]
    groups.append(server.spawn("demo", "x", environment={"AGENT_EXTRA_ARGS": "--steps 1000"}))
    pgids = [_pid(server, a) for a in groups]
    started = time.monotonic()
    assert server.close() == 0
    assert time.monotonic() - started < 10
    for pgid in pgids:
        until(lambda pgid=pgid: not live_group_members(pgid))


def test_the_open_file_room_counts_the_servers_own_descriptors(tmp_path, main_implementation) -> None:
    import re

    server = Server(tmp_path, main_implementation, log_level="INFO")
    try:
        found = re.search(r"open-file limit (\d+), (\d+) in use by the server: room for about (\d+) agents \(8 ",
                          server.log())
        assert found, server.log()
        limit, used, room = map(int, found.groups())
        assert used >= 8  # its sockets, the state directory's lock and database, ...
        assert room == (limit - used) // 8
    finally:
        server.close()


def test_bad_settings_exit_2_with_a_message(tmp_path) -> None:
    proc = subprocess.run([sys.executable, "-P", "-m", "descartes_fast", "serve", "--max-agents", "zero"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "--max-agents='zero'" in proc.stderr
    busy = zmq.Context().socket(zmq.ROUTER)
    port = busy.bind_to_random_port("tcp://127.0.0.1")
    proc = subprocess.run([sys.executable, "-P", "-m", "descartes_fast", "serve", "--bind", f"tcp://127.0.0.1:{port}",
                           "--pub", "none", "--state-dir", str(tmp_path / "state")], capture_output=True, text=True,
                          timeout=30)
    busy.close(0)
    assert proc.returncode == 1 and "cannot bind" in proc.stderr
