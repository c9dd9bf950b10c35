"""OpenAI-style error responses: ``{"error": {"message", "type", "param", "code"}}``.

``RequestError`` carries an HTTP status plus the four OpenAI fields; ``body()`` renders
them. The helpers below build the standard cases, with the ``type``/``code`` values the
OpenAI API itself uses where it has one (404 ``model_not_found``, 429
``rate_limit_exceeded``), so OpenAI client SDKs map them to their usual exception classes.
"""

from __future__ import annotations

import orjson

INVALID_REQUEST = "invalid_request_error"
RATE_LIMIT = "requests"  # what OpenAI puts in ``type`` for a requests-per-minute 429
SERVER_ERROR = "server_error"


def error_body(
    status: int, message: str, type: str, code: str | None = None, param: str | None = None
) -> bytes:
    """The JSON error body. ``status`` is not part of it (it is the HTTP status)."""
    del status  # kept in the signature so callers can pass a RequestError's fields as-is
    return orjson.dumps({"error": {"message": message, "type": type, "param": param, "code": code}})


class RequestError(Exception):
    """A request picker answers itself, with ``status`` and an OpenAI-style error body."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str,
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param

    def body(self) -> bytes:
        """The JSON error body for this error."""
        return error_body(self.status, self.message, self.type, self.code, self.param)

    def __repr__(self) -> str:
        return (
            f"RequestError({self.status}, {self.message!r}, {self.type!r}, "
            f"code={self.code!r}, param={self.param!r})"
        )


def invalid_request(
    message: str, param: str | None = None, code: str | None = None
) -> RequestError:
    """400: the body is not a request picker (or the server) can accept."""
    return RequestError(400, message, INVALID_REQUEST, code, param)


def model_not_found(model: str) -> RequestError:
    """404: no pool serves ``model``."""
    return RequestError(
        404,
        f"The model `{model}` does not exist or is not served by this gateway.",
        INVALID_REQUEST,
        "model_not_found",
        "model",
    )


def too_large(limit: int) -> RequestError:
    """413: the request body is over ``limit`` bytes."""
    return RequestError(
        413,
        f"Request body is larger than the gateway's limit of {limit} bytes.",
        INVALID_REQUEST,
        "request_too_large",
    )


def overloaded(message: str = "") -> RequestError:
    """429: a sheddable request was dropped because every endpoint is saturated."""
    return RequestError(
        429,
        message or "The model servers are saturated; retry this request later.",
        RATE_LIMIT,
        "rate_limit_exceeded",
    )


def no_capacity(reason: str = "no ready endpoint") -> RequestError:
    """503: nowhere to send the request (no pool, no ready or eligible endpoint)."""
    return RequestError(503, f"Service unavailable: {reason}.", SERVER_ERROR, "service_unavailable")


def internal_error() -> RequestError:
    """500: picker failed; the request was not routed."""
    return RequestError(
        500, "The gateway failed to route the request.", SERVER_ERROR, "internal_error"
    )
