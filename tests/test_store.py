"""The output store and the line index against a plain-bytes model (hypothesis), on both twins.

The model of a stream is all its bytes; its lines end at each ``\\n`` and after every
``line_max`` bytes without one; a chunk ends at the last line end of each piece of an append
(an append is taken ``CHUNK_MAX - LINE_MAX`` bytes at a time, so no chunk is longer than CHUNK_MAX).
"""

from __future__ import annotations

import errno
import os
import select
import shutil
import struct
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from descartes_fast import _impl
from descartes_fast.agents.lineindex import LINE_MAX as LINE_MAX_REAL
from descartes_fast.agents.store import CHUNK_MAX as CHUNK_MAX_REAL
from descartes_fast.agents.store import HOLD_SECS, RECORD, StreamLog, WouldBlock

LINE_MAX = 8  # small, so that long lines and forced ends are everywhere
CHUNK_MAX = 20  # and appends are cut into pieces of 12
#: DESCARTES_STORE_SCALE=20 for a long soak
HOLD_NS = int(HOLD_SECS * 1e9)
_SETTINGS = settings(max_examples=int(150 * float(os.environ.get("DESCARTES_STORE_SCALE", "1"))), deadline=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture])

blocks = st.lists(st.one_of(st.binary(max_size=30), st.sampled_from([b"\n", b"\n\n", b"abc\n", b"x" * 20])),
                  max_size=30)


def model_line_ends(data: bytes, line_max: int) -> list[int]:
    """Offsets after every line end of *data* (which starts at a line start), the plain way."""
    ends, start = [], 0
    for i, byte in enumerate(data):
        if byte == 0x0A or i + 1 - start == line_max:
            ends.append(i + 1)
            start = i + 1
    return ends


def model_lines(data: bytes, line_max: int, final: bool) -> list[str]:
    out, start = [], 0
    for end in model_line_ends(data, line_max):
        line = data[start:end]
        if line.endswith(b"\n"):
            line = line[:-1]
            if line.endswith(b"\r"):
                line = line[:-1]
        out.append(line.decode("utf-8", "replace"))
        start = end
    if final and start < len(data):
        out.append(data[start:].decode("utf-8", "replace"))
    return out


# -- the line index twins --


@pytest.fixture(params=[pytest.param("cython", marks=pytest.mark.c_extension), "python"], ids=["c", "py"])
def index(request):
    return _impl.load("lineindex", request.param)


@_SETTINGS
@given(data=st.binary(max_size=200), carry=st.integers(0, LINE_MAX - 1), line_max=st.integers(1, 12))
def test_scan_finds_the_line_ends(index, data, carry, line_max) -> None:
    carry = min(carry, line_max - 1)
    ends = model_line_ends(b"\x00" * carry + data, line_max)
    lines, cut = index.scan(data, carry, line_max)
    assert lines == len(ends)
    assert cut == (ends[-1] - carry if ends else 0)


@_SETTINGS
@given(data=st.binary(max_size=200), count=st.integers(0, 50), line_max=st.integers(1, 12), final=st.booleans())
def test_line_ends_and_split_lines(index, data, count, line_max, final) -> None:
    assert index.line_ends(data, count, line_max) == model_line_ends(data, line_max)[:count]
    assert index.split_lines(data, line_max, count, final) == model_lines(data, line_max, final)[:count]


@_SETTINGS
@given(values=st.lists(st.integers(0, 2**64 - 1), max_size=60), probe=st.integers(0, 2**64 - 1),
       field=st.integers(0, 2))
def test_find_record(index, values, probe, field) -> None:
    values.sort()
    records = b"".join(struct.pack("<QQQ", v, v, v) for v in values)
    expected = sum(1 for v in values if v <= probe)
    assert index.find_record(records, field, probe) == expected
    assert index.find_record(bytearray(records), field, probe) == expected


def test_find_record_refuses_bad_input(index) -> None:
    with pytest.raises(ValueError, match="whole u64 triples"):
        index.find_record(b"\x00" * 23, 0, 1)
    with pytest.raises(ValueError, match="field must be"):
        index.find_record(b"", 3, 1)


# -- the store --


class Model:
    """What a stream must hold after some appends."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.chunk_ends: list[int] = []

    def append(self, block: bytes) -> None:
        for start in range(0, len(block), CHUNK_MAX - LINE_MAX):
            self.data += block[start:start + CHUNK_MAX - LINE_MAX]
            ends = model_line_ends(bytes(self.data), LINE_MAX)
            if ends and (not self.chunk_ends or ends[-1] > self.chunk_ends[-1]):
                self.chunk_ends.append(ends[-1])

    def finish(self) -> None:
        if self.data and (not self.chunk_ends or self.chunk_ends[-1] < len(self.data)):
            self.chunk_ends.append(len(self.data))

    @property
    def end(self) -> int:
        return self.chunk_ends[-1] if self.chunk_ends else 0

    def lines(self) -> list[int]:
        """Line end offsets of the chunked part."""
        ends = [e for e in model_line_ends(bytes(self.data), LINE_MAX) if e <= self.end]
        if self.end and (not ends or ends[-1] < self.end):
            ends.append(self.end)  # a final unfinished line, made a line by finish()
        return ends


def open_log(tmp_path: Path, segment_bytes: int, sizes: list[int]) -> StreamLog:
    return StreamLog(tmp_path, "stdout", tail_bytes=0, segment_bytes=segment_bytes, on_size=sizes.append,
                     line_max=LINE_MAX, chunk_max=CHUNK_MAX)


def check(log: StreamLog, model: Model) -> None:
    facts = log.facts()
    assert facts.end_offset == model.end
    assert facts.end_sequence == len(model.chunk_ends)
    line_ends = model.lines()
    assert facts.end_line == len(line_ends)
    first = facts.first_offset
    # the whole stored stream, page by page, equals the model's bytes
    got, offset = bytearray(), None
    while True:
        page = log.read(offset=offset, max_bytes=7)
        if not page.data:
            break
        assert page.chunk_ends and page.chunk_ends[-1] == page.offset + len(page.data)
        got += page.data
        offset = page.chunk_ends[-1]
    assert bytes(got) == bytes(model.data[first:model.end])
    # every chunk by its sequence, every line by its number
    for seq in range(facts.first_sequence, facts.end_sequence):
        page = log.read(sequence=seq, max_chunks=1)
        start = model.chunk_ends[seq - 1] if seq else 0
        assert (page.sequence, page.offset, page.chunk_ends) == (seq, start, [model.chunk_ends[seq]])
        assert page.data == bytes(model.data[start:model.chunk_ends[seq]])
    for line in range(facts.first_line, facts.end_line):
        page = log.read(line=line, max_chunks=1)
        start = line_ends[line - 1] if line else 0
        assert (page.line, page.offset) == (line, start)
    texts = model_lines(bytes(model.data[:model.end]), LINE_MAX, True)
    assert log.lines(facts.first_line, 1000) == texts[facts.first_line:]


class Pipe:
    """A pipe the store takes from as the server does (non-blocking, spliced)."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe()
        os.set_blocking(self.r, False)

    def through(self, log: StreamLog, block: bytes, now_ns: int = 1, hold: bool = False) -> list:
        os.write(self.w, block)
        taken, chunks = log.take(self.r, 1 << 16, now_ns, hold) if block else (0, [])
        assert taken == len(block)
        return chunks

    def close(self) -> None:
        os.close(self.r)
        os.close(self.w)


@_SETTINGS
@given(appends=blocks, finish=st.booleans(), segment_bytes=st.sampled_from([40, 100, 10_000]),
       paces=st.lists(st.sampled_from(["soon", "late", "timer"]), min_size=1))
@pytest.mark.parametrize("how", ["append", "take", "hold"])
def test_appends_reads_and_rolls_agree_with_the_model(tmp_path_factory, appends, finish, segment_bytes, paces,
                                                      how) -> None:
    """*how*: appended, taken from a pipe, or taken holding (reads that come *soon* after the last
    chunks are held, a *late* one releases them, and so does the holder's *timer*)."""
    tmp = tmp_path_factory.mktemp("s")
    sizes: list[int] = []
    log = open_log(tmp, segment_bytes, sizes)
    model = Model()
    seen: list[tuple[int, bytes]] = []
    pipe = Pipe()
    now, held = 1, bytearray()  # (what the store holds, as the model knows it: one block once released)
    for i, block in enumerate(appends):
        pace = paces[i % len(paces)]
        now += HOLD_NS if pace == "late" else 1
        if how == "append":
            chunks = log.append(block, now)
        else:
            chunks = pipe.through(log, block, now, hold=how == "hold")
            if pace == "timer":
                chunks += log.release(now)
        seen += [(chunk.sequence, chunk.data) for chunk in chunks]
        held += block
        if not log.held:
            model.append(bytes(held))
            held.clear()
    pipe.close()
    if finish:
        seen += [(chunk.sequence, chunk.data) for chunk in log.finish(now + 1)]
        model.append(bytes(held))
        model.finish()
    # the chunks handed out are the stream, numbered 0, 1, 2, ...
    assert [s for s, _ in seen] == list(range(len(seen)))
    assert all(len(d) <= CHUNK_MAX for _, d in seen)
    assert b"".join(d for _, d in seen) == bytes(model.data[:model.end])
    check(log, model)
    # the bytes on disk are what the store counted
    on_disk = sum(p.stat().st_size for p in tmp.iterdir())
    assert sum(sizes) == log.size == on_disk
    log.close_files()


@_SETTINGS
@given(appends=blocks, drops=st.integers(0, 3))
def test_dropping_old_segments_is_counted_and_reads_start_after_them(tmp_path_factory, appends, drops) -> None:
    log = open_log(tmp_path_factory.mktemp("d"), 30, [])
    model = Model()
    for block in appends:
        log.append(block, 1)
        model.append(block)
    for _ in range(drops):
        log.drop_oldest()
    facts = log.facts()
    if facts.first_offset:  # something was dropped: it is said, and reads start after it
        assert facts.first_sequence > 0 and model.chunk_ends[facts.first_sequence - 1] == facts.first_offset
        assert log.read(offset=0).offset == facts.first_offset
        assert log.read(sequence=0).sequence == facts.first_sequence
        assert log.read(line=0).line == facts.first_line
    check(log, model)
    log.close_files()


@_SETTINGS
@given(appends=blocks, ended=st.booleans(), cut_index=st.booleans(), extra=st.binary(max_size=20))
def test_reopen_after_a_crash_keeps_every_byte(tmp_path_factory, appends, ended, cut_index, extra) -> None:
    tmp = tmp_path_factory.mktemp("r")
    log = open_log(tmp, 60, [])
    data = bytearray()
    for block in appends:
        log.append(block, 1)
        data += block
    log.close_files()  # the server dies here, without finishing anything
    last = max(tmp.glob("stdout.*.idx"), default=None)
    if cut_index and last is not None and last.stat().st_size > RECORD.size:
        with open(last, "r+b") as f:  # the last record (and a bit of the one before) never reached the disk
            f.truncate(max(RECORD.size, last.stat().st_size - RECORD.size - 5))
    again = StreamLog.reopen(tmp, "stdout", tail_bytes=0, segment_bytes=60, ended=ended, on_size=lambda n: None,
                             line_max=LINE_MAX, chunk_max=CHUNK_MAX)
    ends = model_line_ends(bytes(data), LINE_MAX)
    facts = again.facts()
    # every byte that ends a line is there again (and, once the agent has ended, the rest too)
    assert facts.end_offset == (len(data) if ended else (ends[-1] if ends else 0))
    assert facts.end_line == len(ends) + (1 if ended and data and (not ends or ends[-1] < len(data)) else 0)
    whole, offset = bytearray(), None
    while (page := again.read(offset=offset)).data:
        whole += page.data
        offset = page.chunk_ends[-1]
    assert bytes(whole) == bytes(data[:facts.end_offset])
    if not ended:  # and it goes on where it stopped, the chunks it hands out as they are stored
        before = facts.end_offset
        chunks = again.append(extra, 3)
        data += extra
        ends = model_line_ends(bytes(data), LINE_MAX)
        assert again.facts().end_offset == (ends[-1] if ends else 0)
        assert b"".join(c.data for c in chunks) == bytes(data[before:again.facts().end_offset])
    again.close_files()


def test_a_line_longer_than_the_maximum_is_split_not_lost(tmp_path) -> None:
    log = open_log(tmp_path, 1 << 20, [])
    blob = bytes(range(65, 91)) * 3 + b"abcdefghijklmnopqrstuv"  # 100 bytes, no newline at all
    chunks = log.append(blob, 1)  # 12 forced line ends of 8 bytes, in chunks of at most CHUNK_MAX
    assert b"".join(c.data for c in chunks) == blob[:96] and max(len(c.data) for c in chunks) <= CHUNK_MAX
    assert log.facts().end_line == 12 and log.carry == 4
    [chunk] = log.finish(2)
    assert chunk.data == blob[96:]
    assert log.facts().end_line == 13 and log.facts().end_offset == 100
    assert log.lines(0, 100) == [blob[i:i + 8].decode() for i in range(0, 100, 8)]
    log.close_files()


def test_a_read_takes_as_many_small_chunks_as_fit(tmp_path) -> None:
    log = open_log(tmp_path, 1 << 20, [])
    for i in range(3000):
        log.append(b"%d\n" % (i % 10), i)
    page = log.read(offset=0, max_bytes=1 << 20)
    assert len(page.chunk_ends) == 3000 and page.data == b"".join(b"%d\n" % (i % 10) for i in range(3000))
    assert page.chunk_times == list(range(3000))
    page = log.read(sequence=10, max_bytes=100, max_chunks=20)
    assert (page.sequence, len(page.chunk_ends), page.offset) == (10, 20, 20)
    log.close_files()


def test_take_splices_from_a_pipe_and_reads_what_is_no_pipe(tmp_path) -> None:
    log = open_log(tmp_path / "a", 1 << 20, [])
    pipe = Pipe()
    os.close(pipe.w)
    pipe.w = os.open(os.devnull, os.O_WRONLY)
    assert log.take(pipe.r, 100, 1) == (0, [])  # the end of an empty pipe: no file is made for it
    assert not (tmp_path / "a").exists() and log._splice
    pipe.close()
    pipe = Pipe()
    assert [c.data for c in pipe.through(log, b"ok\n")] == [b"ok\n"]  # spliced into the file made now
    pipe.close()
    master, slave = os.openpty()
    try:
        os.write(slave, b"ask> ")
        select.select([master], [], [], 5)
        taken, chunks = log.take(master, 100, 1)  # a terminal's master: splice refuses it, so it is read
        assert (taken, chunks, log.carry, log._splice) == (5, [], 5, False)
        assert log.cut(2).data == b"ask> "
        assert log.lines(0, 10) == ["ok", "ask> "]
    finally:
        os.close(master)
        os.close(slave)
    log.close_files()


@pytest.mark.parametrize("copied", [0, 2, None], ids=["nothing-copied", "half-copied", "copied-not-cut"])
def test_a_crash_within_a_roll_loses_and_repeats_nothing(tmp_path, monkeypatch, copied) -> None:
    """The roll writes the unfinished line into the next segment, then cuts it from the last; a
    crash anywhere in between is settled by the reopen."""
    import descartes_fast.agents.store as store

    log = open_log(tmp_path, 40, [])
    data = b"0123456\n" + b"unf"  # a chunk and its index records fill the segment: 'unf' moves along
    real_write = store.StreamLog._write

    class Crash(BaseException):
        pass

    def write(self, seg, chunk):
        if seg.number == 1:
            if copied is not None:
                real_write(self, seg, chunk[:copied])  # (a crash in the middle of the copy)
                raise Crash
            real_write(self, seg, chunk)
            monkeypatch.setattr(store.os, "ftruncate", lambda fd, n: (_ for _ in ()).throw(Crash()))
        else:
            real_write(self, seg, chunk)

    monkeypatch.setattr(store.StreamLog, "_write", write)
    with pytest.raises(Crash):
        log.append(data, 1)
    monkeypatch.undo()
    again = StreamLog.reopen(tmp_path, "stdout", tail_bytes=0, segment_bytes=40, ended=True, on_size=lambda n: None,
                             line_max=LINE_MAX, chunk_max=CHUNK_MAX)
    whole, offset = bytearray(), None
    while (page := again.read(offset=offset)).data:
        whole += page.data
        offset = page.chunk_ends[-1]
    assert bytes(whole) == data
    assert [p.stat().st_size for p in sorted(tmp_path.glob("*.log"))] == [8, 3]
    again.close_files()


def test_what_take_got_from_a_pipe_is_in_the_file_before_this_process_sees_it(tmp_path, monkeypatch) -> None:
    """A crash right after the read of a pipe (before anything was indexed) loses nothing."""
    log = open_log(tmp_path, 1 << 20, [])
    pipe = Pipe()
    pipe.through(log, b"first\n")

    class Crash(BaseException):
        pass

    def crash(*args, **kwargs):
        raise Crash

    monkeypatch.setattr(StreamLog, "_pieces", crash)
    os.write(pipe.w, b"second line\nand a half")
    with pytest.raises(Crash):
        log.take(pipe.r, 1 << 16, 1)
    monkeypatch.undo()
    pipe.close()
    again = StreamLog.reopen(tmp_path, "stdout", tail_bytes=0, segment_bytes=1 << 20, ended=True,
                             on_size=lambda n: None, line_max=64, chunk_max=CHUNK_MAX * 8)
    assert again.lines(0, 10) == ["first", "second line", "and a half"]
    again.close_files()


def test_reads_close_together_become_one_chunk_and_a_crash_loses_none_of_what_was_held(tmp_path) -> None:
    """Reads within HOLD_SECS of the last chunks are held (in the file, not indexed): they come
    out as one chunk when a read comes late, or at a release; a crash meanwhile loses none."""
    log = StreamLog(tmp_path, "stdout", tail_bytes=0, segment_bytes=1 << 20, on_size=lambda n: None)
    pipe = Pipe()
    assert [c.data for c in pipe.through(log, b"quiet before\n", 0, hold=True)] == [b"quiet before\n"]
    assert pipe.through(log, b"a\n", 1, hold=True) == [] and pipe.through(log, b"b\n", 2, hold=True) == []
    assert log.held == 4 and log.facts().end_line == 1
    assert [c.data for c in pipe.through(log, b"c\n", 1 + HOLD_NS, hold=True)] == [b"a\nb\nc\n"]
    assert pipe.through(log, b"d\n", 2 + HOLD_NS, hold=True) == []
    assert [c.data for c in log.release(3 + HOLD_NS)] == [b"d\n"] and not log.held  # (the holder's timer)
    big = b"x" * 1000 + b"\n"
    chunks = [c for _ in range(200) for c in pipe.through(log, big, 4 + HOLD_NS, hold=True)]
    assert 0 < log.held < CHUNK_MAX_REAL - LINE_MAX_REAL  # held: less than a chunk's worth
    assert len(chunks) <= 6 and max(len(c.data) for c in chunks) <= CHUNK_MAX_REAL  # 200 reads: 3 releases
    held = log.held
    pipe.through(log, b"and a half", 5 + HOLD_NS, hold=True)
    log.close_files()  # the server dies here
    pipe.close()
    again = StreamLog.reopen(tmp_path, "stdout", tail_bytes=0, segment_bytes=1 << 20, ended=True,
                             on_size=lambda n: None)
    lines = again.lines(0, 1000)
    assert lines[:5] == ["quiet before", "a", "b", "c", "d"] and lines[5:-1] == [big[:-1].decode()] * 200
    assert lines[-1] == "and a half" and held
    again.close_files()


def test_a_log_that_cannot_be_written_is_an_error_not_the_end_of_the_stream(tmp_path, monkeypatch) -> None:
    import errno

    import descartes_fast.agents.store as store

    log = open_log(tmp_path, 1 << 20, [])
    pipe = Pipe()
    pipe.through(log, b"first\n")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store.os, "splice", full)
    os.write(pipe.w, b"second\n")
    with pytest.raises(OSError, match="No space"):
        log.take(pipe.r, 1 << 16, 1)
    monkeypatch.undo()
    assert [c.data for c in log.take(pipe.r, 1 << 16, 1)[1]] == [b"second\n"]  # still in the pipe, taken now
    pipe.close()
    log.close_files()


def _reads_without_waiting_or_says_so(log: StreamLog, want: bytes) -> None:
    try:
        assert log.read(offset=0, nowait=True).data == want
    except WouldBlock:  # (then the server reads it on a worker thread)
        pass
    assert log.read(offset=0).data == want


def test_a_file_system_that_cannot_read_without_waiting_makes_reads_go_to_a_thread(tmp_path, monkeypatch) -> None:
    # tmpfs refuses RWF_NOWAIT (EOPNOTSUPP): a state directory there made every output read fail
    shm = Path("/dev/shm")
    places = [tmp_path / "disk"]
    if shm.is_dir() and os.access(shm, os.W_OK):
        places.append(Path(tempfile.mkdtemp(dir=shm)))
    try:
        for where in places:
            where.mkdir(exist_ok=True)
            log = open_log(where, 1 << 20, [])
            log.append(b"one\ntwo\n", 1)
            _reads_without_waiting_or_says_so(log, b"one\ntwo\n")
            log.close_files()

        def refuse(*args):
            raise OSError(errno.EOPNOTSUPP, "Operation not supported")
        monkeypatch.setattr(os, "preadv", refuse)
        log = open_log(tmp_path / "refused", 1 << 20, [])
        log.append(b"three\n", 2)
        with pytest.raises(WouldBlock):
            log.read(offset=0, nowait=True)
        assert log.read(offset=0).data == b"three\n"
        log.close_files()
    finally:
        for where in places[1:]:
            shutil.rmtree(where, ignore_errors=True)
