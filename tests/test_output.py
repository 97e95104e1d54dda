"""Agent output on the real server binary: bounded in bytes, stored exactly, followed exactly once.

Each test drives a ``descartes-fast-server`` process with the Python client, and checks what an
operator would: the server's resident memory, the sha256 of what comes back, the lines a
follower sees, the latency of health checks while big reads run.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable

import pytest
from support.procs import rss_kib
from support.server import Server
from support.waiting import until

from descartes_fast.client import AsyncClient, Client, ServerError, ZmqRunnerConfig
from descartes_fast.server.config import MAX_EVENT_BYTES
from descartes_fast.wire.schema import AgentConfig, AgentStatus, LogStreamMessage, LogStreamType, ZmqOutputStream

PY = sys.executable
MiB = 1 << 20
OUT, ERR = LogStreamType.STDOUT, LogStreamType.STDERR


def client(server: Server, **kw) -> Client:
    return Client(endpoint=server.bind, pub_endpoint=server.pub, enable_heartbeat=False, request_timeout_secs=30,
                  **kw)


def spawn_py(c: Client, script: str, name: str = "w") -> uuid.UUID:
    return c.spawn_remote(AgentConfig(name=name, model_backend="py", task=script)).id


def wait_ended(c: Client, agent: uuid.UUID, timeout: float = 60) -> None:
    until(lambda: c.get_agent_status(agent).is_terminal(), timeout)


def stored(c: Client, agent: uuid.UUID) -> dict[LogStreamType, bytes]:
    out = {OUT: bytearray(), ERR: bytearray()}
    for chunk in c.stored_output(agent):
        out[chunk.stream_type] += chunk.data
    return {k: bytes(v) for k, v in out.items()}


# -- memory, in bytes --


def _peak_growth(tmp_path, implementation: str, cap: int, writer: str, agents: int) -> int:
    """Bytes the server's resident memory grew by, at its peak, while *agents* run *writer* at once."""
    tmp_path.mkdir()
    server = Server(tmp_path, implementation, "--output-limit", str(cap))
    try:
        with client(server) as c:
            before = rss_kib(server.proc.pid)
            ids = [spawn_py(c, f"import sys; w = sys.stdout.buffer.write; {writer}") for _ in range(agents)]
            peak = before
            while not all(c.get_agent_status(a).is_terminal() for a in ids):
                peak = max(peak, rss_kib(server.proc.pid))
                time.sleep(0.05)
            peak = max(peak, rss_kib(server.proc.pid))
            for agent in ids:
                facts = c.read_output(agent, OUT, max_bytes=1)
                assert facts.end_offset == 10_000_000 and facts.first_offset == 0  # all of it, stored
        return (peak - before) * 1024
    finally:
        server.close()


@pytest.mark.parametrize("shape", ["two-byte lines", "1 MB lines", "no newline"])
def test_memory_stays_within_the_byte_bound(tmp_path, main_implementation, shape) -> None:
    # Agents writing 10 MB each at once: every line used to be a Python object (10 agents of 20 MB
    # of two-byte lines grew the server by 745-1,135 MiB). What one more agent costs, whatever its
    # lines, is at most its in-memory tail (the cap) and 64 KiB: measured as the difference
    # between 8 and 24 agents, so the server's own buffers (a few MiB, whatever the agents) cancel out.
    cap = 1 * MiB
    writer = {"two-byte lines": "w(b'a\\n' * 5_000_000)",
              "1 MB lines": "[w(b'x' * 999_999 + b'\\n') for _ in range(10)]",
              "no newline": "[w(b'y' * 1_000_000) for _ in range(10)]"}[shape]
    few = _peak_growth(tmp_path / "few", main_implementation, cap, writer, 8)
    many = _peak_growth(tmp_path / "many", main_implementation, cap, writer, 24)
    per_agent = (many - few) / 16
    print(f"{shape}: {per_agent / 1024:.0f} KiB per agent; {few / MiB:.1f} MiB with 8, {many / MiB:.1f} MiB with 24")
    assert per_agent <= cap + 64 * 1024, f"{shape}: {per_agent / 1024:.0f} KiB per agent ({few=}, {many=})"
    assert many <= 24 * (cap + 64 * 1024) + 8 * MiB, f"{shape}: grew by {many / MiB:.1f} MiB with 24 agents"


# -- exactly what was written, for as long as it is stored --


WRITER = ("import os, random, sys\n"
          "rnd = random.Random(SEED)\n"
          "for i in range(400):\n"
          "    block = rnd.randbytes(rnd.choice([1, 7, 100, 4000, 70_000]))\n"
          "    os.write(1 if i % 3 else 2, block)\n")


def expected(seed: int) -> dict[LogStreamType, bytes]:
    import random
    rnd = random.Random(seed)
    out = {OUT: bytearray(), ERR: bytearray()}
    for i in range(400):
        block = rnd.randbytes(rnd.choice([1, 7, 100, 4000, 70_000]))
        out[OUT if i % 3 else ERR] += block
    return {k: bytes(v) for k, v in out.items()}


def digests(streams: dict[LogStreamType, bytes]) -> dict[LogStreamType, str]:
    return {k: hashlib.sha256(v).hexdigest() for k, v in streams.items()}


def test_output_is_kept_exactly_after_the_end_after_retention_and_after_a_restart(tmp_path,
                                                                                 main_implementation) -> None:
    want = digests(expected(7))
    server = Server(tmp_path, main_implementation, "--retention", "1")
    with client(server) as c:
        agent = spawn_py(c, WRITER.replace("SEED", "7"))
        wait_ended(c, agent)
        assert digests(stored(c, agent)) == want  # after it finished: bytes exactly, non-UTF-8 and all
        until(lambda: agent not in [a.id for a in c.list_remote_agents()], 10)  # retention let it go
        assert c.get_agent_status(agent) == AgentStatus.COMPLETED  # still known, from the records
        assert digests(stored(c, agent)) == want
    assert server.close() == 0
    again = Server(tmp_path, main_implementation, "--retention", "1")  # the same state directory
    try:
        with client(again) as c:
            assert c.get_agent_status(agent) == AgentStatus.COMPLETED
            assert digests(stored(c, agent)) == want  # after a graceful restart
            page = c.query_agent_output(agent, ZmqOutputStream.STDOUT, limit=3)
            assert page.total_lines > 3 and len(page.lines) == 3 and page.has_more
    finally:
        again.close()


def test_a_server_killed_with_sigkill_leaves_its_output_and_records_whole(tmp_path, main_implementation) -> None:
    want = digests(expected(7))
    server = Server(tmp_path, main_implementation)
    pid = None
    try:
        with client(server) as c:
            done = spawn_py(c, WRITER.replace("SEED", "7"))
            wait_ended(c, done)
            running = spawn_py(c, "import os, time\nprint(os.getpid(), flush=True)\n"
                                  "for i in range(100): print(f'line {i}', flush=True)\ntime.sleep(120)\n")
            until(lambda: stored(c, running)[OUT].endswith(b"line 99\n"), 30)
            pid = int(stored(c, running)[OUT].split(b"\n", 1)[0])
        server.proc.kill()  # no goodbye: nothing is flushed or closed by the server
        server.close()
        # and its keeper too, with the agent (as a reboot would): there is nothing to adopt
        os.kill(int((server.state_dir / "keeper.lock").read_text()), signal.SIGKILL)
        os.killpg(pid, signal.SIGKILL)
        again = Server(tmp_path, main_implementation)  # the same state directory
        try:
            with client(again) as c:
                assert c.get_agent_status(done) == AgentStatus.COMPLETED
                assert digests(stored(c, done)) == want
                # the agent that ran is known, failed (lost), with what it wrote until the kill
                assert c.get_agent_status(running) == AgentStatus.FAILED
                assert stored(c, running)[OUT] == f"{pid}\n".encode() + b"".join(b"line %d\n" % i for i in range(100))
            assert "was running when the previous server stopped, and its keeper no longer holds it" in again.log()
        finally:
            again.close()
    finally:
        if pid is not None:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_the_directory_budget_deletes_the_oldest_finished_agents_then_old_segments(tmp_path,
                                                                                  main_implementation) -> None:
    budget = 3 * MiB
    server = Server(tmp_path, main_implementation, "--state-max-bytes", str(budget), "--log-max-bytes", "8MiB")

    def writes(char: str, lines: int) -> str:
        return f"import sys; [sys.stdout.buffer.write(b'{char}' * 99 + b'\\n') for _ in range({lines})]"

    def disk() -> int:
        return sum(p.stat().st_size for p in (server.state_dir / "agents").rglob("*") if p.is_file())

    try:
        with client(server) as c:
            first = []
            for _ in range(3):  # 3 MB in all: within the budget
                first.append(spawn_py(c, writes("x", 10_000)))
                wait_ended(c, first[-1])
            assert all(len(stored(c, a)[OUT]) == 1_000_000 for a in first)
            fourth = spawn_py(c, writes("y", 15_000))
            wait_ended(c, fourth)
            for gone in first[:2]:  # the two that ended first, deleted whole, records and all
                with pytest.raises(ServerError, match="Agent not found"):
                    c.get_agent_status(gone)
            assert stored(c, first[2])[OUT] == (b"x" * 99 + b"\n") * 10_000
            assert stored(c, fourth)[OUT] == (b"y" * 99 + b"\n") * 15_000
            assert disk() <= budget
            # a live agent bigger than the budget: the finished ones go, then its own oldest segments
            big = spawn_py(c, writes("z", 60_000))
            wait_ended(c, big)
            for gone in (first[2], fourth):
                with pytest.raises(ServerError, match="Agent not found"):
                    c.get_agent_status(gone)
            facts = c.read_output(big, OUT, max_bytes=1)
            assert facts.end_offset == 6_000_000 and facts.first_offset > 0
            data = stored(c, big)[OUT]
            assert facts.first_offset % 100 == 0  # whole lines (whole chunks, whole segments) went
            assert data == (b"z" * 99 + b"\n") * ((6_000_000 - facts.first_offset) // 100)
            assert disk() <= budget
    finally:
        server.close()


def test_a_line_without_end_is_split_and_counted_not_dropped(tmp_path, main_implementation) -> None:
    # 50 MB without a newline used to answer total_lines=1, has_more=false, 46 MB silently gone
    server = Server(tmp_path, main_implementation)
    try:
        with client(server) as c:
            agent = spawn_py(c, "import sys; [sys.stdout.buffer.write(b'z' * 1_000_000) for _ in range(50)]")
            wait_ended(c, agent)
            facts = c.read_output(agent, OUT, max_bytes=1)
            assert (facts.end_offset, facts.first_offset) == (50_000_000, 0)
            assert facts.end_line == -(-50_000_000 // 65536)  # lines of at most 64 KiB, and the rest
            page = c.query_agent_output(agent, ZmqOutputStream.STDOUT, offset=facts.end_line - 1)
            assert page.total_lines == facts.end_line and page.lines == ["z" * (50_000_000 % 65536)]
            assert hashlib.sha256(stored(c, agent)[OUT]).hexdigest() == hashlib.sha256(b"z" * 50_000_000).hexdigest()
    finally:
        server.close()


# -- follows: everything, once, in order --


NUMBERED = ("import sys, time\n"
            "time.sleep(DELAY)\n"
            "for i in range(3000):\n"
            "    print(f'line {i:05d}', flush=True)\n"
            "    if i % 200 == 0: time.sleep(0.05)\n")


def test_follows_before_during_and_after_get_every_line_once(tmp_path, main_implementation) -> None:
    server = Server(tmp_path, main_implementation)
    lines = [f"line {i:05d}" for i in range(3000)]
    try:
        with client(server) as c:
            agent = spawn_py(c, NUMBERED.replace("DELAY", "0.5"))
            results: dict[str, list[str]] = {}

            def follow(name: str, delay: float) -> None:
                time.sleep(delay)
                with client(server) as own:
                    text = b"".join(chunk.data for chunk in own.follow_logs(agent))
                results[name] = text.decode().splitlines()

            threads = [threading.Thread(target=follow, args=(name, delay)) for name, delay in
                       (("before", 0.0), ("during", 0.8))]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            follow("after", 0.0)
        for name in ("before", "during", "after"):
            assert results[name] == lines, name
    finally:
        server.close()


def _one_of_two_wanted(server: Server, c, tmp_path, lines: int, topic_of, counter: str):
    """Two agents that print *lines* lines once a gate opens; a SUB subscribed to *topic_of* the
    first: the first's id, the second's, the messages the SUB got (each checked to be on the
    first's topic), and how much health's *counter* grew meanwhile."""
    import zmq

    from descartes_fast.wire import codec
    from descartes_fast.wire.frames import parse_pub_frame

    gate = tmp_path / "go"
    script = (f"import os, time\nwhile not os.path.exists({str(gate)!r}):\n    time.sleep(0.01)\n"
              f"for i in range({lines}):\n    print(f'line {{i:05d}}', flush=True)\n")
    wanted, unwanted = spawn_py(c, script, "wanted"), spawn_py(c, script, "unwanted")
    sub = server.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, topic_of(wanted))
    time.sleep(0.3)  # the subscription reaches the server
    before = int(c.health_check().metadata[counter])
    gate.touch()
    wait_ended(c, wanted)
    wait_ended(c, unwanted)
    got = []
    while sub.poll(500):
        topic, payload = parse_pub_frame(sub.recv())
        assert topic == topic_of(wanted)
        got.append(codec.decode(payload))
    sub.close()
    return wanted, unwanted, got, int(c.health_check().metadata[counter]) - before


def test_log_chunks_nobody_subscribes_to_are_not_sent_and_a_subscribers_are(tmp_path, main_implementation) -> None:
    from descartes_fast.wire.frames import log_topic

    server = Server(tmp_path, main_implementation)
    try:
        with client(server) as c:
            wanted, unwanted, got, unsent = _one_of_two_wanted(server, c, tmp_path, 2000, log_topic,
                                                               "log_chunks_unsent")
            stored = b"".join(chunk.data for chunk in c.stored_output(unwanted))
        expected = "".join(f"line {i:05d}\n" for i in range(2000)).encode()
        assert [m.sequence for m in got] == list(range(len(got)))  # every chunk of the wanted one, live
        assert b"".join(m.data for m in got) == expected and {m.agent_id for m in got} == {wanted}
        assert unsent >= 1  # the other's were not sent (nobody wanted them), and are stored all the same
        assert stored == expected
    finally:
        server.close()


def test_each_form_of_log_chunks_is_written_only_for_its_subscribers_and_both_say_the_same(
        tmp_path, main_implementation) -> None:
    import zmq

    from descartes_fast.wire import codec
    from descartes_fast.wire.frames import log_topic, parse_pub_frame
    from descartes_fast.wire.logchunks import bin_topic, decode_chunk

    server = Server(tmp_path, main_implementation)
    script = ("import os, sys, time\nwhile not os.path.exists(sys.argv[-1]):\n    time.sleep(0.01)\n"
              "for i in range(2000):\n    print(f'line {i:05d}', flush=True)\n")
    expected = "".join(f"line {i:05d}\n" for i in range(2000)).encode()

    def counts(c) -> tuple[int, int]:
        metadata = c.health_check().metadata
        return int(metadata["log_chunks_rust_form"]), int(metadata["log_chunks_bin_form"])

    def received(sub, decode) -> list:
        got = []
        while sub.poll(500):
            got.append(decode(parse_pub_frame(sub.recv())[1]))
        sub.close()
        return got

    try:
        with client(server) as c:
            for forms in (("rust", "bin"), ("bin",), ("everything",)):
                gate = tmp_path / "-".join(forms)
                agent = spawn_py(c, script.replace("sys.argv[-1]", repr(str(gate))), "-".join(forms))
                subs = {}
                for form in forms:
                    subs[form] = server.socket(zmq.SUB)
                    subs[form].setsockopt(zmq.SUBSCRIBE, {"rust": log_topic(agent), "bin": bin_topic(agent),
                                                          "everything": b""}[form])
                time.sleep(0.3)  # the subscriptions reach the server
                before = counts(c)
                gate.touch()
                wait_ended(c, agent)
                got = {form: [m for m in received(sub, decode_chunk if form == "bin" else codec.decode)
                              if isinstance(m, LogStreamMessage)] for form, sub in subs.items()}
                rust, binary = (after - was for after, was in zip(counts(c), before))
                for form, messages in got.items():
                    assert [m.sequence for m in messages] == list(range(len(messages))), form
                    assert b"".join(m.data for m in messages) == expected, form
                    assert {m.agent_id for m in messages} == {agent}, form
                if forms == ("rust", "bin"):
                    assert [(m.sequence, m.data) for m in got["rust"]] == [(m.sequence, m.data) for m in got["bin"]]
                    assert rust == binary == len(got["bin"])
                elif forms == ("bin",):  # nobody wanted the Rust form: it was not encoded
                    assert rust == 0 and binary == len(got["bin"])
                else:  # a subscriber to everything is not taken to want the bin form
                    assert rust == len(got["everything"]) and binary == 0
    finally:
        server.close()


def test_status_updates_nobody_subscribes_to_are_not_sent_and_a_subscribers_are(tmp_path,
                                                                                 main_implementation) -> None:
    from descartes_fast.wire.frames import status_topic

    server = Server(tmp_path, main_implementation)
    try:
        with client(server) as c:
            wanted, _, got, unsent = _one_of_two_wanted(server, c, tmp_path, 0, status_topic, "status_updates_unsent")
        assert {m.agent_id for m in got} == {wanted}
        assert got and got[-1].status == AgentStatus.COMPLETED and got[-1].data["exit_code"] == 0
        assert unsent >= 1  # the other's end was not sent: nobody wanted it
    finally:
        server.close()


def test_a_slow_follower_loses_nothing_though_live_chunks_are_dropped_on_the_way(tmp_path,
                                                                                  main_implementation) -> None:
    # live chunks are dropped at the server (a PUB queue of 20 messages) and in the client (a
    # subscription queue of 10): the follower sees the gaps in the sequence numbers and reads the
    # missing chunks from the store, so it still gets every line once and in order
    server = Server(tmp_path, main_implementation, "--pub-buffer", str(20 * MAX_EVENT_BYTES))
    script = ("import sys, time\n"
              "for i in range(400):\n"
              "    sys.stdout.write(''.join(f'line {i:03d}-{j:03d}\\n' for j in range(100)))\n"
              "    sys.stdout.flush(); time.sleep(0.002)\n")

    async def follow() -> tuple[bytes, int]:
        config = ZmqRunnerConfig(endpoint=server.bind, pub_endpoint=server.pub, enable_heartbeat=False,
                                 subscription_queue=10)
        async with AsyncClient(config) as c:
            agent = (await c.spawn_remote(AgentConfig(name="w", model_backend="py", task=script))).id
            replay = await c.follow_logs(agent)
            got = []
            async for chunk in replay:
                got.append(chunk.data)
                await asyncio.sleep(0.004)  # slower than the agent writes
            assert replay.logs is not None
            return b"".join(got), replay.logs.dropped

    try:
        got, dropped_here = asyncio.run(follow())
        want = "".join(f"line {i:03d}-{j:03d}\n" for i in range(400) for j in range(100)).encode()
        assert got == want
        assert dropped_here > 0  # the live path did lose chunks: the store gave them back
    finally:
        server.close()


def test_a_follow_right_after_spawn_gets_a_short_agents_output(tmp_path, main_implementation) -> None:
    # the README's spawn_remote + follow_logs used to miss the first lines of a short agent
    server = Server(tmp_path, main_implementation)
    try:
        with client(server) as c:
            info = c.spawn_remote(AgentConfig(name="short", model_backend="sh", task="echo hello; echo world"))
            got = b"".join(chunk.data for chunk in c.follow_logs(info.id))
            assert got == b"hello\nworld\n"
            assert b"".join(chunk.data for chunk in c.follow_logs(info.id)) == got  # and again, afterwards
            late = [chunk.sequence for chunk in c.follow_logs(info.id, from_sequence=1)]
            assert late == list(range(1, len(late) + 1)) or late == []
    finally:
        server.close()


def test_follow_from_a_line_and_from_now(tmp_path, main_implementation) -> None:
    server = Server(tmp_path, main_implementation)
    try:
        with client(server) as c:
            agent = spawn_py(c, "import sys, time\n"
                                "[print(f'a{i}', flush=True) for i in range(10)]\n"
                                "time.sleep(1.5)\n"
                                "[print(f'b{i}', flush=True) for i in range(3)]\n")
            until(lambda: c.read_output(agent, OUT, max_bytes=1).end_line >= 10)
            from_now = b"".join(ch.data for ch in c.follow_logs(agent, from_now=True, streams=ZmqOutputStream.STDOUT))
            assert from_now.decode().split() == ["b0", "b1", "b2"]
            from_line = b"".join(ch.data for ch in c.follow_logs(agent, from_line=8))
            assert from_line.decode().split() == ["a8", "a9", "b0", "b1", "b2"]
    finally:
        server.close()


# -- no read holds the event loop --


PROBE = """
import sys, time, zmq
from descartes_fast.wire import codec
from descartes_fast.wire.schema import HealthCheckRequest
sock = zmq.Context().socket(zmq.REQ)
sock.connect(sys.argv[1])
request = codec.encode(HealthCheckRequest("probe"))
print("ready", flush=True)
out = []
while True:
    started = time.perf_counter()
    sock.send(request)
    sock.recv()
    out.append(time.perf_counter() - started)
    time.sleep(0.002)
    if len(out) % 50 == 0 and __import__("select").select([sys.stdin], [], [], 0)[0]:
        break
print(" ".join(f"{x:.6f}" for x in out), flush=True)
"""


READER = """
import json, sys, uuid
from descartes_fast.client import Client
from descartes_fast.wire.schema import ZmqOutputStream
agent = uuid.UUID(sys.argv[3])
with Client(endpoint=sys.argv[1], pub_endpoint=sys.argv[2], enable_heartbeat=False, request_timeout_secs=60) as c:
    read = sum(len(ch.data) for ch in c.stored_output(agent))
    query = c.query_agent_output(agent, ZmqOutputStream.STDOUT, filter="9999", limit=5)
    page = c.query_agent_output(agent, ZmqOutputStream.STDOUT, offset=1_000_000, limit=100)
print(json.dumps({"read": read, "matching": query.total_lines, "page": len(page.lines)}))
"""


def health_latencies(server: Server, action: Callable[[], object]) -> list[float]:
    """Round trips of health checks from a process of their own (raw pyzmq) while *action* runs."""
    probe = subprocess.Popen([PY, "-P", "-c", PROBE, server.bind], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
    assert probe.stdout is not None and probe.stdin is not None
    assert probe.stdout.readline().strip() == "ready"
    try:
        action()
    finally:
        probe.stdin.write("stop\n")
        probe.stdin.flush()
        out, _ = probe.communicate(timeout=60)
    return [float(x) for x in out.split()]


def p99(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=100)[98] if len(samples) >= 100 else max(samples)


def test_a_backtracking_filter_is_answered_at_once_and_back_references_are_refused(tmp_path,
                                                                                   main_implementation) -> None:
    # with Python's re, "(a+)+$" on one line of 27 a's and a '!' held the server 8 s (doubling per a)
    server = Server(tmp_path, main_implementation)
    try:
        with client(server) as c:
            agent = spawn_py(c, "[print('a' * 40 + '!') for _ in range(2000)]")
            wait_ended(c, agent)
            started = time.monotonic()
            page = c.query_agent_output(agent, ZmqOutputStream.STDOUT, filter="(a+)+$", limit=10)
            assert (page.lines, page.total_lines, page.has_more) == ([], 0, False)
            page = c.query_agent_output(agent, ZmqOutputStream.STDOUT, filter="(a+)+!$", limit=3)
            assert (page.lines, page.total_lines) == (["a" * 40 + "!"] * 3, 2000)
            assert time.monotonic() - started < 5  # (backtracking: 2**40 steps a line)
            refused = r"invalid filter regex '(a)\\1': invalid escape sequence: \1 (filters are RE2 expressions"
            with pytest.raises(ServerError, match=re.escape(refused)):
                c.query_agent_output(agent, ZmqOutputStream.STDOUT, filter=r"(a)\1")
            with pytest.raises(ServerError, match="invalid perl operator: \\(\\?="):
                c.query_agent_output(agent, ZmqOutputStream.STDOUT, filter="(?=a)")
            assert c.health_check().healthy
        assert "Error parsing" not in server.log()  # the client's mistake is not the server's log
    finally:
        server.close()


def test_big_reads_and_queries_do_not_delay_health_checks(tmp_path, main_implementation) -> None:
    server = Server(tmp_path, main_implementation)
    try:
        with client(server) as c:
            agent = spawn_py(c, "import sys\nw = sys.stdout.buffer.write\n"
                                "[w(b'%08d some output of an agent at work\\n' % i) for i in range(1_300_000)]")
            wait_ended(c, agent, 120)
            assert c.read_output(agent, OUT, max_bytes=1).end_offset > 50 * MiB
            results: dict[str, int] = {}

            def read_and_query() -> None:
                # in a process of its own, at the lowest priority: what the probe measures is the server,
                # not three busy processes sharing this machine's two cores
                proc = subprocess.run(["nice", "-n", "19", PY, "-P", "-c", READER, server.bind, server.pub, str(agent)],
                                      capture_output=True, text=True, timeout=300)
                assert proc.returncode == 0, proc.stderr
                results.update(json.loads(proc.stdout))

            # This machine is shared: a run can be disturbed from outside (the idle p99 alone varies from 2
            # to 6 ms here). The server must keep the health checks within 5 ms of their idle latency in
            # one of five runs (a loop held by a read or a query for longer would fail all five).
            attempts = []
            for _ in range(5):
                idle = health_latencies(server, lambda: time.sleep(1.0))
                busy = health_latencies(server, read_and_query)
                attempts.append((p99(busy), p99(idle)))
                if p99(busy) <= p99(idle) + 0.005:
                    break
        matching = sum(1 for i in range(1_300_000) if "9999" in f"{i:08d}")
        assert results == {"read": 1_300_000 * 41, "matching": matching, "page": 100}
        shown = ", ".join(f"{b * 1e3:.2f} ms (idle {i * 1e3:.2f} ms)" for b, i in attempts)
        print("health p99 while reading:", shown)
        assert any(b <= i + 0.005 for b, i in attempts), f"health p99 while reading: {shown}"
    finally:
        server.close()
