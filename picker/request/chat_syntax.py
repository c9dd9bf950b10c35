"""The Jinja side of chat templates: the sandboxed environment they are written for
(see ``picker.request.chat_template``), and the content-format detection vLLM applies to
a template's syntax tree.

Content format (vLLM 0.32, ``renderers/hf.py``): a template is ``"openai"`` (messages
carry lists of parts) when a ``for`` loop iterates over a message's content, else
``"string"``. A *message* is the target of a loop over ``messages`` or over a variable
assigned from it (``{% set msgs = messages[1:] %}``, through filters, tests and
slices); its content is ``m.content`` or ``m['content']``. Also counted: a loop inside a
macro over a parameter that some call passes a message's content to, and, outside
macros, a loop over a variable literally named ``content``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from typing import Any, Literal

from jinja2 import nodes
from jinja2.exceptions import TemplateError
from jinja2.ext import Extension, loopcontrols
from jinja2.parser import Parser
from jinja2.runtime import Macro
from jinja2.sandbox import ImmutableSandboxedEnvironment


class _Generation(Extension):
    """``{% generation %}...{% endgeneration %}`` (marks assistant text for training
    masks): renders its body unchanged."""

    tags = {"generation"}

    def parse(self, parser: Parser) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        call = self.call_method("_body")
        return nodes.CallBlock(call, [], [], body).set_lineno(lineno)

    def _body(self, caller: Macro) -> str:
        out: str = caller()
        return out


def _raise(message: str) -> None:
    raise TemplateError(message)


def tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | str | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    """The ``tojson`` filter chat templates expect: JSON without HTML escaping, with
    Python's ``json.dumps`` separators (the prompt depends on them byte for byte)."""
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_Generation, loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = strftime_now
    return env


# -- content format ---------------------------------------------------------------------


def _strip(node: nodes.Node) -> nodes.Node:
    """``x | f``, ``x is t`` and ``x[a:b]`` refer to ``x``."""
    while True:
        filtered = isinstance(node, nodes.Filter) and node.node is not None
        sliced = isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Slice)
        if not (filtered or sliced or isinstance(node, nodes.Test)):
            return node
        node = node.node  # type: ignore[attr-defined]


def _is_name(node: nodes.Node, names: set[str] | frozenset[str]) -> bool:
    node = _strip(node)
    return isinstance(node, nodes.Name) and node.ctx == "load" and node.name in names


def _is_content_of(node: nodes.Node, names: set[str]) -> bool:
    """``m.content`` or ``m['content']`` for ``m`` in ``names`` (through filters etc.)."""
    node = _strip(node)
    if isinstance(node, nodes.Getattr):
        return node.attr == "content" and _is_plain_name(node.node, names)
    if isinstance(node, nodes.Getitem):
        arg = node.arg
        return (
            isinstance(arg, nodes.Const)
            and arg.value == "content"
            and _is_plain_name(node.node, names)
        )
    return False


def _is_plain_name(node: nodes.Node, names: set[str]) -> bool:
    return isinstance(node, nodes.Name) and node.ctx == "load" and node.name in names


def _aliases(root: nodes.Template, name: str) -> set[str]:
    """``name`` and every variable assigned from it, transitively."""
    found = {name}
    queue = [name]
    while queue:
        current = frozenset({queue.pop()})
        for assign in root.find_all(nodes.Assign):
            target = assign.target
            if (
                _is_name(assign.node, current)
                and isinstance(target, nodes.Name)
                and target.name not in found
            ):
                found.add(target.name)
                queue.append(target.name)
    return found


def _loop_targets(root: nodes.Template, iterables: set[str]) -> set[str]:
    out: set[str] = set()
    for loop in root.find_all(nodes.For):
        if _is_name(loop.iter, iterables) and isinstance(loop.target, nodes.Name):
            out.add(loop.target.name)
    return out


def _macro_content_params(root: nodes.Template, macro: nodes.Macro, msgs: set[str]) -> set[str]:
    params = [a.name for a in macro.args]
    out: set[str] = set()
    for call in root.find_all(nodes.Call):
        if not (isinstance(call.node, nodes.Name) and call.node.name == macro.name):
            continue
        for i, arg in enumerate(call.args[: len(params)]):
            if _is_content_of(arg, msgs):
                out.add(params[i])
        for kw in call.kwargs:
            if kw.key in params and _is_content_of(kw.value, msgs):
                out.add(kw.key)
    return out


def _content_loops(root: nodes.Template) -> Iterator[nodes.For]:
    msgs = _loop_targets(root, _aliases(root, "messages"))
    in_macro: set[int] = set()
    macro_params: dict[int, set[str]] = {}
    for macro in root.find_all(nodes.Macro):
        params = _macro_content_params(root, macro, msgs)
        for loop in macro.find_all(nodes.For):
            in_macro.add(id(loop))
            if params:
                macro_params[id(loop)] = params
    for loop in root.find_all(nodes.For):
        it = loop.iter
        if _is_content_of(it, msgs) or (
            isinstance(it, nodes.Name)
            and (
                it.name in macro_params.get(id(loop), ())
                or (id(loop) not in in_macro and it.name == "content")
            )
        ):
            yield loop


def content_format_of(root: nodes.Template) -> Literal["string", "openai"]:
    """``"openai"`` when the template iterates over a message's content parts."""
    return "openai" if next(_content_loops(root), None) is not None else "string"
