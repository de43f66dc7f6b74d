"""The errors a request can meet, each mapped to one HTTP status with a one-line reason, so a
client learns what to fix and no error reaches the server's loop as a traceback."""

from __future__ import annotations


class RequestError(Exception):
    """A request the server refuses; `status` is the HTTP code it answers with."""

    status = 400


class BadRequest(RequestError):
    status = 400


class Unauthorized(RequestError):
    status = 401


class TooLarge(RequestError):
    status = 413


class Overloaded(RequestError):
    """The queue is full or the server is stopping: the client should retry later."""

    status = 503


class InferenceFailed(RequestError):
    status = 500
