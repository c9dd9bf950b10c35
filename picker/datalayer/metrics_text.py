"""Reads the few model-server metrics picker schedules on out of a Prometheus text page.

A vLLM ``/metrics`` page is ~50 KB of histograms picker never looks at, scraped every
50 ms per pod. So rather than tokenising every line, ``parse_metrics`` asks ``str.find``
for each wanted sample name at the start of a line (a C-speed scan of the page per
family) and parses only those lines: ``# HELP``/``# TYPE`` lines and other families are
never split. Label values may hold escaped quotes/backslashes/newlines; values may be
``+Inf``, ``-Inf``, ``NaN`` or exponent floats (non-finite values count as absent).

Metric names are per model-server type (``model_servers.MODEL_SERVERS``), as the Gateway
API Inference Extension names them, and can be overridden (``names_from_config``). A name may carry
label matchers, ``family{label="value"}``, for servers that multiplex one family.

When a family has several matching series (e.g. one per data-parallel engine) the counts
(waiting, running) are summed and KV usage is averaged; for ``lora_info`` the series with
the greatest value (vLLM's last-update timestamp) wins.

A page that does not tell picker the pod's load is a failed scrape, not an idle pod:
``parse_metrics`` raises ``MissingMetricsError`` (a ``ValueError``) unless the page has
at least one sample of each *required* family. Required are ``waiting``, ``running``
and one of the ``kv_usage`` alternatives (any of them); ``lora_info`` and
``cache_config_info`` are optional (a server without LoRA or without that info series
still reports load). A field configured as ``""`` (or ``kv_usage`` as ``[]``) is not
required. A sample counts when its name and label matchers match, whatever its value (a
``NaN`` sample is present but reads as 0). So random bytes, an HTML error page, an empty
body or some other exporter's page served with status 200 all fail the scrape; the
scraper decodes the body as strict UTF-8 first (the text format's encoding), so
undecodable bytes fail before they get here. Lines of other families are still not
read, so a page is only as valid as its wanted lines.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import cast

from picker.datalayer.datastore import EndpointMetrics

__all__ = [
    "MetricNames",
    "MetricSpec",
    "MissingMetricsError",
    "parse_metrics",
    "parse_spec",
]

_SPEC_RE = re.compile(r"\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(?:\{(.*)\})?\s*$")
_MATCHER_RE = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,"\s]*))\s*')
_ESCAPE_RE = re.compile(r"\\(.)")
_ESCAPES = {"\\": "\\", '"': '"', "n": "\n"}
_DELIMS = frozenset("{ \t")


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """A sample name plus label equality matchers, parsed from ``name{l="v",...}``."""

    name: str
    matchers: tuple[tuple[str, str], ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.matchers)


def parse_spec(spec: str) -> MetricSpec:
    """``vllm:num_requests_waiting`` or ``nv_trt_llm_request_metrics{request_type="waiting"}``."""
    m = _SPEC_RE.fullmatch(spec)
    if m is None:
        raise ValueError(f'bad metric name {spec!r}; expected name or name{{label="value"}}')
    name, body = m.group(1), m.group(2)
    matchers: list[tuple[str, str]] = []
    if body and body.strip():
        for part in _split_matchers(body):
            mm = _MATCHER_RE.fullmatch(part)
            if mm is None:
                raise ValueError(f"bad label matcher {part!r} in metric name {spec!r}")
            quoted = mm.group(2)
            value = _unescape(quoted) if quoted is not None else mm.group(3)
            matchers.append((mm.group(1), value))
    return MetricSpec(name, tuple(matchers))


def _split_matchers(body: str) -> list[str]:
    """Splits ``a="x,y",b=z`` on the commas outside quotes."""
    parts, start, quoted, i = [], 0, False, 0
    while i < len(body):
        c = body[i]
        if c == "\\" and quoted:
            i += 1
        elif c == '"':
            quoted = not quoted
        elif c == "," and not quoted:
            parts.append(body[start:i])
            start = i + 1
        i += 1
    parts.append(body[start:])
    return [p for p in parts if p.strip()]


@dataclass(frozen=True, slots=True)
class MetricNames:
    """Which samples hold each value picker reads. ``""`` disables a field.

    ``kv_usage`` lists alternatives; the first one present on the page wins (vLLM renamed
    ``gpu_cache_usage_perc`` to ``kv_cache_usage_perc``). ``lora_info`` reads the labels
    ``running_lora_adapters``/``waiting_lora_adapters`` (comma-separated) and ``max_lora``;
    ``cache_config_info`` reads ``block_size`` and ``num_gpu_blocks``.
    """

    waiting: str
    running: str
    kv_usage: tuple[str, ...]
    lora_info: str = ""
    cache_config_info: str = ""
    # Counters for learning the pod's prefill rate (optional): seconds spent prefilling,
    # prompt tokens computed (not cache hits), and requests, summed since the pod started.
    prefill_seconds: str = ""
    prefill_tokens: str = ""
    prefill_count: str = ""
    # Latency counters (optional): queue seconds; time to first token (sum, count);
    # inter-token latency (sum, count). The latency model learns a pod's fixed overhead
    # and its time per output token from them.
    queue_seconds: str = ""
    ttft_seconds: str = ""
    ttft_count: str = ""
    itl_seconds: str = ""
    itl_count: str = ""
    # Prompt tokens per request (sum, count): the pod's tokenizer against picker's
    # estimate, so predictions count tokens as the pod does.
    prompt_tokens: str = ""
    prompt_count: str = ""

    def __post_init__(self) -> None:
        kv: object = self.kv_usage
        if isinstance(kv, str):  # tolerate a single name or a list from config
            object.__setattr__(self, "kv_usage", (kv,) if kv else ())
        elif not isinstance(kv, tuple):
            object.__setattr__(self, "kv_usage", tuple(cast(Iterable[str], kv)))
        _plan(self)  # validates every name now, not at the first scrape


class MissingMetricsError(ValueError):
    """The page lacks a required metric family (see the module doc): a failed scrape."""


# --- parsing -------------------------------------------------------------------------

# Field ids used by the plan.
_WAITING, _RUNNING, _KV, _LORA, _CACHE, _PF_S = range(6)  # then one id per counter
_COUNTERS = (
    "prefill_seconds",
    "prefill_tokens",
    "prefill_count",
    "queue_seconds",
    "ttft_seconds",
    "ttft_count",
    "itl_seconds",
    "itl_count",
    "prompt_tokens",
    "prompt_count",
)

# sample name -> [(field id, kv alternative index, spec)]
_Plan = dict[str, list[tuple[int, int, MetricSpec]]]


@lru_cache(maxsize=64)
def _plan(names: MetricNames) -> _Plan:
    plan: _Plan = {}
    wanted = [(_WAITING, 0, names.waiting), (_RUNNING, 0, names.running)]
    wanted += [(_KV, i, s) for i, s in enumerate(names.kv_usage)]
    wanted += [(_LORA, 0, names.lora_info), (_CACHE, 0, names.cache_config_info)]
    wanted += [(_PF_S + i, 0, getattr(names, c)) for i, c in enumerate(_COUNTERS)]
    for field_id, alt, text in wanted:
        if text:
            spec = parse_spec(text)
            plan.setdefault(spec.name, []).append((field_id, alt, spec))
    return plan


@lru_cache(maxsize=64)
def _required(names: MetricNames) -> int:
    """Bit mask (``1 << field id``) of the fields a page must have a sample of."""
    mask = 0
    for field_id, present in ((_WAITING, names.waiting), (_RUNNING, names.running)):
        if present:
            mask |= 1 << field_id
    if names.kv_usage:
        mask |= 1 << _KV
    return mask


def _missing(names: MetricNames, seen: int, page: str) -> MissingMetricsError:
    fields = [(_WAITING, names.waiting), (_RUNNING, names.running)]
    fields.append((_KV, " or ".join(names.kv_usage)))
    lacking = [spec for f, spec in fields if spec and not seen & (1 << f)]
    return MissingMetricsError(
        f"not a usable metrics page: no {', no '.join(lacking)}; it begins {page[:80]!r}"
    )


def _first_line(text: str, name: str, n: int) -> int:
    if text.startswith(name) and text[n : n + 1] in _DELIMS:
        return 0
    key = "\n" + name
    i = text.find(key)
    while i >= 0:
        if text[i + 1 + n : i + 2 + n] in _DELIMS:
            return i + 1
        i = text.find(key, i + 1 + n)
    return -1


def _lines(text: str, name: str) -> Iterator[str]:
    """The sample lines of ``name`` (exact name: followed by ``{`` or a space).

    The format requires a family's lines to form one group, so after the first match
    only the lines that follow are read (comment lines in between are skipped).
    """
    n = len(name)
    start = _first_line(text, name, n)
    if start < 0:
        return
    while True:
        end = text.find("\n", start)
        if end < 0:
            end = len(text)
        line = text[start:end]
        if line[n : n + 1] in _DELIMS and line.startswith(name):
            yield line
        elif not line.startswith("#"):
            return
        start = end + 1
        if start >= len(text):
            return


def _unescape(raw: str) -> str:
    return _ESCAPE_RE.sub(lambda m: _ESCAPES.get(m[1], m[0]), raw)


def _parse_labels(s: str, i: int) -> tuple[dict[str, str], int]:
    """Labels from just after ``{``; returns them and the index after ``}``."""
    if s[i] == "}":
        return {}, i + 1
    if "\\" not in s:
        # Fast path: without escapes no value contains '"', so '",' and '"}' delimit.
        end = s.find('"}', i)
        labels: dict[str, str] = {}
        for part in s[i:end].split('",') if end > 0 else ():
            key, sep, value = part.partition('="')
            if not sep or '"' in value or not key.isidentifier():
                break
            labels[key] = value
        else:
            if end > 0:
                return labels, end + 2
    return _parse_labels_slow(s, i)


def _parse_labels_slow(s: str, i: int) -> tuple[dict[str, str], int]:
    labels: dict[str, str] = {}
    while True:
        while s[i] in " \t,":
            i += 1
        if s[i] == "}":
            return labels, i + 1
        eq = s.index("=", i)
        q = s.index('"', eq + 1)
        if s[eq + 1 : q].strip():
            raise ValueError("label value is not quoted")
        j = s.index('"', q + 1)
        while s[j - 1] == "\\":  # maybe escaped: an odd run of backslashes escapes it
            k = j - 1
            while s[k - 1] == "\\":
                k -= 1
            if (j - k) % 2 == 0:
                break
            j = s.index('"', j + 1)
        raw = s[q + 1 : j]
        labels[s[i:eq].strip()] = _unescape(raw) if "\\" in raw else raw
        i = j + 1


def _parse_sample(line: str, name_len: int) -> tuple[dict[str, str], float]:
    try:
        labels: dict[str, str] = {}
        i = name_len
        if line[i] == "{":
            labels, i = _parse_labels(line, i + 1)
        return labels, float(line[i:].split(None, 1)[0])
    except (IndexError, ValueError):
        raise ValueError(f"malformed sample line: {line[:200]!r}") from None


def _csv(value: str) -> frozenset[str]:
    return frozenset(a for a in (p.strip() for p in value.split(",")) if a)


def _int(value: str | None) -> int:
    """Integer from a label value such as ``"16"``, ``"16.0"`` or ``"None"`` (→ 0)."""
    if not value:
        return 0
    try:
        f = float(value)
    except ValueError:
        return 0
    return int(f) if math.isfinite(f) else 0


def parse_metrics(text: str, names: MetricNames, now: float) -> EndpointMetrics:
    """The snapshot ``names`` describes, read from a Prometheus text page.

    Missing optional families leave their defaults (0 / empty). ``now`` becomes
    ``scraped_at``. Raises ``MissingMetricsError`` when a required family has no sample
    (module doc) and ValueError on a malformed line of a wanted family (other lines are
    not read).
    """
    seen = 0  # bit mask of the fields with a matching sample
    waiting = running = 0.0
    counters = [0.0] * len(_COUNTERS)  # summed over engines
    kv: dict[int, list[float]] = {}
    lora: tuple[float, dict[str, str]] | None = None
    cache: dict[str, str] | None = None
    isfinite = math.isfinite
    for name, targets in _plan(names).items():
        if kv and all(f == _KV and alt > min(kv) for f, alt, _ in targets):
            continue  # an earlier kv_usage alternative was found
        n = len(name)
        for line in _lines(text, name):
            labels, value = _parse_sample(line, n)
            for field_id, alt, spec in targets:
                if spec.matchers and not spec.matches(labels):
                    continue
                seen |= 1 << field_id
                if field_id == _LORA:
                    if lora is None or value > lora[0]:
                        lora = (value, labels)
                elif field_id == _CACHE:
                    if cache is None:
                        cache = labels
                elif not isfinite(value):
                    continue
                elif field_id == _WAITING:
                    waiting += value
                elif field_id == _RUNNING:
                    running += value
                elif field_id >= _PF_S:
                    counters[field_id - _PF_S] += value
                else:
                    kv.setdefault(alt, []).append(value)
    required = _required(names)
    if seen & required != required:
        raise _missing(names, seen, text)
    kv_usage = 0.0
    if kv:
        values = kv[min(kv)]
        kv_usage = sum(values) / len(values)
    lo = lora[1] if lora is not None else {}
    ca = cache or {}
    return EndpointMetrics(
        waiting=round(waiting),
        running=round(running),
        kv_usage=kv_usage,
        running_adapters=_csv(lo.get("running_lora_adapters", "")),
        waiting_adapters=_csv(lo.get("waiting_lora_adapters", "")),
        max_lora=_int(lo.get("max_lora")),
        block_size=_int(ca.get("block_size")),
        num_blocks=_int(ca.get("num_gpu_blocks")),
        scraped_at=now,
        **dict(zip(_COUNTERS, counters, strict=True)),
    )
