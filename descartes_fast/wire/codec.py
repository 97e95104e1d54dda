"""Encode and decode Descartes messages (rmp-serde compatible MessagePack).

>>> from descartes_fast import codec
>>> from descartes_fast.wire.schema import HealthCheckRequest
>>> data = codec.encode(HealthCheckRequest("h-1"))
>>> codec.decode(data)
HealthCheckRequest(request_id='h-1')

``encode`` writes the compact form rmp-serde's ``to_vec`` writes (byte for byte);
``decode`` accepts everything rmp-serde's ``from_slice`` accepts (array or map form at
every level, UUIDs as bin or text, shortened arrays, ...) and raises a
:class:`~descartes_fast.wire.errors.DecodeError` subclass naming the message type and field
for everything it rejects. Both use the compiled twin when it is installed
(:data:`descartes_fast.IMPLEMENTATION`); :func:`get_implementation` gives either twin.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from descartes_fast import _impl
from descartes_fast.wire.constants import MAX_MESSAGE_SIZE, PROTOCOL_VERSION
from descartes_fast.wire.errors import MessageTooLargeError
from descartes_fast.wire.schema import Message

__all__ = ["encode", "decode", "validate_message_size", "get_implementation", "Implementation",
           "MAX_MESSAGE_SIZE", "PROTOCOL_VERSION"]


@dataclass(frozen=True)
class Implementation:
    """One twin of the codec and frame helpers, to hold side by side with the other."""

    name: str
    encode: Callable[[Message], bytes]
    decode: Callable[[Any], Message]
    split_request: Callable[..., Any]
    build_reply: Callable[..., Any]
    pub_frame: Callable[..., bytes]
    parse_pub_frame: Callable[..., Any]


def get_implementation(name: str) -> Implementation:
    """The ``"cython"`` or ``"python"`` twin (ImportError if the compiled one is not built)."""
    codec, frames = _impl.load("codec", name), _impl.load("frames", name)
    return Implementation(name, codec.encode, codec.decode, frames.split_request,
                          frames.build_reply, frames.pub_frame, frames.parse_pub_frame)


_active = _impl.load("codec", _impl.IMPLEMENTATION)

#: Encode a message object; raises EncodeError or MessageTooLargeError.
encode: Callable[[Message], bytes] = _active.encode
#: Decode bytes, bytearray, memoryview or zmq.Frame; raises a DecodeError subclass.
decode: Callable[[Any], Message] = _active.decode


def validate_message_size(size: int) -> None:
    """Raise :class:`MessageTooLargeError` if *size* exceeds :data:`MAX_MESSAGE_SIZE`."""
    if size > MAX_MESSAGE_SIZE:
        raise MessageTooLargeError(size, MAX_MESSAGE_SIZE)
