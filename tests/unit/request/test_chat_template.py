"""The chat template's loading, environment, content-format detection and message
normalisation (the recorded vLLM ids are checked in ``test_chat_tokens``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from jinja2.exceptions import SecurityError, TemplateError

from picker.request.chat_messages import Unsupported, conversation, developer_as_system
from picker.request.chat_syntax import content_format_of, environment
from picker.request.chat_template import ChatTemplate, load_special_tokens, load_templates
from picker.request.parse import parse_request
from picker.request.types import ChatInput

ECHO = "{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}"


def _chat(**kw: Any) -> ChatInput:
    kw.setdefault("messages", [{"role": "user", "content": "hi"}])
    return ChatInput(**kw)


def _render(source: str, chat: ChatInput, **special: str) -> str:
    return ChatTemplate({"default": source}, special).render(chat)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (ECHO, "string"),
        ("{% for m in messages %}{% for p in m.content %}{{ p.text }}{% endfor %}{% endfor %}",
         "openai"),
        ("{% for m in messages %}{% for p in m['content'] | list %}x{% endfor %}{% endfor %}",
         "openai"),
        ("{% set rest = messages[1:] %}{% for m in rest %}{% for p in m.content %}{% endfor %}"
         "{% endfor %}", "openai"),
        ("{% macro show(c) %}{% for p in c %}{{ p.text }}{% endfor %}{% endmacro %}"
         "{% for m in messages %}{{ show(m.content) }}{% endfor %}", "openai"),
        ("{% macro show(c) %}{% for p in c %}{{ p }}{% endfor %}{% endmacro %}"
         "{% for m in messages %}{{ show(m.role) }}{% endfor %}", "string"),
        ("{% for m in messages %}{% set content = m.content %}{% for p in content %}"
         "{% endfor %}{% endfor %}", "openai"),
        ("{% for m in messages %}{% set c = m.content %}{% for p in c %}{% endfor %}"
         "{% endfor %}", "string"),  # vLLM follows no other alias of the content
        ("{% for t in tools %}{% for p in t.content %}{% endfor %}{% endfor %}", "string"),
    ],
)  # fmt: skip
def test_content_format_detection(source: str, expected: str) -> None:
    assert content_format_of(environment().parse(source)) == expected


def test_content_format_override() -> None:
    chat = _chat(messages=[{"role": "user", "content": [{"type": "text", "text": "a"}]}])
    assert _render(ECHO, chat) == "[user]a"
    forced = ChatTemplate({"default": ECHO}, content_format="openai").render(chat)
    assert forced == "[user][{'type': 'text', 'text': 'a'}]"
    with pytest.raises(ValueError, match="content_format"):
        ChatTemplate({"default": ECHO}, content_format="json")


def test_environment() -> None:
    src = (
        "{{ bos_token }}{{ messages | tojson }}|{{ tools | tojson(indent=2) }}|"
        "{% for m in messages %}{% if loop.first %}{% continue %}{% endif %}{{ m.content }}"
        "{% endfor %}\n{% generation %}g{% endgeneration %}"
    )
    chat = _chat(
        messages=[{"role": "user", "content": "é<b>"}, {"role": "user", "content": "2"}],
        tools=[{"type": "function", "function": {"name": "f"}}],
    )
    out = _render(src, chat, bos_token="<s>")
    assert out.startswith('<s>[{"role": "user", "content": "é<b>"}, ')  # no escaping
    assert '|[\n  {\n    "type": "function",' in out
    assert '"description": null' in out  # vLLM's dump of the tool
    assert out.endswith("|2g")  # trim_blocks ate the newline after the block tag
    assert _render("{{ strftime_now('%Y') }}", _chat()).isdigit()
    with pytest.raises(TemplateError, match="nope"):
        _render("{{ raise_exception('nope') }}", _chat())


def test_sandbox() -> None:
    with pytest.raises(SecurityError):
        _render("{{ messages.__class__.__mro__ }}", _chat())
    with pytest.raises(SecurityError):
        _render("{{ messages.append(1) }}", _chat())  # immutable: no mutation


def test_kwargs_merge_and_flags() -> None:
    src = "{{ add_generation_prompt }} {{ x }} {{ y }} {{ bos_token }} {{ documents }}"
    chat = _chat(
        add_generation_prompt=False,
        template_kwargs={"x": 1, "y": "auto", "add_generation_prompt": True, "bos_token": "B"},
        documents=[{"title": "t"}],
    )
    t = ChatTemplate({"default": src}, {"bos_token": "<s>"}, default_kwargs={"y": 2})
    # the body's field beats its kwargs; "auto" is unset; a kwarg beats a special token
    assert t.render(chat) == "False 1 2 B [{'title': 't'}]"
    effort = "{{ reasoning_effort }} {{ enable_thinking }}"
    assert _render(effort, _chat(reasoning_effort="none")) == "none False"
    keep = _chat(reasoning_effort="high", template_kwargs={"enable_thinking": False})
    assert _render(effort, keep) == "high False"


@pytest.mark.parametrize(
    "chat",
    [
        _chat(own_template=True),
        _chat(add_generation_prompt=True, continue_final_message=True),
        _chat(template_kwargs={"chat_template": "x"}),
        _chat(template_kwargs={"messages": []}),
        _chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]),
        _chat(messages=[{"role": "user", "content": [{"type": "text", "text": "a", "uuid": 1}]}]),
        _chat(messages=[{"content": "no role"}]),
        _chat(tools=[]),
        _chat(tools=[{"type": "retrieval"}]),
        _chat(tools=[{"function": {"name": "f", "strict": "yes"}}]),
        _chat(messages=[{"role": "assistant", "tool_calls": [{"type": "custom"}]}]),
    ],
)
def test_unsupported(chat: ChatInput) -> None:
    with pytest.raises(Unsupported):
        _render(ECHO, chat)


def test_continue_final_message() -> None:
    chat = _chat(
        messages=[{"role": "assistant", "content": "Once upon "}],
        add_generation_prompt=False,
        continue_final_message=True,
    )
    assert _render(ECHO + "<end>", chat) == "[assistant]Once upon "
    trimmed = "{% for m in messages %}{{ m.content | trim }}<end>{% endfor %}"
    assert _render(trimmed, chat) == "Once upon"
    with pytest.raises(Unsupported):
        _render("{% for m in messages %}{{ m.role }}{% endfor %}", chat)  # no content


def test_messages_normalised_as_vllm() -> None:
    msgs: list[Any] = [
        {"role": "system", "content": "x-anthropic-billing-header: cch=1\nreal", "extra": 1},
        {"role": "user", "content": None, "name": "bob", "tool_call_id": "dropped"},
        {
            "role": "assistant",
            "content": [{"type": "refusal", "refusal": "no"}, {"type": "text", "text": None}],
            "reasoning": "r",
            "tool_calls": [],
        },
        {"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": "a"}] * 2},
    ]
    string = conversation(msgs, openai_format=False)
    assert string == [
        {"role": "system", "content": "real"},
        {"role": "user", "content": "", "name": "bob"},
        {"role": "assistant", "content": "no", "reasoning": "r", "reasoning_content": "r"},
        {"role": "tool", "content": "a\na", "tool_call_id": "c1"},
    ]
    openai = conversation(msgs, openai_format=True)
    assert openai[0]["content"] == [{"type": "text", "text": "real"}]
    assert openai[1]["content"] == [] and openai[3]["content"] == "a\na"
    assert msgs[0]["content"].startswith("x-anthropic")  # the body is not changed


def test_tool_call_arguments() -> None:
    def args(value: Any) -> Any:
        call = {"id": "1", "type": "function", "function": {"name": "f", "arguments": value}}
        (msg,) = conversation([{"role": "assistant", "tool_calls": [call]}], False)
        return msg["tool_calls"][0]["function"]["arguments"]

    assert args('{"a": [1, 2.5]}') == {"a": [1, 2.5]}
    assert args('{"big": 123456789012345678901234567890}') == {
        "big": 123456789012345678901234567890
    }
    assert args("not json") == {} and args("") == {} and args(None) == {} and args("[1]") == {}
    assert args({"k": "v"}) == {"k": "v"}


def test_developer_as_system() -> None:
    sys_, dev, user = (
        {"role": "system", "content": "S"},
        {"role": "developer", "content": "D", "tools": None},
        {"role": "user", "content": "U"},
    )
    assert developer_as_system([dev, user]) == [{"role": "system", "content": "D"}, user]
    assert developer_as_system([sys_, user, dev]) == [{"role": "system", "content": "S\n\nD"}, user]
    assert developer_as_system([sys_, user]) == [sys_, user]
    keeps = "{% for m in messages %}{{ m.role }}{% endfor %}{# 'developer' #}"
    assert _render(keeps, _chat(messages=[dev])) == "developer"
    assert _render(ECHO, _chat(messages=[dev])) == "[system]D"


def _write(d: Path, name: str, text: str) -> None:
    (d / name).parent.mkdir(parents=True, exist_ok=True)
    (d / name).write_text(text)


def test_template_files(tmp_path: Path) -> None:
    config = {
        "chat_template": [
            {"name": "default", "template": "D"},
            {"name": "tool_use", "template": "T"},
        ],
        "bos_token": {"content": "<s>", "special": True},
        "eos_token": "</s>",
        "pad_token": None,
    }
    _write(tmp_path, "tokenizer_config.json", json.dumps(config))
    _write(tmp_path, "special_tokens_map.json", json.dumps({"unk_token": "<unk>"}))
    assert load_templates(tmp_path) == {"default": "D", "tool_use": "T"}
    assert load_special_tokens(tmp_path) == {
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
    }
    t = ChatTemplate.from_dir(tmp_path)
    assert t.render(_chat()) == "D"
    assert t.render(_chat(tools=[{"type": "function", "function": {"name": "f"}}])) == "T"
    # chat_template.jinja (newer transformers) wins over the config, with its siblings
    _write(tmp_path, "chat_template.jinja", "J")
    _write(tmp_path, "additional_chat_templates/tool_use.jinja", "TJ")
    assert load_templates(tmp_path) == {"default": "J", "tool_use": "TJ"}
    _write(tmp_path, "other.jinja", "O{{ eos_token }}")
    assert ChatTemplate.from_dir(tmp_path, tmp_path / "other.jinja").render(_chat()) == "O</s>"
    with pytest.raises(ValueError, match="no chat template"):
        ChatTemplate({})


def test_parse_reads_chat_inputs() -> None:
    body: dict[str, Any] = {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"type": "function", "function": {"name": "f"}}],
        "add_generation_prompt": False,
        "chat_template_kwargs": {"k": 1},
        "reasoning_effort": "low",
        "chat_template": "{{ x }}",
    }
    req = parse_request("/v1/chat/completions", json.dumps(body).encode())
    assert req.chat == ChatInput(
        messages=body["messages"],
        tools=body["tools"],
        add_generation_prompt=False,
        template_kwargs={"k": 1},
        reasoning_effort="low",
        own_template=True,
    )
    bad = parse_request(
        "/v1/chat/completions", json.dumps({**body, "add_generation_prompt": "yes"}).encode()
    )
    assert bad.chat is None  # vLLM would reject it: no exact prompt is claimed
    completion = parse_request("/v1/completions", b'{"model": "m", "prompt": "p"}')
    assert completion.chat is None
