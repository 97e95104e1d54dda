"""AsyncClient and Client against the real server binary, and against stub servers."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
import uuid

import pytest
import zmq
from support.server import Server

from descartes_fast.client import (
    AsyncClient,
    Client,
    NotConnectedError,
    RequestTimeoutError,
    ServerError,
    ZmqRunnerConfig,
)
from descartes_fast.wire import codec
from descartes_fast.wire.frames import log_topic, pub_frame
from descartes_fast.wire.schema import (
    AgentConfig,
    AgentStatus,
    BatchControlResponse,
    CommandResponse,
    ControlCommand,
    ControlCommandType,
    HealthCheckRequest,
    HealthCheckResponse,
    LogStreamMessage,
    LogStreamType,
    StatusUpdateType,
    ZmqOutputStream,
)

C = ControlCommandType


@pytest.fixture
def server(tmp_path, main_implementation):
    srv = Server(tmp_path, main_implementation)
    yield srv
    srv.close()


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def client_for(server: Server, **overrides) -> AsyncClient:
    return AsyncClient(ZmqRunnerConfig(endpoint=server.bind, pub_endpoint=server.pub, request_timeout_secs=10,
                                       **overrides))


def test_every_method(server) -> None:
    async def main():
        async with client_for(server) as client:
            assert client.is_connected()
            health = await client.health_check()
            assert health.healthy and health.metadata["server_id"] == "test-server"
            info = await client.spawn_remote(AgentConfig(name="c", model_backend="cat"))
            assert info.status == AgentStatus.RUNNING and info.name == "c"
            assert await client.get_agent_status(info.id) == AgentStatus.RUNNING
            assert (await client.get_remote_agent(info.id)).id == info.id
            assert await client.get_remote_agent(uuid.uuid4()) is None
            assert await client.write_agent_stdin(info.id, "text\n") == 5
            assert await client.write_agent_stdin(info.id, b"\xff\xfe bytes\n") == 9
            assert await client.pause_agent(info.id) == "cooperative"
            await client.resume_agent(info.id)
            assert await client.pause_agent(info.id, force=True) == "forced"
            await client.resume_agent(info.id)
            for _ in range(200):  # cat echoes both lines back
                if (await client.query_agent_output(info.id)).total_lines >= 2:
                    break
                await asyncio.sleep(0.05)
            assert await client.read_agent_stdout(info.id) == b"text\n"
            assert await client.read_agent_stdout(info.id) == b"\xff\xfe bytes\n"  # exact bytes come back
            assert await client.read_agent_stderr(info.id) is None
            result = await client.send_action_to_agent(info.id, "echo", {"k": [1, 2]})
            assert result == {"action": "echo", "result": {"k": [1, 2]}}
            out = await client.query_agent_output(info.id, ZmqOutputStream.STDOUT, filter="pause", limit=1)
            assert out.lines == ['{"type":"pause","action":"pause"}'] and out.has_more
            sleeper = await client.spawn_remote(AgentConfig(model_backend="sh", task="sleep 30"))
            assert [a.id for a in await client.list_remote_agents(limit=1)] == [info.id]
            assert len(await client.list_remote_agents(AgentStatus.RUNNING)) == 2
            batch = await client.batch_control([info.id, sleeper.id], C.GET_STATUS)
            assert isinstance(batch, BatchControlResponse) and batch.successful == 2
            await client.stop_agent(sleeper.id)
            await client.kill_agent(info.id)
            assert await client.get_agent_status(info.id) == AgentStatus.TERMINATED
            with pytest.raises(ServerError, match="Agent not found"):
                await client.get_agent_status(uuid.uuid4())
            with pytest.raises(ServerError, match="Unsupported model backend"):
                await client.spawn_remote(AgentConfig(model_backend="anthropic"))
        assert not client.is_connected()
        with pytest.raises(NotConnectedError):
            await client.health_check()
    run(main())


def test_a_thousand_concurrent_requests(server) -> None:
    async def main():
        async with client_for(server) as client:
            agent = (await client.spawn_remote(AgentConfig(model_backend="sh", task="sleep 30"))).id
            calls = [client.get_agent_status(agent) if i % 2 else client.health_check() for i in range(1000)]
            replies = await asyncio.gather(*calls)
            assert all(r == AgentStatus.RUNNING for r in replies[1::2])
            assert all(isinstance(r, HealthCheckResponse) for r in replies[0::2])
            await client.kill_agent(agent)
    run(main())


def test_status_and_log_subscriptions_receive_everything_in_order(server) -> None:
    async def main():
        async with client_for(server) as client:
            statuses = await client.subscribe_status_updates()
            info = await client.spawn_remote(AgentConfig(model_backend="demo", task="t",
                                                         environment={"AGENT_EXTRA_ARGS": "--steps 4 --interval 0.15"}))
            logs = await client.stream_logs(info.id)
            await client.pause_agent(info.id)
            await asyncio.sleep(0.3)
            await client.resume_agent(info.id)
            seen = []
            async for update in statuses:
                if update.agent_id == info.id:
                    seen.append((update.update_type, update.status))
                    if update.status == AgentStatus.COMPLETED:
                        break
            assert seen == [(StatusUpdateType.STATUS_CHANGED, AgentStatus.RUNNING),
                            (StatusUpdateType.STATUS_CHANGED, AgentStatus.PAUSED),
                            (StatusUpdateType.STATUS_CHANGED, AgentStatus.RUNNING),
                            (StatusUpdateType.COMPLETED, AgentStatus.COMPLETED)]
            chunks = []
            while not chunks or b'"done"' not in chunks[-1].data:
                chunks.append(await asyncio.wait_for(logs.__anext__(), 5))
            assert all(isinstance(c, LogStreamMessage) for c in chunks)
            sequences = [c.sequence for c in chunks if c.stream_type == "stdout"]
            assert sequences == list(range(sequences[0], sequences[0] + len(sequences)))
            await logs.aclose()
            await statuses.aclose()
    run(main())


class LateStub:
    """A ROUTER that answers the first request late and every other one at once."""

    def __init__(self, delay: float) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.delay = delay
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def close(self) -> None:
        """Stop the thread first: a socket must not be closed under the thread using it."""
        self.stopped.set()
        self.thread.join(5)
        self.ctx.destroy(linger=0)

    def serve(self) -> None:
        first = True
        while not self.stopped.is_set():
            if not self.sock.poll(50):
                continue
            frames = self.sock.recv_multipart()
            request = codec.decode(frames[-1])
            if first and request.request_id != "ok" and not isinstance(request, HealthCheckRequest):
                time.sleep(self.delay)
                first = False
            frames[-1] = codec.encode(CommandResponse(request.request_id, uuid.UUID(int=0), True,
                                                      AgentStatus.RUNNING, {"for": request.request_id}, None)
                                      if isinstance(request, ControlCommand) else
                                      HealthCheckResponse(request.request_id, True, "1.0.0"))
            self.sock.send_multipart(frames)


def test_a_publisher_faster_than_decoding_does_not_starve_the_clients_loop(server, tmp_path) -> None:
    # a publisher of its own process floods 16 KiB log chunks (decoding one costs far more than
    # sending it); the client once decoded for as long as frames were there, and nothing else on
    # its loop ran
    endpoint = f"ipc://{tmp_path}/flood"  # (the server's own is pub)
    agent = uuid.uuid4()
    frame = pub_frame(log_topic(agent), codec.encode(LogStreamMessage(agent, LogStreamType.STDOUT,
                                                                      b"x" * 16383 + b"\n", 1, 0)))
    (tmp_path / "frame").write_bytes(frame)
    flood = subprocess.Popen([sys.executable, "-c",
                              f"import time, zmq\nframe = open({str(tmp_path / 'frame')!r}, 'rb').read()\n"
                              f"pub = zmq.Context().socket(zmq.PUB)\npub.bind({endpoint!r})\n"
                              f"end = time.monotonic() + 15\n"  # (a starved client sees the end of it)
                              f"while time.monotonic() < end:\n    pub.send(frame)\n"])

    async def main() -> tuple[int, int]:
        config = ZmqRunnerConfig(endpoint=server.bind, pub_endpoint=endpoint, request_timeout_secs=10)
        async with AsyncClient(config) as client:
            assert client.server_metadata is not None
            client.server_metadata["log_forms"] = "rust"  # as from a server with the Rust form only (slow to decode)
            logs = await client.stream_logs(agent)
            while logs.queue.empty():  # the flood is heard
                await asyncio.sleep(0.01)
            ticks, started, heard = 0, time.monotonic(), logs.queue.qsize()
            while time.monotonic() - started < 2.0:
                await asyncio.sleep(0.01)  # the caller's own work, beside the flood
                ticks += 1
            return ticks, logs.queue.qsize() - heard

    try:
        ticks, heard = run(main())
    finally:
        flood.kill()
        flood.wait()
    assert ticks >= 20, ticks  # about 200 without the flood; 1 when the loop was starved
    assert heard > 0  # and the flood was heard meanwhile


def test_a_late_reply_is_not_taken_for_the_next_call() -> None:
    stub = LateStub(delay=0.6)

    async def main():
        client = AsyncClient(ZmqRunnerConfig(endpoint=f"tcp://127.0.0.1:{stub.port}", enable_heartbeat=False,
                                             request_timeout_secs=0.2))
        await client.connect()
        assert client.is_connected()
        with pytest.raises(RequestTimeoutError):
            await client.get_agent_status(uuid.UUID(int=1))
        assert not client.is_connected()  # at once, not at the next heartbeat
        client.config.request_timeout_secs = 5
        await asyncio.sleep(0.7)  # the late reply arrives meanwhile and must be dropped
        reply = await client._command(uuid.UUID(int=1), C.GET_STATUS)
        assert reply.data["for"] == reply.request_id
        assert client.is_connected()  # a reply says it is there again
        await client.disconnect()
    try:
        run(main())
    finally:
        stub.close()


def test_rust_rep_framing_stub() -> None:
    """A server that speaks exactly as the Rust REP one: one request at a time, [b"", payload]."""
    ctx = zmq.Context()
    rep = ctx.socket(zmq.REP)
    port = rep.bind_to_random_port("tcp://127.0.0.1")

    def serve():
        for _ in range(3):
            request = codec.decode(rep.recv())
            rep.send(codec.encode(HealthCheckResponse(request.request_id, True, "1.0.0", 1, 0, None)))
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()

    async def main():
        client = AsyncClient(ZmqRunnerConfig(endpoint=f"tcp://127.0.0.1:{port}", enable_heartbeat=False))
        await client.connect(timeout=5)
        assert (await client.health_check()).uptime_secs == 1
        assert (await client.health_check()).healthy
        await client.disconnect()
    run(main())
    thread.join(5)
    ctx.destroy(linger=0)


def test_reconnects_after_a_server_restart(tmp_path, main_implementation) -> None:
    srv = Server(tmp_path, main_implementation)

    async def main():
        client = AsyncClient(ZmqRunnerConfig(endpoint=srv.bind, heartbeat_interval_secs=0.2, request_timeout_secs=0.5,
                                             connection_timeout_secs=0.5, reconnect_delay_secs=0.2,
                                             max_reconnect_attempts=50))
        await client.connect()
        assert client.is_connected()
        srv.close()
        deadline = time.monotonic() + 10
        while client.is_connected():
            assert time.monotonic() < deadline, "is_connected() stayed true with the server gone"
            await asyncio.sleep(0.05)
        restarted = await asyncio.to_thread(Server, tmp_path, main_implementation)
        try:
            deadline = time.monotonic() + 15
            while not client.is_connected():
                assert time.monotonic() < deadline, "the client did not recover"
                await asyncio.sleep(0.05)
            assert (await client.health_check()).healthy
        finally:
            await client.disconnect()
            restarted.close()
    run(main())


def test_sync_client_from_several_threads(server) -> None:
    with Client(endpoint=server.bind, pub_endpoint=server.pub) as client:
        agent = client.spawn_remote(AgentConfig(model_backend="sh", task="sleep 30"))
        errors: list[BaseException] = []

        def worker():
            try:
                for _ in range(50):
                    assert client.get_agent_status(agent.id) == AgentStatus.RUNNING
            except BaseException as exc:  # collected for the assertion below
                errors.append(exc)
        threads = [threading.Thread(target=worker) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors
        events = client.subscribe_status_updates(agent.id)
        client.kill_agent(agent.id)
        update = next(events)
        assert update.status == AgentStatus.TERMINATED
        events.close()
        assert client.is_connected()
    assert not client.is_connected()


def test_client_has_every_async_method_with_its_parameters() -> None:
    import inspect
    names = [n for n, m in vars(AsyncClient).items() if not n.startswith("_")
             and (inspect.iscoroutinefunction(m) or inspect.isasyncgenfunction(m))]
    assert len(names) >= 20
    for name in names:
        assert name in vars(Client), name
        ours, theirs = inspect.signature(getattr(Client, name)), inspect.signature(getattr(AsyncClient, name))
        assert ours.parameters == theirs.parameters, name
        # a coroutine's result, or a plain iterator where the async method gives an async one
        assert ours.return_annotation == theirs.return_annotation or "Iterator" in ours.return_annotation, name


def test_overrides_do_not_change_the_callers_config() -> None:
    config = ZmqRunnerConfig(endpoint="tcp://127.0.0.1:1")
    client = AsyncClient(config, request_timeout_secs=2)
    assert client.config.request_timeout_secs == 2 and config.request_timeout_secs == 30
    with pytest.raises(TypeError):
        AsyncClient(config, no_such_setting=1)
