"""Request body → ``InferenceRequest``: the model, the stream flag and the prompt text.

One ``orjson.loads`` per request, then a walk over only the fields that matter. Anything
malformed raises ``RequestError`` (400, or 413 over the size limit); no other exception
escapes for any ``bytes`` input.

Paths: the query string is dropped, and the kind is chosen by the path's *suffix*, so
``/v1/chat/completions``, ``/chat/completions`` and Azure-style
``/openai/deployments/x/chat/completions`` are all "chat". Any other path is "other" (the
body still needs a ``model``; the prompt is "").

Prompt text (only used for prefix affinity, never sent anywhere) is built so that a request
that extends an earlier one renders to a string that extends the earlier rendering:

* chat: ``<|tools|>\\n{tools JSON, sorted keys}\\n`` (if any), then per message
  ``<|{role}|>\\n{content}{tool_calls JSON}\\n``; text parts are concatenated, other parts
  become ``<|{type}:{part JSON, or a hash of it when long}|>``.
* responses: tools as above, then ``instructions`` as a system message, then ``input`` (a
  string is one user message; message items render like chat; other items such as
  ``function_call_output`` render as ``<|{type}|>\\n{item JSON}\\n``).
* completions ``prompt`` / embeddings ``input``: a string as is; a list of strings joined
  with "\\n"; token IDs as decimal numbers each followed by one space (``"1 2 3 "``), so
  equal token prompts give equal text and a shared token prefix gives a shared text prefix
  (the trailing space keeps ``[1, 2]`` from being a text prefix of ``[1, 23]``); a list of
  token lists joined with "\\n".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import xxhash

from picker.request import errors
from picker.request.errors import RequestError
from picker.request.types import ChatInput, InferenceRequest

DEFAULT_MAX_BODY_BYTES = 16 * 2**20

_EXACT_KINDS: dict[str, str] = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completions",
    "/v1/embeddings": "embeddings",
    "/v1/responses": "responses",
}
# Order matters: "/chat/completions" must be tried before "/completions".
_SUFFIX_KINDS: tuple[tuple[str, str], ...] = (
    ("/chat/completions", "chat"),
    ("/completions", "completions"),
    ("/embeddings", "embeddings"),
    ("/responses", "responses"),
)
_TEXT_PARTS = frozenset({"text", "input_text", "output_text"})
_INLINE_LIMIT = 256  # longer non-text parts (data: URLs, base64 audio) render as a hash
_SORTED = orjson.OPT_SORT_KEYS
_INT_CHARS = b"0123456789,-"
_COMMAS_TO_SPACES = bytes.maketrans(b",]", b"  ")
_ROLE_HEADS = {r: f"<|{r}|>\n" for r in ("system", "developer", "user", "assistant", "tool")}

_PROMPT_SHAPE = "a string, a list of strings, a list of token IDs or a list of token-ID lists"


def endpoint_kind(path: str) -> str:
    """The request kind for a path *without* query string: "chat", "completions", ..."""
    kind = _EXACT_KINDS.get(path)
    if kind is not None:
        return kind
    path = path.rstrip("/")
    for suffix, kind in _SUFFIX_KINDS:
        if path.endswith(suffix):
            return kind
    return "other"


def parse_request(
    path: str, body: bytes, *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
) -> InferenceRequest:
    """Parses one request body; raises ``RequestError`` (400/413) when it is unusable."""
    if len(body) > max_body_bytes:
        raise errors.too_large(max_body_bytes)
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise errors.invalid_request(f"The request body is not valid JSON: {e}") from None
    if type(data) is not dict:
        raise errors.invalid_request("The request body must be a JSON object.")
    model = data.get("model")
    if type(model) is not str or not model:
        raise errors.invalid_request("`model` is required and must be a non-empty string.", "model")
    stream = data.get("stream", False)
    if type(stream) is not bool and stream is not None:
        raise errors.invalid_request("`stream` must be a boolean.", "stream")
    path = path.partition("?")[0]
    kind = endpoint_kind(path)
    render = _RENDERERS.get(kind)
    prompt = render(data) if render is not None else ""
    req = InferenceRequest(model=model, prompt=prompt, kind=kind, path=path)
    if kind == "completions":
        raw = data.get("prompt")
        if type(raw) is list:
            first = raw[0]  # the renderer checked the shape: ints, strs or int lists
            if type(first) is int:
                req.token_ids = raw
            elif len(raw) > 1:
                req.batch = True
            elif type(first) is list:
                req.token_ids = first
    special = data.get("add_special_tokens")
    if type(special) is bool:
        req.add_special_tokens = special
    salt = data.get("cache_salt")
    if type(salt) is str and salt:
        req.cache_salt = salt
    if kind == "chat":
        req.chat = _chat_input(data)
    return req


def _chat_input(data: dict[str, Any]) -> ChatInput | None:
    """The chat template's inputs, by reference (nothing rendered here). None when a
    field has a type vLLM would reject, so that no exact prompt is claimed for it."""
    gen = data.get("add_generation_prompt")
    cont = data.get("continue_final_message")
    kwargs = data.get("chat_template_kwargs")
    effort = data.get("reasoning_effort")
    if not (
        (gen is None or type(gen) is bool)
        and (cont is None or type(cont) is bool)
        and (kwargs is None or type(kwargs) is dict)
        and (effort is None or type(effort) is str)
    ):
        return None
    return ChatInput(
        data["messages"],  # a non-empty list: the renderer checked it
        data.get("tools"),
        gen is not False,  # vLLM's defaults: True ...
        cont is True,  # ... and False
        kwargs,
        data.get("documents"),
        effort,
        data.get("chat_template") is not None,
    )


# -- renderers --------------------------------------------------------------------------


def _bad(message: str, param: str) -> RequestError:
    return errors.invalid_request(message, param)


def _dump_bytes(value: Any, param: str) -> bytes:
    """Canonical JSON (sorted keys) of a parsed value."""
    try:
        return orjson.dumps(value, option=_SORTED)
    except orjson.JSONEncodeError:  # nesting over orjson's dump limit (254)
        raise _bad(f"`{param}` is nested too deeply.", param) from None


def _dump(value: Any, param: str) -> str:
    return _dump_bytes(value, param).decode()


def _tokens(ids: Any, param: str) -> str:
    """Token IDs as ``"1 2 3 "``; raises unless ``ids`` is a non-empty list of ints."""
    if type(ids) is list and ids:
        # orjson renders a list of ints as only digits, "-", "," and the outer brackets;
        # any other element (bool, float, str, null, list, object) adds another character.
        raw = _dump_bytes(ids, param)
        if raw.translate(None, _INT_CHARS) == b"[]":
            return raw[1:].translate(_COMMAS_TO_SPACES).decode()
    raise _bad(f"`{param}` must be {_PROMPT_SHAPE}.", param)


def _render_prompt(value: Any, param: str) -> str:
    """A completions ``prompt`` or embeddings ``input``."""
    if type(value) is str:
        return value
    if type(value) is list and value:
        first = type(value[0])
        if first is str:
            if set(map(type, value)) == {str}:
                return "\n".join(value)
        elif first is int:
            return _tokens(value, param)
        elif first is list:
            return "\n".join([_tokens(ids, param) for ids in value])
    raise _bad(f"`{param}` must be {_PROMPT_SHAPE}.", param)


def _render_parts(parts: list[Any], where: str, out: list[str]) -> None:
    """Content parts: text as is, anything else as a stable placeholder."""
    for j, part in enumerate(parts):
        kind = part.get("type") if type(part) is dict else None
        if type(kind) is not str:
            p = f"{where}[{j}]"
            raise _bad(f"`{p}` must be an object with a string `type`.", p)
        if kind in _TEXT_PARTS:
            text = part.get("text")
            if type(text) is not str:
                p = f"{where}[{j}].text"
                raise _bad(f"`{p}` must be a string.", p)
            out.append(text)
        else:
            raw = _dump_bytes(part, f"{where}[{j}]")
            ref = xxhash.xxh3_128_hexdigest(raw) if len(raw) > _INLINE_LIMIT else raw.decode()
            out.append(f"<|{kind}:{ref}|>")


def _render_message(msg: Any, where: str, i: int, out: list[str]) -> None:
    """Message ``where[i]`` (a chat message or a Responses message item) onto ``out``.

    Parameter names for errors are only formatted on the error path (hot loop).
    """
    role = msg.get("role") if type(msg) is dict else None
    if type(role) is not str:
        p = f"{where}[{i}]"
        raise _bad(f"`{p}` must be an object with a string `role`.", p)
    head = _ROLE_HEADS.get(role)
    out.append(head if head is not None else f"<|{role}|>\n")
    content = msg.get("content")
    if type(content) is str:
        out.append(content)
    elif type(content) is list:
        _render_parts(content, f"{where}[{i}].content", out)
    elif content is not None:
        p = f"{where}[{i}].content"
        raise _bad(f"`{p}` must be a string, null or a list of content parts.", p)
    tool_calls = msg.get("tool_calls")
    if tool_calls:
        out.append(_dump(tool_calls, f"{where}[{i}].tool_calls"))
    out.append("\n")


def _render_tools(data: dict[str, Any], out: list[str]) -> None:
    tools = data.get("tools")
    if tools is None:
        return
    if type(tools) is not list:
        raise _bad("`tools` must be a list.", "tools")
    if tools:
        out.append(f"<|tools|>\n{_dump(tools, 'tools')}\n")


def _render_chat(data: dict[str, Any]) -> str:
    messages = data.get("messages")
    if type(messages) is not list or not messages:
        raise _bad("`messages` must be a non-empty list of message objects.", "messages")
    out: list[str] = []
    _render_tools(data, out)
    heads = _ROLE_HEADS
    for i, msg in enumerate(messages):
        # Fast path for the common message: a well-known role with plain string content.
        if type(msg) is dict:
            role = msg.get("role")
            content = msg.get("content")
            if (
                type(role) is str
                and type(content) is str
                and (head := heads.get(role)) is not None
                and "tool_calls" not in msg
            ):
                out += (head, content, "\n")
                continue
        _render_message(msg, "messages", i, out)
    return "".join(out)


def _render_completions(data: dict[str, Any]) -> str:
    prompt = data.get("prompt")
    return "" if prompt is None else _render_prompt(prompt, "prompt")


def _render_embeddings(data: dict[str, Any]) -> str:
    value = data.get("input")
    if value is None:
        if "messages" in data:  # vLLM's chat-style embeddings request
            return _render_chat(data)
        raise _bad("`input` is required.", "input")
    return _render_prompt(value, "input")


def _render_responses(data: dict[str, Any]) -> str:
    out: list[str] = []
    _render_tools(data, out)
    instructions = data.get("instructions")
    if type(instructions) is str:
        out.append(f"<|system|>\n{instructions}\n")
    elif instructions is not None:
        raise _bad("`instructions` must be a string.", "instructions")
    value = data.get("input")
    if type(value) is str:
        out.append(f"<|user|>\n{value}\n")
    elif type(value) is list:
        for i, item in enumerate(value):
            if type(item) is dict and "role" in item:
                _render_message(item, "input", i, out)
                continue
            kind = item.get("type") if type(item) is dict else None
            if type(kind) is not str:
                p = f"input[{i}]"
                raise _bad(f"`{p}` must be an object with a string `role` or `type`.", p)
            out.append(f"<|{kind}|>\n{_dump(item, f'input[{i}]')}\n")
    elif value is not None:
        raise _bad("`input` must be a string or a list of input items.", "input")
    return "".join(out)


_RENDERERS: dict[str, Callable[[dict[str, Any]], str]] = {
    "chat": _render_chat,
    "completions": _render_completions,
    "embeddings": _render_embeddings,
    "responses": _render_responses,
}
