"""Large request bodies: what picker adds at 220 KB, as concurrency rises.

Measured as ``bench.overhead`` does: Envoy in front of a trivial backend, directly and
through picker (default Envoy config: FULL_DUPLEX_STREAMED request body), the same
backend, in one run. For each concurrency a closed loop runs ``--duration`` seconds;
prints p50/p90 latency of both setups, what picker adds, and picker's CPU per request.

    python -m bench.largebody [--body-kb 220] [--concurrency 20,150] [--duration 10]
"""

from __future__ import annotations

import argparse
import random
import time
from typing import Any

import orjson

from bench.overhead import cpu_seconds
from bench.stack import loadgen
from bench.stack.gateway import Stack


def chat_body(kb: int, seed: int = 0) -> bytes:
    rng = random.Random(seed)
    text = " ".join(f"w{rng.randrange(5000)}" for _ in range(kb * 1024 // 5))[: kb * 1024]
    return orjson.dumps(
        {
            "model": "meta-llama/Llama-3.1-8B-Instruct",
            "messages": [
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": text},
            ],
            "max_tokens": 16,
        }
    )


def measured(
    port: int, body: bytes, c: int, duration: float, pids: dict[str, list[int]]
) -> tuple[loadgen.Result, dict[str, float]]:
    """One closed-loop level, with each process group's CPU per request (µs): where
    the two cores went (``client`` is this process: the load generator)."""
    req = loadgen.build_request("/v1/chat/completions", body)
    loadgen.run_blocking(port, req, concurrency=c, total=2 * c)  # warm
    before = {k: sum(cpu_seconds(p) for p in v) for k, v in pids.items()}
    t0 = time.process_time()
    res = loadgen.run_blocking(port, req, concurrency=c, duration=duration)
    n = max(1, len(res.latencies))
    cpu = {k: (sum(cpu_seconds(p) for p in v) - before[k]) / n * 1e6 for k, v in pids.items()}
    cpu["client"] = (time.process_time() - t0) / n * 1e6
    return res, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--body-kb", type=int, default=220)
    ap.add_argument("--concurrency", default="20,150")
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--pods", type=int, default=4, help="echo backends (picker scores them)")
    ap.add_argument("--transport", default="native")
    ap.add_argument(
        "--tls",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="Envoy dials picker over TLS (self-signed), as deploy/ does",
    )
    ap.add_argument(
        "--request-mode",
        default="FULL_DUPLEX_STREAMED",
        help="Envoy's ext_proc request_body_mode (FULL_DUPLEX_STREAMED or BUFFERED)",
    )
    ap.add_argument(
        "--envoy-concurrency", type=int, default=1, help="Envoy worker threads (both arms)"
    )
    args = ap.parse_args()
    body = chat_body(args.body_kb)
    levels = [int(c) for c in args.concurrency.split(",")]
    rows: list[dict[str, Any]] = []
    ec = args.envoy_concurrency
    with Stack(
        pods=args.pods, backend="echo", target="round_robin", tls=False, envoy_concurrency=ec
    ) as direct:
        pods = direct.pod_addresses
        echo = [p.pid for name, p in direct.procs.children if name == "echo"]
        d_envoy = [p.pid for name, p in direct.procs.children if name == "envoy"]
        base = {
            c: measured(direct.port, body, c, args.duration, {"envoy": d_envoy, "echo": echo})
            for c in levels
        }
        with Stack(
            pods=args.pods,
            pod_addresses=pods,
            target="picker",
            picker_config={"scrape": {"enabled": False}, "transport": args.transport},
            envoy_options={"request_body_mode": args.request_mode, "response_body_mode": "NONE"},
            tls=args.tls,
            envoy_concurrency=ec,
        ) as st:
            pid = next(p.pid for name, p in st.procs.children if name == "picker")
            envoy = next(p.pid for name, p in st.procs.children if name == "envoy")
            for c in levels:
                groups = {"picker": [pid], "envoy": [envoy], "echo": echo}
                res, cpu = measured(st.port, body, c, args.duration, groups)
                b, bcpu = base[c]
                rows.append(
                    {
                        "c": c,
                        "direct": (b.pct(50) * 1e3, b.pct(90) * 1e3, b.rps),
                        "picker": (res.pct(50) * 1e3, res.pct(90) * 1e3, res.rps),
                        "cpu": cpu["picker"],
                        "envoy_cpu": cpu["envoy"],
                        "split": (bcpu, cpu),
                        "bad": {
                            k: v for k, v in {**b.statuses, **res.statuses}.items() if k != 200
                        },
                    }
                )
    print(
        f"body {len(body) / 1024:.0f} KB, {args.duration:.0f} s per level, "
        f"transport {args.transport}{' over TLS' if args.tls else ''}, "
        f"request body {args.request_mode}"
    )
    print(
        f"{'c':>4} {'direct p50/p90 ms':>18} {'picker p50/p90 ms':>18} "
        f"{'added p50/p90 ms':>17} {'direct rps':>10} {'picker rps':>10} {'CPU us/req':>10} "
        f"{'Envoy CPU us/req':>16}"
    )
    for r in rows:
        d50, d90, drps = r["direct"]
        p50, p90, prps = r["picker"]
        print(
            f"{r['c']:4d} {d50:8.1f}/{d90:<9.1f} {p50:8.1f}/{p90:<9.1f} "
            f"{p50 - d50:+8.1f}/{p90 - d90:<+8.1f} {drps:10.0f} {prps:10.0f} {r['cpu']:10.0f} "
            f"{r['envoy_cpu']:16.0f}"
        )
        bcpu, cpu = r["split"]
        for arm, split, rps in (("direct", bcpu, drps), ("picker", cpu, prps)):
            total = sum(split.values())
            parts = ", ".join(f"{k} {v:.0f}" for k, v in split.items())
            print(
                f"     {arm:>6}: CPU us/req {parts}; total {total:.0f} "
                f"(x {rps:.0f} req/s = {total * rps / 1e6:.2f} cores)"
            )
        if r["bad"]:
            print(f"     non-200 statuses: {r['bad']}")


if __name__ == "__main__":
    main()
