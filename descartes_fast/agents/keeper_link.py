"""The server's end of the keeper (:mod:`descartes_fast.agents.keeper`): start it if none runs,
say hello, learn which agents it holds, then ask it to start agents and hear of their exits on
the event loop.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import json
import logging
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from descartes_fast.agents.cgroups import AgentCgroups
from descartes_fast.agents.keeper import ANOTHER as _ANOTHER
from descartes_fast.agents.keeper import EXITS, HEADER, MAX_MESSAGE, SOCKET, VERSION

__all__ = ["KeeperLink", "KeeperError", "Held", "Exit", "MODES", "CONTAINMENTS"]

MODES: Final = ("keep", "die")
CONTAINMENTS: Final = ("auto", "cgroup", "process-group")
_START_TIMEOUT: Final = 10.0

log = logging.getLogger("descartes_fast.keeper")


class KeeperError(Exception):
    """The keeper cannot be started, reached or understood (the text says why)."""


@dataclass
class Exit:
    """How an agent's main process ended, as the keeper reaped it."""

    code: int           # negative: the signal
    ended_at: int       # time.time_ns()
    usage: resource.struct_rusage

    @classmethod
    def of(cls, data: dict[str, Any]) -> Exit:
        usage = resource.struct_rusage((data["utime"], data["stime"], data["maxrss"]) + (0,) * 13)
        return cls(data["code"], data["ended_at"], usage)


@dataclass
class Held:
    """An agent the keeper holds: its pid, pipes (our copies) and, if it has ended, its exit."""

    id: str
    pid: int
    started_at: int
    stdout_fd: int
    stderr_fd: int
    stdin_fd: int | None
    exit: Exit | None
    pty: bool = False   # its stdin, stdout and stderr are a terminal: stdout_fd and stdin_fd are its master


class KeeperLink:
    """Connected to the keeper of *state_dir* (started if none runs) in *mode* (``keep``: agents
    outlive this server; ``die``: the keeper ends them when this server goes). ``held`` is what
    it held at the hello; :meth:`attach` puts the link on an event loop."""

    def __init__(self, state_dir: Path, mode: str = "keep", containment: str = "auto") -> None:
        if mode not in MODES or containment not in CONTAINMENTS:
            raise ValueError(f"mode {mode!r} / containment {containment!r}")
        self.state_dir = Path(state_dir)
        self.mode = mode
        self.asked = containment
        self._inbox = bytearray()
        self._fds: collections.deque[int] = collections.deque()
        self._outbox = bytearray()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._spawns: dict[str, asyncio.Future[Held]] = {}
        self._on_exit: dict[str, Callable[[Exit], None]] = {}
        self._exits: dict[str, Exit] = {}  # exits heard before anyone listened for them
        self.on_lost: Callable[[], None] | None = None
        self.lost = False
        self.held: dict[str, Held] = {}
        self.recorded = self._recorded_exits()
        deadline = time.monotonic() + _START_TIMEOUT
        while True:
            self.sock = self._connect(containment, deadline)
            try:
                ready = self._hello()
                break
            except ConnectionError:  # a keeper that was exiting as we connected: start another
                self.sock.close()
                self._inbox.clear()
                self.held.clear()
                if time.monotonic() > deadline:
                    raise KeeperError(f"the keeper of {self.state_dir} closes every connection "
                                      f"(see {self.state_dir / 'keeper.log'})") from None
        self.keeper_pid: int = ready["pid"]
        self.cgroups = AgentCgroups(Path(ready["cgroups"])) if ready["cgroups"] else None
        self.containment = "cgroup" if self.cgroups is not None else "process-group"
        self.features: frozenset[str] = frozenset(ready.get("features", ()))  # (what it does beyond version 1)

    def successor(self) -> KeeperLink:
        """A link to a new keeper of the same directory, mode and containment (after this one was lost)."""
        return KeeperLink(self.state_dir, self.mode, self.asked)

    # -- start-up (blocking) --

    def _recorded_exits(self) -> dict[str, Exit]:
        """The exits a keeper wrote down (read before a new keeper starts: it clears them), for
        agents no keeper holds any more: a keeper that ended its agents (``die``) or was killed."""
        out = {}
        try:
            with open(self.state_dir / EXITS, "rb") as f:
                for line in f:
                    try:
                        data = json.loads(line)
                        out[data["id"]] = Exit.of(data)
                    except (ValueError, KeyError, TypeError):
                        continue  # (a line cut short by a crash)
        except FileNotFoundError:
            pass
        return out

    def _connect(self, containment: str, deadline: float) -> socket.socket:
        """Connect to the keeper, starting one while none listens (a keeper that runs already
        makes a second one exit at once: starting is never harmful)."""
        path = str(self.state_dir / SOCKET)
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            try:
                sock.connect(path)
                return sock
            except (FileNotFoundError, ConnectionRefusedError):
                sock.close()
            if time.monotonic() > deadline:
                raise KeeperError(f"the keeper of {self.state_dir} does not listen on {path} "
                                  f"(see {self.state_dir / 'keeper.log'})")
            if self._start_keeper(containment) != 0:  # another keeper is still there, exiting
                time.sleep(0.01)

    def _start_keeper(self, containment: str) -> int:
        """Start the keeper of the installed package; it detaches once it listens."""
        errors = os.open(self.state_dir / "keeper.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            proc = subprocess.Popen([sys.executable, "-I", "-m", "descartes_fast.agents.keeper", "--state-dir",
                                     str(self.state_dir), "--containment", containment],
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errors,
                                    close_fds=True)
        finally:
            os.close(errors)
        try:
            code = proc.wait(_START_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise KeeperError(f"the keeper of {self.state_dir} did not start within {_START_TIMEOUT:g} s") from None
        if code == _ANOTHER:
            return code
        if code != 0:
            tail = (self.state_dir / "keeper.log").read_text(errors="replace").strip().splitlines()[-1:]
            raise KeeperError(f"the keeper of {self.state_dir} failed to start (exit {code}): "
                              f"{tail[0] if tail else 'no message'}")
        log.info("started the keeper of %s", self.state_dir)
        return 0

    def _hello(self) -> dict[str, Any]:
        self.sock.settimeout(_START_TIMEOUT)
        try:
            self.sock.sendall(_frame({"op": "hello", "version": VERSION, "mode": self.mode}))
            while True:
                for message in self._receive():
                    if message["op"] == "ready":
                        if message.get("error"):
                            raise KeeperError(f"the keeper refused: {message['error']}")
                        return message
                    if message["op"] == "held":
                        held = self._held(message)
                        self.held[held.id] = held
                    elif message["op"] == "exited":  # (not sent before ready; kept if it were)
                        self._exits[message["id"]] = Exit.of(message)
        except ConnectionError:
            raise
        except OSError as exc:
            raise KeeperError(f"the keeper of {self.state_dir} did not answer: {exc}") from None
        finally:
            self.sock.settimeout(None)

    def _held(self, message: dict[str, Any]) -> Held:
        fds = [self._fds.popleft() for _ in range(message.get("fds", 0))]
        stdin = fds[2] if len(fds) > 2 else None
        exit = Exit.of(message["exit"]) if message.get("exit") else None
        return Held(message["id"], message["pid"], message["started_at"], fds[0], fds[1], stdin, exit,
                    bool(message.get("pty")))

    def _receive(self) -> list[dict[str, Any]]:
        """Read once (blocks unless the socket is non-blocking); the messages now complete."""
        data, fds, _flags, _addr = socket.recv_fds(self.sock, 1 << 20, 253)
        self._fds.extend(fds)
        if not data:
            raise ConnectionResetError("the keeper closed the connection")
        self._inbox += data
        out = []
        while len(self._inbox) >= HEADER.size:
            (size,) = HEADER.unpack_from(self._inbox)
            if size > MAX_MESSAGE:
                raise ConnectionResetError(f"a message of {size} bytes from the keeper")
            if len(self._inbox) < HEADER.size + size:
                break
            out.append(json.loads(bytes(self._inbox[HEADER.size:HEADER.size + size])))
            del self._inbox[:HEADER.size + size]
        return out

    # -- on the event loop --

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Hear the keeper on *loop* from now on (once)."""
        if self._loop is not None or self.lost:
            return
        self._loop = loop
        self.sock.setblocking(False)
        loop.add_reader(self.sock.fileno(), self._on_readable)

    def _on_readable(self) -> None:
        try:
            messages = self._receive()
        except BlockingIOError:
            return
        except (OSError, ValueError) as exc:
            self._gone(str(exc))
            return
        for message in messages:
            op = message["op"]
            if op == "exited":
                exit = Exit.of(message)
                callback = self._on_exit.pop(message["id"], None)
                if callback is None:
                    self._exits[message["id"]] = exit
                else:
                    callback(exit)
            elif op in ("spawned", "refused"):
                future = self._spawns.pop(message["id"], None)
                if op == "spawned":
                    held = self._held({**message, "exit": None})
                    if future is None or future.done():  # the spawn was given up: nobody takes it
                        self._kill(held)
                        for fd in (held.stdout_fd, held.stderr_fd, held.stdin_fd):
                            if fd is not None:
                                os.close(fd)
                        self.release(held.id)
                    else:
                        future.set_result(held)
                elif future is not None and not future.done():
                    future.set_exception(OSError(message["errno"], message["error"]))

    def _kill(self, held: Held) -> None:
        if self.cgroups is not None:
            self.cgroups.kill(held.id)
        try:
            os.killpg(held.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def _gone(self, why: str) -> None:
        """The keeper went away (killed, or it failed): nothing more comes from it."""
        if self.lost:
            return
        self.lost = True
        log.error("lost the keeper (pid %d) of %s: %s", self.keeper_pid, self.state_dir, why)
        self.close()
        for future in self._spawns.values():
            if not future.done():
                future.set_exception(OSError(0, "the keeper went away"))
        self._spawns.clear()
        if self.on_lost is not None:
            self.on_lost()

    def _send(self, message: dict[str, Any]) -> None:
        if self.lost:
            return
        self._outbox += _frame(message)
        self._flush()

    def _flush(self) -> None:
        if self._loop is None:  # not on a loop yet: the socket still blocks
            try:
                self.sock.sendall(self._outbox)
            except OSError as exc:
                self._gone(str(exc))
            self._outbox.clear()
            return
        try:
            while self._outbox:
                sent = self.sock.send(self._outbox)
                del self._outbox[:sent]
        except BlockingIOError:
            pass
        except OSError as exc:
            self._gone(str(exc))
            return
        if self._outbox:
            self._loop.add_writer(self.sock.fileno(), self._flush)
        else:
            self._loop.remove_writer(self.sock.fileno())

    async def spawn(self, agent_id: str, argv: list[str], env: dict[str, str], cwd: str | None,
                    stdin: str, size: tuple[int, int] = (24, 80)) -> Held:
        """Have the keeper start an agent (stdin: ``pipe``, ``null``, ``close``, or ``pty``: under a
        terminal of *size* rows and columns); OSError if it cannot."""
        if self.lost:
            raise OSError(0, "the keeper went away")
        if stdin == "pty" and "pty" not in self.features:
            raise OSError(errno.ENOTSUP, f"the keeper (pid {self.keeper_pid}) is of an older version that "
                                         "cannot start agents under a terminal; it exits once its agents have "
                                         "ended, and the next one can")
        loop = asyncio.get_running_loop()
        self.attach(loop)
        future = self._spawns[agent_id] = loop.create_future()
        message: dict[str, Any] = {"op": "spawn", "id": agent_id, "argv": argv, "env": env, "cwd": cwd,
                                   "stdin": stdin}
        if stdin == "pty":
            message["rows"], message["cols"] = size
        self._send(message)
        return await future

    def on_exit(self, agent_id: str, callback: Callable[[Exit], None]) -> None:
        """Call *callback* once the agent's main process has been reaped (at once if it has been)."""
        exit = self._exits.pop(agent_id, None)
        if exit is not None:
            callback(exit)
        else:
            self._on_exit[agent_id] = callback

    def close_stdin(self, agent_id: str) -> None:
        """The keeper closes its copy of the agent's stdin (so that the agent sees the end)."""
        self._send({"op": "close_stdin", "id": agent_id})

    def release(self, agent_id: str) -> None:
        """The keeper closes its copies of the agent's pipes and forgets it (it has ended and its
        output is read, or it is being abandoned)."""
        self._on_exit.pop(agent_id, None)
        self._exits.pop(agent_id, None)
        self._send({"op": "release", "id": agent_id})

    def close(self) -> None:
        """Disconnect: the keeper keeps the agents (``keep``) or ends them (``die``). Once."""
        if self.sock.fileno() == -1:
            return
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self.sock.fileno())
            self._loop.remove_writer(self.sock.fileno())
        if self._outbox:  # (releases said last: worth a moment's wait)
            try:
                self.sock.setblocking(True)
                self.sock.settimeout(1.0)
                self.sock.sendall(self._outbox)
            except OSError:
                pass
        self.sock.close()
        self.lost = True


def _frame(message: dict[str, Any]) -> bytes:
    body = json.dumps(message, separators=(",", ":")).encode()
    return HEADER.pack(len(body)) + body
