"""descartes_fast.fleet against real server binaries on this machine (ipc endpoints; the tests
across network namespaces are in test_netns_fleet.py): placement, addressing, fleet-wide list,
status, batch, wait and follow, a server killed and restarted, and the fleet file's errors."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.server import Server, server_env

from descartes_fast.client.config import ZmqRunnerConfig
from descartes_fast.fleet import (
    AgentNotFoundError,
    AmbiguousAgentError,
    Fleet,
    FleetFileError,
    NoServerError,
    ServerSpec,
    ServerState,
    SyncFleet,
)
from descartes_fast.fleet.servers import from_env, load
from descartes_fast.wire.schema import AgentConfig, ControlCommandType

BEAT = "0.3"


def start(tmp_path: Path, name: str, implementation: str, *flags: str) -> Server:
    (tmp_path / name).mkdir(exist_ok=True)
    return Server(tmp_path / name, implementation, "--heartbeat-interval", BEAT, "--server-id", name, *flags)


def spec(server: Server, name: str) -> ServerSpec:
    return ServerSpec(name, server.bind, server.pub)


def config() -> ZmqRunnerConfig:
    return ZmqRunnerConfig(request_timeout_secs=5, connection_timeout_secs=5)


def sleeper(name: str = "") -> AgentConfig:
    return AgentConfig(name=name, model_backend="sh", task="sleep 30")


def writer(lines: int, tag: str) -> AgentConfig:
    return AgentConfig(name=tag, model_backend="py",
                       task=f"import sys\nfor i in range({lines}): sys.stdout.write('{tag} %d\\n' % i)")


@pytest.fixture
def pair(tmp_path: Path, main_implementation: str):
    servers = [start(tmp_path, "a", main_implementation, "--labels", "zone=a,gpu=a100", "--max-agents", "6"),
               start(tmp_path, "b", main_implementation, "--labels", "zone=b", "--max-agents", "4")]
    try:
        yield servers
    finally:
        for s in servers:
            s.close()


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 120))


def test_placement_spreads_by_load_and_honours_labels_and_backends(pair) -> None:
    a, b = pair

    async def go():
        async with Fleet([spec(a, "a"), spec(b, "b")], config()) as fleet:
            assert {v.name: v.state for v in fleet.servers()} == {"a": ServerState.UP, "b": ServerState.UP}
            placed = [(await fleet.spawn(sleeper())).server for _ in range(4)]
            assert sorted(placed) == ["a", "a", "b", "b"], placed  # the lowest share of slots in use first
            gpu = [(await fleet.spawn(sleeper(), labels={"gpu": "a100"})).server for _ in range(2)]
            assert gpu == ["a", "a"]
            with pytest.raises(NoServerError, match=r"a: lacks label.*zone=c.*b: lacks label"):
                await fleet.spawn(sleeper(), labels={"zone": "c"})
            with pytest.raises(NoServerError, match="does not offer backend 'nope'"):
                await fleet.spawn(AgentConfig(name="", model_backend="nope", task="x"))
            for _ in range(2):
                assert (await fleet.spawn(sleeper(), server="b")).server == "b"  # b: 4 of 4 now
            for _ in range(20):
                await asyncio.sleep(0.1)  # (after a heartbeat too)
            assert (await fleet.spawn(sleeper())).server == "a"  # b is full
            agents = await fleet.agents()
            assert len(agents) == 9 and {x.server for x in agents} == {"a", "b"}
            done = await fleet.batch([x.id for x in agents], ControlCommandType.KILL)
            assert all(r.success for _s, r in done) and [s for s, _r in done] == [x.server for x in agents]
            ended = await fleet.wait([x.id for x in agents], timeout=30)
            assert {f["status"] for f in ended.values()} == {"terminated"}
    run(go())


def test_agents_are_found_by_id_prefix_or_name(pair) -> None:
    a, b = pair

    async def go():
        async with Fleet([spec(a, "a"), spec(b, "b")], config()) as fleet:
            one = await fleet.spawn(sleeper("alpha"), server="a")
            two = await fleet.spawn(sleeper("beta"), server="b")
            await fleet.spawn(sleeper("twin"), server="a")
            await fleet.spawn(sleeper("twin"), server="b")
            assert (await fleet.locate(one.id))[1:] == (one.id, "a")
            assert (await fleet.locate(str(two.id)[:8]))[1:] == (two.id, "b")
            assert (await fleet.locate("beta"))[1:] == (two.id, "b")
            with pytest.raises(AmbiguousAgentError, match="'twin' fits 2 agents"):
                await fleet.locate("twin")
            with pytest.raises(AgentNotFoundError, match="no server of the fleet knows an agent 'gamma'"):
                await fleet.locate("gamma")
            # an agent spawned by another client is found too (the lists are read again)
            other = a.spawn("sh", "sleep 30")
            assert (await fleet.locate(other))[1:] == (other, "a")
            status = await fleet.status("beta")
            assert status["server"] == "b" and status["status"] == "running" and status["name"] == "beta"
            health = await fleet.health()
            assert set(health) == {"a", "b"} and all(h.healthy for h in health.values())
    run(go())


def test_a_follow_across_the_fleet_gets_every_line_once(pair) -> None:
    a, b = pair

    async def go():
        async with Fleet([spec(a, "a"), spec(b, "b")], config()) as fleet:
            got: dict[str, bytearray] = {}

            async def follow_all() -> None:
                async for item in fleet.follow():
                    got.setdefault(f"{item.server}/{item.name}", bytearray()).extend(item.chunk.data)

            task = asyncio.create_task(follow_all())
            await asyncio.sleep(0.5)
            for i in range(4):
                await fleet.spawn(writer(20_000, f"w{i}"))
            ids = [x.id for x in await fleet.agents()]
            await fleet.wait(ids, timeout=60)
            want = {f"w{i}": b"".join(f"w{i} {n}\n".encode() for n in range(20_000)) for i in range(4)}
            for _ in range(100):
                if {k.split("/")[1]: bytes(v) for k, v in got.items()} == want:
                    break
                await asyncio.sleep(0.1)
            task.cancel()
            seen = {k.split("/")[1]: hashlib.sha256(v).hexdigest() for k, v in got.items()}
            assert seen == {k: hashlib.sha256(v).hexdigest() for k, v in want.items()}
            assert {k.split("/")[0] for k in got} == {"a", "b"}
    run(go())


def test_a_killed_server_is_unreachable_then_back_with_its_agents(tmp_path, main_implementation) -> None:
    a = start(tmp_path, "a", main_implementation)
    b = start(tmp_path, "b", main_implementation)
    servers = [a, b]

    async def go():
        async with Fleet([spec(a, "a"), spec(b, "b")], config()) as fleet:
            on_a = await fleet.spawn(sleeper("on-a"), server="a")
            on_b = await fleet.spawn(sleeper("on-b"), server="b")
            states = []

            async def watch() -> None:
                async for event in fleet.events():
                    if event.server_state is not None:
                        states.append((event.server, event.server_state))

            watcher = asyncio.create_task(watch())
            a.kill9()  # its agents stay with its keeper
            for _ in range(50):
                if fleet.servers()[0].state == ServerState.UNREACHABLE:
                    break
                await asyncio.sleep(0.1)
            assert fleet.servers()[0].state == ServerState.UNREACHABLE
            shown = {x.info.name: x.status for x in await fleet.agents()}
            assert shown == {"on-a": "unreachable", "on-b": "running"}
            assert (await fleet.spawn(sleeper())).server == "b"  # the rest carries on
            servers[0] = await asyncio.to_thread(start, tmp_path, "a", main_implementation)
            for _ in range(100):
                if fleet.servers()[0].state == ServerState.UP:
                    break
                await asyncio.sleep(0.1)
            assert fleet.servers()[0].state == ServerState.UP
            assert (await fleet.locate(on_a.id))[2] == "a"  # re-adopted, found by id again
            assert (await fleet.status(on_a.id))["status"] == "running"
            assert {x.info.name: x.status for x in await fleet.agents()}["on-a"] == "running"
            assert ("a", ServerState.UNREACHABLE) in states and states[-1] == ("a", ServerState.UP)
            watcher.cancel()
            assert on_b.server == "b"
    try:
        run(go())
    finally:
        for s in servers:
            s.close()


def test_the_sync_fleet(pair) -> None:
    a, b = pair
    with SyncFleet([spec(a, "a"), spec(b, "b")], config()) as fleet:
        agent = fleet.spawn(sleeper("s"))
        assert fleet.status("s")["server"] == agent.server
        assert [x.id for x in fleet.agents()] == [agent.id]
        fleet.batch(["s"], ControlCommandType.STOP)
        assert fleet.wait(["s"], timeout=30)["s"]["status"] == "terminated"


def test_fleet_files_and_the_environment(tmp_path) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text('[client]\nclient_key = "keys/me.key_secret"\n\n'
                    '[servers.w1]\nendpoint = "tcp://w1:5555"\npub_endpoint = "tcp://w1:5556"\n'
                    'server_key = "keys/w1.key"\nlabels = { gpu = "a100" }\n\n'
                    '[dns.pool]\nname = "workers.example"\nport = 6000\n')
    got = load(path)
    assert got.servers == (ServerSpec("w1", "tcp://w1:5555", "tcp://w1:5556", str(tmp_path / "keys/w1.key"),
                                      {"gpu": "a100"}),)
    assert got.client == {"client_key": str(tmp_path / "keys/me.key_secret")}
    assert got.dns[0].name == "workers.example" and got.dns[0].port == 6000
    for text, error in (('[servers.w1]\nendpoint = "w1"\n', r"\[servers.w1\]: endpoint must be a ZeroMQ endpoint"),
                        ('[servers.w1]\nendpoint = "tcp://w1:1"\nport = 2\n', r"unknown key\(s\) port"),
                        ('[servers.w1]\nendpoint = "tcp://w1:1"\nlabels = { gpu = 1 }\n', "labels must be a table"),
                        ('[server]\n', r"unknown table\(s\) server"), ("", "a fleet needs at least one server"),
                        ('[dns.x]\nname = "n"\nport = 0\n', "port must be a port number")):
        path.write_text(text)
        with pytest.raises(FleetFileError, match=error):
            load(path)
    env = from_env("tcp://10.0.0.1:5555, dns://pool.example:5555")
    assert env.servers[0].endpoint == "tcp://10.0.0.1:5555" and env.dns[0].name == "pool.example"
    with pytest.raises(FleetFileError, match="is not an endpoint"):
        from_env("10.0.0.1")


def test_a_fleet_named_by_a_dns_name(tmp_path, main_implementation) -> None:
    """Every address the name resolves to is a server (localhost here: a real server on it)."""
    from descartes_fast.fleet.servers import DnsSpec, resolve_dns
    port = free_port()
    (tmp_path / "d").mkdir()
    server = Server(tmp_path / "d", main_implementation, bind=f"tcp://127.0.0.1:{port}",
                    pub=f"tcp://127.0.0.1:{port + 1}")
    try:
        found = resolve_dns(DnsSpec("localhost", port))
        assert found and all(s.endpoint.endswith(f":{port}") and s.pub_endpoint.endswith(f":{port + 1}")
                             for s in found)
        assert resolve_dns(DnsSpec("no-such-name.invalid", port)) == []
        proc = subprocess.run([sys.executable, "-P", "-m", "descartes_fast", "spawn", "sh", "echo dns", "--json"],
                              env={**server_env(main_implementation),
                                   "DESCARTES_FAST_SERVERS": f"dns://localhost:{port}"},
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["server"] == f"127.0.0.1:{port}"
    finally:
        server.close()


def free_port() -> int:
    """A port with the next one free too (a server's request and event ports)."""
    import socket
    for _ in range(50):
        with socket.socket() as a, socket.socket() as b:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            try:
                b.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port
    raise RuntimeError("no two free ports in a row")


def cli(fleet_file: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-P", "-m", "descartes_fast", *args, "--fleet", str(fleet_file)],
                          capture_output=True, timeout=timeout, text=True)


def test_the_cli_across_a_fleet(pair, tmp_path) -> None:
    a, b = pair
    fleet_file = tmp_path / "fleet.toml"
    fleet_file.write_text(f'[servers.a]\nendpoint = "{a.bind}"\npub_endpoint = "{a.pub}"\n\n'
                          f'[servers.b]\nendpoint = "{b.bind}"\npub_endpoint = "{b.pub}"\n')
    follow = subprocess.Popen([sys.executable, "-P", "-m", "descartes_fast", "logs", "--follow", "--all", "--fleet",
                               str(fleet_file)], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(2)  # (subscribed)
        ids = {}
        for name, task, where in (("one", "echo one-1; echo one-2", "a"), ("two", "echo two-1; exit 3", "b")):
            proc = cli(fleet_file, "spawn", "sh", task, "--name", name, "--server", where, "--json")
            assert proc.returncode == 0, proc.stderr
            ids[name] = json.loads(proc.stdout)["id"]
            assert json.loads(proc.stdout)["server"] == where
        proc = cli(fleet_file, "spawn", "sh", "sleep 30", "--name", "gpu", "--label", "gpu=a100", "--json")
        assert json.loads(proc.stdout)["server"] == "a"
        # each command a fleet of its own: placed by the servers' lists, newer than their last heartbeats
        proc = cli(fleet_file, "spawn", "sh", "sleep 30", "--name", "anywhere", "--json")
        assert json.loads(proc.stdout)["server"] == "b", proc.stdout + proc.stderr
        proc = cli(fleet_file, "wait", "one")
        assert proc.returncode == 0 and "completed  exit 0" in proc.stdout, proc.stdout + proc.stderr
        proc = cli(fleet_file, "wait", "one", ids["two"][:8])
        assert proc.returncode == 1 and "failed  exit 3" in proc.stdout, proc.stdout + proc.stderr
        listed = json.loads(cli(fleet_file, "list", "--json").stdout)
        assert {(x["name"], x["server"]) for x in listed} == {("one", "a"), ("two", "b"), ("gpu", "a"),
                                                                 ("anywhere", "b")}
        proc = cli(fleet_file, "status", "gpu", "--json")
        assert json.loads(proc.stdout)["status"] == "running"
        proc = cli(fleet_file, "batch", "stop", "gpu", "one", "anywhere")
        assert proc.returncode == 0 and "3 ok, 0 failed" in proc.stdout, proc.stdout
        health = json.loads(cli(fleet_file, "health", "--json").stdout)
        assert [h["state"] for h in health] == ["up", "up"] and health[0]["labels"]["gpu"] == "a100"
        top = cli(fleet_file, "top", "--once")
        assert top.returncode == 0 and "servers" in top.stdout and "gpu" in top.stdout, top.stdout + top.stderr
        assert cli(fleet_file, "status", "nosuch").returncode == 4
        proc = subprocess.run([sys.executable, "-P", "-m", "descartes_fast", "list", "--fleet", str(fleet_file),
                               "--endpoint", a.bind], capture_output=True, text=True)
        assert proc.returncode == 2 and "give one" in proc.stderr
        time.sleep(1)
    finally:
        follow.terminate()
        out, _ = follow.communicate(10)
    lines = out.splitlines()
    assert "[a/one] one-1" in lines and "[a/one] one-2" in lines and "[b/two] two-1" in lines, out
    assert len([x for x in lines if x.startswith("[a/one]")]) == 2  # every line once
