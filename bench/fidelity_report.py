"""``bench.fidelity``'s tables: runs side by side, the calibration, real versus sim."""

from __future__ import annotations

import math
from typing import Any

from bench.fidelity_cal import Calibration


def ms(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v * 1e3:.0f}"


def pct(v: float | None) -> str:
    return "-" if v is None else f"{v * 100:.1f}"


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| rate/s | backend | ok | TTFT p50 | TTFT p90 | TTFT p50 shared | TTFT p50 cold "
        "| e2e p50 | ITL p50 | prefix hit % |"
    )
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        s = r["summary"]
        lines.append(
            f"| {r['rate']:g} | {r['backend']} | {s['ok']}/{s['requests']} "
            f"| {ms(s['ttft']['p50'])} | {ms(s['ttft']['p90'])} "
            f"| {ms(s.get('ttft_p50_shared'))} | {ms(s.get('ttft_p50_cold'))} "
            f"| {ms(s['e2e']['p50'])} | {ms(s['itl']['p50'])} "
            f"| {pct(s.get('prefix_hit_rate'))} |"
        )
    return "\n".join(lines)


def calibration_table(cal: Calibration, sim: dict[str, Any]) -> str:
    lines = [
        "| prompt tokens | real cold (engine) | real cached (engine) | sim cold | sim cached |",
        "|---|---|---|---|---|",
    ]
    for n in cal.cold_ttft:
        lines.append(
            f"| {n} | {ms1(cal.cold_ttft[n])} ({ms1(cal.cold_engine[n])}) "
            f"| {ms1(cal.cached_ttft[n])} ({ms1(cal.cached_engine[n])}) "
            f"| {ms1(sim['cold'].get(n))} | {ms1(sim['cached'].get(n))} |"
        )
    lines.append(
        f"\nreal: {cal.summary()}; sim ITL lone {sim['itl_short'] * 1e3:.2f} ms, "
        f"sim's own time {sim.get('own_overhead', 0.0) * 1e3:.1f} ms (out of its front end)"
    )
    return "\n".join(lines)


def ms1(v: float | None) -> str:
    return "-" if v is None else f"{v * 1e3:.1f}"


def comparison(rows: list[dict[str, Any]]) -> str:
    """Real / sim TTFT p50 and p90 per rate, with the sim's error relative to real."""
    by = {(r["rate"], r["backend"]): r["summary"] for r in rows}
    lines = [
        "| rate/s | TTFT p50 real / sim (err) | TTFT p90 real / sim (err) "
        "| scrapes real / sim | other load % (real run) |",
        "|---|---|---|---|---|",
    ]
    for rate in sorted({r["rate"] for r in rows}):
        real, sim = by.get((rate, "real")), by.get((rate, "sim"))
        if real is None or sim is None:
            continue
        cells = []
        for q in ("p50", "p90"):
            a, b = real["ttft"][q], sim["ttft"][q]
            err = f"{(b - a) / a * 100:+.0f} %" if a and b is not None else "-"
            cells.append(f"{ms(a)} / {ms(b)} ({err})")
        lines.append(
            f"| {rate:g} | {cells[0]} | {cells[1]} "
            f"| {real.get('scrapes', 0)} / {sim.get('scrapes', 0)} "
            f"| {pct(real.get('other_load'))} |"
        )
    return "\n".join(lines)
