"""Seeded, reproducible request streams for the comparison harness (``bench.compare``).

A workload is a list of :class:`RequestSpec` — path, OpenAI body, headers and arrival
offset — built from a seed, so the same arguments always give byte-identical requests.

Workloads (``build(name, ...)``):

* ``shared_prefix`` — inference-perf's knobs: ``groups`` x ``prompts_per_group``
  prompts; the prompts of a group share a system prompt of ``system_len`` tokens and
  differ in a question of ``question_len`` tokens; ``output_len`` tokens out.
* ``multi_turn`` — chat sessions whose history grows: turn N+1's ``messages`` are turn
  N's plus the assistant's reply and a new user message (``session`` keeps them ordered).
* ``uniform`` — independent random prompts, lengths uniform in a range.
* ``lora_mix`` — uniform prompts addressed to LoRA adapter model names (plus the base).
* ``trace`` — replay of a JSONL trace (see :func:`load_trace`).

Text is "token-ish": words from a seeded vocabulary of letter-only words, one word per
token (the simulator's tokenizer maps each letter run of <= 16 letters to one token).

Arrival processes (:class:`Arrival`): ``constant`` rate, ``poisson`` at a mean rate,
``stages`` (stepped rates, each for a duration), and ``closed`` (everything eligible at
once, with a concurrency limit applied by the runner).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
COMPLETIONS = "/v1/completions"
CHAT = "/v1/chat/completions"
LORA_ADAPTERS = ("sql-lora", "chat-lora", "code-lora")

_LETTERS = "abcdefghijklmnopqrstuvwxyz"
_VOCAB_SEED = 20240917
_VOCAB_SIZE = 4096


def _make_vocab() -> tuple[str, ...]:
    rng = random.Random(_VOCAB_SEED)
    words: set[str] = set()
    while len(words) < _VOCAB_SIZE:
        words.add("".join(rng.choice(_LETTERS) for _ in range(rng.randint(3, 9))))
    return tuple(sorted(words))


VOCAB = _make_vocab()


def words(rng: random.Random, n: int) -> str:
    """``n`` tokens of text: ``n`` vocabulary words separated by spaces."""
    return " ".join(rng.choices(VOCAB, k=n))


@dataclass(frozen=True, slots=True)
class RequestSpec:
    """One request to send: ``at`` seconds after the start of the run."""

    path: str
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    at: float = 0.0
    session: str | None = None  # requests of one session are sent one after another
    group: str | None = None  # e.g. the shared-prefix group, for analysis

    @property
    def model(self) -> str:
        return str(self.body.get("model", ""))


# ---- arrival processes ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Arrival:
    """When requests arrive. ``kind``: constant | poisson | stages | closed."""

    kind: str = "poisson"
    rate: float = 10.0  # requests/s for constant and poisson
    stages: tuple[tuple[float, float], ...] = ()  # (rate, duration s) for stages
    concurrency: int = 0  # closed loop: requests in flight; 0 = unlimited

    def __post_init__(self) -> None:
        if self.kind not in ("constant", "poisson", "stages", "closed"):
            raise ValueError(f"unknown arrival kind {self.kind!r}")
        if self.kind in ("constant", "poisson") and self.rate <= 0:
            raise ValueError("rate must be positive")
        if self.kind == "stages" and not self.stages:
            raise ValueError("stages needs at least one (rate, duration)")
        if self.kind == "closed" and self.concurrency <= 0:
            raise ValueError("closed loop needs a positive concurrency")

    @property
    def mean_rate(self) -> float:
        """Offered requests/s (0 for a closed loop, whose rate the server sets)."""
        if self.kind == "stages":
            total = sum(d for _, d in self.stages)
            return sum(r * d for r, d in self.stages) / total if total else 0.0
        return 0.0 if self.kind == "closed" else self.rate

    def count_for(self, duration: float) -> int:
        """How many requests a run of ``duration`` seconds offers (stages: their total)."""
        if self.kind == "stages":
            return sum(round(r * d) for r, d in self.stages)
        return max(1, round(self.mean_rate * duration))

    def offsets(self, n: int, seed: int = 0) -> list[float]:
        """Arrival offsets (seconds from the start, non-decreasing) of ``n`` requests."""
        rng = random.Random(f"arrival:{seed}")
        if self.kind == "closed":
            return [0.0] * n
        if self.kind == "constant":
            return [i / self.rate for i in range(n)]
        if self.kind == "poisson":
            t = 0.0
            out = []
            for _ in range(n):
                out.append(t)
                t += rng.expovariate(self.rate)
            return out
        return _stage_offsets(self.stages, n, rng)


def _stage_offsets(
    stages: Sequence[tuple[float, float]], n: int, rng: random.Random
) -> list[float]:
    """Poisson arrivals at each stage's rate for its duration; repeats stages to reach n."""
    out: list[float] = []
    start = 0.0
    while len(out) < n:
        for rate, duration in stages:
            t = start
            end = start + duration
            while rate > 0 and len(out) < n:
                t += rng.expovariate(rate)
                if t >= end:
                    break
                out.append(t)
            start = end
            if len(out) >= n:
                break
    return out


def parse_arrival(text: str) -> Arrival:
    """``poisson:10``, ``constant:5``, ``closed:8``, ``stages:5x10,20x10`` (rate x secs)."""
    kind, _, arg = text.partition(":")
    if kind == "stages":
        stages = tuple(
            (float(r), float(d)) for r, d in (s.split("x", 1) for s in arg.split(",") if s)
        )
        return Arrival("stages", stages=stages)
    if kind == "closed":
        return Arrival("closed", concurrency=int(arg))
    return Arrival(kind, rate=float(arg))


def with_arrivals(
    specs: Sequence[RequestSpec], arrival: Arrival, seed: int = 0
) -> list[RequestSpec]:
    offsets = arrival.offsets(len(specs), seed)
    return [replace(s, at=t) for s, t in zip(specs, offsets, strict=True)]


# ---- workloads -------------------------------------------------------------------------


def _completion(model: str, prompt: str, max_tokens: int, stream: bool = True) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "prompt": prompt, "max_tokens": max_tokens}
    if stream:
        body["stream"] = True
    return body


def shared_prefix(
    n: int,
    seed: int = 0,
    *,
    groups: int = 8,
    prompts_per_group: int = 16,
    system_len: int = 1000,
    question_len: int = 100,
    output_len: int = 16,
    model: str = MODEL,
) -> list[RequestSpec]:
    """``n`` requests drawn uniformly from ``groups`` x ``prompts_per_group`` prompts."""
    rng = random.Random(f"shared_prefix:{seed}")
    questions = _group_prompts(rng, groups, prompts_per_group, system_len, question_len)
    prompts = [(g, q) for g in range(groups) for q in questions[g]]
    out = []
    for _ in range(n):
        g, prompt = rng.choice(prompts)
        out.append(RequestSpec(COMPLETIONS, _completion(model, prompt, output_len), group=f"g{g}"))
    return out


def _group_prompts(
    rng: random.Random, groups: int, per_group: int, system_len: int, question_len: int
) -> list[list[str]]:
    """``per_group`` prompts per group, each group's sharing one system prompt."""
    systems = [f"group {g}: " + words(rng, system_len) for g in range(groups)]
    return [
        [systems[g] + "\nQuestion: " + words(rng, question_len) for _ in range(per_group)]
        for g in range(groups)
    ]


def hot_prefix(
    n: int,
    seed: int = 0,
    *,
    hot_share: float = 0.4,
    groups: int = 8,
    prompts_per_group: int = 16,
    system_len: int = 1000,
    question_len: int = 100,
    output_len: int = 16,
    model: str = MODEL,
) -> list[RequestSpec]:
    """Skewed popularity: one system prompt carries ``hot_share`` of the requests, the
    other ``groups - 1`` share the rest evenly (a prefix too hot for one pod)."""
    rng = random.Random(f"hot_prefix:{seed}")
    questions = _group_prompts(rng, groups, prompts_per_group, system_len, question_len)
    out = []
    for _ in range(n):
        g = 0 if rng.random() < hot_share else rng.randrange(1, groups)
        prompt = rng.choice(questions[g])
        out.append(RequestSpec(COMPLETIONS, _completion(model, prompt, output_len), group=f"g{g}"))
    return out


def multi_turn(
    n: int,
    seed: int = 0,
    *,
    sessions: int = 16,
    system_len: int = 300,
    user_len: int = 60,
    output_len: int = 16,
    turns: int = 0,
    model: str = MODEL,
) -> list[RequestSpec]:
    """``n`` chat turns from ``sessions`` interleaved sessions, histories growing.

    With ``turns`` > 0 a conversation ends after that many user turns and a new one takes
    its slot (same system prompt, empty history): prompts stay bounded however long the
    run, and ``sessions`` is the number of conversations active at once.
    """
    rng = random.Random(f"multi_turn:{seed}")
    systems = [words(rng, system_len) for _ in range(max(1, sessions // 4))]
    history: list[list[dict[str, str]]] = []
    started = [0] * sessions  # conversations begun in each slot, for the session id
    for s in range(sessions):
        history.append([{"role": "system", "content": systems[s % len(systems)]}])
    out = []
    for _ in range(n):
        s = rng.randrange(sessions)
        msgs = history[s]
        if turns > 0 and len(msgs) >= 2 * turns:  # system + turns x (user, assistant) - 1
            started[s] += 1
            msgs = history[s] = [msgs[0]]
        if len(msgs) > 1:  # the reply to the previous turn, as the pod would have sent it
            msgs.append({"role": "assistant", "content": words(rng, output_len)})
        msgs.append({"role": "user", "content": words(rng, user_len)})
        body = {
            "model": model,
            "messages": [dict(m) for m in msgs],
            "max_tokens": output_len,
            "stream": True,
        }
        sid = f"s{s}" if started[s] == 0 else f"s{s}.{started[s]}"
        out.append(RequestSpec(CHAT, body, session=sid, group=sid))
    return out


def uniform(
    n: int,
    seed: int = 0,
    *,
    prompt_len: tuple[int, int] = (100, 1000),
    output_len: tuple[int, int] = (8, 32),
    model: str = MODEL,
) -> list[RequestSpec]:
    rng = random.Random(f"uniform:{seed}")
    return [
        RequestSpec(
            COMPLETIONS,
            _completion(model, words(rng, rng.randint(*prompt_len)), rng.randint(*output_len)),
        )
        for _ in range(n)
    ]


def lora_mix(
    n: int,
    seed: int = 0,
    *,
    adapters: Sequence[str] = LORA_ADAPTERS,
    base_fraction: float = 0.25,
    prompt_len: tuple[int, int] = (100, 500),
    output_len: int = 16,
    model: str = MODEL,
) -> list[RequestSpec]:
    """Uniform prompts; a ``base_fraction`` to the base model, the rest to adapters."""
    rng = random.Random(f"lora_mix:{seed}")
    out = []
    for _ in range(n):
        name = model if rng.random() < base_fraction or not adapters else rng.choice(adapters)
        prompt = words(rng, rng.randint(*prompt_len))
        out.append(RequestSpec(COMPLETIONS, _completion(name, prompt, output_len), group=name))
    return out


def load_trace(path: str | Path, model: str = MODEL) -> list[RequestSpec]:
    """A JSONL trace, one request a line::

        {"timestamp": 12.5, "model": "m", "prompt": "..." | "messages": [...],
         "max_tokens": 64, "stream": true, "headers": {...}, "session": "id"}

    Timestamps are seconds (any origin; made relative to the first). ``model``,
    ``max_tokens`` (default 16), ``stream`` (default true), ``headers`` and ``session``
    are optional.
    """
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    if not rows:
        return []
    t0 = min(float(r.get("timestamp", 0.0)) for r in rows)
    out = []
    for r in rows:
        body: dict[str, Any] = {
            "model": r.get("model") or model,
            "max_tokens": int(r.get("max_tokens", 16)),
            "stream": bool(r.get("stream", True)),
        }
        if "messages" in r:
            body["messages"] = r["messages"]
            path_ = CHAT
        elif "prompt" in r:
            body["prompt"] = r["prompt"]
            path_ = COMPLETIONS
        else:
            raise ValueError(f"trace line without prompt or messages: {r}")
        out.append(
            RequestSpec(
                path_,
                body,
                headers=dict(r.get("headers") or {}),
                at=float(r.get("timestamp", 0.0)) - t0,
                session=r.get("session"),
            )
        )
    out.sort(key=lambda s: s.at)
    return out


def trace(n: int, seed: int = 0, *, path: str = "", model: str = MODEL) -> list[RequestSpec]:
    """The first ``n`` requests of a trace (``n`` <= 0: all), with the trace's timing."""
    specs = load_trace(path, model)
    return specs[:n] if n > 0 else specs


Builder = Callable[..., list[RequestSpec]]
WORKLOADS: dict[str, Builder] = {
    "shared_prefix": shared_prefix,
    "multi_turn": multi_turn,
    "hot_prefix": hot_prefix,
    "uniform": uniform,
    "lora_mix": lora_mix,
    "trace": trace,
}


def build(
    name: str,
    n: int,
    seed: int = 0,
    arrival: Arrival | None = None,
    **knobs: Any,
) -> list[RequestSpec]:
    """``n`` requests of workload ``name`` with offsets from ``arrival``.

    A trace keeps its own timestamps unless an ``arrival`` is given.
    """
    if name not in WORKLOADS:
        raise ValueError(f"unknown workload {name!r}; known: {sorted(WORKLOADS)}")
    specs = WORKLOADS[name](n, seed, **knobs)
    if arrival is None:
        return specs if name == "trace" else with_arrivals(specs, Arrival("closed", concurrency=1))
    return with_arrivals(specs, arrival, seed)


def iter_sessions(specs: Sequence[RequestSpec]) -> Iterator[tuple[str, list[RequestSpec]]]:
    """Requests grouped by session, each group in send order."""
    by: dict[str, list[RequestSpec]] = {}
    for s in specs:
        if s.session is not None:
            by.setdefault(s.session, []).append(s)
    yield from by.items()
