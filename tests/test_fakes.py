"""The fake claude/codex/gemini CLIs of descartes_fast.demo.fakes, run as the server runs them:
real event shapes, running totals, resumed sessions, the prompt knobs and --config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FAKES = [sys.executable, "-P", "-m", "descartes_fast.demo.fakes"]
CLAUDE = ["claude", "-p", "--input-format", "stream-json", "--output-format", "stream-json", "--verbose"]
GARBAGE = "this line is not JSON {"


@dataclass
class Run:
    returncode: int
    events: list[dict[str, Any]]
    lines: list[str]
    stderr: str

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("type") == kind]


def user(text: str | list[dict[str, Any]], **extra: Any) -> str:
    return json.dumps({"type": "user", "message": {"role": "user", "content": text}, **extra})


def parse(out: str) -> tuple[list[dict[str, Any]], list[str]]:
    """Every line the fakes write is a JSON object with a type, but the deliberate garbage line."""
    lines = out.splitlines()
    events = []
    for line in lines:
        if line == GARBAGE:
            continue
        event = json.loads(line)
        assert isinstance(event, dict) and isinstance(event["type"], str), line
        events.append(event)
    return events, lines


@dataclass
class Job:
    proc: subprocess.Popen[str]
    stdin: str | None


def start(args: Sequence[str], stdin: str | None = None, env: dict[str, str] | None = None) -> Job:
    """A fake with ``stdin`` to write and close (None: stdin is /dev/null, as for codex and gemini)."""
    proc = subprocess.Popen([*FAKES, *args], stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})
    return Job(proc, stdin)


def finish(job: Job) -> Run:
    out, err = job.proc.communicate(job.stdin, timeout=20)
    events, lines = parse(out)
    return Run(job.proc.returncode, events, lines, err)


def run(args: Sequence[str], stdin: str | None = None, env: dict[str, str] | None = None) -> Run:
    return finish(start(args, stdin, env))


def run_all(*jobs: tuple[Sequence[str], str | None]) -> list[Run]:
    """Run independent fakes at once (each starts a Python: this keeps the tests fast)."""
    return [finish(p) for p in [start(args, stdin) for args, stdin in jobs]]


def claude_turns(*prompts: str, extra: Sequence[str] = (), env: dict[str, str] | None = None) -> Run:
    return run([*CLAUDE, *extra], "".join(user(p) + "\n" for p in prompts), env)


# -- claude ----------------------------------------------------------------------------------

def test_claude_two_turns_over_one_process_give_running_cost_and_per_turn_usage() -> None:
    r = run([*CLAUDE, "--replay-user-messages", "--model", "claude-x", "--allowedTools", "Bash",
             "--append-system-prompt", "be brief"],
            user("first turn: fix the parser") + "\n" + user([{"type": "text", "text": "second"}], uuid="u-2") + "\n")
    assert r.returncode == 0, r.stderr
    types = [e["type"] for e in r.events]
    turn = ["system", "user", "assistant", "user", "assistant", "result"]
    assert types == turn + turn
    inits, results = r.of("system"), r.of("result")
    assert all(i["subtype"] == "init" and i["model"] == "claude-x" and "Bash" in i["tools"] for i in inits)
    session = inits[0]["session_id"]
    assert all(e["session_id"] == session for e in r.events)
    # the replay echoes the user message as sent, with its uuid when it had one
    replays = [e for e in r.of("user") if e.get("isReplay")]
    assert replays[0]["message"]["content"] == "first turn: fix the parser"
    assert replays[1]["message"]["content"] == [{"type": "text", "text": "second"}] and replays[1]["uuid"] == "u-2"
    tool_use = r.events[2]["message"]["content"][0]
    assert tool_use["type"] == "tool_use" and tool_use["name"] == "Bash" and tool_use["input"]["command"]
    tool_result = r.events[3]["message"]["content"][0]
    assert tool_result == {"tool_use_id": tool_use["id"], "type": "tool_result", "content": "turn 1",
                           "is_error": False}
    assert r.events[4]["message"]["content"][0]["text"] == "answer to turn 1: first turn: fix the parser"
    # total_cost_usd and modelUsage: the running total of the process; usage: this turn's
    assert [x["total_cost_usd"] for x in results] == [0.0125, 0.025]
    assert [x["modelUsage"]["claude-x"]["inputTokens"] for x in results] == [100, 200]
    for x in results:
        assert (x["subtype"], x["is_error"], x["num_turns"]) == ("success", False, 2)
        u = x["usage"]
        assert (u["input_tokens"], u["cache_read_input_tokens"], u["output_tokens"]) == (100, 50, 20)
    steps = [e["message"]["usage"] for e in r.of("assistant")[:2]]
    assert sum(s["input_tokens"] for s in steps) == 100 and sum(s["output_tokens"] for s in steps) == 20
    assert r.lines[0].startswith('{"type":"system","subtype":"init",')  # compact JSON


def test_claude_resume_keeps_the_session_id_and_its_process_counts_from_zero(tmp_path: Path) -> None:
    first = claude_turns("hello")
    session = first.of("result")[0]["session_id"]
    plain, saved_a = run_all(([*CLAUDE, "--resume", session], user("again") + "\n"),
                             ([*CLAUDE, "--session-id", "sess-1"], user("one") + "\n"))
    assert {e["session_id"] for e in plain.events} == {session}
    assert plain.of("result")[0]["total_cost_usd"] == 0.0125
    assert saved_a.of("result")[0]["session_id"] == "sess-1"
    # with a state dir, a resumed process continues the session's total (Claude Code 2.1.277+)
    env = {"DESCARTES_FAKE_STATE_DIR": str(tmp_path)}
    s = claude_turns("one", env=env).of("result")[0]["session_id"]
    again = claude_turns("two", extra=["--resume", s], env=env)
    assert again.of("result")[0]["total_cost_usd"] == 0.025 and again.of("result")[0]["session_id"] == s


def test_claude_fail_ends_the_turn_with_an_error_result_and_the_process_with_1_at_eof() -> None:
    r = claude_turns("fail please", "fail api", "then this works")
    assert r.returncode == 1
    failed, api, ok = r.of("result")
    assert (failed["subtype"], failed["is_error"]) == ("error_during_execution", True) and failed["errors"]
    assert (api["subtype"], api["is_error"], api["api_error_status"]) == ("success", True, 500)
    assert (ok["subtype"], ok["is_error"], ok["total_cost_usd"]) == ("success", False, 0.0125)


def test_claude_malformed_stdin_line_is_an_error_on_stderr_and_exit_1() -> None:
    r = run(CLAUDE, user("fine") + "\n\n" + "{not json\n" + user("never") + "\n")
    assert r.returncode == 1 and "Error parsing streaming input line" in r.stderr
    assert len(r.of("result")) == 1


def test_claude_sleep_holds_the_turn_open_so_it_can_be_killed_mid_turn() -> None:
    proc = subprocess.Popen([*FAKES, *CLAUDE], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(user("sleep 30") + "\n")
        proc.stdin.flush()
        seen: list[dict[str, Any]] = []
        while not seen or seen[-1]["type"] != "assistant":
            seen.append(json.loads(proc.stdout.readline()))
        assert seen[-1]["message"]["content"][0]["type"] == "tool_use"
        time.sleep(0.1)
        assert proc.poll() is None  # still mid-turn
    finally:
        proc.kill()
        proc.wait(5)


# -- codex and gemini ------------------------------------------------------------------------

def test_codex_one_turn_then_resume_by_thread_id_in_both_flag_positions(tmp_path: Path) -> None:
    first = run(["codex", "exec", "--json", "--model", "gpt-x", "fix the parser"])
    assert first.returncode == 0, first.stderr
    assert [e["type"] for e in first.events] == ["thread.started", "turn.started", "item.completed", "item.started",
                                                 "item.completed", "item.completed", "turn.completed"]
    thread = first.events[0]["thread_id"]
    started, done = first.events[3]["item"], first.events[4]["item"]
    assert started["type"] == "command_execution" and started["status"] == "in_progress"
    assert done["id"] == started["id"] and (done["status"], done["exit_code"]) == ("completed", 0)
    assert first.events[5]["item"]["type"] == "agent_message"
    assert first.events[6]["usage"] == {"input_tokens": 100, "cached_input_tokens": 50, "output_tokens": 20}
    a, b = run_all((["codex", "exec", "--json", "resume", thread, "go on"], None),
                   (["codex", "exec", "resume", "--json", thread, "go on"], None))
    for r in (a, b):
        assert r.returncode == 0 and r.events[0] == {"type": "thread.started", "thread_id": thread}
        assert r.of("turn.completed")[0]["usage"]["input_tokens"] == 100
    # with a state dir, a resumed thread reports the thread's cumulative usage, as codex does
    env = {"DESCARTES_FAKE_STATE_DIR": str(tmp_path)}
    t = run(["codex", "exec", "--json", "one"], env=env).events[0]["thread_id"]
    again = run(["codex", "exec", "--json", "resume", t, "two"], env=env)
    assert again.of("turn.completed")[0]["usage"] == {"input_tokens": 200, "cached_input_tokens": 100,
                                                       "output_tokens": 40}


def test_gemini_one_turn_then_resume_keeps_the_session_id() -> None:
    first = run(["gemini", "-p", "fix the parser", "--output-format", "stream-json", "--model", "gemini-x"])
    assert first.returncode == 0, first.stderr
    assert [e["type"] for e in first.events] == ["init", "message", "tool_use", "tool_result", "message", "message",
                                                 "result"]
    assert all(e["timestamp"].endswith("Z") for e in first.events)
    init, user_msg, tool_use, tool_result = first.events[:4]
    assert init["model"] == "gemini-x" and (user_msg["role"], user_msg["content"]) == ("user", "fix the parser")
    assert tool_result["tool_id"] == tool_use["tool_id"] and tool_result["status"] == "success"
    answer = "".join(e["content"] for e in first.of("message") if e["role"] == "assistant")
    assert answer == "answer to turn 1: fix the parser"
    result = first.of("result")[0]
    assert result["status"] == "success"
    stats = result["stats"]
    assert (stats["input_tokens"], stats["cached"], stats["input"], stats["output_tokens"]) == (100, 50, 50, 20)
    assert stats["tool_calls"] == 1 and stats["models"]["gemini-x"]["input_tokens"] == 100
    again = run(["gemini", "-p", "go on", "--output-format", "stream-json", "--resume", init["session_id"]])
    assert again.returncode == 0 and again.events[0]["session_id"] == init["session_id"]
    assert again.of("result")[0]["stats"]["input_tokens"] == 100  # stats are the process's own


# -- knobs -----------------------------------------------------------------------------------

CODEX = ["codex", "exec", "--json"]
GEMINI = ["gemini", "--output-format", "stream-json", "-p"]


def test_fail_ends_each_cli_with_its_real_error_events() -> None:
    codex, gemini = run_all(([*CODEX, "fail now"], None), ([*GEMINI, "fail now"], None))
    assert codex.returncode == 1 and [e["type"] for e in codex.events][-2:] == ["error", "turn.failed"]
    assert codex.events[-1]["error"]["message"] and not codex.of("turn.completed")
    assert gemini.returncode == 1
    assert gemini.events[-1]["type"] == "result" and gemini.events[-1]["status"] == "error"
    assert gemini.events[-1]["error"]["message"]


def test_crash_exits_3_mid_turn_without_a_result() -> None:
    claude, codex, gemini = run_all((CLAUDE, user("crash") + "\n"), ([*CODEX, "crash"], None),
                                    ([*GEMINI, "crash"], None))
    assert (claude.returncode, codex.returncode, gemini.returncode) == (3, 3, 3)
    assert claude.of("system") and claude.of("assistant") and not claude.of("result")
    assert codex.of("thread.started") and codex.of("item.started") and not codex.of("turn.completed")
    assert gemini.of("init") and gemini.of("tool_use") and not gemini.of("result")


def test_sleep_pauses_codex_and_gemini_mid_turn() -> None:
    began = time.monotonic()
    codex, gemini = run_all(([*CODEX, "sleep 0.3"], None), ([*GEMINI, "sleep 0.3"], None))
    assert time.monotonic() - began >= 0.3
    assert codex.returncode == 0 and codex.of("turn.completed")
    assert gemini.returncode == 0 and gemini.of("result")[0]["status"] == "success"


def test_garbage_writes_one_bad_line_and_one_unknown_event_and_still_completes() -> None:
    claude, codex, gemini = run_all((CLAUDE, user("garbage") + "\n"), ([*CODEX, "garbage"], None),
                                    ([*GEMINI, "garbage"], None))
    known = {"system", "user", "assistant", "result", "thread.started", "turn.started", "item.started",
             "item.completed", "turn.completed", "init", "message", "tool_use", "tool_result"}
    for r in (claude, codex, gemini):
        assert r.returncode == 0 and r.lines.count(GARBAGE) == 1
        assert len([e for e in r.events if e["type"] not in known]) == 1
    assert claude.of("result") and codex.of("turn.completed") and gemini.of("result")


def test_flood_writes_n_text_events_then_completes_the_turn() -> None:
    claude, codex, gemini = run_all((CLAUDE, user("flood 1000") + "\n"), ([*CODEX, "flood 70"], None),
                                    ([*GEMINI, "flood 70"], None))
    texts = [e for e in claude.of("assistant") if e["message"]["content"][0].get("text", "").startswith("flood line")]
    assert len(texts) == 1000 and len({e["uuid"] for e in texts}) == 1000 and claude.of("result")
    assert len(codex.of("item.completed")) == 70 + 3 and codex.of("turn.completed")
    assert len(gemini.of("message")) == 70 + 3 and gemini.of("result")
    assert all(len(line) >= 250 for line in gemini.lines if "flood line" in line)


def test_pid_puts_the_pid_in_the_answer() -> None:
    job = start([*CODEX, "pid"])
    r = finish(job)
    answer = [e["item"]["text"] for e in r.of("item.completed") if e["item"]["type"] == "agent_message"]
    assert answer == [f"answer to turn 1 (pid {job.proc.pid}): pid"]


def test_fail_until_crashes_the_first_run_then_lets_the_restart_succeed(tmp_path: Path) -> None:
    flag = tmp_path / "failed-once"
    env = {"DESCARTES_FAKE_FAIL_UNTIL": str(flag)}
    first = claude_turns("hello", env=env)
    assert first.returncode == 3 and flag.exists() and not first.of("result")
    second = claude_turns("hello", env=env)
    assert second.returncode == 0 and second.of("result")[0]["subtype"] == "success"


# -- --config and --help ---------------------------------------------------------------------

def test_config_points_the_session_backends_at_the_fakes_with_this_python() -> None:
    r = subprocess.run([*FAKES, "--config"], capture_output=True, text=True, check=True)
    config = tomllib.loads(r.stdout)
    for cli in ("claude", "codex", "gemini"):
        assert config["backends"][f"{cli}-session"]["program"] == [sys.executable, "-m", "descartes_fast.demo.fakes",
                                                                    cli]
    helped = subprocess.run([*FAKES, "--help"], capture_output=True, text=True, check=True)
    assert "--config" in helped.stdout and "flood N" in helped.stdout


def test_config_quotes_the_interpreter_path_for_toml() -> None:
    from descartes_fast.demo.fakes import config_toml

    odd = 'C:\\odd "dir"\\python'
    config = tomllib.loads(config_toml(odd))
    assert config["backends"]["codex-session"]["program"][0] == odd
