"""The supervisor with real processes, no ZeroMQ, on asyncio and on uvloop."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
import uuid

import pytest
import uvloop
from support.agents import BACKENDS, PY, Recorder, state_dir
from support.procs import LOOP, alive, live_group_members, paused

from descartes_fast.agents.policy import SpawnPolicy
from descartes_fast.agents.supervisor import (
    PAUSE_LINE,
    RESUME_LINE,
    AgentNotFoundError,
    SpawnError,
    Supervisor,
    SupervisorError,
)
from descartes_fast.wire.schema import AgentConfig, AgentStatus, LogStreamType, PauseMode, StatusUpdateType

OUT, ERR = LogStreamType.STDOUT, LogStreamType.STDERR
@pytest.fixture(params=["asyncio", "uvloop"])
def run(request):
    """Run a coroutine to completion on the parametrized event loop."""
    factory = uvloop.new_event_loop if request.param == "uvloop" else asyncio.new_event_loop

    def runner(coro):
        with asyncio.Runner(loop_factory=factory) as r:
            return r.run(asyncio.wait_for(coro, 60))
    return runner


@pytest.fixture
def supervisor(tmp_path):
    """``supervisor(**kw) -> (Supervisor, Recorder)``, in a state directory of this test's own."""
    made = []

    def make(*, output_limit: int = 1 << 20, log_max_bytes: int = 64 << 20, **kw) -> tuple[Supervisor, Recorder]:
        rec = Recorder()
        state = state_dir(tmp_path / f"state{len(made)}", tail_bytes=output_limit, agent_bytes=log_max_bytes)
        made.append(state)
        return Supervisor(state, BACKENDS, listener=rec, **kw), rec
    yield make
    for state in made:
        state.close()


def sh(script: str, backend: str = "sh") -> AgentConfig:
    return AgentConfig(name="t", model_backend=backend, task=script)


async def until(check, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def test_demo_agent_runs_to_completion(run, supervisor) -> None:
    async def main():
        sup, rec = supervisor()
        agent = await sup.spawn(AgentConfig(name="demo", model_backend="demo", task="refactor"))
        assert agent.status == AgentStatus.RUNNING and agent.info().name == "demo"
        assert await sup.wait(agent.id) == 0
        assert agent.status == AgentStatus.COMPLETED
        lines = [json.loads(line) for line in bytes(rec.output[(agent.id, OUT)]).splitlines()]
        assert lines[0]["type"] == "start" and lines[-1]["type"] == "done"
        assert [e[1] for e in rec.events] == [StatusUpdateType.STATUS_CHANGED, StatusUpdateType.COMPLETED]
        assert sup.get(agent.id).exit_code == 0  # still queryable after the end
    run(main())


def test_failure_is_reported_with_its_reason(run, supervisor) -> None:
    async def main():
        sup, rec = supervisor()
        agent = await sup.spawn(sh("echo oops >&2; exit 3"))
        assert await sup.wait(agent.id) == 3
        assert agent.status == AgentStatus.FAILED and agent.reason == "exited with status 3"
        assert rec.events[-1][1] == StatusUpdateType.ERROR
        assert sup.read_next(agent.id, ERR) == b"oops\n"
        assert sup.read_next(agent.id, ERR) is None
    run(main())


def test_cooperative_pause_writes_the_reference_lines(run, supervisor) -> None:
    async def main():
        sup, _ = supervisor()
        agent = await sup.spawn(AgentConfig(model_backend="cat"))
        assert sup.pause(agent.id) == PauseMode.COOPERATIVE
        assert agent.status == AgentStatus.PAUSED and agent.paused_at is not None
        with pytest.raises(SupervisorError, match="Agent is already paused"):
            sup.pause(agent.id)
        sup.resume(agent.id)
        assert agent.status == AgentStatus.RUNNING and agent.pause_mode is None
        await until(lambda: agent.facts(OUT).end_offset >= len(PAUSE_LINE + RESUME_LINE))
        assert sup.read_next(agent.id, OUT) == PAUSE_LINE  # cat echoes what arrived on stdin
        assert sup.read_next(agent.id, OUT) == RESUME_LINE
        sup.kill(agent.id)
        await sup.wait(agent.id)
    run(main())


def test_forced_pause_stops_the_process(run, supervisor) -> None:
    async def main():
        sup, _ = supervisor()
        agent = await sup.spawn(sh(LOOP))
        assert sup.pause(agent.id, force=True) == PauseMode.FORCED
        await until(lambda: paused(agent.pid))
        sup.resume(agent.id)
        await until(lambda: not paused(agent.pid))
        with pytest.raises(SupervisorError, match="Agent is not paused, current status: running"):
            sup.resume(agent.id)
        sup.kill(agent.id)
        await sup.wait(agent.id)
    run(main())


def test_forced_pause_survives_a_member_dying(run, supervisor) -> None:
    # If the agent's group were orphaned (its own session), the kernel would send SIGHUP and
    # SIGCONT to the whole stopped group when one member exits: the pause would be undone and
    # the agent killed by the SIGHUP.
    async def main():
        sup, _ = supervisor()
        agent = await sup.spawn(sh("sleep 1000 & echo $!; " + LOOP))
        await until(lambda: agent.facts(OUT).end_line == 1)
        grandchild = int(sup.read_next(agent.id, OUT))
        sup.pause(agent.id, force=True)
        await until(lambda: paused(agent.pid))
        os.kill(grandchild, signal.SIGKILL)  # a member of the stopped group exits
        await asyncio.sleep(0.5)
        assert paused(agent.pid) and agent.running
        sup.resume(agent.id)
        await until(lambda: not paused(agent.pid))
        sup.kill(agent.id)
        await sup.wait(agent.id)
    run(main())


def test_llm_backends_pause_by_sigstop(run, supervisor) -> None:
    async def main():
        sup, _ = supervisor()
        agent = await sup.spawn(sh(LOOP, backend="sh-closed"))  # stdin closed: no cooperative pause
        assert sup.pause(agent.id) == PauseMode.FORCED
        await until(lambda: paused(agent.pid))
        with pytest.raises(SupervisorError, match=r"stdin of agent .* is closed"):
            sup.write_stdin(agent.id, b"x")
        sup.kill(agent.id)
        await sup.wait(agent.id)
    run(main())


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_stop_and_kill_end_the_whole_group(run, how, supervisor) -> None:
    async def main():
        sup, rec = supervisor(stop_grace=0.5)
        agent = await sup.spawn(sh("sleep 1000 & echo $!; wait"))
        await until(lambda: agent.facts(OUT).end_line == 1)
        grandchild = int(sup.read_next(agent.id, OUT))
        assert alive(grandchild)
        getattr(sup, how)(agent.id)
        assert agent.status == AgentStatus.TERMINATED
        await sup.wait(agent.id)
        await until(lambda: not alive(grandchild))
        assert agent.status == AgentStatus.TERMINATED  # sticky, whatever the exit code
        assert rec.events[-1][1] == StatusUpdateType.TERMINATED
    run(main())


def test_stop_escalates_to_sigkill_after_the_grace(run, supervisor) -> None:
    async def main():
        sup, _ = supervisor(stop_grace=0.3)
        agent = await sup.spawn(sh("trap '' TERM; echo ready; while true; do sleep 0.05; done"))
        await until(lambda: agent.facts(OUT).end_line == 1)
        started = time.monotonic()
        sup.stop(agent.id)
        assert await sup.wait(agent.id) == -signal.SIGKILL
        assert time.monotonic() - started >= 0.25
    run(main())


def test_stdin_waits_in_the_server_up_to_its_buffer_and_no_more(run, supervisor) -> None:
    async def main():
        sup, _ = supervisor(stdin_buffer=256 * 1024)
        agent = await sup.spawn(sh("sleep 30"))  # never reads its stdin
        taken, queued = sup.write_stdin(agent.id, b"a" * 100_000)
        assert taken == 65536 and queued == 100_000 - 65536  # the pipe took what it holds
        taken, queued = sup.write_stdin(agent.id, b"b" * 200_000)
        assert (taken, queued) == (0, 234_464)
        with pytest.raises(SupervisorError, match=r"stdin of agent .* is full: 234,464 bytes already wait for the "
                                                  r"agent to read them; this write of 30,000 bytes would leave "
                                                  r"264,464 waiting, over the limit of 262,144 \(--stdin-buffer\)"):
            sup.write_stdin(agent.id, b"c" * 30_000)
        assert agent.process.stdin_queued == 234_464  # the refused write left nothing behind
        other = await sup.spawn(sh("sleep 30"))
        with pytest.raises(SupervisorError, match=r"this write of 400,000 bytes would leave 334,464 waiting"):
            sup.write_stdin(other.id, b"d" * 400_000)  # too big even for an empty pipe and buffer
        assert other.process.stdin_queued == 0
        await sup.shutdown()
    run(main())


def test_stdin_writes_and_eof(run, supervisor) -> None:
    async def main():
        sup, _ = supervisor()
        agent = await sup.spawn(AgentConfig(model_backend="cat"))
        assert sup.write_stdin(agent.id, b"hello\n") == (6, 0)
        big = b"x" * 300_000 + b"\n"  # larger than a pipe: queued, never blocks the loop
        taken, queued = sup.write_stdin(agent.id, big, eof=True)
        assert taken + queued == len(big) and queued > 0
        with pytest.raises(SupervisorError, match="is closed"):
            sup.write_stdin(agent.id, b"late")
        assert await sup.wait(agent.id) == 0
        assert agent.status == AgentStatus.COMPLETED
        assert agent.facts(OUT).end_offset == 6 + len(big)
    run(main())


def test_output_is_complete_in_order_and_bytes_survive(run, supervisor) -> None:
    async def main():
        sup, rec = supervisor(output_limit=64 * 1024 * 1024)
        script = ("import sys\nw=sys.stdout.buffer.write\n"
                  "for i in range(200000): w(b'%07d \\xff\\xfe line\\n' % i)\n")
        agent = await sup.spawn(AgentConfig(model_backend="py", task=script))
        await sup.wait(agent.id)
        data = bytes(rec.output[(agent.id, OUT)])
        expected = b"".join(b"%07d \xff\xfe line\n" % i for i in range(200000))
        assert data == expected
        assert agent.facts(OUT).end_line == 200000 and agent.facts(OUT).first_line == 0
    run(main())


def test_published_chunks_hold_whole_lines(run, supervisor) -> None:
    async def main():
        chunks = []
        sup, rec = supervisor()
        rec.on_output = lambda agent, stream, data, sequence: chunks.append(data)
        agent = await sup.spawn(sh("printf 'one\\ntw'; sleep 0.2; printf 'o\\nthr'; sleep 0.2; printf ee"))
        await sup.wait(agent.id)
        assert chunks == [b"one\n", b"two\n", b"three"]  # the unterminated tail goes out at EOF
    run(main())


def test_output_on_disk_is_bounded_and_counts_what_it_drops(run, supervisor) -> None:
    async def main():
        sup, _ = supervisor(log_max_bytes=1)  # every older segment goes: the store keeps the last one
        agent = await sup.spawn(sh("i=0; while [ $i -lt 30000 ]; do echo line-$i-padding; i=$((i+1)); done"))
        await sup.wait(agent.id)
        facts = agent.facts(OUT)
        assert facts.end_line == 30000 and facts.first_line > 0  # lines were dropped, and that is said
        assert facts.first_offset == sum(len(f"line-{i}-padding\n") for i in range(facts.first_line))
        assert agent.output[OUT].lines(facts.end_line - 1, 5) == ["line-29999-padding"]
        first = sup.read_next(agent.id, OUT)  # reading starts at the oldest kept line
        assert first == f"line-{facts.first_line}-padding\n".encode()
    run(main())


def test_query_filter_offset_limit(run, supervisor) -> None:
    async def main():
        sup, _ = supervisor()
        agent = await sup.spawn(sh("for i in 1 2 3 4 5 6; do echo out-$i; echo err-$i >&2; done; printf tail"))
        await sup.wait(agent.id)
        lines, total, more = await sup.query(agent.id, (OUT,), pattern=r"out-[2-5]", offset=1, limit=2)
        assert (lines, total, more) == (["out-3", "out-4"], 4, True)
        lines, total, more = await sup.query(agent.id, (OUT, ERR))
        assert total == 13 and lines[6] == "tail" and lines[-1] == "err-6" and not more
        lines, total, more = await sup.query(agent.id, (OUT, ERR), offset=5, limit=3)
        assert (lines, total, more) == (["out-6", "tail", "err-1"], 13, True)
        with pytest.raises(SupervisorError, match="invalid filter regex"):
            await sup.query(agent.id, (OUT,), pattern="(")
    run(main())


def test_signals(run, supervisor) -> None:
    async def main():
        sup, _ = supervisor()
        agent = await sup.spawn(sh("trap 'echo got-int' INT; echo ready; while true; do sleep 0.05; done"))
        await until(lambda: agent.facts(OUT).end_line >= 1)  # the trap is in place
        assert sup.send_signal(agent.id, "SIGINT") == "SIGINT"
        await until(lambda: agent.facts(OUT).end_line >= 2)
        assert sup.send_signal(agent.id, "Force_Pause") == "Force_Pause"
        assert agent.pause_mode == PauseMode.FORCED
        sup.send_signal(agent.id, "cont")
        assert agent.status == AgentStatus.RUNNING
        with pytest.raises(SupervisorError, match="Unknown signal type: 'HUP'"):
            sup.send_signal(agent.id, "HUP")
        sup.send_signal(agent.id, "kill")
        await sup.wait(agent.id)
        assert agent.status == AgentStatus.TERMINATED
    run(main())


def test_spawn_errors_and_limits(run, supervisor) -> None:
    async def main():
        sup, _ = supervisor(max_agents=1, policy=SpawnPolicy(allow_program_cli=True))
        with pytest.raises(SpawnError, match=r"^Agent spawn failed: Unsupported model backend for process "
                                             r"spawning: anthropic\. Use API mode instead\.$"):
            await sup.spawn(AgentConfig(model_backend="anthropic"))
        with pytest.raises(SpawnError, match="Failed to spawn process for backend 'nosuchprog-cli'"):
            await sup.spawn(AgentConfig(model_backend="nosuchprog-cli", task="x"))
        first = await sup.spawn(sh("sleep 30"))
        with pytest.raises(SpawnError, match=r"^Maximum agent limit reached: 1$"):
            await sup.spawn(sh("true"))
        sup.kill(first.id)
        await sup.wait(first.id)
        await sup.spawn(sh("true"))  # a finished agent no longer counts
        with pytest.raises(AgentNotFoundError, match="Agent not found: "):
            sup.get(uuid.uuid4())
        await sup.shutdown()
    run(main())


def test_the_active_count_follows_every_status_change(run, supervisor) -> None:
    # kept as it changes (spawn asks at every call), so it must agree with the agents' statuses
    active = {AgentStatus.IDLE, AgentStatus.INITIALIZING, AgentStatus.RUNNING, AgentStatus.THINKING,
              AgentStatus.PAUSED}

    def agrees(sup) -> None:
        for owner in (None, "a", "b"):
            want = sum(1 for a in sup.agents() if a.status in active and owner in (None, a.owner))
            assert sup.active_count(owner) == want, (owner, [(a.owner, a.status) for a in sup.agents()])

    async def main():
        sup, _ = supervisor()
        done = await sup.spawn(sh("true"), owner="a")
        bad = await sup.spawn(sh("exit 3"), owner="b")
        stopped = await sup.spawn(sh("sleep 30"), owner="a")
        paused = await sup.spawn(sh("sleep 30"), owner="b")
        assert sup.active_count() >= 2
        agrees(sup)
        await sup.wait(done.id)
        await sup.wait(bad.id)
        agrees(sup)
        sup.pause(paused.id, force=True)
        sup.stop(stopped.id)  # terminated at once, though its process may not have exited yet
        agrees(sup)
        assert sup.active_count() == 1 and sup.active_count("b") == 1 and sup.active_count("a") == 0
        await sup.wait(stopped.id)
        sup.resume(paused.id)
        agrees(sup)
        sup.kill(paused.id)
        await sup.wait(paused.id)
        agrees(sup)
        assert sup.active_count() == 0
        await sup.shutdown()
    run(main())


def test_environment_reaches_the_agent_without_claudecode(run, monkeypatch, supervisor) -> None:
    monkeypatch.setenv("CLAUDECODE", "1")
    async def main():
        sup, _ = supervisor()
        agent = await sup.spawn(AgentConfig(model_backend="sh", task='echo "$MINE|${CLAUDECODE-unset}|$AGENT_CONTEXT"',
                                            environment={"MINE": "yes"}, context="ctx"))
        await sup.wait(agent.id)
        assert sup.read_next(agent.id, OUT) == b"yes|unset|ctx\n"
    run(main())


def test_retention_evicts_the_oldest_finished_agents(run, supervisor) -> None:
    async def main():
        sup, _ = supervisor(max_retained=2)
        agents = [await sup.spawn(sh("true")) for _ in range(4)]
        for a in agents:
            await a.exited
        last_to_end = sorted(agents, key=lambda a: a.ended_at)[2:]  # they may end in any order
        assert {a.id for a in sup.agents()} == {a.id for a in last_to_end}
        live = await sup.spawn(sh("sleep 30"))
        assert sup.agents(status=AgentStatus.RUNNING) == [live]
        assert len(sup.agents(limit=1)) == 1
        await sup.shutdown()
    run(main())


def test_shutdown_leaves_no_process_behind(run, supervisor) -> None:
    async def main():
        sup, _ = supervisor(stop_grace=0.3)
        agents = [await sup.spawn(sh("trap '' TERM; sleep 1000 & wait")) for _ in range(3)]
        agents.append(await sup.spawn(AgentConfig(model_backend="demo", task="x")))
        sup.pause(agents[-1].id, force=True)
        await asyncio.sleep(0.1)
        await sup.shutdown()
        for a in agents:
            assert not a.running and a.status == AgentStatus.TERMINATED
            await until(lambda pid=a.pid: not live_group_members(pid))
    run(main())


def test_agents_of_a_background_host_can_be_interrupted() -> None:
    # A host started in the background ignores SIGINT; its agents must not inherit that.
    script = (
        "import asyncio, signal\n"
        "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
        "from descartes_fast.wire.schema import AgentConfig\n"
        "from descartes_fast.agents.supervisor import Supervisor\n"
        "import tempfile, pathlib\n"
        "from support.agents import BACKENDS, Recorder, state_dir\n"
        "async def main():\n"
        "    rec = Recorder()\n"
        "    state = state_dir(pathlib.Path(tempfile.mkdtemp(prefix='descartes-test-state-')))\n"
        "    sup = Supervisor(state, BACKENDS, listener=rec)\n"
        "    agent = await sup.spawn(AgentConfig(model_backend='sh', task='grep SigIgn /proc/self/status'))\n"
        "    await sup.wait(agent.id)\n"
        "    print(bytes(rec.output[(agent.id, 'stdout')]).decode())\n"
        "    assert signal.getsignal(signal.SIGINT) is not signal.SIG_DFL  # the host still ignores it\n"
        "asyncio.run(main())\n")
    proc = subprocess.run([PY, "-c", script], capture_output=True, text=True, timeout=60,
                          cwd=os.path.dirname(__file__))
    assert proc.returncode == 0, proc.stderr
    ignored = int(proc.stdout.split()[1], 16)
    assert not ignored & (1 << (signal.SIGINT - 1)) and not ignored & (1 << (signal.SIGQUIT - 1))


def test_a_stream_that_fills_its_pipe_gets_a_bigger_one_within_the_budget(run, monkeypatch, tmp_path) -> None:
    from descartes_fast.agents import process as P
    from descartes_fast.agents.backends import Launch
    from descartes_fast.agents.keeper_link import KeeperLink

    budget = P.PipeBudget(P.PIPE_SIZE - 65536)  # room to enlarge one default pipe, not two
    monkeypatch.setattr(P, "PIPES", budget)
    writer = ("import os\n"
              "for _ in range(10):\n"
              "    os.write(1, b'o' * 1_000_000)\n"
              "    os.write(2, b'e' * 1_000_000)\n")

    async def main() -> tuple[dict, dict, int]:
        loop = asyncio.get_running_loop()
        keeper = KeeperLink(tmp_path)
        proc = await P.AgentProcess.start(keeper, "a", Launch([PY, "-c", writer], {}, None, "null", False),
                                          dict(os.environ))
        got = {OUT: 0, ERR: 0}
        sizes: dict[LogStreamType, set[int]] = {OUT: set(), ERR: set()}
        exited = loop.create_future()

        def on_output(stream: LogStreamType, fd: int | None, most: int) -> int:
            data = os.read(fd, most) if fd is not None else b""
            got[stream] += len(data)
            if data:  # the kernel's own word for the pipe's size
                sizes[stream].add(P.fcntl.fcntl(proc._pipes[stream], P.fcntl.F_GETPIPE_SZ))
            return len(data)

        proc.watch(loop, on_output, lambda code, usage: exited.set_result(code))
        code = await exited
        keeper.close()
        return got, sizes, code

    got, sizes, code = run(main())
    assert code == 0 and got == {OUT: 10_000_000, ERR: 10_000_000}
    enlarged = [s for s in (OUT, ERR) if P.PIPE_SIZE in sizes[s]]
    assert len(enlarged) == 1, sizes  # the first to fill its pipe; the budget had room for one
    other = ERR if enlarged == [OUT] else OUT
    assert sizes[other] == {65536}
    assert budget.used == 0  # given back when the pipes closed


def test_records_are_written_in_the_turn_they_are_put_in_and_an_agent_without_output_is_kept(run, tmp_path) -> None:
    import sqlite3

    from support.agents import state_dir as make_state

    def on_disk(path) -> dict[str, str]:  # what another reader of agents.db sees
        with sqlite3.connect(path / "agents.db") as db:
            return dict(db.execute("select id, status from agents").fetchall())

    async def first_run() -> uuid.UUID:
        sup = Supervisor(make_state(tmp_path / "s"), BACKENDS, listener=Recorder())
        agent = await sup.spawn(sh("sleep 30"))
        assert str(agent.id) not in on_disk(tmp_path / "s")  # put in this turn of the loop: not yet
        await asyncio.sleep(0)
        assert on_disk(tmp_path / "s")[str(agent.id)] == "running"  # the turn is over: written
        await sup.shutdown()  # stops it
        sup.state.close()
        return agent.id

    agent_id = run(first_run())
    assert not (tmp_path / "s" / "agents" / str(agent_id)).exists()  # it wrote nothing: no directory

    async def second_run() -> None:
        sup = Supervisor(make_state(tmp_path / "s"), BACKENDS, listener=Recorder())
        agent = sup.get(agent_id)
        assert agent.status == AgentStatus.TERMINATED
        assert agent.output[OUT].read(offset=0).data == b""
        sup.state.close()

    run(second_run())


def test_the_state_directory_is_its_owners_alone_and_one_servers(run, tmp_path) -> None:
    import stat

    from support.agents import state_dir as make_state

    from descartes_fast.agents.state import StateError

    old = os.umask(0o002)  # a permissive umask: the modes must not depend on it
    try:
        state = make_state(tmp_path / "s")

        async def write() -> uuid.UUID:
            sup = Supervisor(state, BACKENDS, listener=Recorder())
            agent = await sup.spawn(sh("echo secret; echo more >&2"))
            await sup.wait(agent.id)
            await sup.shutdown()
            return agent.id

        agent_id = run(write())
        with pytest.raises(StateError, match=rf"in use by another descartes-fast-server \(pid {os.getpid()}\)"):
            make_state(tmp_path / "s")
        state.close()
    finally:
        os.umask(old)
    mode = {p.relative_to(tmp_path / "s").as_posix(): stat.S_IMODE(p.stat().st_mode)
            for p in [tmp_path / "s", *(tmp_path / "s").rglob("*")]}
    assert mode["."] == mode["agents"] == mode[f"agents/{agent_id}"] == 0o700, mode
    files = {name: m for name, m in mode.items() if (tmp_path / "s" / name).is_file()}
    assert {"agents.db", "lock", f"agents/{agent_id}/stdout.000000.log", f"agents/{agent_id}/stderr.000000.idx"} \
        <= set(files), files
    assert set(files.values()) == {0o600}, files
    make_state(tmp_path / "s").close()  # free again once its server has closed it
