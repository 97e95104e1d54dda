"""Hosts in network namespaces, each running a real ``descartes-fast-server``: for fleet tests
(one client, many servers, hosts that drop off the network and come back).

Topology (every link and address is in a namespace the test made; the test's own namespace
is not changed at all)::

    client namespace df-<tok>-c                       bridge namespace df-<tok>-br
      eth0 10.77.0.254/24  <--veth-->  uplink --- br0 --- p0 <--veth--> eth0 10.77.0.1/24  (df-<tok>-0)
                                                       --- p1 <--veth--> eth0 10.77.0.2/24  (df-<tok>-1)
                                                       ...

The test's clients are in the client namespace: :attr:`Network.context` is a ZeroMQ context whose
I/O threads (the ones that open its TCP connections) were started by a thread that had entered
that namespace (``setns``), so every socket made in it, from any thread of the test, connects
from there; pass it as ``Client(..., context=net.context)`` or ``Fleet(..., context=...)``. The
client reaches every host directly, on one L2 segment: no routing, no forwarding sysctl. Each
run has namespaces of its own, so all runs use the same addresses. :meth:`Host.cut` sets the
host's port on the bridge down (a cable pulled at the switch: the host itself notices nothing,
packets to and from it are dropped, no RST); :meth:`Host.heal` sets it up again.

Ownership: a run claims a token ``<tok>`` (6 hex digits) by holding an flock on
``/run/descartes-fast-netns/<tok>`` while it lives. At the start of every run (and in
:func:`netns_available`), every marker there whose lock is free is a run that crashed: its
namespaces (``df-<tok>-*``) and the processes still in them are removed. Namespaces
named ``df-...`` without a marker are not ours and are never touched; a live run's are left
alone, so runs may go in parallel.

Cleanup (:meth:`Network.close`, also on an exception): the servers first (SIGTERM, which stops
their agents; then SIGTERM to a keeper still holding this state dir, which ends its agents),
the client context (its sockets closed), then SIGKILL to every process still in one of the
namespaces (a keeper or an agent the test left: ``ip netns pids``), then the namespaces (their
veths and the bridge go with them), then the marker. It checks that nothing of it is left in
``ip netns list`` and raises if something is.

Servers run as ``ip netns exec df-<tok>-<i> python -P -m descartes_fast serve ...`` with the
settings of :mod:`support.server` (its CONFIG: backends ``sh``, ``cat``, ``py``), bound to
``tcp://<host address>:5555`` (requests) and ``:5556`` (events), each on its own state dir,
with CURVE keys (:class:`Keys`) or ``--insecure``. ``ip netns exec`` also gives the server a
mount namespace with a fresh /sys (no cgroup2 mount there), so its agents are contained by
process group (health says ``containment``); pass ``--containment`` among the flags to insist.
Needs root (or CAP_NET_ADMIN + CAP_SYS_ADMIN), iproute2 and ``setns(2)``; :func:`netns_available`
says why not.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import functools
import os
import shutil
import signal
import subprocess
import sys
import threading
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
from support.procs import alive, keepers
from support.server import CONFIG, Server, server_env

__all__ = ["Host", "Keys", "Network", "NetnsError", "NetnsServer", "context_in", "make_network", "netns_available",
           "pids_in", "run_in", "sweep_stale"]

PREFIX = "df-"
MARKS = Path("/run/descartes-fast-netns")
SUBNET = "10.77.0"  # hosts .1, .2, ...; the client .254
CLONE_NEWNET = 0x40000000
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


def _remove(token: str) -> list[str]:
    """Remove everything of run *token*: the processes in its namespaces, then the namespaces.
    Returns what is still there afterwards (empty when all is gone)."""
    mine = _mine(token)
    for ns in mine:
        _kill_all_in(ns)
    for ns in mine:
        _ip("netns", "del", ns, check=False)
    deadline = time.monotonic() + 5
    while True:
        left = _mine(token)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.02)


def run_in(ns: str, *argv: str, timeout: float = 60, **kw: Any) -> subprocess.CompletedProcess[str]:
    """Run *argv* in namespace *ns* (``ip netns exec``), its output captured as text."""
    return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=timeout, **kw)


def _mine(token: str) -> list[str]:
    """The namespaces of run *token*."""
    return [ns for ns in _namespaces() if ns.startswith(f"{PREFIX}{token}-")]


def context_in(ns: str) -> zmq.Context:
    """A new ZeroMQ context whose I/O threads run in network namespace *ns*: a thread enters it
    (``setns``, which moves that thread only) and makes the context's first socket, which starts
    the I/O threads there; they open every TCP connection of the context's sockets."""
    made: dict[str, Any] = {}

    def enter_and_make() -> None:
        try:
            fd = os.open(f"/run/netns/{ns}", os.O_RDONLY | os.O_CLOEXEC)
            try:
                if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns into {ns}: {os.strerror(err)}")
            finally:
                os.close(fd)
            ctx = zmq.Context()
            ctx.socket(zmq.PAIR).close(linger=0)
            made["context"] = ctx
        except BaseException as exc:  # raised in the caller's thread
            made["error"] = exc

    thread = threading.Thread(target=enter_and_make, name=f"enter-{ns}")
    thread.start()
    thread.join()
    if "error" in made:
        raise made["error"]
    return made["context"]


class _Claim:
    """A run's token, held by an flock on its marker file for as long as the run lives."""

    def __init__(self) -> None:
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
        os.write(fd, f"pid {os.getpid()}\n".encode())

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
        claim = _Claim()
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
        context_in(ns).destroy(linger=0)
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


class NetnsServer(Server):
    """A descartes-fast-server in *host*'s namespace, bound to the host's address, state and log in
    *directory*. With *keys*, CURVE (the client of *keys* is the one allowed); without,
    ``--insecure``. :class:`Server`'s sockets (``call``, ``spawn``, ``control``, ...) work on it,
    from the client namespace (they are made in the network's context). ``stop()`` (SIGTERM),
    ``kill()`` (SIGKILL: the keeper and its agents run on), ``restart()`` (on the same state dir: it
    adopts what the keeper holds), ``close()``."""

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
        assert host.network.context is not None
        self.ctx = host.network.context  # (the network's: its connections come from the client namespace)
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
        """Start the server (again) and wait until it answers a health check from the client namespace."""
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
        return [pid for pid, state in keepers().items() if state == str(self.state_dir) and alive(pid)]

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
                while any(alive(p) for p in pids) and time.monotonic() < deadline:
                    time.sleep(0.02)
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            finally:
                self.req.close(linger=0)
        return code


class Network:
    """*n* hosts in namespaces on one bridge, and a client namespace on it (module docstring).
    ``with Network(2, tmp_path) as net:``; servers started with :meth:`serve` are closed first.
    :attr:`context`: the ZeroMQ context of the test's clients (its connections come from the
    client namespace); :meth:`client_run` runs a command there."""

    def __init__(self, n: int, directory: Path) -> None:
        self.directory = directory
        self.servers: list[NetnsServer] = []
        self.hosts: list[Host] = []
        self._claim: _Claim | None = _Claim()
        self.context: zmq.Context | None = None
        try:
            self.token = token = self._claim.token
            self.bridge, self.client_ns = f"{PREFIX}{token}-br", f"{PREFIX}{token}-c"
            self.client_address = f"{SUBNET}.254"
            for ns in (self.bridge, self.client_ns):
                _ip("netns", "add", ns)
                _ip("link", "set", "dev", "lo", "up", ns=ns)
            for args in (("link", "add", "name", "br0", "type", "bridge", "stp_state", "0", "forward_delay", "0"),
                         ("link", "set", "dev", "br0", "up"),
                         ("link", "add", "name", "uplink", "type", "veth", "peer", "name", "eth0", "netns",
                          self.client_ns),
                         ("link", "set", "dev", "uplink", "master", "br0", "up")):
                _ip(*args, ns=self.bridge)
            _ip("addr", "add", f"{self.client_address}/24", "dev", "eth0", ns=self.client_ns)
            _ip("link", "set", "dev", "eth0", "up", ns=self.client_ns)
            self.context = context_in(self.client_ns)
            for _ in range(n):
                self.add_host()
        except BaseException:
            self.close()
            raise

    def add_host(self) -> Host:
        i = len(self.hosts)
        ns, port, address = f"{PREFIX}{self.token}-{i}", f"p{i}", f"{SUBNET}.{i + 1}"
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

    def client_run(self, *argv: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        """Run *argv* in the client namespace (``ip netns exec``), e.g. the CLI."""
        return run_in(self.client_ns, *argv, **kw)

    def leftovers(self) -> list[str]:
        """What of this network is still in ``ip netns list``."""
        return _mine(self.token)

    def close(self) -> None:
        """Remove everything (see the module docstring); raises NetnsError if something is left."""
        errors: list[BaseException] = []
        for server in reversed(self.servers):
            try:
                server.close()
            except BaseException as exc:  # go on: the namespaces must go in any case
                errors.append(exc)
        self.servers.clear()
        if self.context is not None:
            self.context.destroy(linger=0)
            self.context = None
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
