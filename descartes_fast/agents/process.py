"""One agent's operating-system process: started by the keeper in its own session (and cgroup)
with pipes, watched on the event loop (non-blocking pipes for its output, a queue for its
stdin, its exit from the keeper), and signalled as a whole. No ZeroMQ and no agent state here: the supervisor
(:mod:`descartes_fast.agents.supervisor`) decides; this module does.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import resource
import signal
import struct
import termios
from collections.abc import Callable

from descartes_fast.agents.backends import Launch
from descartes_fast.agents.keeper_link import Exit, Held, KeeperLink
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

#: ``on_output(stream, fd, most)``: take at most *most* bytes of the pipe *fd* (where they are
#: kept) and say how many, 0 at its end or when reading it fails (raises :class:`BlockingIOError`
#: when it has none now; an error of where they are kept is raised);
#: ``on_output(stream, None, 0)`` once when the stream has ended
OutputCallback = Callable[[LogStreamType, "int | None", int], int]
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
    """A started agent process, a child of the keeper: use :meth:`start`, then :meth:`watch`.

    Its pipes are this process's copies of what the keeper holds (:class:`Held`); its exit comes
    from the keeper. Signals go to its cgroup where the keeper made one (so processes that called
    ``setsid`` get them too), else to its process group. Under a terminal (``pty``) its stdout
    and stdin are the terminal's master, and its stderr ends at once (it is the terminal too)."""

    def __init__(self, held: Held, keeper: KeeperLink) -> None:
        self.id = held.id
        self.pid = held.pid
        self.started_at = held.started_at
        self.keeper = keeper
        self.cgroups = keeper.cgroups
        self.exit_code: int | None = None
        self.usage: resource.struct_rusage | None = None
        self.ended_at: int | None = None
        self.cpu_secs: float | None = None  # of its cgroup (all its processes), else of what it reaped
        self.stdin_fd: int | None = held.stdin_fd
        self.pty = held.pty
        self._line_open = False  # the last byte written to stdin was not a newline (a terminal's line is unfinished)
        self._pending_stdin = bytearray()
        self._close_when_flushed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_output: OutputCallback | None = None
        self._on_exit: ExitCallback | None = None
        self._exit_before: Exit | None = held.exit  # it ended while no server ran
        self._pipes: dict[LogStreamType, int] = {LogStreamType.STDOUT: held.stdout_fd,
                                                 LogStreamType.STDERR: held.stderr_fd}
        self._open = set(self._pipes)
        self._released = False
        self._capacity = {s: _capacity(fd) for s, fd in self._pipes.items()}
        self._grown = dict.fromkeys(self._pipes, 0)  # capacity beyond the default, from PIPES

    @classmethod
    async def start(cls, keeper: KeeperLink, agent_id: str, launch: Launch, env: dict[str, str]) -> AgentProcess:
        """Have the keeper start *launch* in a new session (and its own cgroup where it makes them),
        with piped stdout/stderr and stdin per its mode."""
        return cls(await keeper.spawn(agent_id, list(launch.argv), env, launch.cwd, launch.stdin, launch.size), keeper)

    def abandon(self) -> None:
        """Undo a start that must not go on: SIGKILL it all, close the pipes, let the keeper forget it."""
        self.signal_group(signal.SIGKILL)
        self.detach()
        self._released = True
        self.keeper.release(self.id)

    def detach(self) -> None:
        """Stop watching and close this process's copies of the pipes (the keeper keeps its own)."""
        if self._loop is not None:
            for stream in self._open:
                self._loop.remove_reader(self._pipes[stream])
            if self._pending_stdin and self.stdin_fd is not None:
                self._loop.remove_writer(self.stdin_fd)
        for fd in [self._pipes[s] for s in self._open] + ([self.stdin_fd] if self.stdin_fd is not None else []):
            os.close(fd)
        self._open.clear()
        self.stdin_fd = None

    def watch(self, loop: asyncio.AbstractEventLoop, on_output: OutputCallback, on_exit: ExitCallback) -> None:
        """Report output and the exit on *loop* from now on."""
        self._loop, self._on_output, self._on_exit = loop, on_output, on_exit
        if self.stdin_fd is not None:
            os.set_blocking(self.stdin_fd, False)
        for stream, fd in self._pipes.items():
            os.set_blocking(fd, False)
            loop.add_reader(fd, self._on_readable, stream)
        if self._exit_before is not None:
            loop.call_soon(self.exited, self._exit_before)
        else:
            self.keeper.on_exit(self.id, self.exited)

    @property
    def running(self) -> bool:
        """Not reaped yet."""
        return self.exit_code is None

    @property
    def max_rss_kib(self) -> int | None:
        """Peak resident memory once it has ended: of its main process and what it waited for."""
        return self.usage.ru_maxrss if self.usage is not None else None

    @property
    def released(self) -> bool:
        """The keeper has been told to let go of it."""
        return self._released

    def usage_now(self) -> tuple[float | None, int | None]:
        """While it runs: (CPU seconds used so far, bytes of memory in use): of its cgroup where it
        has one, else of its main process (/proc; so is the memory of a cgroup without the memory
        controller); None where the system does not say."""
        if self.cgroups is not None:
            cpu, memory = self.cgroups.current(self.id)
            if cpu is not None and memory is not None:
                return cpu / 1e6, memory
            if cpu is not None:
                return cpu / 1e6, self._proc_usage()[1]
        return self._proc_usage()

    def _proc_usage(self) -> tuple[float | None, int | None]:
        """(CPU seconds, resident bytes) of its main process, from /proc."""
        try:
            with open(f"/proc/{self.pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            ticks = os.sysconf("SC_CLK_TCK")
            return (int(fields[11]) + int(fields[12])) / ticks, int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return None, None

    # -- signals (to its cgroup, or to its process group: the agent runs in its own session) --

    def signal_group(self, sig: int) -> None:
        if self.cgroups is not None and self.cgroups.populated(self.id):
            if sig == signal.SIGKILL:
                self.cgroups.kill(self.id)
            else:
                self.cgroups.signal(self.id, sig)
            return
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass  # the whole group is gone already

    def members(self) -> int:
        """Its processes still running (its cgroup's, else its group's; zombies do not count)."""
        if self.cgroups is not None:
            return self.cgroups.count(self.id)
        return group_members(self.pid)

    def freeze(self) -> None:
        """Stop every process of it: its cgroup frozen, else SIGSTOP to its group."""
        if self.cgroups is not None:
            self.cgroups.freeze(self.id, True)
        else:
            self.signal_group(signal.SIGSTOP)

    def thaw(self) -> None:
        if self.cgroups is not None:
            self.cgroups.freeze(self.id, False)
        self.signal_group(signal.SIGCONT)

    def terminate(self, grace: float) -> None:
        """SIGTERM to all of it (thawed, and SIGCONT, so a stopped agent wakes to die), SIGKILL after *grace*."""
        if self.cgroups is not None:
            self.cgroups.freeze(self.id, False)
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
        if data:
            self._line_open = not data.endswith((b"\n", b"\r", b"\x04"))  # (Enter, or Ctrl-D typed)
        if self._pending_stdin:
            self._pending_stdin += data
            return 0
        try:
            sent = os.write(self.stdin_fd, data)
        except BlockingIOError:
            sent = 0
        except OSError:  # EPIPE; EIO from a terminal nobody has open any more
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
        """Close stdin now, or once what is queued has been written (*when_flushed*); the keeper
        closes its copy too, so that the agent sees the end (on a terminal: its end-of-file
        character is typed first, as Ctrl-D: twice after an unfinished line, whose input the
        first one only sends on)."""
        if self.stdin_fd is None:
            return
        if when_flushed and self._pending_stdin:
            self._close_when_flushed = True
            return
        if self._pending_stdin:
            assert self._loop is not None
            self._loop.remove_writer(self.stdin_fd)
            self._pending_stdin.clear()
        if self.pty and self.running:
            try:
                eof = termios.tcgetattr(self.stdin_fd)[6][termios.VEOF]
                os.write(self.stdin_fd, eof * (2 if self._line_open else 1))
            except OSError:
                pass  # (the terminal is gone, or full: the agent is ending anyway)
        os.close(self.stdin_fd)
        self.stdin_fd = None
        if self.running:
            self.keeper.close_stdin(self.id)

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

    # -- its terminal (pty) --

    def _master(self) -> int | None:
        if not self.pty:
            return None
        if LogStreamType.STDOUT in self._open:
            return self._pipes[LogStreamType.STDOUT]
        return self.stdin_fd

    def terminal_size(self) -> tuple[int, int] | None:
        """(rows, cols) of its terminal; None without one (or once it is closed)."""
        fd = self._master()
        if fd is None:
            return None
        try:
            rows, cols, _x, _y = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
        except OSError:
            return None
        return rows, cols

    def resize(self, rows: int, cols: int) -> None:
        """Set its terminal's size (the kernel sends SIGWINCH to the terminal's foreground group);
        StdinClosedError without a terminal."""
        fd = self._master()
        if fd is None:
            raise StdinClosedError("its terminal is closed" if self.pty else "it runs under no terminal")
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    # -- output and exit --

    def _on_readable(self, stream: LogStreamType) -> bool:
        """Read once; False when nothing more is to be had now (would block, or the end)."""
        if stream not in self._open:
            return False
        fd = self._pipes[stream]
        capacity = self._capacity[stream]
        assert self._on_output is not None and self._loop is not None
        try:
            taken = self._on_output(stream, fd, capacity if capacity < READ_SLICE else READ_SLICE)
        except BlockingIOError:
            return False
        if taken:
            if taken == capacity < PIPE_SIZE:  # the pipe was full: the writer waits for us
                self._capacity[stream] = PIPES.grow(fd, capacity)
                self._grown[stream] += self._capacity[stream] - capacity
            return True
        self._loop.remove_reader(fd)
        os.close(fd)
        self._open.discard(stream)
        PIPES.release(self._grown[stream])
        self._grown[stream] = 0
        self._on_output(stream, None, 0)
        self._release_if_done()
        return False

    def exited(self, exit: Exit) -> None:
        """Its main process has been reaped (the keeper says so; or the keeper went away and it
        was killed): take what its pipes hold, then report the exit."""
        assert self._loop is not None and self._on_exit is not None
        self.exit_code, self.usage, self.ended_at = exit.code, exit.usage, exit.ended_at
        self.cpu_secs = exit.usage.ru_utime + exit.usage.ru_stime
        if self.cgroups is not None:
            cpu_usec = self.cgroups.usage(self.id)[0]
            if cpu_usec is not None:
                self.cpu_secs = max(self.cpu_secs, cpu_usec / 1e6)
        self.close_stdin()
        for stream in self._pipes:  # what the process left in its pipes comes before its exit
            while self._on_readable(stream):
                pass
        self._release_if_done()
        self._on_exit(exit.code, exit.usage)

    def _release_if_done(self) -> None:
        """Ended and read to the end: the keeper may let go of it (once)."""
        if not self._open and self.exit_code is not None and not self._released:
            self._released = True
            self.keeper.release(self.id)

    def forget(self) -> None:
        """Nothing of it runs any more: its cgroup (if any, and if empty) goes."""
        if self.cgroups is not None:
            self.cgroups.remove(self.id)


def _capacity(fd: int) -> int:
    """The capacity of the pipe *fd*; what one read takes at most from a terminal's master."""
    try:
        return fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ)
    except OSError:  # (not a pipe: a terminal, whose buffer does not grow)
        return READ_SLICE


class EndedProcess:
    """The process of an agent that ended before this server knew it (it is in the records only):
    it has its pid and exit code, and signals and writes reach nothing."""

    stdin_fd = None
    stdin_open = False
    pty = False
    running = False
    usage = None
    ended_at = None

    def __init__(self, pid: int, exit_code: int | None, cpu_secs: float | None = None,
                 max_rss_kib: int | None = None) -> None:
        self.pid = pid
        self.exit_code = exit_code
        self.cpu_secs = cpu_secs
        self.max_rss_kib = max_rss_kib

    def signal_group(self, sig: int) -> None:
        pass

    def members(self) -> int:
        return 0

    def forget(self) -> None:
        pass

    def freeze(self) -> None:
        pass

    def thaw(self) -> None:
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

    def terminal_size(self) -> tuple[int, int] | None:
        return None

    def usage_now(self) -> tuple[float | None, int | None]:
        return None, None

    def resize(self, rows: int, cols: int) -> None:
        raise StdinClosedError("it has ended")
