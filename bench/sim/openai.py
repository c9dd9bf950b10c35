"""The OpenAI wire format of a simulated pod: request fields, error bodies, pre-built
SSE pieces of the generated text and the ``usage`` object."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
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


async def complete_response(
    reqs: Sequence[SimRequest], event: asyncio.Event, rid: str, model: str, chat: bool
) -> web.Response:
    while not all(r.finished for r in reqs):
        await event.wait()
        event.clear()
    words = OUTPUT_WORDS
    nw = len(words)
    choices: list[dict[str, Any]] = []
    for i, r in enumerate(reqs):
        text = "".join(words[k % nw] for k in range(r.num_output))
        reason = r.finish_reason if r.finish_reason != "abort" else "abort"
        if chat:
            choices.append(
                {
                    "index": i,
                    "message": {"role": "assistant", "content": text, "tool_calls": []},
                    "logprobs": None,
                    "finish_reason": reason,
                    "stop_reason": None,
                }
            )
        else:
            choices.append(
                {
                    "index": i,
                    "text": text,
                    "logprobs": None,
                    "finish_reason": reason,
                    "stop_reason": None,
                }
            )
    out = {
        "id": rid,
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": usage(reqs),
    }
    return web.Response(body=orjson.dumps(out), content_type="application/json")


async def stream_response(
    request: web.Request,
    reqs: Sequence[SimRequest],
    event: asyncio.Event,
    rid: str,
    model: str,
    chat: bool,
    include_usage: bool,
) -> web.StreamResponse:
    resp = web.StreamResponse(
        headers={"content-type": "text/event-stream", "cache-control": "no-cache"}
    )
    await resp.prepare(request)
    kind = b"chat.completion.chunk" if chat else b"text_completion"
    head = (
        b'data: {"id":"'
        + rid.encode()
        + b'","object":"'
        + kind
        + b'","created":'
        + str(int(time.time())).encode()
        + b',"model":'
        + orjson.dumps(model)
    )
    prefix = head + b',"choices":[{"index":'
    idx = [str(i).encode() for i in range(len(reqs))]
    table = CHUNKS[chat]
    token, last, nw = table.token, table.last, table.n
    write: Callable[[bytes], Awaitable[None]] = resp.write
    try:
        if chat:
            await write(
                b"".join(
                    prefix + i + b',"delta":{"role":"assistant","content":""},'
                    b'"logprobs":null,"finish_reason":null}]}\n\n'
                    for i in idx
                )
            )
        sent = [0] * len(reqs)
        while True:
            await event.wait()
            event.clear()
            parts: list[bytes] = []
            done = True
            for j, r in enumerate(reqs):
                n = r.num_output
                k0 = sent[j]
                if n > k0:
                    pre = prefix + idx[j]
                    end = n - 1 if r.finished and r.finish_reason == "length" else n
                    parts.extend(pre + token[k % nw] for k in range(k0, end))
                    if end < n:
                        parts.append(pre + last[end % nw])
                    sent[j] = n
                if not r.finished:
                    done = False
            if done:
                if include_usage:
                    parts.append(
                        head + b',"choices":[],"usage":' + orjson.dumps(usage(reqs)) + b"}\n\n"
                    )
                parts.append(b"data: [DONE]\n\n")
            if parts:
                await write(b"".join(parts))
            if done:
                break
        await resp.write_eof()
    except ConnectionResetError:
        pass  # the client went away; the caller aborts what is unfinished
    return resp
