"""Hosts in network namespaces, each running a real ``descartes-fast-server``: for fleet tests
(one client, many servers, hosts that drop off the network and come back).

Topology (everything but one veth end lives in namespaces the test made)::

    test process (its own namespace)                 bridge namespace df-<tok>-br
      df<tok> 10.77.X.254/24  <--veth-->  uplink --- br0 --- p0 <--veth--> eth0 10.77.X.1/24  (df-<tok>-0)
                                                          --- p1 <--veth--> eth0 10.77.X.2/24  (df-<tok>-1)
                                                          ...

The test process (and so a ``Client`` in it) reaches every host directly, on one L2 segment:
no routing, no forwarding sysctl, nothing changed in its namespace but the one link ``df<tok>``
(and the on-link route its address brings). ``X`` is a /24 of 10.77.0.0/16 that no route or
address of the test's namespace, and no other live run, uses. :meth:`Host.cut` sets the host's
port on the bridge down (a cable pulled at the switch: the host itself notices nothing, packets
to and from it are dropped, no RST); :meth:`Host.heal` sets it up again.

Ownership: a run claims a token ``<tok>`` (6 hex digits) by holding an flock on
``/run/descartes-fast-netns/<tok>`` while it lives. At the start of every run (and in
:func:`netns_available`), every marker there whose lock is free is a run that crashed: its
namespaces (``df-<tok>-*``), the processes still in them and its link are removed. Namespaces
named ``df-...`` without a marker are not ours and are never touched; a live run's are left
alone, so runs may go in parallel.

Cleanup (:meth:`Network.close`, also on an exception): the servers first (SIGTERM, which stops
their agents; then SIGTERM to a keeper still holding this state dir, which ends its agents),
then SIGKILL to every process still in one of the namespaces (a keeper or an agent the test
left: ``ip netns pids``), then the client link (which takes its peer), then the namespaces
(their veths and the bridge go with them), then the marker. It checks that nothing of it is
left in ``ip netns list`` and ``ip link`` and raises if something is.

Servers run as ``ip netns exec df-<tok>-<i> python -P -m descartes_fast serve ...`` with the
settings of :mod:`support.server` (its CONFIG: backends ``sh``, ``cat``, ``py``), bound to
``tcp://<host address>:5555`` (requests) and ``:5556`` (events), each on its own state dir,
with CURVE keys (:class:`Keys`) or ``--insecure``. ``ip netns exec`` also gives the server a
mount namespace with a fresh /sys (no cgroup2 mount there), so its agents are contained by
process group (health says ``containment``); pass ``--containment`` among the flags to insist.
Needs root (or CAP_NET_ADMIN + CAP_SYS_ADMIN) and iproute2; :func:`netns_available` says why not.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import ipaddress
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import zmq

from descartes_fast.client import ZmqRunnerConfig
from descartes_fast.wire import codec
from descartes_fast.wire.curve import keygen, load_public_key, load_secret_key
from descartes_fast.wire.schema import HealthCheckRequest, HealthCheckResponse
from support.server import CONFIG, Server, server_env

__all__ = ["Host", "Keys", "Network", "NetnsError", "NetnsServer", "make_network", "netns_available", "pids_in",
           "sweep_stale"]

PREFIX = "df-"
MARKS = Path("/run/descartes-fast-netns")
SUBNET = "10.77"
REQ_PORT, PUB_PORT = 5555, 5556
_IP_TIMEOUT = 15.0


class NetnsError(RuntimeError):
    """An ``ip`` command failed, or cleanup left something behind."""


def _ip(*args: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = ["ip", *(("-n", ns) if ns else ()), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_IP_TIMEOUT, stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise NetnsError(f"`{' '.join(cmd)}` failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def _namespaces() -> list[str]:
    """Names in ``ip netns list`` (its lines are ``NAME`` or ``NAME (id: N)``)."""
    out = _ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def pids_in(ns: str) -> list[int]:
    out = _ip("netns", "pids", ns, check=False).stdout
    return [int(p) for p in out.split() if p.isdigit()]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _kill_all_in(ns: str, timeout: float = 10.0) -> None:
    """SIGKILL every process in namespace *ns*, until none is left (or *timeout*)."""
    deadline = time.monotonic() + timeout
    while True:
        pids = [p for p in pids_in(ns) if p != os.getpid()]
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise NetnsError(f"processes {pids} in {ns} do not die")
        time.sleep(0.02)


def _link_exists(name: str) -> bool:
    return _ip("link", "show", "dev", name, check=False).returncode == 0


def _remove(token: str) -> list[str]:
    """Remove everything of run *token*: processes in its namespaces, its link, its namespaces.
    Returns what is still there afterwards (empty when all is gone)."""
    mine = [ns for ns in _namespaces() if ns.startswith(f"{PREFIX}{token}-")]
    for ns in mine:
        _kill_all_in(ns)
    link = f"df{token}"
    if _link_exists(link):  # before the namespaces: their destruction is asynchronous
        _ip("link", "del", "dev", link, check=False)
    for ns in mine:
        _ip("netns", "del", ns, check=False)
    deadline = time.monotonic() + 5
    while True:
        left = [ns for ns in _namespaces() if ns.startswith(f"{PREFIX}{token}-")]
        left += [link] if _link_exists(link) else []
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.02)


class _Claim:
    """A run's token, held by an flock on its marker file for as long as the run lives."""

    def __init__(self, subnet: int | None = None) -> None:
        MARKS.mkdir(mode=0o755, parents=True, exist_ok=True)
        sweep_stale()
        while True:
            token = os.urandom(3).hex()
            final = MARKS / token
            if final.exists() or any(ns.startswith(f"{PREFIX}{token}-") for ns in _namespaces()):
                continue
            # locked before it is visible under its name, so no sweeper can take it for stale
            scratch = MARKS / f".{token}.{os.getpid()}"
            fd = os.open(scratch, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.rename(scratch, final)
            break
        self.token, self.fd, self.path = token, fd, final
        self.subnet = subnet if subnet is not None else self._free_subnet()
        os.write(fd, f"pid {os.getpid()}\nsubnet {SUBNET}.{self.subnet}.0/24\n".encode())

    def _free_subnet(self) -> int:
        """A third octet X such that nothing here (routes, addresses) nor any other run uses 10.77.X.0/24."""
        taken: set[int] = set()
        for mark in MARKS.iterdir():
            if mark != self.path:
                with contextlib.suppress(OSError):
                    taken.update(int(x) for x in re.findall(rf"subnet {SUBNET}\.(\d+)\.", mark.read_text()))
        seen = _ip("-4", "route", "show", "table", "all", check=False).stdout + _ip("-4", "-o", "addr").stdout
        nets = [ipaddress.ip_network(m, strict=False) for m in re.findall(r"\d+\.\d+\.\d+\.\d+(?:/\d+)?", seen)]
        candidates = list(range(1, 255))
        random.shuffle(candidates)
        for x in candidates:
            net = ipaddress.ip_network(f"{SUBNET}.{x}.0/24")
            if x not in taken and not any(n.overlaps(net) and n.prefixlen > 0 for n in nets):
                return x
        raise NetnsError(f"no free /24 in {SUBNET}.0.0/16")

    def release(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        os.close(self.fd)


def sweep_stale() -> list[str]:
    """Remove what crashed runs left (markers whose lock nobody holds); returns their tokens."""
    swept: list[str] = []
    if not MARKS.is_dir():
        return swept
    for mark in MARKS.iterdir():
        if mark.name.startswith("."):  # a claim in progress, or one that crashed before its rename
            with contextlib.suppress(OSError):
                if time.time() - mark.stat().st_mtime > 60:
                    mark.unlink()
            continue
        try:
            fd = os.open(mark, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                continue  # a live run
            raise
        try:
            left = _remove(mark.name)
            if left:
                raise NetnsError(f"cannot remove what crashed run {mark.name} left: {left}")
            mark.unlink()
            swept.append(mark.name)
        finally:
            os.close(fd)
    return swept


@functools.cache
def netns_available() -> str | None:
    """None if network namespaces, veth pairs and bridges can be made here (tried, not assumed),
    else why not (for ``pytest.skip``)."""
    if not sys.platform.startswith("linux"):
        return f"network namespaces need Linux, not {sys.platform}"
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2) on PATH"
    claim = None
    try:
        claim = _Claim(subnet=0)
        ns = f"{PREFIX}{claim.token}-probe"
        _ip("netns", "add", ns)
        _ip("link", "add", "name", "p0", "type", "veth", "peer", "name", "p1", ns=ns)
        _ip("link", "add", "name", "br0", "type", "bridge", ns=ns)
        _ip("link", "set", "dev", "p0", "master", "br0", ns=ns)
        _ip("link", "set", "dev", "lo", "up", ns=ns)
        probe = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", "pass"], capture_output=True,
                               text=True, timeout=_IP_TIMEOUT)
        if probe.returncode != 0:
            raise NetnsError(f"`ip netns exec` failed: {probe.stderr.strip()}")
    except (NetnsError, OSError, subprocess.SubprocessError) as exc:
        return f"cannot create network namespaces here: {exc}"
    finally:
        if claim is not None:
            with contextlib.suppress(Exception):
                _remove(claim.token)
            claim.release()
    return None


@dataclass
class Keys:
    """CURVE keys for one server and one client, as ``descartes-fast keygen`` writes them:
    ``server/server.key{,_secret}``, ``client/client.key{,_secret}``, and ``authorized/client.key``
    (the server's --authorized-keys directory: the client's public key only)."""

    server_public: Path
    server_secret: Path
    client_public: Path
    client_secret: Path
    authorized: Path

    @classmethod
    def make(cls, directory: Path) -> Keys:
        server_public, server_secret = keygen("server", directory / "server")
        client_public, client_secret = keygen("client", directory / "client")
        authorized = directory / "authorized"
        authorized.mkdir(mode=0o700, exist_ok=True)
        shutil.copyfile(client_public, authorized / client_public.name)
        return cls(Path(server_public), Path(server_secret), Path(client_public), Path(client_secret), authorized)

    def triple(self) -> tuple[bytes, bytes, bytes]:
        """(server public, client public, client secret): what ``Server.socket`` takes as *curve*."""
        return (load_public_key(self.server_public), *load_secret_key(self.client_secret))

    def server_flags(self) -> list[str]:
        return ["--curve-secret-key", str(self.server_secret), "--authorized-keys", str(self.authorized)]


@dataclass
class Host:
    """One host: namespace *ns*, address *address* on the test's segment, port *port* on the bridge."""

    network: Network
    index: int
    ns: str
    address: str
    port: str

    @property
    def name(self) -> str:
        return f"host-{self.index}"

    def endpoint(self, port: int = REQ_PORT) -> str:
        return f"tcp://{self.address}:{port}"

    def cut(self) -> None:
        """Take the host off the network: its bridge port goes down (packets dropped, no RST)."""
        _ip("link", "set", "dev", self.port, "down", ns=self.network.bridge)

    def heal(self) -> None:
        """Put the host back on the network."""
        _ip("link", "set", "dev", self.port, "up", ns=self.network.bridge)

    def is_cut(self) -> bool:
        line = _ip("-o", "link", "show", "dev", self.port, ns=self.network.bridge).stdout
        return "UP" not in line.split("<", 1)[1].split(">", 1)[0].split(",")

    def run(self, *argv: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        """Run *argv* in the host's namespace (``ip netns exec``)."""
        return subprocess.run(["ip", "netns", "exec", self.ns, *argv], capture_output=True, text=True,
                              timeout=kw.pop("timeout", 30), **kw)


class NetnsServer(Server):
    """A descartes-fast-server in *host*'s namespace, bound to the host's address, state and log
    in *directory*. With *keys*, CURVE (the client of *keys* is the one allowed); without,
    ``--insecure``. :class:`Server`'s sockets (``call``, ``spawn``, ``control``, ...) work on it,
    from the test process. ``stop()`` (SIGTERM), ``kill()`` (SIGKILL: the keeper and its agents
    run on), ``restart()`` (on the same state dir: it adopts what the keeper holds), ``close()``."""

    def __init__(self, host: Host, directory: Path, implementation: str, *flags: str,
                 keys: Keys | None = None, policy: str = "allow_extra_args = true", log_level: str = "INFO",
                 config_tables: str = "", port: int = REQ_PORT, pub_port: int = PUB_PORT,
                 ready_timeout: float = 20.0) -> None:
        self.host, self.keys, self.implementation = host, keys, implementation
        self.curve = keys.triple() if keys else None
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.config_path = directory / "server.toml"
        self.config_path.write_text(CONFIG.replace("allow_extra_args = true", policy) + "\n" + config_tables)
        self.bind, self.pub = host.endpoint(port), host.endpoint(pub_port)
        self.state_dir = directory / "state"
        self.log_path = directory / "server.log"
        self.flags = [*(keys.server_flags() if keys else ["--insecure"]), *flags]
        self.log_level, self.ready_timeout = log_level, ready_timeout
        self.ctx = zmq.Context()
        self.proc: subprocess.Popen[bytes] | None = None  # type: ignore[assignment]
        self.starts = 0
        self.start()

    # -- the process --

    def command(self) -> list[str]:
        return ["ip", "netns", "exec", self.host.ns, sys.executable, "-P", "-m", "descartes_fast", "serve",
                "--config", str(self.config_path), "--bind", self.bind, "--pub", self.pub,
                "--server-id", self.host.name, "--log-level", self.log_level, "--state-dir", str(self.state_dir),
                *self.flags]

    def start(self) -> None:
        """Start the server (again) and wait until it answers a health check from the test process."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.starts += 1
        with self.log_path.open("a") as log:
            log.write(f"--- start {self.starts}\n")
            log.flush()
            self.proc = subprocess.Popen(self.command(), env=server_env(self.implementation),
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
        if getattr(self, "req", None) is not None:
            self.req.close(0)
        self.req = self.socket(zmq.REQ)
        self.req.send(codec.encode(HealthCheckRequest("ready")))
        deadline = time.monotonic() + self.ready_timeout
        while not self.req.poll(50):
            if self.proc.poll() is not None:
                raise NetnsError(f"server in {self.host.ns} exited ({self.proc.returncode}) at start:\n{self.log()}")
            if time.monotonic() > deadline:
                raise NetnsError(f"server in {self.host.ns} did not answer within {self.ready_timeout} s:\n"
                                 f"{self.log()}")
        health = codec.decode(self.req.recv())
        assert isinstance(health, HealthCheckResponse) and health.healthy, health
        #: the server's health metadata at its last start (security, containment, keeper_pid, ...)
        self.health: dict[str, str] = dict(health.metadata or {})
        assert self.health.get("implementation") == self.implementation, self.health

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (the server stops its agents, unless --keep-agents) and wait; its exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> int:
        """SIGKILL: a crash. The keeper and the agents run on (unless --agents-die-with-server)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.kill()
        return self.proc.wait(10)

    def restart(self, graceful: bool = True) -> None:
        """Stop (SIGTERM, or SIGKILL when not *graceful*) and start again on the same state dir."""
        self.stop() if graceful else self.kill()
        self.start()

    def keeper_pids(self) -> list[int]:
        """Keepers of this server's state dir (found by their command line in /proc)."""
        found = []
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                    args = f.read().split(b"\0")
            except OSError:
                continue
            if (b"descartes_fast.agents.keeper" in args and b"--state-dir" in args
                    and args[args.index(b"--state-dir") + 1] == os.fsencode(self.state_dir)):
                found.append(int(entry.name))
        return [pid for pid in found if _alive(pid)]

    def client_config(self, **overrides: Any) -> ZmqRunnerConfig:
        """A client config for this server (endpoints, and the keys if CURVE)."""
        keys = {"server_key": str(self.keys.server_public), "client_key": str(self.keys.client_secret)} \
            if self.keys else {}
        return ZmqRunnerConfig(**{"endpoint": self.bind, "pub_endpoint": self.pub, **keys, **overrides})

    def close(self) -> int:
        """Stop the server if it runs (SIGTERM), then end a keeper it left (SIGTERM: it ends its
        agents, then itself; SIGKILL if it has not within 10 s). The server's exit status."""
        code = -1
        try:
            if self.proc is not None:
                code = self.stop() if self.proc.poll() is None else self.proc.returncode
        finally:
            try:
                pids = self.keeper_pids()
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGTERM)
                deadline = time.monotonic() + 10
                while any(_alive(p) for p in pids) and time.monotonic() < deadline:
                    time.sleep(0.02)
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            finally:
                self.ctx.destroy(linger=0)
        return code


class Network:
    """*n* hosts in namespaces on one bridge, reachable from the test process (module docstring).
    ``with Network(2, tmp_path) as net:``; servers started with :meth:`serve` are closed first."""

    def __init__(self, n: int, directory: Path) -> None:
        self.directory = directory
        self.servers: list[NetnsServer] = []
        self.hosts: list[Host] = []
        self._claim: _Claim | None = _Claim()
        try:
            token, x = self._claim.token, self._claim.subnet
            self.token = token
            self.bridge = f"{PREFIX}{token}-br"
            self.link = f"df{token}"
            self.client_address = f"{SUBNET}.{x}.254"
            _ip("netns", "add", self.bridge)
            for args in (("link", "set", "dev", "lo", "up"),
                         ("link", "add", "name", "br0", "type", "bridge", "stp_state", "0", "forward_delay", "0"),
                         ("link", "set", "dev", "br0", "up")):
                _ip(*args, ns=self.bridge)
            _ip("link", "add", "name", self.link, "type", "veth", "peer", "name", "uplink", "netns", self.bridge)
            _ip("link", "set", "dev", "uplink", "master", "br0", "up", ns=self.bridge)
            _ip("addr", "add", f"{self.client_address}/24", "dev", self.link)
            _ip("link", "set", "dev", self.link, "up")
            for _ in range(n):
                self.add_host()
        except BaseException:
            self.close()
            raise

    def add_host(self) -> Host:
        assert self._claim is not None
        i = len(self.hosts)
        ns, port, address = f"{PREFIX}{self.token}-{i}", f"p{i}", f"{SUBNET}.{self._claim.subnet}.{i + 1}"
        _ip("netns", "add", ns)
        _ip("link", "set", "dev", "lo", "up", ns=ns)
        _ip("link", "add", "name", port, "type", "veth", "peer", "name", "eth0", "netns", ns, ns=self.bridge)
        _ip("link", "set", "dev", port, "master", "br0", "up", ns=self.bridge)
        _ip("addr", "add", f"{address}/24", "dev", "eth0", ns=ns)
        _ip("link", "set", "dev", "eth0", "up", ns=ns)
        host = Host(self, i, ns, address, port)
        self.hosts.append(host)
        return host

    def serve(self, host: Host, implementation: str, *flags: str, curve: bool | Keys = True,
              **kw: Any) -> NetnsServer:
        """Start a server on *host* (its files in ``<directory>/<host name>[-N]``); *curve*: new keys
        (True), these keys, or False for ``--insecure``. Closed with the network."""
        base = self.directory / host.name
        directory, k = base, 1
        while directory.exists():
            k += 1
            directory = base.with_name(f"{host.name}-{k}")
        keys = Keys.make(directory / "keys") if curve is True else (curve or None)
        server = NetnsServer(host, directory, implementation, *flags, keys=keys, **kw)
        self.servers.append(server)
        return server

    def leftovers(self) -> list[str]:
        """What of this network is still in ``ip netns list`` and ``ip link``."""
        left = [ns for ns in _namespaces() if ns.startswith(f"{PREFIX}{self.token}-")]
        return left + ([self.link] if _link_exists(self.link) else [])

    def close(self) -> None:
        """Remove everything (see the module docstring); raises NetnsError if something is left."""
        errors: list[BaseException] = []
        for server in reversed(self.servers):
            try:
                server.close()
            except BaseException as exc:  # go on: the namespaces must go in any case
                errors.append(exc)
        self.servers.clear()
        if self._claim is None:
            return
        claim, self._claim = self._claim, None
        try:
            left = _remove(claim.token)
        finally:
            claim.release()
        if left:
            raise NetnsError(f"left behind: {left}")
        if errors:
            raise errors[0]

    def __enter__(self) -> Network:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@pytest.fixture
def make_network(tmp_path: Path) -> Iterator[Callable[[int], Network]]:
    """``make_network(n)``: a :class:`Network` of *n* hosts (files under tmp_path), closed after
    the test; the test is skipped, with the reason, where namespaces cannot be made."""
    reason = netns_available()
    if reason:
        pytest.skip(reason)
    made: list[Network] = []

    def make(n: int) -> Network:
        net = Network(n, tmp_path / f"net{len(made)}")
        made.append(net)
        return net

    yield make
    for net in reversed(made):
        net.close()
