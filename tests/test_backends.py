"""Command lines of the built-in and config-file backends (docs/protocol.md §7.6)."""

from __future__ import annotations

import sys

import pytest

from descartes_fast.agents.backends import BackendError, BackendRegistry, ProgramCliDisabled
from descartes_fast.wire.schema import AgentConfig

REG = BackendRegistry()


def launch(backend: str, **cfg):
    return REG.resolve(backend, allow_program_cli=True).build(AgentConfig(model_backend=backend, task="fix it", **cfg))


def test_claude_follows_the_reference_order_plus_verbose() -> None:
    got = launch("claude", model="opus", tool_level="read-only", system_prompt="be brief",
                 agents={"rev": {"role": "review"}})
    assert got.argv == ["claude", "-p", "fix it", "--output-format", "stream-json", "--verbose",
                        "--model", "opus", "--allowedTools", "Read,Bash,Glob,Grep",
                        "--append-system-prompt", "be brief", "--agents", '{"rev": {"role": "review"}}']
    assert (got.stdin, got.cooperative_pause) == ("close", False)
    assert launch("claude-code-cli").argv == ["claude", "-p", "fix it", "--output-format", "stream-json", "--verbose"]
    assert "--allowedTools" not in launch("claude", tool_level="weird").argv


@pytest.mark.parametrize("backend,argv", [
    ("opencode", ["opencode", "run", "--format", "json", "fix it"]),
    ("codex", ["codex", "exec", "--json", "fix it"]),
    ("gemini", ["gemini", "-p", "fix it", "--output-format", "stream-json"]),
    ("aider-cli", ["aider", "fix it"]),
])
def test_other_builtins(backend, argv) -> None:
    got = launch(backend)
    assert got.argv == argv and got.stdin == "close"
    if backend != "aider-cli":
        assert launch(backend, model="m").argv == argv + ["--model", "m"]


def test_demo_backend_runs_the_packaged_agent() -> None:
    got = launch("demo")
    assert got.argv == [sys.executable, "-P", "-m", "descartes_fast.demo.agent", "--task", "fix it"]
    assert (got.stdin, got.cooperative_pause) == ("pipe", True)


def test_program_cli_rule_only_when_allowed() -> None:
    with pytest.raises(ProgramCliDisabled, match=r"^backend 'aider-cli' is not configured, .*\(here: 'aider'\) "
                                                 r"is disabled; .*allow_program_cli = true"):
        REG.resolve("aider-cli")
    assert REG.resolve("claude-code-cli").build(AgentConfig(task="t")).argv[0] == "claude"  # a real built-in


def test_unknown_backend_has_the_reference_text() -> None:
    with pytest.raises(BackendError, match=r"^Unsupported model backend for process spawning: anthropic\. "
                                           r"Use API mode instead\.$"):
        REG.resolve("anthropic")


def test_environment_extra_args_and_context() -> None:
    got = launch("opencode", environment={"A": "1", "AGENT_EXTRA_ARGS": "--x  --y"}, context="ctx")
    assert got.argv[-2:] == ["--x", "--y"]
    assert got.env == {"A": "1", "AGENT_CONTEXT": "ctx"}


def test_config_backends() -> None:
    reg = BackendRegistry.from_tables({
        "tool": {"command": ["tool", "--task={task}", ["--model", "{model}"], ["--sys", "{system_prompt}"]],
                 "env": {"LOG": "1"}, "cwd": "/tmp", "stdin": "null", "cooperative_pause": True,
                 "extra_args": False},
        "claude": {"command": ["my-claude", "{task}"]},
    })
    got = reg.resolve("tool").build(AgentConfig(task="t", model="m",
                                                environment={"AGENT_EXTRA_ARGS": "--no"}))
    assert got.argv == ["tool", "--task=t", "--model", "m"]
    assert (got.env, got.cwd, got.stdin, got.cooperative_pause) == ({"LOG": "1"}, "/tmp", "null", True)
    assert reg.resolve("claude").build(AgentConfig(task="t")).argv == ["my-claude", "t"]  # overridden
    needs_model = BackendRegistry.from_tables({"x": {"command": ["x", "{model}"]}}).resolve("x")
    with pytest.raises(BackendError, match="needs model"):
        needs_model.build(AgentConfig(task="t"))


@pytest.mark.parametrize("table,text", [
    ({"command": []}, "non-empty list"),
    ({"command": ["x", 3]}, "strings or lists of strings"),
    ({"command": ["x"], "stdin": "open"}, "stdin must be one of"),
    ({"command": ["x"], "env": {"A": 1}}, "env must be a table of strings"),
    ({"command": ["x"], "cooperative_pause": "yes"}, "must be true or false"),
    ({"command": ["x"], "comand": ["y"]}, "unknown key"),
    ("x", "must be a table"),
])
def test_config_errors(table, text) -> None:
    with pytest.raises(BackendError, match=text):
        BackendRegistry.from_tables({"b": table})


def test_from_toml(tmp_path) -> None:
    path = tmp_path / "server.toml"
    path.write_text('[backends.echo]\ncommand = ["echo", "{task}"]\nstdin = "close"\n')
    assert BackendRegistry.from_toml(path).resolve("echo").build(AgentConfig(task="hi")).argv == ["echo", "hi"]
    path.write_text("[backends.echo\n")
    with pytest.raises(BackendError, match="cannot read backends"):
        BackendRegistry.from_toml(path)
