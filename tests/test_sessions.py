"""descartes_fast.agents.sessions: the events of the claude, codex and gemini JSON lines."""

from __future__ import annotations

import json

import pytest

from descartes_fast.agents.sessions import DIALECTS, Session


def lines(*events: object) -> bytes:
    return b"".join(json.dumps(e, separators=(",", ":")).encode() + b"\n" for e in events)


CLAUDE_TURN = lines(
    {"type": "system", "subtype": "init", "session_id": "s-1", "model": "claude-x", "tools": ["Bash"]},
    {"type": "user", "message": {"role": "user", "content": "hi"}, "session_id": "s-1"},
    {"type": "assistant", "message": {"content": [{"type": "tool_use", "id": "tu1", "name": "Bash",
                                                   "input": {"command": "ls"}}]}, "session_id": "s-1"},
    {"type": "user", "message": {"content": [{"type": "tool_result", "tool_use_id": "tu1", "content": "x"}]}},
    {"type": "assistant", "message": {"content": [{"type": "text", "text": "done"}]}, "session_id": "s-1"},
    {"type": "result", "subtype": "success", "is_error": False, "num_turns": 2, "session_id": "s-1",
     "total_cost_usd": 0.0125, "usage": {"input_tokens": 10, "cache_creation_input_tokens": 40,
                                          "cache_read_input_tokens": 50, "output_tokens": 20}},
)


def test_claude_turn_session_tool_and_totals() -> None:
    s = Session(DIALECTS["claude"])
    kinds = [e.kind for e in s.feed(CLAUDE_TURN)]
    assert kinds == ["session", "tool_call", "turn_completed"]
    assert s.totals() == {"session_id": "s-1", "turns": 1, "failed_turns": 0, "input_tokens": 100,
                          "output_tokens": 20, "cached_input_tokens": 50, "cost_usd": 0.0125, "tool_calls": 1,
                          "unparsed_lines": 0}
    # the second result of the same process carries the running total of the process
    s.feed(CLAUDE_TURN.replace(b'"total_cost_usd":0.0125', b'"total_cost_usd":0.025').replace(b"tu1", b"tu2"))
    assert (s.turns, s.cost_usd, s.input_tokens, s.tool_calls) == (2, 0.025, 200, 2)
    s.new_process()  # a resumed process counts from 0 again
    s.feed(CLAUDE_TURN.replace(b"tu1", b"tu3"))
    assert s.turns == 3 and s.cost_usd == pytest.approx(0.0375)
    assert Session.restore(DIALECTS["claude"], s.state()).totals() == s.totals()


def test_a_tool_call_is_counted_once_and_its_id_kept_only_for_its_turn() -> None:
    s = Session(DIALECTS["claude"])
    tool = CLAUDE_TURN.split(b"\n")[2] + b"\n"
    assert [e.kind for e in s.feed(tool + tool)] == ["tool_call"]  # the same block again: once
    for turn in range(1000):  # a long session: the ids it remembers do not grow with it
        s.feed(CLAUDE_TURN.replace(b'"tu1"', b'"tu-%d"' % turn))
        assert len(s._open_tools) == 0
    assert s.tool_calls == 1001 and s.turns == 1000


def test_unknown_and_malformed_lines_are_counted_never_fatal() -> None:
    s = Session(DIALECTS["claude"])
    got = s.feed(b"not json\n" + lines({"type": "mystery"}, {"no": "type"}, [1, 2]) + b'{"type":"result","usage":7}\n'
                 + b"\xff\xfe\n\n")
    assert s.unparsed_lines == 6 and got == []          # (a result whose usage is no object: not its shape)


def test_a_chunk_of_plain_assistant_text_is_not_decoded() -> None:
    s = Session(DIALECTS["claude"])
    text = lines({"type": "assistant", "message": {"content": [{"type": "text", "text": "a" * 300}]}}) * 100
    assert s.feed(text) == [] and s.unparsed_lines == 0
    # a line whose "type" is not first is decoded to be sure
    assert [e.kind for e in s.feed(lines({"session_id": "s-9", "subtype": "init", "type": "system"}))] == ["session"]


def test_claude_failed_turn() -> None:
    s = Session(DIALECTS["claude"])
    (event,) = s.feed(lines({"type": "result", "subtype": "error_during_execution", "is_error": True,
                             "total_cost_usd": 0.01, "usage": {"input_tokens": 1, "output_tokens": 1}}))
    assert event.kind == "turn_failed" and "error_during_execution" in event.message
    assert (s.turns, s.failed_turns, s.cost_usd) == (0, 1, 0.01)


def test_codex_events() -> None:
    s = Session(DIALECTS["codex"])
    got = s.feed(lines(
        {"type": "thread.started", "thread_id": "t-1"}, {"type": "turn.started"},
        {"type": "item.started", "item": {"id": "i0", "type": "command_execution", "command": "ls",
                                          "status": "in_progress"}},
        {"type": "item.completed", "item": {"id": "i0", "type": "command_execution", "command": "ls",
                                            "exit_code": 0, "status": "completed"}},
        {"type": "item.completed", "item": {"id": "i1", "type": "agent_message", "text": "ok"}},
        {"type": "turn.completed", "usage": {"input_tokens": 100, "cached_input_tokens": 50, "output_tokens": 20}},
        {"type": "turn.failed", "error": {"message": "boom"}},
    ))
    assert [e.kind for e in got] == ["session", "tool_call", "turn_completed", "turn_failed"]
    assert (s.session_id, s.turns, s.failed_turns, s.input_tokens, s.cached_input_tokens, s.cost_usd) == \
        ("t-1", 1, 1, 100, 50, None)


def test_gemini_events() -> None:
    s = Session(DIALECTS["gemini"])
    got = s.feed(lines(
        {"type": "init", "timestamp": "x", "session_id": "g-1", "model": "gemini-x"},
        {"type": "message", "role": "user", "content": "hi"},
        {"type": "tool_use", "tool_name": "run_shell_command", "tool_id": "c1", "parameters": {"command": "ls"}},
        {"type": "tool_result", "tool_id": "c1", "status": "success", "output": "x"},
        {"type": "message", "role": "assistant", "content": "ok", "delta": True},
        {"type": "result", "status": "success", "stats": {"input_tokens": 100, "output_tokens": 20, "cached": 50}},
    ))
    assert [e.kind for e in got] == ["session", "tool_call", "turn_completed"]
    assert (s.session_id, s.turns, s.input_tokens, s.output_tokens, s.tool_calls) == ("g-1", 1, 100, 20, 1)


@pytest.mark.parametrize("dialect", sorted(DIALECTS))
def test_every_dialect_survives_hostile_shapes(dialect: str) -> None:
    s = Session(DIALECTS[dialect])
    for kind in DIALECTS[dialect].known:
        for body in ({}, {"message": 5}, {"usage": "x", "stats": [], "item": 3, "error": 1}):
            s.feed(lines({"type": kind.decode(), **body}))
    assert s.unparsed_lines >= 0


def test_codex_usage_is_the_threads_running_total() -> None:
    s = Session(DIALECTS["codex"])
    def turn(n: int) -> bytes:
        return lines({"type": "turn.completed",
                      "usage": {"input_tokens": 100 * n, "cached_input_tokens": 50 * n, "output_tokens": 20 * n}})
    assert [e.kind for e in s.feed(turn(1))] == ["turn_completed"]
    s.new_process()                 # codex exec resume: the same thread, its totals grow on
    (second,) = s.feed(turn(2))
    assert second.data["turn_usage"] == {"input_tokens": 100, "output_tokens": 20, "cached_input_tokens": 50}
    assert (s.input_tokens, s.output_tokens, s.cached_input_tokens, s.turns) == (200, 40, 100, 2)


def test_a_resumed_claude_process_that_carries_its_total_on_is_not_counted_twice() -> None:
    s = Session(DIALECTS["claude"])
    s.feed(CLAUDE_TURN)                                            # 0.0125
    s.new_process()
    s.feed(CLAUDE_TURN.replace(b'"total_cost_usd":0.0125', b'"total_cost_usd":0.025'))  # carried on: 0.025
    assert s.cost_usd == pytest.approx(0.025)
    s.new_process()
    s.feed(CLAUDE_TURN.replace(b'"total_cost_usd":0.0125', b'"total_cost_usd":0.001'))  # from 0 again
    assert s.cost_usd == pytest.approx(0.026)
