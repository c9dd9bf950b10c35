"""Kubernetes label selectors: parse the string form, match labels, print it back.

The syntax is the one ``kubectl -l`` and the API server's ``labelSelector`` parameter
take, and the EPP's ``--endpoint-selector``: comma-separated requirements, each one of

    key=value   key==value   key!=value          (equality)
    key in (a,b)   key notin (a,b)               (sets)
    key   !key                                   (existence)

A pod matches when it meets every requirement. ``!=`` and ``notin`` also match a pod
without the label, as in Kubernetes. An InferencePool's ``matchLabels`` is the
equality-only case (``from_labels``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?"
_KEY = re.compile(rf"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?{_NAME}$")
_VALUE = re.compile(rf"^({_NAME})?$")
MAX_REQUIREMENTS = 64


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!"
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        value = labels.get(self.key)
        op = self.op
        if op == "=":
            return value == self.values[0]
        if op == "!=":
            return value != self.values[0]
        if op == "in":
            return value is not None and value in self.values
        if op == "notin":
            return value is None or value not in self.values
        if op == "exists":
            return value is not None
        return value is None  # "!"

    def __str__(self) -> str:
        if self.op in ("=", "!="):
            return f"{self.key}{self.op}{self.values[0]}"
        if self.op in ("in", "notin"):
            return f"{self.key} {self.op} ({','.join(self.values)})"
        return self.key if self.op == "exists" else f"!{self.key}"


@dataclass(frozen=True, slots=True)
class Selector:
    """A parsed label selector; ``str()`` gives the canonical form the API server takes."""

    requirements: tuple[Requirement, ...]

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(r.matches(labels) for r in self.requirements)

    def __str__(self) -> str:
        return ",".join(str(r) for r in self.requirements)

    @property
    def empty(self) -> bool:
        return not self.requirements


def from_labels(labels: Mapping[str, str]) -> Selector:
    """The selector of a ``matchLabels`` map (every label must be equal)."""
    reqs = []
    for key, value in sorted(labels.items()):
        _check(str(key), [str(value)])
        reqs.append(Requirement(str(key), "=", (str(value),)))
    return Selector(tuple(reqs))


def _check(key: str, values: list[str]) -> None:
    if not _KEY.match(key) or len(key.rpartition("/")[2]) > 63:
        raise ValueError(f"label selector: invalid label key {key!r}")
    for v in values:
        if len(v) > 63 or not _VALUE.match(v):
            raise ValueError(f"label selector: invalid label value {v!r} for key {key!r}")


def _split(text: str) -> list[str]:
    """Splits on commas outside parentheses."""
    parts: list[str] = []
    depth = 0
    start = 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
            if depth > 1:
                raise ValueError(f"label selector {text!r}: nested parentheses")
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise ValueError(f"label selector {text!r}: unbalanced parentheses")
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth:
        raise ValueError(f"label selector {text!r}: unbalanced parentheses")
    parts.append(text[start:])
    return parts


_SET = re.compile(r"^(?P<key>\S+)\s+(?P<op>in|notin)\s*\((?P<values>[^()]*)\)$")


def parse(text: str) -> Selector:
    """Parses the string form; raises ValueError naming what is wrong."""
    text = text.strip()
    if not text:
        return Selector(())
    reqs: list[Requirement] = []
    for raw in _split(text):
        part = raw.strip()
        if not part:
            raise ValueError(f"label selector {text!r}: empty requirement")
        m = _SET.match(part)
        if m:
            values = [v.strip() for v in m.group("values").split(",")]
            if not any(values):
                raise ValueError(f"label selector {text!r}: {part!r} has no values")
            values = [v for v in values if v]
            _check(m.group("key"), values)
            reqs.append(Requirement(m.group("key"), m.group("op"), tuple(sorted(set(values)))))
            continue
        for op in ("==", "!=", "="):
            key, sep, value = part.partition(op)
            if sep:
                key, value = key.strip(), value.strip()
                _check(key, [value])
                reqs.append(Requirement(key, "=" if op == "==" else op, (value,)))
                break
        else:
            if part.startswith("!"):
                key = part[1:].strip()
                _check(key, [])
                reqs.append(Requirement(key, "!"))
            else:
                if any(c.isspace() for c in part):
                    raise ValueError(f"label selector {text!r}: cannot parse {part!r}")
                _check(part, [])
                reqs.append(Requirement(part, "exists"))
        if len(reqs) > MAX_REQUIREMENTS:
            raise ValueError(f"label selector {text!r}: more than {MAX_REQUIREMENTS} terms")
    return Selector(tuple(reqs))
