"""One agent's operating-system process: started in its own session with pipes, watched on the
event loop (a pidfd for its exit, non-blocking pipes for its output, a queue for its stdin),
and signalled as a whole process group. No ZeroMQ and no agent state here: the supervisor
(:mod:`descartes_fast.agents.supervisor`) decides; this module does.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import resource
import signal
import struct
import subprocess
import termios
from collections.abc import Callable
from typing import IO

from descartes_fast.agents.backends import Launch
from descartes_fast.wire.schema import LogStreamType

__all__ = ["AgentProcess", "EndedProcess", "StdinClosedError", "StdinFullError", "PipeBudget", "PIPES", "PIPE_SIZE"]

#: the pipe capacity a busy stream gets. Linux gives a pipe 64 KiB; an agent that fills it blocks
#: until the server has read it, and the server reads it often: with 1 MiB, about three times
#: the capture rate (bench/output_bench.py).
PIPE_SIZE = 1 << 20
#: the most one read of a pipe takes: what the loop then stores and publishes before it answers
#: anyone else (a larger pipe still lets the writer run ahead while the loop is busy)
READ_SLICE = 256 << 10
#: the most enlarged pipe capacity this process holds at once (see :class:`PipeBudget`)
PIPE_BUDGET_MAX = 16 << 20


class PipeBudget:
    """How much capacity beyond the default this process's pipes may hold at once.

    The kernel counts pipe capacity per user; past ``/proc/sys/fs/pipe-user-pages-soft`` (64 MiB
    by default) it gives every new pipe of that user two pages only (the agents' own pipes too),
    and refuses to enlarge any. So only streams that fill their pipe are enlarged, and only while
    the total stays within a quarter of that limit (at most :data:`PIPE_BUDGET_MAX`); a pipe gives
    its share back when it closes. Used on the event loop's thread only.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    @classmethod
    def from_kernel(cls) -> PipeBudget:
        try:
            with open("/proc/sys/fs/pipe-user-pages-soft") as f:
                pages = int(f.read())
        except (OSError, ValueError):
            pages = 0
        soft = pages * os.sysconf("SC_PAGE_SIZE") if pages else PIPE_BUDGET_MAX * 4  # 0: no soft limit
        return cls(min(PIPE_BUDGET_MAX, soft // 4))

    def grow(self, fd: int, capacity: int) -> int:
        """Enlarge the pipe *fd* (of *capacity* bytes) to :data:`PIPE_SIZE` if the budget allows;
        its capacity afterwards."""
        if capacity >= PIPE_SIZE or self.used + PIPE_SIZE - capacity > self.limit:
            return capacity
        try:
            grown = fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:  # the kernel refused (the user's pipes hold too much already)
            return capacity
        self.used += grown - capacity
        return grown

    def release(self, extra: int) -> None:
        self.used -= extra


#: this process's budget (the kernel's limit is per user, so one count per process)
PIPES = PipeBudget.from_kernel()

#: ``on_output(stream, data)``: *data* as read, ``b""`` once at the end of the stream
OutputCallback = Callable[[LogStreamType, bytes], None]
#: ``on_exit(exit_code, usage)``: the process has been reaped (its pipes are drained first)
ExitCallback = Callable[[int, "resource.struct_rusage"], None]


class StdinClosedError(Exception):
    """The agent's stdin is closed (never opened, closed by request, or the reader went away)."""


def group_members(pgid: int) -> int:
    """Processes of group *pgid* that have not exited (zombies waiting for their reaper do not
    count); 0 when the group is gone. Scans /proc only when the group still exists."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return 0
    except PermissionError:
        pass  # it exists (a member changed user): count what /proc shows
    count = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
            except OSError:
                continue  # gone meanwhile
            if int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
                count += 1
    return count


class StdinFullError(Exception):
    """A write to stdin refused: more than *limit* bytes would wait for the agent to read them."""

    def __init__(self, queued: int, size: int, after: int, limit: int) -> None:
        super().__init__(f"{queued:,} bytes already wait for the agent to read them; this write of {size:,} "
                         f"bytes would leave {after:,} waiting, over the limit of {limit:,} (--stdin-buffer)")
        self.queued, self.size, self.after, self.limit = queued, size, after, limit


class AgentProcess:
    """A started agent process; use :meth:`start` (blocking, from a worker thread), then :meth:`watch`."""

    def __init__(self, popen: subprocess.Popen[bytes], stdin_open: bool) -> None:
        self.popen = popen
        self.pid = popen.pid
        self.exit_code: int | None = None
        self.usage: resource.struct_rusage | None = None
        self.stdin_fd: int | None = popen.stdin.fileno() if stdin_open and popen.stdin else None
        self._pending_stdin = bytearray()
        self._close_when_flushed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_output: OutputCallback | None = None
        self._on_exit: ExitCallback | None = None
        assert popen.stdout is not None and popen.stderr is not None  # start() pipes both
        self._pipes: dict[LogStreamType, IO[bytes]] = {LogStreamType.STDOUT: popen.stdout,
                                                       LogStreamType.STDERR: popen.stderr}
        self._capacity = {s: fcntl.fcntl(p.fileno(), fcntl.F_GETPIPE_SZ) for s, p in self._pipes.items()}
        self._grown = dict.fromkeys(self._pipes, 0)  # capacity beyond the default, from PIPES

    @classmethod
    def start(cls, launch: Launch, env: dict[str, str]) -> AgentProcess:
        """Start *launch* in a new session with piped stdout/stderr (and stdin per its mode)."""
        stdin = subprocess.DEVNULL if launch.stdin == "null" else subprocess.PIPE
        popen = subprocess.Popen(launch.argv, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 cwd=launch.cwd, env=env, start_new_session=True, close_fds=True)
        if launch.stdin == "close" and popen.stdin is not None:
            popen.stdin.close()
        return cls(popen, launch.stdin == "pipe")

    def abandon(self) -> None:
        """Undo a start that must not go on: SIGKILL the group, reap, close the pipes."""
        self.signal_group(signal.SIGKILL)
        self.popen.wait()
        for pipe in (self.popen.stdin, self.popen.stdout, self.popen.stderr):
            if pipe is not None:
                pipe.close()

    def watch(self, loop: asyncio.AbstractEventLoop, on_output: OutputCallback, on_exit: ExitCallback) -> None:
        """Report output and the exit on *loop* from now on."""
        self._loop, self._on_output, self._on_exit = loop, on_output, on_exit
        if self.stdin_fd is not None:
            os.set_blocking(self.stdin_fd, False)
        for stream, pipe in self._pipes.items():
            os.set_blocking(pipe.fileno(), False)
            loop.add_reader(pipe.fileno(), self._on_readable, stream)
        pidfd = os.pidfd_open(self.pid)
        loop.add_reader(pidfd, self._on_pidfd, pidfd)

    @property
    def running(self) -> bool:
        """Not reaped yet."""
        return self.exit_code is None

    # -- signals (to the whole process group: the agent runs in its own session) --

    def signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass  # the whole group is gone already

    def terminate(self, grace: float) -> None:
        """SIGTERM to the group (and SIGCONT, so a stopped group wakes to die), SIGKILL after *grace*."""
        self.signal_group(signal.SIGTERM)
        self.signal_group(signal.SIGCONT)
        assert self._loop is not None
        self._loop.call_later(grace, self.signal_group, signal.SIGKILL)

    # -- stdin --

    @property
    def stdin_open(self) -> bool:
        """Writes are accepted (stdin is a pipe, not closed and not about to close)."""
        return self.stdin_fd is not None and not self._close_when_flushed

    @property
    def stdin_queued(self) -> int:
        """Bytes written to stdin that the pipe has not taken yet (they wait in this process)."""
        return len(self._pending_stdin)

    def write(self, data: bytes, limit: int) -> int:
        """Write *data* to stdin, queueing what the pipe cannot take now; never blocks. Accepted whole
        or not at all: StdinFullError if more than *limit* bytes would then wait here, and
        StdinClosedError if the reader is gone. Returns the bytes the pipe took at once."""
        self.check_room(len(data), limit)
        assert self.stdin_fd is not None
        if self._pending_stdin:
            self._pending_stdin += data
            return 0
        try:
            sent = os.write(self.stdin_fd, data)
        except BlockingIOError:
            sent = 0
        except BrokenPipeError:
            self.close_stdin()
            raise StdinClosedError("the process stopped reading") from None
        if sent < len(data):
            self._pending_stdin += data[sent:]
            assert self._loop is not None
            self._loop.add_writer(self.stdin_fd, self._flush_stdin)
        return sent

    def check_room(self, size: int, limit: int) -> None:
        """Raise what :meth:`write` of *size* bytes would raise for want of room (StdinClosedError,
        StdinFullError), without the bytes: a write too large is refused before it is built."""
        if self.stdin_fd is None:
            raise StdinClosedError("stdin is closed")
        queued = len(self._pending_stdin)
        # what would wait here afterwards (the pipe is asked for its room only when that matters)
        after = queued + size if queued else size - self._pipe_room() if size > limit else 0
        if after > limit:
            raise StdinFullError(queued, size, after, limit)

    def _pipe_room(self) -> int:
        """Bytes the stdin pipe can take now (its capacity less what the agent has not read)."""
        assert self.stdin_fd is not None
        try:
            unread = struct.unpack("i", fcntl.ioctl(self.stdin_fd, termios.FIONREAD, b"\0\0\0\0"))[0]
            return max(0, fcntl.fcntl(self.stdin_fd, fcntl.F_GETPIPE_SZ) - unread)
        except OSError:
            return 0

    def close_stdin(self, when_flushed: bool = False) -> None:
        """Close stdin now, or once what is queued has been written (*when_flushed*)."""
        if self.stdin_fd is None:
            return
        if when_flushed and self._pending_stdin:
            self._close_when_flushed = True
            return
        if self._pending_stdin:
            assert self._loop is not None
            self._loop.remove_writer(self.stdin_fd)
            self._pending_stdin.clear()
        self.stdin_fd = None
        if self.popen.stdin is not None:
            self.popen.stdin.close()

    def _flush_stdin(self) -> None:
        assert self.stdin_fd is not None and self._loop is not None
        try:
            sent = os.write(self.stdin_fd, self._pending_stdin)
        except BlockingIOError:
            return
        except OSError:
            self.close_stdin()
            return
        del self._pending_stdin[:sent]
        if not self._pending_stdin:
            self._loop.remove_writer(self.stdin_fd)
            if self._close_when_flushed:
                self.close_stdin()

    # -- output and exit --

    def _on_readable(self, stream: LogStreamType) -> bool:
        """Read once; False when nothing more is to be had now (would block, or the end)."""
        pipe = self._pipes[stream]
        if pipe.closed:
            return False
        capacity = self._capacity[stream]
        try:
            data = os.read(pipe.fileno(), capacity if capacity < READ_SLICE else READ_SLICE)
        except BlockingIOError:
            return False
        except OSError:
            data = b""
        assert self._on_output is not None and self._loop is not None
        if data:
            if len(data) == capacity < PIPE_SIZE:  # the pipe was full: the writer waits for us
                self._capacity[stream] = PIPES.grow(pipe.fileno(), capacity)
                self._grown[stream] += self._capacity[stream] - capacity
            self._on_output(stream, data)
            return True
        self._loop.remove_reader(pipe.fileno())
        pipe.close()
        PIPES.release(self._grown[stream])
        self._grown[stream] = 0
        self._on_output(stream, b"")
        return False

    def _on_pidfd(self, pidfd: int) -> None:
        pid, status, usage = os.wait4(self.pid, os.WNOHANG)
        if pid == 0:
            return
        assert self._loop is not None and self._on_exit is not None
        self._loop.remove_reader(pidfd)
        os.close(pidfd)
        self.exit_code = os.waitstatus_to_exitcode(status)
        self.popen.returncode = self.exit_code
        self.usage = usage
        self.close_stdin()
        for stream in self._pipes:  # what the process left in its pipes comes before its exit
            while self._on_readable(stream):
                pass
        self._on_exit(self.exit_code, usage)


class EndedProcess:
    """The process of an agent that ended before this server knew it (it is in the records only):
    it has its pid and exit code, and signals and writes reach nothing."""

    stdin_fd = None
    stdin_open = False
    running = False
    usage = None

    def __init__(self, pid: int, exit_code: int | None) -> None:
        self.pid = pid
        self.exit_code = exit_code

    def signal_group(self, sig: int) -> None:
        pass

    def terminate(self, grace: float) -> None:
        pass

    stdin_queued = 0

    def write(self, data: bytes, limit: int) -> int:
        raise StdinClosedError("the agent has ended")

    def check_room(self, size: int, limit: int) -> None:
        raise StdinClosedError("the agent has ended")

    def close_stdin(self, when_flushed: bool = False) -> None:
        pass
