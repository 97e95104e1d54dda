"""The keeper: the parent of one state directory's agents, which outlives its server.

``python -I -m descartes_fast.agents.keeper --state-dir DIR`` (the server starts it when none
runs; it detaches and keeps running on its own). It is a child subreaper
(``PR_SET_CHILD_SUBREAPER``), so the agents and whatever they leave behind are its children;
it starts agents when the server asks, holds a copy of every pipe end, reaps, appends each exit
(code, end time, CPU, peak memory) to ``keeper.exits`` in the state directory, and hands the
pipes to the server over a unix socket (``SCM_RIGHTS``), to the server that started the agent
and again to the next one after a crash or an upgrade. While no server runs, agents write into
their pipes until they are full and then wait: nothing they write is lost and none dies of it.

It knows nothing of ZeroMQ, output or agent states: the server decides, signals and reads; the
keeper only starts, holds, reaps and tells. The socket (``keeper.sock``, mode 0600 in the
state directory) accepts connections of this process's own user only (``SO_PEERCRED``), one
server at a time. An agent may run under a pseudo-terminal (``stdin`` ``pty``): its stdin,
stdout and stderr are the terminal, whose master the keeper holds like a pipe. When the server
goes away, the keeper keeps the agents (the server said ``keep`` in its hello: crash or
upgrade) or ends them all (``die``: ``--agents-die-with-server``); it exits once it holds
nothing and no server is connected.

The protocol (version :data:`VERSION`): each message is a 4-byte big-endian length and a JSON
object; pipe descriptors travel as ``SCM_RIGHTS`` with the first byte of their message, in the
order the message gives. Server → keeper: ``hello`` {version, mode}, ``spawn`` {id, argv, env,
cwd, stdin, [rows, cols]}, ``close_stdin`` {id}, ``release`` {id}. Keeper → server: ``held``
{id, pid, started_at, stdin, pty, exit} (one per agent it holds, with its fds), ``ready``
{version, pid, cgroups, held, features} (the end of the hello), ``spawned`` {id, pid,
started_at, pty} (fds: stdout, stderr and stdin if piped; under a terminal: its master, a
stderr that ends at once, and the master again for stdin), ``refused`` {id, errno, error},
``exited`` {id, pid, code, ended_at, utime, stime, maxrss}. ``features`` names what this
keeper does beyond version 1 (``pty``), so that a newer server asks an older keeper (still
holding agents through an upgrade) for nothing it cannot do.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import fcntl
import json
import os
import selectors
import shutil
import signal
import socket
import struct
import sys
import termios
import time
from pathlib import Path
from typing import Any, Final

from descartes_fast.agents.cgroups import AgentCgroups

__all__ = ["VERSION", "SOCKET", "EXITS", "LOCK", "HEADER", "MAX_MESSAGE", "ANOTHER", "main"]

VERSION: Final = 1
#: what this keeper does beyond protocol version 1 (told in ``ready``)
FEATURES: Final = ("pty",)
SOCKET: Final = "keeper.sock"
EXITS: Final = "keeper.exits"
LOCK: Final = "keeper.lock"
HEADER: Final = struct.Struct(">I")
#: the exit status of a keeper started while another still holds the state directory's lock
ANOTHER: Final = 3
#: the largest message either side sends (a spawn's command line and environment)
MAX_MESSAGE: Final = 64 << 20
_EXITS_MAX: Final = 1 << 20  # bytes of keeper.exits before it is rewritten with what still matters
_END_GRACE: Final = 5.0  # seconds between SIGTERM and SIGKILL when the keeper ends its agents
_PR_SET_CHILD_SUBREAPER: Final = 36


class _Agent:
    __slots__ = ("exit", "fds", "id", "pid", "pty", "started_at", "stdin")

    def __init__(self, agent_id: str, pid: int, fds: list[int], stdin: bool, pty: bool) -> None:
        self.id, self.pid, self.fds, self.stdin, self.pty = agent_id, pid, fds, stdin, pty
        self.started_at = time.time_ns()
        self.exit: dict[str, Any] | None = None


class Keeper:
    """The keeper's state and event loop (single-threaded: see :meth:`AgentCgroups.spawn_into`)."""

    def __init__(self, state_dir: Path, listener: socket.socket, cgroups: AgentCgroups | None) -> None:
        self.state_dir = state_dir
        self.listener = listener
        self.cgroups = cgroups
        self.agents: dict[str, _Agent] = {}
        self.by_pid: dict[int, _Agent] = {}
        self.dying: dict[int, str] = {}  # pid -> id of agents released while they ran, until reaped
        self.server: socket.socket | None = None
        self.mode = "keep"
        self.inbox = bytearray()
        self.outbox = bytearray()
        self.out_fds: list[tuple[int, list[int]]] = []  # (offset in outbox where the fds go, fds)
        self.selector = selectors.DefaultSelector()
        self.exits = open(state_dir / EXITS, "a", buffering=1)
        self.ending = False
        self.greeted = False  # the connected server has said hello (nothing is sent to it before)
        self.end_deadline = 0.0
        wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self.wake_w)
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, lambda *_: None)
        self.wake_r = wake_r
        self.selector.register(wake_r, selectors.EVENT_READ, self._on_signal)
        self.selector.register(listener, selectors.EVENT_READ, self._on_connect)

    # -- the loop --

    def run(self) -> None:
        while True:
            for key, _ in self.selector.select(timeout=0.02 if self.ending else None):
                key.data()
            self._reap()
            if self.ending:
                self._end_step()
            if not self.agents and not self.dying and self.server is None:
                _log("holds no agent and no server is connected: exiting")
                if self.cgroups is not None:
                    for stale in self.cgroups.existing():  # (what a killed keeper before this one left)
                        self.cgroups.remove(stale)  # only if empty: what still runs there is kept
                    try:
                        self.cgroups.base.rmdir()
                    except OSError:
                        pass  # (not empty: something still runs in one of its cgroups)
                (self.state_dir / SOCKET).unlink(missing_ok=True)
                self.listener.close()  # (a server connecting now gets a reset, and starts another keeper)
                return

    def _on_signal(self) -> None:
        try:
            got = os.read(self.wake_r, 64)
        except BlockingIOError:
            return
        if any(b in (signal.SIGTERM, signal.SIGINT) for b in got):
            _log("SIGTERM: ending every agent")
            self._end_all()
        # SIGCHLD: reaped after every wakeup (see run); SIGHUP: ignored (the keeper has no terminal)

    def _reap(self) -> None:
        while True:
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            agent = self.by_pid.pop(pid, None)
            if agent is None:  # an abandoned agent, or an orphan an agent left (this process is their subreaper)
                abandoned = self.dying.pop(pid, None)
                if abandoned is not None and self.cgroups is not None:
                    self.cgroups.remove(abandoned)
                continue
            code = os.waitstatus_to_exitcode(status)
            agent.exit = {"code": code, "ended_at": time.time_ns(), "utime": usage.ru_utime,
                          "stime": usage.ru_stime, "maxrss": usage.ru_maxrss}
            self.exits.write(json.dumps({"id": agent.id, "pid": pid, **agent.exit}) + "\n")
            self._send({"op": "exited", "id": agent.id, "pid": pid, **agent.exit})

    # -- the server connection --

    def _on_connect(self) -> None:
        conn, _ = self.listener.accept()
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, uid, _gid = struct.unpack("3i", creds)
        if uid != os.getuid():
            _log(f"refused a connection of uid {uid} (pid {pid}): only uid {os.getuid()} may connect")
            conn.close()
            return
        if self.server is not None:
            _log(f"refused a second server (pid {pid}): one is connected already")
            conn.close()
            return
        conn.setblocking(False)
        self.server = conn
        self.inbox.clear()
        self.greeted = False
        self.selector.register(conn, selectors.EVENT_READ, self._on_ready)
        _log(f"server pid {pid} connected")

    def _on_readable(self) -> None:
        assert self.server is not None
        try:
            data = self.server.recv(1 << 20)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._disconnected()
            return
        self.inbox += data
        while len(self.inbox) >= HEADER.size:
            (size,) = HEADER.unpack_from(self.inbox)
            if size > MAX_MESSAGE:
                _log(f"a message of {size} bytes is over the limit: disconnecting the server")
                self._disconnected()
                return
            if len(self.inbox) < HEADER.size + size:
                break
            body = bytes(self.inbox[HEADER.size:HEADER.size + size])
            del self.inbox[:HEADER.size + size]
            try:
                message = json.loads(body)
                self._handle(message)
            except (ValueError, KeyError, TypeError) as exc:
                _log(f"a malformed message ({exc}): disconnecting the server")
                self._disconnected()
                return
            if self.server is None:
                return

    def _disconnected(self) -> None:
        assert self.server is not None
        self.selector.unregister(self.server)
        self.server.close()
        self.server = None
        self.outbox.clear()
        self.out_fds.clear()
        if self.mode == "die":
            _log("the server went away and asked that its agents die with it: ending them")
            self._end_all()
        elif self.agents:
            _log(f"the server went away: keeping {len(self.agents)} agent(s) for the next one")

    def _handle(self, message: dict[str, Any]) -> None:
        op = message["op"]
        if op == "hello":
            if message["version"] != VERSION:
                self.greeted = True
                self._send({"op": "ready", "version": VERSION, "error": f"keeper protocol {VERSION} only"})
                return
            self.mode = message["mode"]
            self.greeted = True
            for agent in self.agents.values():
                self._send({"op": "held", "id": agent.id, "pid": agent.pid, "started_at": agent.started_at,
                            "stdin": agent.stdin, "pty": agent.pty, "exit": agent.exit}, agent.fds)
            self._send({"op": "ready", "version": VERSION, "pid": os.getpid(), "held": len(self.agents),
                        "cgroups": str(self.cgroups.base) if self.cgroups else None, "features": FEATURES})
        elif op == "spawn":
            self._spawn(message)
        elif op == "close_stdin":
            held = self.agents.get(message["id"])
            if held is not None and held.stdin:
                os.close(held.fds.pop())
                held.stdin = False
        elif op == "release":
            gone = self.agents.pop(message["id"], None)
            if gone is not None:
                for fd in gone.fds:
                    os.close(fd)
                if gone.exit is None:  # released while it runs: abandoned (a start that must not go on)
                    del self.by_pid[gone.pid]
                    self.dying[gone.pid] = gone.id  # its exit is nobody's now; its cgroup goes once it is reaped
                    self._kill(gone.pid, gone.id)
                elif self.cgroups is not None:
                    self.cgroups.remove(gone.id)
                if not self.agents or self.exits.tell() > _EXITS_MAX:
                    self._rewrite_exits()
        else:
            raise ValueError(f"unknown op {op!r}")

    def _rewrite_exits(self) -> None:
        """Keep only the exits of agents still held (the others have reached a server)."""
        self.exits.seek(0)
        self.exits.truncate(0)
        for agent in self.agents.values():
            if agent.exit is not None:
                self.exits.write(json.dumps({"id": agent.id, "pid": agent.pid, **agent.exit}) + "\n")

    def _spawn(self, message: dict[str, Any]) -> None:
        agent_id, mode = message["id"], message["stdin"]
        if mode == "pty":
            self._spawn_pty(message)
            return
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        in_r, in_w = os.pipe() if mode != "null" else (None, None)
        child_ends = [fd for fd in (out_w, err_w, in_r) if fd is not None]

        stdin = (os.POSIX_SPAWN_DUP2, in_r, 0) if in_r is not None else \
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0)
        actions = [stdin, (os.POSIX_SPAWN_DUP2, out_w, 1), (os.POSIX_SPAWN_DUP2, err_w, 2)]
        pid = self._start(message, actions, [out_r, err_r] + ([in_w] if in_w is not None else []))
        for fd in child_ends:
            os.close(fd)
        if pid is None:
            return
        if mode == "close" and in_w is not None:
            os.close(in_w)
            in_w = None
        self._spawned(agent_id, pid, [out_r, err_r] + ([in_w] if in_w is not None else []), in_w is not None, False)

    def _spawn_pty(self, message: dict[str, Any]) -> None:
        """Start an agent whose stdin, stdout and stderr are a new pseudo-terminal: the child, a
        session leader (posix_spawn calls setsid before its file actions), opens the terminal by
        name, which makes it its controlling terminal; the keeper keeps the master."""
        master, slave = os.openpty()
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", message.get("rows", 24),
                                                            message.get("cols", 80), 0, 0))
        name = os.ttyname(slave)
        err_r, err_w = os.pipe()  # (what the server reads as stderr: it ends at once, stderr is the terminal)
        os.close(err_w)
        actions = [(os.POSIX_SPAWN_OPEN, 0, name, os.O_RDWR, 0), (os.POSIX_SPAWN_DUP2, 0, 1),
                   (os.POSIX_SPAWN_DUP2, 0, 2)]
        pid = self._start(message, actions, [master, err_r])
        os.close(slave)  # (the child has its own: the master reads the end when the last one closes)
        if pid is not None:
            self._spawned(message["id"], pid, [master, err_r, os.dup(master)], True, True)

    def _start(self, message: dict[str, Any], actions: list[tuple[Any, ...]], fds: list[int]) -> int | None:
        """Spawn (in the agent's cgroup where there are cgroups): its pid, or None when refused
        (then *fds*, the server's ends, are closed, the cgroup removed and the server told why)."""
        agent_id = message["id"]

        def start() -> int:
            return _spawn(message["argv"], message["env"], message["cwd"], actions)
        try:
            if self.cgroups is not None:
                self.cgroups.make(agent_id)
                return self.cgroups.spawn_into(agent_id, start)
            return start()
        except (OSError, ValueError) as exc:
            for fd in fds:
                os.close(fd)
            if self.cgroups is not None:
                self.cgroups.remove(agent_id)
            code = exc.errno if isinstance(exc, OSError) and exc.errno else errno.EINVAL
            text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            if isinstance(exc, OSError) and exc.filename:
                text = f"{text}: {exc.filename!r}"
            self._send({"op": "refused", "id": agent_id, "errno": code, "error": text})
            return None

    def _spawned(self, agent_id: str, pid: int, fds: list[int], stdin: bool, pty: bool) -> None:
        agent = self.agents[agent_id] = _Agent(agent_id, pid, fds, stdin, pty)
        self.by_pid[agent.pid] = agent
        self._send({"op": "spawned", "id": agent_id, "pid": agent.pid, "started_at": agent.started_at,
                    "pty": pty}, fds)

    def _send(self, message: dict[str, Any], fds: list[int] | None = None) -> None:
        """Queue *message* for the server (dropped if none is connected: it learns on its hello)."""
        if self.server is None or not self.greeted:
            return
        if fds:
            message["fds"] = len(fds)
        body = json.dumps(message, separators=(",", ":")).encode()
        if fds:
            self.out_fds.append((len(self.outbox), list(fds)))
        self.outbox += HEADER.pack(len(body)) + body
        self._flush()

    def _flush(self) -> None:
        """Send what is queued; what the socket cannot take waits for it to be writable."""
        assert self.server is not None
        sent_total = 0
        view = memoryview(self.outbox)
        try:
            while sent_total < len(self.outbox):
                if self.out_fds and self.out_fds[0][0] == sent_total:
                    # the fds go with the first byte of their message, and only with it
                    end = self.out_fds[1][0] if len(self.out_fds) > 1 else len(self.outbox)
                    sent = socket.send_fds(self.server, [view[sent_total:end]], self.out_fds[0][1])
                    self.out_fds.pop(0)  # (sent: a send that would block raised before this)
                else:
                    end = self.out_fds[0][0] if self.out_fds else len(self.outbox)
                    sent = self.server.send(view[sent_total:end])
                sent_total += sent
        except BlockingIOError:
            pass
        except OSError:
            view.release()
            self._disconnected()
            return
        view.release()
        del self.outbox[:sent_total]
        self.out_fds = [(at - sent_total, fds) for at, fds in self.out_fds]
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if self.outbox else 0)
        self.selector.modify(self.server, events, self._on_ready)

    def _on_ready(self) -> None:
        """The server's socket is readable or writable (the selector cannot tell us which)."""
        if self.server is not None and self.outbox:
            self._flush()
        if self.server is not None:
            self._on_readable()

    # -- ending every agent (SIGTERM to the keeper, or the server gone in 'die' mode) --

    def _end_all(self) -> None:
        if not self.ending:
            self.ending = True
            self.end_deadline = time.monotonic() + _END_GRACE
            self._signal_all(signal.SIGTERM)
            self._signal_all(signal.SIGCONT)

    def _signal_all(self, sig: int) -> None:
        for agent in self.agents.values():
            if sig == signal.SIGKILL:
                self._kill(agent.pid, agent.id)
                continue
            if self.cgroups is not None:
                self.cgroups.signal(agent.id, sig)
            try:
                os.killpg(agent.pid, sig)
            except OSError:
                pass

    def _kill(self, pid: int, agent_id: str) -> None:
        """SIGKILL all of an agent: its cgroup, and its process group."""
        if self.cgroups is not None:
            self.cgroups.kill(agent_id)
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass

    def _end_step(self) -> None:
        """While ending: SIGKILL after the grace; an agent goes once its main process has exited
        and nothing is left of its group (or cgroup)."""
        if time.monotonic() >= self.end_deadline:
            self._signal_all(signal.SIGKILL)
        for agent in list(self.agents.values()):
            if agent.exit is not None and not _group_alive(agent.pid) and \
                    (self.cgroups is None or not self.cgroups.populated(agent.id)):
                for fd in agent.fds:
                    os.close(fd)
                if self.cgroups is not None:
                    self.cgroups.remove(agent.id)
                del self.agents[agent.id]
        if not self.agents:
            self.ending = False


#: signals the child gets back at their default: Python ignores SIGPIPE and SIGXFSZ, and a
#: process started in the background ignores SIGINT and SIGQUIT (exec keeps what is ignored)
_DEFAULT_SIGNALS: Final = (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGQUIT)
_programs: dict[tuple[str, str], str] = {}  # (name, PATH) -> the program found


def _spawn(argv: list[str], env: dict[str, str], cwd: str | None, actions: list[tuple[Any, ...]]) -> int:
    """Start *argv* in a new session with *env* in *cwd* (posix_spawn: a vfork and an exec, the
    fastest start Python offers); its pid. The program is looked up in *env*'s PATH, as
    subprocess does; the keeper steps into *cwd* for the spawn (it is single-threaded)."""
    name = argv[0]
    path = env.get("PATH", os.defpath)
    program = _programs.get((name, path)) if "/" not in name else name
    if program is None:
        program = shutil.which(name, path=path)
        if program is None:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), name)
        _programs[(name, path)] = program
    here = None
    if cwd is not None:
        here = os.getcwd()
        os.chdir(cwd)
    try:
        return os.posix_spawn(program, argv, env, file_actions=actions, setsid=True, setsigmask=(),
                              setsigdef=_DEFAULT_SIGNALS)
    finally:
        if here is not None:
            os.chdir(here)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _log(text: str) -> None:
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} keeper[{os.getpid()}]: {text}", file=sys.stderr, flush=True)


def _listen(state_dir: Path) -> socket.socket:
    path = state_dir / SOCKET
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    old = os.umask(0o177)  # the socket: mode 0600 (connections are also checked by uid)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    sock.listen(8)
    sock.setblocking(False)
    return sock


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m descartes_fast.agents.keeper",
                                     description="The parent of one state directory's agents, which outlives the "
                                                 "server (started by descartes-fast-server; not run by hand).")
    parser.add_argument("--state-dir", type=Path, required=True, metavar="DIR",
                        help="the server's --state-dir: the socket, lock, exits and log of this keeper go there")
    parser.add_argument("--containment", choices=("auto", "cgroup", "process-group"), default="auto",
                        help="per-agent cgroups where the unified hierarchy is writable (auto), always (cgroup: "
                             "fail if not), or never (process-group)")
    parser.add_argument("--foreground", action="store_true", help="do not detach (for tests and debugging)")
    args = parser.parse_args(argv)
    state_dir: Path = args.state_dir
    os.umask(0o077)  # its files are its user's alone, like the rest of the state directory
    lock = os.open(state_dir / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"a keeper runs for {state_dir} already", file=sys.stderr)
        return ANOTHER  # the server connects to that one (or waits for it to exit, and starts another)
    cgroups = None
    if args.containment != "process-group":
        cgroups = AgentCgroups.create(f"descartes-fast-{os.getuid()}-{_digest(state_dir)}")
        if cgroups is None and args.containment == "cgroup":
            print("no writable cgroup v2 hierarchy (--containment cgroup)", file=sys.stderr)
            return 2
    listener = _listen(state_dir)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    if not args.foreground:
        os.setsid()  # no terminal's signals reach it
        if os.fork():  # the server waits for this parent: when it exits, the socket is listening
            os._exit(0)
    os.ftruncate(lock, 0)
    os.pwrite(lock, f"{os.getpid()}\n".encode(), 0)
    with open(state_dir / EXITS, "w"):
        pass  # it holds nothing yet: what a keeper before it wrote down, the server has read
    fd = os.open("/dev/null", os.O_RDONLY)
    os.dup2(fd, 0)
    os.close(fd)
    _log(f"keeping agents of {state_dir} ({'cgroups under ' + str(cgroups.base) if cgroups else 'process groups'})")
    Keeper(state_dir, listener, cgroups).run()
    return 0


def _digest(path: Path) -> str:
    import hashlib
    return hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]


if __name__ == "__main__":
    sys.exit(main())
