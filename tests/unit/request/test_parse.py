from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from picker.request.errors import RequestError
from picker.request.parse import endpoint_kind, parse_request
from picker.request.types import InferenceRequest

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
EMBEDDINGS = "/v1/embeddings"
RESPONSES = "/v1/responses"
PATHS = [CHAT, COMPLETIONS, EMBEDDINGS, RESPONSES, "/v1/score", "/tokenize", "/"]


def parse(path: str, obj: Any, **kw: Any) -> InferenceRequest:
    return parse_request(path, orjson.dumps(obj), **kw)


def error(path: str, body: bytes | Any, **kw: Any) -> RequestError:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    with pytest.raises(RequestError) as info:
        parse_request(path, raw, **kw)
    return info.value


# -- paths ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("/v1/chat/completions", "chat"),
        ("/chat/completions", "chat"),
        ("/openai/deployments/gpt/chat/completions", "chat"),
        ("/v1/chat/completions/", "chat"),
        ("/v1/completions", "completions"),
        ("/completions", "completions"),
        ("/v1/embeddings", "embeddings"),
        ("/v1/responses", "responses"),
        ("/v1/responses/resp_1/cancel", "other"),
        ("/v1/models", "other"),
        ("/v1/score", "other"),
        ("/", "other"),
        ("", "other"),
    ],
)
def test_endpoint_kind(path: str, kind: str) -> None:
    assert endpoint_kind(path) == kind


def test_query_string_is_dropped() -> None:
    req = parse("/v1/completions?api-version=1&x=/chat/completions", {"model": "m", "prompt": "p"})
    assert req.path == "/v1/completions"
    assert req.kind == "completions"
    assert req.prompt == "p"


def test_other_path_needs_only_model() -> None:
    req = parse("/v1/rerank", {"model": "m", "query": "q", "documents": ["a"]})
    assert (req.model, req.kind, req.prompt, req.path) == ("m", "other", "", "/v1/rerank")
    assert error("/v1/rerank", {"query": "q"}).param == "model"


# -- completions / embeddings -------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "text"),
    [
        ("hello", "hello"),
        ("", ""),
        (["a", "b"], "a\nb"),
        ([1, 2, 3], "1 2 3 "),
        ([[1, 2], [3]], "1 2 \n3 "),
        (None, ""),
    ],
)
def test_completions_prompt_shapes(prompt: Any, text: str) -> None:
    req = parse(COMPLETIONS, {"model": "m", "prompt": prompt, "stream": True})
    assert (req.model, req.prompt, req.kind) == ("m", text, "completions")


@pytest.mark.parametrize(
    ("prompt", "ids", "batch"),
    [
        ("hi", None, False),
        (["a"], None, False),
        (["a", "b"], None, True),
        ([1, 2, 3], [1, 2, 3], False),
        ([[4, 5]], [4, 5], False),
        ([[1], [2]], None, True),
    ],
)
def test_completions_token_ids_and_batches(prompt: Any, ids: Any, batch: bool) -> None:
    req = parse(COMPLETIONS, {"model": "m", "prompt": prompt})
    assert (req.token_ids, req.batch) == (ids, batch)


def test_cache_salt_and_special_tokens_are_kept() -> None:
    body = {"model": "m", "prompt": "x", "cache_salt": "s", "add_special_tokens": False}
    req = parse(COMPLETIONS, body)
    assert (req.cache_salt, req.add_special_tokens) == ("s", False)
    req = parse(COMPLETIONS, {"model": "m", "prompt": "x", "cache_salt": 3})
    assert (req.cache_salt, req.add_special_tokens) == (None, None)


def test_completions_missing_prompt_is_empty() -> None:
    assert parse(COMPLETIONS, {"model": "m"}).prompt == ""


@pytest.mark.parametrize(
    "prompt",
    [
        5,
        1.5,
        True,
        {},
        [],
        ["a", 1],
        [1, "a"],
        [1, True],
        [1, 2.0],
        [[1], "a"],
        [[1], []],
        [[1, [2]]],
        [None],
    ],
)
def test_completions_bad_prompt(prompt: Any) -> None:
    err = error(COMPLETIONS, {"model": "m", "prompt": prompt})
    assert (err.status, err.param) == (400, "prompt")


def test_token_prompt_prefix_is_text_prefix_and_exact() -> None:
    short = parse(COMPLETIONS, {"model": "m", "prompt": [1, 2]}).prompt
    longer = parse(COMPLETIONS, {"model": "m", "prompt": [1, 2, 3]}).prompt
    other = parse(COMPLETIONS, {"model": "m", "prompt": [1, 23]}).prompt
    assert longer.startswith(short)
    assert not other.startswith(short)


@pytest.mark.parametrize(
    ("value", "text"),
    [("x", "x"), (["x", "y"], "x\ny"), ([7, 8], "7 8 "), ([[7], [8, 9]], "7 \n8 9 ")],
)
def test_embeddings_input(value: Any, text: str) -> None:
    req = parse(EMBEDDINGS, {"model": "e", "input": value})
    assert (req.kind, req.prompt) == ("embeddings", text)


def test_embeddings_errors_and_chat_style() -> None:
    assert error(EMBEDDINGS, {"model": "e"}).param == "input"
    assert error(EMBEDDINGS, {"model": "e", "input": {"a": 1}}).param == "input"
    req = parse(EMBEDDINGS, {"model": "e", "messages": [{"role": "user", "content": "x"}]})
    assert req.prompt == "<|user|>\nx\n"


# -- chat -------------------------------------------------------------------------------


def test_chat_rendering() -> None:
    req = parse(
        CHAT,
        {
            "model": "m",
            "messages": [
                {"role": "system", "content": "sys"},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                },
                {"role": "assistant", "content": None},
            ],
        },
    )
    assert req.kind == "chat"
    assert req.prompt == "<|system|>\nsys\n<|user|>\nab\n<|assistant|>\n\n"


def test_chat_tools_first_and_canonical() -> None:
    msgs = [{"role": "user", "content": "hi"}]
    a = parse(CHAT, {"model": "m", "messages": msgs, "tools": [{"b": 1, "a": {"d": 2, "c": 3}}]})
    b = parse(CHAT, {"model": "m", "tools": [{"a": {"c": 3, "d": 2}, "b": 1}], "messages": msgs})
    assert a.prompt == b.prompt
    assert a.prompt == '<|tools|>\n[{"a":{"c":3,"d":2},"b":1}]\n<|user|>\nhi\n'
    assert parse(CHAT, {"model": "m", "messages": msgs, "tools": []}).prompt == "<|user|>\nhi\n"


def test_chat_tool_calls_and_media_parts() -> None:
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    url = "data:image/png;base64," + "A" * 10_000
    req = parse(
        CHAT,
        {
            "model": "m",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": "http://x/a.png"}},
                        {"type": "image_url", "image_url": {"url": url}},
                        {"type": "input_audio", "input_audio": {"data": "QQ==", "format": "wav"}},
                    ],
                },
                {"role": "assistant", "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "c", "content": "42"},
            ],
        },
    )
    p = req.prompt
    assert "http://x/a.png" in p
    assert url not in p and len(p) < 1000  # long payloads render as a hash
    assert "<|input_audio:" in p
    assert '"name":"f"' in p
    assert p.endswith("<|tool|>\n42\n")
    other = parse(
        CHAT,
        {
            "model": "m",
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": url + "B"}}],
                }
            ],
        },
    )
    same = parse(
        CHAT,
        {
            "model": "m",
            "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}
            ],
        },
    )
    assert other.prompt != same.prompt
    assert (
        same.prompt
        == parse(
            CHAT,
            {
                "model": "m",
                "messages": [
                    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}
                ],
            },
        ).prompt
    )


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "m"}, "messages"),
        ({"model": "m", "messages": []}, "messages"),
        ({"model": "m", "messages": "hi"}, "messages"),
        ({"model": "m", "messages": {"role": "user"}}, "messages"),
        ({"model": "m", "messages": ["hi"]}, "messages[0]"),
        ({"model": "m", "messages": [{"content": "x"}]}, "messages[0]"),
        ({"model": "m", "messages": [{"role": 1, "content": "x"}]}, "messages[0]"),
        ({"model": "m", "messages": [{"role": "u", "content": 1}]}, "messages[0].content"),
        ({"model": "m", "messages": [{"role": "u", "content": {}}]}, "messages[0].content"),
        (
            {"model": "m", "messages": [{"role": "u"}, {"role": "u", "content": ["x"]}]},
            "messages[1].content[0]",
        ),
        (
            {"model": "m", "messages": [{"role": "u", "content": [{"text": "x"}]}]},
            "messages[0].content[0]",
        ),
        (
            {"model": "m", "messages": [{"role": "u", "content": [{"type": "text"}]}]},
            "messages[0].content[0].text",
        ),
        (
            {"model": "m", "messages": [{"role": "u", "content": [{"type": "text", "text": 1}]}]},
            "messages[0].content[0].text",
        ),
        ({"model": "m", "messages": [{"role": "u"}], "tools": {"a": 1}}, "tools"),
        ({"model": "m", "messages": [{"role": "u"}], "stream": "yes"}, "stream"),
        ({"model": "m", "messages": [{"role": "u"}], "stream": 1}, "stream"),
    ],
)
def test_chat_errors(body: dict[str, Any], param: str) -> None:
    err = error(CHAT, body)
    assert (err.status, err.param, err.type) == (400, param, "invalid_request_error")
    assert param in err.message


def test_stream_null_is_accepted() -> None:
    assert parse(CHAT, {"model": "m", "messages": [{"role": "u"}], "stream": None}).model == "m"


# -- responses --------------------------------------------------------------------------


def test_responses_string_input_equals_user_message() -> None:
    a = parse(RESPONSES, {"model": "m", "instructions": "be brief", "input": "hi"})
    b = parse(
        RESPONSES,
        {"model": "m", "instructions": "be brief", "input": [{"role": "user", "content": "hi"}]},
    )
    c = parse(
        RESPONSES,
        {
            "model": "m",
            "instructions": "be brief",
            "input": [
                {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": "hi"}],
                }
            ],
        },
    )
    assert a.kind == "responses"
    assert a.prompt == b.prompt == c.prompt == "<|system|>\nbe brief\n<|user|>\nhi\n"


def test_responses_items() -> None:
    req = parse(
        RESPONSES,
        {
            "model": "m",
            "tools": [{"type": "web_search"}],
            "input": [
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": [{"type": "output_text", "text": "a"}]},
                {"type": "function_call_output", "call_id": "x", "output": "42"},
            ],
        },
    )
    assert req.prompt.startswith('<|tools|>\n[{"type":"web_search"}]\n<|user|>\nq\n')
    assert "<|assistant|>\na\n" in req.prompt
    assert req.prompt.endswith(
        '<|function_call_output|>\n{"call_id":"x","output":"42","type":"function_call_output"}\n'
    )
    assert parse(RESPONSES, {"model": "m", "previous_response_id": "r"}).prompt == ""


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "m", "input": 3}, "input"),
        ({"model": "m", "input": ["x"]}, "input[0]"),
        ({"model": "m", "input": [{"content": "x"}]}, "input[0]"),
        ({"model": "m", "input": [{"role": "user", "content": 5}]}, "input[0].content"),
        ({"model": "m", "input": "x", "instructions": ["x"]}, "instructions"),
    ],
)
def test_responses_errors(body: dict[str, Any], param: str) -> None:
    assert error(RESPONSES, body).param == param


# -- body-level errors ------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"{not json",
        b"[]",
        b'"model"',
        b"null",
        b"NaN",
        b'{"model": NaN}',
        b'{"model": "m", "prompt": Infinity}',
        b"\xef\xbb\xbf{}",
        b'{"model": "m"} trailing',
        b'{"prompt": "x"}',
        b'{"model": 7, "prompt": "x"}',
        b'{"model": "", "prompt": "x"}',
        b'{"model": null}',
        b'{"model": ["m"]}',
        b'{"model": "m", "prompt": "\xff"}',
        b'{"model": "m\xc0\x80"}',
        b'{"model": "m", "prompt": "\\ud800"}',
    ],
)
def test_body_errors_are_400(raw: bytes) -> None:
    err = error(COMPLETIONS, raw)
    assert err.status == 400
    assert orjson.loads(err.body())["error"]["message"]


def test_deep_nesting_is_400() -> None:
    deep = b'{"model": "m", "prompt": ' + b"[" * 10_000 + b"]" * 10_000 + b"}"
    assert error(COMPLETIONS, deep).status == 400
    assert error(CHAT, b"[" * 10_000).status == 400
    # Deep enough for orjson.loads (limit 1024) but not for orjson.dumps (limit 254).
    tools = b"[" * 500 + b"]" * 500
    body = b'{"model": "m", "messages": [{"role": "u"}], "tools": [' + tools + b"]}"
    assert error(CHAT, body).param == "tools"


def test_body_over_limit_is_413() -> None:
    raw = orjson.dumps({"model": "m", "prompt": "x" * 100})
    err = error(COMPLETIONS, raw, max_body_bytes=len(raw) - 1)
    assert (err.status, err.code) == (413, "request_too_large")
    assert parse_request(COMPLETIONS, raw, max_body_bytes=len(raw)).prompt == "x" * 100


def test_huge_string_within_limit() -> None:
    req = parse(COMPLETIONS, {"model": "m", "prompt": "é" * 5_000_000})
    assert len(req.prompt) == 5_000_000


# -- properties -------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4)
    ),
    max_leaves=20,
)
FIELDS = [
    "model",
    "prompt",
    "messages",
    "input",
    "instructions",
    "tools",
    "stream",
    "type",
    "role",
    "content",
    "text",
]
fuzzy_bodies = st.recursive(
    json_scalars,
    lambda kids: (
        st.lists(kids, max_size=4)
        | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=4), kids, max_size=5)
    ),
    max_leaves=25,
)


def check_any(path: str, raw: bytes, limit: int = 2**20) -> None:
    try:
        req = parse_request(path, raw, max_body_bytes=limit)
    except RequestError as err:
        assert err.status in (400, 413)
        assert orjson.loads(err.body())["error"]["message"]
    else:
        assert isinstance(req, InferenceRequest)
        assert isinstance(req.model, str) and req.model
        assert isinstance(req.prompt, str)
        req.prompt.encode()  # valid UTF-8: the prefix scorer hashes it


@given(st.sampled_from(PATHS), st.binary(max_size=300))
def test_any_bytes_parse_or_request_error(path: str, raw: bytes) -> None:
    check_any(path, raw, limit=200)


@given(st.sampled_from(PATHS), fuzzy_bodies, st.text(min_size=1, max_size=5))
def test_any_json_parse_or_request_error(path: str, body: Any, model: str) -> None:
    check_any(path, orjson.dumps(body))
    if isinstance(body, dict):
        body.setdefault("model", model)
        check_any(path, orjson.dumps(body))


@given(st.sampled_from(PATHS), json_values)
def test_any_json_structure_under_known_fields(path: str, value: Any) -> None:
    for field in ("prompt", "messages", "input", "instructions", "tools"):
        check_any(path, orjson.dumps({"model": "m", field: value}))


texts = st.text(max_size=30)
token_ids = st.lists(st.integers(0, 2**31), min_size=1, max_size=20)
prompts = (
    texts
    | st.lists(texts, min_size=1, max_size=4)
    | token_ids
    | st.lists(token_ids, min_size=1, max_size=4)
)
parts = st.one_of(
    st.builds(lambda t: {"type": "text", "text": t}, texts),
    st.builds(lambda u: {"type": "image_url", "image_url": {"url": u}}, texts),
    st.builds(
        lambda d, n: {"type": "input_audio", "input_audio": {"data": d * n}},
        st.text(max_size=10),
        st.integers(0, 100),
    ),
)
contents = st.none() | texts | st.lists(parts, max_size=3)
roles = st.sampled_from(["system", "user", "assistant", "tool", "developer"]) | st.text(max_size=8)
messages = st.builds(lambda r, c: {"role": r, "content": c}, roles, contents)
tools = st.none() | st.lists(
    st.dictionaries(st.text(max_size=5), json_scalars, max_size=4), max_size=3
)
models = st.text(min_size=1, max_size=20)


@given(models, prompts, st.sampled_from([COMPLETIONS, EMBEDDINGS]), st.booleans())
def test_valid_prompt_bodies(model: str, prompt: Any, path: str, stream: bool) -> None:
    field = "prompt" if path == COMPLETIONS else "input"
    req = parse(path + "?q=1", {"model": model, field: prompt, "stream": stream})
    assert (req.model, req.path) == (model, path)
    if isinstance(prompt, str):
        assert req.prompt == prompt


@given(models, st.lists(messages, min_size=1, max_size=6), tools)
def test_valid_chat_bodies(model: str, msgs: list[Any], tool_list: Any) -> None:
    req = parse(CHAT, {"model": model, "messages": msgs, "tools": tool_list})
    assert (req.model, req.kind) == (model, "chat")
    for m in msgs:
        assert f"<|{m['role']}|>\n" in req.prompt
        if isinstance(m["content"], str):
            assert m["content"] in req.prompt


@given(st.lists(st.tuples(roles, texts), min_size=1, max_size=5))
def test_string_content_equals_one_text_part(turns: list[tuple[str, str]]) -> None:
    plain = [{"role": r, "content": t} for r, t in turns]
    parts = [{"role": r, "content": [{"type": "text", "text": t}]} for r, t in turns]
    assert parse(CHAT, {"model": "m", "messages": plain}).prompt == (
        parse(CHAT, {"model": "m", "messages": parts}).prompt
    )
    expected = "".join(f"<|{r}|>\n{t}\n" for r, t in turns)
    assert parse(CHAT, {"model": "m", "messages": plain}).prompt == expected


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(messages, min_size=2, max_size=8), tools, st.data())
def test_chat_prefix_property(msgs: list[Any], tool_list: Any, data: st.DataObject) -> None:
    k = data.draw(st.integers(1, len(msgs) - 1))
    short = parse(CHAT, {"model": "m", "messages": msgs[:k], "tools": tool_list}).prompt
    full = parse(CHAT, {"model": "m", "messages": msgs, "tools": tool_list}).prompt
    assert full.startswith(short)
    assert len(full) > len(short)


response_items = messages | st.builds(
    lambda c, o: {"type": "function_call_output", "call_id": c, "output": o}, texts, texts
)


@given(st.lists(response_items, min_size=2, max_size=6), st.none() | texts, st.data())
def test_responses_prefix_property(items: list[Any], instr: Any, data: st.DataObject) -> None:
    k = data.draw(st.integers(1, len(items) - 1))
    body = {"model": "m", "instructions": instr}
    short = parse(RESPONSES, {**body, "input": items[:k]}).prompt
    full = parse(RESPONSES, {**body, "input": items}).prompt
    assert full.startswith(short)


@given(token_ids, token_ids)
def test_token_prefix_property(a: list[int], b: list[int]) -> None:
    ta = parse(COMPLETIONS, {"model": "m", "prompt": a}).prompt
    tb = parse(COMPLETIONS, {"model": "m", "prompt": b}).prompt
    assert tb.startswith(ta) == (b[: len(a)] == a)


bad_utf8 = st.sampled_from([b"\xff", b"\x80", b"\xc0\x80", b"\xed\xa0\x80", b"\xe2\x82", b"\xf8"])


@given(texts, bad_utf8, texts, st.sampled_from(["model", "prompt"]))
def test_invalid_utf8_in_string_is_400(pre: str, bad: bytes, post: str, field: str) -> None:
    s = orjson.dumps(pre)[:-1] + bad + orjson.dumps(post)[1:]
    other = "prompt" if field == "model" else "model"
    raw = b'{"%s": %s, "%s": "x"}' % (field.encode(), s, other.encode())
    assert error(COMPLETIONS, raw).status == 400


@given(st.integers(1025, 20_000), st.sampled_from([b"[", b'{"a":']))
def test_deep_nesting_property(depth: int, opener: bytes) -> None:
    closer = b"]" if opener == b"[" else b"}"
    raw = b'{"model": "m", "prompt": ' + opener * depth + b"1" + closer * depth + b"}"
    assert error(COMPLETIONS, raw).status == 400


@given(st.sampled_from(PATHS), st.binary(min_size=1, max_size=500), st.integers(0, 499))
def test_over_limit_is_413(path: str, raw: bytes, limit: int) -> None:
    assume(len(raw) > limit)
    assert error(path, raw, max_body_bytes=limit).status == 413
