"""A chat request's messages and tools as vLLM 0.32 hands them to the chat template.

vLLM does not give the template the body's messages as they are. Before rendering it
rebuilds each message (``vllm/renderers/chat_utils.py``, ``parse_chat_messages``), and
these rules decide the rendered text, so picker applies the same ones:

* content: a string is one text part, ``null`` no part. Text parts are ``text``,
  ``input_text`` and ``output_text`` (their ``text``), ``refusal`` and ``thinking`` (the
  field of that name); a ``text`` or ``refusal`` part without its field is skipped.
  With the template's content format ``"string"`` the parts' texts are joined with
  ``"\\n"`` (no part: ``""``); with ``"openai"`` each becomes ``{"type": "text",
  "text": ...}`` plus the part's fields vLLM does not know (``cache_control`` ...), so a
  plain string becomes a one-part list;
* a system message's text part that starts with Claude Code's billing header loses its
  first line (the part goes if nothing is left);
* kept besides role and content: an assistant's ``tool_calls`` (an empty list is
  dropped) and ``reasoning`` (also as ``reasoning_content``); a tool message's
  ``tool_call_id``, its text parts always joined into one string; ``name`` and ``task``
  when strings; a developer message's ``tools``. Every other field is dropped;
* a tool call's ``arguments``: a JSON string is parsed; empty, invalid or not a JSON
  object gives ``{}``;
* ``tools``: each becomes ``{"type": "function", "function": {"name", "description",
  "parameters"[, "strict"][, "defer_loading"]}[, "defer_loading"]}`` in that key order,
  ``description`` and ``parameters`` ``null`` when absent (pydantic's dump);
* a template that never names the ``developer`` role gets developer messages as system
  messages, all system messages merged into the first (texts joined with a blank line).

Images, audio, video, embeddings and tool references are expanded by vLLM into tokens
picker cannot know: such requests raise ``Unsupported`` (no exact match), as does
anything vLLM would reject.
"""

from __future__ import annotations

import json
from typing import Any


class Unsupported(ValueError):
    """picker cannot know the exact prompt vLLM renders for this request."""


# Text-like part types and the field holding their text.
_TEXT_FIELD = {
    "text": "text",
    "input_text": "text",
    "output_text": "text",
    "refusal": "refusal",
    "thinking": "thinking",
}
_SKIP_WHEN_NONE = frozenset({"text", "refusal"})
# Fields of the content-part types vLLM declares; any other field of a text part is
# passed to the template (openai format).
_KNOWN_PART_FIELDS = frozenset(
    {
        "audio_embeds", "audio_url", "closed", "data", "file", "image_embeds", "image_pil",
        "image_url", "input_audio", "name", "prompt_cache_breakpoint", "refusal", "text",
        "thinking", "type", "uuid", "video_embeds", "video_url",
    }
)  # fmt: skip
_BILLING_HEADER = "x-anthropic-billing-header"


def conversation(messages: list[Any], openai_format: bool) -> list[dict[str, Any]]:
    """The messages as the template sees them (a new list; the input is not changed)."""
    out: list[dict[str, Any]] = []
    for msg in messages:
        if type(msg) is not dict or type(msg.get("role")) is not str:
            raise Unsupported("a message without a string role")
        out.append(_message(msg, openai_format))
    return out


def _message(msg: dict[str, Any], openai_format: bool) -> dict[str, Any]:
    role: str = msg["role"]
    parts = _parts(msg.get("content"), role == "system")
    content: Any = parts if openai_format else "\n".join(p["text"] for p in parts)
    out: dict[str, Any] = {"role": role, "content": content}
    if role == "assistant":
        calls = msg.get("tool_calls")
        if calls is not None:
            if type(calls) is not list:
                raise Unsupported("tool_calls must be a list")
            if calls:
                out["tool_calls"] = [_tool_call(c) for c in calls]
        reasoning = msg.get("reasoning")
        if reasoning is not None:
            out["reasoning"] = out["reasoning_content"] = reasoning
    elif role == "tool":
        if "tool_call_id" in msg:
            out["tool_call_id"] = msg["tool_call_id"]
        if openai_format:
            out["content"] = "\n".join(p["text"] for p in parts)
    name = msg.get("name")
    if type(name) is str:
        out["name"] = name
    task = msg.get("task")
    if type(task) is str:
        out["task"] = task
    if role == "developer":
        out["tools"] = msg.get("tools")
    return out


def _parts(content: Any, system: bool) -> list[dict[str, Any]]:
    """Text parts as ``{"type": "text", "text": str, **unknown fields}``."""
    if content is None:
        return []
    if type(content) is str:
        raw: list[Any] = [{"type": "text", "text": content}]
    elif type(content) is list:
        raw = content
    else:
        raise Unsupported("content must be a string, null or a list of parts")
    out: list[dict[str, Any]] = []
    for part in raw:
        if type(part) is str:
            part = {"type": "text", "text": part}
        elif type(part) is not dict:
            raise Unsupported("a content part must be an object")
        kind = part.get("type")
        field = _TEXT_FIELD.get(kind) if type(kind) is str else None
        if field is None or part.get("uuid") is not None:
            raise Unsupported(f"content part {kind!r}")  # media, tool references
        text = part.get(field)
        if text is None and kind in _SKIP_WHEN_NONE:
            continue
        if type(text) is not str:
            raise Unsupported("a text part without text")
        if system and kind == "text" and text.startswith(_BILLING_HEADER):
            text = text.partition("\n")[2]
            if not text:
                continue
        item = {"type": "text", "text": text}
        for k, v in part.items():
            if k not in _KNOWN_PART_FIELDS:
                item[k] = v
        out.append(item)
    return out


def _tool_call(call: Any) -> dict[str, Any]:
    fn = call.get("function") if type(call) is dict else None
    if type(fn) is not dict or call.get("type", "function") != "function":
        raise Unsupported("only function tool calls")
    args = fn.get("arguments")
    if not args:
        parsed: Any = {}
    elif type(args) is dict:
        parsed = args
    elif type(args) is str:
        parsed = _loads(args)
    else:
        parsed = {}
    if type(parsed) is not dict:
        parsed = {}
    return {**call, "function": {**fn, "arguments": parsed}}


def _loads(text: str) -> Any:
    """JSON exactly as vLLM reads it (Python's ``json``: orjson turns integers over 64
    bits into floats); invalid JSON gives ``{}``."""
    try:
        return json.loads(text)
    except ValueError:
        return {}


def tool_schemas(tools: Any) -> list[dict[str, Any]] | None:
    """The body's ``tools`` as vLLM dumps them for the template (None: no tools)."""
    if tools is None:
        return None
    if type(tools) is not list or not tools:
        raise Unsupported("tools must be a non-empty list")  # vLLM: 400 for []
    return [_tool(t) for t in tools]


def _tool(tool: Any) -> dict[str, Any]:
    fn = tool.get("function") if type(tool) is dict else None
    if type(fn) is not dict or tool.get("type", "function") != "function":
        raise Unsupported("only function tools")
    name, desc, params = fn.get("name"), fn.get("description"), fn.get("parameters")
    if type(name) is not str or not (desc is None or type(desc) is str):
        raise Unsupported("a tool needs a string name and description")
    if not (params is None or type(params) is dict):
        raise Unsupported("a tool's parameters must be an object")
    out_fn: dict[str, Any] = {"name": name, "description": desc, "parameters": params}
    strict = fn.get("strict")
    outer_defer = tool.get("defer_loading")
    defer = fn.get("defer_loading")
    if defer is None:
        defer = outer_defer
    for key, value in (("strict", strict), ("defer_loading", defer)):
        if value is not None:
            if type(value) is not bool:
                raise Unsupported(f"a tool's {key} must be a boolean")
            out_fn[key] = value
    out: dict[str, Any] = {"type": "function", "function": out_fn}
    if outer_defer is not None:
        out["defer_loading"] = outer_defer
    return out


def developer_as_system(conv: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For templates without a developer role: developer → system, systems merged."""
    if not any(m["role"] == "developer" for m in conv):
        return conv
    converted = [_as_system(m) if m["role"] == "developer" else m for m in conv]
    systems: list[str] = []
    rest: list[dict[str, Any]] = []
    merge = False
    for i, m in enumerate(converted):
        if m["role"] != "system":
            rest.append(m)
            continue
        merge = merge or i > 0 or bool(systems)
        text = m.get("content", "")
        if type(text) is list:
            text = "\n".join(p["text"] for p in text if type(p) is dict and "text" in p)
        if text:
            systems.append(text)
    if not merge:
        return converted
    return [{"role": "system", "content": "\n\n".join(systems)}, *rest]


def _as_system(m: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in m.items() if k != "tools"}
    out["role"] = "system"
    return out
