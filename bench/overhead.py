"""What does picker cost? Envoy-direct vs Envoy+picker on the same trivial backend.

Prints, for each setup: p50/p99 latency at concurrency 1, the max sustained req/s of a
closed loop, and (for picker) its CPU time per request read from /proc. Run with

    python -m bench.overhead [--requests 2000] [--duration 10] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import orjson

from bench.stack import loadgen
from bench.stack.gateway import Stack

BODY = orjson.dumps(
    {
        "model": "meta-llama/Llama-3.1-8B-Instruct",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant. " * 8},
            {"role": "user", "content": "What is the capital of France?"},
        ],
        "max_tokens": 16,
    }
)


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def measure(stack: Stack, args: argparse.Namespace, pid: int | None) -> dict[str, Any]:
    req = loadgen.build_request("/v1/chat/completions", BODY)
    loadgen.run_blocking(stack.port, req, concurrency=4, total=300)  # warm-up
    serial = loadgen.run_blocking(stack.port, req, concurrency=1, total=args.requests)
    cpu0 = cpu_seconds(pid) if pid else 0.0
    load = loadgen.run_blocking(
        stack.port, req, concurrency=args.concurrency, duration=args.duration
    )
    cpu1 = cpu_seconds(pid) if pid else 0.0
    n = len(load.latencies)
    return {
        "p50_ms": serial.pct(50) * 1e3,
        "p99_ms": serial.pct(99) * 1e3,
        "max_rps": load.rps,
        "cpu_us_per_req": (cpu1 - cpu0) / n * 1e6 if pid and n else None,
        "statuses": {**serial.statuses, **load.statuses},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--requests", type=int, default=2000, help="serial requests (c=1)")
    ap.add_argument("--duration", type=float, default=8.0, help="seconds of max-rate load")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument(
        "--tls",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="Envoy dials picker over TLS (self-signed), as deploy/ does",
    )
    ap.add_argument("--transports", default="native,grpcio", help="picker gRPC servers to measure")
    ap.add_argument(
        "--modes",
        default="FULL_DUPLEX_STREAMED:FULL_DUPLEX_STREAMED,FULL_DUPLEX_STREAMED:NONE,BUFFERED:NONE",
        help="REQUEST:RESPONSE body modes of Envoy's ext_proc filter to measure",
    )
    args = ap.parse_args()
    rows: list[tuple[str, dict[str, Any]]] = []
    with Stack(pods=1, backend="echo", target="round_robin", tls=False) as direct:
        rows.append(("envoy direct", measure(direct, args, None)))
        pods = direct.pod_addresses
        for transport in args.transports.split(","):
            for modes in args.modes.split(","):
                req_mode, _, resp_mode = modes.partition(":")
                with Stack(
                    pods=1,
                    pod_addresses=pods,
                    target="picker",
                    picker_config={"scrape": {"enabled": False}, "transport": transport},
                    envoy_options={
                        "request_body_mode": req_mode,
                        "response_body_mode": resp_mode or req_mode,
                    },
                    tls=args.tls,
                ) as st:
                    pid = next(p.pid for name, p in st.procs.children if name == "picker")
                    tls = " TLS" if args.tls else ""
                    name = f"picker {transport}{tls} {req_mode}/{resp_mode or req_mode}"
                    rows.append((name, measure(st, args, pid)))
    base = rows[0][1]
    print(
        f"{'setup':58} {'p50 ms':>8} {'p99 ms':>8} {'+p50 ms':>8} {'max rps':>9} {'CPU us/req':>11}"
    )
    for name, r in rows:
        cpu = f"{r['cpu_us_per_req']:.0f}" if r["cpu_us_per_req"] else "-"
        print(
            f"{name:58} {r['p50_ms']:8.3f} {r['p99_ms']:8.3f} "
            f"{r['p50_ms'] - base['p50_ms']:8.3f} {r['max_rps']:9.0f} {cpu:>11}"
        )
        bad = {k: v for k, v in r["statuses"].items() if k != 200}
        if bad:
            print(f"  non-200 statuses: {bad}")


if __name__ == "__main__":
    main()
