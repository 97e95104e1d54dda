"""A fleet across real hosts: servers in separate network namespaces (tests/support/netns.py), each
with its own state directory and CURVE key, one client key allowed on all of them, the Fleet in a
client namespace (its sockets in the network's context). Placement by load, labels and backends; a
follow across the fleet that gets every line once; a host cut off mid-run and healed (its agents
unreachable, then back with their output intact); a server killed and restarted (its agents
re-adopted, found by id); a client key no server knows, refused by every one. Skipped (with the reason)
where network namespaces cannot be made."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
from pathlib import Path

import pytest
from support import netns
from support.netns import Keys, Network

from descartes_fast.client.config import ZmqRunnerConfig
from descartes_fast.fleet import Fleet, NoServerError, ServerState
from descartes_fast.wire.curve import keygen
from descartes_fast.wire.schema import AgentConfig, ControlCommandType, HealthCheckRequest

make_network = netns.make_network

SPECIAL = '[backends.special]\ncommand = ["sh", "-c", "{task}"]\n'


def keys_for(directory: Path, client: tuple[Path, Path]) -> Keys:
    """A server key of its own, and *client* (public, secret) the one client allowed."""
    public, secret = keygen("server", directory / "server")
    authorized = directory / "authorized"
    authorized.mkdir(parents=True, mode=0o700)
    shutil.copyfile(client[0], authorized / client[0].name)
    return Keys(Path(public), Path(secret), client[0], client[1], authorized)


def fleet_file(path: Path, net: Network, client_secret: Path) -> Path:
    text = f'[client]\nclient_key = "{client_secret}"\n'
    for server in net.servers:
        assert server.keys is not None
        text += (f'\n[servers.{server.host.name}]\nendpoint = "{server.bind}"\npub_endpoint = "{server.pub}"\n'
                 f'server_key = "{server.keys.server_public}"\n')
    path.write_text(text)
    return path


def writer(lines: int, tag: str, pause: float = 0.0) -> str:
    """sh: *lines* numbered lines (with *pause* seconds between them)."""
    step = f"; sleep {pause}" if pause else ""
    return f"i=0; while [ $i -lt {lines} ]; do echo {tag} $i{step}; i=$((i+1)); done"


def expected(lines: int, tag: str) -> str:
    return hashlib.sha256(b"".join(f"{tag} {i}\n".encode() for i in range(lines))).hexdigest()


async def until(check, seconds: float, what: str) -> None:
    for _ in range(int(seconds * 10)):
        if check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"not within {seconds} s: {what}")


def test_a_fleet_across_hosts(make_network, main_implementation, tmp_path) -> None:
    net = make_network(3)
    client = tuple(Path(p) for p in keygen("me", tmp_path / "client"))
    for i, host in enumerate(net.hosts):
        labels = ["--labels", f"zone=z{i}" + (",gpu=a100" if i == 2 else "")]
        net.serve(host, main_implementation, *labels, curve=keys_for(tmp_path / f"keys-{i}", client),
                  config_tables=SPECIAL if i == 0 else "")
    path = fleet_file(tmp_path / "fleet.toml", net, client[1])
    h0, h1, h2 = (h.name for h in net.hosts)
    config = ZmqRunnerConfig(request_timeout_secs=3, connection_timeout_secs=10, follow_resume_secs=120)

    async def go() -> None:
        async with Fleet.from_file(path, config, context=net.context) as fleet:
            await fleet.heard(5)
            assert {v.name: v.state for v in fleet.servers()} == dict.fromkeys((h0, h1, h2), ServerState.UP)
            # placement: by load, labels, backends
            spread = [(await fleet.spawn(AgentConfig(name=f"s{i}", model_backend="sh", task="sleep 60"))).server
                      for i in range(6)]
            assert sorted(spread) == sorted([h0, h1, h2] * 2), spread
            gpu = await fleet.spawn(AgentConfig(name="g", model_backend="sh", task="sleep 60"), labels={"gpu": "a100"})
            special = await fleet.spawn(AgentConfig(name="x", model_backend="special", task="sleep 60"))
            assert (gpu.server, special.server) == (h2, h0)
            with pytest.raises(NoServerError, match="does not offer backend 'special'"):
                await fleet.spawn(AgentConfig(name="y", model_backend="special", task="true"), labels={"zone": "z1"})

            # a follow across the fleet: every line once (three writers, one per host)
            got: dict[str, bytearray] = {}

            async def follow() -> None:
                async for item in fleet.follow():
                    got.setdefault(item.name, bytearray()).extend(item.chunk.data)
            follower = asyncio.create_task(follow())
            await asyncio.sleep(0.5)
            writers = {}
            for host in (h0, h1, h2):
                agent = await fleet.spawn(AgentConfig(name=f"w-{host}", model_backend="sh",
                                                      task=writer(20_000, host)), server=host)
                writers[agent.id] = (f"w-{host}", host)
            # ... and one on h1 still writing when its host is cut off
            slow = await fleet.spawn(AgentConfig(name="slow", model_backend="sh", task=writer(120, "slow", 0.05)),
                                     server=h1)
            await fleet.wait(list(writers), timeout=60)
            await asyncio.sleep(0.5)
            net.hosts[1].cut()
            await until(lambda: fleet.servers()[1].state == ServerState.UNREACHABLE, 10, f"{h1} unreachable")
            shown = {a.info.name: a.status for a in await fleet.agents()}
            assert shown["slow"] == "unreachable" and shown[f"w-{h1}"] == "unreachable" and shown["g"] == "running"
            placed = await fleet.spawn(AgentConfig(name="meanwhile", model_backend="sh", task="true"))
            assert placed.server in (h0, h2)  # the rest carries on
            await asyncio.sleep(2)
            net.hosts[1].heal()
            await until(lambda: fleet.servers()[1].state == ServerState.UP, 60, f"{h1} back")
            await fleet.wait([slow.id], timeout=60)
            await until(lambda: len(got.get("slow", b"")) >= len(b"".join(f"slow {i}\n".encode() for i in range(120))),
                        60, "the slow writer's output")
            for name, host in [*writers.values(), ("slow", h1)]:
                lines = 120 if name == "slow" else 20_000
                tag = "slow" if name == "slow" else host
                assert hashlib.sha256(bytes(got[name])).hexdigest() == expected(lines, tag), name
            follower.cancel()

            # a server killed and started again on its state dir: its agents re-adopted, found by id
            net.servers[2].kill()
            await until(lambda: fleet.servers()[2].state == ServerState.UNREACHABLE, 10, f"{h2} unreachable")
            await asyncio.to_thread(net.servers[2].start)
            await until(lambda: fleet.servers()[2].state == ServerState.UP, 30, f"{h2} back")
            assert (await fleet.locate(gpu.id))[2] == h2
            assert (await fleet.status(gpu.id))["status"] == "running"
            everyone = [a.id for a in await fleet.agents()]
            await fleet.batch(everyone, ControlCommandType.KILL)

        # a client key that no server knows: refused by every one
        stranger = tuple(Path(p) for p in keygen("stranger", tmp_path / "stranger"))
        path2 = fleet_file(tmp_path / "stranger.toml", net, stranger[1])
        async with Fleet.from_file(path2, ZmqRunnerConfig(request_timeout_secs=1, connection_timeout_secs=1),
                                   context=net.context) as other:
            await asyncio.sleep(1)
            assert {v.state for v in other.servers()} == {ServerState.UNREACHABLE}
            with pytest.raises(NoServerError, match="unreachable"):
                await other.spawn(AgentConfig(name="no", model_backend="sh", task="true"))
        for server in net.servers:
            assert int(server.call(HealthCheckRequest("h")).metadata["auth_refused"]) >= 1, server.host.name

    asyncio.run(asyncio.wait_for(go(), 240))
