from __future__ import annotations

from collections.abc import Callable

import orjson
import pytest

from picker.request import errors
from picker.request.errors import RequestError, error_body


def test_error_body_shape() -> None:
    body = orjson.loads(error_body(400, "bad", "invalid_request_error", param="messages"))
    assert body == {
        "error": {
            "message": "bad",
            "type": "invalid_request_error",
            "param": "messages",
            "code": None,
        }
    }


def test_request_error_fields_and_body() -> None:
    err = RequestError(418, "teapot", "server_error", "im_a_teapot", "x")
    assert (err.status, err.message, err.type, err.code, err.param) == (
        418,
        "teapot",
        "server_error",
        "im_a_teapot",
        "x",
    )
    assert str(err) == "teapot"
    assert "418" in repr(err)
    assert orjson.loads(err.body())["error"] == {
        "message": "teapot",
        "type": "server_error",
        "param": "x",
        "code": "im_a_teapot",
    }
    with pytest.raises(RequestError):
        raise err


def test_model_not_found_matches_openai() -> None:
    err = errors.model_not_found("llama-9")
    assert err.status == 404
    e = orjson.loads(err.body())["error"]
    assert e["type"] == "invalid_request_error"
    assert e["code"] == "model_not_found"
    assert e["message"] == "The model `llama-9` does not exist or is not served by this gateway."


@pytest.mark.parametrize(
    ("make", "status", "type_", "code"),
    [
        (lambda: errors.invalid_request("m", "p"), 400, "invalid_request_error", None),
        (lambda: errors.too_large(64), 413, "invalid_request_error", "request_too_large"),
        (errors.overloaded, 429, "requests", "rate_limit_exceeded"),
        (
            lambda: errors.no_capacity("no ready endpoint"),
            503,
            "server_error",
            "service_unavailable",
        ),
        (errors.internal_error, 500, "server_error", "internal_error"),
    ],
)
def test_standard_errors(
    make: Callable[[], RequestError], status: int, type_: str, code: str | None
) -> None:
    err = make()
    assert err.status == status
    e = orjson.loads(err.body())["error"]
    assert (e["type"], e["code"]) == (type_, code)
    assert isinstance(e["message"], str) and e["message"]
    assert set(e) == {"message", "type", "param", "code"}


def test_messages_carry_details() -> None:
    assert "64" in errors.too_large(64).message
    assert "pool 'p'" in errors.no_capacity("no ready endpoint for pool 'p'").message
    assert errors.invalid_request("m", "messages").param == "messages"


def test_helpers_return_fresh_exceptions() -> None:
    assert errors.overloaded() is not errors.overloaded()
