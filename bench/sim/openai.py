"""The OpenAI wire format of a simulated pod: request fields, error bodies, pre-built
SSE pieces of the generated text and the ``usage`` object."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from aiohttp import web

from bench.sim.state import SimRequest
from bench.sim.tokenize import tokenize

DEFAULT_MAX_TOKENS = 16
_TEXT = "the quick brown fox jumps over a lazy dog while seven simulated GPUs serve tokens"
OUTPUT_WORDS = tuple(" " + w for w in _TEXT.split(" "))


def error(status: int, message: str, type_: str, param: str | None = None) -> web.Response:
    body = {"error": {"message": message, "type": type_, "param": param, "code": status}}
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


def bad(message: str, param: str | None = None) -> web.Response:
    return error(400, message, "BadRequestError", param)


class Invalid(Exception):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def parse_prompts(value: Any) -> list[list[int]]:
    """The token-id prompts of a completions ``prompt`` field."""
    if isinstance(value, str):
        return [tokenize(value)]
    if isinstance(value, list) and value:
        if all(type(t) is int for t in value):
            return [list(value)]
        out: list[list[int]] = []
        for item in value:
            if isinstance(item, str):
                out.append(tokenize(item))
            elif isinstance(item, list) and item and all(type(t) is int for t in item):
                out.append(list(item))
            else:
                raise Invalid("each prompt must be a string or a list of token ids", "prompt")
        return out
    raise Invalid("prompt must be a string, a list of token ids or a list of those", "prompt")


def parse_max_tokens(body: dict[str, Any], chat: bool) -> int:
    value = body.get("max_completion_tokens") if chat else None
    if value is None:
        value = body.get("max_tokens")
    if value is None:
        return DEFAULT_MAX_TOKENS
    if type(value) is not int or value < 1:
        raise Invalid("max_tokens must be a positive integer", "max_tokens")
    return value


class _Chunks:
    """Pre-built SSE byte pieces for one response kind (completion or chat)."""

    def __init__(self, chat: bool) -> None:
        words = [orjson.dumps(w)[1:-1] for w in OUTPUT_WORDS]
        if chat:
            mid = [b',"delta":{"content":"' + w + b'"},"logprobs":null,' for w in words]
        else:
            mid = [b',"text":"' + w + b'","logprobs":null,' for w in words]
        self.token = [m + b'"finish_reason":null}]}\n\n' for m in mid]
        self.last = [m + b'"finish_reason":"length","stop_reason":null}]}\n\n' for m in mid]
        self.n = len(words)


CHUNKS = {False: _Chunks(False), True: _Chunks(True)}


def usage(reqs: Sequence[SimRequest]) -> dict[str, Any]:
    prompt = sum(len(r.prompt) for r in reqs)
    completion = sum(r.num_output for r in reqs)
    cached = sum(max(r.cached_tokens, 0) for r in reqs)
    return {
        "prompt_tokens": prompt,
        "total_tokens": prompt + completion,
        "completion_tokens": completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }
