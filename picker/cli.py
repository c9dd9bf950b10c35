"""The ``picker`` command."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from picker import __version__
from picker.config import Config, PoolConfig, load_config, parse_ports
from picker.eppflags import GoBoolAction, add_flags, apply_flags, go_duration, log_setup
from picker.scheduling.profile import DEFAULT_SCHEDULER
from picker.server import PickerServer


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="picker",
        description="Body-aware endpoint picker for LLM serving (Envoy ext_proc server).",
    )
    p.add_argument("--version", action="version", version=f"picker {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run the ext_proc gRPC server")
    s.add_argument("-c", "--config", help="YAML config file (see README)")
    s.add_argument(
        "-e",
        "--endpoint",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="a model-server endpoint (repeatable); added to a pool serving --model",
    )
    s.add_argument(
        "--model", default="*", help="model ID the --endpoint pool serves (default: any)"
    )
    s.add_argument("--grpc-host", help="address to bind the ext_proc server (default 0.0.0.0)")
    s.add_argument("--grpc-port", type=int, help="ext_proc gRPC port (default 9002)")
    s.add_argument("--metrics-host", help="address for the Prometheus endpoint")
    s.add_argument("--metrics-port", type=int, help="Prometheus port (default 9090; -1 disables)")
    s.add_argument("--transport", choices=["native", "grpcio"], help="gRPC server implementation")
    s.add_argument("--policy", help="the picker plugin: max_score, p2c, random, round_robin")
    s.add_argument("--no-scrape", action="store_true", help="do not scrape pod metrics")
    s.add_argument("--scrape-interval", type=float, help="seconds between scrapes (0.05)")
    s.add_argument(
        "--drain-timeout",
        type=go_duration,
        help="seconds (or a Go duration, 30s) to finish open streams after SIGTERM (30)",
    )
    s.add_argument(
        "--secure-serving",
        action=GoBoolAction,
        help="TLS on the ext_proc port (self-signed unless --cert-path); --secure-serving=false "
        "turns it off (default: on with --pool-name or --endpoint-selector, else off)",
    )
    s.add_argument("--no-secure-serving", dest="secure_serving", action="store_false", default=None)
    s.add_argument("--cert-path", help="directory with tls.crt and tls.key, reloaded on change")
    k = s.add_argument_group(
        "endpoints from Kubernetes (as the inference extension's endpoint picker; "
        "see docs/kubernetes-discovery.md)"
    )
    k.add_argument("--pool-name", help="the InferencePool whose Ready pods are the endpoints")
    k.add_argument(
        "--pool-namespace",
        help="its namespace (default: $NAMESPACE, else picker's own, else default)",
    )
    k.add_argument(
        "--pool-group",
        help="the InferencePool's API group (default inference.networking.k8s.io)",
    )
    k.add_argument(
        "--endpoint-selector",
        help="instead of a pool: a label selector of the model-server pods, e.g. app=vllm",
    )
    k.add_argument(
        "--endpoint-target-ports",
        metavar="PORTS",
        help="with --endpoint-selector: the pods' ports, comma-separated (e.g. 8000,8001)",
    )
    k.add_argument(
        "--kube-api-server",
        metavar="URL",
        help="the API server's URL (default: in-cluster service account, or KUBECONFIG)",
    )
    k.add_argument("--kubeconfig", help="a kubeconfig file (default: $KUBECONFIG)")
    s.add_argument("--log-level", help="DEBUG, INFO, WARNING, ERROR (default INFO, or from -v)")
    add_flags(s)
    return p


def config_from_args(args: argparse.Namespace) -> Config:
    cfg = load_config(args.config) if args.config else Config()
    if args.endpoint:
        cfg.pools.append(PoolConfig(name="cli", endpoints=list(args.endpoint), models=[args.model]))
    for attr in ("grpc_host", "grpc_port", "metrics_host", "metrics_port", "transport"):
        value = getattr(args, attr)
        if value is not None:
            setattr(cfg, attr, value)
    if args.policy:
        cfg.scheduler = dict(cfg.scheduler or {})
        for k, v in DEFAULT_SCHEDULER.items():
            cfg.scheduler.setdefault(k, v)
        cfg.scheduler["picker"] = args.policy
    if args.no_scrape:
        cfg.scrape.enabled = False
    if args.scrape_interval is not None:
        cfg.scrape.interval = args.scrape_interval
    if args.drain_timeout is not None:
        cfg.drain_timeout = args.drain_timeout
    if args.secure_serving is not None:
        cfg.tls.enabled = args.secure_serving
    elif args.pool_name or args.endpoint_selector:
        cfg.tls.enabled = True  # as the EPP: TLS by default in cluster mode
    if args.cert_path:
        cfg.tls.cert_path = args.cert_path
        cfg.tls.enabled = True
    _discovery_from_args(cfg, args)
    apply_flags(cfg, args)
    if not cfg.pools and not cfg.discovery.enabled:
        raise SystemExit(
            "picker: no endpoints; give --endpoint HOST:PORT, --pool-name, "
            "--endpoint-selector or a --config file"
        )
    return cfg


def _discovery_from_args(cfg: Config, args: argparse.Namespace) -> None:
    d = cfg.discovery
    for attr in (
        "pool_name",
        "pool_namespace",
        "pool_group",
        "endpoint_selector",
        "kubeconfig",
    ):
        value = getattr(args, attr)
        if value:
            setattr(d, attr, value)
    if args.kube_api_server:
        d.api_server = args.kube_api_server
    if args.endpoint_target_ports:
        try:
            d.endpoint_target_ports = parse_ports(args.endpoint_target_ports)
        except ValueError as e:
            raise ValueError(f"--endpoint-target-ports: {e}") from None
    if d.pool_name and d.endpoint_target_ports and not d.endpoint_selector:
        logging.getLogger("picker").warning(
            "--endpoint-target-ports is ignored with --pool-name (the pool has its ports)"
        )
    cfg.check_discovery()


async def _serve(server: PickerServer) -> None:
    await server.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(
        f"picker ready grpc={server.grpc_port} health={server.health_port} "
        f"metrics={server.metrics_port}",
        flush=True,
    )
    await stop.wait()
    left = await server.drain(server.config.drain_timeout)
    if left:
        logging.getLogger("picker").warning("drain deadline: %d stream(s) cut", left)
    await server.stop()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    log_setup(args)
    try:
        # Everything configuration can get wrong (plugins and their parameters included)
        # fails here, before anything listens.
        server = PickerServer(config_from_args(args))
    except (ValueError, OSError) as e:
        print(f"picker: {e}", file=sys.stderr)
        return 2
    try:
        import uvloop

        uvloop.run(_serve(server))
    except ImportError:  # pragma: no cover - uvloop is a dependency
        asyncio.run(_serve(server))
    return 0


if __name__ == "__main__":
    sys.exit(main())
