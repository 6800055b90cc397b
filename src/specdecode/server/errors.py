"""Errors as the OpenAI API gives them: a status code and ``{"error": {message, type, param, code}}``.

Every answer the server gives for a bad request, a full queue or a shutdown is an
:class:`APIError`; handlers raise it and one exception handler turns it into JSON, so no bad
input ever reaches a client as a 500 or a traceback.
"""

from __future__ import annotations


class APIError(Exception):
    """An error answer: HTTP ``status`` and OpenAI's error object."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    """400: the request is malformed or asks for something this server cannot do."""
    return APIError(400, message, param=param, code=code)


def queue_full(limit: int) -> APIError:
    return APIError(
        429,
        f"the server's queue is full ({limit} requests waiting): retry later",
        type="rate_limit_error",
        code="queue_full",
    )


def shutting_down() -> APIError:
    return APIError(503, "the server is shutting down", type="server_error", code="shutting_down")


def internal(message: str) -> APIError:
    return APIError(500, message, type="server_error", code="internal_error")
