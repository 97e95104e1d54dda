"""The spawn policy: parsing, what requests may ask for, per-agent limits (real processes)."""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import sys
import tempfile
import time
from fnmatch import fnmatchcase
from pathlib import Path

import pytest
import uvloop
from support.agents import state_dir

from descartes_fast.agents.backends import BackendRegistry
from descartes_fast.agents.policy import DEFAULT_ENV_DENY, PolicyError, SpawnPolicy
from descartes_fast.agents.supervisor import (
    ClientLimitError,
    SpawnError,
    SpawnPolicyError,
    Supervisor,
)
from descartes_fast.wire.schema import (
    AgentConfig,
    AgentStatus,
    LogStreamType,
    StatusUpdateType,
)

OUT = LogStreamType.STDOUT
PY = sys.executable
BACKENDS = BackendRegistry.from_tables({
    "sh": {"command": ["sh", "-c", "{task}"], "stdin": "null"},
    "py": {"command": [PY, "-c", "{task}"], "stdin": "null"},
    "echo": {"command": ["echo", "{task}"], "stdin": "null"},
})
REFUSED = "^spawn refused by this server's policy: "
_CREATED: list[Supervisor] = []  # shut down after each test, passed or failed: no process outlives it


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request):
    """Run a coroutine to completion on the parametrized event loop."""
    factory = uvloop.new_event_loop if request.param == "uvloop" else asyncio.new_event_loop

    def runner(coro):
        with asyncio.Runner(loop_factory=factory) as r:
            try:
                return r.run(asyncio.wait_for(coro, 30))
            finally:
                for sup in _CREATED:
                    r.run(sup.shutdown(grace=0.2))
                    sup.state.close()
                    shutil.rmtree(sup.state.path, ignore_errors=True)
                _CREATED.clear()
    return runner


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def on_output(self, agent, stream, data, sequence) -> None:
        pass

    def on_status(self, agent, kind, message, event=None) -> None:
        self.events.append((agent.id, kind, agent.status, message))


def supervisor(policy: SpawnPolicy | None = None, backends: BackendRegistry = BACKENDS) -> tuple[Supervisor, Recorder]:
    rec = Recorder()
    state = state_dir(Path(tempfile.mkdtemp(prefix="descartes-test-state-")))
    _CREATED.append(Supervisor(state, backends, listener=rec, policy=policy, stop_grace=0.5))
    return _CREATED[-1], rec


def sh(script: str, backend: str = "sh", **kw) -> AgentConfig:
    return AgentConfig(name="t", model_backend=backend, task=script, **kw)


async def output(sup: Supervisor, agent) -> list[str]:
    await sup.wait(agent.id)
    return agent.output[LogStreamType.STDOUT].lines(0, 1 << 20)


async def ends_failed(sup: Supervisor, rec: Recorder, agent, reason: str) -> None:
    """The agent ends ``failed`` and its final status update carries *reason*."""
    await sup.wait(agent.id)
    assert agent.status == AgentStatus.FAILED and agent.limit_hit
    assert agent.reason == reason
    final = [e for e in rec.events if e[0] == agent.id][-1]
    assert final == (agent.id, StatusUpdateType.ERROR, AgentStatus.FAILED, reason)


# -- parsing ---------------------------------------------------------------------------


def test_from_table_reads_every_key(tmp_path) -> None:
    got = SpawnPolicy.from_table({
        "backends": ["demo", "claude"], "allow_program_cli": True, "allow_extra_args": True,
        "env_deny": [], "env_allow": ["MY_*"], "workdir": str(tmp_path), "allowed_cwd": ["/srv/x/"],
        "cpu_secs": 60, "memory_mb": 512, "open_files": 256, "max_wall_secs": 90,
        "max_agents_per_client": 3}, source="s.toml")
    assert got == SpawnPolicy(frozenset({"demo", "claude"}), True, True, (), ("MY_*",), str(tmp_path),
                              ("/srv/x",), 60, 512, 256, 90.0, 3)
    assert SpawnPolicy.from_table({}, source="s.toml") == SpawnPolicy()


def test_default_is_the_safe_one() -> None:
    p = SpawnPolicy()
    assert (p.allow_program_cli, p.allow_extra_args, p.env_allow, p.allowed_cwd) == (False, False, None, ())
    for name in ("LD_PRELOAD", "PATH", "PYTHONPATH", "NODE_OPTIONS", "BASH_ENV", "GIT_CONFIG_GLOBAL", "HOME"):
        assert any(fnmatchcase(name, pat) for pat in DEFAULT_ENV_DENY), name


@pytest.mark.parametrize("table,text", [
    ({"cpu_sec": 3}, r"^s\.toml: \[policy\]: unknown key\(s\) cpu_sec \(known keys: backends, "),
    ({"allow_extra_args": "yes"}, r"^s\.toml: \[policy\] allow_extra_args must be true or false, not 'yes'$"),
    ({"memory_mb": -5}, r"^s\.toml: \[policy\] memory_mb must be greater than 0, not -5$"),
    ({"cpu_secs": 0}, r"^s\.toml: \[policy\] cpu_secs must be greater than 0, not 0$"),
    ({"open_files": 1.5}, r"^s\.toml: \[policy\] open_files must be a whole number, not 1\.5$"),
    ({"max_agents_per_client": True}, r"max_agents_per_client must be a whole number, not True"),
    ({"max_wall_secs": "1h"}, r"max_wall_secs must be a number of seconds, not '1h'"),
    ({"max_wall_secs": -1.5}, r"max_wall_secs must be greater than 0, not -1\.5"),
    ({"env_deny": "LD_*"}, r"env_deny must be a list of non-empty patterns, not 'LD_\*'"),
    ({"env_allow": [1]}, r"env_allow must be a list of non-empty patterns"),
    ({"backends": []}, r"backends must name at least one backend"),
    ({"workdir": "agents"}, r"workdir must be an absolute path, not 'agents'"),
    ({"allowed_cwd": ["/a", "b"]}, r"allowed_cwd must be an absolute path, not 'b'"),
    ({"allowed_cwd": "/a"}, r"allowed_cwd must be a list of absolute paths"),
])
def test_from_table_errors(table, text) -> None:
    with pytest.raises(PolicyError, match=text):
        SpawnPolicy.from_table(table, source="s.toml")


def test_from_table_needs_a_table_and_direct_construction_checks_limits() -> None:
    with pytest.raises(PolicyError, match=r"^s\.toml: \[policy\] must be a table$"):
        SpawnPolicy.from_table([], source="s.toml")
    with pytest.raises(PolicyError, match=r"^SpawnPolicy\.memory_mb must be greater than 0, not 0$"):
        SpawnPolicy(memory_mb=0)


def test_wall_limit_is_the_smaller_of_request_and_cap() -> None:
    assert SpawnPolicy().wall_limit(None) is None and SpawnPolicy().wall_limit(0) is None
    assert SpawnPolicy().wall_limit(7) == 7
    assert SpawnPolicy(max_wall_secs=5).wall_limit(None) == 5
    assert SpawnPolicy(max_wall_secs=5).wall_limit(60) == 5
    assert SpawnPolicy(max_wall_secs=5).wall_limit(2) == 2
    assert SpawnPolicy().wall_limit(2**64 - 1) is None  # too far away to arm a timer


# -- what a request may ask for --------------------------------------------------------


def test_environment_deny_and_allow_lists(run) -> None:
    async def main():
        sup, _ = supervisor()
        for name, pattern in (("LD_PRELOAD", "LD_*"), ("PATH", "PATH"), ("PYTHONPATH", "PYTHONPATH")):
            with pytest.raises(SpawnPolicyError, match=REFUSED + f"environment variable '{name}' may not be "
                               rf"set \(it matches the deny pattern '{pattern}'\)$".replace("*", r"\*")):
                await sup.spawn(sh("true", environment={"OK": "1", name: "/tmp/x"}))
        assert await output(sup, await sup.spawn(sh('echo "$ld_preload"', environment={"ld_preload": "lower"}))) \
            == ["lower"]  # names are case-sensitive

        sup, _ = supervisor(SpawnPolicy(env_allow=("MY_*", "LD_*")))
        agent = await sup.spawn(sh('echo "$MY_VAR"', environment={"MY_VAR": "yes"}))
        assert await output(sup, agent) == ["yes"]
        with pytest.raises(SpawnPolicyError, match=r"'OTHER' may not be set \(it matches none of the allowed "
                                                   r"patterns: 'MY_\*', 'LD_\*'\)$"):
            await sup.spawn(sh("true", environment={"OTHER": "1"}))
        with pytest.raises(SpawnPolicyError, match="deny pattern 'LD_"):  # deny applies on top
            await sup.spawn(sh("true", environment={"LD_PRELOAD": "x"}))

        sup, _ = supervisor(SpawnPolicy(env_deny=()))
        agent = await sup.spawn(sh('echo "$PYTHONPATH"', environment={"PYTHONPATH": "/p"}))
        assert await output(sup, agent) == ["/p"]
    run(main())


def test_program_cli_rule_is_off_unless_enabled(run) -> None:
    async def main():
        sup, _ = supervisor()
        with pytest.raises(SpawnPolicyError, match=REFUSED + "backend 'echo-cli' is not configured, and running "
                           "'<program>-cli' backends as '<program> <task>' .* allow_program_cli = true"):
            await sup.spawn(sh("hi", backend="echo-cli"))
        with pytest.raises(SpawnError, match=r"^Agent spawn failed: Unsupported model backend"):
            await sup.spawn(sh("hi", backend="nosuch"))  # unchanged: not a policy refusal
        sup, _ = supervisor(SpawnPolicy(allow_program_cli=True))
        assert await output(sup, await sup.spawn(sh("hi", backend="echo-cli"))) == ["hi"]
    run(main())


def test_extra_args_are_refused_unless_enabled(run) -> None:
    async def main():
        sup, _ = supervisor()
        with pytest.raises(SpawnPolicyError, match=REFUSED + r"AGENT_EXTRA_ARGS \(extra command-line arguments\) "
                           r"is disabled; .* allow_extra_args = true"):
            await sup.spawn(sh("hi", backend="echo", environment={"AGENT_EXTRA_ARGS": "--there"}))
        sup, _ = supervisor(SpawnPolicy(allow_extra_args=True))
        agent = await sup.spawn(sh("hi", backend="echo", environment={"AGENT_EXTRA_ARGS": "--there  x"}))
        assert await output(sup, agent) == ["hi --there x"]
    run(main())


def test_backend_allow_list(run) -> None:
    async def main():
        sup, _ = supervisor(SpawnPolicy(backends=frozenset({"echo", "py"}), allow_program_cli=True))
        assert await output(sup, await sup.spawn(sh("ok", backend="echo"))) == ["ok"]
        for name in ("sh", "demo", "echo-cli"):
            with pytest.raises(SpawnPolicyError, match=REFUSED + f"backend '{name}' is not allowed "
                                                                 r"\(this server allows: echo, py\)$"):
                await sup.spawn(sh("true", backend=name))
    run(main())


def test_workdir_gives_each_agent_a_new_private_directory(run, tmp_path) -> None:
    async def main():
        base = tmp_path / "agents"  # created on first use
        sup, _ = supervisor(SpawnPolicy(workdir=str(base)))
        one, two = await sup.spawn(sh("pwd")), await sup.spawn(sh("pwd"))
        for agent in (one, two):
            where = base / str(agent.id)
            assert await output(sup, agent) == [os.path.realpath(where)]
            assert stat.S_IMODE(where.stat().st_mode) == 0o700
            assert where.is_dir()  # kept after the end
        reg = BackendRegistry.from_tables({"fixed": {"command": ["pwd"], "cwd": "/"}})
        sup, _ = supervisor(SpawnPolicy(workdir=str(base)), backends=reg)
        assert await output(sup, await sup.spawn(AgentConfig(model_backend="fixed"))) == ["/"]  # backend's cwd wins
    run(main())


def test_request_cwd_only_inside_allowed_roots(run, tmp_path) -> None:
    async def main():
        inside = tmp_path / "repos" / "a"
        inside.mkdir(parents=True)
        sup, _ = supervisor()
        with pytest.raises(SpawnPolicyError, match=REFUSED + "this server does not let requests choose a working "
                                                             r"directory \(metadata cwd = '/tmp'\)$"):
            await sup.spawn(sh("pwd"), metadata={"cwd": "/tmp"})
        assert await output(sup, await sup.spawn(sh("true"), metadata={"other": "x"})) == []

        sup, _ = supervisor(SpawnPolicy(allowed_cwd=(str(tmp_path / "repos"),)))
        real = os.path.realpath(inside)
        assert await output(sup, await sup.spawn(sh("pwd"), metadata={"cwd": str(inside)})) == [real]
        assert await output(sup, await sup.spawn(sh("pwd"), metadata={"cwd": str(inside / "..")})) == \
            [os.path.dirname(real)]  # the root itself
        for bad, text in ((str(tmp_path), "is not inside the allowed roots"),
                          (str(inside / ".." / ".."), "is not inside the allowed roots"),
                          (str(tmp_path / "repos-x"), "does not exist or is not a directory"),
                          (str(inside / "nope"), "does not exist or is not a directory"),
                          ("repos/a", "must be an absolute path")):
            with pytest.raises(SpawnPolicyError, match=REFUSED + "the working directory .*" + text):
                await sup.spawn(sh("pwd"), metadata={"cwd": bad})
        (tmp_path / "repos" / "out").symlink_to(tmp_path)  # a way out of the root through a link
        with pytest.raises(SpawnPolicyError, match="is not inside the allowed roots"):
            await sup.spawn(sh("pwd"), metadata={"cwd": str(tmp_path / "repos" / "out")})
    run(main())


def test_max_agents_per_client_counts_active_agents_of_that_owner(run) -> None:
    async def main():
        sup, _ = supervisor(SpawnPolicy(max_agents_per_client=2))
        done = await sup.spawn(sh("true"), owner="ip:1.2.3.4")
        await sup.wait(done.id)  # finished: no longer counted
        a = [await sup.spawn(sh("sleep 30"), owner="ip:1.2.3.4") for _ in range(2)]
        with pytest.raises(ClientLimitError, match=r"^spawn refused: client 'ip:1\.2\.3\.4' already has 2 active "
                                                   r"agents \(max_agents_per_client = 2\)$"):
            await sup.spawn(sh("true"), owner="ip:1.2.3.4")
        others = [await sup.spawn(sh("sleep 30"), owner="key:alice"), await sup.spawn(sh("sleep 30"))]
        # concurrent spawns count while they start
        results = await asyncio.gather(*(sup.spawn(sh("sleep 30"), owner="key:bob") for _ in range(3)),
                                       return_exceptions=True)
        assert sum(isinstance(r, ClientLimitError) for r in results) == 1
        sup.kill(a[0].id)
        await sup.wait(a[0].id)
        a.append(await sup.spawn(sh("sleep 30"), owner="ip:1.2.3.4"))
        assert sup.active_count("ip:1.2.3.4") == 2 and len(others) == 2
        await sup.shutdown()
    run(main())


# -- limits ----------------------------------------------------------------------------


def test_memory_limit_kills_the_group(run) -> None:
    async def main():
        sup, rec = supervisor(SpawnPolicy(memory_mb=100))
        # the memory is in a child of the agent's shell: the watchdog sums the whole group
        script = "import time; b = bytearray(b'x') * (300 << 20); time.sleep(30)"
        agent = await sup.spawn(sh(f'{PY} -c "{script}" & wait'))
        small = await sup.spawn(sh("sleep 0.6"))  # under the limit: left alone
        await sup.wait(agent.id)
        reason = agent.reason
        assert reason.startswith("memory limit exceeded: ") and reason.endswith(
            " MiB resident in the process group > 100 MiB (memory_mb)")
        assert 100 < int(reason.split()[3]) <= 320
        await ends_failed(sup, rec, agent, reason)
        assert await sup.wait(small.id) == 0 and small.status == AgentStatus.COMPLETED
    run(main())


def test_cpu_limit_ends_the_agent_with_sigxcpu(run) -> None:
    async def main():
        sup, rec = supervisor(SpawnPolicy(cpu_secs=1))
        agent = await sup.spawn(sh("while True: pass", backend="py"))
        await ends_failed(sup, rec, agent, "CPU time limit of 1 s exceeded (SIGXCPU)")
        assert agent.exit_code == -24  # SIGXCPU
    run(main())


def test_wall_clock_limit_and_its_cap(run) -> None:
    async def main():
        sup, rec = supervisor(SpawnPolicy(max_wall_secs=1))
        started = time.monotonic()
        by_request = await sup.spawn(sh("sleep 30"), timeout_secs=1)
        capped = await sup.spawn(sh("sleep 30"), timeout_secs=60)
        stubborn = await sup.spawn(sh("trap '' TERM; sleep 30 & wait; sleep 30"), timeout_secs=1)  # SIGKILL later
        quick = await sup.spawn(sh("exit 0"), timeout_secs=1)
        for agent in (by_request, capped, stubborn):
            await ends_failed(sup, rec, agent, "wall-clock limit of 1 s exceeded")
        assert time.monotonic() - started < 6
        assert quick.status == AgentStatus.COMPLETED and quick._wall_timer is None
    run(main())


def test_wall_clock_exit_zero_still_fails(run) -> None:
    async def main():
        sup, rec = supervisor()
        agent = await sup.spawn(sh("trap 'exit 0' TERM; while :; do sleep 0.05; done"), timeout_secs=1)
        await ends_failed(sup, rec, agent, "wall-clock limit of 1 s exceeded")
        assert agent.exit_code == 0
    run(main())


def test_stop_before_a_limit_stays_terminated(run) -> None:
    async def main():
        sup, _ = supervisor(SpawnPolicy(max_wall_secs=0.3))
        agent = await sup.spawn(sh("trap '' TERM; while :; do sleep 0.05; done"))
        sup.stop(agent.id)
        await sup.wait(agent.id)
        assert agent.status == AgentStatus.TERMINATED and agent.reason == "stopped" and not agent.limit_hit
    run(main())


def test_open_files_and_cpu_limits_reach_the_process(run) -> None:
    async def main():
        sup, _ = supervisor(SpawnPolicy(open_files=64, cpu_secs=100))
        agent = await sup.spawn(sh("sleep 0.1; ulimit -n; ulimit -Hn; ulimit -t"))
        assert await output(sup, agent) == ["64", "64", "100"]
    run(main())


def test_limits_that_cannot_be_applied_fail_the_spawn(run) -> None:
    with open("/proc/sys/fs/nr_open") as f:
        too_many = int(f.read()) + 1  # more than the kernel allows, even to root

    async def main():
        sup, _ = supervisor(SpawnPolicy(open_files=too_many))
        with pytest.raises(SpawnError, match=r"^Agent spawn failed: cannot apply the resource limits "
                                             rf"\(cpu_secs = None, open_files = {too_many}\): "):
            await sup.spawn(sh("sleep 30"))
        assert sup.active_count() == 0
    run(main())
