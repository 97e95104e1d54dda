"""The bin form of log chunks (docs/protocol.md §5.9): its bytes, the same chunk as the Rust
form rmp-serde wrote (the golden vectors), and a precise error for anything else."""

from __future__ import annotations

import uuid

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.golden import load

from descartes_fast.wire import codec
from descartes_fast.wire.errors import ArityError, DecodeError, InvalidValueError, TruncatedError, WrongTypeError
from descartes_fast.wire.frames import parse_pub_frame
from descartes_fast.wire.logchunks import bin_topic, chunk_frame, decode_chunk
from descartes_fast.wire.schema import LogStreamMessage, LogStreamType

AGENT = uuid.UUID("00112233-4455-6677-8899-aabbccddeeff")


def bin_form(m: LogStreamMessage) -> bytes:
    return chunk_frame(bin_topic(m.agent_id), m.agent_id, m.stream_type, m.data, m.timestamp, m.sequence)


def test_the_bytes_are_those_docs_protocol_md_shows() -> None:
    frame = chunk_frame(bin_topic(AGENT), AGENT, LogStreamType.STDOUT, b"hi\n", 1_700_000_000 * 10**9 + 5, 0)
    assert frame == (b"logb.00112233-4455-6677-8899-aabbccddeeff\x00"
                     + bytes.fromhex("96 a9 6c6f675f6368756e6b c4 10 00112233445566778899aabbccddeeff"
                                     " a6 7374646f7574 c4 03 68690a cf 17979cfe362a0005 00"))


@pytest.mark.parametrize("vector", [v for v in load() if v["tag"] == "log_stream"], ids=lambda v: v["name"])
def test_a_chunk_in_the_bin_form_is_the_chunk_rmp_serde_wrote(vector) -> None:
    rust = codec.decode(bytes.fromhex(vector["compact_hex"]))
    assert rust == vector["message"]
    topic, payload = parse_pub_frame(bin_form(rust))
    assert topic == b"logb." + str(rust.agent_id).encode()
    assert decode_chunk(payload) == rust
    assert len(payload) < len(bytes.fromhex(vector["compact_hex"])) or len(rust.data) < 8  # (a byte is a byte)


@given(data=st.binary(max_size=70_000) | st.sampled_from([b"", b"x" * 255, b"x" * 256, b"x" * 65535, b"x" * 65536]),
       stream=st.sampled_from(list(LogStreamType)), timestamp=st.integers(0, (1 << 64) - 1),
       sequence=st.integers(0, (1 << 64) - 1))
def test_every_chunk_comes_back_as_it_went_and_as_the_rust_form_says(data, stream, timestamp, sequence) -> None:
    m = LogStreamMessage(AGENT, stream, data, timestamp, sequence)
    _, payload = parse_pub_frame(bin_form(m))
    assert decode_chunk(payload) == m
    assert msgpack.unpackb(payload)[3] == data  # a plain MessagePack reader reads it too
    if timestamp < (1 << 63):  # (the Rust form's time is [secs, nanos] of an i64 of nanoseconds)
        assert codec.decode(codec.encode(m)) == decode_chunk(payload)


GOOD = ["log_chunk", AGENT.bytes, "stdout", b"hi\n", 5, 0]


@pytest.mark.parametrize(("payload", "error", "text"), [
    (b"", TruncatedError, "log_chunk: the input ends inside the chunk"),
    (msgpack.packb(GOOD)[:-3], TruncatedError, "log_chunk: the input ends inside the chunk"),
    (b"\xc1", DecodeError, "log_chunk: not MessagePack"),
    (msgpack.packb(GOOD) + b"\x00", ArityError, "log_chunk: bytes after the chunk"),
    (msgpack.packb({"a": 1}), WrongTypeError, "log_chunk: expected array, got dict"),
    (msgpack.packb(GOOD[:5]), ArityError, "log_chunk: expected 6 elements, got 5"),
    (msgpack.packb(["log_stream", *GOOD[1:]]), InvalidValueError,
     "log_chunk.tag: expected 'log_chunk', got 'log_stream'"),
    (msgpack.packb([GOOD[0], b"x" * 15, *GOOD[2:]]), WrongTypeError, "log_chunk.agent_id: expected bin of 16 bytes"),
    (msgpack.packb([*GOOD[:2], "stdin", *GOOD[3:]]), InvalidValueError,
     "log_chunk.stream_type: expected 'stdout' or 'stderr', got 'stdin'"),
    (msgpack.packb([*GOOD[:3], "hi", *GOOD[4:]]), WrongTypeError, "log_chunk.data: expected bin, got str"),
    (msgpack.packb([*GOOD[:3], [104, 105], *GOOD[4:]]), WrongTypeError, "log_chunk.data: expected bin, got list"),
    (msgpack.packb([*GOOD[:4], -1, 0]), WrongTypeError,
     "log_chunk.timestamp: expected an unsigned 64-bit integer, got -1"),
    (msgpack.packb([*GOOD[:5], True]), WrongTypeError,
     "log_chunk.sequence: expected an unsigned 64-bit integer, got True"),
])
def test_anything_else_is_a_decode_error_that_names_what_is_wrong(payload, error, text) -> None:
    with pytest.raises(error) as got:
        decode_chunk(payload)
    assert str(got.value).startswith(text)
