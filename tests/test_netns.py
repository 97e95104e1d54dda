"""The network-namespace harness (tests/support/netns.py): real servers on separate hosts, one
client in a namespace of its own (the test's namespace gets no link or address), a host cut off
the network and healed; and that nothing is left."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import pytest
from support import netns
from support.netns import PREFIX, SUBNET, Network, netns_available, pids_in
from support.procs import alive

from descartes_fast.client import Client, RequestTimeoutError
from descartes_fast.wire.schema import AgentConfig

make_network = netns.make_network  # the fixture: make_network(n) -> Network, closed after the test


def echo(client: Client, text: str) -> bytes:
    """Spawn ``sh -c 'echo TEXT'`` and read its whole output back."""
    info = client.spawn_remote(AgentConfig(name="echo", model_backend="sh", task=f"echo {text}"))
    return b"".join(chunk.data for chunk in client.follow_logs(info.id))


def back_within(client: Client, seconds: float) -> None:
    """Wait until *client*'s server answers a health check (TCP retransmits after a heal come
    with backoff, so the first requests may still time out)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            client.health_check()
            return
        except RequestTimeoutError:
            assert time.monotonic() < deadline, f"no answer within {seconds} s of the heal"


def leftovers(net: Network) -> list[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    return [line for line in (listed + links).splitlines()
            if f"{PREFIX}{net.token}-" in line or f"df{net.token}" in line]


def test_two_hosts_one_cut_off_and_healed(make_network, main_implementation) -> None:
    net = make_network(2)
    a, b = net.hosts
    servers = [net.serve(a, main_implementation), net.serve(b, main_implementation, curve=False)]
    assert [s.health["security"] for s in servers] == ["curve", "none"]
    ours = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True, check=True).stdout
    assert SUBNET not in ours and net.token not in ours  # the test's own namespace is untouched
    clients = [Client(s.client_config(request_timeout_secs=1.0, connection_timeout_secs=5.0,
                                      enable_heartbeat=False), context=net.context) for s in servers]
    try:
        for client in clients:
            client.connect()
        assert [echo(c, f"hi-{i}") for i, c in enumerate(clients)] == [b"hi-0\n", b"hi-1\n"]
        assert (clients[0].server_metadata or {}).get("server_id") == "host-0"

        b.cut()
        assert b.is_cut() and not a.is_cut()
        started = time.monotonic()
        with pytest.raises(RequestTimeoutError):
            clients[1].health_check()
        assert 0.9 < time.monotonic() - started < 3
        assert not clients[1].is_connected()
        assert echo(clients[0], "still-here") == b"still-here\n"  # the other host is unaffected
        assert servers[1].running()  # cut off, not down

        b.heal()
        back_within(clients[1], 10)
        assert echo(clients[1], "back") == b"back\n"

        servers[1].restart()  # on the same state dir: the agents of before are there again
        back_within(clients[1], 10)
        assert len(clients[1].list_remote_agents()) == 2
    finally:
        for client in clients:
            client.close()
    net.close()
    assert leftovers(net) == []


def test_everything_is_removed_after_a_failure_even_a_keeper_left_with_its_agent(tmp_path, main_implementation
                                                                                   ) -> None:
    reason = netns_available()
    if reason:
        pytest.skip(reason)
    seen: dict[str, Any] = {}
    with pytest.raises(ZeroDivisionError):
        with Network(1, tmp_path) as net:
            seen["net"] = net
            server = net.serve(net.hosts[0], main_implementation, curve=False)
            server.spawn("sh", "sleep 60")
            server.kill()  # a crash: the keeper and the agent run on, in the host's namespace
            seen["keepers"] = server.keeper_pids()
            seen["pids"] = pids_in(net.hosts[0].ns)  # the keeper, the agent's shell (and its sleep)
            assert seen["keepers"] and set(seen["keepers"]) < set(seen["pids"])
            raise ZeroDivisionError("a test that fails")
    assert leftovers(seen["net"]) == []
    assert not [pid for pid in seen["pids"] if alive(pid)]


def test_a_client_cannot_connect_to_a_cut_host(make_network, main_implementation) -> None:
    """A client that connects while its server's host is cut off gets a timeout, not a hang."""
    net = make_network(1)
    (host,) = net.hosts
    server = net.serve(host, main_implementation)
    host.cut()
    client = Client(server.client_config(connection_timeout_secs=0.5, enable_heartbeat=False), context=net.context)
    try:
        with pytest.raises(RequestTimeoutError, match="no answer from"):
            client.connect()
        host.heal()
        client.connect(timeout=10)
        assert client.health_check().healthy
    finally:
        client.close()


def test_the_cli_from_the_client_namespace(make_network, main_implementation) -> None:
    """The CLI run where the clients are (``ip netns exec``) drives a server on another host."""
    net = make_network(1)
    server = net.serve(net.hosts[0], main_implementation, curve=False)
    cli = (sys.executable, "-P", "-m", "descartes_fast")
    spawned = net.client_run(*cli, "spawn", "sh", "echo from-afar", "--endpoint", server.bind, "--json")
    assert spawned.returncode == 0, spawned.stderr
    agent = json.loads(spawned.stdout)["id"]
    logs = net.client_run(*cli, "logs", agent, "--follow", "--endpoint", server.bind)
    assert (logs.returncode, logs.stdout) == (0, "from-afar\n"), logs.stderr
    here = subprocess.run([*cli, "health", "--endpoint", server.bind, "--timeout", "1"], capture_output=True,
                          text=True, timeout=30)
    assert here.returncode != 0  # not from the test's own namespace: the host is not reachable there
