"""The model's chat template, rendered to the exact text vLLM 0.32 renders for a chat
request (vLLM calls transformers' ``apply_chat_template``; picker needs neither).

Where the template comes from, in transformers' order: ``chat_template.jinja`` beside the
tokenizer (and named ones in ``additional_chat_templates/*.jinja``), else the
``chat_template`` of ``tokenizer_config.json`` (a string, or a list of ``{name,
template}``). With several named templates, a request with tools gets ``tool_use`` when
there is one, else ``default``. A ``chat_template`` parameter (a file) replaces them all,
like vLLM's ``--chat-template``.

The environment is the one chat templates are written for: a sandboxed Jinja
(``ImmutableSandboxedEnvironment``: templates cannot reach Python internals) with
``trim_blocks``, ``lstrip_blocks``, loop controls (``break``/``continue``), the
``{% generation %}`` tag (renders its body), ``raise_exception(msg)``,
``strftime_now(fmt)`` and a ``tojson`` filter that keeps non-ASCII characters and takes
``indent``, ``separators`` and ``sort_keys`` (Python's ``json.dumps``: the prompt depends
on its exact output, so not orjson there).

Template variables: ``messages`` (normalised as vLLM does, ``picker.request.chat_messages``),
``tools``, ``documents``, ``add_generation_prompt``, the special tokens of
``tokenizer_config.json`` (``bos_token``, ``eos_token``, ... as strings), the server's
default keyword arguments and the body's ``chat_template_kwargs``, merged in vLLM's order.
``continue_final_message`` leaves the last message open: its text is marked, the rendering
cut at the mark.

The content format (do messages carry a string or a list of parts?) is detected from the
template's syntax tree as vLLM does: ``"openai"`` when a loop iterates over a message's
``content``, else ``"string"``; a ``content_format`` argument overrides it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import orjson

from picker.request.chat_messages import (
    Unsupported,
    conversation,
    developer_as_system,
    tool_schemas,
)
from picker.request.chat_syntax import content_format_of, environment
from picker.request.types import ChatInput

ContentFormat = Literal["string", "openai"]
SPECIAL_TOKEN_NAMES = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)
# apply_chat_template's own parameters: a kwarg of these names never reaches the template.
_CONSUMED = frozenset(
    {
        "padding", "truncation", "max_length", "return_tensors", "return_dict",
        "return_assistant_tokens_mask", "tokenizer_kwargs", "tokenize",
    }
)  # fmt: skip
_RESERVED = frozenset({"messages", "conversation"})
_MARK = "PICKER_CONTINUE_FINAL_7F3A "  # ends with a space: tells whether the template trims


def load_templates(model_dir: str | Path) -> dict[str, str]:
    """The model's chat templates by name (``"default"`` for the only or main one)."""
    d = Path(model_dir)
    out: dict[str, str] = {}
    main = d / "chat_template.jinja"
    if main.is_file():
        out["default"] = main.read_text(encoding="utf-8")
    extra = d / "additional_chat_templates"
    if extra.is_dir():
        for f in sorted(extra.glob("*.jinja")):
            out[f.stem] = f.read_text(encoding="utf-8")
    if out:
        return out
    config = _json(d / "tokenizer_config.json")
    tpl = config.get("chat_template")
    if type(tpl) is str:
        return {"default": tpl}
    if type(tpl) is list:
        return {t["name"]: t["template"] for t in tpl if type(t) is dict}
    return {}


def load_special_tokens(model_dir: str | Path) -> dict[str, str]:
    """``bos_token``, ``eos_token``, ... as ``tokenizer_config.json`` names them (or
    ``special_tokens_map.json``), as strings: the template sees these."""
    d = Path(model_dir)
    sources = (_json(d / "tokenizer_config.json"), _json(d / "special_tokens_map.json"))
    out: dict[str, str] = {}
    for name in SPECIAL_TOKEN_NAMES:
        for src in sources:
            value = src.get(name)
            if type(value) is dict:
                value = value.get("content")
            if type(value) is str:
                out[name] = value
                break
    return out


def _json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    data = orjson.loads(path.read_bytes())
    return data if type(data) is dict else {}


class ChatTemplate:
    """One model's chat template(s), compiled once; ``render`` gives vLLM's prompt text."""

    def __init__(
        self,
        templates: dict[str, str],
        special_tokens: dict[str, str] | None = None,
        *,
        content_format: str = "auto",
        default_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if not templates:
            raise ValueError("the model has no chat template")
        if content_format not in ("auto", "string", "openai"):
            raise ValueError("content_format must be auto, string or openai")
        self.templates = dict(templates)
        self.special_tokens = dict(special_tokens or {})
        self.default_kwargs = dict(default_kwargs or {})
        env = environment()
        self._compiled = {name: env.from_string(src) for name, src in self.templates.items()}
        self._format: dict[str, ContentFormat] = {
            name: (
                content_format_of(env.parse(src))
                if content_format == "auto"
                else ("openai" if content_format == "openai" else "string")
            )
            for name, src in self.templates.items()
        }
        self._developer = {
            name: '"developer"' in src or "'developer'" in src
            for name, src in self.templates.items()
        }

    @classmethod
    def from_dir(
        cls,
        model_dir: str | Path,
        template_file: str | Path | None = None,
        **options: Any,
    ) -> ChatTemplate:
        """The template beside a model's tokenizer files (or ``template_file``)."""
        if template_file:
            templates = {"default": Path(template_file).read_text(encoding="utf-8")}
        else:
            templates = load_templates(model_dir)
        return cls(templates, load_special_tokens(model_dir), **options)

    def name_for(self, tools: bool) -> str:
        t = self.templates
        if len(t) == 1:
            return next(iter(t))
        if tools and "tool_use" in t:
            return "tool_use"
        if "default" in t:
            return "default"
        raise Unsupported("several chat templates and none is the default")

    def content_format(self, tools: bool = False) -> ContentFormat:
        return self._format[self.name_for(tools)]

    def render(self, chat: ChatInput) -> str:
        """The prompt text vLLM renders for ``chat``; ``Unsupported`` when picker cannot
        know it (media parts, the body's own template, a template error, ...)."""
        if chat.own_template:
            raise Unsupported("the request brings its own chat template")
        if chat.add_generation_prompt and chat.continue_final_message:
            raise Unsupported("add_generation_prompt and continue_final_message together")
        kw = self._kwargs(chat)
        tools = kw.pop("tools", None)
        name = self.name_for(tools is not None)
        conv = conversation(chat.messages, self._format[name] == "openai")
        if not self._developer[name]:
            conv = developer_as_system(conv)
        documents = kw.pop("documents", None)
        agp = bool(kw.pop("add_generation_prompt", False))
        kw.pop("continue_final_message", None)
        for key in _CONSUMED:
            kw.pop(key, None)
        if _RESERVED & kw.keys():
            raise Unsupported("chat_template_kwargs names a template argument")
        context = {**self.special_tokens, **kw}
        context.update(messages=conv, tools=tools, documents=documents, add_generation_prompt=agp)
        template = self._compiled[name]
        if not chat.continue_final_message:
            return template.render(context)
        return self._render_open(template, self.templates[name], conv, context)

    def _kwargs(self, chat: ChatInput) -> dict[str, Any]:
        """vLLM's merge: server defaults and tools, under the body's kwargs, under the
        body's fields; a ``None`` or ``"auto"`` value at the body's level is unset."""
        if chat.template_kwargs and chat.template_kwargs.get("chat_template") is not None:
            raise Unsupported("chat_template_kwargs brings its own template")
        request = dict(chat.template_kwargs or {})
        fields: dict[str, Any] = {
            "add_generation_prompt": chat.add_generation_prompt,
            "continue_final_message": chat.continue_final_message,
            "documents": chat.documents,
            "reasoning_effort": chat.reasoning_effort,
        }
        if chat.reasoning_effort is not None and "enable_thinking" not in request:
            fields["enable_thinking"] = chat.reasoning_effort != "none"
        request.update((k, v) for k, v in fields.items() if v is not None)
        out = dict(self.default_kwargs)
        tools = tool_schemas(chat.tools)
        if tools is not None:
            out["tools"] = tools
        out.update((k, v) for k, v in request.items() if not _unset(v))
        return out

    @staticmethod
    def _render_open(
        template: Any, source: str, conv: list[dict[str, Any]], context: dict[str, Any]
    ) -> str:
        """Renders with the last message left open for the model to continue."""
        if "content" not in source:
            raise Unsupported("continue_final_message: the template has no content field")
        last = conv[-1]
        content = last.get("content")
        if type(content) is list:
            block = next((p for p in reversed(content) if "text" in p), None)
            if block is None:
                raise Unsupported("continue_final_message: no text to continue")
            final = block["text"]
            block["text"] = final + _MARK
        elif type(content) is str:
            final = content
            last["content"] = content + _MARK
        else:
            raise Unsupported("continue_final_message: the last message has no content")
        text: str = template.render(context)
        if final.strip() not in text or _MARK.strip() not in text:
            raise Unsupported("continue_final_message: the template dropped the message")
        cut = text.rindex(_MARK.strip())
        if text[cut : cut + len(_MARK)] == _MARK:
            return text[:cut]
        return text[:cut].rstrip()


def _unset(value: Any) -> bool:
    return value is None or (type(value) is str and value == "auto")
