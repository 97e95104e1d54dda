"""One exception hierarchy for everything that can be wrong with bytes or messages.

Both codec twins raise these very classes (never ``IndexError``, ``KeyError`` or
``OverflowError``), with the same type and the same text for the same input::

    ProtocolError (ValueError)
    ├── MessageTooLargeError      over MAX_MESSAGE_SIZE, refused before decoding
    ├── FrameError                a ZeroMQ multipart message of the wrong shape
    ├── EncodeError               a message object that cannot be put on the wire
    └── DecodeError               bytes that are not a valid message
        ├── TruncatedError        the input ends inside the message
        ├── MalformedError        not MessagePack at all (reserved byte 0xc1)
        ├── WrongTypeError        a value of the wrong MessagePack type for its field
        ├── InvalidValueError     right type, wrong value (bad UTF-8, UUID text, enum name)
        │   └── UnknownEnumValueError
        ├── OutOfRangeError       an integer outside u32 / u64 / i64, a time past the limit
        ├── ArityError            too few or too many struct elements, missing or duplicate field
        ├── UnknownMessageTypeError
        └── NestingTooDeepError   containers nested deeper than MAX_DEPTH

A :class:`DecodeError` (and an :class:`EncodeError`) names where the problem is:
``message_type`` (the class name, or ``None`` before the tag is known) and ``path``
(the field names from the message down, list indices as ``[3]``), so that
``str(err)`` reads ``SpawnRequest.config.environment: expected map, got int``.
"""

from __future__ import annotations

__all__ = [
    "ProtocolError", "MessageTooLargeError", "FrameError", "EncodeError", "DecodeError",
    "TruncatedError", "MalformedError", "WrongTypeError", "InvalidValueError",
    "UnknownEnumValueError", "OutOfRangeError", "ArityError", "UnknownMessageTypeError",
    "NestingTooDeepError",
]


class ProtocolError(ValueError):
    """Root of every protocol error raised by descartes_fast."""


class MessageTooLargeError(ProtocolError):
    """A message larger than ``MAX_MESSAGE_SIZE``; refused before any decoding."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"message of {size} bytes exceeds the limit of {limit} bytes")
        self.size = size
        self.limit = limit


class FrameError(ProtocolError):
    """A ZeroMQ multipart message or PUB frame that does not have the expected shape."""


class _Located(ProtocolError):
    """An error that knows the message type and field path it is about."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.message_type: str | None = None
        self.path: list[str] = []

    def add_context(self, part: str) -> None:
        """Prefix the path with an enclosing field name or ``[index]`` (used while unwinding)."""
        self.path.insert(0, part)

    def __str__(self) -> str:
        where = self.message_type or "message"
        for part in self.path:
            where += part if part.startswith("[") else "." + part
        return f"{where}: {self.reason}"


class EncodeError(_Located):
    """A message object that cannot be encoded: wrong Python type or out-of-range value."""


class DecodeError(_Located):
    """Bytes that do not decode to a valid message."""


class TruncatedError(DecodeError):
    """The input ends before the message does (this includes empty input)."""


class MalformedError(DecodeError):
    """Bytes that are not MessagePack."""


class WrongTypeError(DecodeError):
    """A value of the wrong MessagePack type for its field."""


class InvalidValueError(DecodeError):
    """A value of the right type but not an allowed value."""


class UnknownEnumValueError(InvalidValueError):
    """A string that is not one of the enum's wire names."""


class OutOfRangeError(DecodeError):
    """An integer outside the range of its field (u32, u64, i64, u8, time)."""


class ArityError(DecodeError):
    """A struct with too many or too few elements, or a missing or duplicate field."""


class UnknownMessageTypeError(DecodeError):
    """A type tag that names no message, or no tag at all."""


class NestingTooDeepError(DecodeError):
    """Containers nested deeper than the decoder allows."""
