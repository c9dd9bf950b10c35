"""The Markdown table of a comparison: one row per target x workload x rate."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

COLUMNS = (
    ("target", "target"),
    ("workload", "workload"),
    ("rate", "rate/s"),
    ("ok", "ok"),
    ("err", "err"),
    ("ttft", "TTFT p50/p90/p99 ms"),
    ("itl", "ITL p50/p90 ms"),
    ("tpot", "TPOT mean ms"),
    ("e2e", "e2e p50/p90 ms"),
    ("tok_s", "out tok/s"),
    ("req_s", "req/s"),
    ("hit", "prefix hit %"),
    ("skew", "max pod share"),
    ("queue", "queue mean/max"),
    ("preempt", "preempted"),
    ("obs", "pod time polled %"),
    ("ape", "pred. error p50/p90 %"),
)


def _ms(d: dict[str, Any] | None, *keys: str) -> str:
    if not d:
        return "-"
    vals = [d.get(k) for k in keys]
    return "/".join(
        "-" if v is None else f"{v * 1e3:.0f}" if v >= 0.1 else f"{v * 1e3:.1f}" for v in vals
    )


def _num(v: Any, fmt: str = "{:.1f}") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return fmt.format(v)


def _pct(d: dict[str, Any] | None) -> str:
    if not d or not d.get("count"):
        return "-"
    return "/".join(
        _num(None if d.get(k) is None else d[k] * 100, "{:.0f}") for k in ("p50", "p90")
    )


def row(r: dict[str, Any]) -> dict[str, str]:
    shares = r.get("pod_share_metrics") or r.get("pod_share") or {}
    n_pods = r.get("pods") or len(shares)
    skew = max(shares.values()) if shares else None
    queue = r.get("queue") or {}
    errors = r.get("errors") or {}
    rate = r.get("rate")
    return {
        "target": str(r.get("target")),
        "workload": str(r.get("workload")),
        "rate": "closed" if not rate else _num(rate, "{:g}"),
        "ok": str(r.get("ok", 0)),
        "err": ",".join(f"{k}x{v}" for k, v in errors.items()) or "0",
        "ttft": _ms(r.get("ttft"), "p50", "p90", "p99"),
        "itl": _ms(r.get("itl"), "p50", "p90"),
        "tpot": _ms(r.get("tpot"), "mean"),
        "e2e": _ms(r.get("e2e"), "p50", "p90"),
        "tok_s": _num(r.get("output_tokens_per_s"), "{:.0f}"),
        "req_s": _num(r.get("request_rate")),
        "hit": _num(None if r.get("prefix_hit_rate") is None else r["prefix_hit_rate"] * 100),
        "skew": "-" if skew is None else f"{skew:.2f} (fair {1 / max(n_pods, 1):.2f})",
        "queue": "-" if not queue else f"{queue['mean_waiting']:.1f}/{queue['max_waiting']:.0f}",
        "preempt": _num(r.get("preemptions"), "{:d}"),
        "ape": _pct(r.get("prediction_ape")),
        "obs": _num(
            None if r.get("observation_share") is None else r["observation_share"] * 100,
            "{:.2f}",
        ),
    }


def markdown(results: Sequence[dict[str, Any]]) -> str:
    rows = [row(r) for r in results]
    head = [title for _, title in COLUMNS]
    widths = [
        max(len(h), *(len(x[k]) for x in rows)) if rows else len(h)
        for (k, _), h in zip(COLUMNS, head, strict=True)
    ]
    lines = [
        "| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    for x in rows:
        cells = [x[k].ljust(w) for (k, _), w in zip(COLUMNS, widths, strict=True)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def spread_markdown(results: Sequence[dict[str, Any]]) -> str:
    """One row per target x workload x rate over its repeats: TTFT p50 and p90 and the
    hit rate as min-max (the run-to-run spread), with the number of repeats."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in results:
        key = (str(r.get("target")), str(r.get("workload")), _num(r.get("rate"), "{:g}"))
        groups.setdefault(key, []).append(r)

    def span(vals: list[float | None], scale: float, fmt: str) -> str:
        got = [v * scale for v in vals if v is not None and not math.isnan(v)]
        if not got:
            return "-"
        lo, hi = min(got), max(got)
        return fmt.format(lo) if lo == hi else f"{fmt.format(lo)}-{fmt.format(hi)}"

    lines = [
        "| target | workload | rate/s | repeats | TTFT p50 ms | TTFT p90 ms | prefix hit % "
        "| pod time polled % | pred. error p50 % |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (target, workload, rate), rs in groups.items():
        p50 = span([(r.get("ttft") or {}).get("p50") for r in rs], 1e3, "{:.1f}")
        p90 = span([(r.get("ttft") or {}).get("p90") for r in rs], 1e3, "{:.1f}")
        hit = span([r.get("prefix_hit_rate") for r in rs], 100, "{:.1f}")
        obs = span([r.get("observation_share") for r in rs], 100, "{:.2f}")
        ape = span([(r.get("prediction_ape") or {}).get("p50") for r in rs], 100, "{:.0f}")
        lines.append(
            f"| {target} | {workload} | {rate} | {len(rs)} | {p50} | {p90} | {hit} | {obs} "
            f"| {ape} |"
        )
    return "\n".join(lines)
