"""What the clients raise: one hierarchy under :class:`ClientError`."""

from __future__ import annotations

from descartes_fast.wire.schema import Message

__all__ = ["ClientError", "NotConnectedError", "RequestTimeoutError", "ServerError", "UnexpectedReplyError"]


class ClientError(Exception):
    """Root of the client's errors."""


class NotConnectedError(ClientError):
    """No connection (``connect()`` not called, or ``disconnect()`` was)."""


class RequestTimeoutError(ClientError):
    """The server did not answer in time (the connection may be lost)."""


class ServerError(ClientError):
    """The server answered ``success = false`` or with ``error_response``; ``str()`` is its text."""

    def __init__(self, text: str, reply: Message | None = None) -> None:
        super().__init__(text)
        self.reply = reply


class UnexpectedReplyError(ClientError):
    """A reply of another type than the request calls for."""
