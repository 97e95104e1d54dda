"""Log chunks in the form for descartes_fast clients: the bytes as MessagePack ``bin`` (docs/protocol.md §5.9).

The Rust form (``log_stream`` on the agent's UUID, what rmp-serde reads) writes every byte as a
MessagePack integer: up to two bytes per byte, and a decoder that builds the bytes back one by
one. Our own clients subscribe instead to ``logb.<uuid>``, where the same chunk is::

    <topic> 00 96 a9"log_chunk" c4 10 <16-byte agent id> a6"stdout" <bin: the data> <timestamp ns> <sequence>

(a 6-element array; ``bin`` of the smallest size class; the timestamp in nanoseconds since the
epoch and the sequence as MessagePack unsigned integers). The server writes each form only
while someone subscribes to its topic, and the frame is built around the data in one copy.
"""

from __future__ import annotations

import uuid
from typing import Any, Final

import msgpack

from descartes_fast.wire.errors import ArityError, InvalidValueError, MalformedError, TruncatedError, WrongTypeError
from descartes_fast.wire.schema import LogStreamMessage, LogStreamType

__all__ = ["BIN_PREFIX", "TAG", "bin_topic", "chunk_frame", "decode_chunk"]

#: the topic prefix of the bin form (``logb.`` + the agent's UUID)
BIN_PREFIX: Final = b"logb."
#: the first element of the bin form's array
TAG: Final = "log_chunk"

_HEAD: Final = b"\x96" + msgpack.packb(TAG) + b"\xc4\x10"
_STREAMS: Final = {s: msgpack.packb(s.value) for s in LogStreamType}
_BY_NAME: Final = {s.value: s for s in LogStreamType}
_FIELDS: Final = ("tag", "agent_id", "stream_type", "data", "timestamp", "sequence")
_U64: Final = 1 << 64


def bin_topic(agent_id: uuid.UUID) -> bytes:
    """The bin form's topic of an agent's log chunks."""
    return BIN_PREFIX + str(agent_id).encode()


def chunk_frame(topic: bytes, agent_id: uuid.UUID, stream: LogStreamType, data: bytes, timestamp: int,
                sequence: int) -> bytes:
    """The whole PUB frame (*topic*, NUL, the bin form) of one chunk."""
    n = len(data)
    size = (b"\xc4" + n.to_bytes(1, "big") if n < 0x100 else b"\xc5" + n.to_bytes(2, "big") if n < 0x10000
            else b"\xc6" + n.to_bytes(4, "big"))
    return b"".join((topic, b"\x00", _HEAD, agent_id.bytes, _STREAMS[stream], size, data,
                     msgpack.packb(timestamp), msgpack.packb(sequence)))


def decode_chunk(payload: Any) -> LogStreamMessage:
    """A chunk from the bin form (the frame's part after the NUL); a :class:`DecodeError` that
    names the element at fault for anything else."""
    try:
        value = msgpack.unpackb(payload, raw=False, strict_map_key=True)
    except msgpack.ExtraData:
        raise _located(ArityError("bytes after the chunk"), None) from None
    except (ValueError, msgpack.UnpackException) as exc:
        if isinstance(exc, msgpack.OutOfData) or "incomplete input" in str(exc):  # (what msgpack.unpackb says)
            raise _located(TruncatedError("the input ends inside the chunk"), None) from None
        raise _located(MalformedError(f"not MessagePack ({exc})"), None) from None
    if not isinstance(value, list):
        raise _located(WrongTypeError(f"expected array, got {type(value).__name__}"), None)
    if len(value) != len(_FIELDS):
        raise _located(ArityError(f"expected {len(_FIELDS)} elements, got {len(value)}"), None)
    tag, agent_id, stream, data, timestamp, sequence = value
    if tag != TAG:
        raise _located(InvalidValueError(f"expected {TAG!r}, got {tag!r}"), "tag")
    if not isinstance(agent_id, bytes) or len(agent_id) != 16:
        raise _located(WrongTypeError("expected bin of 16 bytes"), "agent_id")
    if stream not in _BY_NAME:
        raise _located(InvalidValueError(f"expected 'stdout' or 'stderr', got {stream!r}"), "stream_type")
    if not isinstance(data, bytes):
        raise _located(WrongTypeError(f"expected bin, got {type(data).__name__}"), "data")
    for name, number in (("timestamp", timestamp), ("sequence", sequence)):
        if type(number) is not int or not 0 <= number < _U64:
            raise _located(WrongTypeError(f"expected an unsigned 64-bit integer, got {number!r}"), name)
    return LogStreamMessage(uuid.UUID(bytes=agent_id), _BY_NAME[stream], data, timestamp, sequence)


def _located(error: Any, field: str | None) -> Any:
    error.message_type = TAG
    if field is not None:
        error.add_context(field)
    return error
