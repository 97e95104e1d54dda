"""Fake ``claude``, ``codex`` and ``gemini`` CLIs that write the real CLIs' JSON-lines formats.

They stand in for the real coding-agent CLIs in tests, benchmarks and the README: the same
argv contract, the same event shapes (field names, nesting, types, compact JSON, one event a
line, flushed), the same session semantics, and deterministic token and cost numbers. What
each real format is, and where that was verified, is in ``docs/agent-sessions.md``.

    python -m descartes_fast.demo.fakes claude -p --input-format stream-json \\
        --output-format stream-json --verbose --replay-user-messages
    python -m descartes_fast.demo.fakes codex exec --json "fix the parser"
    python -m descartes_fast.demo.fakes codex exec --json resume THREAD_ID "and test it"
    python -m descartes_fast.demo.fakes gemini -p "fix the parser" --output-format stream-json
    python -m descartes_fast.demo.fakes gemini -p "and test it" --output-format stream-json --resume SESSION_ID
    python -m descartes_fast.demo.fakes --config     # TOML: our session backends run these fakes

Every turn uses 100 input tokens (50 of them read from the cache) and 20 output tokens; a
claude turn costs 0.0125 USD. The first word of a turn's prompt picks a behaviour:

    fail        the turn ends with the CLI's error event(s)
    fail api    (claude) the API-error shape: subtype "success" with is_error true
    crash       the turn starts, then the process exits with status 3, no result
    sleep S     sleep S seconds mid-turn (after the tool call, before the answer)
    garbage     also write a non-JSON line and a JSON line of an unknown type mid-turn
    flood N     write N assistant text events (about 300 bytes each) as fast as possible
    pid         the answer names the fake's pid

Environment: ``DESCARTES_FAKE_FAIL_UNTIL=FILE`` makes the first turn of a process crash when
FILE does not exist yet (and creates it): fails once, then succeeds on the restart.
``DESCARTES_FAKE_STATE_DIR=DIR`` keeps each session's totals in DIR, so that a resumed
process reports what the real CLIs report then (codex: the thread's cumulative usage; claude:
the running cost continued from the saved session, as Claude Code 2.1.277 and later do) and
``gemini --resume latest`` finds the newest session. Without it a resumed process counts
from zero.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import select
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NoReturn

Json = dict[str, Any]

TURN_INPUT_TOKENS = 100
TURN_CACHED_TOKENS = 50
TURN_OUTPUT_TOKENS = 20
CLAUDE_TURN_COST_UNITS = 125        # in 1/10000 USD: 0.0125 USD a turn, summed exactly
CRASH_EXIT = 3
FAIL_UNTIL_ENV = "DESCARTES_FAKE_FAIL_UNTIL"
STATE_DIR_ENV = "DESCARTES_FAKE_STATE_DIR"
FLOOD_BATCH = 64
FLOOD_LINE_BYTES = 300

CLAUDE_VERSION = "2.1.240"
CLAUDE_MODEL = "claude-sonnet-4-5-20250929"
CLAUDE_TOOLS = ["Task", "Bash", "Glob", "Grep", "Read", "Edit", "Write", "NotebookEdit", "WebFetch",
                "TodoWrite", "WebSearch", "BashOutput", "KillShell"]
CODEX_MODEL = "gpt-5-codex"
GEMINI_MODEL = "gemini-2.5-pro"
GEMINI_FATAL_INPUT_ERROR = 42


# -- output ---------------------------------------------------------------------------------

def _dumps(event: Json) -> bytes:
    """Compact JSON with non-ASCII kept, as JSON.stringify and serde_json write it."""
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def emit(event: Json) -> None:
    sys.stdout.buffer.write(_dumps(event))
    sys.stdout.buffer.flush()


def emit_raw(data: bytes) -> None:
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def crash() -> NoReturn:
    """Exit mid-turn with status 3, as a killed or broken CLI would: no result, no cleanup."""
    sys.stdout.buffer.flush()
    os._exit(CRASH_EXIT)


def flood(template: bytes, count: int) -> None:
    """Write ``count`` lines of ``template % {b"n": i}``, one write per batch of 64 lines."""
    for start in range(0, count, FLOOD_BATCH):
        sys.stdout.buffer.write(b"".join(template % {b"n": i} for i in range(start, min(start + FLOOD_BATCH, count))))
    sys.stdout.buffer.flush()


def garbage(unknown: Json) -> None:
    emit_raw(b"this line is not JSON {\n")
    emit(unknown)


_TEXT_MARK, _NUMBER_MARK = "@@FLOOD-TEXT@@", "@@FLOOD-NUMBER@@"


def flood_template(event: Json, text_path: str, numbered: dict[str, str] | None = None) -> bytes:
    """``event`` as a template for :func:`flood`: the field at ``text_path`` says which line it is
    and is padded so the line has about 300 bytes; each field of ``numbered`` (path -> prefix)
    becomes the prefix followed by the line number, so ids stay unique."""
    probe = json.loads(json.dumps(event))
    _set_path(probe, text_path, _TEXT_MARK)
    for path, prefix in (numbered or {}).items():
        _set_path(probe, path, prefix + _NUMBER_MARK)
    line = _dumps(probe).replace(b"%", b"%%")
    line = line.replace(_TEXT_MARK.encode(), b"flood line %(n)08d ").replace(_NUMBER_MARK.encode(), b"%(n)012d")
    pad = max(0, FLOOD_LINE_BYTES - len(line % {b"n": 0}))
    return line.replace(b"flood line %(n)08d ", b"flood line %(n)08d " + b"." * pad)


def _set_path(obj: Json, path: str, value: object) -> None:
    """Set ``obj[a][b]...`` for ``path`` = "a.b...", numbers indexing lists."""
    keys = path.split(".")
    target: Any = obj
    for key in keys[:-1]:
        target = target[int(key)] if isinstance(target, list) else target[key]
    if isinstance(target, list):
        target[int(keys[-1])] = value
    else:
        target[keys[-1]] = value


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def short_id(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:24]


# -- behaviour knobs -----------------------------------------------------------------------

@dataclass(frozen=True)
class Knob:
    """What a turn does, from the first word of its prompt."""

    kind: str = "normal"      # normal | fail | crash | sleep | garbage | flood | pid
    seconds: float = 0.0
    count: int = 0
    api: bool = False


def parse_knob(prompt: str) -> Knob:
    words = prompt.split()
    first = words[0].lower() if words else ""
    arg = words[1] if len(words) > 1 else ""
    if first == "fail":
        return Knob("fail", api=arg.lower() == "api")
    if first in ("crash", "garbage", "pid"):
        return Knob(first)
    if first == "sleep":
        try:
            return Knob("sleep", seconds=max(0.0, float(arg)))
        except ValueError:
            return Knob("sleep", seconds=1.0)
    if first == "flood":
        try:
            return Knob("flood", count=max(0, int(arg)))
        except ValueError:
            return Knob("flood", count=1000)
    return Knob()


def fail_until_triggers() -> bool:
    """True (once) when DESCARTES_FAKE_FAIL_UNTIL names a file that does not exist yet."""
    path = os.environ.get(FAIL_UNTIL_ENV)
    if not path:
        return False
    try:
        with open(path, "x"):
            pass
    except FileExistsError:
        return False
    return True


def answer_text(turn: int, prompt: str, knob: Knob) -> str:
    pid = f" (pid {os.getpid()})" if knob.kind == "pid" else ""
    return f"answer to turn {turn}{pid}: {prompt[:40]}"


# -- session state (optional) ----------------------------------------------------------------

_SAFE_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


def _state_path(cli: str, session_id: str) -> str | None:
    directory = os.environ.get(STATE_DIR_ENV)
    if not directory or not _SAFE_ID.match(session_id):
        return None
    return os.path.join(directory, f"{cli}-{session_id}.json")


def load_state(cli: str, session_id: str) -> Json:
    path = _state_path(cli, session_id)
    if path is None:
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def save_state(cli: str, session_id: str, data: Json) -> None:
    path = _state_path(cli, session_id)
    if path is None:
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def saved_sessions(cli: str) -> list[Json]:
    """The sessions saved for ``cli``, oldest first (by the time they started)."""
    directory = os.environ.get(STATE_DIR_ENV)
    if not directory:
        return []
    found = []
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    for name in names:
        if name.startswith(f"{cli}-") and name.endswith(".json"):
            state = load_state(cli, name[len(cli) + 1:-5])
            if isinstance(state.get("session_id"), str):
                found.append(state)
    return sorted(found, key=lambda s: float(s.get("started", 0.0)))


# -- claude ----------------------------------------------------------------------------------

class MalformedInput(Exception):
    pass


def _claude_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="claude", description="Fake Claude Code CLI (headless mode only).")
    p.add_argument("prompt", nargs="?", help="the prompt (text input format)")
    p.add_argument("-p", "--print", action="store_true", dest="print_mode", help="headless mode")
    p.add_argument("--input-format", choices=["text", "stream-json"], default="text")
    p.add_argument("--output-format", choices=["text", "json", "stream-json"], default="text")
    p.add_argument("--verbose", action="store_true")
    p.add_argument("--replay-user-messages", action="store_true")
    p.add_argument("--include-partial-messages", action="store_true")
    p.add_argument("--model")
    p.add_argument("--fallback-model")
    p.add_argument("--allowedTools", "--allowed-tools", action="append", default=[])
    p.add_argument("--disallowedTools", "--disallowed-tools", action="append", default=[])
    p.add_argument("--tools")
    p.add_argument("--append-system-prompt")
    p.add_argument("--system-prompt")
    p.add_argument("--permission-mode")
    p.add_argument("--permission-prompt-tool")
    p.add_argument("--dangerously-skip-permissions", action="store_true")
    p.add_argument("--max-turns")
    p.add_argument("--max-budget-usd")
    p.add_argument("--mcp-config", action="append", default=[])
    p.add_argument("--strict-mcp-config", action="store_true")
    p.add_argument("--settings")
    p.add_argument("--setting-sources")
    p.add_argument("--add-dir", action="append", default=[])
    p.add_argument("-r", "--resume", help="resume this session id")
    p.add_argument("-c", "--continue", action="store_true", dest="continue_session")
    p.add_argument("--session-id")
    p.add_argument("--fork-session", action="store_true")
    return p


def _claude_usage(input_tokens: int, cached: int, output: int) -> Json:
    return {"input_tokens": input_tokens, "cache_creation_input_tokens": 0, "cache_read_input_tokens": cached,
            "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
            "output_tokens": output, "service_tier": "standard"}


class ClaudeFake:
    """One headless Claude Code process: turns from stdin lines (stream-json) or one prompt."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.model: str = args.model or CLAUDE_MODEL
        if args.resume and not args.fork_session:
            self.session_id: str = args.resume
        else:
            self.session_id = args.session_id or str(uuid.uuid4())
        saved = load_state("claude", args.resume) if args.resume else {}
        # The running total of the process. Claude Code < 2.1.277 starts a resumed process at 0;
        # 2.1.277+ continues from the session's saved total (modelled with DESCARTES_FAKE_STATE_DIR).
        self.cost_units = int(saved.get("cost_units", 0))
        self.tokens = {k: int(saved.get(k, 0)) for k in ("input", "cached", "output")}
        self.turns = 0
        self.failed = False
        self.started = time.time()

    # the events

    def _common(self) -> Json:
        return {"session_id": self.session_id}

    def init_event(self) -> Json:
        return {"type": "system", "subtype": "init", "cwd": os.getcwd(), "session_id": self.session_id,
                "tools": list(CLAUDE_TOOLS), "mcp_servers": [], "model": self.model,
                "permissionMode": self.args.permission_mode or "default",
                "slash_commands": ["compact", "context", "cost", "init", "review"], "apiKeySource": "none",
                "claude_code_version": CLAUDE_VERSION, "output_style": "default", "agents": ["general-purpose"],
                "skills": [], "plugins": [], "uuid": str(uuid.uuid4())}

    def assistant(self, message_id: str, block: Json, usage: Json) -> Json:
        return {"type": "assistant",
                "message": {"model": self.model, "id": message_id, "type": "message", "role": "assistant",
                            "content": [block], "stop_reason": None, "stop_sequence": None, "usage": usage},
                "parent_tool_use_id": None, **self._common(), "uuid": str(uuid.uuid4())}

    def tool_result(self, tool_use_id: str, output: str) -> Json:
        return {"type": "user",
                "message": {"role": "user", "content": [{"tool_use_id": tool_use_id, "type": "tool_result",
                                                         "content": output, "is_error": False}]},
                "parent_tool_use_id": None, **self._common(), "uuid": str(uuid.uuid4()),
                "tool_use_result": {"stdout": output, "stderr": "", "interrupted": False, "isImage": False}}

    def model_usage(self) -> Json:
        return {self.model: {"inputTokens": self.tokens["input"], "outputTokens": self.tokens["output"],
                             "cacheReadInputTokens": self.tokens["cached"], "cacheCreationInputTokens": 0,
                             "webSearchRequests": 0, "costUSD": self.cost_units / 10000,
                             "contextWindow": 200000, "maxOutputTokens": 32000}}

    def result(self, started: float, subtype: str, is_error: bool, num_turns: int, usage: Json,
               **extra: object) -> Json:
        took = max(1, int((time.monotonic() - started) * 1000))
        return {"type": "result", "subtype": subtype, "is_error": is_error, "duration_ms": took,
                "duration_api_ms": max(1, took // 2), "num_turns": num_turns, **extra, **self._common(),
                "total_cost_usd": self.cost_units / 10000, "usage": usage, "modelUsage": self.model_usage(),
                "permission_denials": [], "uuid": str(uuid.uuid4())}

    # a turn

    def turn(self, message: Json, prompt: str, input_uuid: str | None) -> None:
        self.turns += 1
        started = time.monotonic()
        knob = Knob("crash") if self.turns == 1 and fail_until_triggers() else parse_knob(prompt)
        # one system/init per turn, then the replayed user message, then the turn's content
        emit(self.init_event())
        if self.args.replay_user_messages:
            emit({"type": "user", "message": message, "parent_tool_use_id": None, **self._common(),
                  "uuid": input_uuid or str(uuid.uuid4()), "isReplay": True})
        if knob.kind == "fail":
            self.fail_turn(started, knob, prompt)
            return
        if knob.kind == "flood":
            line = self.assistant(short_id("msg_"), {"type": "text", "text": ""}, _claude_usage(1, 0, 1))
            flood(flood_template(line, "message.content.0.text", {"uuid": "00000000-0000-4000-8000-"}), knob.count)
        command = f"echo turn {self.turns}"
        tool_use_id = short_id("toolu_")
        emit(self.assistant(short_id("msg_"), {"type": "tool_use", "id": tool_use_id, "name": "Bash",
                                               "input": {"command": command, "description": "Echo the turn"}},
                            _claude_usage(60, 25, 8)))
        if knob.kind == "crash":
            crash()
        if knob.kind == "sleep":
            time.sleep(knob.seconds)
        if knob.kind == "garbage":
            garbage({"type": "fake_unknown_event", "subtype": "probe", **self._common(), "uuid": str(uuid.uuid4())})
        emit(self.tool_result(tool_use_id, f"turn {self.turns}"))
        text = answer_text(self.turns, prompt, knob)
        emit(self.assistant(short_id("msg_"), {"type": "text", "text": text}, _claude_usage(40, 25, 12)))
        self.cost_units += CLAUDE_TURN_COST_UNITS
        for key, n in (("input", TURN_INPUT_TOKENS), ("cached", TURN_CACHED_TOKENS), ("output", TURN_OUTPUT_TOKENS)):
            self.tokens[key] += n
        usage = {**_claude_usage(TURN_INPUT_TOKENS, TURN_CACHED_TOKENS, TURN_OUTPUT_TOKENS),
                 "server_tool_use": {"web_search_requests": 0, "web_fetch_requests": 0}}
        # num_turns: the prompt plus one per tool_result, so 2 for this turn
        emit(self.result(started, "success", False, 2, usage, result=text, stop_reason="end_turn",
                         terminal_reason="completed"))
        self.save()

    def fail_turn(self, started: float, knob: Knob, prompt: str) -> None:
        self.failed = True
        usage = {**_claude_usage(0, 0, 0), "server_tool_use": {"web_search_requests": 0, "web_fetch_requests": 0}}
        if knob.api:  # how an API failure ends a turn: subtype "success" with is_error true
            emit(self.result(started, "success", True, 1, usage, result="API Error: 500 Internal server error "
                             f"(fake failure for: {prompt[:40]})", stop_reason=None, terminal_reason="api_error",
                             api_error_status=500))
        else:
            emit(self.result(started, "error_during_execution", True, 1, usage, stop_reason=None,
                             errors=[f"fake failure requested by the prompt: {prompt[:40]}"]))
        self.save()

    def save(self) -> None:
        save_state("claude", self.session_id, {"session_id": self.session_id, "started": self.started,
                                               "cost_units": self.cost_units, **self.tokens})

    # input

    def handle_line(self, raw: bytes) -> None:
        text = raw.decode("utf-8", errors="replace").strip()
        if not text:
            return  # blank and whitespace-only lines are skipped
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise MalformedInput(f"not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise MalformedInput("not a JSON object")
        if data.get("type") == "control_request":
            emit({"type": "control_response",
                  "response": {"subtype": "success", "request_id": data.get("request_id"), "response": {}}})
            return
        message = data.get("message")
        if data.get("type") != "user" or not isinstance(message, dict) or "content" not in message:
            raise MalformedInput('expected {"type":"user","message":{"role":"user","content":...}}')
        input_uuid = data.get("uuid") if isinstance(data.get("uuid"), str) else None
        self.turn(message, prompt_of(message["content"]), input_uuid)

    def run(self) -> int:
        args = self.args
        if not args.print_mode:
            return _usage_error("claude: this fake runs headless only (-p/--print)")
        if args.output_format != "stream-json":
            return _usage_error("claude: this fake writes --output-format stream-json only")
        if not args.verbose:
            return _usage_error("Error: When using --print, --output-format=stream-json requires --verbose")
        if args.input_format == "text":
            prompt = args.prompt if args.prompt is not None else sys.stdin.read()
            self.turn({"role": "user", "content": prompt}, prompt, None)
            return 1 if self.failed else 0
        for raw in sys.stdin.buffer:
            try:
                self.handle_line(raw)
            except MalformedInput as exc:
                print(f"Error parsing streaming input line: {exc}", file=sys.stderr, flush=True)
                return 1
        return 1 if self.failed else 0


def prompt_of(content: object) -> str:
    """The text of a user message's content: a string, or the text of its text blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(b.get("text", "")) for b in content if isinstance(b, dict) and b.get("type") == "text")
    raise MalformedInput("message content must be a string or a list of content blocks")


def claude_main(argv: Sequence[str]) -> int:
    args, _unknown = _claude_parser().parse_known_args(list(argv))
    return ClaudeFake(args).run()


# -- codex -----------------------------------------------------------------------------------

def _codex_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="codex exec", description="Fake Codex CLI (codex exec only).",
                                usage="codex exec [OPTIONS] [PROMPT]\n       codex exec [OPTIONS] resume "
                                      "[OPTIONS] (SESSION_ID | --last) [PROMPT]")
    p.add_argument("words", nargs="*", help="PROMPT, or: resume SESSION_ID [PROMPT]")
    p.add_argument("--json", "--experimental-json", action="store_true", help="JSONL events on stdout")
    p.add_argument("-m", "--model")
    p.add_argument("-s", "--sandbox")
    p.add_argument("-p", "--profile")
    p.add_argument("-c", "--config", action="append", default=[])
    p.add_argument("-C", "--cd")
    p.add_argument("-i", "--image", action="append", default=[])
    p.add_argument("-o", "--output-last-message")
    p.add_argument("--output-schema")
    p.add_argument("--color")
    p.add_argument("--add-dir", action="append", default=[])
    p.add_argument("--oss", action="store_true")
    p.add_argument("--local-provider")
    p.add_argument("--full-auto", action="store_true")
    p.add_argument("--dangerously-bypass-approvals-and-sandbox", "--yolo", action="store_true")
    p.add_argument("--skip-git-repo-check", action="store_true")
    p.add_argument("--ephemeral", action="store_true")
    p.add_argument("--last", action="store_true", help="(resume) the most recent session")
    p.add_argument("--all", action="store_true")
    return p


def codex_main(argv: Sequence[str]) -> int:
    argv = list(argv)
    if not argv or argv[0] != "exec":
        return _usage_error("codex: this fake implements `codex exec` only")
    args, _unknown = _codex_parser().parse_known_intermixed_args(argv[1:])
    words: list[str] = args.words
    thread_id: str | None = None
    resumed = bool(words) and words[0] == "resume"
    if resumed:
        rest = words[1:]
        if args.last:
            latest = saved_sessions("codex")
            thread_id = latest[-1]["session_id"] if latest else None
            prompt = rest[0] if rest else None
        else:
            if not rest:
                return _usage_error("codex exec resume: give a SESSION_ID or --last")
            thread_id, prompt = rest[0], (rest[1] if len(rest) > 1 else None)
    else:
        prompt = words[0] if words else None
    if prompt is None or prompt == "-":
        prompt = sys.stdin.read()
    return CodexFake(args, thread_id or str(uuid.uuid4()), prompt).run()


class CodexFake:
    """One ``codex exec`` process: one turn of a thread, new or resumed."""

    def __init__(self, args: argparse.Namespace, thread_id: str, prompt: str) -> None:
        self.json_mode: bool = args.json
        self.model: str = args.model or CODEX_MODEL
        self.thread_id = thread_id
        self.prompt = prompt
        self.next_item = 0
        self.saved = load_state("codex", thread_id)

    def item_id(self) -> str:
        item = f"item_{self.next_item}"
        self.next_item += 1
        return item

    def out(self, event: Json) -> None:
        if self.json_mode:
            emit(event)

    def run(self) -> int:
        knob = Knob("crash") if fail_until_triggers() else parse_knob(self.prompt)
        turn = int(self.saved.get("turns", 0)) + 1
        if not self.json_mode:
            print(f"model: {self.model}\nsession id: {self.thread_id}", file=sys.stderr, flush=True)
        self.out({"type": "thread.started", "thread_id": self.thread_id})
        self.out({"type": "turn.started"})
        if knob.kind == "fail":
            message = f"fake failure requested by the prompt: {self.prompt[:40]}"
            self.out({"type": "error", "message": message})
            self.out({"type": "turn.failed", "error": {"message": message}})
            if not self.json_mode:
                print(f"ERROR: {message}", file=sys.stderr, flush=True)
            return 1
        self.out({"type": "item.completed", "item": {"id": self.item_id(), "type": "reasoning",
                                                      "text": "**Running a command for this turn**"}})
        if knob.kind == "flood" and self.json_mode:
            line = {"type": "item.completed", "item": {"id": "", "type": "agent_message", "text": ""}}
            flood(flood_template(line, "item.text", {"item.id": "item_flood_"}), knob.count)
        command_id, command = self.item_id(), f"bash -lc 'echo turn {turn}'"
        self.out({"type": "item.started", "item": {"id": command_id, "type": "command_execution", "command": command,
                                                    "aggregated_output": "", "exit_code": None,
                                                    "status": "in_progress"}})
        if knob.kind == "crash":
            crash()
        if knob.kind == "sleep":
            time.sleep(knob.seconds)
        if knob.kind == "garbage" and self.json_mode:
            garbage({"type": "fake.unknown_event", "thread_id": self.thread_id})
        self.out({"type": "item.completed", "item": {"id": command_id, "type": "command_execution",
                                                      "command": command, "aggregated_output": f"turn {turn}\n",
                                                      "exit_code": 0, "status": "completed"}})
        text = answer_text(turn, self.prompt, knob)
        self.out({"type": "item.completed", "item": {"id": self.item_id(), "type": "agent_message", "text": text}})
        # usage is the thread's total (ThreadTokenUsage.total): the turn's own on a new thread,
        # and everything since the thread began on a resumed one (kept with DESCARTES_FAKE_STATE_DIR)
        totals = {k: int(self.saved.get(k, 0)) + n for k, n in (("input_tokens", TURN_INPUT_TOKENS),
                                                                 ("cached_input_tokens", TURN_CACHED_TOKENS),
                                                                 ("output_tokens", TURN_OUTPUT_TOKENS))}
        self.out({"type": "turn.completed", "usage": totals})
        save_state("codex", self.thread_id, {"session_id": self.thread_id, "turns": turn, **totals,
                                             "started": float(self.saved.get("started", time.time()))})
        if not self.json_mode:
            print(text, flush=True)
        return 0


# -- gemini ----------------------------------------------------------------------------------

def _gemini_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gemini", description="Fake Gemini CLI (headless mode only).")
    p.add_argument("query", nargs="*", help="positional prompt")
    p.add_argument("-p", "--prompt", help="the prompt: headless mode")
    p.add_argument("-o", "--output-format", choices=["text", "json", "stream-json"], default="text")
    p.add_argument("-m", "--model")
    p.add_argument("-r", "--resume", nargs="?", const="latest", help='a session id, "latest" or an index')
    p.add_argument("--session-id")
    p.add_argument("-y", "--yolo", action="store_true")
    p.add_argument("--approval-mode")
    p.add_argument("-s", "--sandbox", action="store_true")
    p.add_argument("-d", "--debug", action="store_true")
    p.add_argument("--include-directories", action="append", default=[])
    p.add_argument("--allowed-tools", action="append", default=[])
    p.add_argument("--skip-trust", action="store_true")
    return p


def read_piped_stdin(wait: float = 0.5) -> str:
    """What gemini reads from a piped stdin: all of it if data comes within 0.5 s, else nothing."""
    if sys.stdin.isatty():
        return ""
    try:
        ready, _, _ = select.select([sys.stdin], [], [], wait)
    except (OSError, ValueError):
        return ""
    return sys.stdin.read() if ready else ""


def gemini_main(argv: Sequence[str]) -> int:
    args, _unknown = _gemini_parser().parse_known_args(list(argv))
    prompt = args.prompt if args.prompt is not None else " ".join(args.query)
    if args.output_format != "stream-json":
        return _usage_error("gemini: this fake writes --output-format stream-json only")
    if args.resume is not None and args.session_id:
        return _usage_error("The flags --resume, --session-id, and --session-file are mutually exclusive. "
                            "Please provide only one.", GEMINI_FATAL_INPUT_ERROR)
    session_id = args.session_id or str(uuid.uuid4())
    if args.resume is not None:
        found = resolve_gemini_session(args.resume)
        if found is None:
            return _usage_error(f'Error resuming session: Invalid session identifier "{args.resume}".',
                                GEMINI_FATAL_INPUT_ERROR)
        session_id = found
    piped = read_piped_stdin()
    text = f"{piped}\n\n{prompt}" if piped and prompt else (piped or prompt)
    return GeminiFake(args.model or GEMINI_MODEL, session_id, prompt, text).run()


def resolve_gemini_session(resume: str) -> str | None:
    """``--resume``: a session id is taken as given; "latest" and 1-based indexes are looked up
    among the saved sessions (oldest first). "latest" with none saved starts a new session."""
    sessions = saved_sessions("gemini")
    if resume == "latest":
        if not sessions:
            print("No previous sessions found for this project.", file=sys.stderr, flush=True)
            return str(uuid.uuid4())
        return str(sessions[-1]["session_id"])
    if resume.isdigit():
        index = int(resume)
        return str(sessions[index - 1]["session_id"]) if 0 < index <= len(sessions) else None
    return resume


class GeminiFake:
    """One headless ``gemini -p`` process: one turn of a session, new or resumed."""

    def __init__(self, model: str, session_id: str, prompt: str, text: str) -> None:
        self.model = model
        self.session_id = session_id
        self.prompt = prompt
        self.text = text
        self.saved = load_state("gemini", session_id)
        self.started = time.monotonic()

    def event(self, kind: str, **fields: object) -> Json:
        return {"type": kind, "timestamp": now_iso(), **fields}

    def stats(self, tool_calls: int, duration_ms: int, used: bool) -> Json:
        n_in, n_cached, n_out = (TURN_INPUT_TOKENS, TURN_CACHED_TOKENS, TURN_OUTPUT_TOKENS) if used else (0, 0, 0)
        model = {"total_tokens": n_in + n_out, "input_tokens": n_in, "output_tokens": n_out, "cached": n_cached,
                 "input": n_in - n_cached}
        return {**model, "duration_ms": duration_ms, "tool_calls": tool_calls,
                "models": {self.model: dict(model)} if used else {}}

    def run(self) -> int:
        knob = Knob("crash") if fail_until_triggers() else parse_knob(self.prompt)
        turn = int(self.saved.get("turns", 0)) + 1
        emit(self.event("init", session_id=self.session_id, model=self.model))
        emit(self.event("message", role="user", content=self.text))
        if knob.kind == "fail":
            emit(self.event("result", status="error",
                            error={"type": "Error", "message": f"[API Error: fake failure requested by the prompt: "
                                                              f"{self.prompt[:40]}]"},
                            stats=self.stats(0, 0, False)))
            return 1
        if knob.kind == "flood":
            line = self.event("message", role="assistant", content="", delta=True)
            flood(flood_template(line, "content"), knob.count)
        tool_id = f"run_shell_command__run_shell_command_{int(time.time() * 1000)}_0"
        command = f"echo turn {turn}"
        emit(self.event("tool_use", tool_name="run_shell_command", tool_id=tool_id,
                        parameters={"command": command, "description": "Echo the turn"}))
        if knob.kind == "crash":
            crash()
        if knob.kind == "sleep":
            time.sleep(knob.seconds)
        if knob.kind == "garbage":
            garbage(self.event("fake_unknown_event", note="not a gemini event type"))
        emit(self.event("tool_result", tool_id=tool_id, status="success", output=f"turn {turn}"))
        answer = answer_text(turn, self.prompt, knob)
        half = len(answer) // 2
        emit(self.event("message", role="assistant", content=answer[:half], delta=True))
        emit(self.event("message", role="assistant", content=answer[half:], delta=True))
        took = max(1, int((time.monotonic() - self.started) * 1000))
        # stats cover this process only: a resumed session's earlier turns are not counted again
        emit(self.event("result", status="success", stats=self.stats(1, took, True)))
        save_state("gemini", self.session_id, {"session_id": self.session_id, "turns": turn,
                                               "started": float(self.saved.get("started", time.time()))})
        return 0


# -- entry point -----------------------------------------------------------------------------

def _usage_error(message: str, status: int = 1) -> int:
    print(message, file=sys.stderr, flush=True)
    return status


def toml_string(value: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's)."""
    return json.dumps(value, ensure_ascii=False)


def config_toml(python: str | None = None) -> str:
    """The [backends.*] tables that point our three session backends at these fakes."""
    exe = toml_string(python or sys.executable)
    lines = []
    for cli in ("claude", "codex", "gemini"):
        lines.append(f"[backends.{cli}-session]")
        lines.append(f'program = [{exe}, "-m", "descartes_fast.demo.fakes", "{cli}"]')
    return "\n".join(lines) + "\n"


HELP = """\
usage: python -m descartes_fast.demo.fakes (claude|codex|gemini) ARGS...
       python -m descartes_fast.demo.fakes --config

Fake claude, codex and gemini CLIs for tests: the real CLIs' argv and JSON-lines formats.

  claude -p --input-format stream-json --output-format stream-json --verbose
         [--replay-user-messages] [--model M] [--resume SESSION_ID] ...
      user turns as NDJSON lines on stdin ({"type":"user","message":{"role":"user",
      "content":...}}) until EOF; per turn: system/init, the replayed user message,
      a Bash tool_use, its tool_result, the answer, a result (total_cost_usd: the
      running total of the process)
  codex exec --json [--model M] PROMPT
  codex exec --json resume SESSION_ID PROMPT      (also: resume --last PROMPT)
      one turn: thread.started, turn.started, item.* events, turn.completed
  gemini -p PROMPT --output-format stream-json [--model M] [--resume SESSION_ID]
      one turn: init, user message, tool_use, tool_result, assistant deltas, result

  --config    print the TOML [backends.*] tables for claude-session, codex-session and
              gemini-session that run these fakes with this interpreter

Prompt knobs (first word of a turn's prompt): fail, fail api (claude), crash, sleep S,
garbage, flood N, pid. Environment: DESCARTES_FAKE_FAIL_UNTIL=FILE (crash the first turn
until FILE exists), DESCARTES_FAKE_STATE_DIR=DIR (keep session totals across processes).
"""


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        sys.stdout.write(HELP)
        return 0 if args else 2
    if args[0] == "--config":
        sys.stdout.write(config_toml())
        return 0
    commands = {"claude": claude_main, "codex": codex_main, "gemini": gemini_main}
    if args[0] not in commands:
        return _usage_error(f"unknown CLI {args[0]!r}: give claude, codex or gemini (see --help)", 2)
    try:
        return commands[args[0]](args[1:])
    except BrokenPipeError:
        # the reader went away: leave quietly, as the real CLIs do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
