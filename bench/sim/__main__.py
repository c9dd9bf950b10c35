"""Runs simulated vLLM pods until SIGINT/SIGTERM.

    python -m bench.sim --pods 4 --host 127.0.0.1 --port 8001 --time-scale 10 \\
        --speed 1,1,1,0.5 --lora-adapters a,b --max-loras 2

Pods listen on ``--ports`` if given, else on ``--port``, ``--port``+1, ... (``--port 0``:
any free ports). Once all listen it prints and flushes one line::

    ready pods=127.0.0.1:8001,127.0.0.1:8002,... model=<model>
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import Sequence

from bench.sim.latency import LatencyModel
from bench.sim.server import DEFAULT_MODEL, SimPodConfig, start_pods


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m bench.sim",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--pods", type=int, default=None, help="number of pods (default 1)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8001, help="first port; 0 = any free port")
    ap.add_argument("--ports", default="", help="comma-separated ports, one per pod")
    ap.add_argument(
        "--addresses",
        default="",
        help="comma-separated host:port, one per pod (pods on several loopback IPs)",
    )
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--speed", default="1", help="speed factor, one or one per pod")
    ap.add_argument("--time-scale", type=float, default=1.0, help="10 = 10x faster")
    ap.add_argument("--max-num-seqs", type=int, default=256)
    ap.add_argument("--max-num-batched-tokens", type=int, default=8192)
    ap.add_argument("--num-blocks", type=int, default=26000, help="KV blocks per pod")
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--no-prefix-caching", action="store_true")
    ap.add_argument("--lora-adapters", default="", help="comma-separated adapter names")
    ap.add_argument("--max-loras", type=int, default=1)
    ap.add_argument("--max-model-len", type=int, default=131072)
    ap.add_argument(
        "--prefill-tokens-per-s", type=float, default=LatencyModel().prefill_tokens_per_s
    )
    ap.add_argument(
        "--latency",
        default="",
        help="LatencyModel fields as JSON, e.g. bench.fidelity's fit (over the flags above)",
    )
    ap.add_argument(
        "--kv-events-port",
        type=int,
        default=0,
        help="publish KV events over ZMQ on this port (+i for pod i); needs pyzmq",
    )
    ap.add_argument(
        "--metrics-render-ms",
        type=float,
        default=10.0,
        help="what a /metrics scrape costs the pod, simulated ms (vLLM 0.32: ~10)",
    )
    ap.add_argument("--no-uvloop", action="store_true")
    return ap.parse_args(argv)


def configs_from_args(args: argparse.Namespace) -> list[SimPodConfig]:
    addresses = [a.rpartition(":") for a in _names(args.addresses)]
    hosts = [h for h, _, _ in addresses]
    ports = [int(p) for _, _, p in addresses] or [int(p) for p in _names(args.ports)]
    n = args.pods if args.pods is not None else (len(ports) or 1)
    if ports and len(ports) != n:
        raise SystemExit(f"--ports lists {len(ports)} ports for {n} pods")
    if not ports:
        ports = [0] * n if args.port == 0 else [args.port + i for i in range(n)]
    speeds = _floats(args.speed) or [1.0]
    if len(speeds) == 1:
        speeds *= n
    if len(speeds) != n:
        raise SystemExit(f"--speed lists {len(speeds)} values for {n} pods")
    fields = {"prefill_tokens_per_s": args.prefill_tokens_per_s}
    latency = LatencyModel(**{**fields, **json.loads(args.latency or "{}")})
    return [
        SimPodConfig(
            model=args.model,
            host=hosts[i] if hosts else args.host,
            port=ports[i],
            speed=speeds[i],
            time_scale=args.time_scale,
            max_num_seqs=args.max_num_seqs,
            max_num_batched_tokens=args.max_num_batched_tokens,
            num_blocks=args.num_blocks,
            block_size=args.block_size,
            enable_prefix_caching=not args.no_prefix_caching,
            lora_adapters=tuple(_names(args.lora_adapters)),
            max_loras=args.max_loras,
            max_model_len=args.max_model_len,
            latency=latency,
            metrics_render_ms=args.metrics_render_ms,
            kv_events_endpoint=(
                f"tcp://{args.host}:{args.kv_events_port + i}" if args.kv_events_port else None
            ),
        )
        for i in range(n)
    ]


async def serve(configs: Sequence[SimPodConfig]) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    cluster = await start_pods(configs)
    try:
        print(f"ready pods={','.join(cluster.addresses)} model={configs[0].model}", flush=True)
        await stop.wait()
    finally:
        await cluster.stop()
    print("sim stopped", flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    configs = configs_from_args(args)
    if not args.no_uvloop:
        with contextlib.suppress(ImportError):
            import uvloop

            uvloop.install()
    asyncio.run(serve(configs))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
