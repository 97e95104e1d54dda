"""The session scan twins against a per-line model (hypothesis), and Session.feed against the way it
chose its lines before the scan (a regular expression per chunk, then a find per type and marker)."""

from __future__ import annotations

import itertools
import json
import math
import os
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from descartes_fast import _impl
from descartes_fast.agents import sessions
from descartes_fast.agents.sessions import DIALECTS, Session
from descartes_fast.agents.sessionscan import TYPE_MAX, heads

#: DESCARTES_SESSIONSCAN_SCALE=20 for a long soak
_SETTINGS = settings(max_examples=int(300 * float(os.environ.get("DESCARTES_SESSIONSCAN_SCALE", "1"))),
                     deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
TWINS = [pytest.param("cython", marks=pytest.mark.c_extension, id="c"), pytest.param("python", id="py")]


@pytest.fixture(params=TWINS)
def twin(request):
    return _impl.load("sessionscan", request.param)


Heads = tuple[bytes, ...]


def model(data: bytes, known: Heads, wanted: Heads, markers: Heads) -> list[int] | None:
    """scan, the plain way: a line at a time."""
    lines = data.split(b"\n")
    if data.endswith(b"\n") or not data:
        lines.pop()  # (nothing after the last newline: no line)
    starts, pos = [], 0
    for line in lines:
        if not any(line.startswith(h) for h in known):
            return None
        if any(line.startswith(h) for h in wanted) or any(m in line for m in markers):
            starts.append(pos)
        pos += len(line) + 1
    return starts


# -- the twins --

_BYTES = st.binary(max_size=6) | st.text('ab"{\n', max_size=6).map(str.encode)
_HEADS = st.lists(_BYTES, max_size=4).map(tuple)
_LINES = st.lists(st.one_of(st.text('ab"{x', max_size=12).map(str.encode), _BYTES), max_size=25)


@_SETTINGS
@given(known=_HEADS, wanted=_HEADS, markers=_HEADS, lines=_LINES, data=st.data())
def test_scan_is_the_model(twin, known, wanted, markers, lines, data) -> None:
    # lines that start with a known head are likely, so that whole chunks pass and markers matter
    chunk = b"\n".join((data.draw(st.sampled_from(known)) if known and i % 3 else b"") + line
                       for i, line in enumerate(lines))
    chunk += data.draw(st.sampled_from([b"", b"\n"]))
    assert twin.scan(chunk, known, wanted, markers) == model(chunk, known, wanted, markers)
    assert twin.scan(bytearray(chunk), known, wanted, markers) == model(chunk, known, wanted, markers)


@_SETTINGS
@given(pad=st.lists(st.tuples(st.integers(0, 40), st.integers(0, 4)), max_size=12),
       marker=st.binary(min_size=4, max_size=12))
def test_markers_anywhere_in_long_lines(twin, pad, marker) -> None:
    # long lines, markers and near misses at every offset (the compiled twin looks 16 places at a time)
    def flip(at: int) -> bytes:
        return marker[:at] + bytes([marker[at] ^ 1]) + marker[at + 1:]
    near = [marker, flip(0), flip(-1), flip(len(marker) // 2), marker[:-1]]
    chunk = b"\n".join(b"h" + b"." * n + near[k] + b"." * (n % 17) for n, k in pad)
    assert twin.scan(chunk, (b"h",), (), (marker,)) == model(chunk, (b"h",), (), (marker,))
    more = (b"h",), (b"h.",), (marker, b"x")
    assert twin.scan(chunk * 7, *more) == model(chunk * 7, *more)


def test_a_marker_at_every_place_of_a_line(twin) -> None:
    for marker in (b"abcd", b'"tool_use"'):
        for before in range(40):
            for after in range(20):
                chunk = b"h" + b"." * before + marker + b"." * after
                assert twin.scan(chunk, (b"h",), (), (marker,)) == [0], (before, after)
                assert twin.scan(b"h\n" + chunk + b"\nh", (b"h",), (), (marker,)) == [2], (before, after)
                assert twin.scan(chunk[:-1 - after], (b"h",), (), (marker,)) == [], (before, after)


CLAUDE = DIALECTS["claude"]


@pytest.mark.parametrize("chunk,expected", [
    (b"", []),                                               # no lines
    (b'{"type":"user"}', []),                                # no newline at the end
    (b'{"type":"result"}', [0]),
    (b'{"type":"user"}\n{"type":"result"}', [16]),
    (b'{"type":"user"}\n', []),
    (b"\n", None),                                           # a blank line
    (b'{"type":"user"}\n\n{"type":"result"}\n', None),
    (b'{"type":"user"}\nnot json\n', None),
    (b'{"type":"mystery"}\n', None),                         # a type claude does not write
    (b'{"type":"resultx"}\n', None),
    (b' {"type":"result"}\n', None),                         # not first
    (b'{"type":"user","x":"tool_use"}\n{"type":"user"}\n', [0]),  # a marker in a line of an unwanted type
    (b'{"type":"user","x":"tool_use\n"}\n', None),
    (b'{"type":"user"}\n{"type":"system","subtype":"init"}\n{"type":"assistant","a":["tool_use"]}', [16, 51]),
])
def test_claude_chunks(twin, chunk, expected) -> None:
    assert twin.scan(chunk, *CLAUDE.scan_table) == expected == model(chunk, *CLAUDE.scan_table)


def test_heads_follow_the_type_rules() -> None:
    longest, too_long = b"t" * TYPE_MAX, b"t" * (TYPE_MAX + 1)
    assert heads([b"b", b"a", longest, too_long, b'a"b', b"a\\b", b"a\nb", b""]) == \
        (b'{"type":"a"', b'{"type":"b"', b'{"type":"' + longest + b'"')
    assert CLAUDE.scan_table[0] == heads(CLAUDE.known) and CLAUDE.scan_table[2] == CLAUDE.markers


@pytest.mark.parametrize("name", [b"t" * TYPE_MAX, b"t" * (TYPE_MAX + 1), b'a\\"b', b"a\\b", b"a b"])
def test_type_names_at_the_edges(twin, name) -> None:
    known = (b"t" * TYPE_MAX, b"t" * (TYPE_MAX + 1), b'a\\"b', b"a\\b", b"a b", b"x")
    chunk = b'{"type":"x"}\n{"type":"' + name + b'","k":1}\n'
    fits = re.fullmatch(rb'[^"\\]{1,%d}' % TYPE_MAX, name) is not None
    assert twin.scan(chunk, heads(known), heads(known), ()) == ([0, 13] if fits else None)


# -- Session.feed --


def old_feed(session: Session, data: bytes) -> list[sessions.SessionEvent]:
    """Session.feed before the scan (its choice of lines; the lines themselves are decoded alike)."""
    after, first = re.compile(rb'\n\{"type":"([^"\\]{1,64})"'), re.compile(rb'\{"type":"([^"\\]{1,64})"')
    lines = data.count(b"\n") + (0 if data.endswith(b"\n") else 1)
    types = after.findall(data)
    if (got := first.match(data)) is not None:
        types.append(got.group(1))
    dialect = session.dialect
    kinds = set(types)
    if len(types) != lines or not kinds <= dialect.known:
        return session._lines(data)
    starts = set()
    for kind in kinds & dialect.wanted:
        if data.startswith(b'{"type":"' + kind + b'"'):
            starts.add(0)
        needle = b'\n{"type":"' + kind + b'"'
        at = data.find(needle)
        while at >= 0:
            starts.add(at + 1)
            at = data.find(needle, at + 1)
    for marker in dialect.markers:
        at = data.find(marker)
        while at >= 0:
            starts.add(data.rfind(b"\n", 0, at) + 1)
            end = data.find(b"\n", at)
            if end < 0:
                break
            at = data.find(marker, end)
    events = []
    for start in sorted(starts):
        end = data.find(b"\n", start)
        events.extend(session._decode(data[start:end if end >= 0 else len(data)]))
    return events


def _line(event: Any) -> bytes:
    return json.dumps(event, separators=(",", ":")).encode()


#: lines of each dialect: its own events (some worth decoding, most not) and hostile ones
_POOL = {
    "claude": [_line(e) for e in (
        {"type": "system", "subtype": "init", "session_id": "s-1", "model": "m"},
        {"type": "system", "subtype": "init", "session_id": "s-2"},
        {"type": "assistant", "message": {"content": [{"type": "text", "text": "hi"}]}},
        {"type": "assistant", "message": {"content": [{"type": "tool_use", "id": "t1", "name": "Bash", "input": {}}]}},
        {"type": "assistant", "message": {"content": [{"type": "tool_use", "id": "t2", "name": "Read"}]}},
        {"type": "user", "message": {"content": [{"type": "tool_result", "tool_use_id": "t1", "x": "tool_use"}]}},
        {"type": "result", "subtype": "success", "total_cost_usd": 0.5, "usage": {"input_tokens": 3}},
        {"type": "result", "subtype": "error_max_turns", "is_error": True, "result": "no"},
        {"type": "stream_event", "event": {}}, {"type": "keep_alive"})],
    "codex": [_line(e) for e in (
        {"type": "thread.started", "thread_id": "th-1"}, {"type": "turn.started"},
        {"type": "item.started", "item": {"id": "i1", "type": "command_execution", "command": "ls"}},
        {"type": "item.completed", "item": {"id": "i2", "type": "mcp_tool_call", "tool": "x"}},
        {"type": "item.updated", "item": {"id": "i3", "type": "agent_message", "text": "web_search"}},
        {"type": "turn.completed", "usage": {"input_tokens": 5, "output_tokens": 2}},
        {"type": "turn.failed", "error": {"message": "boom"}}, {"type": "error", "message": "bad"})],
    "gemini": [_line(e) for e in (
        {"type": "init", "session_id": "g-1", "model": "m"}, {"type": "message", "role": "assistant", "content": "x"},
        {"type": "tool_use", "tool_name": "ls", "tool_id": "g1", "parameters": {}}, {"type": "tool_result"},
        {"type": "result", "status": "success", "stats": {"input_tokens": 4}}, {"type": "error", "message": "e"})],
}
_HOSTILE = [b"", b"  ", b"not json", b'{"type":"mystery"}', b'{"type":"' + b"t" * 65 + b'"}', b'{"type":"a\\"b"}',
            b'{"type":"result"', b'{"type":"result"}\r', b'{"no":"type"}', b"[1,2]", b"\xff\xfe", b'{"type":"init"}x']


@_SETTINGS
@given(dialect=st.sampled_from(sorted(_POOL)), data=st.data())
def test_feed_decodes_what_it_did_before(twin, monkeypatch, dialect, data) -> None:
    pool = _POOL[dialect] + data.draw(st.lists(st.sampled_from(_HOSTILE), max_size=2))
    lines = data.draw(st.lists(st.sampled_from(pool), max_size=40))
    cuts = sorted(data.draw(st.sets(st.integers(0, len(lines)), max_size=4)) | {0, len(lines)})
    unfinished = data.draw(st.booleans())  # the last line has no newline (the output ended there)
    monkeypatch.setattr(sessions, "scan", twin.scan)
    new, old = Session(DIALECTS[dialect]), Session(DIALECTS[dialect])
    assert new.feed(b"") == old_feed(old, b"") == []
    for a, b in itertools.pairwise(cuts):
        chunk = b"".join(line + b"\n" for line in lines[a:b])
        if b == len(lines) and unfinished:
            chunk = chunk[:-1]
        assert new.feed(chunk) == old_feed(old, chunk)
    assert new.state() == old.state()


_JSONISH = st.text('{}[]":,0123456789.eE+- \t\r\nabnulrtfs\\\x00é\ud800', max_size=40)
_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
                       lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=3), c, max_size=3))


def _interoperable(value: object) -> bool:
    """No value JSON's RFC 8259 leaves to the reader: no NaN or infinity, no lone surrogate."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return True
    if isinstance(value, list):
        return all(_interoperable(v) for v in value)
    if isinstance(value, dict):
        return all(_interoperable(k) and _interoperable(v) for k, v in value.items())
    return True


@_SETTINGS
@given(text=st.one_of(_JSONISH.map(lambda t: '{"' + t), _JSONISH, _VALUES.map(lambda v: '{"k":' + json.dumps(v) + "}")),
       tail=st.sampled_from(["", " ", "\r", " \t", "x", "\x0b", "\u2028"]))
def test_loads_is_json_loads_on_json_in_utf8(text, tail) -> None:
    """A line's value is json.loads's where the line is JSON in UTF-8 and its value is one every
    reader agrees on; anything else (not JSON, another encoding, NaN, 1e400, a lone surrogate)
    is a ValueError, so the line is counted as unparsed."""
    for line in ((text + tail).encode("utf-8", "surrogatepass"), (text + tail).encode("utf-16", "surrogatepass")):
        try:
            want = json.loads(line)
            line.decode("utf-8")
            agreed = _interoperable(want)
        except ValueError:  # (UnicodeDecodeError is one)
            agreed = False
        if agreed:
            assert sessions._loads(line) == want, line
        else:
            with pytest.raises(ValueError):
                sessions._loads(line)
