"""How long does ``parse_request`` take per body? Prints µs per parse, next to a bare
``orjson.loads`` of the same bytes (the floor). Run with

    python -m bench.micro.parse [--seconds 1]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import orjson

from picker.request.parse import parse_request

_WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "twice"]


def _text(chars: int, seed: int = 0) -> str:
    out: list[str] = []
    n = 0
    i = seed
    while n < chars:
        w = _WORDS[i % len(_WORDS)]
        out.append(w)
        n += len(w) + 1
        i += 7
    return " ".join(out)[:chars]


def chat_body() -> bytes:
    """~4 KB: a tool definition, a system prompt and an 8-turn conversation."""
    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather for a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
                "required": ["city"],
            },
        },
    }
    messages: list[dict[str, Any]] = [{"role": "system", "content": _text(600)}]
    for turn in range(8):
        messages.append({"role": "user", "content": _text(180, turn)})
        messages.append({"role": "assistant", "content": _text(180, turn + 100)})
    messages.append(
        {"role": "user", "content": [{"type": "text", "text": _text(120, 9)}]},
    )
    return orjson.dumps({"model": "llama", "stream": True, "tools": [tool], "messages": messages})


def completions_body() -> bytes:
    """~100 KB string prompt."""
    return orjson.dumps({"model": "llama", "prompt": _text(100_000), "max_tokens": 16})


def tokens_body() -> bytes:
    """~100 KB of token IDs (about 16k ints)."""
    ids = [(i * 7919) % 128_000 for i in range(16_000)]
    return orjson.dumps({"model": "llama", "prompt": ids, "max_tokens": 16})


def per_call_us(fn: Callable[[], object], seconds: float) -> float:
    """Best-of-5 batches, each about ``seconds / 5`` long; µs per call."""
    n = 1
    while True:  # calibrate the batch size
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        if time.perf_counter() - t0 > seconds / 50:
            break
        n *= 2
    n = max(1, int(n * 10))
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t0) / n)
    return best * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=1.0)
    args = ap.parse_args()
    cases = [
        ("chat", "/v1/chat/completions", chat_body()),
        ("completions (string)", "/v1/completions", completions_body()),
        ("completions (token IDs)", "/v1/completions", tokens_body()),
    ]
    print(f"{'body':<26}{'bytes':>9}{'parse_request µs':>19}{'orjson.loads µs':>18}")
    for name, path, body in cases:
        req = parse_request(path, body)
        assert req.model == "llama" and req.prompt
        full = per_call_us(partial(parse_request, path, body), args.seconds)
        floor = per_call_us(partial(orjson.loads, body), args.seconds)
        print(f"{name:<26}{len(body):>9}{full:>19.2f}{floor:>18.2f}")


if __name__ == "__main__":
    main()
